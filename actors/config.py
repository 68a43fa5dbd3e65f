"""The config sections of the roles: one dataclass per role, a docstring under every field.

Each role class receives only its own section (a `PolicyConfig`, a `CriticConfig`, ...), never the
whole tree. The job configs of `orchestrator.config` are built from these sections and re-export
them; `orchestrator.config.tree` reads them from YAML and dotted overrides, and calls each section's
`validate(check)` before anything starts (`check(cond, field, message)` raises a `ConfigError`
naming the dotted key).

The config primitives every layer above needs live here too, at the lowest layer that uses them:
`ConfigError`, `deep_merge` (config files and overrides, and DeepSpeed config overrides) and
`first_line` (the cause in one-line error messages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

Dtype = Literal["fp32", "bf16", "auto"]
Check = Callable[[bool, str, str], None]
"""`check(condition, field, message)`: raises `ConfigError` naming the dotted key when condition is false."""


class ConfigError(ValueError):
    """A bad config key or value; the message is one line and names the dotted key."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none): the cause in
    one-line error messages."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _indexed(v: Any) -> bool:
    """A dict whose keys are list indices: what `key.0.field=value` overrides of a list become."""
    return isinstance(v, dict) and bool(v) and all(str(k).isdigit() for k in v)


def deep_merge(base: dict, new: dict, prefix: str = "") -> dict:
    """Merge nested dict `new` into `base` in place (values of `new` win); returns `base`.

    Index keys address list items: merging {"components": {"1": {"weight": 0.3}}} into a base whose
    `components` is a list updates item 1 (or appends it when it is the next index).
    """
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v, f"{prefix}{k}.")
        elif _indexed(v) and isinstance(base.get(k), list):
            items = base[k]
            for i, sub in sorted(((int(i), sub) for i, sub in v.items())):
                if i < len(items) and isinstance(items[i], dict) and isinstance(sub, dict):
                    deep_merge(items[i], sub, f"{prefix}{k}.{i}.")
                elif i <= len(items):
                    items[i:i + 1] = [sub]
                else:
                    raise ConfigError(f"config key '{prefix}{k}.{i}': the list has {len(items)} items; "
                                      f"list indices must be 0, 1, ... without gaps")
        else:
            base[k] = v
    return base


# ---------------------------------------------------------------------------------------------
# Role sections


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    r: int = 8
    """LoRA rank."""
    alpha: float = 16.0
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch."""
    target_modules: list[str] = field(default_factory=list)
    """Names of the linear layers that get adapters (e.g. [q_proj, v_proj] on Llama, [c_attn] on GPT-2); empty or [all-linear]: every linear layer of the transformer blocks, whatever the architecture calls them. Checked against the model before any role starts."""
    save_adapter: bool = False
    """Also write the adapters alone (peft format, loadable with peft.PeftModel.from_pretrained) next to each merged export, as <export>_adapter/."""

    def validate(self, check: Check) -> None:
        check(self.r > 0, "r", "must be > 0")
        check(self.alpha > 0, "alpha", "must be > 0")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        check(all(isinstance(n, str) and n for n in self.target_modules), "target_modules", "must be a list of module names")


@dataclass
class PlacementConfig:
    """Where a role's replicas run (ray mode); local mode ignores everything but `replicas`."""

    replicas: int = 1
    """Number of data-parallel replicas (Ray actors) of this role; they form one ZeRO group."""
    num_gpus: float = 1.0
    """GPUs per replica. Ignored (0 is used) when the cluster has no GPUs; fractions share a GPU."""
    num_cpus: float = 1.0
    """CPUs reserved per replica."""
    threads: int = 0
    """Intra-op threads per replica (ray mode). 0 = auto: a role alone in its job (sft, dpo, rm) uses the cores of its node divided by its replicas; a role of PPO uses int(num_cpus) (at least 1), as the roles share the node's cores."""
    colocate_with: Optional[str] = None
    """Name of another role of the job whose placement group (and devices) this role shares, e.g. 'reference'."""

    def validate(self, check: Check) -> None:
        check(self.replicas >= 1, "replicas", "must be >= 1")
        check(self.num_gpus >= 0, "num_gpus", "must be >= 0")
        check(self.num_cpus >= 0, "num_cpus", "must be >= 0")
        check(self.threads >= 0, "threads", "must be >= 0 (0 = auto)")


