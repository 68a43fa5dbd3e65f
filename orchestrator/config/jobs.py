"""The config tree of each job (`PPOConfig`, `DPOConfig`, `SFTConfig`, `RMConfig`, `RMEvalConfig`) and its
algorithm section. One dataclass per section, a docstring under every field; the role sections are
`actors.config`'s and the shared ones `orchestrator.config.sections`'. Each role receives only its own
section, never the whole tree. `model_paths()` lists the keys of the model paths a job reads (the
entries resolve built-in names there, `orchestrator.builtin.policy.resolve`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from actors.config import (  # noqa: F401  (the role sections, re-exported: one tree for every job)
    CriticConfig,
    GeneratorConfig,
    LoraConfig,
    ModelConfig,
    PlacementConfig,
    PolicyConfig,
    ReferenceConfig,
    RewardComponentConfig,
    RewardConfig,
    RewardModelConfig,
    TrainableConfig,
)
from orchestrator.config.sections import DataConfig, EnvConfig, RunConfig
from orchestrator.config.tree import Check

BUILTIN_REWARD = "builtin:annotator"
"""The default PPO reward: what a perfectly learned reward model of the built-in preference labels says
(`orchestrator.builtin.world.annotator_reward`)."""
VERIFIABLE_REWARD = "builtin:verifiable"
"""1 if a built-in closed question is answered with the right fact (and no other), else 0
(`orchestrator.builtin.world.verifiable_reward`)."""


@dataclass
class PPOAlgoConfig:
    advantage_estimator: Literal["gae", "grpo", "rloo", "reinforce_pp"] = "gae"
    """gae: PPO with a critic (GAE, Schulman et al. 2016). Critic-free, with no critic role started: grpo (group-normalised scores, DeepSeekMath; Dr. GRPO with grpo_scale_by_std=false and loss_agg=seq_mean_token_sum_norm), rloo (leave-one-out baseline, Ahmadian et al. 2024), reinforce_pp (REINFORCE++: batch-whitened returns, Hu 2025). grpo and rloo need samples_per_prompt >= 2."""
    samples_per_prompt: int = 1
    """Responses sampled per prompt, in one generate call; the k responses to a prompt form its group (the baseline of grpo and rloo)."""
    rollout_batch_size: int = 64
    """Responses generated per step (not prompts): rollout_batch_size / samples_per_prompt prompts, each answered samples_per_prompt times. Counting responses keeps a step's cost and its minibatches the same whatever samples_per_prompt is."""
    minibatch_size: int = 32
    """Responses per optimizer step; the rollout batch is cut into rollout_batch_size / minibatch_size minibatches."""
    epochs: int = 2
    """Passes over each rollout batch."""
    gamma: float = 1.0
    """Discount of the returns (GAE, and the returns-to-go of the critic-free estimators)."""
    lam: float = 0.95
    """GAE lambda (gae only)."""
    grpo_scale_by_std: bool = True
    """grpo: divide by the group's std (GRPO); false gives Dr. GRPO's r - mean (Liu et al. 2025)."""
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    """How the policy loss adds up over a minibatch (`losses.ppo.aggregate`): token_mean (every token alike), seq_mean_token_mean (every response alike: GRPO's paper), seq_mean_token_sum_norm (token sums over policy.max_new_tokens: Dr. GRPO). Exact under any replicas and micro-batch sizes."""
    old_logprobs: Literal["recompute", "rollout"] = "recompute"
    """Where PPO's log pi_old comes from. recompute: a no-grad forward of the policy over the rollout (its own phase). rollout: recorded while sampling (log-softmax of the sampled token under the logits / temperature, before top-k/top-p, as recompute computes it): the behaviour policy's own log-probs, one forward pass fewer per step; they equal recompute's up to float rounding (incremental decoding sums in another order), so a run is not bit-identical to a recompute run."""
    max_staleness: int = 0
    """How many policy updates a rollout may be behind the policy it trains. 0: on-policy, each step's rollout is sampled from the current weights (by the policy itself, or by the generator role after a weight sync). K >= 1: asynchronous, as OpenRLHF's and verl's async modes (K=1) and AReaL (K >= 1): a generator role (`generator.*`, devices of its own) keeps K rollouts in flight and samples while the policy scores and trains; the weights go to it after every update (the `weight_sync` phase) and the rollout of step t is sampled with the weights of step max(0, t - K) (`rollout/lag`). The PPO ratio must then be against the log-probs the rollout was sampled with (ppo.old_logprobs=rollout), or against the recomputed ones with the behaviour gap corrected by ppo.tis_cap (AReaL's decoupled PPO)."""
    tis_cap: float = 0.0
    """0: off. > 0: truncated importance sampling (Yao et al. 2025, as verl and OpenRLHF ship it): each token's policy-gradient term is weighted by min(pi_old / pi_sampler, tis_cap), pi_old the trainer's recomputed log-probs and pi_sampler the ones the rollout was sampled with (a vLLM engine's, or weights ppo.max_staleness updates behind), correcting the gap between them (`losses.ppo.truncated_is_weights`; 2.0 is verl's default). Needs ppo.old_logprobs=recompute."""
    kl_in_loss: bool = False
    """Put the KL to the reference in the policy loss (GRPO: kl_loss_coef x the kl_loss_estimator per token) instead of in the reward; kl_coef then is not used."""
    kl_loss_coef: float = 0.04
    """kl_in_loss: the KL term's weight (0.04 in DeepSeekMath's GRPO)."""
    kl_loss_estimator: Literal["k1", "k2", "k3"] = "k3"
    """kl_in_loss: the per-token KL estimator in the loss (k3, GRPO's, by default)."""
    kl_coef: float = 0.02
    """Initial coefficient of the per-token KL penalty against the reference."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """KL estimator in the reward (Schulman's k1, k2, k3)."""
    kl_target: float = 0.0
    """Adaptive KL controller target (Ziegler et al. 2019); 0 keeps kl_coef fixed."""
    kl_horizon: int = 10000
    """Adaptive KL controller horizon, in samples."""
    whiten_advantages: bool = True
    """Whiten advantages over the rollout batch (gae only: grpo and rloo have their group baselines, and reinforce_pp whitens by definition)."""
    reward_norm: bool = False
    """Normalise sequence rewards with running mean and std."""
    reward_clip: float = 0.0
    """Clip sequence rewards to [-c, c] after normalisation (0 = off)."""
    no_eos_penalty: float = 0.0
    """Subtracted from the reward of responses that end without EOS or a stop string, cut at policy.max_new_tokens (0 = off)."""

    @property
    def critic_free(self) -> bool:
        """Whether the estimator needs no critic (anything but gae)."""
        return self.advantage_estimator != "gae"

    def validate(self, check: Check) -> None:
        k = self.samples_per_prompt
        check(k >= 1, "samples_per_prompt", "must be >= 1")
        check(self.advantage_estimator not in ("grpo", "rloo") or k >= 2, "samples_per_prompt",
              f"must be >= 2 with advantage_estimator={self.advantage_estimator} (its baseline is the other responses to the "
              "same prompt)")
        check(k < 1 or self.rollout_batch_size % k == 0, "rollout_batch_size",
              f"counts responses per step and must be divisible by ppo.samples_per_prompt={k}")
        check(not (self.kl_in_loss and self.kl_target > 0), "kl_target",
              "adapts the KL coefficient of the reward, but ppo.kl_in_loss=true puts the KL in the loss (fixed "
              "ppo.kl_loss_coef); set ppo.kl_target=0")
        check(self.kl_loss_coef >= 0, "kl_loss_coef", "must be >= 0")
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
        check(0 <= self.max_staleness <= 16, "max_staleness", "must be 0 (on-policy) to 16 (each rollout in flight is a batch "
              "held in memory)")
        check(self.tis_cap == 0 or self.tis_cap >= 1, "tis_cap", "must be 0 (off) or >= 1 (a cap below 1 would shrink "
              "every on-policy token's gradient)")
        check(self.tis_cap == 0 or self.old_logprobs == "recompute", "tis_cap", "needs ppo.old_logprobs=recompute: with "
              "rollout the PPO ratio is already against the sampler's log-probs, and every weight would be 1")
        check(self.max_staleness == 0 or self.old_logprobs == "rollout" or self.tis_cap > 0, "old_logprobs",
              f"must be rollout with ppo.max_staleness={self.max_staleness}, or set ppo.tis_cap: the generator samples with "
              "weights behind the policy's, so the PPO ratio must be against the log-probs it sampled with, or the "
              "recomputed ones corrected towards them (a plain recompute would be the policy's own)")


def generator_slice(policy: PolicyConfig, generator: GeneratorConfig) -> PolicyConfig:
    """A generator role's config slice: the policy's model, dtype and generation settings, placed as
    `generator.*` says, frozen (no ZeRO: each replica holds the whole model, as a vLLM engine does)."""
    import dataclasses

    g = generator
    return dataclasses.replace(policy, replicas=g.replicas, num_gpus=g.num_gpus, num_cpus=g.num_cpus,
                               threads=g.threads, colocate_with=g.colocate_with, zero_stage=0,
                               offload_params=False, gradient_checkpointing=False, offload_optimizer=False)


def _check_eval_generator(cfg, check: Check) -> None:
    check(not cfg.generator.sleep, "generator.sleep", "is rlhf ppo's (the engine sleeps while the policy trains)")
    check(cfg.generator.replicas == 1, "generator.replicas", "must be 1: one engine samples the held-out answers")
    check(cfg.generator.sync_transport == "object_store", "generator.sync_transport", "collective is rlhf ppo's")


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
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(function=BUILTIN_REWARD))
    """The reward. (Default: the built-in task's annotator reward, for builtin:prompts.)"""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    """Where the rollouts are sampled with ppo.max_staleness >= 1 or generator.engine=vllm (a copy of the policy's model and generation settings); unused otherwise."""
    ppo: PPOAlgoConfig = field(default_factory=PPOAlgoConfig)
    """PPO algorithm: batch sizes, GAE, KL penalty, reward shaping."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Multi-turn rollouts: the environment the policy talks to (unset: one prompt, one response)."""

    def validate(self, check: Check) -> None:
        check(not self.data.weight_column, "data.weight_column", "is read by rlhf rm and rlhf dpo (preference pairs); PPO prompts have no weights")
        builtin_reward = [part for part in ([self.reward] + list(self.reward.components))
                          if part.kind == "function" and part.function == BUILTIN_REWARD]
        for path, key in ((self.data.path, "data.path"), (self.data.eval_path, "data.eval_path")):
            check(not builtin_reward or not path or path.startswith("builtin:"), "reward.function",
                  f"is the built-in task's annotator reward ({BUILTIN_REWARD}), which scores only the built-in prompts, "
                  f"but {key}={path!r}; set a reward for your prompts (reward.kind=model reward.path=<your reward model>, "
                  "or reward.function=<module:function>)")
        verifiable = any(part.kind == "function" and part.function == VERIFIABLE_REWARD
                         for part in [self.reward] + list(self.reward.components))
        for path, key in ((self.data.path, "data.path"), (self.data.eval_path, "data.eval_path")):
            check(not verifiable or path != "builtin:prompts", "reward.function",
                  f"is {VERIFIABLE_REWARD}, which scores closed questions only, but {key}=builtin:prompts has open ones "
                  "too; use data.path=builtin:closed-prompts")
        env = self.env.path
        check(not env or not builtin_reward, "reward.function",
              f"is the built-in task's annotator reward ({BUILTIN_REWARD}), which scores single answers to the built-in "
              f"prompts, but env.path={env!r} runs episodes: set reward.kind=none (the environment's rewards alone) or a "
              "reward for the whole conversation")
        check(env or self.reward.kind != "none", "reward.kind", "none needs env.path (an environment whose turn rewards are the reward)")
        if env.startswith("builtin:"):
            data = "builtin:" + env.removeprefix("builtin:")
            check(self.data.path == data, "data.path", f"must be {data} for env.path={env} (its prompts), got {self.data.path!r}")
        n = self.ppo.rollout_batch_size
        trained = ("policy",) if self.ppo.critic_free else ("policy", "critic")  # no critic role without GAE
        for role in ("policy", "reference", "reward")[: 3 if self.reward.kind != "none" else 2] + trained[1:]:
            replicas = getattr(self, role).replicas
            check(n % replicas == 0, "ppo.rollout_batch_size", f"({n} responses) must be divisible by {role}.replicas={replicas}")
        for role in trained:
            cfg = getattr(self, role)
            per_replica, rem = divmod(self.ppo.minibatch_size, cfg.replicas)
            check(rem == 0, "ppo.minibatch_size", f"({self.ppo.minibatch_size}) must be divisible by {role}.replicas={cfg.replicas}")
            check(
                per_replica % cfg.micro_batch_size == 0,
                f"{role}.micro_batch_size",
                f"({cfg.micro_batch_size}) must divide the per-replica minibatch "
                f"ppo.minibatch_size / {role}.replicas = {per_replica}",
            )
        ahead = self.uses_generator
        if ahead:
            check(n % self.generator.replicas == 0, "ppo.rollout_batch_size",
                  f"({n} responses) must be divisible by generator.replicas={self.generator.replicas}")
            check(self.generator.engine == "hf" or self.policy.temperature == 1.0 or (self.policy.top_p == 1.0 and self.policy.top_k == 0),
                  "policy.temperature", "other than 1 with top_p or top_k set: vLLM reports log-probs of the truncated "
                  "distribution only, not the untruncated ones the trainer computes; use generator.engine=hf, or temperature 1")
        check(self.generator.sync_transport == "object_store" or self.run.mode == "ray", "generator.sync_transport",
              "collective needs run.mode=ray (in local mode the policy and the generator share one process, and the "
              "weights pass in memory)")
        check(not self.generator.sleep or (self.generator.engine == "vllm" and self.ppo.max_staleness == 0),
              "generator.sleep", "needs generator.engine=vllm and ppo.max_staleness=0 (an engine ahead of the "
              "policy samples while it trains)")
        names = ("policy", "reference", "critic", "reward") + (("generator",) if ahead else ())
        for role in names:
            other = getattr(self, role).colocate_with
            if self.ppo.critic_free and role != "critic" and other == "critic":
                check(False, f"{role}.colocate_with", f"names the critic, which ppo.advantage_estimator="
                      f"{self.ppo.advantage_estimator} does not start (no critic without GAE)")
                continue
            if not ahead and other == "generator":
                check(False, f"{role}.colocate_with", "names the generator, which only ppo.max_staleness >= 1 or "
                      "generator.engine=vllm starts")
                continue
            check(other in (None, *names), f"{role}.colocate_with", f"must be one of {', '.join(names)} (got {other!r})")
            check(other != role, f"{role}.colocate_with", "cannot name the role itself")

    @property
    def uses_generator(self) -> bool:
        """Whether a generator role samples the rollouts (ppo.max_staleness >= 1, or generator.engine=vllm)."""
        return self.ppo.max_staleness >= 1 or self.generator.engine == "vllm"

    def generator_slice(self) -> PolicyConfig:
        """The generator role's config slice (`uses_generator`; `generator_slice`)."""
        return generator_slice(self.policy, self.generator)

    @property
    def critic_path(self) -> str:
        """The critic's backbone: the policy's initial weights or the reward model (critic.init_from)."""
        return self.policy.path if self.critic.init_from == "policy" else self.reward.path

    def hosted_roles(self) -> dict:
        """The roles this run starts and their config slices: policy and reward (unless reward.kind=none); the critic unless the
        advantage estimator is critic-free; the reference unless the policy's LoRA adapters double as it
        (LoRA without reference.path: adapters off = the reference); the generator when `uses_generator`."""
        roles = {"policy": self.policy}
        if self.reward.kind != "none":  # none: an environment's turn rewards alone, no reward role
            roles["reward"] = self.reward
        if not self.ppo.critic_free:
            roles["critic"] = self.critic
        if not (self.policy.lora.enabled and not self.reference.path):
            roles["reference"] = self.reference
        if self.uses_generator:
            roles["generator"] = self.generator_slice()
        return roles

    def model_paths(self) -> list[str]:
        """The keys of the model paths this run reads."""
        rewards = (["reward.path"] if self.reward.kind == "model" else []) + [
            f"reward.components.{i}.path" for i, c in enumerate(self.reward.components) if c.kind == "model"]
        return ["policy.path"] + (["reference.path"] if self.reference.path else []) + rewards


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

    def model_paths(self) -> list[str]:
        return ["model.path"]


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

    def model_paths(self) -> list[str]:
        return []  # a saved reward model folder, never a built-in name


