"""ppo.max_staleness=K (asynchronous rollouts, local mode): the generator samples exactly what the policy
would with the same weights, the weight sync carries LoRA merged (a GPT-2 Conv1D family too), the PPO
ratio is against the weights the rollout was sampled with, with a frozen policy the run is the on-policy
run, and K=2 resumed is the uninterrupted run. The same in ray mode: test_ppo_ray.py; with vLLM: test_vllm.py."""

from __future__ import annotations

import pytest
import torch

from ppo_helpers import read_metrics, tiny_model_dir, tiny_ppo_config

AHEAD = ("ppo.old_logprobs=rollout", "ppo.max_staleness=1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(str(tmp_path_factory.mktemp("cache")))


def _groups(model_dir: str, *overrides: str):
    """The policy and generator roles of a PPO config, as local groups."""
    from actors.policy import GeneratorActor, PolicyActor
    from cluster.group import LocalGroup
    from orchestrator.registry import load_config

    cfg = load_config("ppo", None, [f"policy.path={model_dir}", "run.mode=local", *AHEAD, *overrides])
    policy = LocalGroup(PolicyActor, cfg.policy, name="policy",
                        kwargs=dict(model_path=model_dir, seed=0, total_steps=1, minibatch_size=cfg.ppo.minibatch_size))
    generator = LocalGroup(GeneratorActor, cfg.generator_slice(), name="generator", kwargs=dict(model_path=model_dir, seed=0))
    return policy, generator


def _prompts(model_dir: str, n: int = 4):
    from actors.modeling import load_tokenizer
    from orchestrator.data import to_prompt_batch

    tok = load_tokenizer(model_dir)
    texts = ["What color is a banana?", "Tell me about music.", "Which fruit is sweet?", "Say hello."][:n]
    rows = [{"prompt": t, "prompt_ids": tok(t)["input_ids"], "reference": None, "query_type": None} for t in texts]
    return to_prompt_batch(rows, tok.pad_token_id)


def _sample(group, method, batch):
    from cluster import get

    return get(group.scatter(method, batch, seed=7, record_logprobs=True))


def _perturb(engine, scale: float, lora_only: bool = False) -> None:
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in engine.module.named_parameters():
            if lora_only and "lora_B" not in name:
                continue
            p.add_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("family", ["builtin", "gpt2"])
@pytest.mark.parametrize("lora", [False, True])
def test_after_a_weight_sync_the_generator_samples_what_the_policy_does(model_dir, tmp_path, family, lora):
    """Weights the policy moved (all of them, or only LoRA adapters, merged W + scale BA by the sync; GPT-2's
    Conv1D stores W transposed) reach the generator: the same seed gives the same tokens and log-probs."""
    from actors.policy import GeneratorActor, PolicyActor
    from cluster import get

    if family == "gpt2":
        from families import build_family

        model_dir = build_family("gpt2", tmp_path / "gpt2")["model"]
    extra = ("policy.lora.enabled=true", "policy.lora.r=4") if lora else ()
    policy, generator = _groups(model_dir, *extra)
    batch = _prompts(model_dir)
    _perturb(policy.role.engine, 0.5 if lora else 0.05, lora_only=lora)
    mine, before = _sample(policy, PolicyActor.generate, batch), _sample(generator, GeneratorActor.generate, batch)
    assert not torch.allclose(mine.logprobs, before.logprobs)  # the generator still has the initial weights
    sent = get(generator.broadcast(GeneratorActor.load_weights, policy.broadcast(PolicyActor.weights)))
    n_weights = sum(1 for _ in policy.role.engine.module.state_dict())
    tensors = sent[0]["tensors"]
    assert (tensors < n_weights) if lora else (tensors == n_weights)  # LoRA: the adapted layers only
    theirs = _sample(generator, GeneratorActor.generate, batch)
    assert torch.equal(mine.sequences, theirs.sequences)
    assert mine.responses == theirs.responses
    tol = 1e-6  # the same weights and kernels: float rounding of the engines' batching only
    if lora:
        # The generator computes with W + s BA rounded once to float32, the policy adds s B(Ax) to Wx: two float32
        # evaluations, each within Higham's forward bound of its sums (gamma_n = n u / (1 - n u), u = 2^-24) of the
        # exact log-prob: the log-softmax's sum of V exponentials is off by at most gamma_V relative, so its log by
        # gamma_V absolute; a logit, a sum over the width once per layer and once in the head, by gamma_n |logit|.
        # Two evaluations differ by at most twice that (1.4e-4 on the tiny Llama; a stale generator: 0.57).
        config = policy.role.engine.module.config
        u = 2.0**-24
        gamma = lambda n: n * u / (1 - n * u)  # noqa: E731
        with torch.no_grad():
            logits = policy.role.engine.module(input_ids=mine.sequences, attention_mask=mine.attention_mask).logits
        width = config.hidden_size * (config.num_hidden_layers + 1)
        tol = 2 * (gamma(config.vocab_size) + gamma(width) * float(logits.abs().max()))
    torch.testing.assert_close(theirs.logprobs, mine.logprobs, rtol=0, atol=tol)


def test_a_weight_sync_that_does_not_fit_names_the_tensor(model_dir):
    from actors.policy import GeneratorActor
    from cluster import RoleError, get

    _, generator = _groups(model_dir)
    with pytest.raises(RoleError, match="unknown \\['nope.weight'\\]"):
        get(generator.broadcast(GeneratorActor.load_weights, {"nope.weight": torch.zeros(1)}))
    name, value = next(iter(generator.role.engine.module.state_dict().items()))
    weights = {k: v.clone() for k, v in generator.role.engine.module.state_dict().items()}
    weights[name] = torch.zeros(value.shape[0] + 1)
    with pytest.raises(RoleError, match=f"{name} has shape"):
        get(generator.broadcast(GeneratorActor.load_weights, weights))


def test_with_a_policy_that_does_not_move_one_step_off_policy_is_the_on_policy_run(model_dir, tmp_path):
    """policy.lr=1e-30 (below float32 rounding of every weight): the weights never move, so sampling one step
    ahead draws the same rollouts (the same prompts, seeds and weights) and every metric equals the on-policy
    run's (the log-probs of the generator's frozen engine and the policy's training engine differ in the 7th
    digit)."""
    from orchestrator.registry import run

    runs = {}
    for name, extra in (("on", ("ppo.old_logprobs=rollout",)), ("ahead", AHEAD)):
        run("ppo", tiny_ppo_config(model_dir, str(tmp_path / name), "run.steps=3", "policy.lr=1e-30", *extra))
        runs[name] = read_metrics(tmp_path / name)
    assert [r.get("rollout/lag") for r in runs["ahead"]] == [None, 0.0, 1.0, 1.0]
    assert [r.get("rollout/lag_1") for r in runs["ahead"]] == [None, 0.0, 1.0, 1.0]
    for a, b in zip(runs["on"], runs["ahead"]):
        for key, value in a.items():
            if not key.startswith("time/"):
                assert b[key] == pytest.approx(value, rel=1e-5, abs=2e-6, nan_ok=True), (a["step"], key)
    assert "time/weight_sync" in runs["ahead"][1] and "time/weight_sync" not in runs["on"][1]


def test_the_ratio_is_against_the_weights_the_rollout_was_sampled_with(model_dir, tmp_path):
    """One epoch of one minibatch: on-policy, the first (only) update sees ratio 1 exactly (approx_kl 0);
    one step behind, the policy has moved since the rollout was sampled, so the ratio is not 1 from the
    second step on, and the first step (sampled with the current weights) is on-policy."""
    from orchestrator.registry import run

    extra = ("run.steps=3", "ppo.epochs=1", "ppo.minibatch_size=8", "policy.micro_batch_size=4", "critic.micro_batch_size=4")
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "ahead"), *extra, *AHEAD))
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "on"), *extra, "ppo.old_logprobs=rollout"))
    ahead, on = read_metrics(tmp_path / "ahead"), read_metrics(tmp_path / "on")
    assert [r["policy/approx_kl"] for r in on[1:]] == pytest.approx([0.0] * 3, abs=1e-6)
    assert ahead[1]["policy/approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert all(r["policy/approx_kl"] > 1e-4 for r in ahead[2:]), [r["policy/approx_kl"] for r in ahead]
    assert ahead[1]["reward/score"] == on[1]["reward/score"]  # the first rollout is the same sample


@pytest.mark.slow  # three PPO runs
def test_two_steps_stale_resumed_equals_uninterrupted(model_dir, tmp_path):
    """max_staleness=2: the rollout of step t is sampled with the weights of step max(0, t-2), and the
    checkpoint holds the two rollouts sampled ahead: resumed, the run trains on the samples an uninterrupted
    one does."""
    from orchestrator.registry import run

    stale = ("ppo.old_logprobs=rollout", "ppo.max_staleness=2")
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "full"), "run.steps=5", *stale))
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "split"), "run.steps=3", *stale))
    run("ppo", tiny_ppo_config(model_dir, str(tmp_path / "split"), "run.steps=5", *stale))
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3, 4, 5]
    assert [r.get("rollout/lag") for r in a] == [None, 0.0, 1.0, 2.0, 2.0, 2.0]
    assert [[r[f"rollout/lag_{k}"] for k in range(3)] for r in a[1:3]] == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    for ra, rb in zip(a, b):
        for key, value in ra.items():
            if not key.startswith(("time/", "sync/")):  # the resumed run's first rollouts came with no sync
                assert rb[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), (ra["step"], key)


