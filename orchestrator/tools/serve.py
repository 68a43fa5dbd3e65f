"""`rlhf serve reward`: any reward of `actors.reward.build_scorer` as a Ray Serve HTTP JSON endpoint.

    rlhf serve reward --path FOLDER [--host 127.0.0.1] [--port 8000] [--route /] [--replicas N]
                      [--max-batch-size B] [--batch-wait-s S] [--name reward] [reward.key=value ...]

`--path FOLDER` serves a saved reward model (`reward.kind=model reward.path=FOLDER`); any other kind
comes from overrides (`reward.kind=function reward.function=mod:fn`, `reward.kind=relevance`,
`reward.kind=weighted ...`), checked like PPO's `reward.*` keys before Ray starts. PPO then scores
with `reward.kind=remote reward.url=<printed URL>` (`actors.remote_reward.RemoteScorer`).

Wire format (one route; the client documents the same)::

    POST <route>  {"prompts": [str | [{"role", "content"}, ...]], "responses": [str],
                   "references": [str|null] | null, "query_types": ["open"|"closed"|null] | null}
    200           {"rewards": [float], "stds": [float] | null}      (stds: distributional rewards)
    4xx           {"error": "..."}   malformed request; the message names the field
                  (400 bad JSON / field / type / lengths, 405 method, 413 too many pairs or bytes)
    500           {"error": "..."}   the scorer raised or returned a non-finite reward
    GET  <route>  {"kind", "max_batch_size", "batch_wait_s", "requests", "batches", "items",
                   "largest_batch_requests", "largest_batch_items", "rejected", "failed"}
                  (health and batching statistics of the replica that answers)

Batching: every replica validates each request on its own (a malformed one never reaches the scorer
and never fails anyone else's), then `@serve.batch` merges the pairs of concurrent requests into ONE
scorer call of at most `--max-batch-size` pairs (Serve's `batch_size_fn` counts pairs, not requests),
waiting at most `--batch-wait-s` for more to arrive, and splits the rewards back per request. The
scorer runs in a worker thread, so the replica keeps accepting (and merging) requests meanwhile.
A request with more pairs than `--max-batch-size` gets 413 naming the limit (clients split:
PPO's `reward.batch_size` is the request size). If the scorer raises, every request of that merged
call gets a 500 with its message and the replica serves on.

Hosting: the Ray cluster of `cluster.connect` (the `ray job submit` cluster, RAY_ADDRESS, or a new
local one). HTTP binds 127.0.0.1 unless `--host` says otherwise: the endpoint has no
authentication, so `--host 0.0.0.0` exposes the reward to the network (needed when PPO runs on another
node). One Serve instance per cluster owns one host:port; a second `rlhf serve reward` on the same
cluster must use the same --host/--port and another --name and --route. Each replica reserves
`reward.num_cpus` CPUs and `reward.num_gpus` GPUs (0 on a cluster without GPUs).

Running it: the command prints the URL and blocks; Ctrl-C (or SIGTERM) deletes the application and
exits 0. Detached, on a running cluster::

    ray job submit --address http://127.0.0.1:8265 --no-wait -- rlhf serve reward --path rm_dir
    ray job logs <id>        # the URL line
    ray job stop <id>        # SIGTERM: the application is deleted

or in the background of a shell: `nohup rlhf serve reward --path rm_dir > serve.log 2>&1 &`, then
`kill %1`. If the process is killed hard (SIGKILL) on a cluster that outlives it, the application stays
up until `serve delete <name>` or `serve shutdown`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import signal
import time
from dataclasses import dataclass

from orchestrator.config import ConfigError, RewardConfig

log = logging.getLogger(__name__)

__all__ = ["ServeOptions", "RequestError", "ScoreRequest", "parse_request", "RewardServer", "reward_config",
           "deploy", "run", "add_args"]

FIELDS = ("prompts", "responses", "references", "query_types")
QUERY_TYPES = ("open", "closed")
MAX_BODY_BYTES = 64 * 2**20
"""Largest request body read (413 above): a bound on what one request can make a replica hold."""


# --------------------------------------------------------------------------------- options, config


@dataclass
class ServeOptions:
    """The serving flags of `rlhf serve reward` (the reward itself is a `RewardConfig`)."""

    host: str = "127.0.0.1"
    """Interface the HTTP proxy binds; 0.0.0.0 exposes the (unauthenticated) endpoint to the network."""
    port: int = 8000
    """HTTP port of the Serve proxy."""
    route: str = "/"
    """URL path of the endpoint (Serve's route_prefix)."""
    name: str = "reward"
    """Serve application name (`serve status`, `serve delete <name>`)."""
    replicas: int = 1
    """Serve replicas, each with its own copy of the scorer; requests are spread over them."""
    max_batch_size: int = 64
    """Most (prompt, response) pairs per scorer call, merged over concurrent requests; also the per-request limit."""
    batch_wait_s: float = 0.01
    """Longest wait for more requests before scoring a batch that is not full."""

    def validate(self) -> None:
        def check(ok: bool, flag: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"--{flag.replace('_', '-')} {msg} (got {getattr(self, flag)!r})")

        check(bool(self.host.strip()), "host", "must not be empty")
        check(1 <= self.port <= 65535, "port", "must be in 1..65535")
        check(self.route.startswith("/") and (self.route == "/" or not self.route.endswith("/")), "route",
              "must start with '/' and not end with '/', e.g. / or /reward")
        check(not any(c.isspace() or c in "{}?#" for c in self.route), "route", "must be a plain URL path")
        check(bool(self.name) and all(c.isalnum() or c in "-_" for c in self.name), "name",
              "must be letters, digits, '-' or '_'")
        check(self.replicas >= 1, "replicas", "must be >= 1")
        check(self.max_batch_size >= 1, "max_batch_size", "must be >= 1")
        check(math.isfinite(self.batch_wait_s) and self.batch_wait_s >= 0, "batch_wait_s", "must be >= 0")

    def url(self, host: str | None = None) -> str:
        host = host or self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}{self.route}"


