"""`rlhf serve reward` on real Ray Serve bound to 127.0.0.1, with its client `RemoteScorer`.

One Serve instance for the module (one free port), three applications on it: a function reward with
exact numbers (`serve_function_reward` below, imported by the replica through the test PYTHONPATH of
`ray_cluster`), a tiny mean-variance reward model folder (rewards and stds), and, for one test, the
`rlhf serve reward` command itself in a subprocess joined to this cluster. Requests go over real HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from actors.remote_reward import RemoteRewardError, RemoteScorer, get_json
from actors.reward import build_scorer
from actors.reward_head import RewardHead
from cluster.dist import free_port
from orchestrator.tools.serve import ServeOptions, deploy, reward_config
from ppo_helpers import (RENDER_CHOSEN, RENDER_PROMPTS, RENDER_REJECTED, rendering_family, save_reward_model,
                         tiny_model_dir, tiny_ppo_config, train_rendering_rm, training_path_scores)

FN_BATCH = 16  # --max-batch-size of the function application
PROMPTS = ["Tell me about fruit.", "What color is a banana?", "Describe the ocean in a few words.",
           "What sound does a dog make?", "Can you describe birds for me?"]
RESPONSES = ["Apples and pears are sweet.", "A banana is yellow.", "Deep, blue and cold.", "A dog barks.",
             "Birds fly and sing in the trees, lol !!"]
REFERENCES = [None, "A banana is yellow.", None, "A dog barks.", None]
QUERY_TYPES = ["open", "closed", "open", "closed", None]


def serve_function_reward(prompts, responses, references=None):
    """Exact, per-pair distinct numbers: characters of the response + 0.25 x characters of the prompt
    + 100 when a reference is given; raises on the response 'boom' (a failing scorer)."""
    if "boom" in responses:
        raise RuntimeError("boom is not a response")
    return [len(r) + 0.25 * len(p) + (100.0 if ref is not None else 0.0) for p, r, ref in zip(prompts, responses, references)]


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    from ray import serve

    torch.set_num_threads(1)
    model_dir = tiny_model_dir(str(tmp_path_factory.mktemp("cache")))
    rm_dir = save_reward_model(model_dir, tmp_path_factory.mktemp("rm") / "mv",
                                RewardHead("mean_variance", norm_mean=0.3, norm_std=2.0))
    port = free_port("127.0.0.1")
    fn_cfg = reward_config(None, ["reward.kind=function", f"reward.function={__name__}:serve_function_reward",
                                  "reward.num_cpus=0.5"])
    rm_cfg = reward_config(rm_dir, ["reward.num_cpus=0.5", "reward.batch_size=2"])
    # a long batch wait on the function app so that concurrent requests surely meet in one batch
    fn_url = deploy(fn_cfg, ServeOptions(port=port, route="/fn", name="fn", max_batch_size=FN_BATCH, batch_wait_s=0.5))
    rm_url = deploy(rm_cfg, ServeOptions(port=port, route="/rm", name="rm", max_batch_size=8))
    yield dict(port=port, fn_url=fn_url, rm_url=rm_url, fn_cfg=fn_cfg, rm_cfg=rm_cfg, model_dir=model_dir)
    serve.shutdown()


def _post(url: str, body: bytes, method: str = "POST") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_urls_are_loopback(served):
    assert served["fn_url"] == f"http://127.0.0.1:{served['port']}/fn"
    assert get_json(served["fn_url"])["kind"] == "function"


def test_round_trip_function_is_exact(served):
    """Two requests of 3 + 2 pairs give exactly the in-process scorer's numbers, references included."""
    remote = RemoteScorer(served["fn_url"], timeout_s=60, batch_size=3)
    got = remote(PROMPTS, RESPONSES, REFERENCES, QUERY_TYPES)
    want = build_scorer(served["fn_cfg"])(PROMPTS, RESPONSES, REFERENCES, QUERY_TYPES)
    assert torch.equal(got.reward, want.reward) and got.std is None
    assert got.reward[1].item() == len(RESPONSES[1]) + 0.25 * len(PROMPTS[1]) + 100.0


def test_round_trip_reward_model_rewards_and_stds(served):
    """A distributional reward model: the normalised mean and the std come back as the in-process
    scorer computes them (same pairs per forward; float tolerance only for thread-count effects)."""
    remote = RemoteScorer(served["rm_url"], timeout_s=60, batch_size=2)
    got = remote(PROMPTS, RESPONSES, None, None)
    want = build_scorer(served["rm_cfg"])(PROMPTS, RESPONSES, None, None)
    assert got.std is not None and got.reward.shape == got.std.shape == (len(PROMPTS),)
    torch.testing.assert_close(got.reward, want.reward, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.std, want.std, rtol=1e-5, atol=1e-6)
    assert got.reward.std() > 1e-3  # the pairs score differently: a mix-up would show


