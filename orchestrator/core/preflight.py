"""Checks before any role starts: each failure is one `ConfigError` line naming the config key.

Every job runs them from its constructor (after its data is loaded, before `orchestrator.core.job.run`
starts a role), reading model configs only (no weights):

- a model path that is not a readable model folder or hub name, or a folder without weights or
  tokenizer files, or with a config.json that does not parse (`model_info`);
- prompt + generation (or prompt + response) lengths beyond a model's position limit (`check_positions`);
- LoRA `target_modules` that name no linear layer of the model (`check_lora`, on a meta-device skeleton);
- two roles that must share token ids (policy and reference, policy and a critic taken from the reward
  model) but have different vocabularies (`check_same_vocab`);
- a checkpoint in `run.output_dir` written for another model or an incompatible layout: every
  checkpoint stores the job's `fingerprint`, and `run.resume` refuses one that differs
  (`check_fingerprint`, called by the job skeleton).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

from actors.config import first_line
from orchestrator.config import ConfigError

log = logging.getLogger("rlhf.preflight")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
"""Config attributes that hold a model's position limit, in the order they are read."""


@dataclass
class ModelInfo:
    """What the checks need of a model, read from its config alone."""

    key: str
    """The config key that names the model, e.g. 'policy.path'."""
    path: str
    """The resolved folder or hub name."""
    model_type: str
    max_positions: Optional[int]
    position_key: str
    """The config attribute the limit came from."""
    config_hash: str
    """sha256 of the model config (sorted JSON, without transformers' version), first 12 hex digits."""


def model_info(key: str, path: str, trust_remote_code: bool = False) -> ModelInfo:
    """Read the config of the model at `path` (named by config key `key`); a ConfigError names the key when
    it is not a model folder or a reachable hub name."""
    import transformers

    if path.startswith("builtin:"):
        raise ConfigError(f"config key '{key}': {path!r} is a built-in model name, which the entry turns into a folder "
                          "(orchestrator.builtin.policy.resolve, called by orchestrator.registry.run); run jobs through it")
    if os.path.isdir(path):
        files = os.listdir(path)
        if "config.json" not in files:
            raise ConfigError(f"config key '{key}': {path!r} is a folder without config.json, not a saved model")
        if not any(f.endswith(WEIGHT_SUFFIXES) for f in files):
            raise ConfigError(f"config key '{key}': {path!r} has a config.json but no weights "
                              f"({', '.join('*' + x for x in WEIGHT_SUFFIXES)}); was the save interrupted?")
        if not any(f in TOKENIZER_FILES for f in files):
            raise ConfigError(f"config key '{key}': {path!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                              "save the tokenizer next to the model (tokenizer.save_pretrained)")
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001  (missing folder, bad JSON, unknown architecture, no network: one line)
        hint = "no such folder" if _looks_local(path) and not os.path.exists(path) else first_line(e)
        raise ConfigError(f"config key '{key}': {path!r} is not a readable model folder or hub name ({hint})") from None
    limit, where = None, ""
    for attr in POSITION_KEYS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            limit, where = value, attr
            break
    blob = {k: v for k, v in config.to_dict().items() if k not in ("transformers_version", "_name_or_path", "rlhf_reward")}
    digest = hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return ModelInfo(key, path, config.model_type, limit, where, digest)


def check_model(role: str, cfg, kind: str = "causal", exclude: tuple = ()) -> ModelInfo:
    """The checks of the model of a role section `cfg` (config key `<role>`): its `path` readable
    (`model_info`) and its LoRA targets, if any, layers of it (`check_lora`); returns its `ModelInfo`."""
    info = model_info(f"{role}.path", cfg.path, cfg.trust_remote_code)
    lora = getattr(cfg, "lora", None)
    if lora is not None:
        check_lora(role, cfg.path, lora, kind=kind, exclude=exclude, trust_remote_code=cfg.trust_remote_code)
    return info


def longest_row(rows, answers: tuple[str, ...] = ()) -> int:
    """Tokens of the longest prompt + longest answer (columns `answers`) over token rows."""
    return max(len(r["prompt_ids"]) + max((len(r[a]) for a in answers), default=0) for r in rows)


def check_positions(info: ModelInfo, needed: int, key: str, what: str) -> None:
    """`needed` tokens (described by `what`, fixed by config key `key`) must fit `info`'s position limit."""
    if info.max_positions is not None and needed > info.max_positions:
        raise ConfigError(
            f"config key '{key}': {what} = {needed} tokens exceeds the position limit of {info.key}={info.path!r} "
            f"({info.max_positions}, its config's {info.position_key}); lower {key} or the data limits "
            "(data.max_prompt_tokens, data.max_response_tokens; longer rows are dropped or cut per data.on_long)")


def check_lora(key: str, path: str, lora, kind: str = "causal", exclude: tuple = (), trust_remote_code: bool = False) -> None:
    """`lora.target_modules` (config key `key`.lora.target_modules) must name linear layers of the model at `path`
    (kind "causal" or "classifier"); logs the layers that will get adapters."""
    if not lora.enabled:
        return
    from actors.modeling import linear_layers, lora_targets, model_skeleton

    skeleton = model_skeleton(path, kind, trust_remote_code=trust_remote_code)
    try:
        targets = lora_targets(skeleton, lora.target_modules, exclude)
    except ValueError as e:
        raise ConfigError(f"config key '{key}.lora.target_modules': {e}") from None
    layers = linear_layers(skeleton, exclude)
    log.info("%s: LoRA adapters on %s (%d layers)", key, ", ".join(targets), sum(layers[t] for t in targets))


def check_same_vocab(key: str, tokenizer, other_key: str, other_path: str, trust_remote_code: bool = False) -> None:
    """The model at `other_path` reads the token ids of `tokenizer`'s model: their vocabularies must be equal."""
    from actors.modeling import load_tokenizer

    other = load_tokenizer(other_path, trust_remote_code=trust_remote_code)
    if other.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"config key '{other_key}': {other_path!r} has a different tokenizer than {key} "
                          f"({len(other)} vs {len(tokenizer)} tokens); it reads {key}'s token ids, so both must share one vocabulary")


