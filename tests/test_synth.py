"""Size specs and synthesised data (`orchestrator.tools.synth`): what `rlhf bench` and `benchmarks/` run on."""

from __future__ import annotations

import json

import pytest

from orchestrator.tools.synth import SpecError, is_spec, parse_spec, spec_config, spec_model_dir, synth_rows, word_tokenizer

ISSUE_SPEC = "llama:vocab=8192,hidden=256,intermediate=704,layers=4,heads=4"


def test_spec_parsing_and_one_line_errors():
    assert parse_spec(ISSUE_SPEC) == ("llama", {"vocab_size": 8192, "hidden_size": 256, "intermediate_size": 704,
                                                 "num_hidden_layers": 4, "num_attention_heads": 4})
    assert is_spec(ISSUE_SPEC) and not is_spec("builtin:tiny") and not is_spec("gpt2")
    cfg = spec_config("gpt2:vocab=100,hidden=64,layers=2,heads=2,positions=128")
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_positions, cfg.vocab_size) == (64, 2, 2, 128, 100)
    for bad, words in [("llama:hidden=64", "needs vocab"), ("llama:vocab=100,foo=3", "foo is not a key of LlamaConfig"),
                       ("nope:vocab=100", "'nope' is not a transformers model_type"), ("llama:vocab=100,layers", "not key=value"),
                       ("llama:vocab=8", "too small"), ("llama:vocab=abc", "vocab_size='abc' must be a whole number"),
                       ("llama:vocab=100,hidden=-3", "hidden_size=-3 must be a whole number"),
                       ("llama:vocab=100,hidden=30,heads=4", "LlamaConfig refuses it: .*not a multiple")]:
        with pytest.raises(SpecError, match=words):
            spec_config(bad)


def test_issue_spec_has_the_hand_counted_parameters(tmp_path):
    """Embedding + LM head 2 x 8192 x 256; per layer attention 4 x 256^2, SwiGLU 3 x 256 x 704, two norms;
    the final norm: 7,407,872."""
    from actors.modeling import count_parameters, load_causal_lm, load_tokenizer

    folder = spec_model_dir(ISSUE_SPEC, cache_dir=str(tmp_path))
    hand = 2 * 8192 * 256 + 4 * (4 * 256 * 256 + 3 * 256 * 704 + 2 * 256) + 256
    assert count_parameters(load_causal_lm(folder)) == hand == 7_407_872
    assert json.loads((tmp_path / folder / "reward" / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    assert len(load_tokenizer(folder)) == 8192
    assert spec_model_dir(ISSUE_SPEC, cache_dir=str(tmp_path)) == folder  # cached


def test_synthesised_rows_have_the_asked_lengths_and_round_trip():
    tok = word_tokenizer(300)
    rows = synth_rows("preference", tok, 5, prompt_len=7, response_len=11, seed=3)
    assert rows == synth_rows("preference", tok, 5, prompt_len=7, response_len=11, seed=3)  # seeded
    for r in rows:
        ids = tok(r["prompt"])["input_ids"]
        assert len(ids) == 7 and not set(ids) & set(tok.all_special_ids)
        assert len(tok(r["chosen"])["input_ids"]) == len(tok(r["rejected"])["input_ids"]) == 11
        assert tok.decode(tok(r["prompt"] + r["chosen"])["input_ids"]) == r["prompt"] + r["chosen"]
    assert set(synth_rows("sft", tok, 2, 3, 4)[0]) == {"prompt", "response"}
    assert set(synth_rows("prompt", tok, 2, 3, 4)[0]) == {"prompt"}


def test_length_ranges_draw_each_length_and_leave_fixed_rows_as_they_were():
    tok = word_tokenizer(300)
    rows = synth_rows("preference", tok, 200, prompt_len=(2, 9), response_len=(1, 4), seed=3)
    n = lambda text: len(tok(text)["input_ids"])  # noqa: E731
    prompts, chosen, rejected = ([n(r[k]) for r in rows] for k in ("prompt", "chosen", "rejected"))
    assert set(prompts) == set(range(2, 10)) and set(chosen) == set(rejected) == set(range(1, 5))
    assert chosen != rejected  # each response draws its own length
    # a fixed length draws no length: the rows the code gave before ranges existed (pinned from commit a0f6d93)
    assert synth_rows("sft", tok, 1, 3, 2, seed=1) == [{"prompt": "w72 w295 w36", "response": " w134 w64"}]
