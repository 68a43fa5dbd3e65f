"""DPO in local mode (no Ray): reference log-probs, the DPO / IPO / cDPO losses as trained, LoRA's
adapter-free reference, resume == uninterrupted, outputs, and config errors. The policy is a local
role group, called as the job calls it.

Expected values are computed a second, independent way: sequence log-probs from a separately loaded
model, one unpadded sequence at a time, and the losses written out from the papers' formulas.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from ppo_helpers import tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(str(tmp_path_factory.mktemp("cache")))


def _cfg(model_dir: str, out_dir: str, *extra: str):
    from orchestrator.registry import load_config

    return load_config("dpo", None, [
        f"policy.path={model_dir}", f"run.output_dir={out_dir}", "run.mode=local", "run.steps=2",
        "dpo.batch_size=8", "policy.micro_batch_size=4", "policy.lr=1e-3", "policy.max_new_tokens=8",
        "data.max_rows=48", "dpo.eval_pairs=12", "run.eval_every=0", *extra,
    ])


def _rows(model_dir: str, n: int) -> list:
    from actors.modeling import load_tokenizer
    from orchestrator.config import DataConfig
    from orchestrator.data import load_preferences

    data, _ = load_preferences(DataConfig(path="builtin:preferences", max_rows=n), load_tokenizer(model_dir))
    return data.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_list()


def _independent_logps(model, rows: list) -> torch.Tensor:
    """(N, 2) sum of log p(token) over each response, one unpadded sequence at a time."""
    out = []
    with torch.no_grad():
        for r in rows:
            pair = []
            for answer in (r["chosen_ids"], r["rejected_ids"]):
                ids = torch.tensor([r["prompt_ids"] + answer])
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
                token_lp = logp.gather(-1, ids[0, 1:, None])[:, 0]
                pair.append(token_lp[len(r["prompt_ids"]) - 1 :].sum())  # the answer's tokens only
            out.append(torch.stack(pair))
    return torch.stack(out).float()


def _policy(model_dir, *extra):
    """A local DPO policy role and its config."""
    from actors.dpo import DPOActor
    from cluster import LocalGroup

    cfg = _cfg(model_dir, "unused", *extra)
    kwargs = dict(model_path=model_dir, seed=0, total_steps=10, pairs_per_step=cfg.dpo.batch_size)
    return LocalGroup(DPOActor, cfg.policy, name="policy", kwargs=kwargs), cfg


def _logps(policy, rows, reference=False):
    from orchestrator.jobs.dpo import pair_logprobs

    return pair_logprobs(policy, rows, policy.role.pad_id, reference=reference)


def _step(policy, rows, ref, loss_args, weight_key=None) -> dict:
    """One DPO optimizer step on `rows` (the whole batch); its pair-weighted mean metrics."""
    from actors.dpo import DPOActor
    from actors.pairs import collate_pairs
    from actors.trainer import merge_stats
    from cluster import get

    pairs = collate_pairs(rows, policy.role.pad_id, weight_key=weight_key)
    pairs.ref_chosen, pairs.ref_rejected = ref[:, 0].contiguous(), ref[:, 1].contiguous()
    return merge_stats(get(policy.scatter(DPOActor.train_step, pairs, global_pairs=len(rows), loss_args=loss_args)))


def test_precomputed_reference_logprobs_equal_on_the_fly(model_dir):
    from actors.modeling import load_causal_lm

    rows = _rows(model_dir, 10)  # 10 pairs in micro-batches of 4: the last one is short; padding varies per batch
    policy, _ = _policy(model_dir)
    reference = _logps(policy, rows, reference=True)
    expected = _independent_logps(load_causal_lm(model_dir), rows)
    assert reference.shape == (10, 2)
    torch.testing.assert_close(reference, expected, rtol=1e-6, atol=1e-5)  # fp32 sums of ~40 token log-probs (~-100 nats)
    # after an update the policy moves, and asking a full fine-tune for its reference is an error
    _step(policy, rows[:8], reference[:8], {"beta": 0.1})
    assert (_logps(policy, rows) - expected).abs().max() > 1e-3
    with pytest.raises(Exception, match="before the first update"):
        _logps(policy, rows, reference=True)


def test_lora_reference_is_the_adapter_free_base_after_updates(model_dir):
    from actors.modeling import load_causal_lm

    rows = _rows(model_dir, 8)
    policy, _ = _policy(model_dir, "policy.lora.enabled=true", "policy.lr=1e-2")
    before = _logps(policy, rows, reference=True)
    for _ in range(3):
        _step(policy, rows, before, {"beta": 0.1})
    expected = _independent_logps(load_causal_lm(model_dir), rows)
    torch.testing.assert_close(_logps(policy, rows, reference=True), expected, rtol=1e-6, atol=1e-5)  # fp32 sums of ~40 token log-probs (~-100 nats)
    assert (_logps(policy, rows) - expected).abs().max() > 1e-3  # the adapters did learn


def _hand_loss(loss: str, z: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    """Per-pair losses from the papers: DPO eq. 7, cDPO (label-smoothed BCE), IPO's squared loss."""
    sig = lambda x: 1.0 / (1.0 + torch.exp(-x))  # noqa: E731
    if loss == "dpo":
        return -torch.log(sig(beta * z))
    if loss == "cdpo":
        return -(1 - eps) * torch.log(sig(beta * z)) - eps * torch.log(sig(-beta * z))
    return (z - 1.0 / (2.0 * beta)) ** 2


