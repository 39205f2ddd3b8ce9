"""What the torch-native task vector envs share: argument checks, split seeding, SAME_STEP autoreset, a base class.

:class:`TaskVectorEnv` is the base of the bandit, tabular-MDP, CartPole and point-navigation
envs: it sets up the device, the spaces and the env's own ``torch.Generator``, implements
``reset(seed=...)`` (the seed and the split pick the task stream) and ends a step of B tasks
that all finish together. :class:`HasClassicBaselines` adds ``reference_returns`` for an env
whose classic baselines are known. The functions below are the checks every env's constructor
and ``step`` make, also used by the envs that do not derive from :class:`TaskVectorEnv`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from meta_rl.env_contract import MetaVectorEnv

__all__ = [
    "SPLIT_STREAMS",
    "HasClassicBaselines",
    "TaskVectorEnv",
    "check_discrete_actions",
    "check_positive_int",
    "check_seed",
    "check_split",
    "env_device",
    "reseed",
    "same_step_autoreset",
    "seed_generator",
]


def same_step_autoreset(
    done: bool,
    num_envs: int,
    device: torch.device,
    observe: Callable[[], Any],
    new_tasks: Callable[[], None],
    info: dict[str, Any],
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """End a step of B tasks that all finish together (``done`` is a host bool: no device read).

    Returns the observation, ``terminated`` and ``truncated`` (never). When the tasks end, the
    terminal observation goes to ``info["final_obs"]`` and the next tasks start in the same
    step (gymnasium's SAME_STEP autoreset), so the returned observation is their first.
    """
    terminated = torch.full((num_envs,), done, dtype=torch.bool, device=device)
    obs = observe()
    if done:
        info["final_obs"] = obs
        info["_final_obs"] = terminated.clone()
        new_tasks()
        obs = observe()
    return obs, terminated, torch.zeros_like(terminated)


def env_device(device: torch.device | str, render_mode: str | None = None) -> torch.device:
    """The device a vector env runs on, with an index ("cuda" -> "cuda:N"), since tensors report
    an indexed device and action checks compare devices. Rejects any ``render_mode``.

    Raises:
        ValueError: not a device name, or a device this machine lacks; the message lists what it has.
    """
    if render_mode is not None:
        raise ValueError(f"render_mode {render_mode!r} is not supported; pass render_mode=None.")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    here = ", ".join(["cpu", *(f"cuda:{i}" for i in range(count))])
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a device name; this machine has {here}.") from exc
    if resolved.type == "cuda" and (count == 0 or (resolved.index or 0) >= count):
        why = "CUDA is not available here" if count == 0 else f"this machine has {count} CUDA device(s)"
        raise ValueError(f"device {device!r}: {why}; the devices here are {here}. Pass device='cpu' or one of those.")
    if resolved.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"device {device!r}: the envs run on the CPU or CUDA; the devices here are {here}.")
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def check_seed(seed: Any) -> None:
    """A seed is None or an int in [0, 2**64) (what torch.Generator.manual_seed takes); else ValueError."""
    if seed is None:
        return
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if seed >= 2**64:
        raise ValueError(f"seed must be below 2**64, got {seed!r}; reduce it, e.g. seed % 2**64.")


#: Task streams of the splits: reset seeds s give split k the stream 3 s + k.
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    """Raise ValueError unless ``value`` is an int (not a bool) of at least ``minimum``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}; pass e.g. {name}={max(minimum, 1)}.")


def check_split(split: Any) -> None:
    """Raise ValueError unless ``split`` names one of the task streams."""
    if split not in SPLIT_STREAMS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_STREAMS)}.")


def seed_generator(generator: torch.Generator, seed: Any, split: str) -> None:
    """Seed ``generator`` from a reset seed and the split (None: leave it as it is)."""
    if isinstance(seed, list):
        seed = seed[0] if seed else None
    check_seed(seed)
    if seed is not None:
        generator.manual_seed((int(seed) * 3 + SPLIT_STREAMS[split]) % 2**64)


def reseed(generator: torch.Generator, seed: Any, options: dict[str, Any] | None, split: str) -> None:
    """The start of a task env's ``reset()``: seed ``generator`` from ``seed`` and the split; refuse options."""
    seed_generator(generator, seed, split)
    if options:
        raise ValueError(f"reset() takes no options, got {sorted(options)}; configure the task in the constructor.")


