"""cluster.transfer: tensors broadcast from one process to others over a process group of their own (gloo
here, NCCL on GPUs), in buckets: what arrives is what was sent, bit for bit, under every name (tied tensors
sent once), for mixed dtypes and a bucket size that splits the tensors; a tensor that does not fit the
layout agreed at the start is an error before anything is sent."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch

from cluster.dist import free_port
from cluster.transfer import TransferGroup, plan_layout


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    embed = torch.randn(50, 8, generator=g)
    return {"embed.weight": embed, "norm.weight": torch.randn(8, generator=g).to(torch.bfloat16),
            "step": torch.tensor([3], dtype=torch.int64), "layer.weight": torch.randn(8, 8, generator=g),
            "empty": torch.zeros(0), "lm_head.weight": embed}


def _receiver(port: int, rank: int, world: int, queue) -> None:
    group = TransferGroup("127.0.0.1", port, rank, world, "cpu", timeout_s=60)
    layout = plan_layout(_tensors(), bucket_mb=0.001)
    queue.put((rank, {name: t.clone() for name, t in group.receive(layout)}))


def test_what_arrives_is_what_was_sent_in_buckets():
    sent = _tensors()
    layout = plan_layout(sent, bucket_mb=0.001)  # 1 KiB: the 1.6 KiB embedding alone, the rest together
    assert [[n for n, *_ in b] for b in layout.buckets] == [["embed.weight"], ["norm.weight", "step", "layer.weight", "empty"]]
    assert layout.aliases == {"lm_head.weight": "embed.weight"} and all(off % 16 == 0 for b in layout.buckets for *_, off in b)
    port, world = free_port("127.0.0.1"), 3
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_receiver, args=(port, r, world, queue)) for r in (1, 2)]
    for p in procs:
        p.start()
    try:
        group = TransferGroup("127.0.0.1", port, 0, world, "cpu", timeout_s=60)
        assert group.send(sent, layout) == layout.nbytes
        got = dict(queue.get(timeout=60) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
    for rank in (1, 2):
        assert sorted(got[rank]) == sorted(sent)
        for name, t in sent.items():
            assert got[rank][name].dtype == t.dtype and torch.equal(got[rank][name], t), (rank, name)


def test_a_tensor_that_does_not_fit_the_layout_is_refused_before_sending():
    sent = _tensors()
    layout = plan_layout(sent, bucket_mb=1)
    group = TransferGroup("127.0.0.1", free_port("127.0.0.1"), 0, 1, "cpu", timeout_s=10)
    with pytest.raises(ValueError, match=r"layer.weight is \(8, 9\) torch.float32, the layout agreed at the start says \(8, 8\) float32"):
        group.send({**sent, "layer.weight": torch.zeros(8, 9)}, layout)
    with pytest.raises(ValueError, match="norm.weight is missing"):
        group.send({k: v for k, v in sent.items() if k != "norm.weight"}, layout)
