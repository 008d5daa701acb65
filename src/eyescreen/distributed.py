"""PyTorch's own distributed training, as started by `torchrun`: process group, data shards, sums.

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op, and the data order
is exactly the single-process order: DistributedSampler with one replica is torch.randperm seeded by
(seed, epoch). With N processes each takes every N-th index of that same permutation, so N processes
with batch B/N see the same global batches as one process with batch B.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class Context:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); return the device to use."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(), device
    ctx = Context(world, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def teardown(ctx: Context) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def epoch_indices(n: int, seed: int, epoch: int, ctx: Context) -> torch.Tensor:
    """This process's share of the epoch's shuffled indices (equal length on every process)."""
    sampler = DistributedSampler(range(n), num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                 seed=seed * 100_003, drop_last=True)  # fmt: skip
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def balanced_epoch_indices(labels: torch.Tensor, seed: int, epoch: int, ctx: Context) -> torch.Tensor:
    """Like epoch_indices, but drawn with replacement so that every class is equally likely."""
    labels = labels - labels.min()  # samples without a label (-1) form a group of their own
    counts = torch.bincount(labels).double()
    weights = (1.0 / counts)[labels]
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.multinomial(weights, len(labels), replacement=True, generator=g)
    usable = len(order) - len(order) % ctx.world
    return order[:usable][ctx.rank :: ctx.world]


def sum_across(ctx: Context, *values: float) -> list[float]:
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def barrier(ctx: Context) -> None:
    if ctx.enabled:
        dist.barrier()


def from_main(ctx: Context, value):
    """The main process's `value` on every process (a choice each would otherwise make on its own)."""
    if not ctx.enabled:
        return value
    box = [value if ctx.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
