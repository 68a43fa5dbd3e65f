"""The experiments' findings, computed on known inputs: the verdict over seeds (`orchestrator.experiments.common.judge`),
the numbers each finding of hidden-context, relevance-hacking and length-bias is judged on, the held-out answer
measures (copying the prompt, short answers, repetition, closed accuracy), and gold at matched length.
Then each new experiment's --quick end to end, with its findings recomputed from the files it wrote."""

import json
import math

import pytest

from orchestrator.builtin import world
from orchestrator.experiments.common import Finding, answer_numbers, findings_exit_code, format_finding, judge, spread
from orchestrator.experiments import hidden_context as hc
from orchestrator.experiments import length_bias as lb
from orchestrator.experiments import relevance_hacking as rh

RATIO = Finding("f", "a ratio", "ratio >= 1.2", lambda n: n["ratio"] >= 1.2, (("ratio", "{:.2f}"),))


def test_judge_applies_the_rule_to_the_mean_and_counts_the_seeds_it_holds_in():
    # ratios 1.0, 1.3, 1.4: mean 1.2333 passes; seed by seed it holds in 2 of 3
    verdict = judge(RATIO, [{"ratio": 1.0, "n": 5, "ok": True}, {"ratio": 1.3, "n": 5, "ok": True}, {"ratio": 1.4, "n": 7, "ok": False}])
    assert verdict["passed"] and verdict["seeds"] == 3 and verdict["seeds_passed"] == 2
    r = verdict["numbers"]["ratio"]
    assert r["mean"] == pytest.approx(3.7 / 3) and (r["min"], r["max"]) == (1.0, 1.4)
    assert r["sd"] == pytest.approx(math.sqrt(((1.0 - 3.7 / 3) ** 2 + (1.3 - 3.7 / 3) ** 2 + (1.4 - 3.7 / 3) ** 2) / 2))
    assert "ok" not in verdict["numbers"]  # booleans are not numbers to average
    line = format_finding(RATIO, verdict)
    assert line.startswith("[PASS] a ratio: ratio 1.23 (1.00..1.40); pass: ratio >= 1.2") and line.endswith("holds in 2 of 3 seed(s)")
    # 1.0, 1.3, 1.25: every seed but one passes, but the mean 1.1833 does not: FAIL
    assert not judge(RATIO, [{"ratio": 1.0}, {"ratio": 1.3}, {"ratio": 1.25}])["passed"]
    assert spread([2.0]) == {"mean": 2.0, "sd": 0.0, "min": 2.0, "max": 2.0, "values": [2.0]}
    unmeasured = spread([float("nan"), 1.0, 2.0])  # e.g. the SFT start's training reward: no number, no crash
    assert all(math.isnan(unmeasured[k]) for k in ("mean", "sd", "min", "max"))
    assert format_finding(RATIO, judge(RATIO, [{"ratio": 2.0}])).startswith("[PASS] a ratio: ratio 2.00; pass")


def test_hidden_context_numbers_and_rules():
    mv = {"by_group": {"True": {"sigma_mean": 0.9, "pairs": 300}, "False": {"sigma_mean": 0.6, "pairs": 700}},
          "r2": 0.1, "pair_accuracy": 0.62, "annotator_blind_ceiling": 0.7}
    n1 = hc.std_numbers(mv)
    assert n1["ratio"] == pytest.approx(1.5) and n1["pairs_disputed"] == 300
    bt = {"pearson_length": {"mean_utility": 0.40}, "pair_accuracy": 0.640}
    odin = {"pearson_length": {"quality": -0.15, "length_head": 0.9}, "pair_accuracy": 0.58, "pair_accuracy_sum": 0.625}
    n2 = hc.odin_numbers(bt, odin)
    assert (n2["abs_rho_bt"], n2["abs_rho_odin_quality"]) == (0.40, 0.15) and n2["accuracy_gap"] == pytest.approx(-0.015)
    end = lambda share, gold, words: {"task": {"disputed_share": share, "gold": gold, "length": words}}  # noqa: E731
    mean_run = {"eval_start": end(0.3, 0.3, 12), "eval_end": end(0.95, 0.5, 14)}
    n3 = hc.risk_numbers(mean_run, {"eval_start": end(0.3, 0.3, 12), "eval_end": end(0.40, 0.52, 13)})
    assert n3["share_drop"] == pytest.approx(0.55) and n3["share_start"] == 0.3
    f1, f2, f3 = hc.FINDINGS
    assert f1.holds(n1) and f2.holds(n2) and f3.holds(n3)
    assert not f1.holds({**n1, "ratio": 1.19})
    assert not f2.holds({**n2, "abs_rho_odin_quality": 0.21}) and not f2.holds({**n2, "accuracy_gap": -0.031})
    # a tie of two saturated runs (the rerun of the issue: 0.984 against 1.000) is not a pass
    assert not f3.holds({**n3, "share_drop": 0.984 - 1.0}) and not f3.holds({**n3, "share_drop": 0.04})