def test_concurrent_requests_are_merged_and_split_back(served):
    """Six clients at once: Serve merges their pairs into fewer scorer calls (the replica's counters),
    and every client gets the scores of its own pairs."""
    url, scorer = served["fn_url"], build_scorer(served["fn_cfg"])
    before = get_json(url)
    jobs = [(PROMPTS[: k % 5 + 1], [f"{r} #{k}" for r in RESPONSES[: k % 5 + 1]]) for k in range(6)]
    results: dict = {}
    barrier = threading.Barrier(len(jobs))

    def client(k: int) -> None:
        prompts, responses = jobs[k]
        barrier.wait()
        try:
            results[k] = RemoteScorer(url, timeout_s=60, batch_size=FN_BATCH)(prompts, responses)
        except Exception as e:  # reported below, in the test's thread
            results[k] = e

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    after = get_json(url)
    for k, (prompts, responses) in enumerate(jobs):
        assert not isinstance(results[k], Exception), results[k]
        assert torch.equal(results[k].reward, scorer(prompts, responses).reward), k
    assert after["requests"] - before["requests"] == len(jobs)
    assert after["items"] - before["items"] == sum(len(p) for p, _ in jobs)
    assert after["batches"] - before["batches"] < len(jobs)
    assert after["largest_batch_requests"] >= 2


@pytest.mark.slow  # 200 requests from 8 clients
def test_under_load_no_answer_is_dropped_or_misrouted_and_latency_is_reported(served):
    """8 concurrent clients x 25 requests of 1-4 pairs each, every response text unique to its client and
    request, against an application with a short batch wait: each client gets exactly the scores of its own
    pairs, in order; the p50 / p99 request latency is printed (pytest -s shows it)."""
    from ray import serve

    url = deploy(served["fn_cfg"], ServeOptions(port=served["port"], route="/load", name="load", max_batch_size=FN_BATCH,
                                                batch_wait_s=0.005))
    scorer = build_scorer(served["fn_cfg"])
    clients, per_client = 8, 25
    latencies: list[float] = []
    failures: list = []
    lock = threading.Lock()

    def client(c: int) -> None:
        remote = RemoteScorer(url, timeout_s=60, batch_size=FN_BATCH, retries=0)
        for k in range(per_client):
            n = (c + k) % 4 + 1
            prompts, responses = PROMPTS[:n], [f"client {c} request {k} pair {i} " + "x" * (c * k % 7) for i in range(n)]
            t0 = time.perf_counter()
            try:
                got = remote(prompts, responses).reward
            except Exception as e:  # noqa: BLE001  (reported below)
                with lock:
                    failures.append(e)
                continue
            dt = time.perf_counter() - t0
            want = scorer(prompts, responses).reward
            with lock:
                latencies.append(dt)
                if not torch.equal(got, want):
                    failures.append((c, k, got.tolist(), want.tolist()))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    wall = time.perf_counter() - t0
    serve.delete("load")
    assert not failures, failures[:3]
    assert len(latencies) == clients * per_client
    ordered = sorted(latencies)
    p50, p99 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    print(f"\nrlhf serve reward under load: {len(latencies)} requests from {clients} clients in {wall:.1f} s; "
          f"latency p50 {1000 * p50:.1f} ms, p99 {1000 * p99:.1f} ms")


