"""Typed config machinery: YAML + dotted overrides -> a tree of dataclasses.

Every config class is a plain dataclass whose fields carry an attribute docstring (a string literal
right under the field, as CleanRL and tyro do). This module turns YAML files and `key=value`
overrides into such a tree, failing on the first unknown key or badly typed value with a one-line
error that names the dotted key; range checks live next to the fields, in each class's
`validate(check)` method, and run before anything starts.

Hand-written rather than OmegaConf because the errors are the product here: an unknown key must
name itself and the closest valid names, and a `Literal` choice must list its options.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from actors.config import ConfigError, deep_merge  # noqa: F401  (re-exported)


# ---------------------------------------------------------------------------------------------
# Field docstrings


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (and its dataclass bases), keyed by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_list(tp: Any) -> type | None:
    """The item class of a `list[SomeConfig]` field (a list of config sections), else None."""
    if get_origin(tp) is list:
        (item,) = get_args(tp)
        if dataclasses.is_dataclass(item):
            return item
    return None


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config class (nested dataclasses expanded; a list of sections is one key)."""
    keys = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys.append(key)
            keys.extend(all_keys(tp, key + "."))
        else:
            keys.append(key)
    return keys


# ---------------------------------------------------------------------------------------------
# Coercion of raw (YAML / CLI) values to field types


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if tp is dict or origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    bad = ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
            raise bad
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        for choice in choices:  # an int literal given as a string on the command line
            if str(choice) == str(value):
                return choice
        raise ConfigError(
            f"config key '{key}': {value!r} is not one of {', '.join(repr(c) for c in choices)}"
        )
    if origin is list:
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.strip("[]").split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
            return False
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-6" as a string
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is dict or origin is dict:  # free keyword arguments (e.g. env.kwargs): a mapping with string keys
        if isinstance(value, str):
            import yaml

            value = yaml.safe_load(value) if value.strip() else {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad
        return dict(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise bad
        return str(value)
    raise ConfigError(f"config key '{key}': unsupported field type {tp!r}")


RENAMED = {"ppo.rollout_ahead": "ppo.max_staleness"}
"""Keys that were renamed: old -> new (an old key is refused with the new name)."""


def _unknown(key: str, valid: list[str]) -> ConfigError:
    if key in RENAMED:
        return ConfigError(f"config key '{key}' is now '{RENAMED[key]}'")
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    if not close:  # compare the last part too: "policy.learning_rate" vs "policy.lr"
        leaf = key.rsplit(".", 1)[-1]
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        siblings = [v for v in valid if v.startswith(parent) and "." not in v[len(parent):]]
        close = difflib.get_close_matches(key, siblings, n=3, cutoff=0.3) or [
            s for s in siblings if leaf in s or s.rsplit(".", 1)[-1] in leaf
        ][:3]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


# ---------------------------------------------------------------------------------------------
# Building a tree


def _set(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[parts[-1]] = value


def _build_sections(item_tp: type, value: Any, key: str) -> list:
    """A `list[SomeConfig]` field from a list of mappings (index overrides were merged in by `deep_merge`)."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"config key '{key}': expected a list of {item_tp.__name__} mappings, got {value!r}")
    out = []
    for i, item in enumerate(value):
        item_key = f"{key}.{i}"
        if not isinstance(item, dict):
            raise ConfigError(f"config key '{item_key}': expected a mapping of {item_tp.__name__} fields, got {item!r}")
        out.append(build(item_tp, item, item_key + ".", item_tp, item_key + "."))
    return out


def build(cls: type, raw: dict, prefix: str = "", root: type | None = None, root_prefix: str = "") -> Any:
    """Instantiate `cls` from a nested dict, coercing types; unknown keys raise ConfigError."""
    root = root or cls
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if k not in names:
            while isinstance(v, dict) and len(v) == 1:  # name the leaf the user typed: 'polcy.lr'
                (sub, v), = v.items()
                key = f"{key}.{sub}"
            raise _unknown(key, all_keys(root, root_prefix))
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if v is None:
                v = {}
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' is a section; set its fields, e.g. '{key}.<field>=...'")
            kwargs[k] = build(tp, v, key + ".", root, root_prefix)
        elif _section_list(tp) is not None:
            kwargs[k] = _build_sections(_section_list(tp), [] if v is None else v, key)
        else:
            kwargs[k] = _coerce(v, tp, key)
    return cls(**kwargs)


def parse_overrides(overrides: list[str]) -> dict:
    """`["policy.lr=1e-6", "run.mode=local"]` -> nested dict; values are parsed as YAML scalars."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. policy.lr=1e-6)")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        _set(tree, key, value)
    return tree


def load(cls: type, path: str | None = None, overrides: list[str] | None = None, *, check: bool = True) -> Any:
    """Defaults <- YAML file <- dotted overrides (unknown keys and bad types fail); then, with `check`,
    `validate()` the whole tree."""
    raw: dict = {}
    if path:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file '{path}' does not exist") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file '{path}'{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
        raw = loaded
    # start from the defaults as instantiated, so a section's default_factory (e.g. DPO's
    # RunConfig(output_dir="runs/dpo")) survives an override of one of its fields
    raw = deep_merge(to_dict(cls()), raw)
    deep_merge(raw, parse_overrides(overrides or []))
    cfg = build(cls, raw)
    if check:
        validate(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------
# Validation


class Check:
    """Passed to each config class's `validate(check)`; `check(cond, field, msg)` raises on failure."""

    def __init__(self, prefix: str, obj: Any):
        self.prefix, self.obj = prefix, obj

    def __call__(self, cond: bool, field: str, msg: str) -> None:
        if not cond:
            value = getattr(self.obj, field.split(".")[0], None) if "." not in field else None
            shown = f" (got {value!r})" if value is not None and "." not in field else ""
            raise ConfigError(f"config key '{self.prefix}{field}': {msg}{shown}")


def validate(cfg: Any, prefix: str = "") -> None:
    """Run `validate(check)` on every node, children first."""
    for f in dataclasses.fields(cfg):
        child = getattr(cfg, f.name)
        if dataclasses.is_dataclass(child):
            validate(child, f"{prefix}{f.name}.")
        elif isinstance(child, list):
            for i, item in enumerate(child):
                if dataclasses.is_dataclass(item):
                    validate(item, f"{prefix}{f.name}.{i}.")
    if hasattr(cfg, "validate"):
        cfg.validate(Check(prefix, cfg))


# ---------------------------------------------------------------------------------------------
# Reading and replacing one key


def get_key(cfg: Any, dotted: str) -> Any:
    """The value at a dotted key, e.g. get_key(cfg, "reward.components.1.path")."""
    node = cfg
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else getattr(node, part)
    return node


def replace_key(cfg: Any, dotted: str, value: Any) -> Any:
    """A copy of the config tree `cfg` with `value` at the dotted key; `cfg` and every node not on the
    key's path are shared, none is changed (a validated config is never mutated)."""
    head, _, rest = dotted.partition(".")
    if isinstance(cfg, list):
        items = list(cfg)
        items[int(head)] = replace_key(items[int(head)], rest, value) if rest else value
        return items
    return dataclasses.replace(cfg, **{head: replace_key(getattr(cfg, head), rest, value) if rest else value})


# ---------------------------------------------------------------------------------------------
# Output


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any, comments: bool = True, indent: int = 0) -> str:
    """Resolved config as YAML, each field preceded by its docstring as a comment."""
    lines: list[str] = []
    docs = field_docs(type(cfg)) if comments else {}
    pad = "  " * indent
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if comments and f.name in docs:
            for line in textwrap.wrap(docs[f.name], 96 - len(pad)):
                lines.append(f"{pad}# {line}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.append(to_yaml(value, comments, indent + 1))
        elif value and isinstance(value, list) and all(dataclasses.is_dataclass(v) for v in value):
            lines.append(f"{pad}{f.name}:")  # a list of sections: block YAML, fields documented above
            dumped = yaml.safe_dump([to_dict(v) for v in value], default_flow_style=False, sort_keys=False, width=10_000)
            lines.extend(f"{pad}  {line}" for line in dumped.splitlines())
        else:
            dumped = yaml.safe_dump({f.name: value}, default_flow_style=True, width=10_000).strip()
            if dumped.startswith("{") and dumped.endswith("}"):
                dumped = dumped[1:-1]
            lines.append(f"{pad}{dumped}")
    return "\n".join(lines)
