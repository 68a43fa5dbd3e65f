"""A cost model of one RLHF (PPO) step: memory per device per role, FLOPs per phase, communication
volume, and the step time, for a model shape, sequence lengths, batch, role layout, ZeRO stage, dtype
and hardware.

Arithmetic (per replica; P = prompt tokens, T = response tokens, S = P + T, b = sequences per replica):

- FLOPs of a forward pass over n tokens at context c: ``n * (2 * M + 4 * L * h * c)``, M the matmul
  parameters (attention, MLP and the LM head; not the embedding lookup), the second term attention's
  scores and weighted sum (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Sec. 2.1).
  A training step is 3 forward passes' worth (backward = 2 forwards), plus one more with gradient
  checkpointing.
- Generation: a prefill of P tokens, then T decoding steps of b tokens each (multi-turn episodes: one call per
  model turn, each prefilling the episode so far; the environment's tokens are prefilled, never decoded). A decoding step costs
  the larger of its FLOPs at the compute rate and its bytes (the weights, plus the KV cache read) at
  the memory bandwidth, plus a fixed per-token overhead (kernel launches, the sampling loop).
- Memory per device (Rajbhandari et al. 2020, "ZeRO", Sec. 3-5): weights ``w * N`` (w bytes per
  parameter; divided by the replicas at ZeRO-3); gradients ``g * N`` (divided at ZeRO >= 2); Adam
  moments 8 bytes per parameter plus an fp32 master copy (4) when training in bf16 (divided at
  ZeRO >= 1; 0 on the device with optimizer offload); activations of one micro-batch ``mb * S * h * L
  * 34 * w / 2`` bytes (Korthikanti et al. 2022, "Reducing Activation Recomputation", Sec. 4.1, without
  the attention-score term that fused attention removes; ``2 * w`` per layer with checkpointing); the
  fp32 log-softmax of one micro-batch ``4 * mb * S * V``; the KV cache during generation
  ``2 * L * d_kv * S * b * w``.
- Communication per replica (ring collectives move (R-1)/R of the message each way): ZeRO 0-2 reduce
  the gradients once per optimizer step (all-reduce = 2x the gradient bytes, or reduce-scatter +
  all-gather of the updated shard at ZeRO-2, the same volume); ZeRO-3 all-gathers the weights for
  every forward (each generated token too, in this project's generation: DeepSpeed gathers per
  forward) and for every backward, and reduce-scatters the gradients of every micro-batch. A separate
  generator (vLLM engines, as in OpenRLHF) receives the policy's weights once per step.
- Phases run as the driver issues them (`orchestrator.jobs.ppo.PPOJob.ppo_step`): generate; then reward,
  reference, old log-probs and values together (`forward`); then the critic and policy updates together
  (`update`). Roles of one phase
  on their own devices overlap (the phase takes the slowest); roles sharing devices (colocation, or
  more processes than cores) take the busy device-time divided by the devices.

Constants that are not arithmetic (the fraction of peak FLOP/s reached per kind of pass, the
per-call and per-token overheads, the effective collective bandwidth) are `Efficiency`. On this
machine they are fitted to measured sweep points (`calibrate`, `rlhf experiment scaling --predict`,
which states the error on held-out points). For GPUs no measurement is possible here: `GPU_ASSUMED`
are stated assumptions, and `rlhf cost --published` sets the resulting predictions next to published
step times: predictions, not measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

GB = 1024**3

# ------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's shape."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    gated_mlp: bool = True
    """SwiGLU-style MLP (three matrices, Llama) or two (GPT/OPT)."""
    tied_embeddings: bool = False

    @property
    def kv_dim(self) -> int:
        return self.hidden * self.kv_heads // self.heads

    @property
    def matmul_params(self) -> int:
        """Parameters that take part in matrix products: attention, MLP, LM head."""
        attn = self.hidden * (2 * self.hidden + 2 * self.kv_dim)
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.intermediate
        return self.layers * (attn + mlp) + self.vocab * self.hidden

    @property
    def params(self) -> int:
        """All parameters (matmul ones, the embedding unless tied, norms)."""
        embed = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.matmul_params + embed + self.layers * 2 * self.hidden + self.hidden

    def forward_flops(self, tokens: float, context: float, lm_head: bool = True) -> float:
        """FLOPs of a forward pass over `tokens` tokens attending to `context` earlier ones on average;
        `lm_head=False` for a classifier or value head (one output instead of the vocabulary)."""
        matmul = self.matmul_params - (0 if lm_head else self.vocab * self.hidden)
        return tokens * (2 * matmul + 4 * self.layers * self.hidden * context)

    @classmethod
    def from_hf_config(cls, config: dict) -> "ModelShape":
        """From a Hugging Face config.json (Llama, Mistral, Qwen, OPT, GPT-2 style names)."""
        get = lambda *names, default=None: next((config[n] for n in names if config.get(n) is not None), default)  # noqa: E731
        hidden = get("hidden_size", "n_embd", "d_model")
        heads = get("num_attention_heads", "n_head")
        act = str(get("hidden_act", "activation_function", default=""))
        gated = config.get("model_type") in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3") or "silu" in act
        return cls(layers=get("num_hidden_layers", "n_layer"), hidden=hidden,
                   intermediate=get("intermediate_size", "ffn_dim", "n_inner", default=4 * hidden),
                   vocab=get("vocab_size"), heads=heads, kv_heads=get("num_key_value_heads", default=heads),
                   gated_mlp=gated, tied_embeddings=bool(config.get("tie_word_embeddings", False)))


MODELS = {
    "llama2-7b": ModelShape(32, 4096, 11008, 32000, 32, 32),
    "llama2-13b": ModelShape(40, 5120, 13824, 32000, 40, 40),
    "llama2-70b": ModelShape(80, 8192, 28672, 32000, 64, 8),
    "opt-350m": ModelShape(24, 1024, 4096, 50272, 16, 16, gated_mlp=False, tied_embeddings=True),
    "opt-6.7b": ModelShape(32, 4096, 16384, 50272, 32, 32, gated_mlp=False, tied_embeddings=True),
    "opt-66b": ModelShape(64, 9216, 36864, 50272, 72, 72, gated_mlp=False, tied_embeddings=True),
}
"""Shapes from the models' published config.json files."""


