"""The client of `rlhf serve reward`: a scorer that sends (prompt, response) pairs over HTTP.

`RemoteScorer(url, timeout_s, batch_size)` has the scorer signature of `actors.reward`
(`scorer(prompts, responses, references, query_types) -> Scores`); PPO uses it as
`reward.kind=remote reward.url=...`.

Wire format (the server side is `orchestrator.tools.serve`); a prompt is a string or the whole chat::

    POST <url>  {"prompts": [str | [{"role", "content"}, ...]], "responses": [str],
                 "references": [str|null] | null, "query_types": ["open"|"closed"|null] | null}
    200         {"rewards": [float], "stds": [float] | null}
    4xx / 5xx   {"error": "<message naming the field>"}
    GET  <url>  {"kind": ..., "max_batch_size": ..., "requests": ..., "batches": ...}  (health and stats)

The pairs go out in requests of `batch_size` pairs, one after another (the server merges requests of
many clients into one scorer call; a larger batch_size asks less of the network, but must not exceed
the server's --max-batch-size, or the server answers 413 naming its limit).

Errors name the URL and, for an HTTP error, carry the server's own message. Transient failures (a
refused or reset connection, a timeout, HTTP 502/503/504 from a proxy or a restarting replica) are
retried `retries` times with exponential back-off (0.5 s, 1 s, 2 s, ... capped at 8 s); scoring is
idempotent, so a retry is safe. Errors that a retry cannot fix (4xx naming a field, 500 from a scorer
that raised, an answer that is not the wire format) are raised at once, and so is the last transient
one, with the number of attempts. Plain `urllib` (no extra dependency). Proxies from the environment
(`http_proxy`, `no_proxy`) are honoured, except for loopback URLs, which always go direct.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import torch

from actors.types import Scores

__all__ = ["RemoteRewardError", "RemoteScorer", "get_json"]


class RemoteRewardError(RuntimeError):
    """The reward server could not be reached, answered an error, or answered nonsense. `transient`: a
    retry may succeed (no connection, a timeout, HTTP 502/503/504)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient

    def __reduce__(self):  # picklable across Ray with its flag
        return (type(self), (self.args[0], self.transient))


class RemoteScorer:
    """Scores through a reward server; `batch_size` pairs per HTTP request."""

    def __init__(self, url: str, timeout_s: float = 60.0, batch_size: int = 64, retries: int = 3):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"reward url {url!r} must be an http:// or https:// URL with a host")
        if timeout_s <= 0:
            raise ValueError(f"reward timeout_s must be > 0 (got {timeout_s})")
        if batch_size < 1:
            raise ValueError(f"reward batch_size must be >= 1 (got {batch_size})")
        self.url, self.timeout_s, self.batch_size, self.retries = url, float(timeout_s), int(batch_size), int(retries)
        self._opener = _opener(parsed.hostname)

    def __repr__(self) -> str:
        return f"RemoteScorer({self.url!r}, timeout_s={self.timeout_s}, batch_size={self.batch_size})"

    def __call__(self, prompts: list, responses: list, references: list | None = None,
                 query_types: list | None = None) -> Scores:
        n = len(responses)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} responses")
        for name, values in (("references", references), ("query_types", query_types)):
            if values is not None and len(values) != n:
                raise ValueError(f"{len(values)} {name} for {n} responses")
        rewards: list[float] = []
        stds: list[float] = []
        with_std = None
        for i in range(0, n, self.batch_size):
            part = slice(i, i + self.batch_size)
            body = {
                "prompts": list(prompts[part]),
                "responses": list(responses[part]),
                "references": _null_if_empty(references, part),
                "query_types": _null_if_empty(query_types, part),
            }
            r, s = self._post(body)
            if with_std is None:
                with_std = s is not None
            elif with_std != (s is not None):
                raise RemoteRewardError(f"reward server {self.url} returned stds for some requests and not others")
            rewards += r
            stds += s or []
        return Scores(
            reward=torch.tensor(rewards, dtype=torch.float32),
            std=torch.tensor(stds, dtype=torch.float32) if with_std else None,
        )

    def _post(self, body: dict) -> tuple[list[float], list[float] | None]:
        n = len(body["responses"])
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            try:
                answer = _request(self._opener, self.url, self.timeout_s, data)
                break
            except RemoteRewardError as e:
                if not e.transient or attempt == self.retries:
                    if e.transient and self.retries:
                        raise RemoteRewardError(f"{e} ({attempt + 1} attempts)") from None
                    raise
                time.sleep(min(0.5 * 2**attempt, 8.0))
        fields = answer if isinstance(answer, dict) else {}
        rewards, stds = fields.get("rewards"), fields.get("stds")
        if not _numbers(rewards, n) or not (stds is None or _numbers(stds, n)):
            raise RemoteRewardError(
                f"reward server {self.url} answered {_short(answer)}; expected "
                f'{{"rewards": [{n} numbers], "stds": [{n} numbers] or null}}'
            )
        return [float(v) for v in rewards], None if stds is None else [float(v) for v in stds]


def get_json(url: str, timeout_s: float = 10.0):
    """GET `url` and decode its JSON answer (the server's health and stats); RemoteRewardError on failure."""
    return _request(_opener(urllib.parse.urlsplit(url).hostname or ""), url, timeout_s, None)


def _request(opener: urllib.request.OpenerDirector, url: str, timeout_s: float, data: bytes | None):
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with opener.open(req, timeout=timeout_s) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raise RemoteRewardError(f"reward server {url} answered HTTP {e.code}: {_error_text(e)}",
                                transient=e.code in (502, 503, 504)) from None
    except (socket.timeout, TimeoutError):
        raise RemoteRewardError(f"reward server {url} did not answer within {timeout_s:g} s", transient=True) from None
    except (urllib.error.URLError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, (socket.timeout, TimeoutError)):  # urllib wraps a read timeout in URLError
            raise RemoteRewardError(f"reward server {url} did not answer within {timeout_s:g} s", transient=True) from None
        raise RemoteRewardError(
            f"cannot reach the reward server {url} ({reason}); is `rlhf serve reward` running there?", transient=True
        ) from None
    try:
        return json.loads(raw)
    except ValueError:
        raise RemoteRewardError(f"reward server {url} answered non-JSON: {_short(raw)}") from None


def _opener(host: str) -> urllib.request.OpenerDirector:
    """Direct connections for loopback hosts (an http_proxy in the environment must not see them)."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return urllib.request.build_opener(urllib.request.ProxyHandler({})) if loopback else urllib.request.build_opener()


def _error_text(e: urllib.error.HTTPError) -> str:
    """The server's {"error": ...} message, else the start of its body, else the HTTP reason."""
    try:
        raw = e.read()
    except OSError:
        raw = b""
    try:
        payload = json.loads(raw)
        if isinstance(payload, dict) and "error" in payload:
            return str(payload["error"])
    except ValueError:
        pass
    return _short(raw) if raw else str(e.reason)


def _numbers(values, n: int) -> bool:
    return (isinstance(values, list) and len(values) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values))


def _null_if_empty(values: list | None, part: slice) -> list | None:
    """The slice, or None when there are no values (all None): the wire format's null."""
    if values is None:
        return None
    chunk = list(values[part])
    return None if all(v is None for v in chunk) else chunk


def _short(x, limit: int = 200) -> str:
    text = x.decode("utf-8", "replace") if isinstance(x, (bytes, bytearray)) else json.dumps(x) if not isinstance(x, str) else x
    return text if len(text) <= limit else text[:limit] + "..."