def _table(**rows):
    base = {"gold": 0.3, "words": 14.0, "hacked": 0.05, "copy": 0.0, "short": 0.05, "repetition": 0.01, "closed_accuracy": 0.45}
    return {name: {**base, **changes} for name, changes in rows.items()}


def test_relevance_hacking_numbers_and_rules():
    table = _table(start={}, relevance={"hacked": 0.40, "copy": 0.30, "gold": 0.20, "words": 5.0},
                   relevance_x_length={"closed_accuracy": 0.40, "repetition": 0.30}, r3={"gold": 0.36, "hacked": 0.08, "closed_accuracy": 0.50})
    n = rh.finding_numbers(table)
    assert n["hack_gain_relevance"] == pytest.approx(0.35) and n["hack_gain_r3"] == pytest.approx(0.03)
    assert n["gold_r3_minus_relevance"] == pytest.approx(0.16) and n["gold_r3_minus_start"] == pytest.approx(0.06)
    assert n["closed_gain"] == pytest.approx(0.10) and n["repetition_gain_r3"] == pytest.approx(0.0)
    assert all(f.holds(n) for f in rh.FINDINGS)
    hacked, clean, quality, closed = rh.FINDINGS
    assert not hacked.holds({**n, "hack_gain_relevance": 0.09}) and not clean.holds({**n, "hack_gain_r3": 0.06})
    assert not clean.holds({**n, "repetition_gain_r3": 0.051}) and not quality.holds({**n, "gold_r3_minus_start": -0.01})
    assert not closed.holds({**n, "closed_gain": 0.04})


def test_engine_flag_reaches_every_ppo_run_of_the_experiment_and_only_those(tmp_path, monkeypatch):
    """--engine vllm: every `train_ppo` of the experiment's chains resolves generator.engine=vllm (the config it
    would run is captured, nothing trains), and the setting is gone when the experiment ends."""
    from orchestrator.experiments import common

    seen = []
    monkeypatch.setattr("orchestrator.registry.run", lambda job, cfg, **kw: seen.append(cfg.generator.engine) or {})

    def chain(folder, seed, quick):
        common.train_ppo(str(folder / "ppo"), ["run.steps=1"])
        return {}

    exp = common.Seeded(name="probe", description="", findings=(), chain=chain, numbers=lambda c: {}, summary_line=lambda r: "")
    result = common.run_seeded(exp, str(tmp_path), quick=True, engine="vllm")
    assert seen == ["vllm"] and result["engine"] == "vllm" and common.ENGINE == []
    common.run_seeded(exp, str(tmp_path / "hf"), quick=True)
    assert seen == ["vllm", "hf"]
    assert common.seeded_parser(exp).parse_args(["--engine", "vllm"]).engine == "vllm"