def _as_action_tensor(env: Any, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Numpy integer actions as a tensor on ``env.device``; TypeError for anything but integer arrays and tensors."""
    name = type(env).__name__
    if isinstance(actions, np.ndarray):
        if not np.issubdtype(actions.dtype, np.integer):
            raise TypeError(
                f"{name}: actions must be integers, got numpy dtype {actions.dtype}; cast with .astype(np.int64)."
            )
        if not actions.dtype.isnative:  # torch reads native byte order only
            actions = actions.astype(actions.dtype.newbyteorder("="))
        actions = torch.as_tensor(actions, device=env.device)
    if not isinstance(actions, torch.Tensor):
        raise TypeError(
            f"{name}: actions must be a torch.Tensor (or numpy array) of shape ({env.num_envs},), got "
            f"{type(actions).__name__}; wrap them with torch.as_tensor(actions, device=env.device)."
        )
    if actions.dtype.is_floating_point or actions.dtype.is_complex or actions.dtype == torch.bool:
        raise TypeError(f"{name}: actions must have an integer dtype, got {actions.dtype}; cast with actions.long().")
    return actions


def check_discrete_actions(
    env: Any, actions: torch.Tensor | np.ndarray, n: int, validate: bool = True, noun: str = "action"
) -> torch.Tensor:
    """Check B ``Discrete(n)`` actions and return them as an int64 tensor on ``env.device``.

    Raises TypeError for a non-tensor or a non-integer dtype and ValueError for a wrong shape,
    a wrong device or (when ``validate``; one host read) a value outside ``0..n-1``.

    Args:
        env: the vector env (its ``num_envs``, ``device`` and class name are used).
        actions: (B,) integer labels, a torch tensor or a numpy array.
        n: the number of actions.
        validate: check the range (one ``.any()`` read per step, a host sync on CUDA).
        noun: what an action is to the task, in the messages (``"label"`` for a classification answer).
    """
    name = type(env).__name__
    actions = _as_action_tensor(env, actions)
    if actions.shape != (env.num_envs,):
        raise ValueError(
            f"{name}: actions must have shape ({env.num_envs},), one {noun} per task, got {tuple(actions.shape)}."
        )
    if actions.device != env.device:
        raise ValueError(
            f"{name}: actions are on {actions.device} but the env runs on {env.device}; "
            f"move them with actions.to('{env.device}')."
        )
    actions = actions.long()  # before comparing: uint16/32/64 tensors have no comparison kernels
    if validate and bool(((actions < 0) | (actions >= n)).any()):
        bad = actions[(actions < 0) | (actions >= n)][:5].tolist()
        raise ValueError(
            f"{name}: actions {bad} are out of range; valid {noun}s are 0..{n - 1}. Fix the policy's outputs."
        )
    return actions


class TaskVectorEnv(MetaVectorEnv, ABC):
    """B tasks drawn from the env's own ``torch.Generator``, stepped together, that restart in the same step.

    A subclass calls :meth:`_init_task_env` in its constructor (after checking its own
    arguments), draws tasks in ``_new_tasks()``, observes them in ``_observe()`` and ends each
    ``step`` with :meth:`_end_step` (or its own autoreset where trials end at different times).
    ``reset(seed=s)`` seeds the generator from ``s`` and the split (:func:`seed_generator`), so
    one seed gives every split its own task stream.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}  # noqa: RUF012

    split: str
    _generator: torch.Generator

    def _init_task_env(
        self,
        num_envs: int,
        split: str,
        device: torch.device | str,
        render_mode: str | None,
        single_observation_space: spaces.Space[Any],
        single_action_space: spaces.Space[Any],
    ) -> None:
        """Check the split and the device, set the spaces (single and batched) and an unseeded generator."""
        check_split(split)
        self.device = env_device(device, render_mode)
        self.num_envs = int(num_envs)
        self.split = split
        self.render_mode = None
        self.single_observation_space = single_observation_space
        self.single_action_space = single_action_space
        self.observation_space = batch_space(single_observation_space, self.num_envs)
        self.action_space = batch_space(single_action_space, self.num_envs)
        self._generator = torch.Generator(device=self.device)
        self._generator.seed()

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Draw B new tasks and start their trials; ``seed`` (with the split) seeds the env's own torch.Generator."""
        reseed(self._generator, seed, options, self.split)
        self._new_tasks()
        return self._observe(), {}

    def _end_step(self, done: bool, info: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The observation, ``terminated`` and ``truncated`` of a step after which all B tasks end if ``done``."""
        return same_step_autoreset(done, self.num_envs, self.device, self._observe, self._new_tasks, info)

    @abstractmethod
    def _new_tasks(self) -> None:
        """Draw B new tasks from ``self._generator`` and put them at the start of their trials."""

    @abstractmethod
    def _observe(self) -> torch.Tensor:
        """(B, ...) the current observation."""


class HasClassicBaselines:
    """Mixin of a task vector env that plays its classic baselines on its own tasks (``reference_returns``).

    A subclass sets :attr:`reference_baselines`, name -> ``play(env, seed, trials)`` returning
    float64 (trials,) per-trial returns.
    """

    reference_baselines: ClassVar[Mapping[str, Callable[..., torch.Tensor]]] = {}

    def reference_returns(self, trials: int, seed: int) -> dict[str, torch.Tensor]:
        """Every baseline of :attr:`reference_baselines` on these tasks: float64 (trials,) each.

        Round i of B trials starts from ``reset(seed=seed + i)``, as an agent's evaluation does.
        """
        return {name: play(self, seed, trials) for name, play in self.reference_baselines.items()}
