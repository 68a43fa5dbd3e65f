"""Datasets for the jobs, one module per concern:

- `sources`: reading raw rows (JSON, JSON lines, Parquet, folders of shards, `builtin:NAME`, hub datasets);
- `rows`: validating prompt, preference and SFT rows in every accepted layout (chats, HH-RLHF dialogues);
- `load`: rendering (`actors.rendering`), tokenizing and length limits: `load_prompts`, `load_preferences`, `load_sft`;
- `collate`: prompt rows -> the left-padded `PromptBatch` a policy samples from;
- `stats`: `DataError` (one line naming file, row and field) and `DataStats`.

The formats, the columns and the length rules are in docs/your-model-and-data.md; `rlhf data check` is
`orchestrator.tools.data_check`.
"""

from orchestrator.data.collate import collate_prompts, to_prompt_batch
from orchestrator.data.load import load_preferences, load_prompts, load_rows, load_sft
from orchestrator.data.sources import read_rows
from orchestrator.data.stats import DataError, DataStats, LengthStats

__all__ = ["DataError", "DataStats", "LengthStats", "collate_prompts", "to_prompt_batch", "load_preferences", "load_prompts",
           "load_rows", "load_sft", "read_rows"]