@dataclass
class GeneratorConfig(PlacementConfig):
    """The generator role: replicas that sample with a copy of the policy's weights (PPO's rollouts with
    engine=vllm or ppo.max_staleness >= 1; SFT's and DPO's held-out answers with engine=vllm), where they run,
    and how the weights reach them. The model, dtype and sampling settings are the policy's."""

    replicas: int = 1
    """Generator replicas (Ray actors; with engine=vllm, one vLLM engine each); each holds the whole model (no ZeRO) and samples its share of the rollout."""
    engine: Literal["hf", "vllm"] = "hf"
    """What samples: hf (Hugging Face `generate`, the policy's own code) or vllm (a vLLM engine per replica: paged KV cache, continuous batching; needs `pip install -e '.[vllm]'`). With vllm the generator role samples every step's rollout, also on-policy (ppo.max_staleness=0: the weights go to it before each step's sampling)."""
    kv_cache_gb: float = 1.0
    """engine=vllm on CPU: the KV cache's size in GiB per engine (what VLLM_CPU_KVCACHE_SPACE sets); too small for one prompt plus max_new_tokens is an error at start."""
    gpu_memory_utilization: float = 0.5
    """engine=vllm on GPU: the share of the GPU's memory each engine may take (weights plus KV cache)."""
    tensor_parallel: int = 1
    """engine=vllm: GPUs per engine (tensor parallel); 1 on CPU. num_gpus should equal it."""
    sleep: bool = False
    """engine=vllm on GPU, colocated with the policy: free the KV cache while the policy trains (vLLM sleep mode; CUDA only, unverified here)."""
    sync_transport: Literal["object_store", "collective"] = "object_store"
    """How the policy's weights reach the generator. object_store: the policy's rank 0 puts them in Ray's object store and each replica takes them from there when its queue reaches the sync (the policy never waits for the generator). collective (run.mode=ray): the policy's rank 0 broadcasts them over a process group of its own with every replica (every vLLM worker), NCCL on GPUs (as OpenRLHF and verl do; unverified here), gloo on CPU, one broadcast per bucket; the policy waits until the generator takes them, so it suits ppo.max_staleness <= 1."""
    sync_bucket_mb: float = 256.0
    """The weight sync sends the policy's weights in buckets of at most this many MiB (engine=vllm, or sync_transport=collective)."""
    sync_timeout_s: float = 600.0
    """Seconds a weight sync may take before the run stops with an error naming the engine and version (engine=vllm, or sync_transport=collective: the transfer group's timeout)."""

    def validate(self, check: Check) -> None:
        super().validate(check)
        check(self.kv_cache_gb > 0, "kv_cache_gb", "must be > 0")
        check(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "must be in (0, 1]")
        check(self.tensor_parallel >= 1, "tensor_parallel", "must be >= 1")
        check(self.sync_bucket_mb > 0, "sync_bucket_mb", "must be > 0")
        check(self.sync_timeout_s > 0, "sync_timeout_s", "must be > 0")


