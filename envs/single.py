"""One task at a time, with numpy observations, from any torch-native VectorEnv (for ``gymnasium.make``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import VectorEnv

from meta_rl.contract import task_length
from meta_rl.envs.checker import check_finite_actions

__all__ = [
    "SPLIT_STREAMS",
    "SingleTaskEnv",
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


def check_discrete_actions(
    env: Any, actions: torch.Tensor | np.ndarray, n: int, validate: bool = True
) -> torch.Tensor:
    """Check B ``Discrete(n)`` actions and return them as an int64 tensor on ``env.device``.

    Raises TypeError for a non-tensor or a non-integer dtype and ValueError for a wrong shape,
    a wrong device or (when ``validate``; one host read) a label outside ``0..n-1``.

    Args:
        env: the vector env (its ``num_envs``, ``device`` and class name are used).
        actions: (B,) integer labels, a torch tensor or a numpy array.
        n: the number of actions.
        validate: check the range (one ``.any()`` read per step, a host sync on CUDA).
    """
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
    if actions.shape != (env.num_envs,):
        raise ValueError(
            f"{name}: actions must have shape ({env.num_envs},), one action per task, got {tuple(actions.shape)}."
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
            f"{name}: actions {bad} are out of range; valid actions are 0..{n - 1}. Fix the policy's outputs."
        )
    return actions


class SingleTaskEnv(gym.Env[Any, Any]):
    """Runs ``vector_cls(num_envs=1, device="cpu", **kwargs)`` as a plain ``gymnasium.Env``.

    Observations are numpy arrays (a dict of them for ``Dict`` spaces, ``Discrete`` entries as
    ``np.int64``), actions are ints for ``Discrete`` and arrays for ``Box``, the info holds
    Python scalars. The task and its spaces are exactly the vector env's; stepping after the
    episode has ended raises until ``reset()``.

    Subclasses set :attr:`vector_cls`.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012
    vector_cls: Callable[..., VectorEnv]

    def __init__(self, **kwargs: Any) -> None:
        if "num_envs" in kwargs or "device" in kwargs:
            vector = getattr(self.vector_cls, "__name__", "the vector env")
            raise ValueError(
                f"{type(self).__name__} runs one task on the CPU; use {vector} (gymnasium.make_vec) "
                "for num_envs or device."
            )
        self._vec = self.vector_cls(num_envs=1, device="cpu", **kwargs)
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space
        self.episode_length = task_length(self._vec) or None
        self._needs_reset = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        check_seed(seed)  # before gymnasium's seeding, which raises gymnasium.error.Error instead
        seed = None if seed is None else int(seed)  # gymnasium takes a Python int only
        super().reset(seed=seed)
        obs, _ = self._vec.reset(seed=seed, options=options)
        self._needs_reset = False
        return self._to_numpy(obs), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise ValueError("the episode has ended (or never started); call reset() before step().")
        obs, reward, terminated, truncated, info = self._vec.step(self._to_tensor(action))
        done = bool(terminated[0]) or bool(truncated[0])
        if done:
            obs = info["final_obs"]
            self._needs_reset = True
        step_info = {
            k: v[0].item() for k, v in info.items()
            if isinstance(v, torch.Tensor) and not k.startswith("_") and v.ndim == 1
        }
        return self._to_numpy(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]), step_info

    def _to_tensor(self, action: Any) -> torch.Tensor:
        if isinstance(self.action_space, spaces.Discrete):
            if isinstance(action, np.ndarray) and action.shape == ():
                action = action.item()
            if not isinstance(action, (int, np.integer)) or isinstance(action, bool):
                raise TypeError(f"action must be an int label, got {type(action).__name__} {action!r}.")
            return torch.tensor([int(action)])
        arr = np.asarray(action)
        if not np.issubdtype(arr.dtype, np.number) or arr.shape != self.action_space.shape:
            raise TypeError(
                f"action must be a numeric array of shape {self.action_space.shape}, got {arr.dtype} {arr.shape}."
            )
        check_finite_actions(self, arr, self.action_space, batched=False)
        return torch.as_tensor(arr, dtype=torch.float32).unsqueeze(0)  # (1, *shape)

    def _to_numpy(self, obs: Any) -> Any:
        if isinstance(obs, dict):
            space = self.observation_space
            assert isinstance(space, spaces.Dict)
            return {
                k: np.int64(v[0]) if isinstance(space[k], spaces.Discrete) else v[0].numpy() for k, v in obs.items()
            }
        return obs[0].numpy()
