"""Tiny random models of other Hugging Face families, built locally (no download), with tokenizers that
follow each family's conventions, and small data files in the user formats.

Each family is what a user brings, not our built-in Llama:

| family   | architecture          | what it tests                                                        |
|----------|-----------------------|----------------------------------------------------------------------|
| llama    | LlamaForCausalLM      | the built-in tokenizer (distinct pad, own chat template)             |
| gpt2     | GPT2LMHeadModel       | no pad token (pad == eos), learned absolute positions, Conv1D layers, |
|          |                       | no chat template, a 96-position limit                                |
| qwen2    | Qwen2ForCausalLM      | ChatML template (a newline after each <|im_end|>), no BOS, eos != pad |
| mistral  | MistralForCausalLM    | no pad token, a tokenizer that adds BOS itself, [INST] template,     |
|          |                       | sliding-window attention config                                      |
| gemma    | GemmaForCausalLM      | tied embeddings scaled by sqrt(hidden), (1 + w) RMSNorm, GeGLU,      |
|          |                       | <start_of_turn> template                                             |

`sequence_classifier(family, folder)` saves a freshly initialised `*ForSequenceClassification` of a
family: a reward model as a user would download it (no `rlhf_reward` in its config).
"""

from __future__ import annotations

import json
from pathlib import Path

FAMILIES = ("llama", "gpt2", "qwen2", "mistral", "gemma")

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
INST = ("{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] + '\n\n' }}"
        "{% elif m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}"
         "{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
         "{{ '<start_of_turn>' + role + '\n' + m['content'] + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")

