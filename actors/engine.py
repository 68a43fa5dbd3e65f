"""DeepSpeed engines for the roles: config, construction, the loss contract, LoRA, ZeRO-3 gathering.

A role builds its model (an ``nn.Module``), then calls `build_engine`. Everything DeepSpeed-specific
that a role needs is here; the roles never write a DeepSpeed config themselves.

Training loop of a role, one optimizer step per minibatch::

    global_tokens = ...      # valid tokens in the whole minibatch, summed over ALL replicas
    for micro in minibatch.split(n_micro):
        per_token = loss_fn(engine(micro...), micro)             # (b, T)
        loss = (per_token * mask).sum() / global_tokens          # this micro-batch's share
        backward(engine, loss)                                   # not engine.backward: see below
    stats = step(engine)                                         # exactly one optimizer step

The loss contract (the team rule)
---------------------------------
The minibatch loss is ``L = sum over all valid tokens of all replicas and micro-batches of l_i,
divided by N_global`` (the global valid-token count), so that cutting the minibatch into shards or
micro-batches does not change it. Each replica r and micro-batch m contributes
``L_rm = sum_{i in (r, m)} l_i / N_global`` and ``L = sum_r sum_m L_rm``: the gradient we want is
the SUM over replicas and micro-batches of ``grad L_rm``.

What DeepSpeed 0.19 does instead (read in ``deepspeed/runtime/engine.py`` and ``runtime/zero/``):

1. ``engine.backward(loss)`` divides the loss by ``gradient_accumulation_steps`` (GAS) before
   calling ``loss.backward()`` (``scale_wrt_gas=True`` by default), because DeepSpeed assumes each
   micro-batch loss is a mean and wants the mean over micro-batches.
2. The gradient reduction AVERAGES over the data-parallel group: ZeRO-0 ``allreduce_bucket``
   multiplies by ``1/dp_world_size`` after the all-reduce, ZeRO-1/2 ``average_tensor`` /
   ``gradient_reduction_w_predivide`` divide by ``dp_world_size``, ZeRO-3 ``__avg_scatter_grads``
   and the reduce-scatter path divide by the world size too. There is no "sum" setting.

So plain ``engine.backward`` would yield ``grad L / (GAS * W)``. `backward` compensates both, exactly
once and in one place: it passes ``scale_wrt_gas=False`` (no GAS division) and multiplies the loss
by ``W = dp_world_size`` (cancelling the average). The gradient DeepSpeed then holds at the step is
``sum_r sum_m grad L_rm = grad L``, the single-process full-batch gradient; gradient clipping and
AdamW see exactly that, so clipping is also identical to the unsharded run. (For W a power of two the
scaling is exact in floating point; otherwise it is one extra rounding.) ``tests/test_engine.py`` and
``tests/test_cluster_ray.py`` check this against one process with one micro-batch, with micro-batches
of different valid-token counts so that a per-micro-batch mean would fail.

Accumulation boundary: the config sets ``managed_gradient_accumulation: false``, DeepSpeed's
caller-owned mode: ``engine.backward`` only accumulates, and the next ``engine.step()`` IS the
boundary (reduce, clip, AdamW, LR scheduler). In the default managed mode ``step()`` must instead be
called after every micro-batch and the update happens when its call counter reaches a multiple of
GAS; calling it once per minibatch there would silently update only every GAS-th minibatch, with
the gradients of GAS minibatches summed. GAS is still set to ``minibatch / (W * micro_batch_size)``
so that DeepSpeed's batch-size bookkeeping is right. (ZeRO-2/3 still reduce-scatter gradients after
every backward, as they do in managed mode; ZeRO-0/1 communicate once, in ``step()``.)

Accelerator: importing this module calls `cluster.dist.select_accelerator()` before ``import
deepspeed``, which sets ``DS_ACCELERATOR=cpu`` when no CUDA device is visible.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from cluster.dist import select_accelerator

select_accelerator()  # must precede `import deepspeed`; see cluster.dist.select_accelerator
import deepspeed  # noqa: E402
from deepspeed.runtime.engine import DeepSpeedEngine  # noqa: E402

from actors.config import LoraConfig, ModelConfig, TrainableConfig, deep_merge, first_line  # noqa: E402
from actors.modeling import resolve_dtype  # noqa: E402

__all__ = [
    "lr_multiplier",
    "deepspeed_config",
    "build_engine",
    "apply_lora",
    "backward",
    "step",
    "gathered_params",
    "save_checkpoint",
    "load_checkpoint",
    "unwrap",
]

log = logging.getLogger(__name__)

ADAM_EPS = 1e-8


# --------------------------------------------------------------------------------------------- LR


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Factor on the peak LR for the optimizer update that follows `step` completed updates.

    Update number ``k+1`` (``k = step`` updates already done) uses ``lr * lr_multiplier(k)``:

    - warmup, ``k < W``: ``(k + 1) / W``, so the first update already moves (lr/W) and update W
      uses the full lr (HF's ``k / W`` spends the first update at lr 0);
    - then ``p = (k - W) / (T - W)`` runs from 0 at the first post-warmup update to 1 at
      ``k = T`` (after the last of T updates):  constant 1;  linear ``m + (1 - m)(1 - p)``;
      cosine ``m + (1 - m)(1 + cos(pi p)) / 2`` (Loshchilov & Hutter 2017, SGDR eq. 5 with one cycle,
      eta_min = m * lr), where m = `min_ratio` is the floor the decay ends at (0 by default).

    `total_steps` (T) is the number of optimizer steps of the run; it may be 0 for "constant".
    Steps past T keep the final value (m for linear and cosine).
    """
    if schedule not in ("constant", "linear", "cosine"):
        raise ValueError(f"unknown lr_schedule {schedule!r}; expected constant, linear or cosine")
    if schedule != "constant" and total_steps <= warmup_steps:
        raise ValueError(
            f"lr_schedule={schedule} needs total_steps ({total_steps}) > warmup_steps ({warmup_steps})"
        )
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    p = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    decay = 1.0 - p if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return min_ratio + (1.0 - min_ratio) * decay