@dataclass
class ModelConfig(PlacementConfig):
    path: str = "builtin:tiny"
    """Hugging Face model name or local folder; 'builtin:tiny' (or builtin:small, builtin:50m) builds a Llama model locally, no download."""
    dtype: Dtype = "fp32"
    """Parameter and compute dtype: fp32, bf16 (trained roles keep fp32 master weights and AdamW state and accumulate and all-reduce gradients in fp32, through DeepSpeed's bf16 optimizer, which runs from ZeRO stage 1, so zero_stage=0 trains at 1; log-probs are reduced in fp32), or auto: bf16 where the replica's hardware computes it natively (a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16), else fp32."""
    trust_remote_code: bool = False
    """Allow model code from the model's repository to run. Off unless you trust the source."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage (0-3) across this role's replicas."""
    offload_params: bool = False
    """ZeRO-3 only: keep parameters in CPU memory."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""

    def validate(self, check: Check) -> None:
        super().validate(check)
        check(0 <= self.zero_stage <= 3, "zero_stage", "must be 0, 1, 2 or 3")
        check(not self.offload_params or self.zero_stage == 3, "offload_params", "needs zero_stage=3")


@dataclass
class TrainableConfig(ModelConfig):
    lr: float = 1e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup from 0 to `lr`."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate shape after warmup (decaying to min_lr_ratio x lr at the last optimizer step for linear/cosine)."""
    min_lr_ratio: float = 0.0
    """Where a linear or cosine decay ends, as a fraction of lr."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables."""
    micro_batch_size: int = 8
    """Sequences per forward/backward on one replica; gradients accumulate up to the minibatch."""
    micro_batch_tokens: int = 0
    """0 = off. > 0: micro-batches by a token budget instead of micro_batch_size: each replica's rows sorted by length and grouped so that a micro-batch, cut to its own padding, holds at most this many padded tokens (a longer row alone; preference pairs count both sequences); every forward and backward of the role (PPO: the policy's, which the reference follows, and the critic's). Rows of very different lengths then stop paying for each other's padding; the update is the same up to float rounding (OpenRLHF's and verl's dynamic batch size). micro_batch_size x the padded length keeps peak memory where it was. Reward models: not with objective=odin or a categorical entropy bonus."""
    offload_optimizer: bool = False
    """ZeRO 1-3: keep optimizer state in CPU memory."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters (peft)."""

    def validate(self, check: Check) -> None:
        super().validate(check)
        check(bool(self.path), "path", "must not be empty")
        check(self.lr > 0, "lr", "must be > 0")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "adam_betas", "must be two numbers in [0, 1)")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")
        check(self.micro_batch_size >= 1, "micro_batch_size", "must be >= 1")
        check(self.micro_batch_tokens >= 0, "micro_batch_tokens", "must be >= 0 (0 = micro_batch_size rows)")
        check(not self.offload_optimizer or self.zero_stage >= 1, "offload_optimizer", "needs zero_stage >= 1")


@dataclass
class PolicyConfig(TrainableConfig):
    max_new_tokens: int = 48
    """Maximum response length in tokens; generation stops earlier at EOS."""
    temperature: float = 1.0
    """Sampling temperature for rollouts."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest token set with this much probability (1.0 = off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: a response ends with the token whose text completes one of them (kept in the text and trained on, as an EOS is), in either engine (HF `stop_strings`, vLLM `stop`); e.g. ["</answer>"]. Empty: EOS and max_new_tokens only."""
    clip_eps: float = 0.2
    """PPO ratio clip range epsilon: ratio is clipped to [1-eps, 1+eps]."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus in the policy loss."""

    def validate(self, check: Check) -> None:
        super().validate(check)
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        check(self.temperature > 0, "temperature", "must be > 0")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        check(self.top_k >= 0, "top_k", "must be >= 0")
        check(all(isinstance(s, str) and s for s in self.stop), "stop", "must be a list of non-empty strings")
        check(self.clip_eps > 0, "clip_eps", "must be > 0")
        check(self.entropy_coef >= 0, "entropy_coef", "must be >= 0")


@dataclass
class ReferenceConfig(ModelConfig):
    path: str = ""
    """Model of the frozen reference; empty means the policy's initial weights (after SFT)."""


@dataclass
class CriticConfig(TrainableConfig):
    init_from: Literal["policy", "reward"] = "policy"
    """Backbone of the value model: the policy's initial weights or the reward model's."""
    value_clip_eps: float = 0.2
    """Clip of the value change around the rollout-time value: V in [V_old - eps, V_old + eps]."""

    def validate(self, check: Check) -> None:
        super().validate(check)
        check(self.value_clip_eps > 0, "value_clip_eps", "must be > 0")