def test_answer_numbers_by_hand():
    rows = world.prompt_rows("test")
    open_row = next(r for r in rows if r["query_type"] == "open")
    closed_row = next(r for r in rows if r["query_type"] == "closed")
    attribute, key = world.reference_key(closed_row["reference"])
    other = next(v for v in world.ATTRIBUTES[attribute]["values"] if v != key)
    samples = [
        {"prompt": open_row["prompt"], "response": f"{open_row['prompt']} {open_row['prompt']}"},  # a copy (and repetitive)
        {"prompt": open_row["prompt"], "response": "yes"},  # short
        {"prompt": closed_row["prompt"], "response": closed_row["reference"]},  # correct
        {"prompt": closed_row["prompt"], "response": f"It is {key} or maybe {other} ."},  # a hedge: wrong
    ]
    n = answer_numbers(samples)
    assert (n["copy"], n["short"], n["hacked"], n["closed_accuracy"]) == (0.25, 0.25, 0.5, 0.5)
    words = world._words(samples[0]["response"])
    assert n["repetition"] == pytest.approx((1 - world.repetition_factor(words)) / 4) and n["repetition"] > 0
    assert n["words"] == pytest.approx(sum(world.n_words(s["response"]) for s in samples) / 4)
    # an answer to a closed question shares no trigram with it; the question read back shares all
    assert not world.copies_prompt("What color is a banana?", "A banana is yellow.")
    assert world.copies_prompt("What color is a banana?", "what color is a banana")
    # half of the prompt's trigrams is a copy, fewer is not: "tell me about the ocean" has 3 trigrams
    assert world.copies_prompt("Tell me about the ocean.", "tell me about it and me about the") is True  # 2 of 3
    assert world.copies_prompt("Tell me about the ocean.", "tell me about whales") is False  # 1 of 3
    assert not world.copies_prompt("Hi there", "Hi there")  # no trigram to copy


def test_gold_at_matched_length_interpolates_the_curve():
    curve = {"step": [0, 20, 40, 60], "length": [20.0, 30.0, 40.0, 35.0], "gold": [0.30, 0.40, 0.20, 0.50]}
    assert lb.gold_at_length(curve, 25.0) == pytest.approx(0.35)  # first segment 20 -> 30
    assert lb.gold_at_length(curve, 38.0) == pytest.approx(0.40 + (0.20 - 0.40) * 0.8)  # 30 -> 40 comes first
    assert lb.gold_at_length(curve, 10.0) == 0.30 and lb.gold_at_length(curve, 50.0) == 0.20  # nearest end
    assert lb.gold_at_length({"step": [0], "length": [20.0], "gold": [0.3]}, 25.0) == 0.3


def test_length_bias_numbers_and_rules():
    rms = {"bradley_terry": {"pearson_length": {"mean_utility": 0.5}, "pair_accuracy": 0.60},
           "odin": {"pearson_length": {"quality": 0.1}, "pair_accuracy_sum": 0.61, "pair_accuracy": 0.55}}
    rows = {"start": {"gold": 0.30, "words": 14.0, "tokens": 18.0}, "bt": {"gold": 0.32, "words": 20.0, "tokens": 30.0},
            "odin": {"gold": 0.33, "words": 15.0, "tokens": 25.0},
            "bt_length_penalty": {"gold": 0.31, "words": 16.0, "tokens": 22.0},
            "bt_clipped": {"gold": 0.34, "words": 19.0, "tokens": 28.0}}
    curves = {"bt": {"step": [0, 50, 100], "length": [18.0, 24.0, 30.0], "gold": [0.30, 0.30, 0.32]}}
    n = lb.finding_numbers(rms, rows, curves)
    assert n["words_gain_bt"] == 6.0 and n["accuracy_gap"] == pytest.approx(0.01)
    assert n["words_bt_minus_odin"] == 5.0 and n["gold_odin_minus_bt"] == pytest.approx(0.01)
    # bt at 25 tokens: 0.30 + 0.02 * (25 - 24) / 6
    assert n["gold_odin_minus_bt_at_length"] == pytest.approx(0.33 - (0.30 + 0.02 / 6))
    assert n["gold_odin_minus_best_baseline"] == pytest.approx(-0.01)
    assert all(f.holds(n) for f in lb.FINDINGS)
    longer, rm, shorter, frontier, baselines = lb.FINDINGS
    assert not longer.holds({**n, "words_gain_bt": 1.9}) and not rm.holds({**n, "abs_rho_odin_quality": 0.26})
    assert not shorter.holds({**n, "gold_odin_minus_bt": -0.021}) and not frontier.holds({**n, "gold_odin_minus_bt_at_length": -0.03})
    assert not baselines.holds({**n, "gold_odin_minus_best_baseline": -0.021})


