"""Data loading: sources, validation errors, HH-RLHF split, chat template, length limits, collation, CLI.

No network and no Ray: the tokenizer is trained in a fixture on a few sentences (byte-level BPE with
the project's chat template), and the hub path is exercised only for its error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actors.pairs import collate_pairs
from orchestrator.config import DataConfig
from orchestrator.data import DataError, collate_prompts, load_preferences, load_prompts, read_rows
from orchestrator.tools.data_check import add_args as add_data_check_args
from orchestrator.tools.data_check import run as run_data_check

ROOT = Path(__file__).resolve().parents[1]
LINE7_FILE = ROOT / "tests" / "fixtures" / "data" / "prefs_line7_missing_rejected.jsonl"

CORPUS = [
    "What color is a banana? A banana is yellow. A banana is blue.",
    "How many legs does a spider have? A spider has eight legs, not six.",
    "Tell me about the ocean. The ocean is deep and full of fish and waves.",
    "Hi there! Hello, how can I help? What is 2+2? 2+2 is 4. It is 5, obviously.",
]


@pytest.fixture(scope="module")
def tok():
    from actors.modeling import train_bpe_tokenizer

    return train_bpe_tokenizer(CORPUS * 3, vocab_size=320)


@pytest.fixture(scope="module")
def plain_tok(tok):
    """The same tokenizer without a chat template."""
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = None
    return t


def cfg(path, **kw) -> DataConfig:
    return DataConfig(path=str(path), **{"max_prompt_tokens": 512, "max_response_tokens": 512, **kw})


def write_jsonl(path: Path, rows) -> Path:
    """rows: dicts (written as JSON) or raw strings (written as they are, e.g. '' for a blank line)."""
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def write_parquet(path: Path, rows) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = list(dict.fromkeys(k for row in rows for k in row))  # from_pylist would keep the 1st row's keys only
    pq.write_table(pa.Table.from_pydict({k: [row.get(k) for row in rows] for k in names}), path)
    return path


PAIR = {"prompt": "What color is a banana?", "chosen": "A banana is yellow.", "rejected": "A banana is blue."}
PROMPT = {"prompt": "What color is a banana?", "reference": "A banana is yellow.", "query_type": "closed", "topic": "fruit"}

HH_PREFIX = "\n\nHuman: Hi there!\n\nAssistant: Hello, how can I help?\n\nHuman: What is 2+2?\n\nAssistant:"
ANSWER = "2+2 is 4.\n\nIt is 5, obviously, only for large values of 2."  # a paragraph break is no turn
HH_ROW = {"chosen": HH_PREFIX + " 2+2 is 4.", "rejected": HH_PREFIX + " " + ANSWER}
HH_MESSAGES = [
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Hello, how can I help?"},
    {"role": "user", "content": "What is 2+2?"},
]


# ---------------------------------------------------------------------------------------------
# Sources


def test_json_jsonl_parquet_give_identical_datasets(tmp_path, tok):
    pairs = [PAIR, {**PAIR, "prompt": "What color is grass?", "chosen": "Grass is green.", "extra": 3}, HH_ROW]
    prompts = [PROMPT, {"messages": HH_MESSAGES, "query_type": None}]
    for kind, rows, load in (("pref", pairs, load_preferences), ("prompt", prompts, load_prompts)):
        jsonl = write_jsonl(tmp_path / f"{kind}.jsonl", rows)
        array = tmp_path / f"{kind}.json"
        array.write_text(json.dumps(rows, indent=2))
        lines_json = write_jsonl(tmp_path / f"{kind}_lines.json", rows)  # JSON-lines layout in a .json file
        parquet = write_parquet(tmp_path / f"{kind}.parquet", rows)
        expected, stats = load(cfg(jsonl), tok)
        assert stats.kept == len(rows)
        for path in (array, lines_json, parquet):
            got, _ = load(cfg(path), tok)
            assert got.column_names == expected.column_names, path
            assert got.to_list() == expected.to_list(), path


def test_folder_of_shards_by_split_and_hub_builder_with_files_subset_and_slices(tmp_path, tok):
    """A local folder of Parquet/JSONL shards laid out as the Hub does (data/train-*.parquet, data/test-*.jsonl)
    reads the shards of its split, in path order; `data.data_dir` picks a subfolder; the `json` builder
    of the datasets library with `data.data_files` reads files offline, and hub splits slice."""
    rows = [{**PAIR, "prompt": f"What color is thing {i}?"} for i in range(6)]
    data = tmp_path / "repo" / "data"
    data.mkdir(parents=True)
    write_parquet(data / "train-00000-of-00002.parquet", rows[:2])
    write_jsonl(data / "train-00001-of-00002.jsonl", rows[2:4])
    write_jsonl(data / "test-00000-of-00001.jsonl", rows[4:])
    train, stats = load_preferences(cfg(tmp_path / "repo"), tok)
    assert train["prompt"] == [r["prompt"] for r in rows[:4]] and stats.source == f"{tmp_path / 'repo'}[train]"
    held_out, _ = load_preferences(cfg(tmp_path / "repo"), tok, eval_set=True)  # eval_split=test of the folder
    assert held_out["prompt"] == [r["prompt"] for r in rows[4:]]
    assert load_preferences(cfg(tmp_path / "repo", data_dir="data"), tok)[0]["prompt"] == train["prompt"]
    with pytest.raises(DataError, match="has shards named by split but none for split 'validation'"):
        load_preferences(cfg(tmp_path / "repo", split="validation"), tok)
    plain = tmp_path / "plain"
    plain.mkdir()
    write_jsonl(plain / "part-a.jsonl", rows[:3])
    assert len(load_preferences(cfg(plain), tok)[0]) == 3  # no split names: every shard is the split
    (tmp_path / "repo" / "empty").mkdir()
    with pytest.raises(DataError, match="folder without .parquet, .jsonl or .json files"):
        load_preferences(cfg(tmp_path / "repo", data_dir="empty"), tok)

    files = [str(data / "train-00001-of-00002.jsonl"), str(data / "test-00000-of-00001.jsonl")]
    sliced, stats = load_preferences(cfg("json", data_files=files, split="train[1:3]"), tok)
    assert sliced["prompt"] == [r["prompt"] for r in rows[3:5]] and stats.source == "json[train[1:3]]"


def test_read_rows_labels_lines_and_rows(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [PAIR, "", "   ", PAIR])
    assert [w for w, _ in read_rows(str(jsonl))] == [f"{jsonl} line 1", f"{jsonl} line 4"]
    array = tmp_path / "a.json"
    array.write_text(json.dumps([PAIR, PAIR]))
    assert [w for w, _ in read_rows(str(array))] == [f"{array} row 1", f"{array} row 2"]
    parquet = write_parquet(tmp_path / "a.parquet", [PAIR, PAIR])
    assert [w for w, _ in read_rows(str(parquet))] == [f"{parquet} row 1", f"{parquet} row 2"]
    assert len(read_rows(str(jsonl), max_rows=1)) == 1


def test_builtin_source(tok):
    ds, stats = load_prompts(cfg("builtin:prompts"), tok)
    assert stats.source == "builtin:prompts[train]" and stats.kept == len(ds) > 0
    assert {"prompt", "prompt_text", "prompt_ids", "reference", "query_type", "topic"} <= set(ds.column_names)
    ds, stats = load_preferences(cfg("builtin:preferences", max_rows=50), tok)
    assert stats.rows_read == 50 and stats.kept == 50
    assert all(ids[-1] == tok.eos_token_id for ids in list(ds["chosen_ids"]) + list(ds["rejected_ids"]))
    with pytest.raises(DataError, match=r"^builtin:nope: unknown built-in dataset or split 'train' \("):
        load_prompts(cfg("builtin:nope"), tok)


def test_hub_error_is_one_line_naming_the_dataset(tok, monkeypatch):
    import datasets

    def offline(name, *args, split=None, **kw):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        load_preferences(cfg("Anthropic/hh-rlhf"), tok)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("Anthropic/hh-rlhf: cannot load split 'train' from the Hugging Face hub (ConnectionError: Couldn't reach")


def test_source_errors(tmp_path, tok):
    with pytest.raises(DataError, match=r"^data/nope\.jsonl: file not found$"):
        load_prompts(cfg("data/nope.jsonl"), tok)
    csv = tmp_path / "a.csv"
    csv.write_text("prompt\nhi\n")
    with pytest.raises(DataError, match=r"a\.csv: has an unsupported file type"):
        load_prompts(cfg(csv), tok)
    bad_array = tmp_path / "bad.json"
    bad_array.write_text('[\n {"prompt": "a"},\n {"prompt": "b",}\n]')
    with pytest.raises(DataError, match=rf"^{bad_array} line 3 column \d+: invalid JSON \("):
        load_prompts(cfg(bad_array), tok)
    local = write_jsonl(tmp_path / "p.jsonl", [PROMPT])
    with pytest.raises(DataError, match="set data.eval_path"):
        load_prompts(cfg(local), tok, eval_set=True)
    ds, _ = load_prompts(cfg(local, eval_path="builtin:prompts"), tok, eval_set=True)
    assert len(ds) == 62  # the built-in test split


# ---------------------------------------------------------------------------------------------
# Malformed rows: every error names file, line (or row) and field


PREF_ERRORS = [
    ({"prompt": "q", "chosen": "a"}, "field 'rejected' is missing"),
    ({"prompt": "q", "chosen": "a", "rejected": None}, "field 'rejected' is missing"),
    ({"prompt": "q", "rejected": "a"}, "field 'chosen' is missing"),
    ({"prompt": "q", "chosen": 3, "rejected": "a"}, "field 'chosen' must be a string or a list of messages (got number)"),
    ({"prompt": 7, "chosen": "a", "rejected": "b"}, "field 'prompt' must be a string or a list of messages (got number)"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "field 'chosen' is empty"),
    ({"prompt": "q", "chosen": "a", "rejected": "  \n"}, "field 'rejected' is empty"),
    ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "field 'prompt' is empty"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "field 'rejected' is identical to 'chosen'"),
    (
        {"prompt": "q", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"},
        "field 'chosen' must hold exactly one assistant message after the prompt (got roles: user)",
    ),
    (
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Bye\n\nAssistant: Hello"},
        "field 'rejected' shares no dialogue prefix with 'chosen' that ends in '\\n\\nAssistant:' (HH-RLHF layout)",
    ),
    (
        {"chosen": "\n\nHuman: Hi\n\nAssistant: A", "rejected": "\n\nHuman: Hi\n\nAssistant: A"},
        "field 'rejected' is identical to 'chosen'",
    ),
    (
        {"chosen": "\n\nHuman: Hi\n\nAssistant: A", "rejected": "\n\nHuman: Hi\n\nAssistant: B\n\nHuman: ok\n\nAssistant: C"},
        "field 'rejected' continues the dialogue after the answer that differs (HH-RLHF layout: only the last turn may differ)",
    ),
    (
        {"chosen": "\n\nHuman: Hi\n\nAssistant: ", "rejected": "\n\nHuman: Hi\n\nAssistant: B"},
        "field 'chosen' is empty",
    ),
    ({"chosen": "plain a", "rejected": "plain b"}, "field 'prompt' is missing (and 'chosen'/'rejected' are not HH-RLHF"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b"', "invalid JSON (Expecting ',' delimiter, column 47)"),
    ("[1, 2]", "is not a JSON object (got list)"),
]

PROMPT_ERRORS = [
    ({"reference": "r"}, "field 'prompt' is missing (a prompt row needs 'prompt' or 'messages')"),
    ({"prompt": ""}, "field 'prompt' is empty"),
    ({"prompt": ["q"]}, "field 'prompt[0]' must be a {role, content} object (got string)"),
    ({"prompt": "q", "reference": 5}, "field 'reference' must be a string or null (got number)"),
    ({"prompt": "q", "query_type": "yes/no"}, "field 'query_type' must be 'open', 'closed' or null (got 'yes/no')"),
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]},
        "field 'messages[1].role' must be one of 'system', 'user', 'assistant', 'tool' (got 'bot')",
    ),
    ({"messages": [{"role": "user"}]}, "field 'messages[0].content' is missing"),
    ({"messages": [{"role": "user", "content": ["x"]}]}, "field 'messages[0].content' must be a string (got list)"),
    ({"messages": "hi"}, "field 'messages' must be a list of {role, content} messages (got string)"),
    ({"messages": []}, "field 'messages' is empty"),
    (
        {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
        "field 'messages' must end with a user turn (or a user turn then one assistant turn)",
    ),
]


def _bad_file(tmp_path: Path, good: dict, bad) -> Path:
    # line 2 is blank: the bad row is the 2nd row but sits on line 3
    return write_jsonl(tmp_path / "data.jsonl", [good, "", bad, good])


@pytest.mark.parametrize("bad,problem", PREF_ERRORS, ids=[p[:40] for _, p in PREF_ERRORS])
def test_preference_errors_name_file_line_and_field(tmp_path, tok, bad, problem):
    path = _bad_file(tmp_path, PAIR, bad)
    with pytest.raises(DataError) as e:
        load_preferences(cfg(path), tok)
    assert str(e.value).startswith(f"{path} line 3: {problem}")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad,problem", PROMPT_ERRORS, ids=[p[:40] for _, p in PROMPT_ERRORS])
def test_prompt_errors_name_file_line_and_field(tmp_path, tok, bad, problem):
    path = _bad_file(tmp_path, PROMPT, bad)
    with pytest.raises(DataError) as e:
        load_prompts(cfg(path), tok)
    assert str(e.value) == f"{path} line 3: {problem}"


def test_json_array_and_parquet_errors_name_the_row(tmp_path, tok):
    rows = [PAIR, PAIR, {"prompt": "q", "chosen": "a", "rejected": None}]
    array = tmp_path / "prefs.json"
    array.write_text(json.dumps(rows))
    parquet = write_parquet(tmp_path / "prefs.parquet", rows)
    for path in (array, parquet):
        with pytest.raises(DataError) as e:
            load_preferences(cfg(path), tok)
        assert str(e.value) == f"{path} row 3: field 'rejected' is missing"


def test_extra_column_with_mixed_types_names_the_row(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [{**PROMPT, "topic": "fruit"}, {**PROMPT, "topic": 3}])
    with pytest.raises(DataError, match=rf"^{path} line 2: field 'topic' has a different type than in earlier rows \(string\)"):
        load_prompts(cfg(path), tok)


def test_chat_template_error_names_the_row(tmp_path, tok):
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}x"
    path = write_jsonl(tmp_path / "p.jsonl", [PROMPT, {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}])
    with pytest.raises(DataError) as e:
        load_prompts(cfg(path), t)
    assert str(e.value) == f"{path} line 2: field 'messages' cannot be rendered by the tokenizer's chat template (System role not supported)"


def test_no_usable_rows_is_an_error(tmp_path, tok):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=rf"^{empty}: has no usable rows \(read 0, kept 0,"):
        load_prompts(cfg(empty), tok)
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": ""}])
    with pytest.raises(DataError, match=r"has no usable rows \(read 1, kept 0, .* skipped 1 \[field 'prompt' is empty: 1\]\)$"):
        load_prompts(cfg(path, on_error="skip"), tok)


def test_tokenizer_without_eos_is_a_one_line_error(tmp_path, tok):
    import copy

    t = copy.deepcopy(tok)
    t.eos_token = None
    with pytest.raises(DataError, match="has no eos token; preference responses must end with one"):
        load_preferences(cfg(write_jsonl(tmp_path / "p.jsonl", [PAIR])), t)


def test_data_error_pickles():
    e = DataError("x.jsonl line 7", "is missing", "rejected")
    back = pickle.loads(pickle.dumps(e))
    assert str(back) == str(e) == "x.jsonl line 7: field 'rejected' is missing" and back.reason == e.reason


def test_skip_mode_counts_each_reason(tmp_path, tok, caplog):
    path = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            PAIR,
            {"prompt": "q", "chosen": "a"},
            {"prompt": "q2", "chosen": "b"},
            {"prompt": "q", "chosen": "x", "rejected": "x"},
            "{not json",
            "",
            {"prompt": "q", "chosen": "a", "rejected": ""},
            {"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "robot", "content": "b"}]},
            {"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "judge", "content": "b"}]},
            {**PAIR, "chosen": "A banana is green."},
        ],
    )
    with caplog.at_level(logging.INFO, logger="rlhf.data"):
        ds, stats = load_preferences(cfg(path, on_error="skip"), tok)
    assert stats.skipped == {
        "field 'rejected' is missing": 2,
        "field 'rejected' is identical to 'chosen'": 1,
        "invalid JSON": 1,
        "field 'rejected' is empty": 1,
        "field 'rejected[*].role' must be one of 'system', 'user', 'assistant', 'tool'": 2,
    }
    assert stats.rows_read == 9 and stats.kept == 2 == len(ds) and stats.n_skipped == 7
    assert stats.rows_read == stats.kept + stats.dropped_long + stats.n_skipped
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped 7 malformed rows of 9" in m for m in warnings)
    assert any("field 'rejected' is missing: 2" in r.getMessage() for r in caplog.records)


def test_prompt_skip_mode(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [PROMPT, {"prompt": ""}, {"query_type": "open"}, {"prompt": "q", "query_type": "x"}])
    ds, stats = load_prompts(cfg(path, on_error="skip"), tok)
    assert len(ds) == 1 and stats.skipped == {
        "field 'prompt' is empty": 1,
        "field 'prompt' is missing": 1,
        "field 'query_type' must be 'open', 'closed' or null": 1,
    }


# ---------------------------------------------------------------------------------------------
# Layouts and rendering


def test_hh_rlhf_two_turn_split(tmp_path, tok, plain_tok):
    path = write_jsonl(tmp_path / "hh.jsonl", [{**HH_ROW, "source": "helpful-base"}])
    ds, _ = load_preferences(cfg(path), tok)
    row = ds[0]
    assert row["prompt"] == "What is 2+2?"
    assert row["chosen"] == "2+2 is 4." and row["rejected"] == ANSWER
    assert row["prompt_text"] == tok.apply_chat_template(HH_MESSAGES, tokenize=False, add_generation_prompt=True)
    assert row["prompt_text"] == "<|bos|><|user|>Hi there!<|assistant|>Hello, how can I help?<|eos|><|user|>What is 2+2?<|assistant|>"
    assert row["prompt_ids"] == tok(row["prompt_text"], add_special_tokens=False).input_ids
    assert row["chosen_ids"] == tok("2+2 is 4.", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert row["rejected_ids"] == tok(ANSWER, add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert row["source"] == "helpful-base"
    # without a template the prompt is the original HH dialogue prefix
    ds, _ = load_preferences(cfg(path), plain_tok)
    assert ds[0]["prompt_text"] == HH_PREFIX
    # the same dialogue as two chat lists sharing their leading messages
    chats = {
        "chosen": HH_MESSAGES + [{"role": "assistant", "content": "2+2 is 4."}],
        "rejected": HH_MESSAGES + [{"role": "assistant", "content": ANSWER}],
    }
    ds2, _ = load_preferences(cfg(write_jsonl(tmp_path / "chats.jsonl", [chats])), tok)
    for key in ("prompt", "prompt_text", "prompt_ids", "chosen", "rejected", "chosen_ids", "rejected_ids"):
        assert ds2[0][key] == row[key], key


def test_chat_lists_repeating_the_prompt(tmp_path, tok):
    """UltraFeedback-style: a prompt string, and chosen/rejected chats that start with it."""
    user = {"role": "user", "content": PAIR["prompt"]}
    row = {
        "prompt": PAIR["prompt"],
        "chosen": [user, {"role": "assistant", "content": PAIR["chosen"]}],
        "rejected": [user, {"role": "assistant", "content": PAIR["rejected"]}],
    }
    got, _ = load_preferences(cfg(write_jsonl(tmp_path / "uf.jsonl", [row])), tok)
    want, _ = load_preferences(cfg(write_jsonl(tmp_path / "plain.jsonl", [PAIR])), tok)
    assert got.to_list() == want.to_list()


def test_chat_template_applied_only_when_present_and_enabled(tmp_path, tok, plain_tok):
    path = write_jsonl(tmp_path / "p.jsonl", [PROMPT, {"messages": [{"role": "system", "content": "Be brief."}, *HH_MESSAGES]}])
    ds, _ = load_prompts(cfg(path), tok)
    assert ds[0]["prompt_text"] == "<|bos|><|user|>What color is a banana?<|assistant|>"
    assert ds[0]["prompt_ids"] == tok(ds[0]["prompt_text"], add_special_tokens=False).input_ids
    assert ds[0]["prompt_ids"][-1] == tok.convert_tokens_to_ids("<|assistant|>")
    assert ds[1]["prompt_text"].startswith("<|bos|><|system|>Be brief.<|user|>Hi there!")
    assert ds[1]["prompt"] == "What is 2+2?"  # plain prompt: the last user turn
    for t, c in ((tok, cfg(path, chat_template=False)), (plain_tok, cfg(path))):
        ds, _ = load_prompts(c, t)
        assert ds[0]["prompt_text"] == "What color is a banana?"
        assert ds[0]["prompt_ids"] == t("What color is a banana?").input_ids
        assert ds[1]["prompt_text"] == "\n\nSystem: Be brief." + HH_PREFIX


def test_prompt_columns_and_final_assistant_turn_becomes_reference(tmp_path, tok):
    rows = [
        PROMPT,
        {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}], "query_type": "closed"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "reference": "given"},
    ]
    ds, _ = load_prompts(cfg(write_jsonl(tmp_path / "p.jsonl", rows)), tok)
    assert ds.column_names[:6] == ["prompt", "chat", "prompt_text", "prompt_ids", "reference", "query_type"]
    assert ds[1]["chat"] == [{"role": "user", "content": "What is 2+2?"}]  # the prompt's whole chat, answer removed
    assert ds["reference"] == ["A banana is yellow.", "4", "given"]
    assert ds["query_type"] == ["closed", "closed", None]
    assert ds["topic"] == ["fruit", None, None]
    assert ds[1]["prompt_text"] == "<|bos|><|user|>What is 2+2?<|assistant|>"


# ---------------------------------------------------------------------------------------------
# Length limits


def test_drop_and_truncate_long_rows(tmp_path, tok, caplog):
    long_prompt = "Tell me about the ocean. " * 4
    long_answer = "The ocean is deep and full of fish and waves. " * 3
    rows = [PAIR, {**PAIR, "prompt": long_prompt}, {**PAIR, "chosen": long_answer}]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    full, _ = load_preferences(cfg(path), tok)
    short_p = len(full[0]["prompt_ids"])
    limits = dict(max_prompt_tokens=short_p + 2, max_response_tokens=12)
    assert len(full[1]["prompt_ids"]) > short_p + 2 and len(full[2]["chosen_ids"]) > 12
    assert max(len(full[0]["chosen_ids"]), len(full[0]["rejected_ids"])) <= 12

    with caplog.at_level(logging.WARNING, logger="rlhf.data"):
        dropped, stats = load_preferences(cfg(path, on_long="drop", **limits), tok)
    assert any("dropped 2 of 3 rows over the length limits" in r.getMessage() for r in caplog.records)
    assert (stats.kept, stats.dropped_long, stats.truncated) == (1, 2, 0)
    assert dropped.to_list() == full.select([0]).to_list()
    assert stats.prompt_tokens.max == len(full[1]["prompt_ids"])  # lengths are measured before the limit

    cut, stats = load_preferences(cfg(path, on_long="truncate", **limits), tok)
    assert (stats.kept, stats.dropped_long, stats.truncated) == (3, 0, 2)
    assert cut[0] == full[0]
    # prompts keep their end (the generation prompt survives), responses their start
    assert cut[1]["prompt_ids"] == full[1]["prompt_ids"][-(short_p + 2):]
    assert cut[1]["prompt_ids"][-1] == tok.convert_tokens_to_ids("<|assistant|>")
    assert cut[1]["prompt_text"] == tok.decode(cut[1]["prompt_ids"])
    assert cut[1]["chosen_ids"] == full[1]["chosen_ids"]
    assert cut[2]["chosen_ids"] == full[2]["chosen_ids"][:12]
    assert cut[2]["chosen_ids"][-1] != tok.eos_token_id  # a cut answer is unfinished
    assert cut[2]["rejected_ids"] == full[2]["rejected_ids"]
    assert cut[2]["chosen"] == long_answer  # raw strings stay whole


def test_truncation_that_makes_a_pair_identical_drops_it(tmp_path, tok):
    row = {"prompt": "q", "chosen": "The ocean is deep. Fish.", "rejected": "The ocean is deep. Waves."}
    short = {"prompt": "q", "chosen": "Fish.", "rejected": "Waves."}
    path = write_jsonl(tmp_path / "p.jsonl", [short, row])
    n = len(tok("The ocean is deep.", add_special_tokens=False).input_ids)
    assert n >= len(tok("Waves.", add_special_tokens=False).input_ids) + 1  # the short pair fits whole
    ds, stats = load_preferences(cfg(path, on_long="truncate", max_response_tokens=n), tok)
    assert len(ds) == 1 and stats.dropped_long == 1 and stats.truncated == 0


def test_prompt_length_limit_and_stats(tmp_path, tok):
    rows = [{"prompt": "Hi there!"}, {"prompt": "Tell me about the ocean. " * 5}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    full, stats = load_prompts(cfg(path), tok)
    lengths = sorted(len(x) for x in full["prompt_ids"])
    assert (stats.prompt_tokens.min, stats.prompt_tokens.max) == (lengths[0], lengths[1])
    assert stats.prompt_tokens.p50 == pytest.approx(sum(lengths) / 2)
    assert stats.prompt_tokens.p95 == pytest.approx(lengths[0] + 0.95 * (lengths[1] - lengths[0]))
    ds, stats = load_prompts(cfg(path, max_prompt_tokens=lengths[0]), tok)
    assert (stats.kept, stats.dropped_long) == (1, 1)
    ds, stats = load_prompts(cfg(path, max_prompt_tokens=lengths[0], on_long="truncate"), tok)
    assert stats.truncated == 1 and ds[1]["prompt_ids"] == full[1]["prompt_ids"][-lengths[0]:]


# ---------------------------------------------------------------------------------------------
# Collation


def test_collate_prompts_left_pads():
    rows = [{"prompt_ids": [5, 6, 7]}, {"prompt_ids": [8]}]
    input_ids, attention_mask = collate_prompts(rows, pad_id=0)
    assert torch.equal(input_ids, torch.tensor([[5, 6, 7], [0, 0, 8]]))
    assert torch.equal(attention_mask, torch.tensor([[1, 1, 1], [0, 0, 1]]))
    assert input_ids.dtype == attention_mask.dtype == torch.long


def test_collate_pairs_stacked_chosen_then_rejected_right_padded():
    rows = [
        {"prompt_ids": [5, 6], "chosen_ids": [7, 1], "rejected_ids": [8, 9, 1]},
        {"prompt_ids": [4], "chosen_ids": [3, 1], "rejected_ids": [1]},
    ]
    pairs = collate_pairs(rows, pad_id=0).check()
    assert pairs.num_rows == 2
    assert pairs.prompt_len.tolist() == [2, 1]
    assert pairs.chosen_len.tolist() == [2, 2] and pairs.rejected_len.tolist() == [3, 1]
    b = pairs.stacked(pad_id=0)
    # rows: pair 0 chosen, pair 1 chosen, pair 0 rejected, pair 1 rejected (chosen half padded from 4 to 5)
    assert torch.equal(b.input_ids, torch.tensor([[5, 6, 7, 1, 0], [4, 3, 1, 0, 0], [5, 6, 8, 9, 1], [4, 1, 0, 0, 0]]))
    assert torch.equal(b.attention_mask, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]))
    assert torch.equal(b.response_mask, torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]))
    assert b.input_ids.dtype == b.attention_mask.dtype == b.response_mask.dtype == torch.long
    # a row selection is cut to its own longest sequence (pair 1: 3 tokens)
    one = pairs.select([1]).stacked(pad_id=0)
    assert torch.equal(one.input_ids, torch.tensor([[4, 3, 1], [4, 1, 0]]))
    assert torch.equal(one.attention_mask, torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert torch.equal(one.response_mask, torch.tensor([[0, 1, 1], [0, 1, 0]]))


def test_collate_from_a_loaded_dataset(tmp_path, tok):
    ds, _ = load_preferences(cfg(write_jsonl(tmp_path / "p.jsonl", [PAIR, HH_ROW])), tok)
    b = collate_pairs(ds, tok.pad_token_id).stacked(tok.pad_token_id)
    r0 = ds[0]
    n = len(r0["prompt_ids"]) + len(r0["chosen_ids"])
    assert b.input_ids[0, :n].tolist() == r0["prompt_ids"] + r0["chosen_ids"]
    assert b.response_mask[0].sum() == len(r0["chosen_ids"]) and b.response_mask[2].sum() == len(r0["rejected_ids"])
    input_ids, mask = collate_prompts(ds, tok.pad_token_id)
    assert input_ids[0, -len(r0["prompt_ids"]):].tolist() == r0["prompt_ids"]


# ---------------------------------------------------------------------------------------------
# `rlhf data check`


def _check_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_data_check_args(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def tok_dir(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    return str(path)


def test_data_check_line7_missing_rejected(tok_dir, capsys):
    code = run_data_check(_check_args(str(LINE7_FILE), "--kind", "preference", "--tokenizer", tok_dir))
    out, err = capsys.readouterr()
    assert code == 2
    assert err == f"rlhf: error: {LINE7_FILE} line 7: field 'rejected' is missing\n"


def test_data_check_skip_reports_counts(tok_dir, capsys):
    code = run_data_check(_check_args(str(LINE7_FILE), "--kind", "preference", "--tokenizer", tok_dir, "--on-error", "skip"))
    out, err = capsys.readouterr()
    assert code == 0
    assert "1  field 'rejected' is missing" in out
    assert "WARNING: 1 of 7 rows were skipped as malformed" in out


def test_data_check_good_builtin_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path))
    code = run_data_check(_check_args("builtin:preferences", "--kind", "preference", "--max-rows", "200"))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "rows read                200" in out and "OK: 200 of 200 rows usable" in out
    for name in ("prompt", "chosen", "rejected"):
        assert f"\n  {name} " in out


def test_data_check_unusable_tokenizer(capsys):
    code = run_data_check(_check_args(str(LINE7_FILE), "--kind", "preference", "--tokenizer", "/nonexistent/tok"))
    assert code == 2 and "cannot load tokenizer '/nonexistent/tok'" in capsys.readouterr().err


def test_rlhf_data_check_command_line7(tok_dir):
    """The acceptance case through the real command line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "data", "check", str(LINE7_FILE), "--kind", "preference", "--tokenizer", tok_dir],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"rlhf: error: {LINE7_FILE} line 7: field 'rejected' is missing"
