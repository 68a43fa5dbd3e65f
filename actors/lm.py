"""Forward passes shared by every role: position ids for left-padded prompts, response log-probs,
and the value model (a causal-LM backbone with a scalar head per token).

Sequences are `prompt (left-padded to P) + response (right-padded to T)`. The response token at
position P + t is predicted by the logits at P + t - 1; the state value of that action is read from
the hidden state at the same position P + t - 1.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from losses import log_probs_from_logits


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them (as HF generate does)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)  # (B, L)


def response_logprobs(
    model: nn.Module,
    sequences: torch.Tensor,  # (B, P+T)
    attention_mask: torch.Tensor,  # (B, P+T)
    prompt_len: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log pi(a_t | s_t) for every response position: (B, T), in fp32.

    Logits are divided by the sampling temperature, so the log-probs are those of the distribution
    the rollout was sampled from (as in OpenRLHF and verl).
    """
    out = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False)
    logits = out.logits[:, prompt_len - 1 : -1]  # (B, T, V)
    if temperature != 1.0:
        logits = logits / temperature
    return log_probs_from_logits(logits, sequences[:, prompt_len:]).float()


class ValueModel(nn.Module):
    """V(s_t) per token: a causal-LM backbone (no LM head) and a linear value head.

    Saved as the backbone's `save_pretrained` folder plus `value_head.safetensors`, so the backbone
    stays loadable by transformers.
    """

    HEAD_FILE = "value_head.safetensors"

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config  # DeepSpeed and peft read model.config
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_causal_lm(cls, lm: nn.Module) -> "ValueModel":
        """Take the backbone of a `*ForCausalLM` (or of a sequence classifier) and add a fresh head."""
        backbone = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.base_model
        return cls(backbone, lm.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: object) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False
        ).last_hidden_state  # (B, L, H)
        return self.value_head(hidden).squeeze(-1).float()  # (B, L)

    def save(self, folder: str, state_dict: dict | None = None) -> None:
        from safetensors.torch import save_file

        state = state_dict if state_dict is not None else self.state_dict()
        head = {k.split("value_head.", 1)[1]: v.contiguous() for k, v in state.items() if k.startswith("value_head.")}
        backbone = {k.split("backbone.", 1)[1]: v for k, v in state.items() if k.startswith("backbone.")}
        self.backbone.save_pretrained(folder, state_dict=backbone, safe_serialization=True)
        save_file(head, os.path.join(folder, self.HEAD_FILE))

    def load_head(self, folder: str) -> None:
        from safetensors.torch import load_file

        self.value_head.load_state_dict(load_file(os.path.join(folder, self.HEAD_FILE)))


class TokenStats:
    """Token-weighted metric sums of one replica; the driver adds replicas up (`merge_stats`)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, name: str, value: float, weight: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value) * float(weight)
        self.weights[name] = self.weights.get(name, 0.0) + float(weight)

    def as_dict(self) -> dict[str, tuple[float, float]]:
        return {k: (self.sums[k], self.weights[k]) for k in self.sums}


def merge_stats(per_replica: list[dict[str, tuple[float, float]]]) -> dict[str, float]:
    """Weighted means over replicas of what `TokenStats.as_dict` returned."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for stats in per_replica:
        for k, (s, w) in stats.items():
            sums[k] = sums.get(k, 0.0) + s
            weights[k] = weights.get(k, 0.0) + w
    return {k: sums[k] / weights[k] for k in sums if weights[k] > 0}


def train_minibatches(engine, exp, minibatch_rows: int, micro_batch_size: int, loss_fn, prefix: str) -> dict:
    """One optimizer step per minibatch of `exp` (this replica's rows, minibatch after minibatch).

    `loss_fn(micro) -> (per_token_loss (b, T), metrics dict of 0-d tensors)`. Each micro-batch
    contributes sum(per_token * mask) / N_global, N_global = valid tokens of the whole minibatch over
    every replica (carried in `exp.mb_tokens`), so the update equals the one-batch update.
    """
    from actors.engine import backward, step
    from losses.ppo import aggregate

    stats = TokenStats()
    n_minibatches = exp.num_rows // minibatch_rows
    for mb in exp.split(n_minibatches):
        for micro in mb.split(minibatch_rows // micro_batch_size):
            per_token, metrics = loss_fn(micro)
            mask = micro.action_mask
            loss = aggregate(per_token, mask, num_tokens=micro.mb_tokens[0].item())
            backward(engine, loss)
            tokens = float(mask.sum())
            stats.add(f"{prefix}/loss", (per_token * mask).sum().item() / max(tokens, 1.0), tokens)
            for name, value in metrics.items():
                if name.endswith("_max"):  # not a mean: skip rather than average it wrongly
                    continue
                stats.add(f"{prefix}/{name}", float(value), tokens)
        info = step(engine)
        stats.add(f"{prefix}/lr", info["lr"], 1.0)
        stats.add(f"{prefix}/grad_norm", info["grad_norm"], 1.0)
    return stats.as_dict()


def peak_memory_mb() -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, else the peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