@dataclass
class _Served:
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    """The reward to serve: the same keys as PPO's reward.*."""


def reward_config(path: str | None, overrides: list[str]):
    """The served `RewardConfig`: `--path` means kind=model at that folder; `reward.*` overrides win.

    Checked as in PPO before anything starts (ConfigError naming the key): the keys and values, the
    reward model folder's head against reward.statistic, and a kind=function's import.
    """
    from actors.reward import check_reward_config
    from orchestrator.config import load, validate
    from orchestrator.jobs.rewards import reward_functions

    model = [] if not path else ["reward.kind=model", f"reward.path={path}"]
    served = load(_Served, None, model + list(overrides), check=False)  # unknown keys and bad types fail here
    if not path and not any(o.split("=", 1)[0].strip() == "reward.kind" for o in overrides):
        raise ConfigError("say what to serve: --path FOLDER (a saved reward model) or reward.kind=... "
                          "(e.g. reward.kind=function reward.function=module:function)")
    validate(served)  # values, naming the key
    cfg = served.reward
    if cfg.kind == "remote":
        raise ConfigError("config key 'reward.kind': remote is the client of a reward server and cannot be served")
    try:
        check_reward_config(cfg, reward_functions(cfg))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


# --------------------------------------------------------------------------------- requests


class RequestError(ValueError):
    """A malformed request: `status` (4xx) and a message that names the field."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class ScoreRequest:
    """One validated request; every list has N rows."""

    prompts: list  # (N,) str
    responses: list  # (N,) str
    references: list  # (N,) str or None
    query_types: list  # (N,) 'open' | 'closed' | None

    def __len__(self) -> int:
        return len(self.responses)


def parse_request(body: bytes, max_items: int) -> ScoreRequest:
    """The request body as a `ScoreRequest`, or RequestError naming the first bad field."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(f"request body has {len(body)} bytes, more than {MAX_BODY_BYTES}", status=413)
    try:
        payload = json.loads(body)
    except ValueError as e:  # also UnicodeDecodeError
        raise RequestError(f"request body is not JSON ({e})") from None
    if not isinstance(payload, dict):
        raise RequestError(f"request body must be a JSON object with the fields {', '.join(FIELDS)}; got {type(payload).__name__}")
    for key in payload:
        if key not in FIELDS:
            raise RequestError(f"unknown field {key!r}; the fields are {', '.join(FIELDS)}")
    for key in ("prompts", "responses"):
        if key not in payload:
            raise RequestError(f"field {key!r} is missing (a list of strings)")
    n = None
    rows = {}
    for key in FIELDS:
        values = payload.get(key)
        if values is None and key in ("references", "query_types"):
            continue
        if not isinstance(values, list):
            raise RequestError(f"field {key!r} must be a list, got {_json_type(values)}")
        if n is None:
            n = len(values)
            if n > max_items:
                raise RequestError(f"field {key!r} has {n} items, more than this server's limit of {max_items} "
                                   f"per request (--max-batch-size); send smaller requests", status=413)
        elif len(values) != n:
            raise RequestError(f"field {key!r} has {len(values)} items but 'prompts' has {n}")
        nullable = key != "prompts" and key != "responses"
        for i, v in enumerate(values):
            if key == "prompts" and isinstance(v, list):
                _check_chat(v, i)
                continue
            if not (isinstance(v, str) or (nullable and v is None)):
                expected = "a string or null" if nullable else "a string or a chat list" if key == "prompts" else "a string"
                raise RequestError(f"field {key!r} item {i} must be {expected}, got {_json_type(v)}")
            if key == "query_types" and v is not None and v not in QUERY_TYPES:
                raise RequestError(f"field 'query_types' item {i} is {v!r}; expected 'open', 'closed' or null")
        rows[key] = values
    return ScoreRequest(rows["prompts"], rows["responses"], rows.get("references") or [None] * n,
                        rows.get("query_types") or [None] * n)


