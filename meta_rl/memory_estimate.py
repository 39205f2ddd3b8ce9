"""What a training config will ask of the machine, estimated before anything large is allocated.

:func:`estimate_training_memory` builds the policy on PyTorch's ``meta`` device (shapes without
storage) and runs the update's forward pass there at a few short lengths, summing the bytes autograd
saves for the backward pass and extrapolating them to the real (T, B): the check's cost does not grow
with T, so a config of millions of steps a task is refused in a second. Together with the parameters,
Adam's state, the rollout buffers, the env's per-task buffers and the held-out evaluation this gives
the peak a run will need; :func:`check_fits` refuses a config whose estimate exceeds the memory the
machine has free.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

__all__ = ["MemoryEstimate", "available_memory", "check_fits", "check_threads", "estimate_training_memory"]

#: Share of the free memory a run may plan to use (the rest is slack for the allocator and the OS).
USABLE_FRACTION = 0.8
#: Peak memory of an update over the bytes autograd saves in its forward pass (measured: 1.3-1.4 on the CPU).
ACTIVATION_OVERHEAD = 1.5
#: Per-task eval results kept per episode: hits and counts of this many instances, 4 bytes each.
_EVAL_INSTANCES = 10
#: The forward passes measured on the meta device run this many steps, then twice and three times as many.
_PROBE_STEPS = 16


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training run needs, by part.

    Attributes:
        parameters: parameters, their gradients and Adam's two moments.
        activations: what autograd keeps for the backward pass of one update.
        rollout: the (T, B) rollout buffers (observations, actions, rewards, ...).
        env: the env's per-task buffers (a whole task's observations, for B tasks).
        evaluation: the held-out env and the per-episode results of one evaluation.
    """

    parameters: int
    activations: int
    rollout: int
    env: int
    evaluation: int

    @property
    def total(self) -> int:
        return self.parameters + self.activations + self.rollout + self.env + self.evaluation

    def largest(self) -> str:
        parts = {"parameters": self.parameters, "activations": self.activations, "rollout": self.rollout,
                 "env": self.env, "evaluation": self.evaluation}
        return max(parts, key=lambda k: parts[k])


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit, or None where there is no limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (CUDA free memory, or the host MemAvailable and cgroup limit); None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        free = None
    if free is None and hasattr(os, "sysconf"):
        try:
            free = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            free = None
    cgroup = _cgroup_free()
    if cgroup is not None:
        free = cgroup if free is None else min(free, cgroup)
    return free


def _space_bytes(space: spaces.Space[Any]) -> int:
    """Bytes of one observation of ``space`` as the torch-native envs hold it."""
    if isinstance(space, spaces.Dict):
        return sum(_space_bytes(s) for s in space.spaces.values())
    if isinstance(space, spaces.Discrete):
        return 8  # int64
    shape = space.shape or ()
    itemsize = np.dtype(space.dtype).itemsize if space.dtype is not None else 4
    return int(math.prod(shape)) * itemsize


def _meta_like(space: spaces.Space[Any], lead: tuple[int, ...]) -> Any:
    """A meta-device tensor (or dict of them) shaped like a batch ``lead`` of observations of ``space``."""
    if isinstance(space, spaces.Dict):
        return {k: _meta_like(s, lead) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Discrete):
        return torch.zeros(lead, dtype=torch.int64, device="meta")
    dtype = torch.from_numpy(np.zeros(0, dtype=space.dtype)).dtype
    return torch.zeros((*lead, *(space.shape or ())), dtype=dtype, device="meta")


def _activation_bytes(policy: Any, observation_space: spaces.Space[Any], steps: int, batch: int) -> int:
    """Bytes autograd saves in one update's forward pass at (T, B) = (``steps``, ``batch``), from shapes alone.

    The forward pass runs on the meta device at T = t, 2t and 3t (t = :data:`_PROBE_STEPS`), and the
    quadratic through those three counts is read at ``steps``: exact for the cores whose saved bytes
    grow linearly with T (recurrent cores, a fixed memory) or quadratically (attention over the whole
    trial), and never below the per-step bytes of the longest probe times ``steps``. Shorter tasks are
    measured directly. The cost is three short meta passes, whatever ``steps`` is.
    """
    if steps <= 3 * _PROBE_STEPS:
        return _saved_bytes(policy, observation_space, steps, batch)
    t = _PROBE_STEPS
    y1, y2, y3 = (_saved_bytes(policy, observation_space, k * t, batch) for k in (1, 2, 3))
    # Newton's form of the quadratic through (t, y1), (2t, y2), (3t, y3), read at x = steps / t.
    x = steps / t
    d1, d2 = y2 - y1, y3 - 2 * y2 + y1
    quadratic = y1 + d1 * (x - 1) + d2 * (x - 1) * (x - 2) / 2
    return int(max(quadratic, y3 / (3 * t) * steps))


