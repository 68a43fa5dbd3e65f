"""The config tree: YAML files and dotted overrides -> typed dataclasses, checked before anything starts.

- `tree`: the machinery (loading, coercion, unknown-key errors that name the key, validation, YAML
  output with every field's docstring as a comment);
- `sections`: `RunConfig` and `DataConfig`, shared by every job;
- `jobs`: each job's tree and algorithm section; the role sections come from `actors.config`.

Which job has which tree is `orchestrator.registry`'s (`registry.load_config("ppo", file, overrides)`).
"""

from actors.config import (CriticConfig, GeneratorConfig, LoraConfig, ModelConfig, PlacementConfig, PolicyConfig,
                           ReferenceConfig, RewardComponentConfig, RewardConfig, RewardModelConfig, TrainableConfig)
from orchestrator.config.jobs import (BUILTIN_REWARD, VERIFIABLE_REWARD, DPOAlgoConfig, DPOConfig, PPOAlgoConfig, PPOConfig,
                                      RMConfig, RMEvalConfig, RMTrainConfig, SFTAlgoConfig, SFTConfig)
from orchestrator.config.sections import DataConfig, RunConfig
from orchestrator.config.tree import (Check, ConfigError, field_docs, get_key, load, replace_key, to_dict, to_yaml,
                                      validate)

__all__ = ["BUILTIN_REWARD", "VERIFIABLE_REWARD", "Check", "ConfigError", "CriticConfig", "DPOAlgoConfig", "DPOConfig",
           "DataConfig", "GeneratorConfig", "LoraConfig", "ModelConfig", "PPOAlgoConfig", "PPOConfig", "PlacementConfig",
           "PolicyConfig", "RMConfig", "RMEvalConfig", "RMTrainConfig", "ReferenceConfig", "RewardComponentConfig",
           "RewardConfig", "RewardModelConfig", "RunConfig", "SFTAlgoConfig", "SFTConfig", "TrainableConfig", "field_docs",
           "get_key", "load", "replace_key", "to_dict", "to_yaml", "validate"]