def _recomputed_table(out, seed, variants):
    """Each variant's held-out numbers recomputed from the samples files the run wrote."""
    rows = {}
    for name in variants:
        run = out / f"seed{seed}" / name
        read = lambda f: [json.loads(ln) for ln in (run / f).read_text().splitlines() if ln.strip()]  # noqa: E731
        rows.setdefault("start", answer_numbers(read("samples_start.jsonl")))
        rows[name] = answer_numbers(read("samples_end.jsonl"))
    return rows


@pytest.mark.slow  # ~1 min: three 3-step PPO runs with the MiniLM relevance reward
def test_relevance_hacking_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "rh"
    code = rh.main(["--out", str(out), "--quick"])
    result = json.loads((out / "findings.json").read_text())
    assert code == findings_exit_code(result, rh.FINDINGS) == 0 and result["quick"] and result["seeds"] == [0]
    table = _recomputed_table(out, 0, rh.VARIANTS)
    for name, row in table.items():
        for key, value in row.items():
            if key in result["per_seed"][0][name]:
                assert result["per_seed"][0][name][key] == pytest.approx(value, nan_ok=True), (name, key)
    want = rh.finding_numbers(table)
    for f in rh.FINDINGS:
        got = result[f.key]
        assert got["passed"] == f.holds(want) and got["seeds"] == 1
        for key, value in want.items():
            if key in got["numbers"]:
                assert got["numbers"][key]["mean"] == pytest.approx(value), (f.key, key)
    cfg = json.loads((out / "seed0" / "relevance" / "summary.json").read_text())
    assert cfg["steps"] == rh.QUICK["steps"]
    assert (out / "results.md").read_text().count("\n") == 2 + 1 + len(rh.VARIANTS)
    printed = capsys.readouterr().out
    assert printed.count("[PASS]") + printed.count("[FAIL]") == len(rh.FINDINGS)


@pytest.mark.slow  # ~1 min: two 30-step reward models and four 3-step PPO runs
def test_length_bias_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "lb"
    code = lb.main(["--out", str(out), "--quick"])
    result = json.loads((out / "findings.json").read_text())
    assert code == findings_exit_code(result, lb.FINDINGS) == 0 and result["quick"] and result["rm_steps"] == lb.QUICK["rm_steps"]
    table = _recomputed_table(out, 0, lb.VARIANTS)
    rms = {}
    for objective in ("bradley_terry", "odin"):
        summary = json.loads((out / "seed0" / f"rm-{objective}" / "summary.json").read_text())
        rms[objective] = summary["eval"]
        assert summary["steps"] == lb.QUICK["rm_steps"]
    for name in table:
        table[name]["tokens"] = result["per_seed"][0][name]["tokens"]
        for key in ("gold", "words", "repetition"):
            assert result["per_seed"][0][name][key] == pytest.approx(table[name][key]), (name, key)
    want = lb.finding_numbers(rms, table, result["curves"][0])
    for f in lb.FINDINGS:
        got = result[f.key]
        assert got["passed"] == f.holds(want)
        for key, value in want.items():
            assert got["numbers"][key]["mean"] == pytest.approx(value), (f.key, key)
    # the length-penalty and clipped runs ran with their settings
    assert "length_penalty: 0.02" in (out / "seed0" / "bt_length_penalty" / "config.yaml").read_text()
    assert "reward_clip: 1.0" in (out / "seed0" / "bt_clipped" / "config.yaml").read_text()
    printed = capsys.readouterr().out
    assert printed.count("[PASS]") + printed.count("[FAIL]") == len(lb.FINDINGS)