@dataclass
class RewardConfig(ModelConfig):
    """The PPO reward (actors/reward.py builds one scorer per kind)."""

    kind: Literal["model", "function", "relevance", "remote", "weighted", "none"] = "function"
    """Reward source: model (a saved reward model), function ('module:function'), relevance (R^3: embedding relevance x length incentive x repetition penalty), remote (an HTTP endpoint of `rlhf serve reward`), weighted (a weighted sum of `components`), none (no reward role: an environment's turn rewards alone, env.path). With env.path set, any kind scores the whole conversation and adds to the environment's rewards."""
    path: str = ""
    """kind=model: folder or hub name of a saved reward model (a sequence classifier; its config's rlhf_reward describes the head, none means Bradley-Terry)."""
    function: str = ""
    """kind=function: 'module:function' called as f(prompts, responses, references) -> list of floats; prompts are plain text (a chat's last user turn); a function with a `messages` parameter also gets each whole conversation as a chat list."""
    batch_size: int = 64
    """Sequences scored per forward pass (kind=remote: per HTTP request)."""
    statistic: Literal["mean", "quantile"] = "mean"
    """kind=model: the RL reward read off a distributional model: its mean, or its alpha-quantile (the DPL paper's risk-averse reward; distributional models only)."""
    alpha: float = 0.1
    """kind=model, statistic=quantile: the quantile level in (0, 1); lower is more risk-averse."""
    std_threshold: float = 1.0
    """Diagnostics of distributional rewards: the per-step metric reward/std_above_threshold is the share of responses whose predicted std (in normalised reward units) exceeds this."""
    embedding_model: str = "builtin:minilm"
    """kind=relevance: sentence-transformers model name or folder; builtin:minilm is the packaged all-MiniLM-L6-v2 (no download). A plain Hugging Face encoder (e.g. facebook/contriever) gets Contriever-style mean pooling."""
    max_new_tokens: int = 0
    """kind=relevance: the generation budget that sets the top of the closed-prompt scale F (R^3); 0 = the policy's policy.max_new_tokens (512 outside PPO)."""
    length_incentive: bool = True
    """kind=relevance: multiply an open prompt's relevance by R^3's length incentive (words / 100); false drops the factor (an ablation: `rlhf experiment relevance-hacking`)."""
    repetition_penalty: bool = True
    """kind=relevance: multiply by R^3's repetition penalty (distinct word trigrams / trigrams); false drops the factor (an ablation)."""
    reference_relevance: bool = True
    """kind=relevance: score a closed prompt by F(relevance of the response to the reference answer) (R^3); false scores every prompt as open (relevance to the prompt: an ablation)."""
    query_classifier: str = "builtin:rules"
    """kind=relevance: decides open or closed for rows without a query_type: builtin:rules (the rules of actors/query_type.py), 'module:function' (called as f(prompts) -> a list of 'open' / 'closed'), or a sequence-classifier folder or hub name whose config's id2label names the labels open and closed."""
    length_penalty: float = 0.0
    """Subtracted from each response's reward per response token (PPO, before normalisation and clipping; the length-penalty baseline of the ODIN paper); 0 = off."""
    url: str = ""
    """kind=remote: the endpoint, e.g. http://127.0.0.1:8000/reward (POST JSON prompts/responses/references/query_types)."""
    timeout_s: float = 60.0
    """kind=remote: seconds to wait for one HTTP request."""
    retries: int = 3
    """kind=remote: retries of a request that failed transiently (no connection, timeout, HTTP 502/503/504), with back-off 0.5 s, 1 s, 2 s, ... (at most 8 s)."""
    components: list[RewardComponentConfig] = field(default_factory=list)
    """kind=weighted: the summed rewards, each a reward config (any kind but weighted) with a `weight`; e.g. in YAML `components: [{kind: model, path: rm, weight: 1.0}, {kind: relevance, weight: 0.5}]`, or `reward.components.1.weight=0.3`."""

    def validate(self, check: Check) -> None:
        super().validate(check)
        check(self.kind != "model" or bool(self.path), "path", "must be set when reward.kind=model")
        check(self.kind != "function" or ":" in self.function, "function", "must look like 'module:function'")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.statistic == "mean" or self.kind == "model", "statistic",
              "quantile needs reward.kind=model (a distributional reward model; in a weighted sum, set it on the component)")
        check(0 < self.alpha < 1, "alpha", "must be in (0, 1)")
        check(self.std_threshold >= 0, "std_threshold", "must be >= 0")
        check(self.kind != "relevance" or bool(self.embedding_model), "embedding_model", "must be set when reward.kind=relevance")
        check(self.max_new_tokens >= 0, "max_new_tokens", "must be >= 0")
        check(bool(self.query_classifier), "query_classifier", "must not be empty (builtin:rules is the default)")
        check(self.length_penalty >= 0 and self.length_penalty != float("inf"), "length_penalty", "must be a finite number >= 0")
        check(self.kind != "remote" or self.url.startswith(("http://", "https://")), "url",
              "must be an http:// or https:// URL when reward.kind=remote")
        check(self.timeout_s > 0, "timeout_s", "must be > 0")
        check(self.retries >= 0, "retries", "must be >= 0")
        check(self.kind != "weighted" or len(self.components) > 0, "components", "must list at least one reward when reward.kind=weighted")
        check(self.kind == "weighted" or not self.components, "components", "is only read when reward.kind=weighted")