@pytest.mark.parametrize("override, message", [
    ("ppo.old_logprobs=recompute", "'ppo.old_logprobs': must be rollout with ppo.max_staleness=1, or set ppo.tis_cap"),
    ("ppo.max_staleness=17", "'ppo.max_staleness': must be 0 (on-policy) to 16"),
    ("ppo.tis_cap=2", "'ppo.tis_cap': needs ppo.old_logprobs=recompute"),
    ("ppo.tis_cap=0.5", "'ppo.tis_cap': must be 0 (off) or >= 1"),
    ("ppo.rollout_ahead=1", "config key 'ppo.rollout_ahead' is now 'ppo.max_staleness'"),
    ("generator.replicas=3", "'ppo.rollout_batch_size': (8 responses) must be divisible by generator.replicas=3"),
    ("reward.colocate_with=generatr", "'reward.colocate_with': must be one of policy, reference, critic, reward, generator"),
])
def test_bad_settings_are_one_line(model_dir, tmp_path, override, message):
    from orchestrator.config import ConfigError

    with pytest.raises(ConfigError) as err:
        tiny_ppo_config(model_dir, str(tmp_path), *AHEAD, override)
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="names the generator, which only ppo.max_staleness >= 1 or generator.engine=vllm starts"):
        tiny_ppo_config(model_dir, str(tmp_path), "reward.colocate_with=generator")
