"""Role groups on Ray: 2 replicas at ZeRO 0/2/3 == 1 local replica; gather order; errors; colocation.

One Ray session (conftest `ray_cluster`) and one set of groups for the module: three roles of two
replicas each start concurrently (six actors, ~400 MB each), one of them colocated with another.
The test role lives in this module; the workers import it as `test_cluster_ray` (see conftest).
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

import cluster
from cluster.batch import Batch, spec
from actors.engine import backward, build_engine, gathered_params, step
from cluster import LocalGroup, RoleError, RoleSpec, create_groups, gather_as, get
from cluster.placement import Resources, plan_resources
from orchestrator.config import PlacementConfig, TrainableConfig

ROWS, SEQ = 8, 10  # global batch: 8 sequences of 10 tokens
MICRO = 2  # sequences per micro-batch, in every mode
LR = 1e-3


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)
    return LlamaForCausalLM(config)


@dataclasses.dataclass
class Tokens(Batch):
    input_ids: torch.Tensor = spec("B T", torch.long)  # (B, T) token ids
    loss_mask: torch.Tensor = spec("B T-1", torch.float32)  # (B, T-1) 1 where predicting token t+1 counts
    row: torch.Tensor = spec("B", torch.long)  # (B,) row index in the global batch


@dataclasses.dataclass
class RowOwner(Batch):
    row: torch.Tensor = spec("B", torch.long)  # (B,) row index received
    rank: torch.Tensor = spec("B", torch.long)  # (B,) replica that handled the row


class TinyLM:
    """A minimal trainable role: next-token NLL with the global-token-count aggregation."""

    def __init__(self, cfg: TrainableConfig, *, minibatch_size: int):
        self.micro = cfg.micro_batch_size
        self.engine = build_engine(
            tiny_llama(), cfg, train=True, total_steps=4, minibatch_size=minibatch_size,
            overrides={"zero_optimization": {"stage3_param_persistence_threshold": 0}},  # partition even tiny params
        )

    def train_step(self, batch: Tokens, global_tokens: float) -> dict[str, float]:
        """One optimizer step on this replica's shard; loss = sum(nll * mask) / global_tokens."""
        loss_sum = 0.0
        for micro in batch.split(batch.num_rows // self.micro):
            logits = self.engine(input_ids=micro.input_ids).logits[:, :-1].float()
            nll = -torch.log_softmax(logits, -1).gather(-1, micro.input_ids[:, 1:, None])[..., 0]
            loss = (nll * micro.loss_mask).sum() / global_tokens
            backward(self.engine, loss)
            loss_sum += loss.item()
        stats = step(self.engine)
        return {"loss": loss_sum, **stats}

    @gather_as("first")
    def flat_params(self) -> torch.Tensor:
        """All parameters, whole (gathered under ZeRO-3, a collective: use broadcast)."""
        with gathered_params(self.engine) as module:
            return torch.cat([p.detach().float().flatten() for p in module.parameters()]).clone()

    @gather_as("cat")
    def who(self, batch: Tokens) -> RowOwner:
        rank = torch.distributed.get_rank()
        return RowOwner(row=batch.row, rank=torch.full_like(batch.row, rank))

    def rank(self) -> int:
        return torch.distributed.get_rank()

    def add(self, x: int, *, y: int) -> int:
        return torch.distributed.get_rank() + x + y

    def boom(self, batch: Tokens) -> None:
        if torch.distributed.get_rank() == 1:
            raise ValueError("boom on purpose")

    def nap(self, seconds: float) -> int:
        time.sleep(seconds * (1 + torch.distributed.get_rank()))
        return torch.distributed.get_rank()


def global_batch() -> tuple[Tokens, float]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (ROWS, SEQ), generator=g)
    valid = torch.tensor([9, 2, 7, 4, 9, 1, 5, 8])  # different valid counts per row, so per-shard means differ
    mask = (torch.arange(SEQ - 1)[None, :] < valid[:, None]).float()
    return Tokens(input_ids=ids, loss_mask=mask, row=torch.arange(ROWS)), float(mask.sum())


def trainable_cfg(zero_stage: int, replicas: int, **placement) -> TrainableConfig:
    return TrainableConfig(zero_stage=zero_stage, replicas=replicas, micro_batch_size=MICRO, lr=LR,
                           grad_clip=1.0, weight_decay=0.1, num_cpus=0.5, num_gpus=1.0, **placement)