def _lr_scheduler_factory(cfg: TrainableConfig, total_steps: int):
    """A callable DeepSpeed turns into the scheduler: ``f(optimizer) -> LambdaLR``.

    Passed as a callable (not an instance) because DeepSpeed wraps the optimizer first and then
    calls ``f(basic_optimizer)``, so the scheduler drives the param groups the update really reads.
    DeepSpeed calls ``scheduler.step()`` once per optimizer step and saves/loads its state_dict in
    checkpoints. The multiplier is a closure (not a callable object), so LambdaLR's state_dict holds
    only the step count: a resumed run recomputes the LR from the config and the restored step.
    """
    lr_multiplier(0, warmup_steps=cfg.warmup_steps, total_steps=total_steps, schedule=cfg.lr_schedule)  # validate

    def fn(step: int) -> float:
        return lr_multiplier(step, warmup_steps=cfg.warmup_steps, total_steps=total_steps, schedule=cfg.lr_schedule,
                             min_ratio=cfg.min_lr_ratio)

    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


# ----------------------------------------------------------------------------------------- config


def deepspeed_config(
    cfg: TrainableConfig | ModelConfig,
    *,
    train: bool,
    world_size: int,
    minibatch_size: int = 0,
    overrides: dict | None = None,
) -> dict:
    """The DeepSpeed config dict for one role (its config slice) on `world_size` replicas.

    train=True needs a `TrainableConfig` and `minibatch_size`, the GLOBAL number of sequences per
    optimizer step (e.g. ``ppo.minibatch_size``); it must be divisible by ``world_size *
    cfg.micro_batch_size`` and gives ``gradient_accumulation_steps = minibatch_size / (world_size *
    micro_batch_size)``. Sets: ZeRO stage, optimizer/parameter CPU offload, bf16 (fp32 master weights and
    fp32 gradient accumulation, so a bf16 role asking for stage 0 trains at stage 1), torch AdamW with its fused kernel
    (``torch_adam``: never FusedAdam or DeepSpeedCPUAdam, which compile; DeepSpeed picks torch AdamW
    even with optimizer offload, and then runs it on the offloaded fp32 CPU copies), gradient
    clipping, and the caller-owned accumulation boundary (module docstring).

    train=False (reference, reward): no optimizer. ZeRO-3 partitions the parameters for inference;
    stages 1 and 2 shard only optimizer state and gradients, which a frozen model does not have, so
    they become stage 0 (DeepSpeed also refuses ZeRO-1/2 without an optimizer). bf16 is not turned on
    in DeepSpeed for frozen models (its bf16 wrapper would keep an fp32 master copy): `build_engine`
    casts the model instead.

    `overrides` is deep-merged last, for tuning knobs this function does not own (bucket sizes,
    ``stage3_param_persistence_threshold``: DeepSpeed keeps params under 1e5 elements whole on every
    rank in ZeRO-3, which tests set to 0 to partition a tiny model).
    """
    zero_stage = cfg.zero_stage
    bf16 = resolve_dtype(cfg.dtype) == "bf16"
    if train and bf16 and zero_stage == 0:
        # DeepSpeed's ZeRO-0 bf16 wrapper accumulates micro-batch gradients in bf16 (8 bits of mantissa);
        # its bf16 optimizer at stage 1 accumulates them in fp32. With one replica stage 1 shards nothing;
        # with several it shards the optimizer state, which only saves memory.
        zero_stage = 1
    offload_params = cfg.offload_params and zero_stage == 3
    pin = torch.cuda.is_available()  # pinned host memory speeds up H2D copies; meaningless on CPU
    zero: dict[str, Any] = {"stage": zero_stage if (train or zero_stage == 3) else 0}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    ds: dict[str, Any] = {
        "steps_per_print": 2**31 - 1,  # DeepSpeed's own progress lines; our metrics do this
        "wall_clock_breakdown": False,
        "zero_optimization": zero,
    }
    if train:
        if not isinstance(cfg, TrainableConfig):
            raise TypeError(f"train=True needs a TrainableConfig, got {type(cfg).__name__}")
        per_step = world_size * cfg.micro_batch_size
        if minibatch_size <= 0 or minibatch_size % per_step:
            raise ValueError(
                f"minibatch_size ({minibatch_size}) must be a positive multiple of "
                f"replicas ({world_size}) x micro_batch_size ({cfg.micro_batch_size})"
            )
        if cfg.offload_optimizer and zero_stage >= 1:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
        ds.update(
            {
                "train_batch_size": minibatch_size,
                "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
                "gradient_accumulation_steps": minibatch_size // per_step,
                "managed_gradient_accumulation": False,
                "gradient_clipping": float(cfg.grad_clip),
                "optimizer": {
                    "type": "AdamW",
                    "params": {
                        "lr": cfg.lr,
                        "betas": list(cfg.adam_betas),
                        "eps": ADAM_EPS,
                        "weight_decay": cfg.weight_decay,
                        "torch_adam": True,
                        # one kernel over all tensors (CPU and CUDA): 4.2 ms against 23.7 ms per step of the
                        # per-tensor loop torch picks on CPU, for 7.4M parameters in 39 tensors on 2 cores
                        "fused": True,
                    },
                },
                "bf16": {"enabled": bf16},
            }
        )
        if bf16:
            # micro-batch gradients accumulate in fp32 (stage >= 1, above), and replicas reduce them in fp32:
            # DeepSpeed's default for a bf16 model casts them to bf16 to communicate, even over one replica
            ds["data_types"] = {"grad_accum_dtype": "fp32"}
            ds["communication_data_type"] = "fp32"
    else:
        # DeepSpeed validates batch sizes even without an optimizer.
        ds.update(
            {
                "train_micro_batch_size_per_gpu": 1,
                "gradient_accumulation_steps": 1,
                "train_batch_size": world_size,
            }
        )
    return deep_merge(ds, copy.deepcopy(overrides or {}))


