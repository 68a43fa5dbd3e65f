"""Config tree: round trip, docs on every field, and every error class names its key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from orchestrator.config import PPOConfig
from orchestrator.registry import load_config, JOBS
from orchestrator.config.tree import ConfigError, all_keys, field_docs, load, to_dict, to_yaml


def _walk(cls):
    yield cls
    hints = __import__("typing").get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _walk(hints[f.name])


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_field_has_a_docstring(job):
    for cls in _walk(JOBS[job].config):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_defaults_validate_and_yaml_round_trip(tmp_path):
    cfg = load_config("ppo", None, ["policy.lr=1e-6", "policy.lora.enabled=true", "run.mode=local"])
    assert cfg.policy.lr == 1e-6 and isinstance(cfg.policy.lr, float)
    assert cfg.policy.lora.enabled is True and cfg.run.mode == "local"
    path = tmp_path / "run.yaml"
    path.write_text(to_yaml(cfg))
    again = load(PPOConfig, str(path))
    assert to_dict(again) == to_dict(cfg)
    # the YAML without comments is plain YAML with the same values
    assert yaml.safe_load(to_yaml(cfg, comments=False)) == to_dict(cfg)


def test_overrides_beat_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("policy:\n  lr: 3.0e-5\n  micro_batch_size: 4\nrun:\n  steps: 7\n")
    cfg = load(PPOConfig, str(path), ["policy.lr=1e-6"])
    assert (cfg.policy.lr, cfg.policy.micro_batch_size, cfg.run.steps) == (1e-6, 4, 7)


def test_list_and_optional_values():
    cfg = load_config("ppo", None, ["policy.lora.target_modules=[q_proj,v_proj]", "reference.colocate_with=reward"])
    assert cfg.policy.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.reference.colocate_with == "reward"
    cfg = load_config("ppo", None, ["reference.colocate_with=null"])
    assert cfg.reference.colocate_with is None


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # unknown keys name themselves and the closest valid names
        (["policy.lrr=1"], "unknown config key 'policy.lrr'; did you mean 'policy.lr'"),
        (["polcy.lr=1"], "unknown config key 'polcy.lr'; did you mean 'policy.lr'"),
        (["ppo.kl_coeff=0.1"], "unknown config key 'ppo.kl_coeff'; did you mean 'ppo.kl_coef'"),
        # wrong types
        (["run.steps=abc"], "config key 'run.steps': expected int, got 'abc'"),
        (["run.steps=1.5"], "config key 'run.steps': expected int, got 1.5"),
        (["policy.lr=fast"], "config key 'policy.lr': expected float, got 'fast'"),
        (["policy.lora.enabled=maybe"], "config key 'policy.lora.enabled': expected bool"),
        (["policy.dtype=fp16"], "config key 'policy.dtype': 'fp16' is not one of 'fp32', 'bf16'"),
        (["policy=3"], "config key 'policy' is a section"),
        # out of range
        (["policy.lr=-1e-6"], "config key 'policy.lr': must be > 0"),
        (["policy.clip_eps=0"], "config key 'policy.clip_eps': must be > 0"),
        (["critic.value_clip_eps=-0.1"], "config key 'critic.value_clip_eps': must be > 0"),
        (["policy.zero_stage=4"], "config key 'policy.zero_stage': must be 0, 1, 2 or 3"),
        (["policy.top_p=1.5"], "config key 'policy.top_p': must be in (0, 1]"),
        (["reward.batch_size=0"], "config key 'reward.batch_size': must be >= 1"),
        (["reward.kind=lottery"], "config key 'reward.kind': 'lottery' is not one of 'model', 'function', 'relevance', 'remote', 'weighted'"),
        (["policy.offload_params=true"], "config key 'policy.offload_params': needs zero_stage=3"),
        (["reward.kind=model"], "config key 'reward.path': must be set when reward.kind=model"),
        # batch sizes that do not divide across replicas
        (["policy.replicas=3"], "config key 'ppo.rollout_batch_size': (64 responses) must be divisible by policy.replicas=3"),
        (["ppo.minibatch_size=24"], "config key 'ppo.rollout_batch_size': must be divisible by ppo.minibatch_size=24"),
        (
            ["critic.replicas=2", "critic.micro_batch_size=32"],
            "config key 'critic.micro_batch_size': (32) must divide the per-replica minibatch",
        ),
        (["policy.colocate_with=policy"], "config key 'policy.colocate_with': cannot name the role itself"),
    ],
)
def test_errors_name_the_key(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config("ppo", None, overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*nope.yaml' does not exist"):
        load(PPOConfig, str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml' line 3: invalid YAML"):
        load(PPOConfig, str(bad))
    typo = tmp_path / "typo.yaml"
    typo.write_text("critic:\n  valu_clip_eps: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'critic.valu_clip_eps'; did you mean 'critic.value_clip_eps'"):
        load(PPOConfig, str(typo))
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load(PPOConfig, None, ["policy.lr"])


def test_all_keys_cover_nested_sections():
    keys = all_keys(PPOConfig)
    for key in ("policy.lr", "policy.lora.r", "critic.value_clip_eps", "ppo.kl_estimator", "run.resume"):
        assert key in keys


def _rlhf(*args):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True)


def test_cli_config_prints_resolved_yaml():
    out = _rlhf("config", "ppo", "policy.lr=1e-6")
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["policy"]["lr"] == 1e-6
    assert "# Peak learning rate of AdamW." in out.stdout


def test_cli_config_error_is_one_line_and_nonzero():
    out = _rlhf("config", "ppo", "policy.lrr=1")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "rlhf: error: unknown config key 'policy.lrr'; did you mean 'policy.lr', 'policy.lora.r', 'policy.lora'?"
    ]
