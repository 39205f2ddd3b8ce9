"""The single-task ``gymnasium.Env`` (one task at a time, numpy observations) built from any torch-native VectorEnv.

``gymnasium.make(id)`` gives one of these for every id of :mod:`meta_rl.envs`: it runs the vector
env with ``num_envs=1`` on the CPU and converts its tensors to numpy arrays and Python scalars.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import VectorEnv

from meta_rl.env_contract import task_length
from meta_rl.envs.checker import check_finite_actions
from meta_rl.envs.task_vector_env import check_seed

__all__ = ["SingleTaskEnv"]


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
