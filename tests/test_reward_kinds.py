"""Reward kinds behind `actors.reward.build_scorer` (function, model, relevance, remote, weighted), their
config keys, the query-type classifier, the per-step reward diagnostics, and one PPO run with a
risk-averse quantile reward. Real models throughout: tiny Llama reward models saved to folders, the
packaged MiniLM encoder."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from actors.reward import build_scorer, check_reward_config
from actors.reward_head import RewardHead
from actors.types import Scores
from orchestrator.config import ConfigError, RewardConfig, load, to_yaml
from orchestrator.registry import load_config
from ppo_helpers import save_reward_model, tiny_model_dir, tiny_ppo_config

NORM_MEAN, NORM_STD = 0.3, 2.0
PROMPTS = ["Tell me about fruit.", "What color is a banana?", "Describe the ocean in a few words."]
RESPONSES = ["Apples and pears are sweet.", "A banana is yellow, I think, and long.", "Deep, blue and cold."]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def reward_dirs(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("rms")
    norm = dict(norm_mean=NORM_MEAN, norm_std=NORM_STD)
    heads = {
        "mean_variance": RewardHead("mean_variance", **norm),
        "categorical": RewardHead("categorical", num_atoms=5, **norm),
        "mixture": RewardHead("mixture", num_components=2, **norm),
        "odin": RewardHead("odin", **norm),
    }
    dirs = {name: save_reward_model(model_dir, root / name, head) for name, head in heads.items()}
    dirs["plain"] = save_reward_model(model_dir, root / "plain", None)
    return dirs


def _raw_outputs(folder: str, prompts=PROMPTS, responses=RESPONSES) -> torch.Tensor:
    """(N, num_labels) logits of transformers itself, one unpadded text at a time: independent of the
    scorer's batching and padding."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ppo_helpers import chat_text

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return torch.cat([
            model(**tok(chat_text(tok, p, r), return_tensors="pt", add_special_tokens=False)).logits
            for p, r in zip(prompts, responses)
        ]).double()


def _reward_cfg(*overrides: str) -> RewardConfig:
    return load(RewardConfig, None, ["batch_size=2", *overrides])  # batches of 2: padding is exercised


def _score(cfg: RewardConfig, prompts=PROMPTS, responses=RESPONSES, references=None, query_types=None) -> Scores:
    import cluster

    cluster.init_local()
    n = len(responses)
    return build_scorer(cfg)(prompts, responses, references or [None] * n, query_types or [None] * n)


# ---------------------------------------------------------------------------------------------- function


def test_function_kind():
    scores = _score(_reward_cfg("kind=function", "function=ppo_helpers:length_reward"))
    # words / 10: "Apples and pears are sweet." has 5 words, the banana answer 8, the ocean one 4
    torch.testing.assert_close(scores.reward, torch.tensor([0.5, 0.8, 0.4]), rtol=0, atol=1e-7)
    assert scores.std is None and scores.reward.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- model


def test_mean_variance_model_mean_and_quantile_equal_the_formula(reward_dirs):
    raw = _raw_outputs(reward_dirs["mean_variance"])  # (N, 2): mu, raw std
    mu, sigma = raw[:, 0], F.softplus(raw[:, 1])
    assert sigma.max() > 1.5 * sigma.min()  # the responses really differ in spread

    mean = _score(_reward_cfg("kind=model", f"path={reward_dirs['mean_variance']}"))
    torch.testing.assert_close(mean.reward.double(), (mu - NORM_MEAN) / NORM_STD, rtol=0, atol=2e-5)
    torch.testing.assert_close(mean.std.double(), sigma / NORM_STD, rtol=0, atol=2e-5)

    alpha = 0.2
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(alpha, dtype=torch.float64))  # -0.8416
    assert abs(z.item() + 0.841621) < 1e-5
    quant = _score(_reward_cfg("kind=model", f"path={reward_dirs['mean_variance']}", "statistic=quantile", f"alpha={alpha}"))
    torch.testing.assert_close(quant.reward.double(), (mu + z * sigma - NORM_MEAN) / NORM_STD, rtol=0, atol=2e-5)
    torch.testing.assert_close(quant.std, mean.std)
    assert (quant.reward < mean.reward).all()  # a lower quantile is below the mean for a normal


