"""Loading a dataset for a job: read (`sources`), validate (`rows`), render through the one rendering
(`actors.rendering`), tokenize and limit lengths; `load_prompts`, `load_preferences`, `load_sft`.
docs/your-model-and-data.md describes the columns, the rendering and the length limits."""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy imports stay inside functions: `rlhf --help` imports this module
    import datasets

    from orchestrator.config import DataConfig

from actors.config import first_line
from actors.rendering import Rendering, RenderError
from orchestrator.data.rows import ANSWERS, PARSERS, Parsed
from orchestrator.data.sources import is_local, read_rows
from orchestrator.data.stats import TYPE_NAMES, DataError, DataStats, LengthStats, short

logger = logging.getLogger("rlhf.data")

__all__ = ["load_prompts", "load_preferences", "load_sft", "load_rows"]


def load_prompts(cfg: "DataConfig", tokenizer, *, eval_set: bool = False) -> tuple["datasets.Dataset", DataStats]:
    """The prompt dataset of `cfg`, rendered, tokenized and length-limited.

    eval_set=True reads the evaluation set instead: `eval_path`/`eval_split`, or the `eval_split`
    of `path` when eval_path is empty (a `DataError` for a local file, which has one split only).

    Columns: prompt, chat, prompt_text, prompt_ids, reference, query_type, then the other input columns.
    Raises `DataError` on the first malformed row unless cfg.on_error == 'skip', and when no row is left.
    """
    return _nonempty(*load_rows("prompt", cfg, tokenizer, eval_set))


def load_preferences(cfg: "DataConfig", tokenizer, *, eval_set: bool = False) -> tuple["datasets.Dataset", DataStats]:
    """The preference dataset of `cfg`, rendered, tokenized and length-limited (eval_set as in `load_prompts`).

    Columns: prompt, chat, prompt_text, prompt_ids, chosen, rejected, chosen_ids, rejected_ids (responses
    end with eos unless truncated), pair_weight (with data.weight_column: its value; rows of weight 0 are
    dropped), then the other input columns. Errors as in `load_prompts`.
    """
    return _nonempty(*load_rows("preference", cfg, tokenizer, eval_set))


def load_sft(cfg: "DataConfig", tokenizer, *, eval_set: bool = False) -> tuple["datasets.Dataset", DataStats]:
    """The SFT dataset of `cfg` (prompt + response rows, or chats ending with the answer), rendered,
    tokenized and length-limited (eval_set as in `load_prompts`).

    Columns: prompt, chat, prompt_text, prompt_ids, response, response_ids (ending with eos unless
    truncated), then the other input columns. Errors as in `load_prompts`.
    """
    return _nonempty(*load_rows("sft", cfg, tokenizer, eval_set))


def _nonempty(dataset: "datasets.Dataset", stats: DataStats) -> tuple["datasets.Dataset", DataStats]:
    if stats.kept == 0:
        raise DataError(stats.source, "has no usable rows", detail=stats.counts())
    return dataset, stats


def _resolve_source(cfg: "DataConfig", eval_set: bool) -> tuple[str, str]:
    if not eval_set:
        return cfg.path, cfg.split
    if cfg.eval_path:
        return cfg.eval_path, cfg.eval_split
    if is_local(cfg.path) and not os.path.isdir(cfg.path):
        raise DataError(cfg.path, f"is one file with no '{cfg.eval_split}' split; set data.eval_path for evaluation data")
    return cfg.path, cfg.eval_split


