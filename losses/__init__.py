"""The algorithm library: pure functions on tensors (torch, math and the standard library only).

Modules: ``advantages`` (GAE, whitening), ``kl`` (KL estimators), ``ppo`` (policy and value losses,
``aggregate``), ``dpo`` (DPO, cDPO, IPO), ``preference`` (Bradley-Terry, DPL, mixture, ODIN),
``relevance`` (R^3 shaping) and ``common`` (shared helpers, re-exported here).
"""

from losses.common import log_ndtr, log_probs_from_logits, masked_mean, masked_var, pearson

__all__ = ["log_probs_from_logits", "masked_mean", "masked_var", "pearson", "log_ndtr"]