@dataclass
class RewardComponentConfig(RewardConfig):
    """One term of a weighted reward: a reward config and its weight."""

    weight: float = 1.0
    """Factor of this reward in the sum."""

    def validate(self, check: Check) -> None:
        check(self.kind != "weighted", "kind", "a component cannot itself be weighted (no nesting)")
        check(self.kind != "none", "kind", "a component cannot be none (reward.kind=none starts no reward role)")
        check(self.length_penalty == 0, "length_penalty", "applies to the whole reward: set reward.length_penalty, not a component's")
        super().validate(check)
        check(self.weight == self.weight and abs(self.weight) != float("inf"), "weight", "must be a finite number")


@dataclass
class RewardModelConfig(TrainableConfig):
    """The reward model of `rlhf rm`: a causal-LM backbone with a score head (`actors.reward_head`)."""

    path: str = "builtin:tiny"
    """Backbone: Hugging Face causal-LM name or folder, or builtin:<size> (the SFT-warm-started built-in policy); the score head is new."""
    objective: Literal["bradley_terry", "mean_variance", "categorical", "mixture", "odin"] = "bradley_terry"
    """Training objective and head layout (losses from losses.preference; table in actors/reward_head.py)."""
    num_atoms: int = 10
    """objective=categorical: number of atoms of the utility distribution on [0, 1]."""
    num_components: int = 2
    """objective=mixture: number of Gaussian components."""
    head_init_scale: float = 0.01
    """Factor on the freshly initialised score head, so training starts near a constant reward (the DPL code's 0.01)."""
    variance_penalty: float = 0.0
    """objective=mean_variance: weight of the penalty on the predicted spread."""
    entropy_coef: float = 0.0
    """objective=categorical: weight of the entropy bonus."""
    odin_length_coef: float = 1.0
    """objective=odin: weight of the term that ties the length head to response length and frees the quality head of it."""
    odin_orth_coef: float = 1.0
    """objective=odin: weight of the orthogonality of the two heads' weight vectors."""

    def validate(self, check: Check) -> None:
        super().validate(check)
        check(self.num_atoms >= 2, "num_atoms", "must be >= 2")
        check(self.num_components >= 1, "num_components", "must be >= 1")
        check(self.head_init_scale > 0, "head_init_scale", "must be > 0")
        for key in ("variance_penalty", "entropy_coef", "odin_length_coef", "odin_orth_coef"):
            check(getattr(self, key) >= 0, key, "must be >= 0")
        batch_terms = self.objective == "odin" or (self.objective == "categorical" and self.entropy_coef > 0)
        check(self.micro_batch_tokens == 0 or not batch_terms, "micro_batch_tokens",
              f"is not supported with objective={self.objective}{' and entropy_coef > 0' if self.objective == 'categorical' else ''}: "
              "ODIN's length decorrelation and the categorical entropy bonus are computed over each micro-batch, and "
              "length-sorted micro-batches would change them; use micro_batch_size")


