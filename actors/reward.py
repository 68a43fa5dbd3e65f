"""The reward role: one `score(rollout) -> Scores` for every kind of reward.

Kinds (config `reward.kind`):
- `function`: a Python callable named 'module:function', called as
  f(prompts, responses, references) -> list of floats (one per response);
- `model`: a saved sequence-classifier reward model (a Hugging Face folder), scoring the text
  `prompt + response` with its own tokenizer; frozen, optionally sharded with ZeRO-3.
"""

from __future__ import annotations

import importlib

import torch

from cluster.group import gather_as
from actors.lm import peak_memory_mb
from actors.types import Rollout, Scores


def load_function(spec: str):
    """'package.module:function' -> the callable; a clear error when either part is missing."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward.function {spec!r} must look like 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward.function {spec!r}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward.function {spec!r}: module {module_name!r} has no function {attr!r}")
    return fn


class RewardActor:
    """Scores rollouts. Receives only its `RewardConfig` slice."""

    def __init__(self, cfg, *, seed: int = 0):
        self.cfg = cfg
        torch.manual_seed(seed)
        if cfg.kind == "function":
            self.fn = load_function(cfg.function)
        elif cfg.kind == "model":
            from actors.engine import build_engine
            from actors.modeling import load_sequence_classifier, load_tokenizer

            self.tokenizer = load_tokenizer(cfg.path, trust_remote_code=cfg.trust_remote_code)
            self.tokenizer.padding_side = "right"
            model = load_sequence_classifier(cfg.path, num_labels=1, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
            self.engine = build_engine(model, cfg, train=False, total_steps=1)
        else:
            raise ValueError(f"reward.kind={cfg.kind!r} is not available in this role")


    @gather_as("list")
    def peak_memory_mb(self) -> float:
        """Peak memory of this replica's process (for `rlhf bench`)."""
        return peak_memory_mb()
    @gather_as("cat")
    def score(self, rollout: Rollout) -> Scores:
        if self.cfg.kind == "function":
            values = self.fn(list(rollout.prompts), list(rollout.responses), list(rollout.references))
            values = [float(v) for v in values]
            if len(values) != len(rollout.responses):
                raise ValueError(
                    f"reward.function {self.cfg.function!r} returned {len(values)} scores for {len(rollout.responses)} responses"
                )
            return Scores(reward=torch.tensor(values, dtype=torch.float32))
        return Scores(reward=self._model_scores(rollout.prompts, rollout.responses))

    @torch.no_grad()
    def _model_scores(self, prompts: list, responses: list) -> torch.Tensor:
        tok = self.tokenizer
        out = []
        for i in range(0, len(responses), self.cfg.batch_size):
            texts = [_chat_text(tok, p, r) for p, r in zip(prompts[i : i + self.cfg.batch_size], responses[i : i + self.cfg.batch_size])]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            device = next(self.engine.module.parameters()).device
            logits = self.engine(input_ids=enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device)).logits
            out.append(logits[:, 0].float().cpu())
        return torch.cat(out)


def _chat_text(tokenizer, prompt: str, response: str) -> str:
    """The conversation as the reward model saw it in training: chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
        )
    eos = tokenizer.eos_token or ""
    return f"{prompt}\n{response}{eos}"