@pytest.mark.parametrize("body, status, field", [
    (b"not json", 400, "JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"responses": ["a"]}', 400, "'prompts'"),
    (b'{"prompts": ["q"]}', 400, "'responses'"),
    (b'{"prompts": "q", "responses": ["a"]}', 400, "'prompts'"),
    (b'{"prompts": ["q", 3], "responses": ["a", "b"]}', 400, "'prompts' item 1"),
    (b'{"prompts": ["q"], "responses": ["a", "b"]}', 400, "'responses' has 2 items"),
    (b'{"prompts": ["q"], "responses": ["a"], "references": [null, "x"]}', 400, "'references'"),
    (b'{"prompts": ["q"], "responses": ["a"], "query_types": ["maybe"]}', 400, "'query_types'"),
    (b'{"prompts": ["q"], "response": ["a"]}', 400, "'response'"),
    (json.dumps({"prompts": ["q"] * (FN_BATCH + 1), "responses": ["a"] * (FN_BATCH + 1)}).encode(), 413, "'prompts'"),
])
def test_malformed_request_gets_4xx_naming_the_field_then_serving_goes_on(served, body, status, field):
    url = served["fn_url"]
    rejected = get_json(url)["rejected"]
    code, answer = _post(url, body)
    assert code == status and field in answer["error"], answer
    assert get_json(url)["rejected"] == rejected + 1
    code, answer = _post(url, json.dumps({"prompts": ["q"], "responses": ["ab"]}).encode())
    assert code == 200 and answer == {"rewards": [2.25], "stds": None}


def test_wrong_method_and_failing_scorer(served):
    url = served["fn_url"]
    code, answer = _post(url, b"{}", method="PUT")
    assert code == 405 and "POST" in answer["error"]
    with pytest.raises(RemoteRewardError, match=r"/fn answered HTTP 500: the reward scorer failed: RuntimeError: reward.function .* raised RuntimeError: boom"):
        RemoteScorer(url, 60, 4)(["q"], ["boom"])
    assert RemoteScorer(url, 60, 4)(["q"], ["ab"]).reward.tolist() == [2.25]  # the replica serves on


def test_client_names_the_server_limit(served):
    with pytest.raises(RemoteRewardError, match=rf"HTTP 413: field 'prompts' has {FN_BATCH + 1} items.*--max-batch-size"):
        RemoteScorer(served["fn_url"], 60, FN_BATCH + 1)(["q"] * (FN_BATCH + 1), ["a"] * (FN_BATCH + 1))


@pytest.mark.slow  # a PPO run, a subprocess or two trained reward models
def test_ppo_with_a_remote_reward(served, tmp_path):
    """PPO (local mode) scores every rollout through the server: reward.kind=remote reward.url=..."""
    from orchestrator.registry import run

    url = served["fn_url"]
    before = get_json(url)["items"]
    cfg = tiny_ppo_config(served["model_dir"], str(tmp_path / "run"), "reward.kind=remote", f"reward.url={url}",
                          "reward.batch_size=8")
    summary = run("ppo", cfg)
    assert summary["steps"] == 2
    assert get_json(url)["items"] - before >= 2 * cfg.ppo.rollout_batch_size


@pytest.mark.slow  # a PPO run, a subprocess or two trained reward models
def test_cli_serves_until_sigterm(served):
    """`rlhf serve reward` joined to this cluster: prints the URL, answers, and deletes its application
    on SIGTERM (what `ray job stop` sends), exiting 0."""
    import ray
    from ray import serve

    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address,
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "orchestrator.cli", "serve", "reward", "--port", str(served["port"]), "--route", "/cli",
           "--name", "cli", "reward.kind=function", f"reward.function={__name__}:serve_function_reward", "reward.num_cpus=0.5"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{served['port']}/cli"
        lines = []
        while not any(f"at {url} " in line for line in lines):  # blocks until the URL is printed (or the process ends)
            lines.append(proc.stdout.readline())
            assert lines[-1], (lines, proc.stderr.read())
        assert RemoteScorer(url, 60, 4)(["q"], ["ab"]).reward.tolist() == [2.25]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 60  # the controller deletes the application after the command exits
    while "cli" in serve.status().applications and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "cli" not in serve.status().applications
    assert "fn" in serve.status().applications  # the other applications are untouched


@pytest.mark.slow  # a PPO run, a subprocess or two trained reward models
@pytest.mark.parametrize("kind", ["chatml", "plain"])
def test_served_reward_model_scores_the_tokens_it_was_trained_on(served, kind, tmp_path):
    """The serving path of the one rendering (tests/test_rendering.py has training, evaluation and PPO):
    a reward model trained by `rlhf rm`, served, scores chat and plain prompts sent over HTTP exactly as
    its training role scored the same pairs (1e-5), for a ChatML and a plain tokenizer."""
    from ray import serve
    from transformers import AutoConfig

    family = rendering_family(kind, tmp_path / kind)
    folder = train_rendering_rm(family, tmp_path / "rm")
    training = training_path_scores(folder, family)
    head = RewardHead.from_config(AutoConfig.from_pretrained(folder))
    url = deploy(reward_config(folder, ["reward.num_cpus=0.5"]),
                 ServeOptions(port=served["port"], route=f"/render-{kind}", name=f"render-{kind}"))
    try:
        for column, responses in enumerate((RENDER_CHOSEN, RENDER_REJECTED)):
            status, body = _post(url, json.dumps({"prompts": RENDER_PROMPTS, "responses": responses}).encode())
            assert status == 200, body
            served_raw = torch.tensor(body["rewards"]) * head.norm_std + head.norm_mean
            torch.testing.assert_close(served_raw, training[:, column], rtol=0, atol=1e-5)
    finally:
        serve.delete(f"render-{kind}")