@dataclass(frozen=True)
class Role:
    """One role's layout."""

    model: ModelShape
    replicas: int = 1
    zero_stage: int = 0
    dtype: str = "bf16"
    trainable: bool = False
    micro_batch: int = 8
    gradient_checkpointing: bool = False
    offload_optimizer: bool = False
    devices: str = ""
    """Roles with the same non-empty `devices` label share devices (colocation); else each has its own."""

    @property
    def bytes_per_weight(self) -> int:
        return 4 if self.dtype == "fp32" else 2


@dataclass(frozen=True)
class Workload:
    """One PPO step."""

    roles: dict
    """policy, critic, reference, reward -> Role (reference/critic/reward may be absent)."""
    samples: int
    """Sequences generated and trained on per step (prompts x samples per prompt)."""
    prompt_len: int
    response_len: int
    epochs: int = 1
    minibatch: int = 0
    """Sequences per optimizer step (0: the whole batch)."""
    generator: str = "policy"
    """'policy': the policy's replicas generate (this project; DeepSpeed-Chat's hybrid engine); 'separate':
    engines of their own (`generator_devices` devices, tensor-parallel `generator_tp`), weights synced each step."""
    generator_devices: int = 0
    generator_tp: int = 1
    overlap: bool = False
    """One step off-policy (ppo.max_staleness=1): the separate generator samples the next rollout while this
    step scores and trains, so a step takes weight_sync + driver + max(generate, the rest)."""
    turns: float = 1.0
    """Multi-turn episodes (env.path): model turns per episode, each one `generate` call over the whole context so
    far (its prefill recomputed: HF `generate` keeps no cache across calls)."""
    env_tokens: float = 0.0
    """Environment tokens per episode, inside `response_len` (context for every pass, never decoded)."""
    env_s: float = 0.0
    """The environment's calls per step, in seconds (the `env` phase: the driver waits for them)."""


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_flops: dict
    """dtype -> FLOP/s of one device (one replica's share)."""
    memory_bw: float
    """bytes/s of device memory."""
    memory: float
    """bytes per device."""
    devices: int
    """devices in the cluster (GPUs; or cores on a CPU machine whose replicas run one thread each)."""


@dataclass(frozen=True)
class Efficiency:
    """Fitted (this machine) or assumed (GPU) constants; times in seconds."""

    forward: float = 0.5
    """fraction of peak FLOP/s in no-grad forwards and generation's prefill."""
    train: float = 0.4
    """fraction of peak FLOP/s in training (forward + backward)."""
    memory_bw: float = 0.6
    """fraction of memory bandwidth reached by memory-bound decoding and the optimizer step."""
    per_call_s: float = 0.0
    """fixed cost per micro-batch call (a forward, a forward+backward)."""
    per_token_s: float = 0.0
    """fixed cost per decoding step (kernel launches, sampling, Python)."""
    comm_bw: float = 100e9
    """effective bytes/s of a collective per replica (ring bus bandwidth)."""
    per_step_s: float = 0.0
    """fixed driver cost per step."""
    zero3_layer_s: float = 0.0
    """ZeRO-3's bookkeeping per layer per forward or backward pass (its hooks fetch and release each
    module's parameters, even on one replica and inside a whole-model gather)."""