@pytest.mark.parametrize("loss", ["dpo", "ipo", "cdpo"])
def test_trained_loss_matches_the_formula(model_dir, loss):
    """Step 1 starts at policy == reference (z = 0): DPO and cDPO give log 2, IPO (1 / (2 beta))^2.
    Step 2's reported loss, accuracy and margin equal the formula on log-probs computed separately."""
    from actors.dpo import dpo_loss_args

    beta, eps = 0.5, 0.2
    rows = _rows(model_dir, 8)
    policy, _ = _policy(model_dir, f"dpo.loss={loss}", f"dpo.beta={beta}", f"dpo.label_smoothing={eps}")
    args = dpo_loss_args(loss, beta, eps)
    ref = _logps(policy, rows, reference=True)
    first = _step(policy, rows, ref, args)
    at_zero = 1.0 / (2 * beta) ** 2 if loss == "ipo" else math.log(2)
    assert first["dpo/loss"] == pytest.approx(at_zero, rel=1e-6)
    assert abs(first["dpo/margin"]) < 1e-6

    logps = _logps(policy, rows)
    z = (logps[:, 0] - logps[:, 1]) - (ref[:, 0] - ref[:, 1])
    assert z.abs().max() > 1e-3  # the update moved the margins
    second = _step(policy, rows, ref, args)
    assert second["dpo/loss"] == pytest.approx(_hand_loss(loss, z.double(), beta, eps).mean().item(), rel=1e-4)
    assert second["dpo/margin"] == pytest.approx((beta * z).mean().item(), rel=1e-4, abs=1e-7)
    assert second["dpo/accuracy"] == pytest.approx((z > 0).float().mean().item())
    assert second["logps/chosen"] == pytest.approx(logps[:, 0].mean().item(), rel=1e-5)
    if loss != "ipo":  # (IPO at this lr overshoots its target z = 1/(2 beta) on summed log-probs)
        assert second["dpo/loss"] < first["dpo/loss"]


def test_pair_weights_change_the_loss_as_the_hand_formula_says(model_dir):
    """data.weight_column: the loss of a batch is sum(w * loss) / sum(w), here over two micro-batches of 4
    (each pair's weight scaled by the GLOBAL batch's sum, so the cut does not matter)."""
    from actors.dpo import dpo_loss_args

    beta = 0.5
    rows = _rows(model_dir, 8)
    w = torch.tensor([2.0, 1.0, 0.5, 1.0, 3.0, 1.0, 0.25, 1.0], dtype=torch.float64)
    for r, x in zip(rows, w.tolist()):
        r["pair_weight"] = x
    policy, cfg = _policy(model_dir)
    assert cfg.policy.micro_batch_size == 4
    args = dpo_loss_args("dpo", beta, 0.0)
    ref = _logps(policy, rows, reference=True)
    _step(policy, rows, ref, args, weight_key="pair_weight")
    logps = _logps(policy, rows)
    z = ((logps[:, 0] - logps[:, 1]) - (ref[:, 0] - ref[:, 1])).double()
    per_pair = _hand_loss("dpo", z, beta, 0.0)  # -log sigmoid(beta z), DPO eq. 7
    weighted = float((w * per_pair).sum() / w.sum())
    assert abs(weighted - float(per_pair.mean())) > 1e-4  # the weights do move this batch's loss
    second = _step(policy, rows, ref, args, weight_key="pair_weight")
    assert second["dpo/loss"] == pytest.approx(weighted, rel=2e-5)
    assert second["dpo/accuracy"] == pytest.approx((z > 0).double().mean().item())  # metrics stay unweighted