def _check_chat(messages: list, i: int) -> None:
    """A prompt given as a chat: the data loader's check of a chat prompt (`orchestrator.data.rows`)."""
    from orchestrator.data import DataError
    from orchestrator.data.rows import prompt_messages

    try:
        prompt_messages("request", f"prompts[{i}]", messages)
    except DataError as e:
        raise RequestError(str(e)[:300]) from None


def _json_type(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)


def _pairs(requests: list[ScoreRequest]) -> int:
    """Serve's batch size of a list of requests: the pairs they hold."""
    return sum(len(r) for r in requests)


# --------------------------------------------------------------------------------- the deployment


class RewardServer:
    """One Serve replica: a scorer from `build_scorer`, behind validation and `@serve.batch`."""

    def __init__(self, cfg, functions: dict, max_batch_size: int, batch_wait_s: float):
        from ray import serve

        import cluster
        from actors.reward import build_scorer, reward_parts

        self.kind, self.max_batch_size, self.batch_wait_s = cfg.kind, max_batch_size, batch_wait_s
        if any(part.kind == "model" for part in reward_parts(cfg)):
            cluster.init_local()  # a model reward builds a frozen engine: this replica is its own world of one
        self.scorer = build_scorer(cfg, functions=functions)

        async def score_merged(requests: list[ScoreRequest]) -> list[dict]:
            return await self._score_merged(requests)

        # a request waits here until max_batch_size pairs (Serve counts them with batch_size_fn) or
        # batch_wait_s have gathered; then one call scores them all
        self._score_batch = serve.batch(score_merged, max_batch_size=max_batch_size,
                                        batch_wait_timeout_s=batch_wait_s, batch_size_fn=_pairs)
        self.stats = dict(requests=0, batches=0, items=0, largest_batch_requests=0, largest_batch_items=0,
                          rejected=0, failed=0)

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        if request.method == "GET":
            return JSONResponse(dict(kind=self.kind, max_batch_size=self.max_batch_size,
                                     batch_wait_s=self.batch_wait_s, **self.stats))
        try:
            if request.method != "POST":
                raise RequestError(f"method {request.method} is not allowed; POST a JSON body (GET: statistics)", 405)
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                raise RequestError(f"request body has {length} bytes, more than {MAX_BODY_BYTES}", status=413)
            req = parse_request(await request.body(), self.max_batch_size)
        except RequestError as e:
            self.stats["rejected"] += 1
            return JSONResponse({"error": str(e)}, status_code=e.status)
        if not len(req):
            return JSONResponse({"rewards": [], "stds": None})
        try:
            answer = await self._score_batch(req)
        except Exception as e:  # the scorer raised: this merged batch fails, the replica serves on
            log.exception("reward scorer failed")
            answer = {"error": f"the reward scorer failed: {type(e).__name__}: {e}"}
        if "error" in answer:
            self.stats["failed"] += 1
            return JSONResponse(answer, status_code=500)
        return JSONResponse(answer)

    async def _score_merged(self, requests: list[ScoreRequest]) -> list[dict]:
        """One scorer call over the pairs of all `requests`; one answer (or error) per request."""
        merged = ScoreRequest(*(sum((getattr(r, name) for r in requests), []) for name in FIELDS))
        scores = await asyncio.to_thread(self.scorer, merged.prompts, merged.responses, merged.references,
                                         merged.query_types)
        n = len(merged)
        if scores.reward.shape != (n,) or (scores.std is not None and scores.std.shape != (n,)):
            raise ValueError(f"the scorer returned rewards of shape {tuple(scores.reward.shape)} for {n} pairs")
        s = self.stats
        s["requests"] += len(requests)
        s["batches"] += 1
        s["items"] += n
        s["largest_batch_requests"] = max(s["largest_batch_requests"], len(requests))
        s["largest_batch_items"] = max(s["largest_batch_items"], n)
        rewards = scores.reward.tolist()
        stds = None if scores.std is None else scores.std.tolist()
        answers, start = [], 0
        for r in requests:
            part = slice(start, start + len(r))
            start = part.stop
            answer = {"rewards": rewards[part], "stds": None if stds is None else stds[part]}
            bad = [i for i, v in enumerate(answer["rewards"] + (answer["stds"] or [])) if not math.isfinite(v)]
            if bad:
                answer = {"error": f"the reward scorer returned a non-finite reward or std for pair {bad[0] % len(r)} of this request"}
            answers.append(answer)
        return answers


