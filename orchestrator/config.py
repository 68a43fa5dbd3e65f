"""The config tree of every job. One dataclass per section, a docstring under every field.

`rlhf config ppo` prints the resolved tree with these docstrings as comments. Each role receives
only its own section (e.g. the critic actor gets a `CriticConfig`), never the whole tree.
Values are checked in `validate()` before any actor starts; the error names the dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from orchestrator.configtree import Check, ConfigError, load, to_yaml  # noqa: F401  (re-exported)

Dtype = Literal["fp32", "bf16"]


def _lora_targets() -> list[str]:
    return ["q_proj", "k_proj", "v_proj", "o_proj"]


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
    target_modules: list[str] = field(default_factory=_lora_targets)
    """Names of the linear modules that get adapters."""

    def validate(self, check: Check) -> None:
        check(self.r > 0, "r", "must be > 0")
        check(self.alpha > 0, "alpha", "must be > 0")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        check(len(self.target_modules) > 0, "target_modules", "must name at least one module")


@dataclass
class PlacementConfig:
    """Where a role's replicas run (ray mode); local mode ignores everything but `replicas`."""

    replicas: int = 1
    """Number of data-parallel replicas (Ray actors) of this role; they form one ZeRO group."""
    num_gpus: float = 1.0
    """GPUs per replica. Ignored (0 is used) when the cluster has no GPUs; fractions share a GPU."""
    num_cpus: float = 1.0
    """CPUs reserved per replica."""
    colocate_with: Optional[str] = None
    """Name of another role whose placement group (and devices) this role shares, e.g. 'reference'."""

    def validate(self, check: Check) -> None:
        check(self.replicas >= 1, "replicas", "must be >= 1")
        check(self.num_gpus >= 0, "num_gpus", "must be >= 0")
        check(self.num_cpus >= 0, "num_cpus", "must be >= 0")
        check(
            self.colocate_with in (None, "policy", "reference", "critic", "reward"),
            "colocate_with",
            "must be one of policy, reference, critic, reward",
        )


@dataclass
class ModelConfig(PlacementConfig):
    path: str = "builtin:tiny"
    """Hugging Face model name or local folder; 'builtin:tiny' (or builtin:small, builtin:50m) builds a Llama model locally, no download."""
    dtype: Dtype = "fp32"
    """Parameter and compute dtype: fp32 or bf16."""
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
    """Learning-rate shape after warmup (decaying to 0 at the last optimizer step for linear/cosine)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables."""
    micro_batch_size: int = 8
    """Sequences per forward/backward on one replica; gradients accumulate up to the minibatch."""
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
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")
        check(self.micro_batch_size >= 1, "micro_batch_size", "must be >= 1")
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

    kind: Literal["model", "function", "relevance", "remote", "weighted"] = "function"
    """Reward source: model (a saved reward model), function ('module:function'), relevance (R^3: embedding relevance x length incentive x repetition penalty), remote (an HTTP endpoint of `rlhf serve reward`), weighted (a weighted sum of `components`)."""
    path: str = ""
    """kind=model: folder or hub name of a saved reward model (a sequence classifier; its config's rlhf_reward describes the head, none means Bradley-Terry)."""
    function: str = "orchestrator.task:annotator_reward"
    """kind=function: 'module:function' called as f(prompts, responses, references) -> list of floats."""
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
    url: str = ""
    """kind=remote: the endpoint, e.g. http://127.0.0.1:8000/reward (POST JSON prompts/responses/references/query_types)."""
    timeout_s: float = 60.0
    """kind=remote: seconds to wait for one HTTP request."""
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
        check(self.kind != "remote" or self.url.startswith(("http://", "https://")), "url",
              "must be an http:// or https:// URL when reward.kind=remote")
        check(self.timeout_s > 0, "timeout_s", "must be > 0")
        check(self.kind != "weighted" or len(self.components) > 0, "components", "must list at least one reward when reward.kind=weighted")
        check(self.kind == "weighted" or not self.components, "components", "is only read when reward.kind=weighted")


@dataclass
class RewardComponentConfig(RewardConfig):
    """One term of a weighted reward: a reward config and its weight."""

    weight: float = 1.0
    """Factor of this reward in the sum."""

    def validate(self, check: Check) -> None:
        check(self.kind != "weighted", "kind", "a component cannot itself be weighted (no nesting)")
        super().validate(check)
        check(self.weight == self.weight and abs(self.weight) != float("inf"), "weight", "must be a finite number")