# ------------------------------------------------------------------------------------------ LoRA


def apply_lora(model: nn.Module, lora: LoraConfig, *, trainable: Sequence[str] = ()) -> nn.Module:
    """Wrap `model` with peft LoRA adapters; only adapters (and `trainable` modules) get gradients.

    trainable: names of extra modules that stay fully trainable (e.g. a critic's ``value_head``);
    a parameter is trainable when one of the dotted components of its name equals one of them.
    They are made trainable in place rather than via peft's ``modules_to_save`` (which keeps a
    second, frozen copy): the role saves them itself along with the adapters.
    Returns the ``peft.PeftModel``; ``with model.disable_adapter():`` gives the base model, which is
    how a LoRA policy doubles as its own reference.
    """
    import peft

    from actors.modeling import count_parameters, linear_layers, lora_targets

    targets = lora_targets(model, lora.target_modules, exclude=trainable)
    layers = linear_layers(model, exclude=trainable)
    peft_cfg = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
    )
    total = count_parameters(model)
    wrapped = peft.get_peft_model(model, peft_cfg)
    wanted = set(trainable)
    if wanted:
        found = set()
        for name, param in wrapped.named_parameters():
            hit = wanted.intersection(name.split("."))
            if hit:
                param.requires_grad_(True)
                found |= hit
        missing = wanted - found
        if missing:
            raise ValueError(f"apply_lora: no parameters under module(s) {sorted(missing)}")
    trained = count_parameters(wrapped, trainable_only=True)
    log.info("LoRA r=%d alpha=%g on %d layers (%s)%s: %d of %d parameters trainable (%.2f%%)", lora.r, lora.alpha,
             sum(layers[t] for t in targets), ", ".join(targets), f" + {', '.join(sorted(wanted))} in full" if wanted else "",
             trained, total, 100 * trained / total)
    return wrapped