GPU_ASSUMED = {
    "hf": Efficiency(forward=0.5, train=0.4, memory_bw=0.6, per_call_s=0.005, per_token_s=0.03, comm_bw=100e9, per_step_s=1.0,
                     zero3_layer_s=1e-4),
    "vllm": Efficiency(forward=0.5, train=0.4, memory_bw=0.7, per_call_s=0.005, per_token_s=0.004, comm_bw=100e9, per_step_s=1.0,
                       zero3_layer_s=1e-4),
}
"""Assumptions for A100/A800-class GPUs, not measurements: 40% of peak in ZeRO training and 50% in
forwards (the MFU range large-model training reports), 60-70% of HBM bandwidth in decoding, 30 ms of
fixed cost per decoded token in Hugging Face `generate` (Python and kernel launches of a 7B-70B model
under ZeRO-3) against 4 ms in vLLM's CUDA-graph decoding, 0.1 ms of ZeRO-3 hook bookkeeping per layer
and pass, and 100 GB/s of effective collective bandwidth per GPU (NVLink within a node, InfiniBand
across nodes, averaged)."""

HARDWARE = {
    "a100-80g": Hardware("A100-80GB", {"bf16": 312e12, "fp32": 19.5e12}, 2.0e12, 80 * GB, 8),
    "a800-80g": Hardware("A800-80GB", {"bf16": 312e12, "fp32": 19.5e12}, 2.0e12, 80 * GB, 8),
}


# -------------------------------------------------------------------------------------- the model

FORWARD_PHASE = {"policy": "old_logprobs", "critic": "values", "reference": "reference", "reward": "score"}
"""Each role's no-grad forward over the rollout, named as the call of PPO's `forward` phase that runs it."""


@dataclass
class RoleCost:
    memory: dict = field(default_factory=dict)
    """bytes per device: weights, grads, optimizer, activations, logits, kv_cache, total."""
    flops: dict = field(default_factory=dict)
    """phase -> FLOPs per replica."""
    comm_bytes: dict = field(default_factory=dict)
    """phase -> bytes sent per replica."""
    seconds: dict = field(default_factory=dict)
    """phase -> seconds per replica."""


def _share(r: int) -> float:
    return (r - 1) / r if r > 1 else 0.0


def role_memory(role: Role, w: Workload, generates: bool) -> dict:
    m, R, wb = role.model, role.replicas, role.bytes_per_weight
    N, S = m.params, w.prompt_len + w.response_len
    out = {"weights": wb * N / (R if role.zero_stage == 3 else 1)}
    if role.trainable:
        gb = 4 if (role.dtype == "fp32" or role.zero_stage >= 1) else 2  # bf16 grads accumulate in fp32 at ZeRO >= 1
        out["grads"] = gb * N / (R if role.zero_stage >= 2 else 1)
        adam = 8 + (4 if role.dtype != "fp32" else 0)
        out["optimizer"] = 0.0 if role.offload_optimizer else adam * N / (R if role.zero_stage >= 1 else 1)
        per_layer = 2 * wb if role.gradient_checkpointing else 34 * wb / 2
        out["activations"] = role.micro_batch * S * m.hidden * m.layers * per_layer
    out["logits"] = 4.0 * role.micro_batch * S * m.vocab
    if generates:  # the whole shard in one generate call, with the full (gathered) weights
        b = math.ceil(w.samples / R)
        out["kv_cache"] = 2.0 * m.layers * m.kv_dim * S * b * wb
        out["weights"] = wb * N
    out["total"] = sum(out.values())
    return out


