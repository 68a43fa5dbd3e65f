"""The reference role: frozen log-probs of the initial policy, no optimizer state.

Receives only its `ReferenceConfig` slice. With ZeRO-3 its weights are partitioned across its
replicas. With a LoRA policy there is no reference role at all: the policy computes reference
log-probs with its adapters disabled (`PolicyActor.reference_logprobs`).
"""

from __future__ import annotations

import torch

from actors.engine import build_engine
from actors.lm import response_logprobs, peak_memory_mb
from actors.modeling import load_causal_lm
from cluster.group import gather_as
from actors.types import Rollout, TokenValues


class ReferenceActor:
    def __init__(self, cfg, *, model_path: str, temperature: float, micro_batch_size: int):
        self.cfg = cfg
        self.temperature = temperature
        self.micro_batch_size = micro_batch_size
        model = load_causal_lm(model_path, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
        self.engine = build_engine(model, cfg, train=False)


    @gather_as("list")
    def peak_memory_mb(self) -> float:
        """Peak memory of this replica's process (for `rlhf bench`)."""
        return peak_memory_mb()
    @gather_as("cat")
    @torch.no_grad()
    def logprobs(self, rollout: Rollout) -> TokenValues:
        """log pi_ref(a_t | s_t), (B, T)."""
        device = self.engine.device
        out = []
        for i in range(0, rollout.num_rows, self.micro_batch_size):
            sl = slice(i, i + self.micro_batch_size)
            out.append(
                response_logprobs(
                    self.engine, rollout.sequences[sl].to(device), rollout.attention_mask[sl].to(device),
                    rollout.prompt_len, self.temperature,
                ).cpu()
            )
        return TokenValues(values=torch.cat(out) * rollout.action_mask)
