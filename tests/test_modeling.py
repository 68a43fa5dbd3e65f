"""Tokenizer, tiny Llama models, loaders and the built-in model cache. No network, no Ray; caches go to
tmp_path through RLHF_CACHE."""

import inspect
import logging
import os

import pytest
import torch
import transformers

from actors import modeling
from orchestrator.builtin import models as builtin, world


@pytest.fixture(scope="module")
def tokenizer():
    return modeling.train_bpe_tokenizer(world.corpus_texts())


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return modeling.build_causal_lm(modeling.tiny_llama_config(tokenizer), seed=0)


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))


def _batch(tokenizer):
    texts = ["Tell me about fruit.", "What color is a banana? A banana is yellow."]
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")


# --- tokenizer --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "Tell me about fruit.",
    "  leading and trailing spaces  ",
    " I like the apple, the pear and the kiwi! lol !!",
    "Punctuation: (a), [b]; {c}? \"quoted\" - 'single' ...",
    "tabs\tand\nnew lines\r\n",
    "Ünïcödé, emoji \U0001F600 and CJK 漢字",
    "multiple   inner    spaces",
    "",
])
def test_tokenizer_round_trip(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert tokenizer(text)["input_ids"] == ids  # no BOS/EOS added outside the chat template


def test_tokenizer_special_tokens_and_padding_side(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in modeling.SPECIAL_TOKENS]
    assert len(set(ids)) == len(ids) and tokenizer.unk_token_id is not None
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token) == ("<|pad|>", "<|eos|>", "<|bos|>")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "left"
    assert len(tokenizer) <= 1024
    # world words are single tokens: short sequences for the tiny model
    assert len(tokenizer.encode(" banana")) == 1


def test_tokenizer_training_is_deterministic(tokenizer):
    again = modeling.train_bpe_tokenizer(world.corpus_texts())
    assert again.get_vocab() == tokenizer.get_vocab()


def test_chat_template_renders_exactly(tokenizer):
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about fruit."},
        {"role": "assistant", "content": "I like the apple."},
        {"role": "user", "content": "More?"},
    ]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == (
        "<|bos|><|system|>Be brief.<|user|>Tell me about fruit.<|assistant|>I like the apple.<|eos|><|user|>More?")
    assert tokenizer.apply_chat_template(chat[1:2], tokenize=False, add_generation_prompt=True) == (
        "<|bos|><|user|>Tell me about fruit.<|assistant|>")
    ids = tokenizer.apply_chat_template(chat[1:3], tokenize=False)
    ids = tokenizer(ids)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert ids[1] == tokenizer.convert_tokens_to_ids("<|user|>")
    assert tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False) == "<|bos|><|tool|>x"
    with pytest.raises(Exception, match="role must be system, user, assistant or tool, got bot"):
        tokenizer.apply_chat_template([{"role": "bot", "content": "x"}], tokenize=False)


