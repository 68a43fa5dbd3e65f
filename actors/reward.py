"""The reward role: one scorer interface for every kind of reward, and `RewardActor` around it.

A scorer is a callable `scorer(prompts, responses, references, query_types) -> Scores` over N rows
(reward float32 (N,), and the predicted std (N,) where the reward has one). A prompt is a string or the
whole chat list (`actors.rendering.Prompt`). `build_scorer(cfg)` makes one from a `RewardConfig`;
`RewardActor` (the PPO role) and `rlhf serve reward` both use it.

Kinds (config `reward.kind`):
- `function`: a Python callable named 'module:function' (or a function the driver hands over, the way
  the built-in world's `builtin:<name>` rewards arrive: `functions=`), called as
  f(prompts, responses, references) -> list of floats (one per response), prompts as plain text
  (the string, or a chat's last user turn); a function that also takes a `messages` argument (or
  **kwargs) gets the whole conversation of each prompt as well: a chat list [{"role", "content"}, ...]
  with every system, user and assistant turn before the response;
- `model`: a saved reward model (a Hugging Face sequence-classifier folder whose config's
  `rlhf_reward` describes the head, see actors/reward_head.py; none means Bradley-Terry), scoring the
  conversation exactly as it was rendered in training (`actors.rendering`) with its own tokenizer,
  right-padded, `reward.batch_size` rows per forward, pooled exactly as in training
  (`actors.scoring.sequence_outputs`); frozen, optionally sharded with ZeRO-3. The RL reward is the
  normalised mean or alpha-quantile (`reward.statistic`, `reward.alpha`); distributional models also
  return their std;
- `relevance`: R^3, preference-free (actors/relevance.py);
- `remote`: an HTTP endpoint served by `rlhf serve reward` (actors/remote_reward.py);
- `weighted`: sum_k w_k * r_k over `reward.components` (any kinds but weighted). Its std, when a
  component has one, is sqrt(sum_k w_k^2 std_k^2): the std of a sum of independent terms, where a
  component without a std (function, relevance, Bradley-Terry) is deterministic and adds none.
  Independence of two distributional components is an assumption (both see the same text).
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

import torch

from actors.config import first_line
from actors.rendering import Rendering, as_messages, plain_prompt
from actors.scoring import right_pad, sequence_outputs
from actors.types import Rollout, Scores
from cluster.group import gather_as

Scorer = Callable[[list, list, list, list], Scores]
"""scorer(prompts, responses, references, query_types) -> Scores, all lists of N rows; a prompt is a
string or a chat list (`actors.rendering.Prompt`)."""


HIGHER_LAYERS = ("orchestrator",)
"""Packages above this layer (docs/architecture.md): a role never imports them, not even by a name it is given."""


def load_function(spec: str):
    """'package.module:function' -> the callable; a clear error when either part is missing. A role
    imports only the user's modules by name: `builtin:<name>` and the orchestrator's modules are the
    driver's, which hands their functions over (`functions=` of `build_scorer`)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward.function {spec!r} must look like 'module:function'")
    if module_name == "builtin" or module_name.split(".")[0] in HIGHER_LAYERS:
        raise ValueError(f"reward.function {spec!r} is the driver's to resolve (a built-in reward, or a module above the "
                         "roles' layer); the role receives the function itself (build_scorer(..., functions=...))")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward.function {spec!r}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward.function {spec!r}: module {module_name!r} has no function {attr!r}")
    import inspect

    try:
        inspect.signature(fn).bind([], [], [], **({"messages": []} if _takes_messages(fn) else {}))
    except TypeError as e:
        raise ValueError(f"reward.function {spec!r} must accept (prompts, responses, references) ({e})") from None
    except ValueError:  # no signature to inspect (a builtin): it is called and checked then
        pass
    return fn


def build_scorer(cfg, *, max_new_tokens: int = 0, functions: dict | None = None) -> Scorer:
    """The scorer of a `RewardConfig`. `max_new_tokens`: the policy's generation budget, used by
    kind=relevance when `reward.max_new_tokens` is 0 (PPO passes policy.max_new_tokens; else 512).
    `functions`: {spec: callable} for kind=function specs the driver resolved (the built-in rewards);
    any other spec is imported here (`load_function`)."""
    kind = cfg.kind
    if kind == "function":
        return FunctionScorer(cfg.function, (functions or {}).get(cfg.function))
    if kind == "model":
        return ModelScorer.from_config(cfg)
    if kind == "relevance":
        from actors.relevance import RelevanceScorer

        return RelevanceScorer.from_config(cfg, max_new_tokens=max_new_tokens)
    if kind == "remote":
        from actors.remote_reward import RemoteScorer

        return RemoteScorer(cfg.url, cfg.timeout_s, cfg.batch_size, retries=cfg.retries)
    if kind == "weighted":
        return WeightedScorer([(c.weight, build_scorer(c, max_new_tokens=max_new_tokens, functions=functions))
                               for c in cfg.components])
    raise ValueError(f"reward.kind={kind!r} is not one of function, model, relevance, remote, weighted (none starts no reward role)")


