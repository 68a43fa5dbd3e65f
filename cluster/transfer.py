"""Tensors from one role's process to other roles' processes over a process group of their own: how the
policy's weights reach the generator's engines with `generator.sync_transport=collective`.

A `TransferGroup` is a process group made from a TCP store at (host, port), apart from every role's own
torch.distributed world (DeepSpeed's, vLLM's): rank 0 is the sender (the policy's rank 0), ranks 1.. the
receivers (each generator replica, or each worker of a vLLM engine). Its backend follows the device: NCCL
when the tensors live on a CUDA device, gloo on CPU, so the CPU path tested here is the GPU path with
another backend (the NCCL one unverified on this machine). This is how OpenRLHF and verl move weights into
their vLLM engines, there with vLLM's own NCCL wrapper; here torch's, which imports no vLLM on the trainer.

The tensors travel in buckets (`Layout`): each bucket one flat byte buffer broadcast from rank 0, so a sync
is one collective per bucket, never one per tensor. The layout (names, shapes, dtypes, which bucket) is
fixed for a run and agreed once, when the group is made: the sender packs in its order and the receivers
unpack views of their buffer without a copy. Tensors that share storage (tied embeddings) are sent once
and received under each of their names.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Iterator

import torch

__all__ = ["Layout", "TransferGroup", "plan_layout"]

ALIGN = 16
"""Byte alignment of each tensor in a bucket's buffer."""


@dataclasses.dataclass
class Layout:
    """Which tensor goes in which bucket: `buckets[i]` is a list of (name, shape, dtype name, byte offset) in
    bucket i, `sizes[i]` its bytes; `aliases` maps a name to the name whose storage it shares."""

    buckets: list[list[tuple[str, tuple[int, ...], str, int]]]
    sizes: list[int]
    aliases: dict[str, str]

    @property
    def nbytes(self) -> int:
        return sum(self.sizes)

    @property
    def names(self) -> list[str]:
        return [name for bucket in self.buckets for name, *_ in bucket] + list(self.aliases)


def plan_layout(tensors: dict[str, torch.Tensor], bucket_mb: float) -> Layout:
    """The buckets of at most `bucket_mb` MiB each (a larger tensor is a bucket alone) for `tensors`, in order."""
    limit = bucket_mb * 2**20
    buckets: list[list] = [[]]
    sizes = [0]
    aliases: dict[str, str] = {}
    first: dict[int, str] = {}
    for name, t in tensors.items():
        if t.numel() and t.data_ptr() in first:
            aliases[name] = first[t.data_ptr()]
            continue
        first[t.data_ptr()] = name
        nbytes = t.numel() * t.element_size()
        if buckets[-1] and sizes[-1] + nbytes > limit:
            buckets.append([])
            sizes.append(0)
        sizes[-1] = -(-sizes[-1] // ALIGN) * ALIGN  # every tensor starts aligned for any dtype's view
        buckets[-1].append((name, tuple(t.shape), str(t.dtype).removeprefix("torch."), sizes[-1]))
        sizes[-1] += nbytes
    return Layout([b for b in buckets if b], [s for b, s in zip(buckets, sizes) if b], aliases)


class TransferGroup:
    """A process group of `world_size` processes at host:port (module doc); this process is `rank`. Making it
    waits until every rank has joined (up to `timeout_s`), so the sender and the receivers are made at the
    same time, from different processes."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, device: torch.device | str, timeout_s: float):
        import torch.distributed as dist

        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        timeout = timedelta(seconds=timeout_s)
        self.store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
        if self.device.type == "cuda":  # unverified here: no GPU on the machine this was written on
            from torch.distributed import ProcessGroupNCCL

            options = ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.group = ProcessGroupNCCL(self.store, rank, world_size, options)
        else:
            self.group = dist.ProcessGroupGloo(self.store, rank, world_size, timeout)

    def _broadcast(self, buffer: torch.Tensor) -> None:
        import torch.distributed as dist

        options = dist.BroadcastOptions()
        options.rootRank = 0
        self.group.broadcast([buffer], options).wait()

    def send(self, tensors: dict[str, torch.Tensor], layout: Layout) -> int:
        """Rank 0: broadcast `tensors` bucket by bucket as `layout` says; returns the bytes sent. A tensor
        `layout` does not list, or one of another shape or dtype, is an error before anything is sent."""
        for bucket in layout.buckets:
            for name, shape, dtype, _ in bucket:
                t = tensors.get(name)
                if t is None or tuple(t.shape) != shape or str(t.dtype).removeprefix("torch.") != dtype:
                    got = "missing" if t is None else f"{tuple(t.shape)} {t.dtype}"
                    raise ValueError(f"weight transfer: {name} is {got}, the layout agreed at the start says {shape} {dtype}")
        for bucket, size in zip(layout.buckets, layout.sizes):
            buffer = torch.empty(size, dtype=torch.uint8, device=self.device)
            for name, _, _, offset in bucket:
                flat = tensors[name].detach().contiguous().reshape(-1).view(torch.uint8)
                buffer[offset: offset + flat.numel()].copy_(flat)
            self._broadcast(buffer)
        return layout.nbytes

    def receive(self, layout: Layout) -> Iterator[tuple[str, torch.Tensor]]:
        """Ranks 1..: the tensors of each bucket as they arrive, (name, tensor) on this group's device, views of
        the bucket's buffer (aliases after the bucket holding their storage)."""
        for bucket, size in zip(layout.buckets, layout.sizes):
            buffer = torch.empty(size, dtype=torch.uint8, device=self.device)
            self._broadcast(buffer)
            here = {}
            for name, shape, dtype, offset in bucket:
                dt = getattr(torch, dtype)
                n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dt).element_size()
                here[name] = buffer[offset: offset + n].view(dt).view(shape)
                yield name, here[name]
            for alias, name in layout.aliases.items():
                if name in here:
                    yield alias, here[name]
