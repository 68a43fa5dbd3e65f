"""`rlhf serve reward` without Ray: bad input stops with one line and exit 2 before anything starts,
and the client `RemoteScorer` fails clearly, naming the URL, when nothing (or nothing useful) listens.
The round trips through real Serve are in tests/test_serve_ray.py."""

from __future__ import annotations

import socket

import pytest

from actors.remote_reward import RemoteRewardError, RemoteScorer
from cluster.dist import free_port
from orchestrator.cli import main


@pytest.mark.parametrize("argv, message", [
    ([], "say what to serve: --path FOLDER"),
    (["--port", "0", "reward.kind=function"], "--port must be in 1..65535 (got 0)"),
    (["--route", "reward", "reward.kind=function"], "--route must start with '/'"),
    (["--max-batch-size", "0", "reward.kind=function"], "--max-batch-size must be >= 1"),
    (["--batch-wait-s", "-1", "reward.kind=function"], "--batch-wait-s must be >= 0"),
    (["reward.kindd=model"], "'reward.kindd'"),
    (["reward.kind=remote", "reward.url=http://127.0.0.1:1/"], "remote is the client of a reward server"),
    (["reward.kind=function", "reward.function=no_such_module:f"], "cannot import module 'no_such_module'"),
    (["--path", "/no/such/folder"], "reward.path='/no/such/folder' is not a readable reward model"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    import ray

    assert main(["serve", "reward", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf: error: ") and message in err and err.count("\n") == 1, err
    assert not ray.is_initialized()


def test_dead_url_names_the_url():
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}/reward"
    with pytest.raises(RemoteRewardError, match=rf"cannot reach the reward server {url} \(.*refused.*\); is `rlhf serve reward` running"):
        RemoteScorer(url, timeout_s=5, batch_size=4)(["q"], ["a"])


def test_silent_server_times_out_naming_the_url():
    """A socket that accepts connections and never answers: the client gives up after timeout_s."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        with pytest.raises(RemoteRewardError, match=rf"reward server {url} did not answer within 0.5 s \(2 attempts\)"):
            RemoteScorer(url, timeout_s=0.5, batch_size=4, retries=1)(["q"], ["a"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(url="ftp://host/x"), "must be an http:// or https:// URL"),
    (dict(url="http://127.0.0.1:8000/", timeout_s=0), "timeout_s must be > 0"),
    (dict(url="http://127.0.0.1:8000/", batch_size=0), "batch_size must be >= 1"),
])
def test_client_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RemoteScorer(**kwargs)