# ---------------------------------------------------------------------------------------- engine


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable params; with weight decay, 2-D+ weights decay and biases/norm gains do not.

    Decaying norm gains and biases pulls them toward 0, which only hurts (nanoGPT, HF Trainer and
    torchtune all exclude them); the 2-D rule needs no list of module names.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if weight_decay == 0:
        return [{"params": params}]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_engine(
    model: nn.Module,
    cfg: TrainableConfig | ModelConfig,
    *,
    train: bool,
    total_steps: int = 0,
    minibatch_size: int = 0,
    trainable: Sequence[str] = (),
    overrides: dict | None = None,
) -> DeepSpeedEngine:
    """Wrap `model` in a DeepSpeed engine for this role; the process group must already exist.

    train=True: applies LoRA first when ``cfg.lora.enabled`` (with `trainable` extra modules),
    enables gradient checkpointing when ``cfg.gradient_checkpointing``, and builds AdamW and the LR
    schedule (`lr_multiplier`) over `total_steps` optimizer steps; `minibatch_size` is the global
    sequences per optimizer step (see `deepspeed_config`). Train with `backward` and `step`.
    train=False: parameters frozen, module in eval mode, no optimizer state; ZeRO-3 partitions the
    weights; bf16 is applied by casting the model.
    The module's train/eval mode of a trainable engine is left to the role (``from_pretrained``
    returns eval mode; PPO implementations commonly train without dropout).

    Process group: `cluster.dist.init_local()` in local mode; a `RayGroup` replica has it already.
    """
    import torch.distributed as tdist

    if not tdist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialised: call cluster.dist.init_local() (local mode) or "
            "construct the role inside a cluster RoleGroup"
        )
    world_size = tdist.get_world_size()
    ds_cfg = deepspeed_config(cfg, train=train, world_size=world_size, minibatch_size=minibatch_size, overrides=overrides)
    zero = ds_cfg["zero_optimization"]
    budget = getattr(cfg, "micro_batch_tokens", 0)
    log.info(
        "DeepSpeed engine: %s, ZeRO-%d%s, %s, %d replica(s), %s, offload %s",
        "train" if train else "frozen", zero["stage"],
        " (zero_stage=0 in bf16: DeepSpeed accumulates gradients in fp32 from stage 1)" if zero["stage"] > cfg.zero_stage else "",
        resolve_dtype(cfg.dtype), world_size,
        f"micro-batches of up to {budget} padded tokens" if budget else
        f"micro-batch {ds_cfg['train_micro_batch_size_per_gpu']} x {ds_cfg['gradient_accumulation_steps']} accumulation",
        [k for k in ("offload_optimizer", "offload_param") if k in zero] or "none",
    )
    if train:
        lora = getattr(cfg, "lora", None)
        if lora is not None and lora.enabled:
            model = apply_lora(model, lora, trainable=trainable)
        elif trainable:
            raise ValueError("`trainable` selects modules next to LoRA adapters; without LoRA all params train")
        if cfg.gradient_checkpointing:
            _enable_activation_checkpointing(model)
        engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=_param_groups(model, cfg.weight_decay),
            config=ds_cfg,
            lr_scheduler=_lr_scheduler_factory(cfg, total_steps),
            dist_init_required=False,
        )
        _record_fp32_clip_norm(engine)
        _skip_single_replica_allreduce(engine)
    else:
        if trainable:
            raise ValueError("`trainable` applies to train=True engines only")
        model.requires_grad_(False)
        model.eval()
        if resolve_dtype(cfg.dtype) == "bf16":
            model.to(torch.bfloat16)
        engine, *_ = deepspeed.initialize(model=model, config=ds_cfg, dist_init_required=False)
        engine.eval()
    return engine


