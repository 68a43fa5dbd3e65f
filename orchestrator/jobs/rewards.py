"""The built-in reward functions, handed to the reward role as functions.

`reward.function=builtin:<name>` (`builtin:annotator`, PPO's default; `builtin:verifiable`; `builtin:gold`)
names a function of the built-in world (`orchestrator.builtin.world.REWARDS`). The driver looks them up
here and gives them to the reward role (`RewardActor(functions=...)`, pickled by reference to the world
module), so the role never names an orchestrator module: a role imports by name only the user's
`module:function`.
"""

from __future__ import annotations

from typing import Callable

from actors.reward import reward_parts
from orchestrator.builtin.world import REWARDS
from orchestrator.config import ConfigError

__all__ = ["reward_functions"]


def reward_functions(cfg) -> dict[str, Callable]:
    """{spec: function} of every `builtin:<name>` function of the reward config `cfg` (a weighted sum's
    components included); an unknown name is a `ConfigError` naming the key and the built-in names."""
    out = {}
    for i, part in enumerate(reward_parts(cfg)):
        if part.kind != "function" or not part.function.startswith("builtin:"):
            continue
        name = part.function.split(":", 1)[1]
        if name not in REWARDS:
            key = f"reward.components.{i}.function" if cfg.kind == "weighted" else "reward.function"
            raise ConfigError(f"config key '{key}': {part.function!r} is not a built-in reward; built-in rewards: "
                              + ", ".join(f"builtin:{n}" for n in REWARDS))
        out[part.function] = REWARDS[name]
    return out