def test_categorical_model_mean_std_and_quantile(reward_dirs):
    raw = _raw_outputs(reward_dirs["categorical"])  # (N, 5) logits over atoms 0, .25, .5, .75, 1
    p = raw.softmax(-1)
    atoms = torch.linspace(0, 1, 5, dtype=torch.float64)
    mean = (p * atoms).sum(-1)
    std = (p * (atoms - mean[:, None]) ** 2).sum(-1).sqrt()
    got = _score(_reward_cfg("kind=model", f"path={reward_dirs['categorical']}"))
    torch.testing.assert_close(got.reward.double(), (mean - NORM_MEAN) / NORM_STD, rtol=0, atol=2e-5)
    torch.testing.assert_close(got.std.double(), std / NORM_STD, rtol=0, atol=2e-5)

    # quantile: the piecewise-linear CDF (each atom's mass spread over [atom - 1/8, atom + 1/8]) equals alpha there
    alpha = 0.3
    q = _score(_reward_cfg("kind=model", f"path={reward_dirs['categorical']}", "statistic=quantile", f"alpha={alpha}"))
    x = q.reward.double() * NORM_STD + NORM_MEAN
    cdf = (p * ((x[:, None] - (atoms - 0.125)) / 0.25).clamp(0, 1)).sum(-1)
    torch.testing.assert_close(cdf, torch.full_like(cdf, alpha), rtol=0, atol=1e-4)


def test_mixture_model_quantile_solves_the_mixture_cdf(reward_dirs):
    raw = _raw_outputs(reward_dirs["mixture"])  # (N, 6): 2 weight logits, 2 means, 2 raw stds
    w, mu, s = raw[:, :2].softmax(-1), raw[:, 2:4], F.softplus(raw[:, 4:6])
    got = _score(_reward_cfg("kind=model", f"path={reward_dirs['mixture']}"))
    mean = (w * mu).sum(-1)
    std = (w * (s**2 + mu**2)).sum(-1).sub(mean**2).sqrt()
    torch.testing.assert_close(got.reward.double(), (mean - NORM_MEAN) / NORM_STD, rtol=0, atol=2e-5)
    torch.testing.assert_close(got.std.double(), std / NORM_STD, rtol=0, atol=2e-5)

    alpha = 0.1
    q = _score(_reward_cfg("kind=model", f"path={reward_dirs['mixture']}", "statistic=quantile", f"alpha={alpha}"))
    x = q.reward.double() * NORM_STD + NORM_MEAN
    normal = torch.distributions.Normal(mu, s)
    cdf = (w * normal.cdf(x[:, None])).sum(-1)
    torch.testing.assert_close(cdf, torch.full_like(cdf, alpha), rtol=0, atol=1e-4)


def test_odin_uses_the_quality_head_and_plain_classifier_is_bradley_terry(reward_dirs):
    raw = _raw_outputs(reward_dirs["odin"])  # (N, 2): quality, length
    got = _score(_reward_cfg("kind=model", f"path={reward_dirs['odin']}"))
    torch.testing.assert_close(got.reward.double(), (raw[:, 0] - NORM_MEAN) / NORM_STD, rtol=0, atol=2e-5)
    assert got.std is None

    raw = _raw_outputs(reward_dirs["plain"])  # no rlhf_reward: Bradley-Terry, no normalisation
    got = _score(_reward_cfg("kind=model", f"path={reward_dirs['plain']}"))
    torch.testing.assert_close(got.reward.double(), raw[:, 0], rtol=0, atol=2e-5)
    assert got.std is None


