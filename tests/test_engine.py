"""DeepSpeed engines in one process (world size 1, no Ray): the loss contract, LR schedule,
checkpoints, LoRA, frozen engines, ZeRO-3 gathering; and the typed batch base class.

The model is a tiny LlamaForCausalLM built from a config (hidden 32, 2 layers, vocab 64).
A note on what can be asserted after one AdamW step: its first update is ``lr * g / (|g| + eps)``,
about ``lr * sign(g)``, so parameters alone barely see a wrong gradient SCALE (e.g. DeepSpeed's
division by the accumulation steps). The tests therefore compare gradient norms against plain
PyTorch as well as parameters.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from cluster.batch import Batch, BatchError, spec
from actors.engine import (
    apply_lora,
    backward,
    build_engine,
    deepspeed_config,
    gathered_params,
    load_checkpoint,
    lr_multiplier,
    save_checkpoint,
    step,
)
from cluster.dist import init_local
from orchestrator.config import LoraConfig, ModelConfig, TrainableConfig

PARTITION_ALL = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}  # ZeRO-3 splits even tiny params
LR = 1e-3


@pytest.fixture(scope="module", autouse=True)
def world():
    init_local()


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def minibatch(rows: int = 4, seq: int = 10, seed: int = 1):
    """Token ids and a next-token loss mask with different valid counts per row: 9+1 | 5+2 tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (rows, seq), generator=g)
    valid = torch.tensor([9, 1, 5, 2, 7, 3, 8, 4][:rows])
    mask = (torch.arange(seq - 1)[None, :] < valid[:, None]).float()
    return ids, mask