def estimate(w: Workload, hw: Hardware, eff: Efficiency) -> dict:
    """Memory, FLOPs, communication and time of one step: {'roles': {name: RoleCost}, 'phases': {phase:
    seconds}, 'step_s', ...}."""
    P, T = w.prompt_len, w.response_len
    S = P + T
    minibatch = w.minibatch or w.samples
    costs: dict[str, RoleCost] = {}
    for name, role in w.roles.items():
        c = costs[name] = RoleCost()
        m, R = role.model, role.replicas
        b = w.samples / R  # sequences per replica
        peak = hw.peak_flops[role.dtype]
        wbytes = role.bytes_per_weight * m.params
        micro = math.ceil(b / role.micro_batch)
        gather = wbytes * _share(R) if role.zero_stage == 3 else 0.0  # one all-gather of the weights
        z3 = eff.zero3_layer_s * m.layers if role.zero_stage == 3 else 0.0  # per forward or backward pass
        c.memory = role_memory(role, w, generates=(name == "policy" and w.generator == "policy"))
        if name == "policy" and w.generator == "policy":
            # the policy's replicas generate their whole shard in one `generate` call, the ZeRO-3 weights
            # gathered once for it (`actors.policy.PolicyActor.generate`)
            # with turns, call k prefills the episode so far (P + k T / turns) and decodes its share of the model's tokens
            k = max(1, round(w.turns))
            prefill = sum(m.forward_flops(b * (P + j * T / k), (P + j * T / k) / 2) for j in range(k))
            decoded = T - w.env_tokens
            decode = m.forward_flops(b * decoded, P + T / 2)
            decode_bytes = decoded * (wbytes + 2 * m.layers * m.kv_dim * (P + T / 2) * b * role.bytes_per_weight)
            c.flops["generate"] = prefill + decode
            c.comm_bytes["generate"] = gather * k
            compute = prefill / (peak * eff.forward) + max(decode / (peak * eff.forward), decode_bytes / (hw.memory_bw * eff.memory_bw))
            c.seconds["generate"] = (compute + decoded * (eff.per_token_s + z3) + c.comm_bytes["generate"] / eff.comm_bw
                                     + k * eff.per_call_s)
        fwd = m.forward_flops(b * S, S / 2)
        phase = FORWARD_PHASE[name]
        c.flops[phase] = fwd
        c.comm_bytes[phase] = gather * micro
        c.seconds[phase] = fwd / (peak * eff.forward) + micro * (eff.per_call_s + z3) + c.comm_bytes[phase] / eff.comm_bw
        if role.trainable:
            upd = f"{name}_update"
            passes = 4 if role.gradient_checkpointing else 3
            c.flops[upd] = passes * fwd * w.epochs
            opt_steps = w.epochs * max(1, w.samples // minibatch)
            gb = 4 if (role.dtype == "fp32" or role.zero_stage >= 1) else 2
            grads = gb * m.params
            if role.zero_stage == 3:
                comm = w.epochs * micro * (2 * gather + grads * _share(R))
            else:
                comm = opt_steps * 2 * grads * _share(R)
            c.comm_bytes[upd] = comm
            shard = m.params / (R if role.zero_stage >= 1 else 1)
            optimizer = opt_steps * 32 * shard / (hw.memory_bw * eff.memory_bw)  # read/write weights, grads, moments
            c.seconds[upd] = (c.flops[upd] / (peak * eff.train) + w.epochs * micro * (eff.per_call_s + 2 * z3) + comm / eff.comm_bw
                              + (0.0 if role.offload_optimizer else optimizer))
    phases: dict[str, float] = {}
    if w.generator == "separate":
        # engines of `generator_tp` devices each; as many sequences decode at once as their KV cache fits
        # (90% of the engine's memory after the weights), the rest waits for the next wave
        pol = w.roles["policy"]
        m, tp = pol.model, max(1, w.generator_tp)
        engines = max(1, w.generator_devices // tp)
        b = w.samples / engines
        peak = hw.peak_flops["bf16"] * tp
        wbytes = 2 * m.params
        kv_per_seq = 2 * m.layers * m.kv_dim * S * 2
        at_once = max(1.0, min(b, (0.9 * hw.memory * tp - wbytes) // kv_per_seq))
        waves = math.ceil(b / at_once)
        decode_bytes = waves * T * wbytes + T * 2 * m.layers * m.kv_dim * (P + T / 2) * b * 2
        phases["generate"] = (m.forward_flops(b * P, P / 2) / (peak * eff.forward)
                              + max(m.forward_flops(b * T, P + T / 2) / (peak * eff.forward), decode_bytes / (hw.memory_bw * tp * eff.memory_bw))
                              + waves * T * eff.per_token_s)
        phases["weight_sync"] = wbytes / eff.comm_bw
    else:
        phases["generate"] = _group({"policy": "generate"}, w, costs, hw)
    # named as PPO's step names its phases (`orchestrator.core.phases`; critic-free: no values, no critic update)
    phases["forward"] = _group(
        {n: FORWARD_PHASE[n] for n in ("reward", "reference", "policy", "critic") if n in w.roles}, w, costs, hw)
    phases["update"] = _group(
        {n: f"{n}_update" for n in ("critic", "policy") if n in w.roles and w.roles[n].trainable}, w, costs, hw)
    phases["driver"] = eff.per_step_s
    if w.env_s:
        phases["env"] = w.env_s
    step = sum(phases.values())
    if w.overlap and w.generator == "separate":
        serial = phases["weight_sync"] + phases["driver"]
        step = serial + max(phases["generate"], step - phases["generate"] - serial)
    return {"roles": costs, "phases": phases, "step_s": step, "samples_per_s": w.samples / step,
            "flops_per_step": sum(sum(c.flops.values()) * w.roles[n].replicas for n, c in costs.items())}


def _group(keys: dict[str, str], w: Workload, costs: dict, hw: Hardware) -> float:
    """Seconds of roles issued together (role -> its phase key in `RoleCost.seconds`): the slowest,
    unless they share devices: then the busy device-seconds over the devices they have
    (`Hardware.devices` bounds them all)."""
    if not keys:
        return 0.0
    times = {n: costs[n].seconds.get(key, 0.0) for n, key in keys.items()}
    busy = sum(times[n] * w.roles[n].replicas for n in keys)
    own = {w.roles[n].devices or n for n in keys}
    devices = min(hw.devices, sum(max(w.roles[m].replicas for m in keys if (w.roles[m].devices or m) == d) for d in own))
    return max(max(times.values()), busy / max(devices, 1))


# --------------------------------------------------------------------------------- calibration (CPU)


def measure_peak(dtype: str = "fp32", threads: int = 1, seconds: float = 1.0) -> float:
    """FLOP/s of square matrix products on `threads` threads of this machine (what one replica gets)."""
    import time

    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        a, b = torch.randn(512, 512, dtype=dt), torch.randn(512, 512, dtype=dt)
        for _ in range(3):
            a @ b
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            n += 1
        return n * 2 * 512**3 / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)


def workload_of_point(row: dict, run_dir: Path) -> Workload:
    """The `Workload` of a measured PPO sweep point (its run folder's config.yaml and the padded lengths it logged)."""
    from orchestrator.registry import load_config

    cfg = load_config("ppo", str(run_dir / "config.yaml"))
    if cfg.policy.micro_batch_tokens or cfg.critic.micro_batch_tokens:
        raise ValueError(f"{run_dir}: micro_batch_tokens > 0 is not modelled (the cost model computes row micro-batches "
                         "at the padded widths, so such a point would calibrate it too fast)")
    return workload_of_config(cfg, prompt_len=round(row.get("prompt_len") or 0),
                              response_len=round(row.get("response_len") or cfg.policy.max_new_tokens),
                              turns=row.get("turns") or 1.0, env_tokens=row.get("env_tokens") or 0.0, env_s=row.get("phase/env") or 0.0)


def workload_of_config(cfg, prompt_len: float, response_len: float, turns: float = 1.0, env_tokens: float = 0.0,
                       env_s: float = 0.0) -> Workload:
    """The `Workload` of a PPO config: the roles it hosts (`PPOConfig.hosted_roles`; a reward that is not
    a model has none), their models' config.json (built-in names resolved first), colocation as
    `cluster.placement.plan_resources` resolves it, at the given lengths (padded for a cost prediction;
    `rlhf bench` gives the mean real lengths, for model FLOPs)."""
    from actors.modeling import resolve_dtype
    from cluster.placement import plan_resources
    from orchestrator.builtin.policy import resolve

    cfg = resolve(cfg)
    hosted = cfg.hosted_roles()
    group = {name: p[0] for name, p in plan_resources(hosted, has_gpus=False).items()}  # colocated roles share one
    paths = {"policy": cfg.policy.path, "reference": cfg.reference.path or cfg.policy.path, "reward": cfg.reward.path,
             "critic": cfg.critic_path}
    shapes: dict[str, ModelShape] = {}
    roles = {}
    gen = hosted.pop("generator", None)  # ppo.max_staleness=1: engines of their own, one step ahead
    for name, rc in hosted.items():
        if name == "reward" and cfg.reward.kind != "model":
            continue  # no model to run
        path = paths[name]
        if path not in shapes:
            shapes[path] = ModelShape.from_hf_config(json.loads((Path(path) / "config.json").read_text()))
        micro = (cfg.critic if name == "critic" else cfg.policy).micro_batch_size  # frozen roles use the policy's
        roles[name] = Role(model=shapes[path], replicas=rc.replicas, zero_stage=rc.zero_stage, dtype=resolve_dtype(rc.dtype),
                           trainable=name in ("policy", "critic"), micro_batch=micro,
                           gradient_checkpointing=rc.gradient_checkpointing,
                           offload_optimizer=bool(getattr(rc, "offload_optimizer", False)),
                           devices=group[name] if "+" in group[name] else "")
    separate = {} if gen is None else dict(generator="separate", generator_devices=gen.replicas * max(1, math.ceil(gen.num_gpus)),
                                           overlap=True)
    return Workload(roles=roles, samples=cfg.ppo.rollout_batch_size, prompt_len=prompt_len, response_len=response_len,
                    epochs=cfg.ppo.epochs, minibatch=cfg.ppo.minibatch_size, turns=turns, env_tokens=env_tokens, env_s=env_s,
                    **separate)


def _efficiency(x) -> Efficiency:
    """Efficiency from the fitted vector (1/forward, 1/train, per_call_s, per_token_s, 1/comm_bw, per_step_s, zero3_layer_s);
    a coefficient fitted to 0 means that cost was not seen in the measurements."""
    inv = lambda v: 1.0 / v if v > 1e-12 else 1e30  # noqa: E731
    return Efficiency(forward=inv(x[0]), train=inv(x[1]), memory_bw=1e30, per_call_s=float(x[2]), per_token_s=float(x[3]),
                      comm_bw=inv(x[4]), per_step_s=float(x[5]), zero3_layer_s=float(x[6]))


def fit(points: list[tuple[Workload, dict]], hw: Hardware) -> Efficiency:
    """Efficiency constants (the vector of `_efficiency`) by bounded least squares on measured phase times, each residual
    relative to its measurement (short phases count as much as long ones). Memory-bound terms are off
    (a CPU's caches hide the weights' bandwidth cost at these sizes)."""
    import numpy as np
    from scipy.optimize import least_squares

    def residuals(x):
        eff = _efficiency(x)
        out = []
        for w, phases in points:
            predicted = estimate(w, hw, eff)["phases"]
            out += [predicted.get(k, 0.0) / v - 1.0 for k, v in phases.items() if v > 0]
        return np.asarray(out)

    x0 = np.array([3.0, 3.0, 1e-3, 1e-3, 1e-9, 1e-3, 1e-4])
    best = least_squares(residuals, x0, bounds=(0.0, np.inf), x_scale=x0, method="trf")
    return _efficiency(best.x)


def cpu_hardware(peak: float) -> Hardware:
    return Hardware(f"this machine ({os.cpu_count()} cores)", {"fp32": peak, "bf16": peak}, 1e30, 0.0, os.cpu_count() or 1)


def calibrate_on_sweep(rows: list[dict], spec: dict, out: Path) -> dict:
    """Fit the efficiency constants to every measured PPO point, then predict each point from a fit on
    the others (leave one out): adds `predicted_step_s` and `predicted_error` to the rows, writes
    calibration.json; returns {'text': a report}."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if spec["job"] != "ppo" or len(ok) < 3:
        return {"text": "cost model: needs at least 3 measured PPO points to calibrate and hold one out"}
    peak = measure_peak("fp32")
    hw = cpu_hardware(peak)
    data = []
    for r in ok:
        try:
            w = workload_of_point(r, out / "points" / r["point"] / "run")
        except ValueError as e:
            return {"text": f"cost model: no prediction: {e}"}
        phases = {k[len("phase/"):]: v for k, v in r.items() if k.startswith("phase/")}
        phases["driver"] = phases.get("driver", 0.0) + phases.pop("advantages", 0.0)  # driver-side work, one constant
        data.append((r, w, phases))
    errors = []
    for i, (r, w, _) in enumerate(data):
        eff = fit([(w2, p2) for j, (_, w2, p2) in enumerate(data) if j != i], hw)
        pred = estimate(w, hw, eff)["step_s"]
        r["predicted_step_s"] = round(pred, 4)
        r["predicted_error"] = round(pred / r["step_s"] - 1, 3)
        errors.append(abs(pred / r["step_s"] - 1))
    eff = fit([(w, p) for _, w, p in data], hw)
    in_sample = [abs(estimate(w, hw, eff)["step_s"] / r["step_s"] - 1) for r, w, _ in data]
    result = {"peak_flops_per_thread": peak, "efficiency": dataclasses.asdict(eff), "points": len(data),
              "held_out_abs_error_mean": sum(errors) / len(errors), "held_out_abs_error_max": max(errors),
              "in_sample_abs_error_mean": sum(in_sample) / len(in_sample)}
    (out / "calibration.json").write_text(json.dumps(result, indent=1))
    text = (f"cost model on {len(data)} measured points (peak {peak / 1e9:.1f} GFLOP/s per thread, fp32 matmul): "
            f"held-out step-time error (leave one out) mean {result['held_out_abs_error_mean']:.1%}, max "
            f"{result['held_out_abs_error_max']:.1%}; in-sample mean {result['in_sample_abs_error_mean']:.1%}; fitted "
            f"forward {eff.forward:.2f} / train {eff.train:.2f} of peak, {eff.per_call_s * 1e3:.1f} ms per call, "
            f"{eff.per_token_s * 1e3:.2f} ms per decoded token, ZeRO-3 {eff.zero3_layer_s * 1e3:.2f} ms per layer and pass, "
            f"collectives {_bw(eff.comm_bw)}; written {out / 'calibration.json'}")
    return {"text": text, **result}


def _bw(v: float) -> str:
    return "not seen" if v >= 1e29 else f"{v / 1e9:.2f} GB/s"


# ----------------------------------------------------------------------- published figures (GPUs)


@dataclass(frozen=True)
class Published:
    name: str
    source: str
    workload: Workload
    hardware: str
    engine: str
    steps: float
    """How many of our steps the published time covers."""
    measured: dict
    """What was published: phase -> seconds."""
    note: str = ""


def _ppo(actor: str, critic: str, R: dict, zero: int, samples: int, P: int, T: int, generator: str = "policy",
         gen_devices: int = 0, tp: int = 1, colocated: bool = False, micro: int = 4, offload: bool = False) -> Workload:
    a, c = MODELS[actor], MODELS[critic]
    dev = "all" if colocated else ""
    roles = {"policy": Role(a, R["policy"], zero, "bf16", True, micro, True, offload, devices=dev),
             "critic": Role(c, R["critic"], zero, "bf16", True, micro, True, offload, devices=dev),
             "reference": Role(a, R["reference"], 3 if zero == 3 else 0, "bf16", False, micro, devices=dev),
             "reward": Role(c, R["reward"], 3 if zero == 3 else 0, "bf16", False, micro, devices=dev)}
    return Workload(roles, samples, P, T, 1, 0, generator, gen_devices, tp)


PUBLISHED = [
    Published("OpenRLHF Llama2-7B (Ray + vLLM)", "OpenRLHF benchmark/README.md at commit dbdd43b (branch wuxibin/benchmark)",
              _ppo("llama2-7b", "llama2-7b", dict(policy=2, critic=2, reference=1, reward=1), 2, 1024, 1024, 1024,
                   "separate", 2, 1), "a800-80g", "vllm", 1.0,
              {"generate": 481.86, "train": 403.29, "step": 885.16},
              "1024 samples of 1024 + 1024 tokens per rollout; 8 GPUs assumed (1:1:2:2:2 layout, not stated with the numbers)"),
    Published("OpenRLHF Llama2-70B (Ray + vLLM)", "OpenRLHF benchmark/README.md at commit dbdd43b (branch wuxibin/benchmark)",
              _ppo("llama2-70b", "llama2-70b", dict(policy=4, critic=4, reference=2, reward=2), 3, 1024, 1024, 1024,
                   "separate", 4, 4, offload=True), "a800-80g", "vllm", 1.0,
              {"generate": 7122.65, "train": 2699.97, "step": 9822.62},
              "layout 2:2:4:4:4 (reference, reward, critic, actor, vLLM), 16 GPUs; 1024 samples of 1024 + 1024 tokens; "
              "Adam states offloaded to CPU assumed (70B full training on 4 GPUs cannot hold them)"),
    Published("DeepSpeed-Chat OPT-6.7B + OPT-350M critic", "microsoft/DeepSpeed blogs/deepspeed-chat/README.md (commit 38327e07)",
              _ppo("opt-6.7b", "opt-350m", dict(policy=8, critic=8, reference=8, reward=8), 3, 64 * 8, 256, 256, colocated=True),
              "a100-80g", "hf", 264292 / 512, {"step": 4.1 * 3600},
              "step 3 (RLHF) of 264,292 samples x (256 + 256) tokens in 4.1 h on 8 A100-80GB, every role on every GPU; "
              "its hybrid engine decodes with inference kernels, faster than the per-token cost assumed here"),
    Published("DeepSpeed-Chat OPT-66B + OPT-350M critic", "microsoft/DeepSpeed blogs/deepspeed-chat/README.md (commit 38327e07)",
              _ppo("opt-66b", "opt-350m", dict(policy=64, critic=64, reference=64, reward=64), 3, 64 * 16, 256, 256, colocated=True),
              "a100-80g", "hf", 264292 / 1024, {"step": 7.5 * 3600},
              "step 3 of the same data in 7.5 h on 64 A100-80GB"),
]


def published_table() -> str:
    """Markdown: our predictions (GPU_ASSUMED constants) next to the published figures."""
    lines = ["| run | hardware | phase | published (s) | predicted (s) | predicted / published | peak memory per GPU, predicted |",
             "|---|---|---|---|---|---|---|"]
    for p in PUBLISHED:
        hw = dataclasses.replace(HARDWARE[p.hardware], devices=_devices(p.workload))
        est = estimate(p.workload, hw, GPU_ASSUMED[p.engine])
        ph = est["phases"]
        ours = {"generate": ph["generate"] * p.steps, "train": (ph["update"] + ph.get("weight_sync", 0.0) + ph["forward"]) * p.steps,
                "step": est["step_s"] * p.steps}
        mem = max(c.memory["total"] for c in est["roles"].values()) / GB
        for k, v in p.measured.items():
            lines.append(f"| {p.name} | {hw.name} x{hw.devices} | {k} | {v:,.0f} | {ours[k]:,.0f} | {ours[k] / v:.2f} | {mem:.0f} GB |")
    lines.append("")
    lines += [f"- {p.name}: {p.source}; {p.note}." for p in PUBLISHED]
    return "\n".join(lines)


def _devices(w: Workload) -> int:
    groups: dict[str, int] = {}
    for n, r in w.roles.items():
        key = r.devices or n
        groups[key] = max(groups.get(key, 0), r.replicas)
    return sum(groups.values()) + (w.generator_devices if w.generator == "separate" else 0)


# --------------------------------------------------------------------------------------- command line


HELP = "the cost model: memory per GPU per role, FLOPs, communication and step time (predictions)"
DESCRIPTION = "Predictions of one PPO step's memory, FLOPs, communication and time per role (orchestrator/tools/costmodel.py)."


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llama2-7b", help=f"a shape ({', '.join(MODELS)}) or a folder with config.json")
    p.add_argument("--critic-model", help="the critic's and reward model's shape (default: --model)")
    p.add_argument("--hardware", default="a100-80g", choices=sorted(HARDWARE))
    p.add_argument("--gpus", type=int, default=0, help="devices in the cluster (default: one per replica)")
    p.add_argument("--replicas", default="1,1,1,1", help="policy,critic,reference,reward replicas")
    p.add_argument("--zero-stage", type=int, default=3)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--samples", type=int, default=512, help="sequences per step")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--response-len", type=int, default=512, help="tokens after the prompt (an episode's: the model's and the environment's)")
    p.add_argument("--turns", type=float, default=1.0, help="model turns per episode (multi-turn: one generate call each)")
    p.add_argument("--env-tokens", type=float, default=0.0, help="environment tokens per episode, inside --response-len")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--colocate", action="store_true", help="every role on every device (DeepSpeed-Chat's layout)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--published", action="store_true", help="print the comparison with published step times and exit")


def _shape(text: str) -> ModelShape:
    if text in MODELS:
        return MODELS[text]
    path = Path(text) / "config.json"
    if not path.exists():
        from orchestrator.config import ConfigError

        raise ConfigError(f"--model {text!r}: not one of {', '.join(MODELS)} nor a folder with config.json")
    return ModelShape.from_hf_config(json.loads(path.read_text()))


def run(args: argparse.Namespace) -> int:
    from orchestrator.config import ConfigError

    if args.published:
        print("Predictions of orchestrator/tools/costmodel.py with the assumed GPU constants (GPU_ASSUMED), not measurements:\n")
        print(published_table())
        return 0
    try:
        R = [int(x) for x in args.replicas.split(",")]
        assert len(R) == 4 and min(R) >= 1
    except (ValueError, AssertionError):
        raise ConfigError(f"--replicas {args.replicas!r}: four positive integers, policy,critic,reference,reward") from None
    actor, critic = _shape(args.model), _shape(args.critic_model or args.model)
    dev = "all" if args.colocate else ""
    roles = {name: Role(shape, r, args.zero_stage, args.dtype, name in ("policy", "critic"), args.micro_batch,
                        args.gradient_checkpointing, devices=dev)
             for name, shape, r in zip(("policy", "critic", "reference", "reward"), (actor, critic, actor, critic), R)}
    if not 0 <= args.env_tokens < args.response_len or args.turns < 1:
        raise ConfigError(f"--turns must be >= 1 and --env-tokens in [0, --response-len), got {args.turns} and {args.env_tokens}")
    w = Workload(roles, args.samples, args.prompt_len, args.response_len, turns=args.turns, env_tokens=args.env_tokens)
    hw = dataclasses.replace(HARDWARE[args.hardware], devices=args.gpus or _devices(w))
    est = estimate(w, hw, GPU_ASSUMED["hf"])
    print(f"cost model (predictions, assumed GPU constants): {hw.name} x{hw.devices}, {args.samples} sequences of "
          f"{args.prompt_len} + {args.response_len} tokens, ZeRO-{args.zero_stage}, {args.dtype}")
    print(f"{'role':<10}{'params':>9}{'weights':>9}{'grads':>8}{'optim':>8}{'activ':>8}{'logits':>8}{'kv':>8}{'total GB':>10}{'TFLOP':>9}{'comm GB':>9}")
    for name, c in est["roles"].items():
        m = c.memory
        g = lambda k: f"{m.get(k, 0) / GB:>8.1f}"  # noqa: E731
        print(f"{name:<10}{roles[name].model.params / 1e9:>8.2f}B{g('weights'):>9}{g('grads')}{g('optimizer')}{g('activations')}"
              f"{g('logits')}{g('kv_cache')}{m['total'] / GB:>10.1f}{sum(c.flops.values()) / 1e12:>9.0f}{sum(c.comm_bytes.values()) / GB:>9.1f}")
    for k, v in est["phases"].items():
        print(f"  {k:<40}{v:>9.1f} s")
    print(f"  {'step':<40}{est['step_s']:>9.1f} s   ({est['samples_per_s']:.2f} sequences/s)")
    over = [n for n, c in est["roles"].items() if c.memory["total"] > hw.memory]
    if over:
        print(f"  does not fit: {', '.join(over)} above {hw.memory / GB:.0f} GB per device")
    return 0
