"""The model-family matrix on Ray: GPT-2 (no pad token, learned positions, Conv1D) through `rlhf sft`,
`rlhf rm`, `rlhf ppo` and `rlhf dpo` in ray mode, and every family's reward model behind
`rlhf serve reward` (real Ray Serve on 127.0.0.1, real HTTP) scoring the same pairs as its training
role to 1e-5."""

import pytest
import torch

from families import FAMILIES, build_families, run_job

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    return build_families(tmp_path_factory.mktemp("families"))


def test_gpt2_sft_rm_ppo_dpo_in_ray_mode(ray_cluster, families, tmp_path):
    import transformers

    fam = families["gpt2"]
    cpus = "policy.num_cpus=0.5"
    sft = run_job("sft", tmp_path / "sft", "run.mode=ray", cpus, f"policy.path={fam['model']}", f"data.path={fam['sft']}",
                  f"data.eval_path={fam['sft']}", "sft.batch_size=8", "policy.micro_batch_size=4", "policy.warmup_steps=0",
                  "policy.max_new_tokens=8")
    rm = run_job("rm", tmp_path / "rm", "run.mode=ray", "model.num_cpus=0.5", f"model.path={sft['policy']}",
                 f"data.path={fam['prefs']}", f"data.eval_path={fam['prefs']}", "rm.batch_size=8", "model.micro_batch_size=4",
                 "model.warmup_steps=0")
    roles = [f"{r}.num_cpus=0.5" for r in ("policy", "reference", "critic", "reward")]
    ppo = run_job("ppo", tmp_path / "ppo", "run.mode=ray", *roles, f"policy.path={sft['policy']}", "reward.kind=model",
                  f"reward.path={rm['model']}", f"data.path={fam['prompts']}", f"data.eval_path={fam['prompts']}",
                  "ppo.rollout_batch_size=8", "ppo.minibatch_size=4", "policy.micro_batch_size=4", "critic.micro_batch_size=4",
                  "policy.max_new_tokens=8")
    dpo = run_job("dpo", tmp_path / "dpo", "run.mode=ray", cpus, f"policy.path={sft['policy']}", f"data.path={fam['prefs']}",
                  f"data.eval_path={fam['prefs']}", "dpo.batch_size=8", "policy.micro_batch_size=4", "policy.max_new_tokens=8")
    for folder in (ppo["policy"], dpo["policy"]):
        transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert ppo["steps"] == dpo["steps"] == 2


def test_every_family_scores_alike_in_training_and_behind_serve(ray_cluster, families, tmp_path):
    """For each family: a reward model trained by `rlhf rm` (local), then the rewards of the same pairs
    from its training role (head outputs read as the RL reward) and from `rlhf serve reward` over HTTP."""
    from ray import serve

    from actors.pairs import collate_pairs
    from actors.remote_reward import RemoteScorer
    from actors.reward_head import RewardHead
    from actors.reward_trainer import RewardModelActor
    from cluster import init_local
    from cluster.dist import free_port
    from orchestrator.config import DataConfig
    from orchestrator.registry import load_config
    from orchestrator.data import load_preferences
    from orchestrator.tools.serve import ServeOptions, deploy, reward_config

    torch.set_num_threads(1)
    init_local()
    port = free_port("127.0.0.1")
    try:
        for family in FAMILIES:
            fam = families[family]
            rm = run_job("rm", tmp_path / family, "run.mode=local", f"model.path={fam['model']}", f"data.path={fam['prefs']}",
                         f"data.eval_path={fam['prefs']}", "rm.batch_size=8", "model.micro_batch_size=4", "model.warmup_steps=0",
                         "model.head_init_scale=1.0", "model.objective=mean_variance")
            folder = rm["model"]
            cfg = load_config("rm", None, [f"model.path={folder}", "model.head_init_scale=1.0", "model.objective=mean_variance",
                                               "model.micro_batch_size=2", "model.warmup_steps=0"]).model
            actor = RewardModelActor(cfg, model_path=folder, seed=0, total_steps=1, minibatch_size=2)
            rows = load_preferences(DataConfig(path=fam["prefs"]), actor.tokenizer)[0].to_list()[:4]
            out = actor.outputs(collate_pairs(rows, actor.pad_id))
            import transformers

            head = RewardHead.from_config(transformers.AutoConfig.from_pretrained(folder))
            want, want_std = head.reward(torch.cat([out.chosen, out.rejected]))
            url = deploy(reward_config(folder, ["reward.num_cpus=0.25"]),
                         ServeOptions(port=port, route=f"/{family}", name=family, max_batch_size=8))
            prompts = [r["chat"] if r["chat"] is not None else r["prompt"] for r in rows] * 2
            got = RemoteScorer(url, timeout_s=60, batch_size=8)(prompts, [r["chosen"] for r in rows] + [r["rejected"] for r in rows])
            assert want.std() > 1e-4, family
            torch.testing.assert_close(got.reward, want, atol=1e-5, rtol=0, msg=family)
            torch.testing.assert_close(got.std, want_std, atol=1e-5, rtol=0, msg=family)
            serve.delete(family)
    finally:
        serve.shutdown()