@pytest.fixture(scope="module")
def groups(ray_cluster):
    """policy (ZeRO-0), critic (ZeRO-2), reference (ZeRO-3, colocated with policy): 2 replicas each."""
    specs = {
        "policy": RoleSpec(TinyLM, trainable_cfg(0, 2), kwargs={"minibatch_size": ROWS}),
        "critic": RoleSpec(TinyLM, trainable_cfg(2, 2), kwargs={"minibatch_size": ROWS}),
        "reference": RoleSpec(TinyLM, trainable_cfg(3, 2, colocate_with="policy"), kwargs={"minibatch_size": ROWS}),
    }
    made = create_groups("ray", specs)
    yield made
    for g in made.values():
        g.shutdown()


@pytest.fixture(scope="module")
def local_result():
    """The reference numbers: one replica in this process (local mode), whole batch, same micro-batches."""
    group = create_groups("local", {"local": RoleSpec(TinyLM, trainable_cfg(0, 1), kwargs={"minibatch_size": ROWS})})["local"]
    assert isinstance(group, LocalGroup)
    batch, tokens = global_batch()
    before = get(group.broadcast(TinyLM.flat_params))
    (stats,) = get(group.scatter(TinyLM.train_step, batch, tokens))
    after = get(group.broadcast(TinyLM.flat_params))
    group.shutdown()
    return before, stats, after


@pytest.mark.slow  # three 2-replica Ray groups (~45 s to start)
def test_two_replicas_at_zero_0_2_3_match_one_local_replica(groups, local_result):
    before_local, stats_local, after_local = local_result
    batch, tokens = global_batch()
    names = ["policy", "critic", "reference"]  # ZeRO 0, 2, 3
    # Several groups in flight, then ONE get over all of them.
    before = cluster.get(*(groups[n].broadcast(TinyLM.flat_params) for n in names))
    steps = cluster.get(*(groups[n].scatter(TinyLM.train_step, batch, tokens) for n in names))
    after = cluster.get(*(groups[n].broadcast(TinyLM.flat_params) for n in names))
    assert stats_local["grad_norm"] > 1.0, "the clip (1.0) must be active for this test to cover clipping"
    for name, p0, per_replica, p1 in zip(names, before, steps, after):
        assert torch.equal(p0, before_local), name
        loss = sum(s["loss"] for s in per_replica)  # each replica returns its share of the global loss
        assert loss == pytest.approx(stats_local["loss"], rel=1e-6, abs=0), name
        for s in per_replica:
            assert s["grad_norm"] == pytest.approx(stats_local["grad_norm"], rel=1e-5), name
        assert (p1 - p0).abs().max() > 1e-4, f"{name}: the step did not move the parameters"
        assert (p1 - after_local).abs().max().item() < 1e-5, name


