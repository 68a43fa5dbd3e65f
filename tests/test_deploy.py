"""The cluster examples in cluster/deploy/: the KubeRay RayJob manifest parses, is consistent (shared
storage on every pod, enough GPUs for the placement its entrypoint plans), and its entrypoint passes a
dry run here; the runtime_env for `ray job submit` is one Ray accepts and installs what the package needs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "cluster" / "deploy"


def _rayjob() -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all((DEPLOY / "rayjob.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "RayJob")
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    return job, pvc


def test_rayjob_manifest_is_consistent():
    job, pvc = _rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["rlhf", "ppo"]
    overrides = dict(a.split("=", 1) for a in argv[2:])
    cluster = spec["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:  # every pod mounts the shared claim, at the path run.output_dir lives under
        claim = next(v for v in pod["volumes"] if v.get("persistentVolumeClaim"))
        assert claim["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        mount = next(m for c in pod["containers"] for m in c["volumeMounts"] if m["name"] == claim["name"])
        assert overrides["run.output_dir"].startswith(mount["mountPath"] + "/")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["RLHF_CACHE"].startswith("/shared/")
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"


def test_rayjob_entrypoint_dry_run_plans_what_the_workers_hold(tmp_path):
    """The manifest's entrypoint, exactly, plus --dry-run: config, data and models are checked, the
    placement plan printed, nothing written (the /shared output_dir does not exist here and is not made),
    nothing trained: on an empty cache the SFT warm start of builtin:tiny is checked through its base."""
    job, _ = _rayjob()
    argv = shlex.split(job["spec"]["entrypoint"])
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RLHF_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv[1:], "--dry-run"], capture_output=True,
                          text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "nothing was written or started" in out and "a fresh run" in out
    assert not Path("/shared/runs/ppo").exists()
    built = sorted(p.name.rsplit("-", 1)[0] for p in (cache / "builtin").iterdir())
    assert not [name for name in built if "-sft" in name], built  # the base model and tokenizer only
    assert "checked through builtin:tiny-base" in proc.stderr
    total = re.search(r"in all: (\{.*?\})", out).group(1)
    gpus_needed = float(yaml.safe_load(total.replace("'", '"')).get("GPU", 0))
    assert gpus_needed == 5  # policy+reference 2 x 1, critic 2 x 1, reward 1 x 1
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus_per_node = [int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) for g in workers]
    assert max(gpus_per_node) >= 2  # PACK puts a role's replicas on one node when they fit
    assert sum(n * g["replicas"] for n, g in zip(gpus_per_node, workers)) >= gpus_needed


def test_runtime_env_installs_the_package_dependencies():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((DEPLOY / "runtime_env.yaml").read_text())
    assert set(env) <= {"working_dir", "excludes", "pip", "env_vars", "image_uri", "py_modules", "conda"}
    RuntimeEnv(**env)  # Ray's own validation of the fields
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    name = lambda spec: re.split(r"[<>=\[ ]", spec, maxsplit=1)[0].lower()  # noqa: E731
    wanted = {name(d) for d in deps} - {"torch", "ray"}  # the cluster's image provides these
    assert {name(p) for p in env["pip"]} == wanted
