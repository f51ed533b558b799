"""Data-parallel training over processes with torch.distributed (launch with `torchrun`).

Every rank holds a full replica of the model and the strategy and reads its own shard of the
training set (`loader.shard(rank, world_size)`). After `strategy.after_backward` has edited the
gradients, the loop averages them over ranks (one all-reduce of a flat buffer) and every rank takes
the same optimizer step, so the replicas stay identical. CGGM's per-batch metrics ε_m are averaged
over ranks before the coefficients are computed, and its classifiers' gradients before their own
step (cggmlib/modulation/classifiers.py), so every rank computes the same B_m and keeps the same
classifiers: W ranks with per-rank batch b train as one process with batch W·b
(tests/test_distributed.py checks both).

Why not `torch.nn.parallel.DistributedDataParallel`: strategies call the model's parts directly
(`encoders`, `fuse`) and edit gradients after backward, while DDP expects every forward to go
through its wrapper and reduces gradients during the backward pass, before any modulation.
Averaging after `after_backward` works for every strategy (a strategy whose coefficients come from
the local batch gets the mean of the per-rank modulated gradients, and replicas still agree); it
gives up DDP's overlap of communication with the backward pass. Buffers (BatchNorm running
statistics) are taken from rank 0 at the end of each epoch, the value DDP's `broadcast_buffers` gives.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: rank, number of ranks, and the GPU index on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files (checkpoints, run folders) and shows progress."""
        return self.rank == 0

    def shard(self, data) -> None:
        """Give this rank its share of the training split (validation and test are evaluated whole)."""
        if not self.enabled:
            return
        if not hasattr(data.train, "shard"):
            raise ConfigError(f"distributed training needs a training loader with shard(rank, world_size) "
                              f"(cggmlib's loaders have it); got {type(data.train).__name__}")
        data.train.shard(self.rank, self.world_size)

    def average_gradients(self, params) -> None:
        """p.grad ← mean over ranks; a parameter without a gradient on every rank keeps none."""
        if self.enabled:
            all_reduce_gradients(list(params), self.world_size)

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Every rank takes rank 0's buffers (e.g. BatchNorm running mean and variance)."""
        if self.enabled:
            for b in module.buffers():
                dist.broadcast(b, src=0)


def setup(device: str) -> tuple[Distributed, torch.device]:
    """(this process's `Distributed`, its device).

    Initialises the process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT) when WORLD_SIZE > 1 and nobody has yet: NCCL for CUDA, gloo for CPU.
    A group initialised by the caller is used as it is. On CUDA, rank r uses GPU LOCAL_RANK.
    """
    if not dist.is_available():
        return Distributed(), torch.device(device)
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return Distributed(), torch.device(device)
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device == "cuda":
        device = f"cuda:{local % max(torch.cuda.device_count(), 1)}"
        torch.cuda.set_device(device)
    return Distributed(rank, world, local), torch.device(device)


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0 (for code that writes files after `train`)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce_gradients(params: list, world_size: int | None = None) -> None:
    """Average `.grad` of `params` over ranks with one all-reduce of a flat buffer.

    The buffer also carries one presence flag per parameter, so a parameter whose gradient is None on
    some ranks (e.g. a modality dropped there) averages the others' with zeros, and one that has no
    gradient anywhere keeps None (an optimizer then skips it, as in a single process).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    world_size = world_size or dist.get_world_size()
    if world_size == 1 or not params:
        return
    device = params[0].device
    local = [p.grad is not None for p in params]
    parts = [p.grad.reshape(-1).float() if p.grad is not None else torch.zeros(p.numel(), device=device)
             for p in params]
    # torch.ones: a fill on the device; torch.tensor(list) would be a synchronous host-to-device copy
    flags = torch.ones(len(params), device=device) if all(local) else torch.tensor(local, dtype=torch.float32,
                                                                                      device=device)
    flat = torch.cat([*parts, flags])
    dist.all_reduce(flat)
    flat /= world_size
    # reading the presence flags is a host sync, needed only when this rank lacks some gradient
    seen = local if all(local) else (flat[-len(params):] > 0).tolist()
    offset = 0
    for p, has in zip(params, seen):
        n = p.numel()
        if has:
            g = flat[offset:offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        offset += n


def mean_across_processes(t: torch.Tensor) -> torch.Tensor:
    """The mean of `t` over ranks (a copy), or `t` itself in a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t
