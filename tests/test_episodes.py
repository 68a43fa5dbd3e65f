"""Multi-turn episodes (`orchestrator.jobs.episodes`): the tokens of an episode, its masks and rewards, by hand on a
scripted environment and a scripted policy; the rendering of environment turns in every family; the advantages
through the environment's tokens; each bad environment as one line."""

from __future__ import annotations

import sys
import textwrap
import time

import pytest
import torch

from actors.rendering import Rendering, RenderError
from actors.sampling import to_rollout
from actors.types import PromptBatch
from families import FAMILIES, build_family
from orchestrator.config.sections import EnvConfig
from orchestrator.jobs.episodes import EnvError, EpisodeRunner, env_class, episode_metrics, episode_rows

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from actors.modeling import load_tokenizer

    root = tmp_path_factory.mktemp("families")
    return {f: load_tokenizer(build_family(f, root / f)["model"]) for f in FAMILIES}


CONVERSATION = [{"role": "user", "content": "What color is my kite?"}, {"role": "assistant", "content": "Look up my kite."},
                {"role": "tool", "content": "Your kite is red."}, {"role": "assistant", "content": "Your kite is red."},
                {"role": "user", "content": "Thanks. And the ball?"}]


@pytest.mark.parametrize("family", FAMILIES)
def test_an_episode_s_tokens_are_the_template_s_text_of_the_conversation(family, tokenizers):
    """`episode_ids` (and so every episode's context): each assistant turn as its response ids (content + EOS), each
    environment turn as `turn_ids`. Decoded, that is the chat template's own text of the whole conversation, with
    the model's EOS where the template ends a turn with another token (gemma's <end_of_turn>); plain (gpt2), the
    HH layout with the model's EOS after each of its turns."""
    tok = tokenizers[family]
    r = Rendering(tok, chat_template=True)
    ids = r.episode_ids(CONVERSATION)
    text = tok.decode(ids, skip_special_tokens=False)
    if family == "gpt2":  # no template: HH layout; tool turns labelled Tool
        eos = tok.eos_token
        assert text == ("\n\nHuman: What color is my kite?\n\nAssistant:Look up my kite." + eos + "\n\nTool: Your kite is red."
                        "\n\nAssistant:Your kite is red." + eos + "\n\nHuman: Thanks. And the ball?\n\nAssistant:")
        return
    template = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    if family == "gemma":  # its turns end with <end_of_turn>, the model's own turns with its EOS first
        template = template.replace("Look up my kite.<end_of_turn>", "Look up my kite.<eos><end_of_turn>").replace(
            "Your kite is red.<end_of_turn>\n<start_of_turn>user\nThanks", "Your kite is red.<eos><end_of_turn>\n<start_of_turn>user\nThanks")
    assert text == template


def test_a_template_that_rewrites_earlier_turns_is_refused(tokenizers):
    """A template that is not append-only (here: it drops the content of earlier assistant turns, as templates that
    strip old reasoning do) cannot append an environment turn without changing the tokens sampled before it."""
    tok = tokenizers["qwen2"]
    tok = type(tok).from_pretrained(tok.name_or_path)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] != 'assistant' or loop.last %}"
                         "{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(RenderError, match="not append-only"):
        Rendering(tok).turn_ids([{"role": "user", "content": "more"}])


# ------------------------------------------------------------------ a scripted episode, by hand


class Scripted:
    """Asks; on the first model turn answers with a tool message (reward 0.5); on the second ends (reward 1.0)."""

    def __init__(self, bonus: float = 1.0):
        self.bonus = bonus

    def reset(self, row):
        self.turn = 0
        self.seed = row["episode_seed"]
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, response):
        self.turn += 1
        if self.turn == 1:
            return [{"role": "tool", "content": "It is red."}], 0.5, False
        return None, self.bonus, True