def describe(cfg) -> str:
    """The reward of `cfg` in a few words, for messages: e.g. "reward.function=my_mod:fn"."""
    if cfg.kind == "function":
        return f"reward.function={cfg.function}"
    if cfg.kind == "model":
        return f"reward.path={cfg.path}"
    if cfg.kind == "remote":
        return f"reward.url={cfg.url}"
    if cfg.kind == "weighted":
        return "reward.kind=weighted (" + ", ".join(describe(c) for c in cfg.components) + ")"
    return f"reward.kind={cfg.kind}"


def reward_parts(cfg) -> list:
    """The reward configs that score: a weighted reward's components, else the reward itself."""
    return list(cfg.components) if cfg.kind == "weighted" else [cfg]


def check_reward_config(cfg, functions: dict | None = None) -> None:
    """Checks run by the driver before any actor starts: a kind=model folder is a reward model whose head
    supports `reward.statistic` / `reward.alpha`; a kind=function imports (unless `functions` holds it) and
    takes (prompts, responses, references); a kind=remote endpoint answers its health check; a kind=relevance query classifier
    loads."""
    for i, part in enumerate(reward_parts(cfg)):
        key = f"reward.components.{i}." if cfg.kind == "weighted" else "reward."
        if part.kind == "model":
            read_head(part, key=key)
        elif part.kind == "function" and part.function not in (functions or {}):
            try:
                load_function(part.function)
            except ValueError as e:
                raise ValueError(str(e).replace("reward.", key, 1)) from None
        elif part.kind == "relevance" and part.query_classifier != "builtin:rules":
            from actors.query_type import load_classifier

            try:
                load_classifier(part.query_classifier, part.trust_remote_code)
            except ValueError as e:
                raise ValueError(str(e).replace("reward.", key, 1)) from None
        elif part.kind == "remote":
            from actors.remote_reward import RemoteRewardError, get_json

            try:
                get_json(part.url, timeout_s=min(part.timeout_s, 10.0))
            except RemoteRewardError as e:
                raise ValueError(f"{key}url={part.url!r} does not answer its health check ({e}); "
                                 "start the endpoint first (rlhf serve reward) or fix the URL") from None


def read_head(cfg, key: str = "reward."):
    """The `RewardHead` of the folder `cfg.path`, checked against `cfg.statistic` and `cfg.alpha`."""
    from transformers import AutoConfig

    from actors.reward_head import RewardHead

    try:
        config = AutoConfig.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)
        head = RewardHead.from_config(config)
    except (OSError, ValueError) as e:
        raise ValueError(f"{key}path={cfg.path!r} is not a readable reward model: {e}") from None
    try:
        head.check_statistic(cfg.statistic, cfg.alpha)
    except ValueError as e:  # the message names reward.statistic / reward.alpha; name the component too
        raise ValueError(str(e).replace("reward.", key, 1)) from None
    return head


def _as_rows(values: Sequence | None, n: int) -> list:
    return [None] * n if values is None else list(values)