def test_model_config_errors_name_the_key(reward_dirs, model_dir):
    with pytest.raises(ValueError, match=r"reward\.statistic=quantile needs a distributional reward model.*bradley_terry"):
        check_reward_config(_reward_cfg("kind=model", f"path={reward_dirs['plain']}", "statistic=quantile"))
    with pytest.raises(ValueError, match=r"reward\.statistic=quantile.*odin"):
        check_reward_config(_reward_cfg("kind=model", f"path={reward_dirs['odin']}", "statistic=quantile"))
    with pytest.raises(ValueError, match=r"reward\.path=.* is not a readable reward model"):
        check_reward_config(_reward_cfg("kind=model", f"path={model_dir}"))  # a causal LM: 2 default labels, no head
    with pytest.raises(ValueError, match=r"reward\.components\.1\.statistic=quantile"):
        check_reward_config(_reward_cfg("kind=weighted", "components.0.kind=function", "components.0.function=ppo_helpers:length_reward",
                                        "components.1.kind=model", f"components.1.path={reward_dirs['plain']}",
                                        "components.1.statistic=quantile"))
    check_reward_config(_reward_cfg("kind=model", f"path={reward_dirs['mixture']}", "statistic=quantile"))  # fine
    with pytest.raises(ConfigError, match=r"'reward\.alpha': must be in \(0, 1\)"):
        load_config("ppo", None, ["reward.kind=model", "reward.path=x", "reward.statistic=quantile", "reward.alpha=1"])
    with pytest.raises(ConfigError, match=r"'reward\.statistic': quantile needs reward\.kind=model"):
        load_config("ppo", None, ["reward.kind=function", "reward.statistic=quantile"])
    with pytest.raises(ConfigError, match=r"'reward\.statistic': 'median' is not one of 'mean', 'quantile'"):
        load_config("ppo", None, ["reward.statistic=median"])


# ---------------------------------------------------------------------------------------------- relevance


@pytest.fixture(scope="module")
def minilm():
    from actors.relevance import load_encoder

    return load_encoder("builtin:minilm")