def scripted_policy(rendering: Rendering, answers: list[str], record: bool = True, eos: bool = True):
    """A `sample(prompts, turn)` that answers `answers[turn]` on every row, with log-prob -(k+1)/10 on token k
    (`record`: recorded, as an engine does when asked; `eos`: the turn ends with EOS, else it was cut)."""
    calls = []

    def sample(prompts: PromptBatch, turn: int):
        ids = rendering.response_ids([answers[turn]])[0][: None if eos else -1]
        calls.append((prompts, turn))
        B = prompts.num_rows
        response = torch.tensor([ids] * B)
        lps = torch.tensor([[-(k + 1) / 10 for k in range(len(ids))]] * B)
        return to_rollout(prompts, response, lps if record else None, eos_id=rendering.eos_id, pad_id=rendering.tokenizer.pad_token_id,
                          max_new_tokens=len(ids), tokenizer=rendering.tokenizer)

    return sample, calls


def _runner(rendering, cls=Scripted, on_error="raise", **env):
    cfg = EnvConfig(path="x:y", **env)
    return EpisodeRunner(cfg, env_cls=cls, rendering=rendering, on_error=on_error, pad_id=rendering.tokenizer.pad_token_id)


def _batch(prompts: list[str]) -> PromptBatch:
    rows = episode_rows([{"prompt": p, "prompt_ids": [0], "prompt_text": p} for p in prompts], list(range(len(prompts))), seed=3, draw=0)
    batch = PromptBatch(input_ids=torch.zeros(len(prompts), 1, dtype=torch.long), attention_mask=torch.ones(len(prompts), 1, dtype=torch.long),
                        prompts=list(prompts), messages=[None] * len(prompts), references=[None] * len(prompts),
                        query_types=[None] * len(prompts))
    batch.rows = rows
    return batch


def _timed(name):
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_a_scripted_episode_masks_the_environment_s_tokens_and_places_each_turn_s_reward(family, tokenizers):
    """Two model turns around a tool message: the trajectory is prompt | turn 1 (EOS included) | the tool turn's
    tokens | turn 2; the action mask is 1 on the model's tokens only, the sampler's log-probs sit on them, each
    turn's reward on its last token; the ids are those sampled and those the rendering adds, and equal the
    episode rendering of the whole conversation (token in, token out)."""
    tok = tokenizers[family]
    r = Rendering(tok)
    sample, calls = scripted_policy(r, ["Look up my kite.", "It is red."])
    rollout = _runner(r).run(_batch(["What color is my kite?", "What color?"]), seed=5, sample=sample, timed=_timed)
    first = r.prompt_ids([r.prompt_text([{"role": "user", "content": "What color is my kite?"}])])[0]
    a1 = r.response_ids(["Look up my kite."])[0]
    env = r.turn_ids([{"role": "tool", "content": "It is red."}])
    a2 = r.response_ids(["It is red."])[0]
    n = len(a1) + len(env) + len(a2)
    P = rollout.prompt_len
    row = rollout.sequences[0]
    assert row[P - len(first):P].tolist() == first and row[P:P + n].tolist() == a1 + env + a2
    assert rollout.action_mask.shape[1] == n  # the batch's longest episode
    assert rollout.action_mask[0].tolist() == [1] * len(a1) + [0] * len(env) + [1] * len(a2)
    assert rollout.attention_mask[0, P:].tolist() == [1] * n
    expected_lp = [-(k + 1) / 10 for k in range(len(a1))] + [0.0] * len(env) + [-(k + 1) / 10 for k in range(len(a2))]
    assert torch.allclose(rollout.logprobs[0], torch.tensor(expected_lp))
    rewards = [0.0] * n
    rewards[len(a1) - 1], rewards[n - 1] = 0.5, 1.0
    assert rollout.turn_rewards[0].tolist() == rewards
    whole = [{"role": "user", "content": "What color is my kite?"}, {"role": "assistant", "content": "Look up my kite."},
             {"role": "tool", "content": "It is red."}]
    assert row[P - len(first):P + n - len(a2)].tolist() == r.episode_ids(whole)  # the SFT rendering of the same chat
    # what the reward model reads: the chat up to the last model turn, and that turn
    assert rollout.messages[0] == whole and rollout.responses[0] == "It is red."
    assert rollout.ended_with_eos.tolist() == [True, True]
    # the second turn was sampled from the whole context, each episode with a seed of its own per turn
    assert [t for _, t in calls] == [0, 1]
    ctx = calls[1][0]
    assert ctx.input_ids[0, ctx.attention_mask[0].bool()].tolist() == first + a1 + env
    assert calls[0][0].seeds.tolist() != calls[1][0].seeds.tolist() and len(set(calls[0][0].seeds.tolist())) == 2
    m = episode_metrics(rollout)
    assert m == {"env/return": 1.5, "env/turns": 2.0, "env/tokens": float(n), "env/tool_calls": 1.0, "env/done": 1.0, "env/errors": 0.0}
    e = rollout.episodes[0]
    assert [t["role"] for t in e["turns"]] == ["assistant", "tool", "assistant"] and e["turns"][0]["reward"] == 0.5