@dataclass
class DataConfig:
    path: str = "builtin:prompts"
    """Dataset: a .json/.jsonl/.parquet file, a Hugging Face dataset name, or builtin:prompts / builtin:preferences / builtin:sft."""
    split: str = "train"
    """Split to read (hub datasets and builtin data)."""
    eval_path: str = ""
    """Held-out dataset for evaluation; empty means split `eval_split` of `path` (builtin and hub data; a local file needs eval_path)."""
    eval_split: str = "test"
    """Split of the evaluation dataset."""
    max_prompt_tokens: int = 64
    """Longest prompt, in tokens after the chat template."""
    max_response_tokens: int = 64
    """Longest response (chosen/rejected) in tokens; preference data only."""
    on_long: Literal["drop", "truncate"] = "drop"
    """Rows longer than the limits: drop them, or truncate (prompts keep their end, responses their start)."""
    on_error: Literal["raise", "skip"] = "raise"
    """Malformed rows: stop with an error naming file, row and field, or skip and count them."""
    chat_template: bool = True
    """Apply the tokenizer's chat template when it has one."""
    max_rows: int = 0
    """Read at most this many rows (0 = all)."""

    def validate(self, check: Check) -> None:
        check(bool(self.path), "path", "must not be empty")
        check(self.max_prompt_tokens >= 1, "max_prompt_tokens", "must be >= 1")
        check(self.max_response_tokens >= 1, "max_response_tokens", "must be >= 1")
        check(self.max_rows >= 0, "max_rows", "must be >= 0")


@dataclass
class PPOAlgoConfig:
    rollout_batch_size: int = 64
    """Prompts sampled per PPO step (one response each)."""
    minibatch_size: int = 32
    """Sequences per optimizer step; the rollout batch is cut into rollout_batch_size / minibatch_size minibatches."""
    epochs: int = 2
    """Passes over each rollout batch."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE lambda."""
    kl_coef: float = 0.02
    """Initial coefficient of the per-token KL penalty against the reference."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """KL estimator in the reward (Schulman's k1, k2, k3)."""
    kl_target: float = 0.0
    """Adaptive KL controller target (Ziegler et al. 2019); 0 keeps kl_coef fixed."""
    kl_horizon: int = 10000
    """Adaptive KL controller horizon, in samples."""
    whiten_advantages: bool = True
    """Whiten advantages over the rollout batch."""
    reward_norm: bool = False
    """Normalise sequence rewards with running mean and std."""
    reward_clip: float = 0.0
    """Clip sequence rewards to [-c, c] after normalisation (0 = off)."""
    no_eos_penalty: float = 0.0
    """Subtracted from the reward of responses that end without EOS (0 = off)."""

    def validate(self, check: Check) -> None:
        check(self.rollout_batch_size >= 1, "rollout_batch_size", "must be >= 1")
        check(self.minibatch_size >= 1, "minibatch_size", "must be >= 1")
        check(self.rollout_batch_size % self.minibatch_size == 0, "rollout_batch_size", f"must be divisible by ppo.minibatch_size={self.minibatch_size}")
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        check(0 <= self.lam <= 1, "lam", "must be in [0, 1]")
        check(self.kl_coef >= 0, "kl_coef", "must be >= 0")
        check(self.kl_target >= 0, "kl_target", "must be >= 0")
        check(self.kl_horizon >= 1, "kl_horizon", "must be >= 1")
        check(self.reward_clip >= 0, "reward_clip", "must be >= 0")
        check(self.no_eos_penalty >= 0, "no_eos_penalty", "must be >= 0")


@dataclass
class RunConfig:
    mode: Literal["local", "ray"] = "ray"
    """local: every role in this process (debug with breakpoints); ray: every role a group of Ray actors."""
    ray_address: str = ""
    """Ray cluster to join; empty means the cluster of `ray job submit` if any, else a new local one."""
    steps: int = 100
    """Training steps (PPO: rollout batches)."""
    seed: int = 0
    """Seed of every random generator (data order, init, sampling)."""
    output_dir: str = "runs/ppo"
    """Where checkpoints, metrics, plots and the exported model go."""
    save_every: int = 50
    """Write a checkpoint every N steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk; older ones are deleted after a new one is complete."""
    resume: str = "auto"
    """'auto': continue from the latest checkpoint in output_dir if any; 'never'; or a checkpoint folder."""
    eval_every: int = 0
    """Evaluate on held-out prompts every N steps (0 = at the start and end only)."""
    log_every: int = 1
    """Write metrics every N steps."""

    def validate(self, check: Check) -> None:
        check(self.steps >= 1, "steps", "must be >= 1")
        check(self.save_every >= 0, "save_every", "must be >= 0")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        check(self.eval_every >= 0, "eval_every", "must be >= 0")
        check(self.log_every >= 1, "log_every", "must be >= 1")


@dataclass
class PPOConfig:
    """The `rlhf ppo` job."""

    run: RunConfig = field(default_factory=RunConfig)
    """Run control: hosting mode, steps, seed, output, checkpoints."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompt dataset."""
    policy: PolicyConfig = field(default_factory=lambda: PolicyConfig(lr=1e-4))
    """The trained policy: model, optimizer, generation, PPO clip. (Defaults suit the built-in tiny model; use ~1e-6 for billion-parameter models.)"""
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    """The frozen reference model for the KL penalty."""
    critic: CriticConfig = field(default_factory=lambda: CriticConfig(lr=5e-4))
    """The value model. (Default lr suits the built-in tiny model; use ~5e-6 for billion-parameter models.)"""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """The reward."""
    ppo: PPOAlgoConfig = field(default_factory=PPOAlgoConfig)
    """PPO algorithm: batch sizes, GAE, KL penalty, reward shaping."""

    def validate(self, check: Check) -> None:
        n = self.ppo.rollout_batch_size
        for role in ("policy", "reference", "critic", "reward"):
            replicas = getattr(self, role).replicas
            check(n % replicas == 0, "ppo.rollout_batch_size", f"({n}) must be divisible by {role}.replicas={replicas}")
        for role in ("policy", "critic"):
            cfg = getattr(self, role)
            per_replica, rem = divmod(self.ppo.minibatch_size, cfg.replicas)
            check(rem == 0, "ppo.minibatch_size", f"({self.ppo.minibatch_size}) must be divisible by {role}.replicas={cfg.replicas}")
            check(
                per_replica % cfg.micro_batch_size == 0,
                f"{role}.micro_batch_size",
                f"({cfg.micro_batch_size}) must divide the per-replica minibatch "
                f"ppo.minibatch_size / {role}.replicas = {per_replica}",
            )
        for role in ("policy", "reference", "critic", "reward"):
            other = getattr(self, role).colocate_with
            check(other != role, f"{role}.colocate_with", "cannot name the role itself")


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
    entropy_coeff: float = 0.0
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
        for key in ("variance_penalty", "entropy_coeff", "odin_length_coef", "odin_orth_coef"):
            check(getattr(self, key) >= 0, key, "must be >= 0")


@dataclass
class RMTrainConfig:
    batch_size: int = 32
    """Preference pairs per optimizer step, over all replicas (each pair is two sequences)."""
    norm_pairs: int = 256
    """Training pairs whose responses set the saved normalisation (mean and std of the reward); 0 = all."""
    eval_max_pairs: int = 0
    """Held-out pairs used by the evaluation (0 = all)."""
    group_by: str = ""
    """Optional column of the evaluation data (e.g. pair_kind) to break accuracy and predicted std down by."""

    def validate(self, check: Check) -> None:
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.norm_pairs >= 0, "norm_pairs", "must be >= 0")
        check(self.eval_max_pairs >= 0, "eval_max_pairs", "must be >= 0")