def _minilm_embeddings(texts, normalise: bool = True):
    """all-MiniLM-L6-v2 by hand with transformers: mean of the token states over the mask, L2-normalised."""
    from transformers import AutoModel, AutoTokenizer

    from actors.relevance import encoder_path

    path = encoder_path("builtin:minilm")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        enc = tok(list(texts), padding=True, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc.attention_mask[..., None].float()
        mean = (h * m).sum(1) / m.sum(1)
        return (F.normalize(mean, dim=-1) if normalise else mean).double()


def test_relevance_equals_r3_by_hand(minilm):
    from actors.relevance import RelevanceScorer

    prompts = ["Tell me about the ocean.", "What color is a banana?"]
    responses = ["The ocean is deep and the ocean is deep and the ocean is deep.", "It is yellow."]
    references = [None, "A banana is yellow."]
    scorer = RelevanceScorer(minilm, max_new_tokens=48, batch_size=2)
    got = scorer(prompts, responses, references, ["open", "closed"]).reward.double()

    e = _minilm_embeddings(prompts + responses + references[1:])  # prompt0, prompt1, resp0, resp1, ref1
    cos_open, cos_ref = (e[0] * e[2]).sum(), (e[4] * e[3]).sum()
    # response 0: 15 words ("The ocean is deep and" + "the ocean is deep and" + "the ocean is deep" + "."),
    # 13 trigrams; distinct (case-sensitive): (The ocean is), (ocean is deep), (is deep and), (deep and the),
    # (and the ocean), (the ocean is), (is deep .) = 7
    li0, rp0 = 15 / 100, 7 / 13
    # response 1: "It is yellow ." 4 words, 2 distinct trigrams -> RP 1; closed: F(x) = clip(x, 0, 3.5) / 3.5 * 0.48
    want = torch.stack([cos_open * li0 * rp0, cos_ref.clamp(0, 3.5) / 3.5 * 0.48 * 1.0])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_a_plain_hf_encoder_gets_contriever_style_mean_pooling(tmp_path):
    """A Hugging Face encoder folder without a sentence-transformers config (as facebook/contriever):
    relevance is the dot product of masked mean token states, unnormalised."""
    from transformers import AutoModel, AutoTokenizer

    from actors.relevance import RelevanceScorer, encoder_path, load_encoder

    AutoModel.from_pretrained(encoder_path("builtin:minilm")).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(encoder_path("builtin:minilm")).save_pretrained(tmp_path)
    scorer = RelevanceScorer(load_encoder(str(tmp_path)))
    queries, texts = ["Tell me about the ocean.", "What color is a banana?"], ["It is big and deep.", "Yellow."]
    e = _minilm_embeddings(queries + texts, normalise=False)
    want = (e[:2] * e[2:]).sum(-1)
    assert want.min() > 1.5  # well above a cosine's range: no normalisation
    torch.testing.assert_close(scorer.relevance(queries, texts).double(), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="reward.embedding_model='/nonexistent/encoder' cannot be loaded"):
        load_encoder("/nonexistent/encoder")


def test_relevance_ranks_on_topic_over_off_topic_and_varied_over_repetitive(minilm):
    from actors.relevance import RelevanceScorer
    from losses.relevance import wordpunct_tokenize

    scorer = RelevanceScorer(minilm, max_new_tokens=48)
    prompt = "Tell me about the ocean."
    on_topic = "The ocean covers most of the planet, with salty water, strong currents and many kinds of fish."
    off_topic = "My cousin repaired his old bicycle in the garage, then baked fresh bread and watched a football match."
    varied = "The ocean is vast and salty. Whales, sharks and tiny plankton live in its deep, cold and dark waters."
    repetitive = "The ocean is vast and salty. The ocean is vast and salty. The ocean is vast and salty. Salty."
    texts = [on_topic, off_topic, varied, repetitive]
    words = [len(wordpunct_tokenize(t)) for t in texts]
    assert words == [20, 20, 23, 23]  # equal length incentives: only relevance / repetition differ
    r = scorer([prompt] * 4, texts, [None] * 4, ["open"] * 4).reward
    assert r[0] > 2 * r[1], r
    assert r[2] > 2 * r[3], r


def test_relevance_closed_prompts_use_the_reference_and_the_classifier_fills_missing_types(minilm):
    from actors.relevance import RelevanceScorer

    scorer = RelevanceScorer(minilm, max_new_tokens=48)
    prompts = ["What color is a banana?"] * 2 + ["Tell me about fruit."]
    responses = ["A banana is yellow.", "A banana is blue.", "Fruit is sweet, like apples, pears and mangoes."]
    references = ["A banana is yellow.", "A banana is yellow.", None]
    labelled = scorer(prompts, responses, references, ["closed", "closed", "open"]).reward
    assert labelled[0] > labelled[1]
    # the answer is the reference: cos 1 -> F(1) = 1 / 3.5 * 48 / 100, times RP 1 (3 distinct trigrams)
    torch.testing.assert_close(labelled[0], torch.tensor(0.48 / 3.5), rtol=0, atol=1e-5)
    unlabelled = scorer(prompts, responses, references, [None] * 3).reward  # the classifier gets both types right
    torch.testing.assert_close(unlabelled, labelled)
    with pytest.raises(ValueError, match="closed .* has no reference answer"):
        scorer(prompts[:1], responses[:1], [None], ["closed"])
    with pytest.raises(ValueError, match="query_type 'yes/no'"):
        scorer(prompts[:1], responses[:1], [None], ["yes/no"])


def test_query_type_classifier_accuracy_on_the_builtin_prompts():
    from actors.query_type import classify
    from orchestrator.builtin.world import query_type_accuracy

    report = query_type_accuracy()
    assert report["train"]["n"] == 184 and report["test"]["n"] == 62
    assert report["all"]["accuracy"] >= 0.95, report["all"]["errors"]
    assert min(report["all"]["recall_open"], report["all"]["recall_closed"]) >= 0.9
    # prompts unlike the built-in ones
    assert classify("Who wrote Hamlet?") == "closed" and classify("Write a poem about rain.") == "open"
    assert classify("Name the largest planet.") == "closed" and classify("What do you think of jazz?") == "open"


def test_query_type_rules_on_held_out_phrasing_is_the_number_the_readme_states():
    """The rules on 80 prompts they were not written for: 51 of 80 right (docs/reward-models.md, actors/query_type.py).
    'Why' and 'how' questions that want free text are called closed; fact requests without a question
    word ('Give me the boiling point ...') are called open."""
    from actors.query_type import HELD_OUT, held_out_accuracy

    report = held_out_accuracy()
    assert report["n"] == len(HELD_OUT) == 80 and report["n_open"] == report["n_closed"] == 40
    assert round(report["accuracy"] * 80) == 51 and report["accuracy"] == pytest.approx(0.6375)
    assert report["recall_open"] == pytest.approx(21 / 40) and report["recall_closed"] == pytest.approx(30 / 40)
    wrong = {e["prompt"]: e["predicted"] for e in report["errors"]}
    assert wrong["Why do we dream?"] == "closed" and wrong["Give me the boiling point of water in Celsius."] == "open"


def all_open(prompts):
    """A query classifier for the tests (reward.query_classifier=test_reward_kinds:all_open)."""
    return ["open"] * len(prompts)


def returns_garbage(prompts):
    return ["maybe"] * len(prompts)


def _query_classifier_folder(path, id2label):
    """A tiny random BERT sequence classifier with the MiniLM tokenizer and the given labels."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from actors.relevance import encoder_path

    tok = AutoTokenizer.from_pretrained(encoder_path("builtin:minilm"))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=len(id2label), id2label=id2label,
                        label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_query_classifier_plugs_in_a_function_or_a_sequence_classifier(minilm, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from actors.query_type import load_classifier, rules
    from actors.relevance import RelevanceScorer

    assert load_classifier("builtin:rules") is rules
    prompts = ["What color is a banana?", "Tell me about fruit.", "Why do we dream?"]
    assert load_classifier("test_reward_kinds:all_open")(prompts) == ["open"] * 3
    # a sequence classifier: the argmax over its open and closed logits (a third label never wins)
    folder = _query_classifier_folder(tmp_path / "qc", {0: "Open", 1: "other", 2: "CLOSED"})
    got = load_classifier(folder)(prompts)
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(**tok(prompts, return_tensors="pt", padding=True)).logits
    assert got == ["open" if a > c else "closed" for a, c in zip(logits[:, 0], logits[:, 2])]
    # the scorer asks the classifier only about rows without a query_type: all_open scores the closed
    # question by its relevance to the prompt, as a labelled open row
    responses, references = ["A banana is yellow."], ["A banana is yellow."]
    plain = RelevanceScorer(minilm, max_new_tokens=48, classifier=load_classifier("test_reward_kinds:all_open"))
    torch.testing.assert_close(plain(prompts[:1], responses, references, [None]).reward,
                               plain(prompts[:1], responses, references, ["open"]).reward)
    rules_scorer = RelevanceScorer(minilm, max_new_tokens=48)
    torch.testing.assert_close(rules_scorer(prompts[:1], responses, references, [None]).reward,
                               rules_scorer(prompts[:1], responses, references, ["closed"]).reward)


def test_query_classifier_errors_name_the_key(tmp_path):
    from actors.query_type import load_classifier
    from actors.reward import check_reward_config

    with pytest.raises(ValueError, match=r"reward.query_classifier='no_such_module:f' cannot be imported"):
        load_classifier("no_such_module:f")
    with pytest.raises(ValueError, match=r"reward.query_classifier='test_reward_kinds:returns_garbage' returned 'maybe'"):
        load_classifier("test_reward_kinds:returns_garbage")(["Hi?"])
    with pytest.raises(ValueError, match=r"reward.query_classifier='/nonexistent/qc' is not 'builtin:rules', an importable"):
        load_classifier("/nonexistent/qc")
    folder = _query_classifier_folder(tmp_path / "qc", {0: "positive", 1: "negative"})
    with pytest.raises(ValueError, match=r"id2label .* must name the labels open and closed"):
        load_classifier(folder)
    cfg = _reward_cfg("kind=weighted", "components.0.kind=relevance", "components.0.query_classifier=no_such_module:f")
    with pytest.raises(ValueError, match=r"^reward.components.0.query_classifier='no_such_module:f' cannot be imported"):
        check_reward_config(cfg)


# ---------------------------------------------------------------------------------------------- weighted


def test_weighted_sum_equals_the_weighted_components(reward_dirs):
    from actors.reward import FunctionScorer

    mv = reward_dirs["mean_variance"]
    cfg = _reward_cfg("kind=weighted", "components.0.kind=function", "components.0.function=ppo_helpers:length_reward",
                      "components.0.weight=2.0", "components.1.kind=model", f"components.1.path={mv}",
                      "components.1.weight=-0.5")
    got = _score(cfg)
    lengths = FunctionScorer("ppo_helpers:length_reward")(PROMPTS, RESPONSES).reward
    model = _score(_reward_cfg("kind=model", f"path={mv}"))
    torch.testing.assert_close(got.reward, 2.0 * lengths - 0.5 * model.reward, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.std, 0.5 * model.std, rtol=0, atol=1e-6)  # sqrt(0.25 std^2): the function adds none
    torch.testing.assert_close(got.components, torch.stack([lengths, model.reward], 1), rtol=0, atol=1e-6)


def test_weighted_config_from_yaml_with_overrides_and_printed_back(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "reward:\n"
        "  kind: weighted\n"
        "  components:\n"
        "    - {kind: function, function: 'ppo_helpers:length_reward', weight: 1.0}\n"
        "    - kind: relevance\n"
        "      weight: 0.25\n"
    )
    cfg = load_config("ppo", str(path), ["reward.components.1.weight=0.5", "reward.components.2.kind=function",
                                                     "reward.components.2.function=ppo_helpers:length_reward"])
    kinds = [(c.kind, c.weight) for c in cfg.reward.components]
    assert kinds == [("function", 1.0), ("relevance", 0.5), ("function", 1.0)]
    printed = tmp_path / "printed.yaml"
    printed.write_text(to_yaml(cfg))  # `rlhf config ppo`: commented YAML that loads back to the same tree
    assert load_config("ppo", str(printed)) == cfg

    bad = {
        ("reward.kind=weighted",): r"'reward\.components': must list at least one reward",
        ("reward.kind=weighted", "reward.components.0.kind=weighted"): r"'reward\.components\.0\.kind': a component cannot itself be weighted",
        ("reward.kind=weighted", "reward.components.0.wieght=1"): r"unknown config key 'reward\.components\.0\.wieght'; did you mean 'reward\.components\.0\.weight'",
        ("reward.kind=weighted", "reward.components.1.kind=function"): r"'reward\.components\.1': the list has 0 items; list indices must be 0, 1",
        ("reward.kind=weighted", "reward.components.0.kind=lottery"): r"'reward\.components\.0\.kind': 'lottery' is not one of",
        ("reward.components.0.kind=function", "reward.components.0.function=a:b"): r"'reward\.components': is only read when reward\.kind=weighted",
        ("reward.kind=remote",): r"'reward\.url': must be an http:// or https:// URL",
        ("reward.kind=relevance", "reward.embedding_model="): r"'reward\.embedding_model': must be set",
    }
    for overrides, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config("ppo", None, list(overrides))


# ---------------------------------------------------------------------------------------------- remote


def test_remote_kind_through_a_real_http_endpoint():
    """kind=remote against a stdlib HTTP server speaking the agreed wire format (the real Serve
    round trip is tested in tests/test_serve.py)."""
    remote = pytest.importorskip("actors.remote_reward")
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            out = {"rewards": [len(r) + 0.5 for r in body["responses"]], "stds": [0.25] * len(body["responses"])}
            data = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = _reward_cfg("kind=remote", f"url=http://127.0.0.1:{server.server_port}/", "timeout_s=10")
        assert isinstance(build_scorer(cfg), remote.RemoteScorer)
        got = _score(cfg, references=[None, "A banana is yellow.", None], query_types=["open", "closed", "open"])
    finally:
        server.shutdown()
    torch.testing.assert_close(got.reward, torch.tensor([len(r) + 0.5 for r in RESPONSES]))
    torch.testing.assert_close(got.std, torch.full((3,), 0.25))
    assert [r for b in seen for r in b["responses"]] == RESPONSES  # batches of reward.batch_size=2, in order
    assert seen[0]["references"] == [None, "A banana is yellow."] and seen[0]["query_types"] == ["open", "closed"]


# ---------------------------------------------------------------------------------------------- diagnostics


def test_reward_metrics_by_hand():
    from orchestrator.jobs.experience import reward_metrics

    scores = Scores(reward=torch.tensor([1.0, 2.0, 3.0, 6.0]), std=torch.tensor([0.1, 0.5, 0.9, 1.3]),
                    components=torch.tensor([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0], [6.0, 3.0]]))
    lengths = torch.tensor([4.0, 2.0, 6.0, 8.0])
    m = reward_metrics(scores, lengths, std_threshold=0.6)
    # mean 3; deviations -2 -1 0 3 -> sample var (4 + 1 + 0 + 9) / 3; length deviations -1 -3 1 3
    assert m["reward/score"] == pytest.approx(3.0)
    assert m["reward/score_std"] == pytest.approx(math.sqrt(14 / 3), rel=1e-6)
    # pearson = sum dx dy / sqrt(sum dx^2 sum dy^2) = (2 + 3 + 0 + 9) / sqrt(14 * 20)
    assert m["reward/length_corr"] == pytest.approx(14 / math.sqrt(280), rel=1e-6)
    assert m["reward/pred_std"] == pytest.approx(0.7, rel=1e-6)
    assert m["reward/std_above_threshold"] == 0.5  # 0.9 and 1.3 exceed 0.6
    assert m["reward/component_0"] == pytest.approx(3.0) and m["reward/component_1"] == pytest.approx(1.0)
    assert "reward/pred_std" not in reward_metrics(Scores(reward=scores.reward), lengths, 0.6)


def test_ppo_with_a_quantile_reward_reports_the_spread(model_dir, reward_dirs, tmp_path):
    """One local PPO step with a mean-variance reward model read at its 0.2-quantile: the diagnostics are
    logged and consistent, and the evaluation rewards are the quantile formula on the model's outputs."""
    from orchestrator.registry import run

    out = tmp_path / "run"
    folder = reward_dirs["mean_variance"]
    cfg = tiny_ppo_config(model_dir, str(out), "reward.kind=model", f"reward.path={folder}", "reward.statistic=quantile",
                          "reward.alpha=0.2", "reward.std_threshold=0.0", "run.steps=1", "data.max_rows=16")
    run("ppo", cfg)
    with open(out / "metrics.jsonl") as f:
        (m,) = [json.loads(line) for line in f if "reward/score" in line]
    assert m["reward/std_above_threshold"] == 1.0  # softplus > 0 for every response
    assert m["reward/pred_std"] > 0 and m["reward/score_std"] >= 0 and -1 <= m["reward/length_corr"] <= 1

    with open(out / "samples_end.jsonl") as f:
        samples = [json.loads(line) for line in f]
    raw = _raw_outputs(folder, [s["prompt"] for s in samples], [s["response"] for s in samples])
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.2, dtype=torch.float64))
    want = (raw[:, 0] + z * F.softplus(raw[:, 1]) - NORM_MEAN) / NORM_STD
    torch.testing.assert_close(torch.tensor([s["reward"] for s in samples], dtype=torch.float64), want, rtol=0, atol=5e-5)
    assert os.path.exists(out / "summary.json")


def test_cli_stops_on_a_quantile_of_a_bradley_terry_model_before_anything_starts(reward_dirs, tmp_path, capsys):
    from orchestrator.cli import main

    code = main(["ppo", "run.mode=local", f"run.output_dir={tmp_path / 'run'}", "reward.kind=model",
                 f"reward.path={reward_dirs['plain']}", "reward.statistic=quantile"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "reward.statistic=quantile needs a distributional reward model" in err and "bradley_terry" in err
    assert not (tmp_path / "run").exists()
