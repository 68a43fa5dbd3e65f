"""Runs that fail well: every error after start is one line naming its cause, with the traceback in
output_dir/error.log; non-finite numbers never reach an optimizer step or a checkpoint; early checks
of reward functions and endpoints. Local mode, no Ray."""

import math
import os

import pytest
import torch

from ppo_helpers import length_reward, tiny_model_dir, tiny_ppo_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(str(tmp_path_factory.mktemp("cache")))


def nan_after_first(prompts, responses, references=None):
    """NaN for every response once $RLHF_NAN_FROM calls have been made (0: from the first)."""
    calls = int(os.environ.get("RLHF_NAN_CALLS", "0"))
    os.environ["RLHF_NAN_CALLS"] = str(calls + 1)
    if calls >= int(os.environ.get("RLHF_NAN_FROM", "0")):
        return [math.nan] * len(responses)
    return length_reward(prompts, responses, references)


def wrong_count(prompts, responses, references=None):
    return [1.0]


def two_args(prompts, responses):
    return [0.0] * len(responses)


def _error_lines(capsys) -> list[str]:
    """The rlhf lines of stderr (progress bars and logs aside); stderr never holds a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("rlhf:")]


def _weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def test_nan_reward_stops_before_any_update_naming_the_reward(model_dir, tmp_path, monkeypatch, capsys):
    """The default run.on_nonfinite=raise: the start evaluation already sees the NaN; through the CLI it is
    one line naming the reward function and a prompt, exit 1, the traceback in output_dir/error.log."""
    from orchestrator.cli import main

    monkeypatch.setenv("RLHF_NAN_FROM", "0")
    monkeypatch.setenv("RLHF_NAN_CALLS", "0")
    out = tmp_path / "run"
    cfg = tiny_ppo_config(model_dir, str(out), f"reward.function={__name__}:nan_after_first")
    overrides = [f"{k}={v}" for k, v in (("policy.path", model_dir), ("run.output_dir", out))]
    code = main(["ppo", *overrides, "run.mode=local", "run.steps=2", "ppo.rollout_batch_size=8", "ppo.minibatch_size=4",
                 "policy.micro_batch_size=2", "critic.micro_batch_size=2", "policy.max_new_tokens=8", "data.max_rows=64",
                 "reward.kind=function", f"reward.function={__name__}:nan_after_first"])
    err = _error_lines(capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("rlhf: error: NonFiniteError: the reward (reward.function=test_failures:nan_after_first) "
                             "is not finite for ")
    assert f"full traceback in {out / 'error.log'}" in err[0] and "Traceback" in (out / "error.log").read_text()
    assert not (out / "checkpoints").exists() and cfg.run.on_nonfinite == "raise"


def test_skip_mode_drops_nan_steps_without_an_update_and_stops_after_too_many(model_dir, tmp_path, monkeypatch):
    """run.on_nonfinite=skip: steps whose rewards are NaN are dropped (no optimizer step: the exported policy
    is the one before them) and counted; more than run.max_skipped_steps in a row stops the run."""
    from actors.trainer import NonFiniteError
    from orchestrator.registry import run

    monkeypatch.setenv("RLHF_NAN_FROM", "3")  # start eval (1 call) and steps 1-2 fine, then NaN
    monkeypatch.setenv("RLHF_NAN_CALLS", "0")
    common = [f"reward.function={__name__}:nan_after_first", "run.on_nonfinite=skip", "run.save_every=1", "run.keep_checkpoints=10"]
    out = tmp_path / "skip"
    with pytest.raises(NonFiniteError, match=r"\(3 steps in a row, more than run.max_skipped_steps=2\)"):
        run("ppo", tiny_ppo_config(model_dir, str(out), *common, "run.steps=6", "run.max_skipped_steps=2"))
    import json

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["nonfinite/skipped_steps"] for r in records[1:]] == [0.0, 0.0, 1.0, 2.0]
    assert all(math.isfinite(v) for r in records for v in r.values())
    # the checkpoints of the skipped steps hold exactly the weights after step 2: no update on a NaN
    after2, after4 = _weights(out / "checkpoints" / "step_000002" / "policy_hf"), _weights(out / "checkpoints" / "step_000004" / "policy_hf")
    assert all(torch.equal(after2[k], after4[k]) for k in after2)
    after1 = _weights(out / "checkpoints" / "step_000001" / "policy_hf")
    assert not all(torch.equal(after1[k], after2[k]) for k in after1)  # a finite step does update


def test_trainer_refuses_a_non_finite_loss_and_a_checkpoint_of_non_finite_weights(model_dir, tmp_path):
    from actors.engine import build_engine, save_checkpoint
    from actors.modeling import load_causal_lm
    from actors.trainer import MicroLoss, NonFiniteError, train_step
    from cluster import init_local
    from orchestrator.registry import load_config

    init_local()
    cfg = load_config("ppo", None, ["policy.micro_batch_size=1"]).policy
    engine = build_engine(load_causal_lm(model_dir), cfg, train=True, total_steps=2, minibatch_size=1)
    before = {k: v.clone() for k, v in engine.module.state_dict().items()}

    def nan_loss(_micro):
        out = engine(input_ids=torch.tensor([[1, 2, 3]])).logits[..., 0]
        return MicroLoss(out * math.nan, torch.ones_like(out))

    with pytest.raises(NonFiniteError, match="policy loss is not finite .* no update was made"):
        train_step(engine, [None], nan_loss, 3.0, "policy")
    assert all(torch.equal(before[k], v) for k, v in engine.module.state_dict().items())
    with torch.no_grad():
        next(engine.module.parameters()).view(-1)[0] = math.inf
    with pytest.raises(FloatingPointError, match="weights are not finite; no checkpoint is written"):
        save_checkpoint(engine, tmp_path / "ckpt", tag="policy")
    assert not (tmp_path / "ckpt" / "policy").exists()


@pytest.mark.parametrize("extra, message", [
    ([f"reward.function={__name__}:two_args"], "must accept (prompts, responses, references)"),
    (["reward.function=no_such_module:f"], "cannot import module 'no_such_module'"),
    (["reward.kind=remote", "reward.url=http://127.0.0.1:9/reward"], "does not answer its health check"),
])
def test_reward_problems_found_before_any_role_starts(model_dir, tmp_path, extra, message, capsys, monkeypatch):
    import actors.policy
    from orchestrator.cli import main

    monkeypatch.setattr(actors.policy.PolicyActor, "__init__", lambda *a, **k: pytest.fail("a role started"))
    code = main(["ppo", f"policy.path={model_dir}", f"run.output_dir={tmp_path}", "run.mode=local", "data.max_rows=8",
                 "reward.kind=function", *extra])
    err = _error_lines(capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_a_reward_that_breaks_mid_run_is_one_line_naming_the_role(model_dir, tmp_path, capsys):
    from orchestrator.cli import main

    code = main(["ppo", f"policy.path={model_dir}", f"run.output_dir={tmp_path}", "run.mode=local", "data.max_rows=8",
                 "ppo.rollout_batch_size=8", "ppo.minibatch_size=8", "policy.max_new_tokens=4",
                 "reward.kind=function", f"reward.function={__name__}:wrong_count"])
    err = _error_lines(capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("rlhf: error: role 'reward' replica 0/1: RewardActor.score raised ValueError: "
                             f"reward.function '{__name__}:wrong_count' returned 1 scores for ")


def test_a_truncated_checkpoint_file_is_named_and_auto_resume_falls_back(model_dir, tmp_path, caplog, capsys):
    """A role's checkpoint file cut short after it was written (a full disk, an interrupted copy):
    run.resume=<it> is one line naming the file; run.resume=auto passes over it to the one before."""
    import json

    from orchestrator.cli import main
    from orchestrator.registry import load_config
    from orchestrator.registry import run

    out = tmp_path / "sft"
    args = [f"policy.path={model_dir}", f"run.output_dir={out}", "run.mode=local", "sft.batch_size=8",
            "policy.micro_batch_size=8", "policy.warmup_steps=0", "data.max_rows=32", "sft.eval_rows=8",
            "policy.max_new_tokens=4", "run.save_every=1", "run.keep_checkpoints=5"]
    run("sft", load_config("sft", None, args + ["run.steps=3"]))
    latest = out / "checkpoints" / "step_000003"
    victim = max((p for p in latest.rglob("*") if p.is_file() and p.suffix == ".pt"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])

    assert main(["sft", *args, "run.steps=4", f"run.resume={latest}"]) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and f"the checkpoint is damaged: {victim} is truncated or changed" in err[0], err
    with caplog.at_level("WARNING"):
        run("sft", load_config("sft", None, args + ["run.steps=4"]))
    assert f"checkpoint {latest} is damaged ({victim} is truncated" in caplog.text
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]  # resumed after step 2: steps 3 and 4 written once each


def test_unwritable_output_dir_and_a_full_disk_during_a_checkpoint(model_dir, tmp_path, capsys):
    """An output_dir that cannot be written: one line before anything starts. A checkpoint that runs out of
    space (RLIMIT_FSIZE in a child process: writes past 256 KiB fail): one line naming the step and the
    checkpoint left intact, which a later run resumes from."""
    import json
    import subprocess
    import sys

    from orchestrator.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    args = [f"policy.path={model_dir}", "run.mode=local", "sft.batch_size=8", "policy.micro_batch_size=8",
            "policy.warmup_steps=0", "data.max_rows=32", "sft.eval_rows=8", "policy.max_new_tokens=4", "run.save_every=1",
            "run.keep_checkpoints=5"]
    assert main(["sft", *args, f"run.output_dir={blocker / 'run'}"]) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and err[0].startswith("rlhf: error: config key 'run.output_dir':") and "is not writable" in err[0]

    out = tmp_path / "sft"
    assert main(["sft", *args, f"run.output_dir={out}", "run.steps=2"]) == 0
    child = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY)); "
             "from orchestrator.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", child, "sft", *args, f"run.output_dir={out}", "run.steps=3"],
                          capture_output=True, text=True, env=env, timeout=600)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("rlhf:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and "writing the checkpoint of step 3 failed" in lines[0], lines
    assert f"the last complete checkpoint, {out / 'checkpoints' / 'step_000002'}, is intact" in lines[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    assert main(["sft", *args, f"run.output_dir={out}", "run.steps=3"]) == 0  # space again: resumes from step 2
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]


def test_remote_reward_retries_transient_errors_with_backoff_and_not_the_others():
    """A real HTTP server on 127.0.0.1 that answers 503 a given number of times before scoring: the client
    retries transient errors (with back-off) up to reward.retries and names the attempts when the budget is
    spent; a 400 (a request a retry cannot fix) is raised at once."""
    import json as _json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from actors.remote_reward import RemoteRewardError, RemoteScorer

    state = {"fail": 0, "status": 503, "posts": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = _json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["posts"] += 1
            if state["fail"] > 0:
                state["fail"] -= 1
                code, answer = state["status"], {"error": "busy"}
            else:
                code, answer = 200, {"rewards": [float(len(r)) for r in body["responses"]], "stds": None}
            raw = _json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        state.update(fail=2, posts=0)
        assert RemoteScorer(url, 10, 8, retries=2)(["q", "q"], ["ab", "abc"]).reward.tolist() == [2.0, 3.0]
        assert state["posts"] == 3  # two 503s, then the answer
        state.update(fail=5, posts=0)
        with pytest.raises(RemoteRewardError, match=r"answered HTTP 503: busy \(3 attempts\)"):
            RemoteScorer(url, 10, 8, retries=2)(["q"], ["ab"])
        state.update(fail=1, status=400, posts=0)
        with pytest.raises(RemoteRewardError, match="answered HTTP 400"):
            RemoteScorer(url, 10, 8, retries=2)(["q"], ["ab"])
        assert state["posts"] == 1
    finally:
        server.shutdown()


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_a_finite_loss_with_non_finite_gradients_makes_no_update_at_any_zero_stage(model_dir, stage):
    """sqrt at 0: the loss is 0, its gradient infinite. ZeRO 0-1: the trainer finds it before the step;
    ZeRO 2-3: DeepSpeed's overflow check skips the step and the trainer raises on its norm. Either way the
    weights are unchanged and finite."""
    from actors.engine import build_engine, gathered_params
    from actors.modeling import load_causal_lm
    from actors.trainer import MicroLoss, NonFiniteError, train_step
    from cluster import init_local
    from orchestrator.registry import load_config

    init_local()
    cfg = load_config("ppo", None, ["policy.micro_batch_size=1", f"policy.zero_stage={stage}"]).policy
    engine = build_engine(load_causal_lm(model_dir), cfg, train=True, total_steps=2, minibatch_size=1)
    with gathered_params(engine) as model:
        before = [p.detach().clone() for p in model.parameters()]

    def infinite_gradient(_micro):
        out = engine(input_ids=torch.tensor([[1, 2, 3]])).logits[..., 0]
        return MicroLoss(torch.sqrt(out - out.detach()), torch.ones_like(out))

    with pytest.raises(NonFiniteError, match="policy gradient"):
        train_step(engine, [None], infinite_gradient, 3.0, "policy")
    with gathered_params(engine) as model:
        assert all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