@dataclass
class RMConfig:
    """The `rlhf rm` job: train a reward model on preference pairs, evaluate it, save a self-describing folder."""

    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/rm", steps=300, save_every=100))
    """Run control: hosting mode, optimizer steps, seed, output, checkpoints."""
    data: DataConfig = field(default_factory=lambda: DataConfig(path="builtin:preferences"))
    """Preference pairs (train split; held-out pairs from eval_path / eval_split)."""
    model: RewardModelConfig = field(
        default_factory=lambda: RewardModelConfig(lr=1e-3, warmup_steps=25, lr_schedule="cosine", micro_batch_size=16))
    """Backbone, objective, head, optimizer, replicas and ZeRO stage. micro_batch_size counts pairs. (Defaults suit the built-in tiny model; use lr ~1e-5 for billion-parameter backbones.)"""
    rm: RMTrainConfig = field(default_factory=RMTrainConfig)
    """Batch size, normalisation and evaluation."""

    def validate(self, check: Check) -> None:
        per_step = self.model.replicas * self.model.micro_batch_size
        check(self.rm.batch_size % per_step == 0, "rm.batch_size",
              f"({self.rm.batch_size}) must be divisible by model.replicas x model.micro_batch_size = {per_step}")
        check(self.model.colocate_with is None, "model.colocate_with", "must be empty: rlhf rm has one role")
        check(self.model.lr_schedule == "constant" or self.model.warmup_steps < self.run.steps, "model.warmup_steps",
              f"({self.model.warmup_steps}) must be below run.steps ({self.run.steps}) with lr_schedule={self.model.lr_schedule}")