def nll_sum(model, ids, mask) -> torch.Tensor:
    """sum over valid positions of -log p(token t+1 | tokens <= t)."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    nll = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    return (nll * mask).sum()


def flat_params(engine) -> torch.Tensor:
    with gathered_params(engine) as module:
        return torch.cat([p.detach().float().flatten() for p in module.parameters()]).clone()


def train_cfg(stage: int, micro: int, **kw) -> TrainableConfig:
    base = dict(zero_stage=stage, micro_batch_size=micro, lr=LR, grad_clip=1.0, weight_decay=0.1)
    return TrainableConfig(**{**base, **kw})


def one_step(stage: int, micro: int, aggregate: str = "global") -> tuple[dict, torch.Tensor, float]:
    """One optimizer step over the 4-row minibatch in micro-batches of `micro` rows.

    aggregate="global": each micro-batch contributes sum(nll)/N_global (the team rule).
    aggregate="per_micro_mean": each contributes mean over its own tokens / n_micro (the classic bug).
    """
    ids, mask = minibatch()
    engine = build_engine(tiny_llama(), train_cfg(stage, micro), train=True, total_steps=10, minibatch_size=4,
                          overrides=PARTITION_ALL)
    n_micro, n_global = 4 // micro, mask.sum()
    loss_total = 0.0
    for k in range(n_micro):
        rows = slice(k * micro, (k + 1) * micro)
        total = nll_sum(engine, ids[rows], mask[rows])
        if aggregate == "global":
            loss = total / n_global
        else:
            loss = total / mask[rows].sum() / n_micro
        backward(engine, loss)
        loss_total += loss.item()
    stats = step(engine)
    return stats, flat_params(engine), loss_total


def reference_grad_norm() -> tuple[float, float]:
    """Plain PyTorch, one process, whole minibatch: (loss, |grad|) of sum(nll)/N_global."""
    ids, mask = minibatch()
    model = tiny_llama()
    loss = nll_sum(model, ids, mask) / mask.sum()
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()


# ------------------------------------------------------------------------------- loss contract


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_micro_batches_with_accumulation_equal_one_full_batch(stage):
    ref_loss, ref_norm = reference_grad_norm()
    assert ref_norm > 1.0, "gradient clipping (1.0) must be active so that it is covered"
    full_stats, full_params, full_loss = one_step(stage, micro=4)
    acc_stats, acc_params, acc_loss = one_step(stage, micro=2)
    bug_stats, bug_params, bug_loss = one_step(stage, micro=2, aggregate="per_micro_mean")

    assert full_loss == pytest.approx(ref_loss, rel=1e-6)
    assert acc_loss == pytest.approx(ref_loss, rel=1e-6)
    assert full_stats["grad_norm"] == pytest.approx(ref_norm, rel=1e-5)
    assert acc_stats["grad_norm"] == pytest.approx(ref_norm, rel=1e-5)
    assert (acc_params - full_params).abs().max().item() < 1e-6
    assert (full_params - flat_params_of_fresh_model()).abs().max().item() > 0.5 * LR  # the step moved them

    # The per-micro-batch mean weighs the 7-token micro-batch like the 10-token one: detectably wrong.
    assert abs(bug_loss - ref_loss) > 1e-3  # float noise is ~1e-7
    assert abs(bug_stats["grad_norm"] - ref_norm) > 1e-3
    assert (bug_params - full_params).abs().max().item() > 1e-4


@pytest.mark.parametrize("micro", [1, 2])
def test_the_one_trainer_equals_one_full_batch_and_weighs_metrics_by_items(micro):
    """`actors.trainer.train_step` (every role's loop): micro-batches of 1 or 2 rows with a batch-level
    term give the loss, gradient norm and parameters of plain PyTorch on the whole minibatch, where
    L = sum(nll) / N + sum over micro-batches m of c_m n_m / N (n_m: valid tokens of m, c_m its term)."""
    from actors.trainer import MicroLoss, train_step

    ids, mask = minibatch()
    n_global = float(mask.sum())

    def batch_term(rows: torch.Tensor) -> torch.Tensor:
        return 0.1 * rows.float().mean()  # anything computed on the micro-batch as a whole

    def per_token(model, rows_ids):
        logits = model(input_ids=rows_ids).logits[:, :-1].float()
        return -torch.log_softmax(logits, -1).gather(-1, rows_ids[:, 1:, None])[..., 0]

    engine = build_engine(tiny_llama(), train_cfg(0, micro), train=True, total_steps=10, minibatch_size=4)
    micros = [(ids[k:k + micro], mask[k:k + micro]) for k in range(0, 4, micro)]
    stats = train_step(engine, micros, lambda m: MicroLoss(per_token(engine, m[0]), m[1], {"tokens_max": m[1].sum()},
                                                            batch_term=batch_term(m[0])), n_global, "role").as_dict()

    model = tiny_llama()
    loss = sum(per_token(model, i)[m.bool()].sum() / n_global + batch_term(i) * m.sum() / n_global for i, m in micros)
    loss.backward()
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    assert stats["role/grad_norm"][0] == pytest.approx(norm, rel=1e-5)
    # the loss metric: each micro-batch's token mean plus its term, weighted by its tokens
    metric = sum((per_token(model, i)[m.bool()].mean() + batch_term(i)).item() * m.sum().item() for i, m in micros) / n_global
    total, weight = stats["role/loss"]
    assert weight == n_global and total / weight == pytest.approx(metric, rel=1e-5)
    assert total / weight == pytest.approx(loss.item(), rel=1e-5)
    assert stats["role/tokens_max"] == max(m.sum().item() for _, m in micros)  # a maximum, not a mean


def test_merge_stats_weights_means_by_items_and_takes_maxima():
    from actors.trainer import TrainStats, merge_stats

    a, b = TrainStats(), TrainStats()
    a.add("x/loss", 1.0, 3.0)  # 3 tokens at 1.0
    a.add("x/loss", 4.0, 1.0)  # 1 token at 4.0
    b.add("x/loss", 2.0, 6.0)  # another replica: 6 tokens at 2.0
    a.add_max("x/ratio_max", 1.5)
    b.add_max("x/ratio_max", 2.5)
    b.add_max("x/ratio_max", 0.5)
    merged = merge_stats([a.as_dict(), b.as_dict()])
    assert merged == {"x/loss": pytest.approx((3 + 4 + 12) / 10), "x/ratio_max": 2.5}


def flat_params_of_fresh_model() -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in tiny_llama().parameters()])


def test_plain_engine_backward_would_divide_by_accumulation_steps():
    """Documents the DeepSpeed behaviour `backward` compensates (ZeRO-0, world size 1, GAS=2)."""
    ids, mask = minibatch()
    engine = build_engine(tiny_llama(), train_cfg(0, 2), train=True, minibatch_size=4)
    for rows in (slice(0, 2), slice(2, 4)):
        engine.backward(nll_sum(engine, ids[rows], mask[rows]) / mask.sum())  # DeepSpeed divides by GAS
    plain = torch.cat([p.grad.flatten() for p in engine.module.parameters()])

    engine = build_engine(tiny_llama(), train_cfg(0, 2), train=True, minibatch_size=4)
    for rows in (slice(0, 2), slice(2, 4)):
        backward(engine, nll_sum(engine, ids[rows], mask[rows]) / mask.sum())
    ours = torch.cat([p.grad.flatten() for p in engine.module.parameters()])

    _, ref_norm = reference_grad_norm()
    assert ours.norm().item() == pytest.approx(ref_norm, rel=1e-6)
    torch.testing.assert_close(plain, ours / 2, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------------- LR schedule


@pytest.mark.parametrize(
    "schedule, expected",
    [
        # warmup_steps=2, total_steps=6; k = updates done before this one.
        # warmup (k+1)/2: 0.5, 1.0; then p = (k-2)/4 for k = 2..6.
        ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
        ("linear", [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]),  # 1 - p
        # (1 + cos(pi p)) / 2 at p = 0, 1/4, 1/2, 3/4, 1: 1, (1 + sqrt(2)/2)/2, 1/2, (1 - sqrt(2)/2)/2, 0
        ("cosine", [0.5, 1.0, 1.0, 0.8535533905932737, 0.5, 0.14644660940672627, 0.0]),
    ],
)
def test_lr_schedule_matches_hand_computed_values(schedule, expected):
    assert [lr_multiplier(k, warmup_steps=2, total_steps=6, schedule=schedule) for k in range(7)] == pytest.approx(
        expected, rel=1e-12, abs=1e-15
    )
    # The engine applies it: the lr of each update, as seen by the optimizer's param groups.
    peak = 2e-3
    ids, mask = minibatch(rows=1)
    cfg = train_cfg(2, 1, lr=peak, warmup_steps=2, lr_schedule=schedule)
    engine = build_engine(tiny_llama(), cfg, train=True, total_steps=6, minibatch_size=1)
    lrs = []
    for _ in range(7):
        backward(engine, nll_sum(engine, ids, mask) / mask.sum())
        lrs.append(step(engine)["lr"])
    assert lrs == pytest.approx([peak * e for e in expected], rel=1e-12, abs=1e-15)


def test_lr_schedule_rejects_decay_without_horizon():
    with pytest.raises(ValueError, match="total_steps"):
        lr_multiplier(0, warmup_steps=5, total_steps=5, schedule="linear")
    with pytest.raises(ValueError, match="total_steps"):
        build_engine(tiny_llama(), train_cfg(0, 1, lr_schedule="cosine"), train=True, total_steps=0, minibatch_size=1)


# ------------------------------------------------------------------------------------- config


def test_deepspeed_config_batch_arithmetic_and_frozen_stages():
    cfg = train_cfg(2, 4)
    ds = deepspeed_config(cfg, train=True, world_size=2, minibatch_size=32)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (32, 4, 4)
    assert ds["managed_gradient_accumulation"] is False
    assert ds["optimizer"]["params"]["torch_adam"] is True
    with pytest.raises(ValueError, match="multiple"):
        deepspeed_config(cfg, train=True, world_size=2, minibatch_size=12)
    off = deepspeed_config(train_cfg(3, 4, offload_optimizer=True, offload_params=True, dtype="bf16"),
                           train=True, world_size=1, minibatch_size=4)
    assert off["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert off["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert off["bf16"]["enabled"] and off["data_types"]["grad_accum_dtype"] == "fp32"
    assert off["communication_data_type"] == "fp32"  # replicas add up fp32 gradients
    lone = deepspeed_config(train_cfg(0, 4, dtype="bf16"), train=True, world_size=1, minibatch_size=4)
    assert lone["zero_optimization"]["stage"] == 1 and lone["data_types"]["grad_accum_dtype"] == "fp32"
    assert deepspeed_config(train_cfg(0, 4), train=True, world_size=1, minibatch_size=4)["zero_optimization"]["stage"] == 0
    frozen = deepspeed_config(ModelConfig(zero_stage=2), train=False, world_size=2)
    assert frozen["zero_optimization"]["stage"] == 0 and "optimizer" not in frozen
    assert deepspeed_config(ModelConfig(zero_stage=3), train=False, world_size=2)["zero_optimization"]["stage"] == 3


@pytest.mark.parametrize(
    "stage, options",
    [(2, dict(dtype="bf16", offload_optimizer=True)), (3, dict(offload_optimizer=True, offload_params=True))],
    ids=["z2-bf16-offload-opt", "z3-offload-opt-params"],
)
def test_offload_and_bf16_train_without_compiled_ops(stage, options):
    ids, mask = minibatch()
    engine = build_engine(tiny_llama(), train_cfg(stage, 4, **options), train=True, minibatch_size=4,
                          overrides=PARTITION_ALL)
    assert type(engine.basic_optimizer) is torch.optim.AdamW  # torch_adam, even with offload
    before = flat_params(engine)
    backward(engine, nll_sum(engine, ids, mask) / mask.sum())
    stats = step(engine)
    assert math.isfinite(stats["grad_norm"])
    assert (flat_params(engine) - before).abs().max().item() > 0


# -------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_checkpoint_round_trip_is_exact(stage, tmp_path):
    ids, mask = minibatch()
    cfg = train_cfg(stage, 2, warmup_steps=2, lr_schedule="cosine")

    def train(engine, n):
        lrs = []
        for _ in range(n):
            for rows in (slice(0, 2), slice(2, 4)):
                backward(engine, nll_sum(engine, ids[rows], mask[rows]) / mask.sum())
            lrs.append(step(engine)["lr"])
        return lrs

    a = build_engine(tiny_llama(seed=0), cfg, train=True, total_steps=6, minibatch_size=4, overrides=PARTITION_ALL)
    train(a, 2)
    save_checkpoint(a, tmp_path, "step2")
    draw_a = torch.rand(3)  # what this process's RNG gives right after the save
    lrs_a = train(a, 2)
    params_a = flat_params(a)

    b = build_engine(tiny_llama(seed=123), cfg, train=True, total_steps=6, minibatch_size=4, overrides=PARTITION_ALL)
    torch.manual_seed(999)
    load_checkpoint(b, tmp_path, "step2")
    assert torch.equal(torch.rand(3), draw_a)  # the RNG came back with the checkpoint
    lrs_b = train(b, 2)
    assert lrs_a == lrs_b
    assert torch.equal(params_a, flat_params(b))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(b, tmp_path, "missing")


# ---------------------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "grad-checkpointing"])
def test_lora_trains_adapters_and_extra_modules_only(checkpointing):
    ids, mask = minibatch()
    cfg = train_cfg(0, 4, lr=1e-2, weight_decay=0.0, lora=LoraConfig(enabled=True, r=4, alpha=8),
                    gradient_checkpointing=checkpointing)
    engine = build_engine(tiny_llama(), cfg, train=True, minibatch_size=4, trainable=("lm_head",))
    model = engine.module  # transformers 5.20 renamed is_gradient_checkpointing to is_activation_checkpointing
    on = getattr(model, "is_activation_checkpointing", None)
    assert (model.is_gradient_checkpointing if on is None else on) == checkpointing
    before = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    trainable = {n for n, p in engine.module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".lm_head." in n for n in trainable)
    for _ in range(2):  # lora_A gets no gradient while lora_B is still 0, so it moves on step 2
        backward(engine, nll_sum(engine, ids, mask) / mask.sum())
        step(engine)
    for name, p in engine.module.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (name in trainable), name
    with pytest.raises(ValueError, match="value_head"):
        apply_lora(tiny_llama(), LoraConfig(enabled=True), trainable=("value_head",))


# ------------------------------------------------------------------------------ frozen engines


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_frozen_engine_has_no_optimizer_and_matches_the_model(stage):
    ids, _ = minibatch()
    with torch.no_grad():
        expected = tiny_llama()(input_ids=ids).logits
    engine = build_engine(tiny_llama(), ModelConfig(zero_stage=stage), train=False, overrides=PARTITION_ALL)
    assert not isinstance(engine.optimizer, torch.optim.Optimizer)  # None, or ZeRO-3's parameter manager
    assert engine.lr_scheduler is None
    assert not any(p.requires_grad for p in engine.module.parameters())
    with torch.no_grad():
        torch.testing.assert_close(engine(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
    partitioned = all(p.numel() == 0 for p in engine.module.parameters())
    assert partitioned == (stage == 3)
    with gathered_params(engine) as module:  # whole weights, e.g. for generate
        assert all(p.numel() > 0 for p in module.parameters())
        out = module.generate(ids[:, :4], attention_mask=torch.ones_like(ids[:, :4]), max_new_tokens=3,
                              do_sample=False, pad_token_id=0)
    assert out.shape == (4, 7)


def test_frozen_bf16_engine_casts_the_model():
    engine = build_engine(tiny_llama(), ModelConfig(dtype="bf16"), train=False)
    assert {p.dtype for p in engine.module.parameters()} == {torch.bfloat16}


def test_build_engine_requires_lora_for_extra_trainable_modules():
    with pytest.raises(ValueError, match="LoRA"):
        build_engine(tiny_llama(), train_cfg(0, 1), train=True, minibatch_size=1, trainable=("lm_head",))


# ------------------------------------------------------------------------------- typed batches


@dataclasses.dataclass
class Toy(Batch):
    ids: torch.Tensor = spec("B T", torch.long)  # (B, T) token ids
    logprobs: torch.Tensor = spec("B T-1", torch.float32)  # (B, T-1) log p(token t+1)
    texts: list[str] | None = None  # (B,) per-row strings
    extra: torch.Tensor | None = spec("B", optional=True)  # (B,) optional per-row value


def toy(rows: int = 6, seq: int = 5) -> Toy:
    return Toy(ids=torch.arange(rows * seq).view(rows, seq), logprobs=torch.randn(rows, seq - 1),
               texts=[f"row{i}" for i in range(rows)])


def test_batch_split_cat_round_trip_and_select():
    b = toy().check()
    shards = b.split(3)
    assert [s.num_rows for s in shards] == [2, 2, 2] and shards[1].texts == ["row2", "row3"]
    assert shards[0].ids.untyped_storage().nbytes() == shards[0].ids.numel() * 8  # a copy, not a view
    back = Toy.cat(shards)
    assert torch.equal(back.ids, b.ids) and back.texts == b.texts and back.extra is None
    picked = b.select(torch.tensor([4, 1]))
    assert picked.ids[:, 0].tolist() == [20, 5] and picked.texts == ["row4", "row1"]
    assert b.to("cpu").num_rows == 6
    with pytest.raises(BatchError, match="cannot split 6 rows into 4"):
        b.split(4)


def test_batch_check_names_the_bad_field():
    with pytest.raises(BatchError, match=r"Toy.logprobs: dim T-1 has size 5, so T=6; but T=5 from ids"):
        Toy(ids=torch.zeros(2, 5, dtype=torch.long), logprobs=torch.zeros(2, 5)).check()
    with pytest.raises(BatchError, match=r"Toy.ids: dtype torch.int32, declared torch.int64"):
        Toy(ids=torch.zeros(2, 5, dtype=torch.int32), logprobs=torch.zeros(2, 4)).check()
    with pytest.raises(BatchError, match=r"Toy.texts: list has 1 elements, batch has 2 rows"):
        Toy(ids=torch.zeros(2, 5, dtype=torch.long), logprobs=torch.zeros(2, 4), texts=["a"]).check()
    with pytest.raises(BatchError, match=r"Toy.extra: shape \(3,\) does not lead with 2 rows"):
        Toy(ids=torch.zeros(2, 5, dtype=torch.long), logprobs=torch.zeros(2, 4), extra=torch.zeros(3)).check()
    with pytest.raises(BatchError, match="different trailing shapes"):
        Toy.cat([toy(2, 5), toy(2, 6)])


def test_batch_chunks_are_consecutive_row_slices():
    batch = toy(rows=5)
    parts = list(batch.chunks(2))
    assert [p.texts for p in parts] == [["row0", "row1"], ["row2", "row3"], ["row4"]]
    assert torch.equal(Toy.cat(parts).ids, batch.ids)
    with pytest.raises(BatchError, match="size must be >= 1"):
        list(batch.chunks(0))


def test_adamw_is_the_fused_kernel_and_its_step_equals_the_per_tensor_loop():
    """One fused AdamW kernel over all tensors (`deepspeed_config`): the same update as torch's per-tensor
    loop with the same groups (weight decay on matrices only) and hyper-parameters."""
    torch.manual_seed(0)
    engine = build_engine(tiny_llama(), train_cfg(0, 4), train=True, total_steps=10, minibatch_size=4)
    basic = engine.optimizer.optimizer if hasattr(engine.optimizer, "optimizer") else engine.optimizer
    assert basic.param_groups and all(g["fused"] for g in basic.param_groups)
    groups = [{**{k: v for k, v in g.items() if k not in ("params", "fused", "foreach")},
               "params": [torch.nn.Parameter(p.detach().clone()) for p in g["params"]]} for g in basic.param_groups]
    reference = torch.optim.AdamW(groups, foreach=False)
    g = torch.Generator().manual_seed(1)
    for mine, theirs in zip(basic.param_groups, reference.param_groups):
        for p, q in zip(mine["params"], theirs["params"]):
            p.grad = torch.randn(p.shape, generator=g) * 0.01
            q.grad = p.grad.clone()
    for _ in range(2):
        basic.step()
        reference.step()
    for mine, theirs in zip(basic.param_groups, reference.param_groups):
        for p, q in zip(mine["params"], theirs["params"]):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("stage", [0, 1])
def test_one_replica_at_zero_0_skips_the_all_reduce_and_trains_the_same(stage):
    """A lone ZeRO-0 replica does not flatten, scale and copy back its gradients (an all-reduce over a group
    of one); ZeRO-1+ keep their reduction (it fills their partitions). The update is the reference's
    either way (test_micro_batches_with_accumulation_equal_one_full_batch checks the stage-0 numbers)."""
    engine = build_engine(tiny_llama(), train_cfg(stage, 4), train=True, total_steps=10, minibatch_size=4)
    assert engine.dp_world_size == 1
    assert engine.enable_backward_allreduce is (stage > 0)


def test_auto_dtype_and_the_attention_kernel(monkeypatch):
    from actors.modeling import attention_implementation, resolve_dtype, torch_dtype

    assert resolve_dtype("fp32") == "fp32" and resolve_dtype("bf16") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for amx, avx512_bf16, want in [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert resolve_dtype("auto") == want
        assert torch_dtype("auto") == {"bf16": torch.bfloat16, "fp32": torch.float32}[want]
    # bf16 on a CPU: eager attention (SDPA's CPU flash backward is slow in bf16); fp32: transformers' default
    assert attention_implementation("bf16") == "eager" and attention_implementation("fp32") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert attention_implementation("bf16") is None
    with pytest.raises(ValueError, match="dtype must be one of"):
        torch_dtype("fp16")


def test_gradient_finiteness_check_by_entries_not_by_an_overflowing_norm():
    """`_grads_finite` reads one fused norm per tensor; a norm that overflows on finite entries (1e30 here)
    must not count as a non-finite gradient, and one NaN or infinity anywhere must."""
    from actors.trainer import _grads_finite

    model = torch.nn.Linear(4, 3)
    model.weight.grad = torch.full((3, 4), 1e30)  # finite entries whose L2 norm overflows fp32
    model.bias.grad = torch.zeros(3)
    assert torch.isinf(torch.linalg.vector_norm(model.weight.grad)) and _grads_finite(model)
    for bad in (float("nan"), float("inf"), float("-inf")):
        model.bias.grad = torch.tensor([0.0, bad, 0.0])
        assert not _grads_finite(model)
    model.bias.grad = None
    assert _grads_finite(model)


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])  # clipping on, clipping a no-op
def test_one_replica_clips_with_the_checks_norms_bitwise_as_deepspeed(max_norm):
    """A lone ZeRO-0 fp32 replica clips with the per-tensor norms the finiteness check computed
    (`gradient_norms`), once per step instead of twice: the same norm and gradients, bit for bit, as
    DeepSpeed's own `clip_grad_norm_`; and an engine step takes that path."""
    from deepspeed.runtime.utils import clip_grad_norm_

    from actors.engine import _clip_one_replica, gradient_norms

    g = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in ((64, 32), (32,), (7, 5, 3))]
    grads = [torch.randn(p.shape, generator=g) * k for p, k in zip(params, (1.0, 1e-4, 30.0))]
    for p, gr in zip(params, grads):
        p.grad = gr.clone()
    theirs = clip_grad_norm_(params, max_norm=max_norm)
    mine_grads = [gr.clone() for gr in grads]
    mine = _clip_one_replica(mine_grads, list(torch._foreach_norm(mine_grads)), max_norm)
    assert torch.equal(mine.reshape(-1), theirs.reshape(-1))
    assert all(torch.equal(a, p.grad) for a, p in zip(mine_grads, params))

    engine = build_engine(tiny_llama(), train_cfg(0, 4), train=True, total_steps=10, minibatch_size=4)
    ids, mask = minibatch()
    backward(engine, nll_sum(engine, ids, mask) / mask.sum())
    norms = gradient_norms(engine)
    expected = torch.stack(norms).pow(2.0).sum().pow(0.5).item()
    assert engine._rlhf_kept_norms is not None
    stats = step(engine)
    assert engine._rlhf_kept_norms is None  # used by this step's clip, then dropped
    assert stats["grad_norm"] == expected


