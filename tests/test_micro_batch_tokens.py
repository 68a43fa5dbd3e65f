"""Token-budget micro-batches (`micro_batch_tokens`): the plan by hand, the cut of a rollout, the same
numbers as row micro-batches on other model families, equal counts on every replica, and whole runs."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch

from actors.types import Experience, Rollout
from cluster.batch import plan_micro_batches

EXTENTS = torch.tensor([[3, 5], [4, 10], [2, 2], [5, 1], [4, 10], [20, 30]])  # (prompt, response) tokens per row


def test_plan_by_hand():
    # longest first: 5 (50), 1 (14), 4 (14), 0 (8), 3 (6), 2 (4). Budget 40: row 5 alone (over budget);
    # 1 + 4 cost 2 x (4 + 10) = 28; 1 + 4 + 0 would cost 3 x 14 = 42; then 0, 3, 2 cost 3 x (5 + 5) = 30
    assert plan_micro_batches(EXTENTS, 40) == [[5], [1, 4], [0, 3, 2]]
    # pairs run two rows per forward: 1 + 4 would be 2 x 2 x 14 = 56; 0 + 3 is 2 x 2 x 10 = 40; + 2 is 60
    assert plan_micro_batches(EXTENTS, 40, forward_rows=2) == [[5], [1], [4], [0, 3], [2]]
    # another replica needs 4 calls: the micro-batch with the most rows is split in two, longest half first
    assert plan_micro_batches(EXTENTS, 40, count=4) == [[5], [1, 4], [0, 3], [2]]
    assert plan_micro_batches(EXTENTS, 40, count=6) == [[5], [1], [4], [0], [3], [2]]
    assert plan_micro_batches(EXTENTS, 10_000) == [[5, 1, 4, 0, 3, 2]]
    with pytest.raises(ValueError, match="7 micro-batches of 6 rows"):
        plan_micro_batches(EXTENTS, 40, count=7)


def _rollout(prompt_lens, response_lens, P=6, T=7, vocab=50, seed=0) -> Rollout:
    """Prompts left-padded to P, responses right-padded to T (pad id 0), behaviour log-probs on the responses."""
    g = torch.Generator().manual_seed(seed)
    B = len(prompt_lens)
    seq = torch.zeros(B, P + T, dtype=torch.long)
    mask = torch.zeros(B, P + T, dtype=torch.long)
    action = torch.zeros(B, T, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_lens, response_lens)):
        seq[i, P - p:P + r] = torch.randint(3, vocab, (p + r,), generator=g)
        mask[i, P - p:P + r] = 1
        action[i, :r] = 1
    logprobs = -torch.rand(B, T, generator=g) * action
    return Rollout(sequences=seq, attention_mask=mask, action_mask=action, ended_with_eos=torch.ones(B, dtype=torch.bool),
                   prompts=[""] * B, responses=[""] * B, references=[None] * B, query_types=[None] * B,
                   logprobs=logprobs).check()


def test_a_rollout_is_cut_to_its_own_padding():
    r = _rollout([2, 3], [1, 3])
    assert r.extents().tolist() == [[2, 1], [3, 3]]
    t = r.trimmed().check()
    # the 3 prompt columns no row uses go on the left, the 4 response columns after the longest response on the right
    assert t.sequences.shape == (2, 6) and t.action_mask.shape == (2, 3) and t.logprobs.shape == (2, 3)
    assert torch.equal(t.sequences, r.sequences[:, 3:9]) and torch.equal(t.attention_mask, r.attention_mask[:, 3:9])
    assert torch.equal(t.logprobs, r.logprobs[:, :3]) and t.prompt_len == 3
    exp = Experience(sequences=r.sequences, attention_mask=r.attention_mask, action_mask=r.action_mask,
                     old_logprobs=r.logprobs, advantages=torch.ones(2, 7), mb_tokens=torch.full((2,), 4.0))
    cut = exp.select([0]).trimmed().check()  # a micro-batch of row 0 alone: 2 prompt + 1 response tokens
    assert cut.sequences.shape == (1, 3) and cut.advantages.shape == (1, 1) and cut.mb_tokens.tolist() == [4.0]


def _family_model(family: str, root):
    from families import family_config, family_tokenizer
    import transformers

    from actors.modeling import _seeded

    tok = family_tokenizer(family, root / "cache")
    return _seeded(0, lambda: transformers.AutoModelForCausalLM.from_config(family_config(family, tok))).eval(), tok


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])  # rotary; learned positions, no pad token; tied, scaled
def test_forward_passes_give_every_row_what_row_micro_batches_give(family, tmp_path):
    """Policy / reference log-probs and critic values over a rollout of very different lengths: the same
    numbers, in the rollout's row order, from token-budget micro-batches (sorted, cut) as from rows."""
    from actors.lm import ValueModel, forward_micro_batches, response_logprobs

    model, tok = _family_model(family, tmp_path)
    rollout = _rollout([1, 6, 2, 5, 3, 6, 1], [7, 1, 2, 7, 3, 1, 5], vocab=len(tok))
    width = rollout.action_mask.shape[1]

    def logprobs(micro):
        return response_logprobs(model, micro.sequences, micro.attention_mask, micro.prompt_len, 1.0)

    critic = ValueModel.from_causal_lm(model).eval()
    torch.nn.init.normal_(critic.value_head.weight)

    def values(micro):
        return critic(micro.sequences, micro.attention_mask)[:, micro.prompt_len - 1:-1]

    for fn, engine in ((logprobs, model), (values, critic)):
        rows = forward_micro_batches(engine, rollout, 2, fn) * rollout.action_mask
        for tokens in (1, 30, 60):
            budget = forward_micro_batches(engine, rollout, 2, fn, tokens=tokens, width=width) * rollout.action_mask
            torch.testing.assert_close(budget, rows, rtol=1e-5, atol=1e-6)
        assert rows.abs().sum() > 0