@dataclass
class DPOAlgoConfig:
    loss: Literal["dpo", "ipo", "cdpo"] = "dpo"
    """dpo: Rafailov et al. 2023 (sigmoid loss); ipo: Azar et al. 2023 (squared loss, beta is IPO's tau); cdpo: conservative DPO, labels flipped with probability dpo.label_smoothing (losses/dpo.py)."""
    beta: float = 0.1
    """Strength of the KL regularisation towards the reference (DPO beta; IPO tau)."""
    label_smoothing: float = 0.1
    """loss=cdpo only: the assumed label-noise rate eps in (0, 0.5)."""
    batch_size: int = 32
    """Preference pairs per optimizer step over all replicas (each pair is two sequences in one forward pass)."""
    eval_pairs: int = 256
    """Held-out pairs of the preference evaluation (the first ones of the eval split; 0 = all)."""

    def validate(self, check: Check) -> None:
        check(self.beta > 0, "beta", "must be > 0")
        check(self.loss != "cdpo" or 0 < self.label_smoothing < 0.5, "label_smoothing", "must be in (0, 0.5) for dpo.loss=cdpo")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.eval_pairs >= 0, "eval_pairs", "must be >= 0")


@dataclass
class DPOConfig:
    """The `rlhf dpo` job: DPO / IPO / cDPO on one policy role (local, or Ray replicas forming one ZeRO group)."""

    run: RunConfig = field(default_factory=lambda: RunConfig(mode="local", output_dir="runs/dpo", steps=100, save_every=50, eval_every=25))
    """Run control: hosting mode (local: the policy in this process; ray: policy.replicas Ray actors, one ZeRO group), optimizer steps, seed, output, checkpoints, evaluation interval. Local by default: one replica needs no cluster."""
    data: DataConfig = field(default_factory=lambda: DataConfig(path="builtin:preferences"))
    """Preference pairs (train split; held-out pairs from eval_path / eval_split)."""
    policy: PolicyConfig = field(default_factory=lambda: PolicyConfig(lr=2e-4, micro_batch_size=16))
    """The trained policy and its reference (its own initial weights, or with LoRA its adapter-free base). replicas = data-parallel replicas; micro_batch_size counts pairs; the generation fields set the held-out gold evaluation's sampling; clip_eps and entropy_coef are PPO's and unused. (Defaults suit the built-in tiny model; use lr ~5e-7 for billion-parameter models.)"""
    dpo: DPOAlgoConfig = field(default_factory=DPOAlgoConfig)
    """Loss, beta, batch size, evaluation pairs."""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    """The engine that samples the held-out answers of each evaluation: hf (the policy's own `generate`) or vllm (a vLLM engine given the trained weights before each evaluation, placed as generator.* says; one replica)."""

    def validate(self, check: Check) -> None:
        _check_eval_generator(self, check)
        per_step = self.policy.replicas * self.policy.micro_batch_size
        check(self.dpo.batch_size % per_step == 0, "dpo.batch_size",
              f"({self.dpo.batch_size}) must be divisible by policy.replicas x policy.micro_batch_size = {per_step}")
        check(self.policy.colocate_with is None, "policy.colocate_with", "must be empty: rlhf dpo has one role")

    def model_paths(self) -> list[str]:
        return ["policy.path"]


