"""Typed batches that cross actor boundaries.

A batch is a dataclass whose fields are either

- tensors with a leading batch dimension (rows), e.g. ``action_mask: torch.Tensor  # (B, T)``, or
- per-row Python lists (one element per row), e.g. ``prompts: list[str]``, or
- ``None`` (an optional field that this batch does not carry).

Subclasses only declare fields, with a shape-and-meaning comment on each, for example::

    @dataclass
    class Rollout(Batch):
        input_ids: torch.Tensor = spec("B T", torch.long)         # (B, T) prompt (left-padded) + response
        action_mask: torch.Tensor = spec("B T", torch.bool)       # (B, T) 1 on response tokens
        old_logprobs: torch.Tensor | None = spec("B T-1", torch.float32)  # (B, T-1) log pi_old(a_t|s_t)
        prompts: list[str] | None = None                          # (B,) prompt text

``spec`` is optional: without it a field is only checked for its leading dimension. With it,
``check()`` also verifies the dtype and that named dimensions agree across fields (every ``T`` the
same size, ``T-1`` one less). A bug where log-probs of shape (B, T-1) are paired with a (B, T) mask
is then caught where the batch crosses into or out of an actor, not three calls later.

The hosting layer (`cluster.group`) calls ``check()`` on every batch argument and result that
crosses a role boundary, and moves results to CPU, so roles never need to do either.
This module knows nothing about PPO or any other algorithm.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator, Sequence

try:  # Python >= 3.11
    from typing import Self
except ImportError:  # pragma: no cover
    from typing_extensions import Self

import torch

__all__ = ["Batch", "BatchError", "plan_micro_batches", "spec"]

_SPEC_KEY = "batch_spec"
_DIM_RE = re.compile(r"^(?:(?P<int>\d+)|(?P<name>[A-Za-z_]\w*)(?:(?P<sign>[+-])(?P<off>\d+))?)$")


class BatchError(ValueError):
    """A batch whose fields disagree (rows, named dims, dtypes, devices); the message names them."""


def spec(shape: str, dtype: torch.dtype | None = None, *, optional: bool = False) -> Any:
    """A dataclass field declaring a tensor's dims and dtype, checked by `Batch.check`.

    shape: space-separated dims; the first must be ``B`` (rows). Each dim is a name (``T``), a name
    with an integer offset (``T-1``, ``T+1``) or a literal size (``3``). dtype: required dtype, or
    None for any. optional=True gives the field a ``None`` default (the batch may not carry it).
    """
    dims = shape.split()
    if not dims or dims[0] != "B":
        raise ValueError(f"spec shape {shape!r}: the first dim must be 'B' (rows)")
    for d in dims:
        if not _DIM_RE.match(d):
            raise ValueError(f"spec shape {shape!r}: bad dim {d!r}; use a name, name+-int or an int")
    metadata = {_SPEC_KEY: (tuple(dims), dtype)}
    if optional:
        return dataclasses.field(default=None, metadata=metadata)
    return dataclasses.field(metadata=metadata)


def _parse_dim(d: str) -> tuple[str | None, int]:
    """'T-1' -> ('T', -1); '3' -> (None, 3); 'B' -> ('B', 0)."""
    m = _DIM_RE.match(d)
    assert m is not None
    if m.group("int") is not None:
        return None, int(m.group("int"))
    off = int(m.group("off") or 0)
    return m.group("name"), -off if m.group("sign") == "-" else off


@dataclasses.dataclass
class Batch:
    """Base of every typed batch: equal-size split, concatenation, device moves, validation.

    Rows are the unit of data parallelism: `split(n)` makes n equal shards (one per replica),
    `cat` puts shards back in order. Both keep the field set and the class.
    """

    # ------------------------------------------------------------------ introspection
    def _items(self) -> list[tuple[str, Any]]:
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]

    @property
    def num_rows(self) -> int:
        """Rows in the batch: the leading dim of its tensors (or length of its per-row lists)."""
        for name, value in self._items():
            if isinstance(value, torch.Tensor):
                if value.dim() == 0:
                    raise BatchError(f"{type(self).__name__}.{name}: a 0-d tensor has no batch dim")
                return value.shape[0]
            if isinstance(value, list):
                return len(value)
        raise BatchError(f"{type(self).__name__}: no tensor or list field is set, so it has no rows")

    def __len__(self) -> int:
        return self.num_rows

    # ------------------------------------------------------------------ validation
    def check(self) -> Self:
        """Validate the batch and return it: raise `BatchError` naming the first bad field.

        Checks: every field is a tensor, a list or None; every tensor has the same leading size and
        device; every list has one element per row; fields declared with `spec` have their dtype
        and their named dims consistent across fields (``B`` == rows, every ``T`` equal, ``T-1``
        one less than ``T``).
        """
        cls = type(self).__name__
        rows = self.num_rows
        device: torch.device | None = None
        sizes: dict[str, tuple[int, str]] = {"B": (rows, "rows")}  # dim name -> (base size, where seen)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            where = f"{cls}.{f.name}"
            if value is None:
                continue
            if isinstance(value, list):
                if len(value) != rows:
                    raise BatchError(f"{where}: list has {len(value)} elements, batch has {rows} rows")
                continue
            if not isinstance(value, torch.Tensor):
                raise BatchError(f"{where}: must be a tensor, a per-row list or None, got {type(value).__name__}")
            if value.dim() == 0 or value.shape[0] != rows:
                raise BatchError(f"{where}: shape {tuple(value.shape)} does not lead with {rows} rows")
            if device is None:
                device = value.device
            elif value.device != device:
                raise BatchError(f"{where}: on {value.device}, other fields on {device}")
            declared = f.metadata.get(_SPEC_KEY)
            if declared is None:
                continue
            dims, dtype = declared
            if dtype is not None and value.dtype != dtype:
                raise BatchError(f"{where}: dtype {value.dtype}, declared {dtype}")
            if value.dim() != len(dims):
                raise BatchError(f"{where}: shape {tuple(value.shape)}, declared ({', '.join(dims)})")
            for d, size in zip(dims, value.shape):
                name, off = _parse_dim(d)
                if name is None:
                    if size != off:
                        raise BatchError(f"{where}: dim {d} has size {size}")
                    continue
                base = size - off
                if name in sizes and sizes[name][0] != base:
                    seen, at = sizes[name]
                    raise BatchError(
                        f"{where}: dim {d} has size {size}, so {name}={base}; but {name}={seen} from {at}"
                    )
                sizes.setdefault(name, (base, f.name))
        return self

    # ------------------------------------------------------------------ transforms
    def _map(self, tensor_fn, list_fn) -> Self:
        out = {}
        for name, value in self._items():
            if isinstance(value, torch.Tensor):
                out[name] = tensor_fn(value)
            elif isinstance(value, list):
                out[name] = list_fn(value)
            else:
                out[name] = value
        return type(self)(**out)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Self:
        """A batch with every tensor on `device` (lists are shared, not copied)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking), lambda v: v)

    def select(self, rows: torch.Tensor | Sequence[int] | slice) -> Self:
        """The rows `rows` (an index tensor, a list of ints or a slice), in that order; a copy."""
        if isinstance(rows, slice):
            return self._map(lambda t: t[rows].clone(), lambda v: v[rows])
        idx = torch.as_tensor(rows, dtype=torch.long)
        if idx.dim() != 1:
            raise BatchError(f"{type(self).__name__}.select: rows must be 1-d, got shape {tuple(idx.shape)}")
        positions = idx.tolist()
        return self._map(lambda t: t.index_select(0, idx.to(t.device)), lambda v: [v[i] for i in positions])

    def split(self, n: int) -> list[Self]:
        """`n` shards of equal rows, in order; raises `BatchError` if rows are not divisible by n.

        Shards are copies, not views: a view pickles its whole parent storage, so sending a view to
        a Ray actor would ship the full batch to every replica.
        """
        rows = self.num_rows
        if n < 1 or rows % n:
            raise BatchError(f"{type(self).__name__}: cannot split {rows} rows into {n} equal shards")
        if n == 1:
            return [self]
        size = rows // n
        return [self.select(slice(i * size, (i + 1) * size)) for i in range(n)]

    def cut(self, **dims: slice) -> Self:
        """The same rows with the named dims of `spec` fields sliced, e.g. ``cut(L=slice(3, 40), T=slice(0, 8))``
        (a dim with an offset, ``T-1``, is sliced as its base); fields without a spec and lists are kept. A copy."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            declared = f.metadata.get(_SPEC_KEY)
            if isinstance(value, torch.Tensor) and declared is not None:
                index = [slice(None)] * value.dim()
                for axis, d in enumerate(declared[0][1:], start=1):
                    name, _ = _parse_dim(d)
                    if name in dims:
                        index[axis] = dims[name]
                value = value[tuple(index)].contiguous()
            out[f.name] = value
        return type(self)(**out)

    def chunks(self, size: int) -> Iterator[Self]:
        """Consecutive row slices of `size` rows (the last may be shorter): micro-batches, in order."""
        if size < 1:
            raise BatchError(f"{type(self).__name__}.chunks: size must be >= 1, got {size}")
        for start in range(0, self.num_rows, size):
            yield self.select(slice(start, start + size))

    @classmethod
    def cat(cls, batches: Sequence[Self]) -> Self:
        """Concatenate batches of this class row-wise, in order (the inverse of `split`).

        Every batch must carry the same fields; tensors must agree on all but the first dim
        (variable-length outputs must be padded to a common length by the role that makes them).
        """
        if not batches:
            raise BatchError(f"{cls.__name__}.cat: no batches")
        for b in batches:
            if type(b) is not cls:
                raise BatchError(f"{cls.__name__}.cat: got a {type(b).__name__}")
        if len(batches) == 1:
            return batches[0]
        out = {}
        for f in dataclasses.fields(cls):
            values = [getattr(b, f.name) for b in batches]
            kinds = {type(v) if not isinstance(v, torch.Tensor) else torch.Tensor for v in values}
            if kinds == {type(None)}:
                out[f.name] = None
            elif kinds == {torch.Tensor}:
                trailing = {tuple(v.shape[1:]) for v in values}
                if len(trailing) > 1:
                    raise BatchError(
                        f"{cls.__name__}.cat: field {f.name} has different trailing shapes {sorted(trailing)}; "
                        "pad to a common length before returning shards"
                    )
                out[f.name] = torch.cat(values, dim=0)
            elif kinds == {list}:
                out[f.name] = [x for v in values for x in v]
            else:
                raise BatchError(f"{cls.__name__}.cat: field {f.name} mixes {sorted(k.__name__ for k in kinds)}")
        return cls(**out)


def plan_micro_batches(extents: torch.Tensor, tokens: int, *, forward_rows: int = 1, count: int = 0) -> list[list[int]]:
    """Rows grouped into micro-batches of at most `tokens` padded tokens each, longest rows first.

    extents: (B, k) real tokens of each row in each of k padded segments (a rollout's prompt and
    response; one segment for right-padded rows): a micro-batch, cut to its own padding, is as wide as
    the sum over segments of its rows' longest extent, and costs forward_rows x rows x width tokens
    (forward_rows = 2 for preference pairs, whose chosen and rejected rows run in one forward). Rows are
    taken in order of their total extent, longest first (ties by row), and a micro-batch is closed
    when the next row would take it over `tokens`; a row over `tokens` on its own is a micro-batch
    alone. count > 0: split the micro-batches with the most rows in two until there are `count` (every
    replica of a role must make the same number of forward calls), at most one per row.
    Returns the row indices of each micro-batch.
    """
    rows = extents.shape[0]
    if tokens < 1:
        raise ValueError(f"plan_micro_batches: tokens must be >= 1, got {tokens}")
    if count > rows:
        raise ValueError(f"plan_micro_batches: {count} micro-batches of {rows} rows")
    ext = extents.long().reshape(rows, -1).tolist()
    order = sorted(range(rows), key=lambda i: (-sum(ext[i]), i))
    groups: list[list[int]] = []
    widest: list[int] = []
    for i in order:
        if groups:
            grown = [max(a, b) for a, b in zip(widest, ext[i])]
            if forward_rows * (len(groups[-1]) + 1) * sum(grown) <= tokens:
                groups[-1].append(i)
                widest = grown
                continue
        groups.append([i])
        widest = list(ext[i])
    while len(groups) < count:
        k = max(range(len(groups)), key=lambda j: (len(groups[j]), -j))
        g = groups[k]
        groups[k:k + 1] = [g[: (len(g) + 1) // 2], g[(len(g) + 1) // 2:]]
    return groups
