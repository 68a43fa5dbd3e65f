"""One rendering (`actors.rendering`) for every path a reward model reads text on: the same pairs,
scored by the training role (`rlhf rm`'s `RewardModelActor` on the data loader's rows), by `rlhf rm
eval` on the saved folder, and by the PPO reward role on a rollout built from the prompt loader, give
equal scores (1e-5), for a ChatML tokenizer whose template adds a newline after each turn's end token
(the text a Qwen2-style template renders for a whole conversation is NOT what generation produces) and
for a plain tokenizer without a template, with single-turn, system and multi-turn prompts. Serving
is checked on the same folders in tests/test_serve_ray.py."""

from __future__ import annotations

import pytest
import torch

from ppo_helpers import (RENDER_CHOSEN, RENDER_PROMPTS, RENDER_REJECTED, rendering_family, train_rendering_rm,
                         training_path_scores)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind", ["chatml", "plain"])
def test_training_evaluation_and_ppo_scoring_read_the_same_tokens(kind, tmp_path):
    import json

    from actors.reward import RewardActor
    from actors.reward_head import RewardHead
    from actors.types import Rollout
    from orchestrator.config import DataConfig, RMEvalConfig, RewardConfig, load
    from orchestrator.data import load_prompts, to_prompt_batch
    from orchestrator.jobs.rm_eval import eval_saved_model
    from transformers import AutoConfig

    family = rendering_family(kind, tmp_path / kind)
    tok = family["tokenizer"]
    if kind == "chatml":  # the trap this test is for: the template's own text of a conversation differs
        whole = tok.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes."}], tokenize=False)
        assert whole.endswith("<|im_end|>\n")
    folder = train_rendering_rm(family, tmp_path / "rm")
    head = RewardHead.from_config(AutoConfig.from_pretrained(folder))
    assert head.chat_template is True  # recorded at save time; here the flag was on (data.chat_template)

    training = training_path_scores(folder, family)  # (3, 2)
    assert training.std() > 1e-3  # the scores differ, so equal scores are not a coincidence

    _, arrays = eval_saved_model(load(RMEvalConfig, None, [f"path={folder}", f"data.path={family['pairs']}",
                                                           f"output_dir={tmp_path / 'eval'}"]))
    evaluation = torch.stack([arrays["mean_chosen"], arrays["mean_rejected"]], dim=1).float()

    prompt_rows = load_prompts(DataConfig(path=family["prompts"]), tok)[0].to_list()
    batch = to_prompt_batch(prompt_rows, tok.pad_token_id)
    actor = RewardActor(load(RewardConfig, None, ["kind=model", f"path={folder}", "batch_size=2"]))
    ppo = []
    for responses in (RENDER_CHOSEN, RENDER_REJECTED):
        n = len(responses)
        rollout = Rollout(sequences=torch.zeros(n, 2, dtype=torch.long), attention_mask=torch.ones(n, 2, dtype=torch.long),
                          action_mask=torch.ones(n, 1, dtype=torch.long), ended_with_eos=torch.ones(n, dtype=torch.bool),
                          prompts=batch.prompts, messages=batch.messages, responses=list(responses),
                          references=batch.references, query_types=batch.query_types)
        ppo.append(actor.score(rollout).reward * head.norm_std + head.norm_mean)  # back to the raw mean utility
    ppo = torch.stack(ppo, dim=1)

    torch.testing.assert_close(evaluation, training, rtol=0, atol=1e-5)
    torch.testing.assert_close(ppo, training, rtol=0, atol=1e-5)
    assert batch.messages[1] == RENDER_PROMPTS[1] and batch.messages[2] == RENDER_PROMPTS[2]  # whole chats reach the reward
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["pairs"] == 3


def test_rendering_of_prompts_responses_and_conversations():
    """The rules of `actors.rendering` by hand, on the built-in tokenizer (template) and without one."""
    from actors.rendering import Rendering, plain_prompt
    from orchestrator.builtin.models import builtin_tokenizer

    tok = builtin_tokenizer()
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    r = Rendering(tok, chat_template=True)
    assert r.prompt_text("Hi") == "<|bos|><|user|>Hi<|assistant|>"
    assert r.prompt_text(chat) == "<|bos|><|system|>S<|user|>U<|assistant|>"
    ids = r.conversation_ids(["Hi"], ["Yes."])[0]
    assert ids == tok("<|bos|><|user|>Hi<|assistant|>Yes.", add_special_tokens=False).input_ids + [tok.eos_token_id]
    plain = Rendering(tok, chat_template=False)
    assert plain.prompt_text("Hi") == "Hi"
    assert plain.prompt_text(chat) == "\n\nSystem: S\n\nHuman: U\n\nAssistant:"
    assert plain.response_ids(["Yes."]) == [tok("Yes.", add_special_tokens=False).input_ids + [tok.eos_token_id]]
    assert plain_prompt(chat) == "U" and plain_prompt("Q") == "Q"
