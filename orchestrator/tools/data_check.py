"""`rlhf data check FILE --kind prompt|preference|sft`: validate a whole dataset as a job would load it and
print counts and token-length statistics (exit 0 when usable, 2 on a malformed row or no usable row)."""

from __future__ import annotations

import argparse
import sys

from actors.config import first_line
from orchestrator.config import DataConfig
from orchestrator.data.load import load_rows
from orchestrator.data.stats import DataError, short
from orchestrator.tools.args import non_negative_int, positive_int

__all__ = ["HELP", "DESCRIPTION", "add_args", "run"]

HELP = "validate a dataset and print counts and token-length statistics"
DESCRIPTION = "Reads the whole dataset as a job would load it (docs/your-model-and-data.md); exit 0 when usable, 2 otherwise."


def add_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of `rlhf data check` (defaults from DataConfig)."""
    d = DataConfig()
    parser.add_argument("file", help="a .json/.jsonl/.parquet file, a hub dataset name, or builtin:prompts|builtin:preferences")
    parser.add_argument("--kind", choices=["prompt", "preference", "sft"], required=True, help="what the rows hold")
    parser.add_argument("--tokenizer", default="builtin", metavar="NAME_OR_PATH", help="tokenizer name or folder (default: the built-in one)")
    parser.add_argument("--split", default=d.split, help=f"split of a hub or builtin dataset (default {d.split})")
    parser.add_argument("--max-prompt-tokens", type=positive_int, default=d.max_prompt_tokens, metavar="N",
                        help=f"longest prompt, in tokens after the chat template (default {d.max_prompt_tokens})")
    parser.add_argument("--max-response-tokens", type=positive_int, default=d.max_response_tokens, metavar="N",
                        help=f"longest chosen/rejected response, in tokens with eos (default {d.max_response_tokens})")
    parser.add_argument("--on-long", choices=["drop", "truncate"], default=d.on_long, help=f"rows over the limits (default {d.on_long})")
    parser.add_argument("--on-error", choices=["raise", "skip"], default=d.on_error, help=f"malformed rows (default {d.on_error})")
    parser.add_argument("--no-chat-template", action="store_true", help="do not apply the tokenizer's chat template")
    parser.add_argument("--max-rows", type=non_negative_int, default=0, metavar="N", help="check only the first N rows (0 = all)")


def run(args: argparse.Namespace) -> int:
    """Validate a whole dataset and print counts and token-length statistics.

    Exit code 0 when it is usable (with --on-error skip, skipped rows are reported, not fatal);
    2 on a malformed row (one line on stderr), an unreadable source or tokenizer, or no usable row.
    """
    cfg = DataConfig(
        path=args.file, split=args.split, max_prompt_tokens=args.max_prompt_tokens,
        max_response_tokens=args.max_response_tokens, on_long=args.on_long, on_error=args.on_error,
        chat_template=not args.no_chat_template, max_rows=args.max_rows,
    )
    try:
        tokenizer = _load_tokenizer(args.tokenizer)
    except Exception as e:  # noqa: BLE001
        print(f"rlhf: error: cannot load tokenizer '{args.tokenizer}' ({type(e).__name__}: {first_line(e)})", file=sys.stderr)
        return 2
    try:
        dataset, stats = load_rows(args.kind, cfg, tokenizer, eval_set=False)  # an empty result is reported below
    except DataError as e:
        print(f"rlhf: error: {e}", file=sys.stderr)
        return 2
    template = "on" if cfg.chat_template and getattr(tokenizer, "chat_template", None) else "off"
    print(f"{stats.source}: {args.kind} data, tokenizer {args.tokenizer}, chat template {template}, "
          f"limits prompt {cfg.max_prompt_tokens} / response {cfg.max_response_tokens} tokens (on_long={cfg.on_long})")
    print(stats.table())
    if len(dataset):
        print(f"  first row as the model sees it: {short(dataset[0]['prompt_text'], 160)}")
    if stats.kept == 0:
        print(f"rlhf: error: {stats.source}: no usable rows ({stats.rows_read} read)", file=sys.stderr)
        return 2
    if stats.n_skipped:
        print(f"WARNING: {stats.n_skipped} of {stats.rows_read} rows were skipped as malformed (reasons above); "
              "they will be missing from training")
    else:
        print(f"OK: {stats.kept} of {stats.rows_read} rows usable")
    return 0


def _load_tokenizer(name: str):
    from actors.modeling import load_tokenizer
    from orchestrator.builtin.models import builtin_tokenizer

    return builtin_tokenizer() if name == "builtin" else load_tokenizer(name)
