"""`rlhf sft` in local mode: the loss it reports is the token-mean cross-entropy of the response tokens
(computed here independently, one unpadded row at a time), micro-batching does not change the update,
resume equals an uninterrupted run, and a user's JSONL trains a policy that `rlhf ppo` then starts from."""

from __future__ import annotations

import json

import pytest
import torch

from ppo_helpers import tiny_model_dir

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(str(tmp_path_factory.mktemp("cache")))


def _cfg(model_dir, out, *extra):
    from orchestrator.registry import load_config

    return load_config("sft", None, [
        f"policy.path={model_dir}", f"run.output_dir={out}", "run.steps=2", "run.save_every=0", "sft.batch_size=8",
        "policy.micro_batch_size=4", "policy.warmup_steps=0", "policy.lr_schedule=constant", "policy.lr=1e-3",
        "data.max_rows=64", "sft.eval_rows=16", "policy.max_new_tokens=8", *extra,
    ])


def _records(out) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_reported_loss_is_the_token_mean_cross_entropy_of_the_responses(model_dir, tmp_path):
    from actors.modeling import load_causal_lm, load_tokenizer
    from orchestrator.config import DataConfig
    from orchestrator.data import load_sft
    from orchestrator.registry import run
    from orchestrator.core.streams import IndexStream

    run("sft", _cfg(model_dir, tmp_path / "run"))
    first = _records(tmp_path / "run")[1]
    assert first["step"] == 1
    rows = load_sft(DataConfig(path="builtin:sft", max_rows=64), load_tokenizer(model_dir))[0].to_list()
    batch = [rows[i] for i in IndexStream(len(rows), 0).next(8)]  # the rows of step 1 (run.seed=0)
    model = load_causal_lm(model_dir)
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for r in batch:
            ids = torch.tensor([r["prompt_ids"] + r["response_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            token_lp = logp.gather(-1, ids[0, 1:, None])[:, 0]
            nll -= token_lp[len(r["prompt_ids"]) - 1:].sum().item()  # response tokens only, eos included
            tokens += len(r["response_ids"])
    assert first["sft/loss"] == pytest.approx(nll / tokens, rel=1e-5)
    assert first["policy/lr"] == pytest.approx(1e-3)


@pytest.mark.slow  # an invariance; tests/test_engine.py checks the rule itself fast
def test_micro_batches_do_not_change_the_update(model_dir, tmp_path):
    from orchestrator.registry import run

    run("sft", _cfg(model_dir, tmp_path / "m4"))
    run("sft", _cfg(model_dir, tmp_path / "m1", "policy.micro_batch_size=1"))
    a, b = _records(tmp_path / "m4"), _records(tmp_path / "m1")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2]
    for ra, rb in zip(a, b):
        assert rb == pytest.approx(ra, rel=1e-4, abs=1e-6), (ra, rb)


def test_resume_equals_uninterrupted_and_the_policy_feeds_ppo(model_dir, tmp_path):
    from orchestrator.registry import run
    from ppo_helpers import tiny_ppo_config

    full, split = tmp_path / "full", tmp_path / "split"
    run("sft", _cfg(model_dir, full, "run.steps=4", "run.save_every=2", "run.eval_every=2"))
    run("sft", _cfg(model_dir, split, "run.steps=2", "run.save_every=2", "run.eval_every=2"))
    summary = run("sft", _cfg(model_dir, split, "run.steps=4", "run.save_every=2", "run.eval_every=2"))
    a, b = _records(full), _records(split)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key, value in ra.items():
            assert rb[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (ra["step"], key)
    assert {"eval/loss", "eval/ppl", "eval/gold"} <= a[0].keys() & a[4].keys()
    assert summary["eval_end"]["loss"] == a[4]["eval/loss"] and (full / "samples_end.jsonl").is_file()
    ppo_summary = run("ppo", tiny_ppo_config(str(full / "policy"), str(tmp_path / "ppo"), "run.steps=1"))
    assert ppo_summary["steps"] == 1


def test_a_users_jsonl_of_prompt_response_and_chat_rows(model_dir, tmp_path):
    from orchestrator.cli import main

    data = tmp_path / "demos.jsonl"
    rows = [{"prompt": "Tell me about fruit.", "response": "Apples are sweet."},
            {"prompt": "Name a color.", "completion": "Red."},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                          {"role": "assistant", "content": "Hello."}]}] * 4
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert main(["sft", f"policy.path={model_dir}", f"data.path={data}", f"data.eval_path={data}", f"run.output_dir={out}",
                 "run.steps=2", "sft.batch_size=4", "policy.micro_batch_size=2", "policy.warmup_steps=0"]) == 0
    assert (out / "policy" / "model.safetensors").is_file()
    assert "eval/gold" not in _records(out)[0]  # user data: no gold evaluation
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q"}) + "\n")
    assert main(["sft", f"policy.path={model_dir}", f"data.path={bad}", f"data.eval_path={bad}"]) == 2


def test_packing_changes_nothing_but_the_rows(model_dir, tmp_path):
    """sft.packing: examples packed into rows of up to pack_length tokens, positions restarting per
    example and attention kept within it: the same losses and the same update as one example per row."""
    from actors.types import Sequences
    from orchestrator.registry import run

    rows = Sequences(torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [1, 2, 3, 4]]), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]),
                     torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1]]))
    packed = rows.packed(5, pad_id=0)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9], [1, 2, 3, 4, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert packed.response_mask.tolist() == [[0, 1, 1, 0, 1], [0, 0, 1, 1, 0]]
    assert packed.attention_mask.sum().item() == rows.attention_mask.sum().item()

    run("sft", _cfg(model_dir, tmp_path / "rows"))
    run("sft", _cfg(model_dir, tmp_path / "packed", "sft.packing=true", "sft.pack_length=128", "policy.micro_batch_size=1"))
    a, b = _records(tmp_path / "rows"), _records(tmp_path / "packed")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2]
    for ra, rb in zip(a, b):
        assert rb == pytest.approx(ra, rel=1e-4, abs=1e-6), (ra, rb)