def test_bf16_accumulates_micro_batch_gradients_in_fp32_at_every_stage():
    """bf16 training at zero_stage=0 (where DeepSpeed would accumulate micro-batch gradients in bf16)
    runs DeepSpeed's bf16 optimizer at stage 1: the step's gradient is the fp32 sum of each micro-batch's
    bf16 gradient, as at ZeRO 1-3. Reference: the engine's own bf16 module, 4 micro-batches of one row,
    each backward alone in plain PyTorch, summed in fp32; their bf16 sum (8 bits of mantissa) is
    detectably off."""
    ids, mask = minibatch()
    n_global = mask.sum()
    engine = build_engine(tiny_llama(), train_cfg(0, 1, dtype="bf16"), train=True, minibatch_size=4)
    assert engine.zero_optimization_stage() == 1 and engine.bfloat16_enabled()
    module = engine.module
    fp32_sum = [torch.zeros_like(p, dtype=torch.float32) for p in module.parameters()]
    bf16_sum = [torch.zeros_like(p) for p in module.parameters()]
    for k in range(4):
        (nll_sum(module, ids[k:k + 1], mask[k:k + 1]) / n_global).backward()
        for a, b, p in zip(fp32_sum, bf16_sum, module.parameters()):
            a += p.grad.float()
            b += p.grad
            p.grad = None
    fp32_norm = torch.cat([g.flatten() for g in fp32_sum]).norm().item()
    bf16_norm = torch.cat([g.float().flatten() for g in bf16_sum]).norm().item()
    assert abs(bf16_norm - fp32_norm) > 2e-5 * fp32_norm  # what a bf16 accumulation reports

    for k in range(4):
        backward(engine, nll_sum(engine, ids[k:k + 1], mask[k:k + 1]) / n_global)
    stats = step(engine)
    assert stats["grad_norm"] == pytest.approx(fp32_norm, rel=1e-6)