def _takes_messages(fn) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(p.name == "messages" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class FunctionScorer:
    """kind=function: f(prompts, responses, references[, messages=]) -> N floats (module docstring)."""

    def __init__(self, spec: str, fn=None):
        self.spec, self.fn = spec, fn if fn is not None else load_function(spec)
        self.with_messages = _takes_messages(self.fn)

    def __call__(self, prompts, responses, references=None, query_types=None) -> Scores:
        plain = [plain_prompt(p) for p in prompts]
        extra = {"messages": [as_messages(p) for p in prompts]} if self.with_messages else {}
        try:
            values = [float(v) for v in self.fn(plain, list(responses), _as_rows(references, len(responses)), **extra)]
        except Exception as e:  # noqa: BLE001  (the user's code: name it and the batch it failed on)
            first = plain[0][:80] if plain else ""
            raise RuntimeError(f"reward.function {self.spec!r} raised {type(e).__name__}: {first_line(e)} "
                               f"(on {len(responses)} responses; first prompt {first!r})") from e
        if len(values) != len(responses):
            raise ValueError(f"reward.function {self.spec!r} returned {len(values)} scores for {len(responses)} responses")
        return Scores(reward=torch.tensor(values, dtype=torch.float32))


class ModelScorer:
    """kind=model: a saved reward model. `engine` is anything that forwards like the HF module (a frozen
    DeepSpeed engine in PPO); `head` reads the RL reward and std off the `num_labels` outputs."""

    def __init__(self, engine, tokenizer, head, *, statistic: str = "mean", alpha: float = 0.5, batch_size: int = 64):
        head.check_statistic(statistic, alpha)
        self.engine, self.head = engine, head
        self.rendering = Rendering(tokenizer, head.chat_template)
        self.statistic, self.alpha, self.batch_size = statistic, alpha, batch_size

    @classmethod
    def from_config(cls, cfg) -> "ModelScorer":
        """Load the folder of `cfg.path` into a frozen engine; the process must have joined its role's
        process group (a role group does that; a Serve replica calls `cluster.init_local()` first)."""
        from actors.engine import build_engine
        from actors.modeling import load_sequence_classifier, load_tokenizer

        head = read_head(cfg)
        tokenizer = load_tokenizer(cfg.path, trust_remote_code=cfg.trust_remote_code)
        model = load_sequence_classifier(cfg.path, num_labels=head.num_labels, dtype=cfg.dtype,
                                         trust_remote_code=cfg.trust_remote_code)
        engine = build_engine(model, cfg, train=False, total_steps=1)
        return cls(engine, tokenizer, head, statistic=cfg.statistic, alpha=cfg.alpha, batch_size=cfg.batch_size)

    @torch.no_grad()
    def outputs(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        """(N, num_labels) raw head outputs, float32, `batch_size` rows per right-padded forward: the
        conversations rendered as in training (`actors.rendering`, the way the model's `rlhf_reward`
        records), pooled as in training (`actors.scoring.sequence_outputs`)."""
        tok, out = self.rendering.tokenizer, []
        device = next(self.engine.module.parameters()).device
        for i in range(0, len(responses), self.batch_size):
            ids = self.rendering.conversation_ids(prompts[i : i + self.batch_size], responses[i : i + self.batch_size])
            input_ids, mask = right_pad(ids, tok.pad_token_id)  # (n, T) each
            out.append(sequence_outputs(self.engine, input_ids.to(device), mask.to(device), self.head.pooling).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.head.num_labels)

    def __call__(self, prompts, responses, references=None, query_types=None) -> Scores:
        reward, std = self.head.reward(self.outputs(list(prompts), list(responses)), self.statistic, self.alpha)
        return Scores(reward=reward, std=std)


class WeightedScorer:
    """kind=weighted: reward = sum_k w_k r_k; std = sqrt(sum_k w_k^2 std_k^2) over the components
    that have one (independent terms; see the module docstring), None when none has."""

    def __init__(self, parts: list[tuple[float, Scorer]]):
        self.parts = parts

    def __call__(self, prompts, responses, references=None, query_types=None) -> Scores:
        n = len(responses)
        references, query_types = _as_rows(references, n), _as_rows(query_types, n)
        scored = [(w, s(prompts, responses, references, query_types)) for w, s in self.parts]
        reward = sum(w * sc.reward for w, sc in scored)  # (N,)
        var = [w**2 * sc.std**2 for w, sc in scored if sc.std is not None]
        std = torch.stack(var).sum(0).sqrt() if var else None
        components = torch.stack([sc.reward for _, sc in scored], dim=1)  # (N, K) unweighted
        return Scores(reward=reward.float(), std=std, components=components.float())


class RewardActor:
    """The PPO reward role: a thin shell around `build_scorer`. Receives only its `RewardConfig` slice and
    the functions the driver resolved (`functions`, see `build_scorer`)."""

    def __init__(self, cfg, *, seed: int = 0, max_new_tokens: int = 0, functions: dict | None = None):
        self.cfg = cfg
        torch.manual_seed(seed)
        self.scorer = build_scorer(cfg, max_new_tokens=max_new_tokens, functions=functions)

    @gather_as("cat")
    def score(self, rollout: Rollout) -> Scores:
        """The reward of each response; a reward model reads the whole chat of the prompt."""
        n = len(rollout.responses)
        prompts = [chat if chat is not None else p for chat, p in zip(_as_rows(rollout.messages, n), rollout.prompts)]
        return self.scorer(prompts, list(rollout.responses), _as_rows(rollout.references, n),
                           _as_rows(rollout.query_types, n))
