"""The reference role: frozen log-probs of the initial policy, no optimizer state.

Receives only its `ReferenceConfig` slice. With ZeRO-3 its weights are partitioned across its
replicas. With a LoRA policy there is no reference role at all: the policy computes reference
log-probs with its adapters disabled (`PolicyActor.reference_logprobs`).
"""

from __future__ import annotations

import torch

from actors.engine import build_engine
from actors.lm import forward_micro_batches, response_logprobs
from actors.modeling import load_causal_lm
from actors.types import LogProbs, Rollout
from cluster.group import gather_as


class ReferenceActor:
    def __init__(self, cfg, *, model_path: str, temperature: float, micro_batch_size: int, micro_batch_tokens: int = 0):
        self.cfg = cfg
        self.temperature = temperature
        self.micro_batch_size = micro_batch_size
        self.micro_batch_tokens = micro_batch_tokens
        model = load_causal_lm(model_path, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
        self.engine = build_engine(model, cfg, train=False)

    @gather_as("cat")
    @torch.no_grad()
    def logprobs(self, rollout: Rollout) -> LogProbs:
        """log pi_ref(a_t | s_t), (B, T)."""
        def forward(micro: Rollout) -> torch.Tensor:
            return response_logprobs(self.engine, micro.sequences, micro.attention_mask, micro.prompt_len, self.temperature)

        return LogProbs(logprobs=forward_micro_batches(self.engine, rollout, self.micro_batch_size, forward, tokens=self.micro_batch_tokens,
                                                         width=rollout.action_mask.shape[1]) * rollout.action_mask)
