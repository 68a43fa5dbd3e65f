"""Models and tokenizers: a locally trained byte-level BPE tokenizer, tiny Llama configs, and loaders
for any Hugging Face model name or folder. Knows nothing of the task or of the training loop.

Tokenizer conventions (built-in tokenizer):
* special tokens `<|pad|>`, `<|eos|>`, `<|bos|>`, `<|unk|>` and the role markers `<|system|>`,
  `<|user|>`, `<|assistant|>`;
* `tokenizer(text)` adds no special tokens (no BOS/EOS post-processor); the chat template adds them:
  `<|bos|>` + for each turn `<|role|>content` (assistant turns end with `<|eos|>`) + `<|assistant|>`
  when `add_generation_prompt=True`. No spaces or newlines are inserted around the markers;
* `padding_side` is set to "left" explicitly, but callers should pass or set the side they need per call
  (prompts are left-padded, responses right-padded);
* byte-level: `decode(encode(text)) == text` for any text without special-token strings.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Optional, Sequence

import torch
import transformers

from actors.config import first_line
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

logger = logging.getLogger(__name__)

PAD, EOS, BOS, UNK = "<|pad|>", "<|eos|>", "<|bos|>", "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, EOS, BOS, UNK) + ROLE_TOKENS

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('role must be system, user, assistant or tool, got ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
"""`<|bos|><|system|>S<|user|>U<|assistant|>A<|eos|>...`, then `<|assistant|>` with add_generation_prompt; a tool
result is `<|tool|>T` (not a special token: the tool role came after the vocabulary, which it would change)."""

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# Presets of `tiny_llama_config`. Parameter counts are for the built-in tokenizer (vocab ~1k),
# untied embeddings; `PARAM_RANGES` is what the tests hold each preset to.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=352, max_position_embeddings=256),
    "small": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6,
                  intermediate_size=1024, max_position_embeddings=512),
    "50m": dict(hidden_size=640, num_hidden_layers=10, num_attention_heads=10, num_key_value_heads=10,
                intermediate_size=1728, max_position_embeddings=1024),
}
PARAM_RANGES: dict[str, tuple[float, float]] = {"tiny": (0.8e6, 3e6), "small": (8e6, 15e6), "50m": (40e6, 60e6)}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> transformers.PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` (deterministic for the same texts) with the special
    tokens, chat template and padding conventions of the module docstring.

    No normaliser and `add_prefix_space=False`, so the round trip is exact: a leading space is its own
    byte, and the ByteLevel decoder restores every byte. The vocabulary can end below `vocab_size` when
    the corpus has fewer merges to offer.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD, eos_token=EOS, bos_token=BOS, unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama_config(tokenizer, size: str = "tiny", **overrides) -> transformers.LlamaConfig:
    """A LlamaConfig of preset `size` ("tiny" ~1M params, "small" ~11M, "50m" ~51M with a 1k vocab),
    with vocab and pad/bos/eos ids from `tokenizer`. `overrides` go to LlamaConfig (e.g.
    `tie_word_embeddings=True`, `num_hidden_layers=2`)."""
    if size not in PRESETS:
        raise ValueError(f"size must be one of {sorted(PRESETS)}, got {size!r}")
    kwargs = dict(
        PRESETS[size],
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        attention_bias=False,
        initializer_range=0.02,
    )
    kwargs.update(overrides)
    return transformers.LlamaConfig(**kwargs)


def _seeded(seed: int, build):
    """Run `build()` under `seed` without disturbing the caller's global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_causal_lm(config: transformers.PretrainedConfig, seed: int = 0) -> transformers.LlamaForCausalLM:
    """A freshly initialised Llama causal LM; the same `seed` gives the same weights."""
    return _seeded(seed, lambda: transformers.LlamaForCausalLM(config))


def build_sequence_classifier(config: transformers.PretrainedConfig, num_labels: int = 1, seed: int = 0
                              ) -> transformers.LlamaForSequenceClassification:
    """A freshly initialised Llama sequence classifier with `num_labels` outputs (1 = scalar reward)."""
    config = config.__class__.from_dict({**config.to_dict(), "num_labels": num_labels})
    return _seeded(seed, lambda: transformers.LlamaForSequenceClassification(config))


def resolve_dtype(dtype: str) -> str:
    """A role's `dtype` as this process computes it: "auto" is "bf16" where the hardware computes bf16
    natively (a CUDA GPU that supports it; without CUDA, a CPU with AMX or AVX512-BF16), else "fp32";
    "fp32" and "bf16" stay. Resolved where the role runs (each replica's own hardware)."""
    if dtype != "auto":
        return dtype
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() or getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return "bf16" if native else "fp32"


def torch_dtype(dtype: str) -> torch.dtype:
    """"fp32" -> torch.float32, "bf16" -> torch.bfloat16, "auto" -> `resolve_dtype`; anything else is a ValueError."""
    dtype = resolve_dtype(dtype)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or auto, got {dtype!r}")
    return DTYPES[dtype]


class ModelLoadError(OSError):
    """A model or tokenizer could not be loaded; the message names the path."""