def _saved_bytes(policy: Any, observation_space: spaces.Space[Any], steps: int, batch: int) -> int:
    """Bytes autograd saves in one forward pass at (``steps``, ``batch``), run on the meta device."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    lead = (steps, batch)
    obs = _meta_like(observation_space, lead)
    main = policy.main_obs(obs)
    extras = {k: obs[k] for k in policy.context_keys} if isinstance(obs, dict) else {}
    actions = torch.zeros((*lead, *policy.head.shape), dtype=policy.head.dtype, device="meta")
    rewards = torch.zeros(lead, device="meta")
    starts = torch.zeros(lead, dtype=torch.bool, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        embed = policy.encode(main, lead)  # (T, B, E)
        context = policy.context(extras, actions, rewards, starts)  # (T, B, U)
        params, values, _ = policy(embed, context, starts, policy.initial_state(batch, "meta"), need_state=False)
        policy.log_prob(params, actions).sum().add(values.sum())
    return saved


def estimate_training_memory(
    build_policy: Callable[[], torch.nn.Module], observation_space: spaces.Space[Any], steps: int, num_envs: int,
    eval_envs: int, eval_episodes: int,
) -> MemoryEstimate:
    """The memory a training run needs, without allocating it.

    Args:
        build_policy: builds the run's policy; it is called under ``torch.device("meta")``.
        observation_space: the single-env observation space.
        steps: steps per rollout (T). num_envs: tasks per update (B).
        eval_envs: tasks run in parallel by the held-out evaluation (0: none).
        eval_episodes: held-out tasks per evaluation.
    """
    with torch.device("meta"):
        policy = build_policy()
    n_params = sum(p.numel() * p.element_size() for p in policy.parameters())
    try:
        # The backward pass holds gradients of the largest activations beside them: about half again.
        activations = int(ACTIVATION_OVERHEAD * _activation_bytes(policy, observation_space, steps, num_envs))
    except Exception:  # an op without a meta kernel: fall back to a coarse bound from the widths
        width = int(getattr(policy, "embed_dim", 0)) + int(getattr(policy, "context_dim", 0))
        activations = steps * num_envs * 4 * 8 * max(width, 1)
    obs = _space_bytes(observation_space)
    per_step = obs + 4 * 16  # actions, rewards, flags, labels, ... (about 16 words a step)
    rollout = steps * num_envs * per_step
    env = 2 * steps * num_envs * obs  # a task's observations, generated ahead, plus the current batch
    evaluation = (2 * steps * eval_envs * (obs + per_step) + eval_episodes * 2 * 8 * _EVAL_INSTANCES
                  if eval_envs else 0)
    return MemoryEstimate(4 * n_params, activations, rollout, env, evaluation)


_TASK_LENGTH = "the steps of a task (rollout_steps, or the env's length in env_kwargs)"
_KEYS_BY_PART = {
    "parameters": "hidden, encoder_hidden, key_dim or conv_filters",
    "activations": f"num_envs, hidden or encoder_hidden, or {_TASK_LENGTH}",
    "rollout": f"num_envs or {_TASK_LENGTH}",
    "env": f"num_envs or {_TASK_LENGTH}",
    "evaluation": "eval_episodes",
}


def check_fits(estimate: MemoryEstimate, device: torch.device, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` if ``estimate`` exceeds :data:`USABLE_FRACTION` of the memory free on ``device``.

    Where the free memory cannot be read the check is skipped.
    """
    free = available_memory(device)
    if free is None or estimate.total <= USABLE_FRACTION * free:
        return
    part = estimate.largest()
    raise error(
        f"this config needs about {_gib(estimate.total)} on {device} (parameters and Adam {_gib(estimate.parameters)}, "
        f"activations {_gib(estimate.activations)}, rollout {_gib(estimate.rollout)}, env {_gib(estimate.env)}, "
        f"held-out evaluation {_gib(estimate.evaluation)}), but only {_gib(free)} is free "
        f"(a run may plan to use {USABLE_FRACTION:.0%} of it). Lower {_KEYS_BY_PART[part]}, the largest part."
    )


def check_threads(threads: int, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` unless ``0 <= threads <= os.cpu_count()`` (0: torch's default)."""
    cpus = os.cpu_count() or 1
    if threads > cpus:
        raise error(
            f"torch_threads = {threads} exceeds the {cpus} CPUs of this machine; use 0 (torch's default) or a "
            f"number from 1 to {cpus}."
        )