def _enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute activations in backward (``cfg.gradient_checkpointing``), HF API of any version.

    Non-reentrant checkpointing (``use_reentrant=False``) is required: with LoRA or frozen
    embeddings the checkpointed inputs do not require grad, and the reentrant variant then silently
    drops the adapters' gradients. transformers 5 renamed the method (the old name still works,
    with a FutureWarning).
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ValueError(f"gradient_checkpointing: {type(model).__name__} is not a Hugging Face model")


def _record_fp32_clip_norm(engine: DeepSpeedEngine) -> None:
    """Make ZeRO-0 fp32 engines report the gradient norm they clip with.

    The ZeRO and bf16 optimizers store the global norm; the plain fp32 path (``clip_fp32_gradients``)
    computes it with ``deepspeed.runtime.utils.clip_grad_norm_`` and drops it, so
    ``get_global_grad_norm()`` would stay None. This instance-level override keeps DeepSpeed's own
    clipping call and records its result. If a DeepSpeed release renames the method, the only effect
    is a NaN grad_norm metric.
    """
    if engine.zero_optimization() or engine.bfloat16_enabled() or engine.fp16_enabled():
        return
    from deepspeed.runtime.utils import clip_grad_norm_

    engine._rlhf_keeps_norms = engine.dp_world_size == 1  # `gradient_norms` keeps them for the clip below

    def clip_fp32_gradients() -> None:
        kept, engine._rlhf_kept_norms = getattr(engine, "_rlhf_kept_norms", None), None
        grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
        if kept is not None and len(kept[0]) == len(grads) and all(a is b for a, b in zip(kept[0], grads)):
            norm = _clip_one_replica(grads, kept[1], engine.gradient_clipping())
        else:
            norm = clip_grad_norm_(parameters=engine.module.parameters(), max_norm=engine.gradient_clipping(), mpu=engine.mpu)
        engine._global_grad_norm = float(norm)

    engine.clip_fp32_gradients = clip_fp32_gradients


def gradient_norms(engine: DeepSpeedEngine) -> list[torch.Tensor]:
    """The L2 norm of each gradient this replica holds (one fused kernel on GPU), for the trainer's
    finiteness check before `step`. A lone ZeRO-0 fp32 replica keeps them for that step's clipping
    (`_record_fp32_clip_norm`), which then does not compute them a second time."""
    grads = [p.grad for p in unwrap(engine).parameters() if p.grad is not None]
    norms = list(torch._foreach_norm(grads)) if grads else []
    if getattr(engine, "_rlhf_keeps_norms", False):
        engine._rlhf_kept_norms = (grads, norms)
    return norms