def test_an_engine_that_records_no_log_probs_gives_an_episode_without_them(tokenizers):
    """ppo.old_logprobs=recompute without tis_cap: the engine records nothing, and the rollout says so (None), so
    that no mismatch is measured against zeros."""
    r = Rendering(tokenizers["llama"])
    sample, _ = scripted_policy(r, ["A.", "B."], record=False)
    rollout = _runner(r).run(_batch(["Q?"]), seed=0, sample=sample, timed=_timed)
    assert rollout.logprobs is None and int(rollout.action_mask.sum()) > 0


def test_a_turn_cut_before_its_eos_gets_the_template_s_end_of_turn_as_context(tokenizers):
    """A model turn that did not end with EOS (cut by max_new_tokens, or a stop string): the tokens appended for the
    environment's reply start with the template's own end of turn (the built-in template's is the EOS token), as
    context, not as an action the model took."""
    tok = tokenizers["llama"]
    r = Rendering(tok)
    sample, _ = scripted_policy(r, ["Look up my kite.", "It is red."], eos=False)
    rollout = _runner(r).run(_batch(["Q?"]), seed=0, sample=sample, timed=_timed)
    a1 = r.response_ids(["Look up my kite."])[0][:-1]
    env = r.turn_ids([{"role": "tool", "content": "It is red."}], after_eos=False)
    assert env[0] == tok.eos_token_id and env[1:] == r.turn_ids([{"role": "tool", "content": "It is red."}])
    P = rollout.prompt_len
    assert rollout.sequences[0, P:P + len(a1) + len(env)].tolist() == a1 + env
    assert rollout.action_mask[0, :len(a1) + len(env)].tolist() == [1] * len(a1) + [0] * len(env)


def test_the_token_cap_and_max_turns_end_an_episode(tokenizers):
    """env.max_tokens cuts a turn at the cap (the episode is then over, not done); env.max_turns stops after the
    last model turn whatever the environment says."""
    tok = tokenizers["llama"]
    r = Rendering(tok)
    first = len(r.prompt_ids([r.prompt_text([{"role": "user", "content": "Q?"}])])[0])
    sample, _ = scripted_policy(r, ["Look up my kite.", "It is red."])
    a1 = len(r.response_ids(["Look up my kite."])[0])
    cut = _runner(r, max_tokens=first + 3).run(_batch(["Q?"]), seed=0, sample=sample, timed=_timed)
    assert cut.action_mask[0].tolist() == [1, 1, 1] and cut.ended_with_eos.tolist() == [False]
    assert cut.episodes[0]["turns"][0]["reward"] == 0.5  # the environment still scored the cut turn
    one = _runner(r, max_turns=1).run(_batch(["Q?"]), seed=0, sample=sample, timed=_timed)
    assert one.action_mask[0].tolist() == [1] * a1 and one.ended_with_eos.tolist() == [False]
    assert episode_metrics(one)["env/return"] == 0.5