@dataclass
class RMEvalConfig:
    """The `rlhf rm eval` job: evaluate a saved reward model folder on preference pairs."""

    path: str = ""
    """Folder of a saved reward model (written by `rlhf rm`, its config carries rlhf_reward)."""
    output_dir: str = ""
    """Where report.json and the plots go; empty means <path>/eval."""
    data: DataConfig = field(default_factory=lambda: DataConfig(path="builtin:preferences", split="test"))
    """Pairs to evaluate: data.path at data.split (a local file is read whole)."""
    batch_size: int = 32
    """Pairs per forward pass."""
    max_pairs: int = 0
    """Evaluate at most this many pairs (0 = all)."""
    group_by: str = ""
    """Optional data column (e.g. pair_kind) to break accuracy and predicted std down by."""
    trust_remote_code: bool = False
    """Allow model code from the model folder to run. Off unless you trust the source."""

    def validate(self, check: Check) -> None:
        check(self.batch_size >= 1, "batch_size", "must be >= 1")  # path is checked when the job runs
        check(self.max_pairs >= 0, "max_pairs", "must be >= 0")


@dataclass
class DPOAlgoConfig:
    loss: Literal["dpo", "ipo", "cdpo"] = "dpo"
    """dpo: Rafailov et al. 2023 (sigmoid loss); ipo: Azar et al. 2023 (squared loss, beta is IPO's tau); cdpo: conservative DPO, labels flipped with probability dpo.label_smoothing (losses/dpo.py)."""
    beta: float = 0.1
    """Strength of the KL regularisation towards the reference (DPO beta; IPO tau)."""
    label_smoothing: float = 0.1
    """loss=cdpo only: the assumed label-noise rate eps in (0, 0.5)."""
    batch_size: int = 32
    """Preference pairs per optimizer step over all workers (each pair is two sequences in one forward pass)."""
    eval_pairs: int = 256
    """Held-out pairs of the preference evaluation (the first ones of the eval split; 0 = all)."""

    def validate(self, check: Check) -> None:
        check(self.beta > 0, "beta", "must be > 0")
        check(self.loss != "cdpo" or 0 < self.label_smoothing < 0.5, "label_smoothing", "must be in (0, 0.5) for dpo.loss=cdpo")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.eval_pairs >= 0, "eval_pairs", "must be >= 0")


@dataclass
class DPOConfig:
    """The `rlhf dpo` job: DPO / IPO / cDPO on one policy actor; ray mode scales it out with Ray Train."""

    run: RunConfig = field(default_factory=lambda: RunConfig(mode="local", output_dir="runs/dpo", steps=100, save_every=50, eval_every=25))
    """Run control: hosting mode (local: this process; ray: Ray Train TorchTrainer with policy.replicas workers), optimizer steps, seed, output, checkpoints, evaluation interval. Local by default: one worker needs no cluster, and Ray start-up took ~2.5 of the 7 minutes of the built-in default on a loaded 2-core machine."""
    data: DataConfig = field(default_factory=lambda: DataConfig(path="builtin:preferences"))
    """Preference pairs (train split; held-out pairs from eval_path / eval_split)."""
    policy: PolicyConfig = field(default_factory=lambda: PolicyConfig(lr=2e-4, micro_batch_size=16))
    """The trained policy and its reference (its own initial weights, or with LoRA its adapter-free base). replicas = data-parallel workers; micro_batch_size counts pairs; the generation fields set the held-out gold evaluation's sampling; clip_eps and entropy_coef are PPO's and unused. (Defaults suit the built-in tiny model; use lr ~5e-7 for billion-parameter models.)"""
    dpo: DPOAlgoConfig = field(default_factory=DPOAlgoConfig)
    """Loss, beta, batch size, evaluation pairs."""

    def validate(self, check: Check) -> None:
        per_step = self.policy.replicas * self.policy.micro_batch_size
        check(self.dpo.batch_size % per_step == 0, "dpo.batch_size",
              f"({self.dpo.batch_size}) must be divisible by policy.replicas x policy.micro_batch_size = {per_step}")
        check(self.policy.colocate_with is None, "policy.colocate_with", "must be empty: rlhf dpo has one role")


JOBS: dict[str, type] = {"ppo": PPOConfig, "rm": RMConfig, "rm_eval": RMEvalConfig, "dpo": DPOConfig}


def load_job_config(job: str, path: str | None = None, overrides: list[str] | None = None):
    """Resolve the config of `job` from defaults, an optional YAML file and dotted overrides."""
    if job not in JOBS:
        raise ConfigError(f"unknown job '{job}'; jobs with a config: {', '.join(sorted(JOBS))}")
    return load(JOBS[job], path, overrides)
