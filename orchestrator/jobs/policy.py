"""`PolicyJob`: the part of a job of one policy role (`rlhf sft`, `rlhf dpo`) that is the same for both."""

from __future__ import annotations

from pathlib import Path

from actors.modeling import load_tokenizer
from actors.policy import GeneratorActor, PolicyActor
from cluster import RoleSpec, create_groups, get
from orchestrator.config.jobs import generator_slice
from orchestrator.core import preflight
from orchestrator.core.job import Evaluation, Job, Trained
from orchestrator.jobs.evaluation import annotator_reward_group, gold_prompt_rows, sample_and_score

__all__ = ["PolicyJob"]


class PolicyJob(Job):
    """A job of one policy role: the policy from `cfg.policy`, hosted by `cluster.create_groups` as
    `role_cls` (a `PolicyActor` subclass), its tokenizer, the checks before any role starts (model path,
    LoRA targets, lengths against the position limit), and held-out samples at the start and end: on the
    built-in world's data its held-out prompts, scored by the gold score and the annotator reward; on
    other data the first `SAMPLE_PROMPTS` distinct prompts of the held-out set, unscored. They are sampled
    by the policy itself, or with generator.engine=vllm by a generator role given the policy's weights first. Subclasses set
    `role_cls`, load their data, call `prepare(train_rows, eval_set, answers)`, and give the role's extra
    constructor arguments."""

    role_cls: type
    SAMPLE_PROMPTS = 16

    def __init__(self, cfg):
        self.cfg = cfg
        self.policy_info = preflight.check_model("policy", cfg.policy)
        preflight.check_engine(cfg.policy, cfg.generator)
        self.tokenizer = load_tokenizer(cfg.policy.path, trust_remote_code=cfg.policy.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id
        self.gold_rows = gold_prompt_rows(cfg.data.path, self.tokenizer, cfg.data.max_prompt_tokens, cfg.data.chat_template)
        self.sample_rows = self.gold_rows
        self.n_train = 0
        self.policy = self.reward = self.generator = None

    def prepare(self, train_rows: list[dict], eval_set, answers: tuple[str, ...]) -> None:
        """Checks of the loaded data before any role starts: the longest prompt + answer of `train_rows`
        and of `eval_set` (columns `answers`), and the sampled prompts + policy.max_new_tokens, against
        the policy's position limit. Picks the held-out prompts to sample on data without gold."""
        held_out = eval_set.select_columns(["prompt_ids", *answers]).to_list()
        preflight.check_positions(self.policy_info, preflight.longest_row(train_rows + held_out, answers),
                                  "data.max_prompt_tokens", "the longest prompt + answer of the data")
        self.n_train = len(train_rows)
        if not self.gold_rows:
            picked, seen = [], set()
            for row in eval_set.select_columns(["prompt", "chat", "prompt_text", "prompt_ids"]):
                if tuple(row["prompt_ids"]) not in seen and len(picked) < self.SAMPLE_PROMPTS:
                    seen.add(tuple(row["prompt_ids"]))
                    picked.append(row)
            self.sample_rows = picked
        if self.sample_rows:
            preflight.check_positions(self.policy_info, preflight.longest_row(self.sample_rows) + self.cfg.policy.max_new_tokens,
                                      "policy.max_new_tokens", "the longest held-out prompt + policy.max_new_tokens")

    def fingerprint(self) -> dict:
        return {"job": self.name, "policy": preflight.model_fingerprint(self.cfg.policy.path, self.policy_info),
                "policy_layout": preflight.layout_fingerprint(self.cfg.policy), "train_rows": self.n_train}

    def role_kwargs(self) -> dict:
        """Constructor arguments of the role besides model_path, seed and total_steps."""
        return {}

    def role_configs(self) -> dict:
        return {"policy": self.cfg.policy}

    def start(self) -> None:
        cfg = self.cfg
        specs = {"policy": RoleSpec(self.role_cls, cfg.policy, kwargs=dict(model_path=cfg.policy.path, seed=cfg.run.seed,
                                                                           total_steps=cfg.run.steps, **self.role_kwargs()))}
        if cfg.generator.engine == "vllm" and self.sample_rows:
            longest = preflight.longest_row(self.sample_rows) + cfg.policy.max_new_tokens
            specs["generator"] = RoleSpec(GeneratorActor, generator_slice(cfg.policy, cfg.generator), kwargs=dict(
                model_path=cfg.policy.path, seed=cfg.run.seed, engine=cfg.generator, max_model_len=longest))
        groups = create_groups(cfg.run.hosting(), specs)
        self.policy, self.generator = groups["policy"], groups.get("generator")
        self.groups = list(groups.values())
        if self.gold_rows:
            self.reward = annotator_reward_group()
            self.groups.append(self.reward)

    def trained(self) -> dict[str, Trained]:
        return {"policy": Trained(self.policy, self.role_cls)}

    def with_generation(self, metrics: dict, record: dict) -> Evaluation:
        """The job's own held-out `metrics` (eval/*) and `record`, plus the generation evaluation on the
        sampled prompts: its metrics, its record (under "generation") and its samples."""
        record["generation"], samples = None, []
        if self.sample_rows:
            sampler = self.policy
            if self.generator is not None:  # the engine gets the weights trained so far (LoRA merged)
                get(self.generator.broadcast(GeneratorActor.load_weights, self.policy.broadcast(PolicyActor.weights, full=True)))
                sampler = self.generator
            gen = sample_and_score(sampler, self.reward, self.sample_rows, self.pad_id, gold=bool(self.gold_rows))
            metrics.update(gen.metrics())
            record["generation"], samples = gen.record(), gen.samples
        return Evaluation(metrics, record, samples)

    def finish(self, out: Path) -> dict:
        return {"policy": self.export("policy", out / "policy")}