def model_fingerprint(given: str, info: ModelInfo) -> dict:
    """A model's part of a checkpoint fingerprint: the path as configured, its type and config hash."""
    return {"path": given, "model_type": info.model_type, "config": info.config_hash}


def layout_fingerprint(cfg) -> dict:
    """The part of a trained role's config that its DeepSpeed checkpoint depends on: LoRA layout, the
    ZeRO partitioning (stage and replicas; at stage 0 every replica holds everything), and a dtype other
    than fp32 (bf16 trains through DeepSpeed's bf16 optimizer, whose checkpoint files differ)."""
    out = {"lora": [cfg.lora.r, sorted(cfg.lora.target_modules)] if cfg.lora.enabled else None}
    if cfg.zero_stage > 0:
        out["zero"] = [cfg.zero_stage, cfg.replicas]
    if cfg.dtype != "fp32":
        out["dtype"] = cfg.dtype
    return out


def check_fingerprint(saved: Optional[dict], now: dict, checkpoint, output_dir: str) -> None:
    """Refuse to resume from `checkpoint` when it was written for another model or layout (`saved` differs
    from `now`). A checkpoint without a fingerprint (written before they existed) resumes with a warning."""
    if saved is None:
        log.warning("checkpoint %s has no fingerprint (an older version wrote it); resuming without checking "
                    "that it was written for this model", checkpoint)
        return
    diffs = [f"{k}: {_short(saved.get(k))} then, {_short(now.get(k))} now"
             for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if diffs:
        raise ConfigError(
            f"config key 'run.resume': the checkpoint {checkpoint} was written for another model or layout "
            f"({'; '.join(diffs)}); start fresh with run.resume=never (the old outputs are moved to "
            f"{output_dir}/previous-<time>/) or choose another run.output_dir")


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def _looks_local(path: str) -> bool:
    """A path meant as a folder: hub names are 'name' or 'org/name'."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1


def check_engine(policy, generator) -> None:
    """With generator.engine=vllm: vLLM installed and able to load the policy's architecture (a `ConfigError`
    naming policy.path otherwise), before any role starts."""
    if generator.engine != "vllm":
        return
    from actors.vllm_engine import check_loadable

    try:
        check_loadable(policy.path, "policy.path", policy.trust_remote_code)
    except ValueError as e:
        raise ConfigError(str(e)) from None
