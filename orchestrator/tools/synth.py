"""Models from a size spec and data synthesised at given lengths: what `rlhf bench` and the side-by-side
benchmarks (`benchmarks/`) run on, so that a speed number names its model and its lengths exactly.

A **size spec** is `family:key=value,...`, e.g. `llama:vocab=8192,hidden=256,intermediate=704,layers=4,heads=4`.
The family is a transformers `model_type` (llama, gpt2, qwen2, mistral, ...); keys are that family's
config keys or the short names of `ALIASES`. `spec_model_dir(spec)` builds, once per spec (cached under
`$RLHF_CACHE/spec/`), a folder with a random-init causal LM, a word-level tokenizer of exactly `vocab`
tokens (so that every id is one word and text round-trips to the same ids), and `reward/`, a sequence
classifier of the same shape with one output (what a reward model or a critic is).

**Synthesised rows** (`synth_rows`) are random non-special tokens of the model's tokenizer decoded to
text: `prompt` rows for PPO, `preference` rows for DPO and reward models, `sft` rows (the kinds of
`orchestrator.data.rows`). With a spec's
word-level tokenizer the lengths are exact; with a user's BPE tokenizer, text re-encodes to about the
asked lengths (the bench reports the measured ones).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional

ALIASES = {"vocab": "vocab_size", "hidden": "hidden_size", "intermediate": "intermediate_size",
           "layers": "num_hidden_layers", "heads": "num_attention_heads", "kv_heads": "num_key_value_heads",
           "positions": "max_position_embeddings"}
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
KINDS = ("prompt", "preference", "sft")
SPEC_VERSION = 1
"""Bump when the way spec folders are built changes; old cache folders are then ignored."""


class SpecError(ValueError):
    """A size spec that cannot be built; the message names the spec and the key."""


def is_spec(text: str) -> bool:
    """`family:key=value,...` (a folder or hub name has no '=' after a ':')."""
    head, sep, tail = text.partition(":")
    return bool(sep) and "=" in tail and "/" not in head and not Path(text).exists()


def parse_spec(spec: str) -> tuple[str, dict]:
    """('llama', {'vocab_size': 8192, ...}) from 'llama:vocab=8192,...'; values are ints, floats, true/false or text."""
    family, _, body = spec.partition(":")
    keys: dict = {}
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SpecError(f"size spec {spec!r}: {item!r} is not key=value")
        keys[ALIASES.get(key.strip(), key.strip())] = _value(value.strip())
    if "vocab_size" not in keys:
        raise SpecError(f"size spec {spec!r}: needs vocab=<size> (the word-level tokenizer is built with exactly that many tokens)")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "n_embd", "n_layer", "n_head", "max_position_embeddings", "n_positions"):
        if key in keys and (not isinstance(keys[key], int) or isinstance(keys[key], bool) or keys[key] < 1):
            raise SpecError(f"size spec {spec!r}: {key}={keys[key]!r} must be a whole number >= 1")
    if keys["vocab_size"] < len(SPECIALS) + 16:
        raise SpecError(f"size spec {spec!r}: vocab={keys['vocab_size']} is too small (at least {len(SPECIALS) + 16})")
    return family.strip(), keys


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def spec_config(spec: str):
    """The transformers config of `spec` (pad/bos/eos ids of the word-level tokenizer; untied embeddings
    unless the spec says otherwise)."""
    import transformers

    family, keys = parse_spec(spec)
    try:
        config_cls = transformers.AutoConfig.for_model(family).__class__
    except ValueError:
        raise SpecError(f"size spec {spec!r}: {family!r} is not a transformers model_type (e.g. llama, gpt2, qwen2, mistral)") from None
    known = set(config_cls().to_dict()) | set(getattr(config_cls, "attribute_map", {}))
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise SpecError(f"size spec {spec!r}: {', '.join(unknown)} is not a key of {config_cls.__name__} "
                        f"(short names: {', '.join(ALIASES)})")
    try:
        return config_cls(**{**dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False), **keys})
    except Exception as e:  # transformers' own validation (e.g. hidden not a multiple of heads), whatever its class
        reason = str(e).strip().splitlines()[-1].strip()
        raise SpecError(f"size spec {spec!r}: {config_cls.__name__} refuses it: {reason}") from None


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer of exactly `vocab_size` tokens: the specials of `SPECIALS`, then 'w4', 'w5', ...;
    whitespace-split, so decode then encode gives the same ids. Left padding (generation), no chat template."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>", padding_side="left", clean_up_tokenization_spaces=False)


def spec_model_dir(spec: str, cache_dir: Optional[str] = None, seed: int = 0) -> str:
    """Folder of `spec`'s random-init causal LM + tokenizer, with `reward/` (a sequence classifier, one
    output, seed + 1). Built on first use (atomically), then reused."""
    import hashlib

    import torch
    import transformers

    from orchestrator.core.cache import build_atomically, cache_root

    config = spec_config(spec)
    family, keys = parse_spec(spec)
    key = hashlib.sha256(json.dumps({"spec": [family, keys], "seed": seed, "v": SPEC_VERSION}, sort_keys=True).encode()).hexdigest()[:12]

    def build(tmp: Path) -> None:
        tokenizer = word_tokenizer(config.vocab_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp, safe_serialization=True)
            torch.manual_seed(seed + 1)
            rm_config = config.__class__.from_dict({k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")} | {"num_labels": 1})
            transformers.AutoModelForSequenceClassification.from_config(rm_config).save_pretrained(tmp / "reward", safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp / "reward")
        (tmp / "SPEC").write_text(spec + "\n")

    return str(build_atomically(cache_root(cache_dir) / "spec" / f"{family}-{key}", build))


def synth_rows(kind: str, tokenizer, n: int, prompt_len: int | tuple[int, int], response_len: int | tuple[int, int],
               seed: int = 0) -> list[dict]:
    """`n` rows of `kind` (prompt | preference | sft) of random non-special tokens, decoded to text. A
    length is a number of tokens, or (lo, hi): each prompt and each response draws its own, uniform in
    lo..hi (chosen and rejected each their own)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]

    def text(length: int | tuple[int, int]) -> str:
        if not isinstance(length, int):  # (a fixed length draws nothing here: the same rows as ever)
            length = rng.randint(*length)
        return tokenizer.decode([rng.choice(ids) for _ in range(length)], skip_special_tokens=True)

    rows = []
    for _ in range(n):
        row = {"prompt": text(prompt_len)}
        if kind == "preference":
            row.update(chosen=" " + text(response_len), rejected=" " + text(response_len))
        elif kind == "sft":
            row["response"] = " " + text(response_len)
        rows.append(row)
    return rows


def write_rows(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
