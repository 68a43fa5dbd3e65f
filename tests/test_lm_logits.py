"""The LM head runs only on the positions that are scored (`logits_to_keep`), and the log-probs are the
ones of a full forward: on three families (Llama, GPT-2's learned positions, Gemma's tied scaled
embeddings), for rollouts (left-padded prompts) and for right-padded prompt + response sequences."""

from __future__ import annotations

import pytest
import torch

from actors.lm import position_ids, response_logprobs, sequence_token_logprobs, takes_logits_to_keep
from actors.types import Sequences

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(family: str, tmp_path):
    import transformers

    from tests.families import family_config, family_tokenizer

    tok = family_tokenizer(family, tmp_path / "cache")
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(family_config(family, tok)).eval()


def _full(model, ids, mask, positions=None):
    """log p(token t+1 | ..t) for every t, from every position's logits (no logits_to_keep)."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask) if positions is None else positions).logits
    return torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]


class _Spy(torch.nn.Module):
    """Records the logits_to_keep the model was called with (and whether the LM head saw fewer positions)."""

    def __init__(self, model):
        super().__init__()
        self.module, self.widths = model, []

    def forward(self, **kw):
        out = self.module(**kw)
        self.widths.append(out.logits.shape[1])
        return out


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
def test_rollout_logprobs_equal_a_full_forward(family, tmp_path):
    model = _model(family, tmp_path)
    assert takes_logits_to_keep(model)
    g = torch.Generator().manual_seed(1)
    P, T = 5, 4
    ids = torch.randint(5, 200, (3, P + T), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left-padded prompt
    mask[2, -1] = 0  # a response that ended early
    spy = _Spy(model)
    with torch.no_grad():
        got = response_logprobs(spy, ids, mask, P, temperature=0.7)
        full = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    want = torch.log_softmax(full[:, P - 1:-1].float() / 0.7, -1).gather(-1, ids[:, P:, None])[..., 0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert spy.widths == [T + 1]  # the LM head ran on the T+1 last positions, not P+T


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sequence_logprobs_skip_only_positions_before_the_first_response(family, tmp_path):
    model = _model(family, tmp_path)
    ids = torch.randint(5, 200, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1] * 9, [1] * 7 + [0] * 2])
    response = torch.tensor([[0] * 4 + [1] * 5, [0] * 3 + [1] * 4 + [0] * 2])  # prompts of 4 and 3 tokens
    with torch.no_grad():
        lp, is_response = sequence_token_logprobs(model, Sequences(ids, mask, response))
        want = _full(model, ids, mask)
    assert lp.shape == (2, 8) and torch.equal(is_response, response[:, 1:].bool())
    torch.testing.assert_close(lp[:, 2:], want[:, 2:], rtol=1e-5, atol=1e-5)  # from the first response token (3) on
    assert torch.equal(lp[:, :2], torch.zeros(2, 2))  # not scored, not response


@pytest.mark.parametrize("family,temperature,top_k", [("llama", 1.0, 0), ("gpt2", 0.7, 20), ("gemma", 1.3, 0)])
def test_logprobs_recorded_while_sampling_equal_a_recompute(family, temperature, top_k, tmp_path):
    """ppo.old_logprobs=rollout: the behaviour log-probs recorded inside HF generate (`BehaviourLogProbs`)
    are those `PolicyActor.logprobs` recomputes with a forward pass (logits / temperature, untruncated
    by top-k), to float rounding; 0 after a response's end. Recording does not change what is sampled."""
    from actors.config import PolicyConfig
    from actors.policy import PolicyActor
    from actors.types import PromptBatch
    from cluster.dist import init_local
    from tests.families import build_family

    init_local()
    paths = build_family(family, tmp_path / family)
    cfg = PolicyConfig(path=paths["model"], max_new_tokens=6, temperature=temperature, top_k=top_k, micro_batch_size=4)
    actor = PolicyActor(cfg, model_path=paths["model"], seed=0, total_steps=1, minibatch_size=4)
    ids = torch.randint(5, 200, (4, 5), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    prompts = PromptBatch(ids, mask, prompts=[""] * 4, references=[None] * 4, query_types=[None] * 4)
    plain = actor.generate(prompts, seed=11)
    recorded = actor.generate(prompts, seed=11, record_logprobs=True)
    assert torch.equal(plain.sequences, recorded.sequences) and plain.logprobs is None
    recomputed = actor.logprobs(recorded).logprobs
    torch.testing.assert_close(recorded.logprobs, recomputed, rtol=1e-4, atol=1e-5)
    assert bool((recorded.logprobs[recorded.action_mask == 0] == 0).all())