def test_tokenizer_save_reload_gives_identical_ids(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = modeling.load_tokenizer(str(tmp_path / "tok"))
    texts = ["  Hello  world ", "What sound does a cow make?", "A cow says moo omg !!"]
    assert [loaded.encode(t) for t in texts] == [tokenizer.encode(t) for t in texts]
    assert loaded.chat_template == tokenizer.chat_template
    assert loaded.pad_token_id == tokenizer.pad_token_id and loaded.padding_side == "left"
    chat = [{"role": "user", "content": "Hi"}]
    assert loaded.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == "<|bos|><|user|>Hi<|assistant|>"


def test_load_tokenizer_falls_back_to_eos_for_padding(tokenizer, tmp_path, caplog):
    no_pad = modeling.train_bpe_tokenizer(["a few words", "a few more words"], vocab_size=300)
    no_pad.pad_token = None
    no_pad.save_pretrained(tmp_path / "nopad")
    with caplog.at_level(logging.WARNING, logger="actors.modeling"):
        loaded = modeling.load_tokenizer(str(tmp_path / "nopad"))
    assert loaded.pad_token == "<|eos|>" and "no pad token" in caplog.text


# --- models -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["tiny", "small", "50m"])
def test_preset_parameter_counts(tokenizer, size):
    config = modeling.tiny_llama_config(tokenizer, size)
    with torch.device("meta"):  # count without allocating
        model = transformers.LlamaForCausalLM(config)
    low, high = modeling.PARAM_RANGES[size]
    assert low <= modeling.count_parameters(model) <= high
    assert (config.pad_token_id, config.eos_token_id, config.bos_token_id) == (
        tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)
    assert config.vocab_size == len(tokenizer)


def test_tiny_config_overrides_and_bad_size(tokenizer):
    tied = modeling.build_causal_lm(modeling.tiny_llama_config(tokenizer, tie_word_embeddings=True))
    untied = modeling.build_causal_lm(modeling.tiny_llama_config(tokenizer))
    assert modeling.count_parameters(untied) - modeling.count_parameters(tied) == len(tokenizer) * 128
    assert modeling.tiny_llama_config(tokenizer, num_hidden_layers=2).num_hidden_layers == 2
    with pytest.raises(ValueError, match="size"):
        modeling.tiny_llama_config(tokenizer, "huge")


def test_build_is_deterministic_and_leaves_global_rng_alone(tokenizer, tiny):
    config = modeling.tiny_llama_config(tokenizer)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    same = modeling.build_causal_lm(config, seed=0)
    assert torch.equal(torch.rand(3), expected)
    other = modeling.build_causal_lm(config, seed=1)
    for (name, a), b, c in zip(tiny.named_parameters(), same.parameters(), other.parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(tiny.model.embed_tokens.weight, other.model.embed_tokens.weight)


def test_save_load_gives_identical_logits_fp32_and_bf16_loads(tokenizer, tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    batch = _batch(tokenizer)
    loaded = modeling.load_causal_lm(str(tmp_path / "m"))
    tiny.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(tiny(**batch).logits, loaded(**batch).logits)
    half = modeling.load_causal_lm(str(tmp_path / "m"), dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    with torch.no_grad():
        logits = half(**batch).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="dtype"):
        modeling.load_causal_lm(str(tmp_path / "m"), dtype="fp16")


def test_sequence_classifier_builds_and_loads_from_a_causal_lm_folder(tokenizer, tiny, tmp_path):
    config = modeling.tiny_llama_config(tokenizer)
    rm = modeling.build_sequence_classifier(config, num_labels=1, seed=0)
    batch = _batch(tokenizer)
    assert rm(**batch).logits.shape == (2, 1)
    tiny.save_pretrained(tmp_path / "lm")
    loaded = modeling.load_sequence_classifier(str(tmp_path / "lm"), num_labels=3)
    assert loaded.config.pad_token_id == tokenizer.pad_token_id
    assert loaded(**batch).logits.shape == (2, 3)
    assert torch.equal(loaded.model.embed_tokens.weight, tiny.model.embed_tokens.weight)


def test_loaders_set_a_missing_pad_token_id(tokenizer, tmp_path):
    config = modeling.tiny_llama_config(tokenizer, pad_token_id=None, num_hidden_layers=1)
    modeling.build_causal_lm(config).save_pretrained(tmp_path / "nopad")
    assert modeling.load_causal_lm(str(tmp_path / "nopad")).config.pad_token_id == tokenizer.eos_token_id


def test_trust_remote_code_is_off_unless_asked(monkeypatch):
    for fn in (modeling.load_tokenizer, modeling.load_causal_lm, modeling.load_sequence_classifier):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False
    calls = []

    class Stop(Exception):
        pass

    def record(name_or_path, **kwargs):
        calls.append(kwargs)
        raise Stop

    for auto in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM,
                 transformers.AutoModelForSequenceClassification):
        monkeypatch.setattr(auto, "from_pretrained", record)
    for fn in (modeling.load_tokenizer, modeling.load_causal_lm, modeling.load_sequence_classifier):
        for kwargs in ({}, {"trust_remote_code": True}):
            with pytest.raises(modeling.ModelLoadError, match="^cannot load 'some-org/some-model': Stop") as e:
                fn("some-org/some-model", **kwargs)
            assert isinstance(e.value.__cause__, Stop)  # the loader's own error, named and chained
    assert [c["trust_remote_code"] for c in calls] == [False, True] * 3


# --- built-in model cache ---------------------------------------------------------------------------


def test_builtin_model_dir_builds_once_and_loads_offline(tmp_path, monkeypatch):
    path = builtin.builtin_model_dir("tiny")
    root = tmp_path / "cache" / "builtin"
    assert os.path.dirname(path) == str(root) and os.path.basename(path).startswith("tiny-")
    assert not [p for p in os.listdir(root) if ".tmp-" in p]  # no leftovers of the atomic write

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(modeling, "build_causal_lm", no_rebuild)
    monkeypatch.setattr(modeling, "train_bpe_tokenizer", no_rebuild)
    assert builtin.builtin_model_dir("tiny") == path
    model, tok = modeling.load_causal_lm(path), modeling.load_tokenizer(path)
    assert model.config.pad_token_id == tok.pad_token_id
    assert low_high(model, "tiny")
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert builtin.builtin_tokenizer().get_vocab() == tok.get_vocab()
    # the cache key covers the build parameters
    assert builtin.cache_root() == tmp_path / "cache"
    from orchestrator.builtin.policy import resolve_model_path

    assert resolve_model_path("org/model") == "org/model"
    assert resolve_model_path("builtin:tiny-base") == path
    with pytest.raises(ValueError, match="built-in models"):
        resolve_model_path("builtin:huge")
    with pytest.raises(ValueError, match="size"):
        builtin.builtin_model_dir("huge")


def low_high(model, size):
    low, high = modeling.PARAM_RANGES[size]
    return low <= modeling.count_parameters(model) <= high


def test_builtin_cache_key_depends_on_seed_and_overrides(tmp_path):
    a = builtin.builtin_model_dir("tiny", cache_dir=str(tmp_path / "other"), seed=0, num_hidden_layers=1)
    b = builtin.builtin_model_dir("tiny", cache_dir=str(tmp_path / "other"), seed=1, num_hidden_layers=1)
    assert a != b and a.startswith(str(tmp_path / "other"))
    assert modeling.load_causal_lm(a).config.num_hidden_layers == 1