def _clip_one_replica(grads: list[torch.Tensor], norms: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip `grads` in place to a global L2 norm of `max_norm` from their per-tensor `norms`; returns the
    norm before clipping. The arithmetic of `deepspeed.runtime.utils.clip_grad_norm_` for one replica
    (the same rounding: tested bitwise), without its per-tensor norms and its all-reduce over one rank."""
    total = torch.stack(norms).pow(2.0).sum().float().pow(0.5)
    coef = torch.tensor([float(max_norm)], device=total.device) / (total + 1e-6)
    coef = torch.min(torch.tensor([1.0], device=total.device), coef)
    for g in grads:
        g.mul_(coef)
    return total


def _skip_single_replica_allreduce(engine: DeepSpeedEngine) -> None:
    """One replica at ZeRO-0 has nothing to all-reduce: DeepSpeed would still flatten every gradient into
    one buffer, scale it by 1/world, all-reduce it over a group of one and copy it back (four passes over
    the gradients per optimizer step; about 10 ms of a 170 ms DPO step in a profile of the 7.4M-parameter
    Llama of `rlhf bench` on a 2-core CPU). The gradients are the same without it. The same holds for
    DeepSpeed's bf16 optimizer (a lone bf16 replica trains at stage 1), whose reduction is an all-reduce of
    its fp32 gradients. ZeRO 1-3 otherwise keep their reduction, which also moves gradients into their partitions."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    if engine.dp_world_size == 1 and (not engine.zero_optimization() or isinstance(engine.optimizer, BF16_Optimizer)):
        engine.enable_backward_allreduce = False


def backward(engine: DeepSpeedEngine, loss: torch.Tensor) -> None:
    """Backward of one micro-batch's share of the global loss: ``sum(l_i over this micro-batch) / N_global``.

    N_global counts valid tokens (or sequences, for sequence-level losses) over every replica and
    micro-batch of the minibatch. Undoes DeepSpeed's GAS division and data-parallel averaging (module
    docstring), so that after `step` the update is that of the full-batch gradient.
    """
    engine.backward(loss * engine.dp_world_size, scale_wrt_gas=False)


def step(engine: DeepSpeedEngine) -> dict[str, float]:
    """The optimizer step closing a minibatch (reduce, clip, AdamW, LR schedule), once per minibatch.

    Returns ``{"lr": lr used by this update, "grad_norm": global norm before clipping}`` (grad_norm
    is NaN when DeepSpeed did not compute it, e.g. with clipping off at ZeRO-0).
    """
    lr = engine.get_lr()[0]
    engine.step()
    norm = engine.get_global_grad_norm()
    norm = float(norm) if norm is not None else float("nan")
    return {"lr": float(lr), "grad_norm": norm}


def any_replica(flag: bool) -> bool:
    """True when `flag` is true on any replica of this role's process group (every replica must call it:
    all of them then raise together instead of one waiting for the others in a collective)."""
    return replica_max(1 if flag else 0) > 0


def replica_max(value: int) -> int:
    """The largest `value` over the replicas of this role's process group (every replica must call it)."""
    import torch.distributed as tdist

    if tdist.is_initialized() and tdist.get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([float(value)], device=device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return int(t.item())
    return value


def unwrap(engine_or_model: DeepSpeedEngine | nn.Module) -> nn.Module:
    """The user module inside an engine (or the module itself)."""
    return engine_or_model.module if isinstance(engine_or_model, DeepSpeedEngine) else engine_or_model


@contextlib.contextmanager
def gathered_params(engine_or_model: DeepSpeedEngine | nn.Module, modifier_rank: int | None = None) -> Iterator[nn.Module]:
    """Inside the block every ZeRO-3 parameter is whole on every rank; yields the module.

    For HF ``generate`` under ZeRO-3: gathering once per generate call instead of once per layer per
    decoding step (which is what ZeRO-3's forward hooks would do) costs one all-gather. A collective:
    every rank of the role must enter it. Memory: the full model, once per rank. A no-op below
    stage 3 (no parameter carries ZeRO-3's ``ds_id``). `modifier_rank` as in
    ``deepspeed.zero.GatheredParameters``: rank whose in-block edits are kept (None = read-only).
    """
    module = unwrap(engine_or_model)
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield module
        return
    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield module


# ------------------------------------------------------------------------------------ checkpoints


_CLIENT_KEY = "rlhf_client_state"  # DeepSpeed mixes its own keys into the returned client state: ours go under one key


def export_pretrained(engine: DeepSpeedEngine, tokenizer, folder: str | os.PathLike, config_updates: dict | None = None,
                      adapter: bool = False) -> None:
    """A `save_pretrained` folder (safetensors + tokenizer) that transformers loads, LoRA merged into the
    weights and `config_updates` set on the saved config; with `adapter` and LoRA, also the adapters
    alone in peft's format as `<folder>_adapter/` (`peft.PeftModel.from_pretrained(base, it)`).
    A collective under ZeRO-3; rank 0 writes."""
    os.makedirs(folder, exist_ok=True)
    with gathered_params(engine) as model:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == 0:
            to_save = copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model
            for key, value in (config_updates or {}).items():
                setattr(to_save.config, key, value)
            to_save.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)
            if adapter and hasattr(model, "peft_config"):
                model.save_pretrained(f"{os.fspath(folder).rstrip(os.sep)}_adapter", safe_serialization=True)


def _is_lora(engine: DeepSpeedEngine) -> bool:
    return any("lora_" in name for name, _ in engine.module.named_parameters())


def save_checkpoint(engine: DeepSpeedEngine, directory: str | os.PathLike, tag: str) -> None:
    """All ranks: write model, optimizer, LR scheduler and this process's torch RNG under ``directory/tag``.

    Thin on purpose, adding three things to ``engine.save_checkpoint``: with LoRA, frozen base
    weights are not written again at every checkpoint (``exclude_frozen_parameters``); no 'latest'
    file (atomic checkpoint rotation belongs to the driver, which knows which checkpoint is
    complete); and the replica's CPU RNG state rides along (`load_checkpoint` restores it), so a
    resumed role draws the random numbers an uninterrupted one would. Non-finite weights raise
    instead (the driver's atomic checkpoint then publishes nothing).
    """
    local = [getattr(p, "ds_tensor", p) for p in engine.module.parameters()]  # ZeRO-3: this rank's partition
    flags = [torch.isfinite(t).all() for t in local if t.numel()]
    if any_replica(bool(flags) and not bool(torch.stack(flags).all())):
        raise FloatingPointError(f"{tag}: weights are not finite; no checkpoint is written over the last good one")
    engine.save_checkpoint(
        os.fspath(directory),
        tag=tag,
        client_state={_CLIENT_KEY: {"rng": torch.get_rng_state()}},
        save_latest=False,
        exclude_frozen_parameters=_is_lora(engine),
    )


def load_checkpoint(engine: DeepSpeedEngine, directory: str | os.PathLike, tag: str) -> None:
    """All ranks: restore what `save_checkpoint` wrote, the RNG state included.

    ``engine.load_checkpoint`` returns ``(None, None)`` (with only a warning) when the checkpoint is
    missing; this raises `FileNotFoundError` instead, so a resume can never silently start fresh.
    """
    path = os.path.join(os.fspath(directory), tag)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    has_optimizer = engine.optimizer is not None and hasattr(engine.optimizer, "state_dict")
    try:
        load_path, client_state = engine.load_checkpoint(
            os.fspath(directory),
            tag=tag,
            load_module_strict=not _is_lora(engine),
            load_optimizer_states=has_optimizer,
            load_lr_scheduler_states=engine.lr_scheduler is not None,
        )
    except Exception as e:  # noqa: BLE001  (DeepSpeed's and torch's messages name no checkpoint)
        raise RuntimeError(f"cannot load the checkpoint {path}: {type(e).__name__}: {first_line(e)}") from e
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed could not load a checkpoint from {path}")
    rng = (client_state or {}).get(_CLIENT_KEY, {}).get("rng")
    if rng is not None:
        torch.set_rng_state(rng)
