"""Data-parallel training on ``torch.distributed``: the few collectives :func:`meta_rl.train.train` needs.

Launched by ``torchrun`` (which sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``), every rank runs its own batch of ``num_envs`` tasks with its own seed stream and
the gradients are averaged over the ranks, so the parameters stay identical on all of them.

Why an explicit all-reduce and not ``DistributedDataParallel``: the policy is not one ``forward``
call. The update runs ``policy.encode`` (whose graph was built during the rollout, in
:func:`meta_rl.rollout.collect` with ``embed_with_grad``), ``policy.context``, ``policy(...)`` and
``policy.log_prob``; DDP only hooks gradients of computations that go through its wrapped
``forward`` and would misfire (or need ``find_unused_parameters``) for the rest, and its
``no_sync``/bucketing machinery buys nothing for a model this small. One flattened all-reduce of
all gradients after ``backward`` and before clipping is exact: every rank's loss is a mean over its
own T x B steps, so the averaged gradient equals the gradient of the mean over all ranks' steps,
and clipping the averaged gradient clips the same vector a single process with the combined
batch would.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["World", "rank_seed", "setup", "teardown"]

# Seed offset between ranks; rank 0 keeps the configured seed, so one process is the plain run.
RANK_SEED_STRIDE = 1_000_000_007


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s tasks and actions (``seed`` itself on rank 0)."""
    return seed if rank == 0 else (seed + rank * RANK_SEED_STRIDE) % 2**63


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes (1: no process group)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- collectives (no-ops with one process) ------------------------------------------------

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Replace every ``.grad`` by its mean over the ranks (one flattened all-reduce).

        Parameters without a gradient are left alone; all ranks run the same graph, so they
        agree on which ones those are.
        """
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def average_float_buffers(self, module: torch.nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) so all ranks save the same state."""
        if not self.enabled:
            return
        with torch.no_grad():
            for b in module.buffers():
                if b.is_floating_point():
                    dist.all_reduce(b, op=dist.ReduceOp.SUM)
                    b /= self.size

    def all_min(self, flags: torch.Tensor) -> torch.Tensor:
        """Element-wise AND of a bool tensor over the ranks (stays on the device, no host read)."""
        if not self.enabled:
            return flags
        t = flags.to(torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t.bool()

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return t
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def agree_stop(self, signum: int | None, timed_out: bool, asked: bool,
                   device: torch.device) -> tuple[int | None, bool, bool]:
        """The stop decision of all ranks together: any rank's signal, time limit or callback's request (``asked``)
        stops every rank.

        One tiny all-reduce and host read per update; without it a rank that stopped alone would
        leave the others waiting forever in the next collective.
        """
        if not self.enabled:
            return signum, timed_out, asked
        t = torch.tensor([signum or 0, int(timed_out), int(asked)], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        s, timed, by_callback = (int(x) for x in t.tolist())
        return (s or None), bool(timed), bool(by_callback)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (``[obj]`` with one process)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


def param_digest(module: torch.nn.Module) -> str:
    """SHA-256 of the parameters' bytes: equal on all ranks exactly when the parameters are bitwise equal."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def setup(device: torch.device) -> tuple[World, torch.device, bool]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    With ``WORLD_SIZE`` unset or 1 and no group initialised: one process, ``device`` unchanged.
    Otherwise each rank uses ``cuda:LOCAL_RANK`` when ``device`` is CUDA (backend NCCL), else the
    CPU (backend gloo). Returns the world, the device and whether this call created the group
    (then :func:`teardown` destroys it). A group the caller initialised is used as it is.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        size = dist.get_world_size()
        created = False
    elif size <= 1:
        return World(), device, False
    else:
        created = True
    rank = int(os.environ.get("RANK", "0")) if not dist.is_initialized() else dist.get_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if created:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        rank = dist.get_rank()
    if size <= 1:
        return World(), device, created
    return World(rank=rank, size=size, local_rank=local_rank), device, created


def teardown(created: bool, *, synchronize: bool = False) -> None:
    """Leave the process group this process created.

    Args:
        synchronize: wait for every rank first (after a run that ended alike on all ranks). A rank
            that destroys its group while another still talks to it can abort the other at exit
            ("terminate called without an active exception"); never set after an error on one rank.
    """
    if created and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()