def test_advantages_skip_the_environment_s_tokens():
    """GAE through an episode, by hand: token rewards = turn rewards (no KL); values on the model's tokens; the
    environment's tokens are no GAE step: the last token of turn 1 bootstraps from the first of turn 2."""
    from losses.advantages import gae
    from losses.rewards import shape_rewards

    mask = torch.tensor([[1, 1, 0, 0, 1, 1]])
    turn = torch.tensor([[0.0, 0.5, 9.0, 9.0, 0.0, 1.0]])  # 9 on environment tokens: must be ignored
    zero = torch.zeros(1, 6)
    shaped = shape_rewards(torch.tensor([0.25]), zero, zero, mask, torch.tensor([True]), kl_coef=0.1, turn_rewards=turn)
    assert shaped.rewards.tolist() == [[0.0, 0.5, 0.0, 0.0, 0.0, 1.25]]  # the sequence score on the last token
    assert shaped.scores.tolist() == [1.75]  # the critic-free estimators' episode return: 0.25 + 0.5 + 1.0
    values = torch.tensor([[0.1, 0.2, 7.0, 7.0, 0.3, 0.4]])
    g, lam = 0.9, 0.8
    adv, ret = gae(shaped.rewards, values, mask, gamma=g, lam=lam)
    d5 = 1.25 - 0.4
    d4 = 0.0 + g * 0.4 - 0.3
    d1 = 0.5 + g * 0.3 - 0.2  # bootstraps from token 4, the next model token
    d0 = 0.0 + g * 0.2 - 0.1
    a5 = d5
    a4 = d4 + g * lam * a5
    a1 = d1 + g * lam * a4
    a0 = d0 + g * lam * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, 0.0, 0.0, a4, a5]]), atol=1e-6)
    assert torch.allclose(ret, adv + values * mask, atol=1e-6)


# ------------------------------------------------------------------ bad environments


class Raises(Scripted):
    def step(self, response):
        raise KeyError("no such tool")


class WrongTypes(Scripted):
    def step(self, response):
        return "msg", 1.0  # two values


class NotDoneWithoutMessage(Scripted):
    def step(self, response):
        return None, 0.0, False


class BadReward(Scripted):
    def step(self, response):
        return None, float("nan"), True


class BadReset(Scripted):
    def reset(self, row):
        return {"text": "hi"}


class Slow(Scripted):
    def step(self, response):
        time.sleep(30)


@pytest.mark.parametrize("cls,method,problem", [
    (Raises, "step", "raised KeyError: 'no such tool'"),
    (WrongTypes, "step", "returned a tuple of 2, expected a tuple of 3: (next message(s) or None, reward, done)"),
    (NotDoneWithoutMessage, "step", "returned no next message (None) with done=False"),
    (BadReward, "step", "returned reward=nan, expected a finite number"),
    (BadReset, "reset", "returned dict, expected a string or a list of {role, content} messages"),
    (Slow, "step", "took longer than env.step_timeout_s=0.5 s"),
])
def test_a_bad_environment_is_one_line_naming_class_method_row_and_turn(cls, method, problem, tokenizers):
    r = Rendering(tokenizers["llama"])
    sample, _ = scripted_policy(r, ["A.", "B."])
    batch = _batch(["Q1?", "Q2?"])
    batch.rows[1]["row_index"] = 17
    runner = _runner(r, cls, step_timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(EnvError) as info:
        runner.run(batch, seed=0, sample=sample, timed=_timed)
    assert time.monotonic() - start < 10  # a timed-out call is not waited for
    line = str(info.value)  # both episodes fail: the first of the batch is named, whichever call ended first
    assert "\n" not in line and line.startswith(f"environment {cls.__name__}.{method} on prompt row 0 (turn 0): ")
    assert line.endswith(f"(turn 0): {problem}"), line
    # run.on_env_error=skip: the episodes are dropped (no action token), counted, the run goes on
    rollout = _runner(r, cls, on_error="skip", step_timeout_s=0.5).run(batch, seed=0, sample=sample, timed=_timed)
    assert int(rollout.action_mask.sum()) == 0 and episode_metrics(rollout)["env/errors"] == 2.0
    assert "prompt row 17 (turn 0)" in rollout.episodes[1]["error"]


def test_a_class_path_that_does_not_import_is_one_line_naming_the_key(tmp_path, monkeypatch):
    (tmp_path / "broken_env.py").write_text("import not_a_module_anywhere\n")
    (tmp_path / "fine_env.py").write_text("class NotAnEnv:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"^config key 'env.path': cannot import 'broken_env:Env': ModuleNotFoundError: No module named 'not_a_module_anywhere'$"):
        env_class("broken_env:Env")
    with pytest.raises(ValueError, match=r"^config key 'env.path': 'fine_env:NotAnEnv' is not an environment class .*missing: reset, step\)$"):
        env_class("fine_env:NotAnEnv")
    with pytest.raises(ValueError, match="unknown built-in environment 'builtin:nope'"):
        env_class("builtin:nope")