# --------------------------------------------------------------------------------- deploy and run


def deploy(cfg, opts: ServeOptions) -> str:
    """Deploy the reward of `cfg` on the connected Ray cluster (its built-in functions handed to the
    replicas, `orchestrator.jobs.rewards`); wait until it answers; return its URL."""
    from actors.remote_reward import RemoteRewardError, get_json
    from cluster import serving
    from cluster.dist import node_ip
    from orchestrator.jobs.rewards import reward_functions

    opts.validate()
    # one batch scoring + one batch forming, even if every request holds a single pair
    serving.deploy(RewardServer, cfg, reward_functions(cfg), opts.max_batch_size, opts.batch_wait_s, name=opts.name, route=opts.route,
                   host=opts.host, port=opts.port, replicas=opts.replicas, num_cpus=cfg.num_cpus,
                   num_gpus=cfg.num_gpus, max_ongoing_requests=2 * opts.max_batch_size)
    local_url = opts.url("127.0.0.1" if opts.host in ("0.0.0.0", "::") else None)
    try:
        get_json(local_url, timeout_s=30.0)
    except RemoteRewardError as e:
        serving.delete(opts.name)
        raise ConfigError(f"the application deployed but {local_url} does not answer ({e}); a Serve instance "
                          "already running on this cluster keeps its own host and port (`serve status`)") from None
    return opts.url(node_ip()) if opts.host in ("0.0.0.0", "::") else opts.url()


def run(args: argparse.Namespace) -> int:
    """`rlhf serve reward`: check everything, deploy, print the URL, block until Ctrl-C or SIGTERM."""
    import cluster
    from cluster import serving

    opts = ServeOptions(host=args.host, port=args.port, route=args.route, name=args.name, replicas=args.replicas,
                        max_batch_size=args.max_batch_size, batch_wait_s=args.batch_wait_s)
    opts.validate()
    cfg = reward_config(args.path, args.overrides)
    cluster.connect(num_cpus=cluster.cpus_for(cfg.num_cpus * opts.replicas))
    # Ctrl-C, `kill` and `ray job stop` (SIGTERM) all stop it cleanly; SIGINT explicitly too, since a
    # shell starts background commands with SIGINT ignored
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    deployed = False
    try:
        url = deploy(cfg, opts)
        deployed = True
        print(f"serving reward.kind={cfg.kind} at {url} (POST JSON prompts/responses; GET: statistics); "
              f"PPO: reward.kind=remote reward.url={url}  [Ctrl-C stops]", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping the reward server")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if deployed:  # not waiting keeps this well inside the 3 s `ray job stop` allows
            serving.delete(opts.name, wait=False)
        cluster.shutdown()
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


HELP = "a reward (a saved reward model, or any reward.kind) as a Ray Serve JSON endpoint"
DESCRIPTION = ("Deploys the reward on Ray Serve (bound to 127.0.0.1 by default), prints the URL and blocks until "
               "Ctrl-C. Wire format and detached use: orchestrator/tools/serve.py.")


def add_args(p: argparse.ArgumentParser) -> None:
    """The flags of `rlhf serve reward` (defaults and help from `ServeOptions`)."""
    from orchestrator.config import field_docs

    docs, defaults = field_docs(ServeOptions), ServeOptions()
    p.add_argument("--path", help="folder of a saved reward model (reward.kind=model reward.path=FOLDER)")
    for f in dataclasses.fields(ServeOptions):
        default = getattr(defaults, f.name)
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(default), default=default,
                       help=f"{docs[f.name]} (default {default})")
    p.add_argument("overrides", nargs="*", metavar="reward.key=value",
                   help="reward config overrides, e.g. reward.kind=function reward.function=mod:fn (see `rlhf config ppo`)")
