"""The jobs, one module each, every one a `orchestrator.core.job.Job` run by the one skeleton:

- `ppo` (with `experience`: KL-shaped rewards and advantages; `rollouts`: where a step's rollout comes
  from), PPO with a critic or a critic-free estimator;
- `dpo`, `sft` (on `policy.PolicyJob`, the part of a one-policy job they share);
- `rm` (with `rm_eval`: what a reward model learned, also `rlhf rm eval` of a saved folder);
- `evaluation`: the one generation evaluation (held-out samples, reward, gold on the built-in world);
- `rewards`: the built-in reward functions handed to the reward role.

Which name runs which job is `orchestrator.registry`'s.
"""