@pytest.mark.slow  # three 2-replica Ray groups (~45 s to start)
def test_scatter_then_cat_keeps_row_order(groups):
    batch, _ = global_batch()
    owner = get(groups["critic"].scatter(TinyLM.who, batch))
    assert isinstance(owner, RowOwner)
    assert owner.row.tolist() == list(range(ROWS))
    assert owner.rank.tolist() == [0] * (ROWS // 2) + [1] * (ROWS // 2)


@pytest.mark.slow  # three 2-replica Ray groups (~45 s to start)
def test_scatter_padded_takes_any_number_of_rows(groups):
    """3 rows over 2 replicas: padded with the batch's first row (rows 0, 1 | 2, 0), cut back to 3."""
    batch, _ = global_batch()
    owner = get(groups["critic"].scatter_padded(TinyLM.who, batch.select([0, 1, 2])))
    assert owner.row.tolist() == [0, 1, 2] and owner.rank.tolist() == [0, 0, 1]
    with pytest.raises(TypeError, match="gathered with 'cat'"):
        groups["critic"].scatter_padded(TinyLM.boom, batch)


@pytest.mark.slow  # three 2-replica Ray groups (~45 s to start)
def test_broadcast_list_and_call_rank0(groups):
    group = groups["policy"]
    assert get(group.broadcast(TinyLM.rank)) == [0, 1]  # undeclared gather mode: per-replica list
    assert get(group.broadcast(TinyLM.add, 1, y=2)) == [3, 4]  # shared args and kwargs
    assert get(group.call_rank0(TinyLM.rank)) == 0


@pytest.mark.slow  # three 2-replica Ray groups (~45 s to start)
def test_replicas_count_the_seconds_inside_role_methods(groups):
    """`busy_s` (what `rlhf bench` subtracts from a step to get Ray's and the driver's overhead) grows by the
    time a method ran on that replica, and a call's wall time at the driver covers its slowest replica."""
    group = groups["critic"]
    before = [h["busy_s"] for h in group.hosts()]
    t0 = time.perf_counter()
    assert get(group.broadcast(TinyLM.nap, 0.2)) == [0, 1]
    wall = time.perf_counter() - t0
    grew = [h["busy_s"] - b for h, b in zip(group.hosts(), before)]
    assert 0.2 <= grew[0] < 0.3 and 0.4 <= grew[1] < 0.5  # rank r sleeps 0.2 * (r + 1) s
    assert wall >= grew[1]
    local = LocalGroup(Flaky, PlacementConfig(), name="reward")
    assert local.hosts()[0]["busy_s"] == 0.0


@pytest.mark.slow  # three 2-replica Ray groups (~45 s to start)
def test_role_error_names_role_rank_and_method(groups):
    batch, _ = global_batch()
    pending = groups["policy"].scatter(TinyLM.boom, batch)
    with pytest.raises(RoleError) as info:
        cluster.get(pending)
    err = info.value
    assert (err.role, err.rank, err.method) == ("policy", 1, "boom")
    assert "role 'policy' replica 1/2" in str(err) and "TinyLM.boom" in str(err)
    assert "ValueError: boom on purpose" in str(err)
    # The group is still usable afterwards.
    assert get(groups["policy"].broadcast(TinyLM.rank)) == [0, 1]


class Flaky:
    def __init__(self, cfg):
        pass

    def boom(self):
        raise KeyError("missing")


def test_local_group_raises_role_error_at_the_call():
    group = LocalGroup(Flaky, PlacementConfig(replicas=2), name="reward")  # local mode: 1 replica
    with pytest.raises(RoleError, match=r"role 'reward' replica 0/1: Flaky.boom raised KeyError") as info:
        group.broadcast(Flaky.boom)
    assert isinstance(info.value.__cause__, KeyError)  # the original, for a debugger's post-mortem


@pytest.mark.slow  # three 2-replica Ray groups (~45 s to start)
def test_methods_are_named_by_reference_only(groups):
    with pytest.raises(TypeError):
        groups["policy"].broadcast("rank")
    with pytest.raises(TypeError, match="not a method of TinyLM"):
        groups["policy"].broadcast(RowOwner.check)


@pytest.mark.slow  # three 2-replica Ray groups (~45 s to start)
def test_colocated_role_shares_the_placement_group(groups):
    policy, reference = groups["policy"].placement, groups["reference"].placement
    assert policy is reference
    assert policy.bundles == [{"CPU": 1.0}] * 2  # 0.5 + 0.5 CPU per bundle; no GPUs here -> num_gpus 0
    assert policy.requests["reference"] == Resources(num_cpus=0.5, num_gpus=0.0)
    assert groups["critic"].placement is not policy


def test_placement_arithmetic_with_gpus():
    """Pure planning (no Ray): colocated roles add CPUs and share the largest GPU request."""
    P = PlacementConfig
    cfgs = {
        "policy": P(replicas=2, num_gpus=1.0, num_cpus=2),
        "reference": P(replicas=2, num_gpus=1.0, num_cpus=1, colocate_with="reward"),
        "reward": P(replicas=1, num_gpus=0.5, num_cpus=1, colocate_with="policy"),
        "critic": P(replicas=4, num_gpus=1.0, num_cpus=1),
    }
    plan = plan_resources(cfgs, has_gpus=True)
    assert plan["critic"] == ("critic", 4, Resources(1, 1.0), Resources(1, 1.0))
    shared = ("policy+reference+reward", 2, Resources(4, 1.0))
    for role, cpus in (("policy", 2), ("reference", 1), ("reward", 1)):
        assert plan[role] == (*shared, Resources(cpus, 1.0 / 3)), role  # one device, split three ways
    assert plan_resources(cfgs, has_gpus=False)["policy"][3] == Resources(2, 0.0)
    with pytest.raises(ValueError, match="cycle"):
        plan_resources({"a": P(colocate_with="b"), "b": P(colocate_with="a")}, has_gpus=True)
    with pytest.raises(ValueError, match="one device"):
        plan_resources({"a": P(num_gpus=2)}, has_gpus=True)
