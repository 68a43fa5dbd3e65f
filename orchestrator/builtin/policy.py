"""The built-in policies and the one place built-in model names become folders.

`builtin:<size>` as a model path is the built-in Llama of that size (`builtin:<size>-base`,
`orchestrator.builtin.models`) after `rlhf sft` with its defaults (`builtin_policy_dir`): trained on
first use, in local mode on one thread, and cached under a key that covers the whole SFT config, so
changing a default retrains it.

`resolve(cfg)` returns a copy of a job config whose model paths (`cfg.model_paths()`) are folders. The
entries call it once (`orchestrator.registry.run`, the experiments, `rlhf bench`), so the jobs and the
job skeleton never build a model: they receive plain folders. A dry run resolves without training
(`build=False`): a warm start not cached yet is checked through its base model, which has the same
architecture and tokenizer.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from orchestrator.builtin.models import BUILTIN_SIZES, _fingerprint, builtin_model_dir
from orchestrator.config import SFTConfig, get_key, load, replace_key, to_dict
from orchestrator.core.cache import build_atomically, cache_root

logger = logging.getLogger("rlhf.builtin")

__all__ = ["builtin_policy_dir", "resolve_model_path", "resolve"]


def builtin_policy_dir(size: str, seed: int = 0, build: bool = True) -> str | None:
    """The SFT-warm-started built-in policy of `size`: `rlhf sft` with its defaults on builtin:<size>-base,
    run once in local mode on one thread and cached (its run folder, without checkpoints, kept inside the
    cached policy as `sft_run/`, for the record).

    `seed` (the experiments' seeds; `builtin:<size>` is seed 0) sets both the base model's random
    initialisation and the SFT run's seed (data order), so each seed is its own policy. `build=False`:
    the cached folder, or None when it is not built yet."""
    import torch

    from orchestrator.core.job import run
    from orchestrator.jobs.sft import SFTJob

    base_dir = builtin_model_dir(size, seed=seed)
    base = f"builtin:{size}-base" if seed == 0 else base_dir
    overrides = [f"policy.path={base}", "run.mode=local", "run.resume=never", "run.save_every=0", f"run.seed={seed}"]
    recipe = to_dict(load(SFTConfig, None, overrides + ["run.output_dir=unused"]))
    recipe["run"].pop("output_dir")
    key = _fingerprint({"base": Path(base_dir).name, "sft": recipe})
    final = cache_root() / "builtin" / f"{size}-sft-{key}"
    if not build and not final.is_dir():
        return None

    def warm_start(tmp: Path) -> None:
        cfg = load(SFTConfig, None, overrides + [f"policy.path={base_dir}", f"run.output_dir={tmp / 'sft_run'}"])
        logger.info("warm-starting builtin:%s with %d SFT steps (cached in %s)", size, cfg.run.steps, final)
        threads = torch.get_num_threads()
        # one intra-op thread: for a model this small a second one gains little, and when anything else
        # holds a core, OpenMP's spinning threads make a 2-thread run many times slower
        torch.set_num_threads(1)
        try:
            run(SFTJob(cfg), cfg)
        finally:
            torch.set_num_threads(threads)
        out = Path(cfg.run.output_dir)
        shutil.rmtree(out / "checkpoints")
        for item in (out / "policy").iterdir():  # the exported policy is the cached folder
            item.rename(tmp / item.name)

    return str(build_atomically(final, warm_start))


def resolve_model_path(path: str, build: bool = True) -> str:
    """'builtin:<size>' -> the folder of the SFT-warm-started built-in policy (`builtin_policy_dir`);
    'builtin:<size>-base' -> the freshly initialised one (`builtin_model_dir`); both built on first use
    (`build=False`: a warm start not cached yet is its base model's folder). Any other path or hub name
    is returned unchanged."""
    if not path.startswith("builtin:"):
        return path
    size = path.split(":", 1)[1]
    base = size.endswith("-base")
    size = size[: -len("-base")] if base else size
    if size not in BUILTIN_SIZES:
        raise ValueError(f"unknown built-in model {path!r}; built-in models: "
                         + ", ".join(f"builtin:{s}, builtin:{s}-base" for s in BUILTIN_SIZES))
    if base:
        return builtin_model_dir(size)
    folder = builtin_policy_dir(size, build=build)
    if folder is None:
        logger.info("%s: its SFT warm start is built on the first run; checked through builtin:%s-base (the same "
                    "architecture and tokenizer)", path, size)
        return builtin_model_dir(size)
    return folder


def resolve(cfg, build: bool = True):
    """A copy of the job config `cfg` in which every built-in model name among its model paths
    (`cfg.model_paths()`, e.g. policy.path=builtin:tiny) is the folder it names, built on first use
    (`build=False`, a dry run: `resolve_model_path`'s stand-in instead of a training run). `cfg` itself
    is not changed. An unknown built-in name is a `ConfigError` naming the key."""
    from orchestrator.config import ConfigError

    for key in cfg.model_paths():
        given = get_key(cfg, key)
        if isinstance(given, str) and given.startswith("builtin:"):
            try:
                folder = resolve_model_path(given, build=build)
            except ValueError as e:
                raise ConfigError(f"config key '{key}': {e}") from None
            logger.info("%s=%s is %s", key, given, folder)
            cfg = replace_key(cfg, key, folder)
    return cfg