def load_rows(kind: str, cfg: "DataConfig", tokenizer, eval_set: bool) -> tuple["datasets.Dataset", DataStats]:
    path, split = _resolve_source(cfg, eval_set)
    one_file = is_local(path) and not os.path.isdir(path)
    stats = DataStats(source=path if one_file else f"{path}[{split}]", kind=kind)
    hub = path == cfg.path  # subset, data_files and data_dir select within data.path, not within data.eval_path
    raw = read_rows(path, split, max_rows=cfg.max_rows, on_error=cfg.on_error, stats=stats,
                    subset=cfg.subset if hub else "", data_files=cfg.data_files if hub else (), data_dir=cfg.data_dir if hub else "")
    rendering = Rendering(tokenizer, cfg.chat_template)
    if ANSWERS[kind] and tokenizer.eos_token_id is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(f"tokenizer {name}", f"has no eos token; {kind} responses must end with one")

    parse = PARSERS[kind]
    answers = ANSWERS[kind]  # the response fields of this kind
    weight_column = cfg.weight_column if kind == "preference" and not eval_set else ""  # evaluation is unweighted
    rows: list[Parsed] = []
    texts: list[str] = []
    weights: list[float] = []
    for where, fields in raw:
        try:
            row = parse(where, fields)
            weight = _weight(where, fields, weight_column) if weight_column else 1.0
            texts.append(_render(row, rendering))
        except DataError as e:
            if cfg.on_error == "raise":
                raise
            stats.skip(e)
            continue
        rows.append(row)
        weights.append(weight)

    prompt_ids = rendering.prompt_ids(texts)
    if kind == "sft":  # a chat with earlier model turns: the context as an episode holds it (`Rendering.episode_ids`)
        for i, row in enumerate(rows):
            if row.chat_given and any(m["role"] == "assistant" for m in row.messages):
                try:
                    prompt_ids[i] = rendering.episode_ids(row.messages)
                except RenderError as e:
                    raise DataError(row.where, "cannot be rendered by the tokenizer's chat template", row.prompt_field, first_line(e)) from None
                texts[i] = tokenizer.decode(prompt_ids[i], skip_special_tokens=False)
    answer_ids = {name: rendering.response_ids([getattr(r, name) for r in rows]) for name in answers}
    for name, ids in answer_ids.items():
        setattr(stats, f"{name}_tokens", LengthStats.of([len(x) for x in ids]))
    if kind == "preference" and rows:
        stats.chosen_longer = sum(len(c) > len(r) for c, r in zip(answer_ids["chosen"], answer_ids["rejected"])) / len(rows)
    stats.prompt_tokens = LengthStats.of([len(x) for x in prompt_ids])

    max_p, max_r = cfg.max_prompt_tokens, cfg.max_response_tokens
    columns: dict[str, list] = {"prompt": [], "chat": [], "prompt_text": [], "prompt_ids": []}
    if kind == "prompt":
        columns.update(reference=[], query_type=[])
    for name in answers:
        columns.update({name: [], f"{name}_ids": []})
    if weight_column:
        columns["pair_weight"] = []
    kept: list[Parsed] = []
    for i, row in enumerate(rows):
        if weights[i] == 0:
            stats.dropped_weight += 1
            continue
        p, text = prompt_ids[i], texts[i]
        ids = {name: answer_ids[name][i] for name in answers}
        if len(p) > max_p or any(len(x) > max_r for x in ids.values()):
            if cfg.on_long == "drop":
                stats.dropped_long += 1
                continue
            if len(p) > max_p:
                p = p[-max_p:]  # keep the end: the generation prompt
                text = tokenizer.decode(p, skip_special_tokens=False)
            ids = {name: x[:max_r] for name, x in ids.items()}  # keep the start of each answer
            if kind == "preference" and ids["chosen"] == ids["rejected"]:
                stats.dropped_long += 1
                continue
            stats.truncated += 1
        columns["prompt"].append(row.prompt)
        columns["chat"].append(row.messages if row.chat_given else None)
        columns["prompt_text"].append(text)
        columns["prompt_ids"].append(p)
        if kind == "prompt":
            columns["reference"].append(row.reference)
            columns["query_type"].append(row.query_type)
        for name in answers:
            columns[name].append(getattr(row, name))
            columns[f"{name}_ids"].append(ids[name])
        if weight_column:
            columns["pair_weight"].append(weights[i])
        kept.append(row)
    stats.kept = len(kept)
    if weight_column and kept:
        w = columns["pair_weight"]
        logger.info("%s: pair weights from column '%s' (data.weight_column): mean %.4g, min %.4g, max %.4g over %d rows; "
                    "%d rows of weight 0 dropped", stats.source, weight_column, sum(w) / len(w), min(w), max(w), len(w),
                    stats.dropped_weight)
    dataset = _to_dataset(columns, kept, stats.source)
    stats.log()
    if stats.dropped_long and cfg.on_long == "drop":
        logger.warning(
            "%s: dropped %d of %d rows over the length limits (prompt > %d or response > %d tokens); "
            "raise data.max_prompt_tokens / data.max_response_tokens or set data.on_long=truncate",
            stats.source, stats.dropped_long, stats.rows_read, max_p, max_r,
        )
    elif stats.dropped_long:
        logger.warning(
            "%s: dropped %d of %d pairs whose chosen and rejected became identical when cut to %d tokens",
            stats.source, stats.dropped_long, stats.rows_read, max_r,
        )
    return dataset, stats


def _weight(where: str, fields: dict, column: str) -> float:
    """A pair's weight from `data.weight_column`: a finite number >= 0 (a `DataError` naming row and field)."""
    value = fields.get(column)
    if value is None:
        raise DataError(where, "is missing (data.weight_column)", column)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise DataError(where, "must be a finite number >= 0 (data.weight_column)", column, f"got {short(value)}")
    return float(value)


def _render(row: Parsed, rendering: Rendering) -> str:
    """The prompt as the policy sees it (`actors.rendering`); a template failure names the row."""
    try:
        return rendering.prompt_text(row.messages if row.chat_given else row.messages[0]["content"])
    except RenderError as e:
        raise DataError(row.where, "cannot be rendered by the tokenizer's chat template", row.prompt_field, first_line(e)) from None


def _to_dataset(columns: dict[str, list], rows: list[Parsed], source: str) -> "datasets.Dataset":
    import datasets
    import pyarrow as pa

    ids = pa.list_(pa.int32())
    types = {"prompt": pa.string(), "prompt_text": pa.string(), "prompt_ids": ids, "reference": pa.string(),
             "query_type": pa.string(), "chosen": pa.string(), "rejected": pa.string(), "chosen_ids": ids, "rejected_ids": ids,
             "response": pa.string(), "response_ids": ids, "pair_weight": pa.float64(),
             "chat": pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))}
    arrays = {name: pa.array(values, type=types[name]) for name, values in columns.items()}
    extra_names: dict[str, None] = {}
    for row in rows:
        extra_names.update(dict.fromkeys(k for k in row.extras if k not in arrays))
    for name in extra_names:
        values = [row.extras.get(name) for row in rows]
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            first = next((type(v) for v in values if v is not None), type(None))
            odd = next((i for i, v in enumerate(values) if v is not None and type(v) is not first), None)
            where = rows[odd].where if odd is not None else source
            raise DataError(where, f"has a different type than in earlier rows ({TYPE_NAMES.get(first, first.__name__)})", name, first_line(e)) from None
    return datasets.Dataset.from_dict(arrays)