@contextlib.contextmanager
def _naming(name_or_path: str):
    """Errors while loading `name_or_path` become one `ModelLoadError` naming it (transformers' own messages
    often name neither the folder nor the file, e.g. a truncated safetensors file)."""
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load {name_or_path!r}: {type(e).__name__}: {first_line(e)}") from e


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """Load a tokenizer by Hugging Face name or folder; guarantee a pad token (the EOS token if the
    tokenizer has none, with a warning)."""
    with _naming(name_or_path):
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {name_or_path!r} has neither a pad nor an eos token")
        logger.warning("tokenizer %s has no pad token; using its eos token %r for padding", name_or_path, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _ensure_pad_id(model, name_or_path: str) -> None:
    config = model.config
    if getattr(config, "pad_token_id", None) is not None:
        return
    eos = getattr(config, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    if eos is None:
        raise ValueError(f"model {name_or_path!r} has neither pad_token_id nor eos_token_id in its config")
    logger.warning("model %s has no pad_token_id; using eos_token_id %d", name_or_path, eos)
    config.pad_token_id = eos
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = eos


def attention_implementation(dtype: str) -> Optional[str]:
    """The attention kernel a model is loaded with: transformers' default (SDPA) except for bf16 without
    CUDA, where "eager". Measured on this project's 2-core AMX CPU (Llama 7.4M, 16 x 65 tokens, forward +
    backward): SDPA's CPU flash-attention backward in bf16 took 8.7 ms per layer call against 1.3 ms in
    fp32, so a bf16 step was 1.34x faster than fp32 with SDPA and 1.85x with eager attention."""
    return "eager" if resolve_dtype(dtype) == "bf16" and not torch.cuda.is_available() else None


def _attention_kwargs(dtype: str) -> dict:
    impl = attention_implementation(dtype)
    return {"attn_implementation": impl} if impl else {}


def load_causal_lm(name_or_path: str, dtype: str = "fp32", trust_remote_code: bool = False):
    """Load any Hugging Face causal LM by name or folder in `dtype` ("fp32" | "bf16"), with the attention
    kernel of `attention_implementation`. `trust_remote_code` stays False unless passed; config.pad_token_id
    is always set afterwards."""
    dt = torch_dtype(dtype)
    with _naming(name_or_path):
        model = transformers.AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dt, trust_remote_code=trust_remote_code,
                                                                  **_attention_kwargs(dtype))
    _ensure_pad_id(model, name_or_path)
    return model


def load_sequence_classifier(name_or_path: str, num_labels: int = 1, dtype: str = "fp32",
                             trust_remote_code: bool = False):
    """Load any Hugging Face sequence classifier by name or folder; from a causal-LM folder the
    classification head is freshly initialised. pad_token_id is set (the head reads the last non-pad token)."""
    dt = torch_dtype(dtype)
    with _naming(name_or_path):
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            name_or_path, num_labels=num_labels, dtype=dt, trust_remote_code=trust_remote_code, **_attention_kwargs(dtype))
    _ensure_pad_id(model, name_or_path)
    return model


ALL_LINEAR = "all-linear"
"""`lora.target_modules` value (and the meaning of an empty list): every linear layer of the transformer blocks."""


def _is_linear(module: torch.nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D  # GPT-2's transposed linear layers

    return isinstance(module, (torch.nn.Linear, Conv1D))


def linear_layers(model: torch.nn.Module, exclude: Iterable[str] = ()) -> dict[str, int]:
    """{last name component: count} of the linear layers of `model` (nn.Linear and GPT-2's Conv1D),
    without the output embeddings (LM head) and without modules under a name in `exclude` (heads that
    train in full, e.g. a reward model's `score`)."""
    skip = set(exclude)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found: dict[str, int] = {}
    for name, module in model.named_modules():
        if not name or module is head or skip.intersection(name.split(".")) or not _is_linear(module):
            continue
        last = name.split(".")[-1]
        found[last] = found.get(last, 0) + 1
    return found


def lora_targets(model: torch.nn.Module, requested: Sequence[str], exclude: Iterable[str] = ()) -> list[str]:
    """The module names LoRA adapts in `model`: every linear layer of the blocks for an empty list or
    'all-linear' (as QLoRA and OpenRLHF default to), else the requested names, each of which must name
    a linear layer (ValueError listing the model's linear layers otherwise)."""
    available = linear_layers(model, exclude)
    kind = type(model).__name__
    if not available:
        raise ValueError(f"{kind} has no linear layers for LoRA adapters")
    if not requested or list(requested) == [ALL_LINEAR]:
        return sorted(available)
    missing = [n for n in requested if n not in available]
    if missing:
        raise ValueError(f"no linear layer named {', '.join(missing)} in {kind}; its linear layers are "
                         f"{', '.join(sorted(available))} (or use [] / all-linear for all of them)")
    return list(requested)


def model_skeleton(name_or_path: str, kind: str = "causal", num_labels: int = 1, trust_remote_code: bool = False):
    """The model of a folder or hub name built on the meta device (no weights read, no memory): for
    checks before any role starts (LoRA targets, module names). kind: "causal" or "classifier"."""
    config = transformers.AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    auto = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModelForSequenceClassification
    if kind != "causal":
        config.num_labels = num_labels
    with torch.device("meta"):
        return auto.from_config(config, trust_remote_code=trust_remote_code)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in params.values())


__all__ = [
    "CHAT_TEMPLATE", "PRESETS", "PARAM_RANGES", "SPECIAL_TOKENS", "train_bpe_tokenizer", "tiny_llama_config",
    "build_causal_lm", "build_sequence_classifier", "torch_dtype", "load_tokenizer", "load_causal_lm",
    "load_sequence_classifier", "count_parameters", "ALL_LINEAR", "linear_layers", "lora_targets", "model_skeleton",
]
