"""The one generation evaluation: sample an answer per held-out prompt with the policy, score it.

`sample_and_score(policy, reward, rows, pad_id)` takes the role groups themselves: PPO passes its
policy and reward roles; DPO and SFT pass their policy role and a local reward role of the built-in
world's annotator reward (`annotator_reward_group`). On the built-in world's prompts it also gives the
gold score (`orchestrator.builtin.world.gold_score`), which no training step ever sees, and the world's
own evaluation (gold by query type, length in words, the share of the disputed casual ending).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from actors.reward import RewardActor
from actors.trainer import NonFiniteError
from cluster import LocalGroup, RoleGroup, get
from orchestrator.builtin import world
from orchestrator.builtin.datasets import GOLD_DATA
from orchestrator.config import BUILTIN_REWARD, DataConfig, RewardConfig
from orchestrator.core.phases import Phases
from orchestrator.data import load_prompts, to_prompt_batch
from orchestrator.jobs.episodes import episode_metrics, episode_rows
from orchestrator.jobs.rewards import reward_functions

log = logging.getLogger("rlhf.evaluation")

__all__ = ["EVAL_SEED", "GOLD_DATA", "GenerationEval", "sample_and_score", "annotator_reward_group", "gold_prompt_rows"]

EVAL_SEED = 1_000_003
"""The sampling seed of every held-out generation: the start and end evaluations sample alike."""


@dataclass
class GenerationEval:
    reward: float | None
    """Mean reward of the sampled answers (None without a reward role)."""
    gold: float | None
    """Mean gold score (built-in task prompts), else None."""
    length: float
    """Mean answer length in tokens."""
    samples: list = field(default_factory=list)
    """One row per prompt: prompt (plain), messages (the whole chat), prompt_text (as the policy saw it),
    response, length_tokens, reward, gold."""
    extra: dict = field(default_factory=dict)
    """The task's own evaluation (gold by query type, length in words, disputed share)."""

    def metrics(self) -> dict:
        """eval/* scalars for metrics.jsonl (and eval/return, eval/turns, ... of episodes)."""
        episodes = {f"eval/{k}": v for k, v in self.extra.items() if k in ("return", "turns", "tool_calls", "done", "tokens")}
        return {**({"eval/reward": self.reward} if self.reward is not None else {}), "eval/length": self.length,
                **({"eval/gold": self.gold} if self.gold is not None else {}), **episodes}

    def record(self) -> dict:
        return {"reward": self.reward, "gold": self.gold, "length_tokens": self.length, "task": self.extra}


def sample_and_score(policy: RoleGroup, reward: RoleGroup | None, rows: list[dict], pad_id: int, gold: bool,
                     on_nonfinite: str = "raise", reward_name: str = "the reward", episodes=None) -> GenerationEval:
    """One sampled answer per row of `rows` (held-out prompt rows, fixed seed `EVAL_SEED`) from the
    `policy` role (a `PolicyActor`, or a `GeneratorActor`: a vLLM engine given the policy's weights), scored
    by the `reward` role (if any) and, with `gold`, by the gold score. A non-finite reward raises `NonFiniteError` naming the first such prompt (on_nonfinite="skip": it is left out of
    the mean, with a warning).

    `episodes` (an `EpisodeRunner`, env.path): one episode per row instead, its last model turn the answer the
    reward scores; `eval/return` is the mean episode return, and with `gold` (a built-in environment, whose
    rewards are the world's gold) the gold score is the return."""
    batch = to_prompt_batch(rows, pad_id)
    batch.seeds = EVAL_SEED * 65_537 + torch.arange(batch.num_rows)  # a vLLM engine's per-row seeds: the same on any replica
    if episodes is not None:
        batch.rows = episode_rows(rows, list(range(len(rows))), EVAL_SEED, 0)
        rollout = episodes.run(batch, EVAL_SEED, lambda prompts, k: get(policy.scatter_padded(
            policy.role_cls.generate, prompts, seed=EVAL_SEED * 1_009 + k)), Phases().timed)
        returns = [e["return"] for e in rollout.episodes]
    else:
        rollout = get(policy.scatter_padded(policy.role_cls.generate, batch, seed=EVAL_SEED))  # PolicyActor's or GeneratorActor's
    k = len(rows)
    rewards = get(reward.scatter_padded(RewardActor.score, rollout)).reward.tolist() if reward is not None else [None] * k
    responses = rollout.responses
    lengths = rollout.action_mask.sum(-1).float()
    mean_reward = None
    if reward is not None:
        finite = [r for r in rewards if math.isfinite(r)]
        if len(finite) < k:
            i = next(i for i, r in enumerate(rewards) if not math.isfinite(r))
            msg = (f"{reward_name} is not finite for {k - len(finite)} of {k} held-out responses; first prompt "
                   f"{rows[i]['prompt'][:80]!r}, response {responses[i][:80]!r}")
            if on_nonfinite == "raise":
                raise NonFiniteError(msg)
            log.warning("%s (left out of eval/reward)", msg)
        mean_reward = sum(finite) / len(finite) if finite else math.nan
    result = GenerationEval(reward=mean_reward, gold=None, length=lengths.mean().item())
    golds = [None] * k
    if episodes is not None:
        result.extra = {k.removeprefix("env/"): v for k, v in episode_metrics(rollout).items()}
        if gold:
            golds = returns
            result.gold = sum(golds) / k
        result.samples = [
            {"prompt": row["prompt"], "row_index": i, "conversation": e["first"] + e["turns"], "response": resp,
             "return": e["return"], "tool_calls": e["tool_calls"], "done": e["done"], "error": e["error"],
             "length_tokens": int(n), "reward": r, "gold": g}
            for i, (row, e, resp, n, r, g) in enumerate(zip(rows, rollout.episodes, responses, lengths.tolist(), rewards, golds))
        ]
        return result
    if gold:
        golds = [world.gold_score(row, resp) for row, resp in zip(rows, responses)]
        result.gold = sum(golds) / k
        result.extra = world.gold_eval(rows, responses)
    result.samples = [
        {"prompt": row["prompt"], "messages": row.get("chat"), "prompt_text": row.get("prompt_text"), "response": resp,
         "length_tokens": int(n), "reward": r, "gold": g}
        for row, resp, n, r, g in zip(rows, responses, lengths.tolist(), rewards, golds)
    ]
    return result


def annotator_reward_group() -> LocalGroup:
    """The built-in world's annotator reward (PPO's default reward) as a local role: what DPO's and SFT's
    held-out generations are scored with."""
    cfg = RewardConfig(kind="function", function=BUILTIN_REWARD)
    return LocalGroup(RewardActor, cfg, name="reward", kwargs={"functions": reward_functions(cfg)})


def gold_prompt_rows(data_path: str, tokenizer, max_prompt_tokens: int, chat_template: bool) -> list[dict]:
    """The built-in world's held-out prompt rows when `data_path` is built-in world data, else []."""
    if data_path not in GOLD_DATA:
        return []
    cfg = DataConfig(path="builtin:prompts", max_prompt_tokens=max_prompt_tokens, chat_template=chat_template)
    return load_prompts(cfg, tokenizer, eval_set=True)[0].to_list()
