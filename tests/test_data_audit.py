"""`rlhf data audit`: duplicates and length bias by hand, the cross-fitting never scoring a row with heads
that saw it (and a leaking split caught), the output files in input order, --fail-on exit codes, bad input,
--write-clean and the weights `data.weight_column` reads. The model parts use the packaged MiniLM encoder
(no download); data is written by hand in a world unlike the built-in one."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from orchestrator.tools.audit.scan import Pair, duplicates, length_bias, normalise, words


# ------------------------------------------------------------------------------------------- by hand


def _pair(i, prompt, chosen, rejected):
    return Pair(i, f"row {i}", prompt, chosen, rejected, {})


def test_duplicates_exact_normalised_and_swapped_by_hand():
    pairs = [
        _pair(0, "How do I boil an egg?", "Simmer it for nine minutes.", "Microwave it."),
        _pair(1, "How do I boil an egg?", "Simmer it for nine minutes.", "Microwave it."),  # exact copy of 0
        _pair(2, "how do I boil an egg", "simmer it, for nine minutes!", "  Microwave   it "),  # normalised copy of 0
        _pair(3, "How do I boil an egg?", "Microwave it.", "Simmer it for nine minutes."),  # 0 swapped
        _pair(4, "How do I fry an egg?", "Simmer it for nine minutes.", "Microwave it."),  # another prompt
        _pair(5, "HOW DO I FRY AN EGG", "Simmer it for nine minutes", "Microwave it"),  # normalised copy of 4
        Pair(6, "row 6", error="broken"),  # unusable rows are never anyone's duplicate
    ]
    d = duplicates(pairs)
    assert d.duplicate_of == [None, 0, 0, None, None, 4, None]
    assert d.exact == [False, True, False, False, False, False, False]
    assert d.swapped_of == [None, None, None, 0, None, None, None]
    assert normalise("Hello,  World!\n") == normalise("hello world") == "hello world"
    assert normalise("C++ is fun") == "c is fun"  # symbols go too: the rule is the documented one


def test_words_and_length_bias_by_hand():
    assert words("Hello, world! It's 42 degrees.") == 6  # Hello world It s 42 degrees
    # 8 pairs 10 words apart: the longer one chosen in 6 (the MLE of sigmoid(beta * dx / 10) is logit(6/8) = ln 3)
    chosen = [20] * 6 + [10] * 2 + [7, 7]
    rejected = [10] * 6 + [20] * 2 + [7, 5]
    out = length_bias(chosen[:8], rejected[:8])
    assert out["chosen_longer_share"] == 6 / 8 and out["rejected_longer_share"] == 2 / 8 and out["equal_share"] == 0
    assert out["logit_per_10_words"] == pytest.approx(math.log(3), abs=1e-10)
    # Fisher information: sum of x^2 p (1 - p) = 8 * 0.75 * 0.25
    assert out["logit_per_10_words_se"] == pytest.approx(1 / math.sqrt(8 * 0.1875), abs=1e-10)
    both = length_bias(chosen, rejected)  # an equal pair counts in equal_share and not in the fit; +2 words counts
    assert both["equal_share"] == 1 / 10 and both["chosen_longer_share"] == 7 / 10
    assert both["longer_wins"] == 7 / 9


# ------------------------------------------------------------------------------------------ folds


def _random_task(n=240, dim=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)  # labels are coin flips: nothing to learn


def test_folds_keep_groups_together_and_score_every_row_once():
    from orchestrator.tools.audit.crossfit import FitConfig, crossfit, fold_split

    groups = [i // 3 for i in range(90)]  # rows 0-2 one group, 3-5 the next, ...
    splits = fold_split(groups, 5, seed=1)
    fold_of = {}
    for f, (train, test) in enumerate(splits):
        assert not set(train.tolist()) & set(test.tolist())
        for r in test.tolist():
            fold_of[r] = f
    assert sorted(fold_of) == list(range(90))
    assert all(fold_of[r] == fold_of[3 * (r // 3)] for r in range(90))
    xc, xr = _random_task(90, 8)
    fit = crossfit(xc, xr, groups, FitConfig(folds=5, epochs=3))
    assert torch.isfinite(fit.p).all() and fit.fold.min() == 0 and fit.fold.max() == 4


def test_a_leaking_split_is_caught(monkeypatch):
    """Heads that score rows they never saw agree with random labels half the time; crossfit refuses a split
    that scores a row with heads trained on it, or on a copy of it in another fold."""
    import orchestrator.tools.audit.crossfit as cf

    xc, xr = _random_task()
    groups = list(range(len(xc)))
    cfg = cf.FitConfig(folds=4, types=1)
    honest = cf.crossfit(xc, xr, groups, cfg)
    assert abs(float(honest.p.mean()) - 0.5) < 0.05  # nothing to learn, nothing leaked
    real = cf.fold_split
    monkeypatch.setattr(cf, "fold_split", lambda g, k, seed: [(torch.arange(len(g)), test) for _, test in real(g, k, seed)])
    with pytest.raises(cf.FoldLeak, match="row 0 is scored by heads trained on it"):
        cf.crossfit(xc, xr, groups, cfg)
    # rows 0 and 1 are copies (one group), but this split ignores groups and puts them in different folds
    monkeypatch.setattr(cf, "fold_split", lambda g, k, seed: real(list(range(len(g))), k, seed))
    copies = [0] + groups[1:]
    copies[1] = 0
    folds = {f for f, (_, test) in enumerate(real(list(range(len(xc))), 4, 0)) if {0, 1} & set(test.tolist())}
    assert len(folds) == 2  # (with this seed the two rows do land apart)
    with pytest.raises(cf.FoldLeak, match="or on a copy of it"):
        cf.crossfit(xc, xr, copies, cfg)


# ------------------------------------------------------------------------------------------- the CLI

KITCHEN = [
    ("How long should I rest a steak?", "Rest it five minutes so the juices settle before slicing.", "Cut it right away."),
    ("What makes bread rise?", "Yeast ferments sugar and releases gas that stretches the gluten.", "Salt."),
    ("How do I keep basil fresh?", "Stand the stems in water at room temperature, like flowers.", "Freeze it whole."),
    ("Why do onions make me cry?", "Cutting them releases a gas that irritates your eyes.", "Because they are sad."),
    ("How can I thicken a soup?", "Stir in a little flour paste or simmer it uncovered.", "Add more water."),
    ("What oil is best for frying?", "One with a high smoke point, such as peanut or sunflower oil.", "Olive oil for everything."),
    ("How do I peel garlic quickly?", "Crush each clove with the flat of a knife and the skin slips off.", "Boil it for an hour."),
    ("When is pasta done?", "When it is tender with a slight bite, tasted a minute before the box says.", "After thirty minutes."),
]


def _write_kitchen(path, n=48, bad_line=None):
    """n pairs over the KITCHEN prompts (answers varied by a suffix), a duplicate at 40 of row 3, a
    normalised duplicate at 41 of row 5, a swapped copy at 42 of row 7, an annotator column."""
    rows = []
    for i in range(n):
        prompt, good, bad = KITCHEN[i % len(KITCHEN)]
        extra = f" Tip number {i}." if i % 3 else ""
        pair = {"prompt": prompt, "chosen": good + extra, "rejected": f"{bad} Note {i}.",
                "annotator": "ann_a" if i % 2 else "ann_b"}
        if i % 5 == 0:  # some labels the other way round
            pair["chosen"], pair["rejected"] = pair["rejected"], pair["chosen"]
        rows.append(pair)
    rows[40] = dict(rows[3])
    rows[41] = {**rows[5], "prompt": rows[5]["prompt"].upper().rstrip("?"), "chosen": "  " + rows[5]["chosen"].lower()}
    rows[42] = {**rows[7], "chosen": rows[7]["rejected"], "rejected": rows[7]["chosen"]}
    with open(path, "w") as f:
        for i, r in enumerate(rows):
            f.write(('{"prompt": "no answers here"}' if i == bad_line else json.dumps(r)) + "\n")
    return rows


def _audit(*argv):
    from orchestrator.cli import main

    return main(["data", "audit", *argv, "--quiet", "--folds", "3"])


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    """One audit of the kitchen data with a malformed row kept (--on-error skip) and a clean copy."""
    from orchestrator.cli import main

    folder = tmp_path_factory.mktemp("kitchen")
    data = str(folder / "prefs.jsonl")
    rows = _write_kitchen(data, bad_line=20)
    code = main(["data", "audit", data, "--out", str(folder / "audit"), "--quiet", "--folds", "3", "--on-error", "skip",
                 "--write-clean", str(folder / "clean.jsonl"), "--flip-threshold", "0.6"])
    assert code == 0
    return folder, rows


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_outputs_schema_order_and_indices(kitchen):
    folder, rows = kitchen
    out = folder / "audit"
    assert sorted(os.listdir(out)) == ["plots", "report.html", "report.md", "rows.jsonl", "summary.json"]
    assert {"distributions.png", "length.png", "groups.png"} <= set(os.listdir(out / "plots"))
    got = _read_jsonl(out / "rows.jsonl")
    assert [r["row"] for r in got] == list(range(len(rows)))
    for key in ("disagreement", "label_flip", "duplicate_of", "chosen_tokens", "rejected_tokens", "weight"):
        assert all(key in r for r in got)
    bad = got[20]
    assert bad["error"] and "line 21" in bad["error"] and "'chosen' is missing" in bad["error"] and bad["disagreement"] is None
    good = [r for r in got if r["error"] is None]
    assert all(0 <= r["disagreement"] <= 1 and 0 <= r["label_flip"] <= 1 for r in good)
    assert all(abs(r["disagreement"] + r["tie"] - 4 * r["p_chosen"] * (1 - r["p_chosen"])) < 1e-5 for r in good)
    assert got[40]["duplicate_of"] == 3 and got[40]["duplicate_exact"]
    assert got[41]["duplicate_of"] == 5 and not got[41]["duplicate_exact"]
    assert got[42]["swapped_of"] == 7 and got[42]["duplicate_of"] is None
    assert sum(r["duplicate_of"] is not None for r in good) == 2
    assert got[1]["chosen_words"] == words(rows[1]["chosen"]) and got[1]["rejected_words"] == words(rows[1]["rejected"])
    assert got[40]["fold"] == got[3]["fold"] and got[42]["fold"] == got[7]["fold"]  # copies share a fold
    summary = json.loads((out / "summary.json").read_text())
    ok = [r for i, r in enumerate(rows) if i != 20]
    assert summary["n_rows"] == 48 and summary["usable_rows"] == 47
    assert summary["length_bias"]["chosen_longer_share"] == sum(words(r["chosen"]) > words(r["rejected"]) for r in ok) / 47
    assert summary["duplicates"] == {**summary["duplicates"], "n_rows": 2, "exact": 1, "normalised_only": 1, "swapped": 1}
    assert set(summary["groups"]["values"]) == {"ann_a", "ann_b"} and summary["groups"]["column"] == "annotator"
    for key in ("disagreement", "label_noise"):
        assert {"threshold", "share", "n_rows"} <= set(summary[key])
    assert summary["label_noise"]["threshold"] == 0.6
    report = (out / "report.md").read_text()
    assert "Most disputed pairs" in report and "Likeliest label errors" in report and "plots/length.png" in report
    assert "Agreement by annotator" in (out / "report.html").read_text()


def test_write_clean_keeps_the_rest_with_weights_the_loader_reads(kitchen):
    from actors.modeling import load_tokenizer
    from orchestrator.builtin.models import builtin_tokenizer_dir
    from orchestrator.config import DataConfig
    from orchestrator.data import load_preferences

    folder, rows = kitchen
    audit = _read_jsonl(folder / "audit" / "rows.jsonl")
    summary = json.loads((folder / "audit" / "summary.json").read_text())
    clean = _read_jsonl(folder / "clean.jsonl")
    kept = [r["row"] for r in audit if r["error"] is None and r["duplicate_of"] is None and r["label_flip"] <= 0.6]
    assert [{k: v for k, v in c.items() if k != "audit_weight"} for c in clean] == [rows[i] for i in kept]
    assert [c["audit_weight"] for c in clean] == [audit[i]["weight"] for i in kept]
    assert summary["clean"]["rows_kept"] == len(kept) and summary["clean"]["removed_duplicates"] == 2
    cfg = DataConfig(path=str(folder / "clean.jsonl"), weight_column="audit_weight", eval_path=str(folder / "prefs.jsonl"),
                     on_error="skip")
    data, stats = load_preferences(cfg, load_tokenizer(builtin_tokenizer_dir()))
    assert data["pair_weight"] == [c["audit_weight"] for c in clean]
    held_out, _ = load_preferences(cfg, load_tokenizer(builtin_tokenizer_dir()), eval_set=True)  # has no weights: unweighted
    assert len(held_out) == 47 and "pair_weight" not in held_out.column_names


@pytest.mark.parametrize("value, message", [(-1, "must be a finite number >= 0"), ("heavy", "must be a finite number >= 0"),
                                            (None, "is missing")])
def test_a_bad_weight_names_the_line_and_the_field(tmp_path, value, message):
    from actors.modeling import load_tokenizer
    from orchestrator.builtin.models import builtin_tokenizer_dir
    from orchestrator.config import DataConfig
    from orchestrator.data import DataError, load_preferences

    path = tmp_path / "w.jsonl"
    lines = [{"prompt": "p", "chosen": "a", "rejected": "b", "w": 1.0}, {"prompt": "p", "chosen": "a", "rejected": "c", "w": 0},
             {"prompt": "q", "chosen": "a", "rejected": "b", "w": value}]
    path.write_text("\n".join(json.dumps({k: v for k, v in r.items() if v is not None}) for r in lines) + "\n")
    with pytest.raises(DataError, match=rf"w.jsonl line 3: field 'w' {message}"):
        load_preferences(DataConfig(path=str(path), weight_column="w"), load_tokenizer(builtin_tokenizer_dir()))
    path.write_text("\n".join(json.dumps(r) for r in lines[:2]) + "\n")
    data, stats = load_preferences(DataConfig(path=str(path), weight_column="w"), load_tokenizer(builtin_tokenizer_dir()))
    assert len(data) == 1 and stats.dropped_weight == 1  # weight 0: not trained on


def test_fail_on_rules_and_exit_codes(kitchen, tmp_path, capsys):
    from orchestrator.tools.audit import failed_rules, parse_rules

    folder, _ = kitchen
    summary = json.loads((folder / "audit" / "summary.json").read_text())
    assert failed_rules(summary, parse_rules("duplicates>0, swapped>=1")) == ["duplicates=2 > 0", "swapped=1 >= 1"]
    assert failed_rules(summary, parse_rules("duplicates>2,label_noise>1")) == []
    data = str(tmp_path / "prefs.jsonl")
    _write_kitchen(data)
    capsys.readouterr()
    assert _audit(data, "--out", str(tmp_path / "a"), "--fail-on", "duplicates>0") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlhf: audit failed: duplicates=2 > 0")
    assert (tmp_path / "a" / "summary.json").is_file()  # the evidence is written
    for rule, words_ in (("noise>0.1", "unknown metric 'noise'"), ("label_noise=0.1", "cannot read rule")):
        assert _audit(data, "--out", str(tmp_path / "b"), "--fail-on", rule) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words_ in err[0]
    assert not (tmp_path / "b").exists()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    data = str(tmp_path / "prefs.jsonl")
    _write_kitchen(data, bad_line=6)
    assert _audit(data, "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rlhf: error: {data} line 7: field 'chosen' is missing"]
    assert not (tmp_path / "out").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    _write_kitchen(data)
    assert _audit(data, "--out", str(tmp_path / "mine")) == 2
    assert "holds files an audit did not write (notes.txt)" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "mine" / "summary.json").write_text("{}")  # an earlier audit, with a file of the user's added
    assert _audit(data, "--out", str(tmp_path / "mine")) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    capsys.readouterr()
    for model, words_ in ((str(tmp_path / "no_such_model"), "no such folder"), (str(tmp_path / "mine"), "no config.json")):
        assert _audit(data, "--out", str(tmp_path / "c"), "--model", model) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words_ in err[0] and model in err[0]


def test_an_earlier_audit_is_replaced_only_when_the_new_one_is_complete(kitchen, tmp_path, monkeypatch):
    import shutil

    import orchestrator.tools.audit.report as report

    folder, _ = kitchen
    out = tmp_path / "audit"
    shutil.copytree(folder / "audit", out)
    before = (out / "rows.jsonl").read_text()
    monkeypatch.setattr(report, "_html", lambda *a: (_ for _ in ()).throw(RuntimeError("disk full")))
    data = str(tmp_path / "prefs.jsonl")
    _write_kitchen(data)
    with pytest.raises(RuntimeError, match="disk full"):
        _audit(data, "--out", str(out), "--seed", "3")
    assert (out / "rows.jsonl").read_text() == before
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == []


def test_weight_column_is_refused_where_nothing_reads_it():
    from orchestrator.config import ConfigError
    from orchestrator.registry import load_config

    for job in ("ppo", "sft"):
        with pytest.raises(ConfigError, match="data.weight_column"):
            load_config(job, None, ["data.weight_column=w"])
    assert load_config("dpo", None, ["data.weight_column=w"]).data.weight_column == "w"


# ------------------------------------------------------------------------------------ other families


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    from families import build_families

    return build_families(tmp_path_factory.mktemp("families"))


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "mistral", "gemma"])
def test_a_decoder_of_another_family_as_the_encoder(families, family, tmp_path):
    """Any causal LM folder works as the frozen encoder (no pad token, learned positions, a BOS-adding tokenizer);
    a row longer than the model's positions is cut and counted (GPT-2 here has 96)."""
    import transformers

    data = tmp_path / "prefs.jsonl"
    rows = _write_kitchen(data)
    long_answer = " ".join(["Knead the dough, fold it, and let it rest in a warm place."] * 5)
    with open(data, "a") as f:
        f.write(json.dumps({"prompt": "How do I make sourdough?", "chosen": long_answer, "rejected": "Buy bread."}) + "\n")
    out = tmp_path / "audit"
    assert _audit(str(data), "--out", str(out), "--model", families[family]["model"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    n_layers = transformers.AutoConfig.from_pretrained(families[family]["model"]).num_hidden_layers
    assert summary["model"]["of_layers"] == n_layers and summary["model"]["layer"] == (n_layers + 1) // 2
    assert summary["usable_rows"] == len(rows) + 1 and len(_read_jsonl(out / "rows.jsonl")) == len(rows) + 1
    last = _read_jsonl(out / "rows.jsonl")[-1]
    positions = summary["over_max_length"]["max_length"]
    assert 96 < last["chosen_tokens"] < 250 and last["over_length"] == (family == "gpt2")  # the others have 256 positions
    if family == "gpt2":
        assert positions == 96 and last["over_length"] and summary["over_max_length"]["rows"] == [len(rows)]


@pytest.mark.parametrize("kind", ["hh", "prefs"])
def test_hh_layout_and_chat_prompts_are_read_in_order_with_their_copies(families, kind):
    from orchestrator.tools.audit.scan import read_pairs

    pairs, _ = read_pairs(families["qwen2"][kind])  # 4 distinct pairs written 4 times over
    d = duplicates(pairs)
    assert [p.row for p in pairs] == list(range(16))
    assert d.duplicate_of == [None] * 4 + [i % 4 for i in range(4, 16)] and all(d.exact[4:])
    assert all(p.chosen and p.rejected and p.context for p in pairs)