@dataclass
class SFTAlgoConfig:
    batch_size: int = 32
    """Rows (prompt + response) per optimizer step over all replicas; the loss is the token mean over their response tokens."""
    eval_rows: int = 256
    """Held-out rows of the loss evaluation (the first ones of the eval split; 0 = all)."""
    packing: bool = False
    """Pack each replica's rows into rows of up to sft.pack_length tokens (attention stays within each example; the loss is unchanged); policy.micro_batch_size then counts packed rows."""
    pack_length: int = 1024
    """sft.packing: tokens per packed row; at least the longest example, at most the model's position limit."""

    def validate(self, check: Check) -> None:
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.eval_rows >= 0, "eval_rows", "must be >= 0")
        check(self.pack_length >= 1, "pack_length", "must be >= 1")


@dataclass
class SFTConfig:
    """The `rlhf sft` job: supervised fine-tuning on demonstrations (loss on response tokens only). Its
    defaults are the built-in policy's warm start: `builtin:<size>` means builtin:<size>-base after it."""

    run: RunConfig = field(default_factory=lambda: RunConfig(mode="local", output_dir="runs/sft", steps=600, save_every=200))
    """Run control: hosting mode, optimizer steps, seed, output, checkpoints, evaluation interval."""
    data: DataConfig = field(default_factory=lambda: DataConfig(path="builtin:sft"))
    """Demonstrations: prompt + response rows, or chats ending with the answer (train split; held-out rows from eval_path / eval_split)."""
    policy: PolicyConfig = field(default_factory=lambda: PolicyConfig(
        path="builtin:tiny-base", lr=2e-3, warmup_steps=20, lr_schedule="cosine", min_lr_ratio=0.1, micro_batch_size=32))
    """The model to fine-tune (replicas, ZeRO, LoRA, optimizer); micro_batch_size counts rows; the generation fields set the held-out generation evaluation's sampling. (Defaults suit the built-in tiny model; use lr ~1e-5 for billion-parameter models.)"""
    sft: SFTAlgoConfig = field(default_factory=SFTAlgoConfig)
    """Batch size and evaluation rows."""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    """The engine that samples the held-out answers of each evaluation: hf (the policy's own `generate`) or vllm (a vLLM engine given the trained weights before each evaluation, placed as generator.* says; one replica)."""

    def validate(self, check: Check) -> None:
        _check_eval_generator(self, check)
        per_step = self.policy.replicas * self.policy.micro_batch_size
        check(not self.data.weight_column, "data.weight_column", "is read by rlhf rm and rlhf dpo (preference pairs), not by rlhf sft")
        check(self.sft.batch_size % per_step == 0, "sft.batch_size",
              f"({self.sft.batch_size}) must be divisible by policy.replicas x policy.micro_batch_size = {per_step}")
        check(self.policy.colocate_with is None, "policy.colocate_with", "must be empty: rlhf sft has one role")
        check(self.policy.lr_schedule == "constant" or self.policy.warmup_steps < self.run.steps, "policy.warmup_steps",
              f"({self.policy.warmup_steps}) must be below run.steps ({self.run.steps}) with lr_schedule={self.policy.lr_schedule}")

    def model_paths(self) -> list[str]:
        return ["policy.path"]
