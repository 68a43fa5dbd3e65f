"""Reading raw rows from a source: a JSON/JSON-lines/Parquet file, a folder of shards, a built-in dataset
or a Hugging Face hub dataset (`read_rows`), each row labelled with where it came from
("data/prefs.jsonl line 7"). Field checks are `orchestrator.data.rows`'; docs/your-model-and-data.md lists the formats."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator, Sequence

from actors.config import first_line
from orchestrator.builtin.datasets import builtin_rows
from orchestrator.data.stats import DataError, DataStats, type_name

__all__ = ["Row", "read_rows", "is_local"]

_LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")

Row = tuple[str, dict]
"""A source row with its label: ("data/prefs.jsonl line 7", {"prompt": ..., ...})."""


def read_rows(
    path: str,
    split: str = "train",
    *,
    max_rows: int = 0,
    on_error: str = "raise",
    stats: DataStats | None = None,
    subset: str = "",
    data_files: Sequence[str] = (),
    data_dir: str = "",
    keep_errors: bool = False,
) -> list[Row]:
    """The rows of a source (see the module doc), each with its label, e.g. ("x.jsonl line 7", {...}).

    Only reading errors are handled here (invalid JSON, a line that is not a JSON object); field
    checks belong to the loaders. max_rows > 0 stops after that many rows. With on_error='skip' bad
    lines are counted in `stats.skipped`; with 'raise' the first one raises `DataError`. Errors that
    make the whole source unreadable (missing file, unreachable hub dataset) always raise. subset,
    data_files and data_dir select within a hub dataset (data_dir also within a local folder).
    keep_errors=True returns a bad row in its place as (label, DataError) instead (counted as read,
    not skipped), so a caller can keep every row's position (`rlhf data audit`).
    """
    stats = stats if stats is not None else DataStats()
    rows: list[Row] = []
    n_read = 0
    for where, value in _source_rows(path, split, subset, tuple(data_files), data_dir):
        if max_rows and n_read >= max_rows:
            break
        n_read += 1
        stats.rows_read += 1
        if not isinstance(value, DataError) and not isinstance(value, dict):
            value = DataError(where, "is not a JSON object", detail=f"got {type_name(value)}")
        if isinstance(value, DataError):
            if keep_errors:
                rows.append((where, value))
                continue
            if on_error == "raise":
                raise value
            stats.skip(value)
            continue
        rows.append((where, value))
    return rows


def _source_rows(path: str, split: str, subset: str = "", data_files: tuple = (), data_dir: str = "") -> Iterator[tuple[str, Any]]:
    """Yield (label, parsed row or DataError) for every row of the source."""
    if path.startswith("builtin:"):
        yield from _builtin_rows(path, split)
        return
    if not is_local(path):
        yield from _hub_rows(path, split, subset, data_files, data_dir)
        return
    if os.path.isdir(path):
        for shard in _folder_shards(path, split, data_dir):
            yield from _file_rows(shard)
        return
    if not os.path.exists(path):
        raise DataError(path, "file not found")
    yield from _file_rows(path)


def _file_rows(path: str) -> Iterator[tuple[str, Any]]:
    if path.endswith(".parquet"):
        yield from _parquet_rows(path)
    elif path.endswith((".json", ".jsonl")):
        yield from _json_rows(path)
    else:
        raise DataError(path, "has an unsupported file type; use .json, .jsonl or .parquet")


def _folder_shards(folder: str, split: str, data_dir: str = "") -> list[str]:
    """The data files under `folder` (or its `data_dir`), only those of `split` when paths name splits."""
    root = os.path.join(folder, data_dir) if data_dir else folder
    if not os.path.isdir(root):
        raise DataError(root, "folder not found (data.data_dir)")
    shards = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(_LOCAL_SUFFIXES))
    if not shards:
        raise DataError(root, "is a folder without .parquet, .jsonl or .json files")
    name = re.escape(split.split("[", 1)[0])
    of_split = [p for p in shards if re.search(rf"(^|[/_.-]){name}([/_.-]|$)", os.path.relpath(p, root))]
    named = [p for p in shards if re.search(r"(^|[/_.-])(train|test|validation|valid|dev|eval)([/_.-]|$)", os.path.relpath(p, root))]
    if of_split:
        return of_split
    if named:
        raise DataError(root, f"has shards named by split but none for split '{split}'",
                        detail=f"e.g. {os.path.relpath(named[0], root)}; set data.split / data.eval_split")
    return shards


def _json_rows(path: str) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
        data = data[3:]
    if data.lstrip()[:1] == b"[":
        try:
            rows = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(path, "is not UTF-8 text", detail=f"byte {e.start}") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {e.lineno} column {e.colno}", "invalid JSON", detail=e.msg) from None
        for i, row in enumerate(rows, start=1):
            yield f"{path} row {i}", row
        return
    # JSON lines. Split on b"\n" only: a raw U+2028 is legal inside a JSON string.
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            yield where, json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield where, DataError(where, "is not UTF-8 text", detail=f"byte {e.start} of the line")
        except json.JSONDecodeError as e:
            yield where, DataError(where, "invalid JSON", detail=f"{e.msg}, column {e.colno}")


def _parquet_rows(path: str) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
        i = 0
        for batch in batches:
            for row in batch.to_pylist():
                i += 1
                yield f"{path} row {i}", row
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(path, "cannot be read as Parquet", detail=first_line(e)) from None


def _builtin_rows(path: str, split: str) -> Iterator[tuple[str, Any]]:
    name = path[len("builtin:"):]
    try:
        rows = builtin_rows(name, split)
    except (KeyError, ValueError) as e:
        raise DataError(path, f"unknown built-in dataset or split '{split}'", detail=first_line(e)) from None
    for i, row in enumerate(rows, start=1):
        yield f"{path}[{split}] row {i}", row


def _hub_rows(name: str, split: str, subset: str = "", data_files: tuple = (), data_dir: str = "") -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, subset or None, data_files=list(data_files) or None, data_dir=data_dir or None,
                                   split=split)
    except Exception as e:  # noqa: BLE001  (network, auth, missing split, bad name: all one message)
        chosen = ", ".join(f"{k}={v}" for k, v in (("subset", subset), ("data_dir", data_dir)) if v)
        raise DataError(
            name,
            f"cannot load split '{split}'{f' ({chosen})' if chosen else ''} from the Hugging Face hub",
            detail=f"{type(e).__name__}: {first_line(e)}; a local file needs a .json, .jsonl or .parquet name",
        ) from None
    label = f"{name}{f'/{subset}' if subset else ''}[{split}]"
    for i, row in enumerate(ds, start=1):
        yield f"{label} row {i}", row


def is_local(path: str) -> bool:
    """A local file (or a path meant as one), as opposed to builtin:NAME or a hub dataset name."""
    if path.startswith("builtin:"):
        return False
    return path.endswith(_LOCAL_SUFFIXES) or os.path.exists(path) or path.startswith(("/", ".", "~"))
