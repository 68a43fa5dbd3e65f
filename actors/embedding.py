"""Frozen text features: any Hugging Face model, encoder or decoder, cut to its first `layers` blocks and
mean-pooled over the tokens (`TextEncoder`). `rlhf data audit` trains its small heads on these.

- builtin:minilm (the default of the audit) is the packaged all-MiniLM-L6-v2 (`actors.relevance.encoder_path`,
  no download); any other name or folder is loaded with `transformers.AutoModel`, trust_remote_code off
  unless asked.
- Only the first `layers` transformer blocks run (None: half of them, rounded up): the blocks after the one
  read are dropped from the model, so a cut encoder costs that share of the full one. The output is the mean of that block's
  hidden states over the attention mask (padding side does not matter).
- Texts longer than the model's positions (`max_length`) are cut at their start; `over_length` counts them.
- It runs on the first CUDA device when there is one (unverified here: this project's machines have no GPU),
  else on the CPU; features come back on the CPU in float32.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Callable, Optional, Sequence

import torch

from actors.modeling import _naming, load_tokenizer
from actors.relevance import encoder_path

logger = logging.getLogger("rlhf.embedding")

__all__ = ["TextEncoder"]


def _block_list(model) -> Optional[torch.nn.ModuleList]:
    """The model's list of transformer blocks: the ModuleList holding config.num_hidden_layers modules."""
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    return None


class TextEncoder:
    """A frozen model that turns texts into (N, D) float32 features (see the module docstring)."""

    def __init__(self, name: str, layers: Optional[int] = None, batch_size: int = 64, trust_remote_code: bool = False):
        import transformers

        self.name = name
        path = encoder_path(name)
        local = os.path.exists(path) or path.startswith((".", "/", "~"))
        if local and not os.path.isdir(os.path.expanduser(path)):
            raise ValueError(f"model {name!r}: no such folder")
        if local and not os.path.isfile(os.path.join(os.path.expanduser(path), "config.json")):
            raise ValueError(f"model {name!r}: not a Hugging Face model folder (no config.json)")
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar on stderr
        try:
            with _naming(name):
                self.model = transformers.AutoModel.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.eval().requires_grad_(False).to(self.device)
        total = int(getattr(self.model.config, "num_hidden_layers", 0) or 0)
        if layers is None:
            layers = (total + 1) // 2
        if layers < 1 or (total and layers > total):
            raise ValueError(f"--layers {layers}: {name} has {total} blocks; read one of 1..{total}")
        self.layer = layers  # the hidden state read: the output of this block
        blocks = _block_list(self.model)
        if blocks is not None and self.layer < len(blocks):
            del blocks[self.layer:]  # the blocks after the one read never run
        self.total_layers = total
        positions = getattr(self.model.config, "max_position_embeddings", None) or 10**9
        model_max = getattr(self.tokenizer, "model_max_length", None) or 10**9
        self.max_length = int(min(positions, model_max if model_max < 10**7 else positions))
        self.batch_size = batch_size
        self.inputs = {"input_ids", "attention_mask"} | ({"token_type_ids"} & set(inspect.signature(self.model.forward).parameters))
        self.dim = int(self.model.config.hidden_size)
        self.no_cache = "use_cache" in inspect.signature(self.model.forward).parameters
        self.cache: Optional[dict] = None  # text -> (D,) embedding, when set (`embed`)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text alone (no special tokens), uncut."""
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def over_length(self, counts: Sequence[int]) -> list[bool]:
        """Whether a text of these token counts is cut (its special tokens included)."""
        extra = self.tokenizer.num_special_tokens_to_add(pair=False)
        return [n + extra > self.max_length for n in counts]

    @torch.no_grad()
    def embed(self, texts: Sequence[str], progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
        """(N, D) mean-pooled hidden states of block `layer`; `progress(n)` after every n texts done.
        Texts run shortest first in batches of `batch_size`, so a batch carries little padding. With
        `cache` (a dict) set, texts embedded before are looked up, not run again."""
        out = torch.zeros(len(texts), self.dim)
        todo = range(len(texts))
        if self.cache is not None:
            todo = [i for i, t in enumerate(texts) if t not in self.cache]
            for i, t in enumerate(texts):
                if t in self.cache:
                    out[i] = self.cache[t]
        order = sorted(todo, key=lambda i: len(texts[i]))
        self.tokenizer.truncation_side = "left"
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in batch.items() if k in self.inputs}
            if self.no_cache:
                inputs["use_cache"] = False  # decoders: no KV cache for one forward
            hidden = self.model(**inputs, output_hidden_states=True).hidden_states[self.layer]  # (b, T, D)
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, T, 1)
            out[idx] = ((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)).float().cpu()
            if self.cache is not None:
                self.cache.update((texts[i], out[i].clone()) for i in idx)
            if progress is not None:
                progress(len(idx))
        return out