def _metrics(out_dir) -> list[dict]:
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_resume_equals_uninterrupted_and_writes_everything(model_dir, tmp_path):
    from orchestrator.core import checkpoint as ckpt
    from orchestrator.registry import run

    full, split = tmp_path / "full", tmp_path / "split"
    run("dpo", _cfg(model_dir, str(full), "run.steps=4", "run.eval_every=2", "run.save_every=2"))
    run("dpo", _cfg(model_dir, str(split), "run.steps=2", "run.eval_every=2", "run.save_every=2"))
    run("dpo", _cfg(model_dir, str(split), "run.steps=4", "run.eval_every=2", "run.save_every=2"))  # resume=auto from step 2

    a, b = _metrics(full), _metrics(split)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3, 4]
    assert {"dpo/loss", "dpo/accuracy", "dpo/margin", "logps/chosen", "logps/rejected", "policy/grad_norm"} <= a[1].keys()
    assert {"eval/loss", "eval/accuracy", "eval/margin", "eval/gold", "eval/reward"} <= a[0].keys() & a[2].keys() & a[4].keys()
    for ra, rb in zip(a, b):
        for key, value in ra.items():
            if not key.startswith("time/"):
                assert rb[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (ra["step"], key)

    summary = json.loads((full / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["eval_end"]["generation"]["gold"] is not None
    for name in ("curves.png", "config.yaml", "samples_start.jsonl", "samples_end.jsonl"):
        assert (full / name).is_file(), name
    assert [p.name for p in ckpt.complete_checkpoints(str(full))] == ["step_000002", "step_000004"]
    from transformers import AutoModelForCausalLM

    from actors.modeling import load_causal_lm

    exported = AutoModelForCausalLM.from_pretrained(full / "policy")
    in_ckpt = load_causal_lm(str(full / "checkpoints" / "step_000004" / "policy_hf"))
    for (name, p), q in zip(exported.named_parameters(), in_ckpt.parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_bad_config_is_one_line_exit_2(capsys):
    from orchestrator.cli import main

    assert main(["dpo", "dpo.batch_size=30", "policy.micro_batch_size=4"]) == 2
    assert "dpo.batch_size" in capsys.readouterr().err
    assert main(["dpo", "dpo.loss=cdpo", "dpo.label_smoothing=0"]) == 2
    assert "dpo.label_smoothing" in capsys.readouterr().err
    assert main(["dpo", "dpo.loss=kto"]) == 2
    assert "dpo.loss" in capsys.readouterr().err


@pytest.mark.slow  # three LoRA DPO runs; the fast loop keeps the full fine-tune resume
def test_lora_run_resumes_exactly_and_exports_merged_weights(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from actors.modeling import load_causal_lm
    from orchestrator.registry import run

    lora = ("policy.lora.enabled=true", "policy.lr=1e-2", "policy.max_new_tokens=4", "run.save_every=1", "run.eval_every=1")
    full, split = tmp_path / "full", tmp_path / "split"
    run("dpo", _cfg(model_dir, str(full), *lora, "run.steps=3"))
    run("dpo", _cfg(model_dir, str(split), *lora, "run.steps=2"))
    run("dpo", _cfg(model_dir, str(split), *lora, "run.steps=3"))
    a, b = _metrics(full), _metrics(split)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a, b):
        for key, value in ra.items():
            if not key.startswith("time/"):
                assert rb[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (ra["step"], key)
    exported = AutoModelForCausalLM.from_pretrained(full / "policy")  # plain transformers: adapters merged
    assert not any("lora" in name for name, _ in exported.named_parameters())
    base = dict(load_causal_lm(model_dir).named_parameters())
    changed = {n for n, p in exported.named_parameters() if not torch.equal(p, base[n])}
    # the default targets: every linear layer of the blocks, nothing else (embeddings, norms, LM head)
    linear = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert changed == {n for n in base if n.endswith(".weight") and n.split(".")[-2] in linear}, changed