# special tokens, named tokens and template of each family's tokenizer
_TOKENIZERS = {
    "gpt2": dict(special=["<|endoftext|>"], names=dict(eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                                        unk_token="<|endoftext|>"), template=None, add_bos=False),
    "qwen2": dict(special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                  names=dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"), template=CHATML, add_bos=False),
    "mistral": dict(special=["<unk>", "<s>", "</s>"], names=dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>"),
                    template=INST, add_bos=True),
    "gemma": dict(special=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
                  names=dict(pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"),
                  template=GEMMA, add_bos=True),
}

SMALL = dict(hidden=32, layers=2, heads=2, inter=64)
VLLM = dict(hidden=64, layers=2, heads=2, inter=128)
"""vLLM's CPU attention needs a head dimension of at least 32 (SMALL's is 16)."""


def build_families(root: Path) -> dict:
    """`build_family` of every family under root/<family>."""
    return {f: build_family(f, root / f) for f in FAMILIES}


def run_job(job: str, out, *overrides: str) -> dict:
    """`rlhf <job>` in this process for 2 steps, never resuming, into `out`; returns its summary."""
    from orchestrator.registry import load_config, run

    cfg = load_config(job, None, ["run.steps=2", "run.resume=never", f"run.output_dir={out}", *overrides])
    return run(job, cfg)


def family_tokenizer(family: str, cache: Path):
    """The family's tokenizer, a byte-level BPE trained on the built-in task's corpus."""
    from orchestrator.builtin.models import builtin_tokenizer

    if family == "llama":
        return builtin_tokenizer(cache_dir=str(cache))
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from orchestrator.builtin import world

    spec = _TOKENIZERS[family]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(world.corpus_texts(), trainer=trainers.BpeTrainer(
        vocab_size=600, special_tokens=spec["special"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2, show_progress=False))
    if spec["add_bos"]:
        bos = spec["names"]["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **spec["names"])
    extra = [t for t in spec["special"] if t not in spec["names"].values()]
    if extra:
        fast.add_special_tokens({"additional_special_tokens": extra})
    fast.chat_template = spec["template"]
    return fast


def family_config(family: str, tok, dims: dict = SMALL):
    """A tiny random config of the family for tokenizer `tok`, of size `dims` (SMALL, or VLLM)."""
    import transformers

    s = dims
    ids = dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
               pad_token_id=tok.pad_token_id)
    if family == "llama":
        from actors.modeling import tiny_llama_config

        return tiny_llama_config(tok, "tiny", hidden_size=s["hidden"], intermediate_size=s["inter"],
                                 num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["heads"])
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=s["hidden"], n_layer=s["layers"], n_head=s["heads"], n_positions=96, **ids)
    common = dict(hidden_size=s["hidden"], intermediate_size=s["inter"], num_hidden_layers=s["layers"],
                  num_attention_heads=s["heads"], num_key_value_heads=1, max_position_embeddings=256, **ids)
    if family == "qwen2":
        return transformers.Qwen2Config(tie_word_embeddings=True, **common)
    if family == "mistral":
        return transformers.MistralConfig(sliding_window=64, **common)
    if family == "gemma":
        return transformers.GemmaConfig(head_dim=s["hidden"] // s["heads"], **common)
    raise ValueError(f"unknown family {family!r}; families: {FAMILIES}")


def build_family(family: str, root: Path, seed: int = 0, dims: dict = SMALL) -> dict:
    """Build the family's causal LM folder (of size `dims`) and data files under `root`. Returns their paths:
    model, sft (chat rows), prefs (prompt/chosen/rejected with chat prompts), prompts (multi-turn chats
    and plain strings), hh (HH-RLHF layout pairs), and the tokenizer object."""
    import transformers

    from actors.modeling import _seeded

    root.mkdir(parents=True, exist_ok=True)
    tok = family_tokenizer(family, root / "cache")
    config = family_config(family, tok, dims)
    model = _seeded(seed, lambda: transformers.AutoModelForCausalLM.from_config(config))
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    paths = {"model": str(model_dir), "tokenizer": tok, "family": family}
    paths.update(write_data(root))
    return paths


def sequence_classifier(family: str, root: Path, seed: int = 1) -> str:
    """A `*ForSequenceClassification` folder of the family (1 label), as a hub reward model is saved."""
    import transformers

    from actors.modeling import _seeded

    tok = family_tokenizer(family, root / "cache")
    config = family_config(family, tok)
    config.num_labels = 1
    model = _seeded(seed, lambda: transformers.AutoModelForSequenceClassification.from_config(config))
    folder = root / "classifier"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


CHATS = [
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What color is a banana?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Tell me about apples."}],
    "Tell me about music.",
    "Which fruit is sweet?",
]
GOOD = ["A banana is yellow.", "Apples are sweet and crisp.", "Music has melody and rhythm.", "The pear is sweet."]
BAD = ["Blue.", "No.", "lol !!", "The hammer."]


def write_data(root: Path) -> dict:
    """Small user files: sft.jsonl (messages), prefs.jsonl (chat prompts), prompts.jsonl, hh.jsonl."""
    rows = list(zip(CHATS, GOOD, BAD)) * 4  # 16 rows
    out = {name: root / f"{name}.jsonl" for name in ("sft", "prefs", "prompts", "hh")}
    with open(out["sft"], "w") as f:
        for p, good, _ in rows:
            messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
            f.write(json.dumps({"messages": messages + [{"role": "assistant", "content": good}]}) + "\n")
    with open(out["prefs"], "w") as f:
        for p, good, bad in rows:
            f.write(json.dumps({"prompt": p, "chosen": good, "rejected": bad}) + "\n")
    with open(out["prompts"], "w") as f:
        for p, _, _ in rows:
            f.write(json.dumps({"prompt": p} if isinstance(p, str) else {"messages": p}) + "\n")
    with open(out["hh"], "w") as f:
        for p, good, bad in rows:
            dialogue = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}"
                               for m in ([{"role": "user", "content": p}] if isinstance(p, str) else p) if m["role"] != "system")
            f.write(json.dumps({"chosen": f"{dialogue}\n\nAssistant: {good}", "rejected": f"{dialogue}\n\nAssistant: {bad}"}) + "\n")
    return {k: str(v) for k, v in out.items()}