def _equal_counts_worker(rank: int, port: int, out: str):
    import torch.distributed as dist

    from actors.lm import token_groups

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    # replica 0 has four rows of 2 tokens (one micro-batch of 20 tokens), replica 1 four of 13 (one each)
    lengths = ([1, 1, 1, 1], [1, 1, 1, 1]) if rank == 0 else ([6, 6, 6, 6], [7, 7, 7, 7])
    groups = token_groups(_rollout(*lengths), tokens=20)
    with open(os.path.join(out, f"{rank}.json"), "w") as f:
        json.dump(groups, f)
    dist.destroy_process_group()


def test_every_replica_makes_the_same_number_of_calls(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_equal_counts_worker, args=(port, str(tmp_path)), nprocs=2)
    short, long = (json.load(open(tmp_path / f"{r}.json")) for r in (0, 1))
    assert long == [[0], [1], [2], [3]]
    assert short == [[0], [1], [2], [3]]  # [[0, 1, 2, 3]] alone, split up to the other replica's count


def _metrics(out) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")} for line in f]


def _same_run(a, b):
    ra, rb = _metrics(a), _metrics(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] and len(ra) >= 3
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        # a clip fraction counts items past a threshold: rounding may move one item (1/128 here) across it
        bad = {k: (x[k], y[k]) for k in x
               if y[k] != pytest.approx(x[k], rel=1e-4, abs=0.01 if k.endswith("clipfrac") else 1e-6, nan_ok=True)}
        assert not bad, (x["step"], bad)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from families import build_family

    fam = build_family("gpt2", tmp_path_factory.mktemp("gpt2"))
    # GPT-2's dropout draws its masks per micro-batch, so grouping rows otherwise would change them
    config = os.path.join(fam["model"], "config.json")
    with open(config) as f:
        values = json.load(f)
    values.update(attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
    with open(config, "w") as f:
        json.dump(values, f)
    return fam


@pytest.mark.parametrize("job", ["sft", "dpo", "ppo", "rm"])
def test_a_run_with_a_token_budget_equals_one_with_row_micro_batches(job, gpt2, tmp_path, monkeypatch):
    """GPT-2 (learned positions, pad == eos): SFT, DPO, PPO with its critic and a Bradley-Terry reward
    model, 2 steps each, with micro_batch_tokens and with micro_batch_size: every logged number agrees
    to float rounding."""
    from families import run_job

    fam = gpt2
    common = {
        "sft": [f"data.path={fam['sft']}", f"data.eval_path={fam['sft']}", "sft.batch_size=8"],
        "dpo": [f"data.path={fam['prefs']}", f"data.eval_path={fam['prefs']}", "dpo.batch_size=8"],
        "rm": [f"data.path={fam['prefs']}", f"data.eval_path={fam['prefs']}", "rm.batch_size=8", "model.head_init_scale=1.0"],
        "ppo": [f"data.path={fam['prompts']}", f"data.eval_path={fam['prompts']}", "ppo.rollout_batch_size=8",
                "ppo.minibatch_size=4", "critic.micro_batch_size=2", "reward.kind=function",
                "reward.function=ppo_helpers:length_reward"],
    }[job]
    role = "model" if job == "rm" else "policy"
    base = ["run.mode=local", f"{role}.path={fam['model']}", f"{role}.micro_batch_size=2", f"{role}.warmup_steps=0", *common,
            *(["policy.max_new_tokens=8"] if job != "rm" else [])]
    budget = [f"{role}.micro_batch_tokens=48"] + (["critic.micro_batch_tokens=48"] if job == "ppo" else [])
    import actors.lm

    groups = []  # every token-budget plan of the run: the rows of each micro-batch

    def recorded(batch, tokens):
        out = plan(batch, tokens)
        groups.append([len(g) for g in out])
        return out

    plan = actors.lm.token_groups
    monkeypatch.setattr(actors.lm, "token_groups", recorded)
    run_job(job, tmp_path / "rows", *base)
    assert groups == []  # row micro-batches: the budget's planner never ran
    run_job(job, tmp_path / "tokens", *base, *budget)
    # the budget cut this run otherwise: micro-batches of other sizes than micro_batch_size=2 rows
    sizes = {n for plan_ in groups for n in plan_}
    assert groups and sizes != {2}, sizes
    _same_run(tmp_path / "rows", tmp_path / "tokens")


def test_a_reward_model_with_batch_terms_refuses_a_token_budget():
    from orchestrator.config import ConfigError
    from orchestrator.registry import load_config

    for objective in ("odin", "categorical"):
        with pytest.raises(ConfigError, match=rf"model\.micro_batch_tokens.*not supported with objective={objective}"):
            load_config("rm", None, ["model.micro_batch_tokens=512", f"model.objective={objective}",
                                         "model.entropy_coef=0.1"])
    load_config("rm", None, ["model.micro_batch_tokens=512", "model.objective=categorical", "model.entropy_coef=0"])
