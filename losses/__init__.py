"""The algorithm library: pure functions on tensors (torch, math and the standard library only).

Modules: ``advantages`` (GAE, whitening), ``kl`` (KL estimators, the KL controller), ``rewards`` (the
per-token reward of PPO: sequence score and KL penalty), ``ppo`` (policy and value losses, the entropy
bonus, ``aggregate``), ``dpo`` (DPO, cDPO, IPO), ``preference`` (Bradley-Terry, DPL, mixture, ODIN),
``relevance`` (R^3 shaping) and ``common`` (shared helpers: log-probs, entropy, masked statistics,
correlations, explained variance, running moments; the most used are re-exported here).
"""

from losses.common import entropy_from_logits, log_ndtr, log_probs_from_logits, masked_mean, masked_var, pearson

__all__ = ["log_probs_from_logits", "entropy_from_logits", "masked_mean", "masked_var", "pearson", "log_ndtr"]
