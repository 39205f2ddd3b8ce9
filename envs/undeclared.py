"""Any task env as a user's plug-in sees it: its spaces and trial structure, and nothing else it declares.

A user's ``gymnasium.Env`` declares nothing about what kind of task it is. The suite's envs do
(:mod:`meta_rl.env_contract`: ``request_action``, the images a task will show, the classic
baselines). :class:`UndeclaredVectorEnv` passes through the spaces, the device, the steps of a
task and its inner episodes, and steps and resets the wrapped env unchanged, so a learner trained on it is
told only what :func:`~meta_rl.envs.gym_tasks.register_gym_task` would tell it. ``python experiments/suite.py
--undeclared`` trains every task through it (issue 32: the suite told nothing).
"""

from __future__ import annotations

import inspect
from typing import Any

import gymnasium as gym
import torch
from gymnasium.vector import VectorEnv

__all__ = ["UndeclaredVectorEnv", "register_undeclared"]

#: What an undeclared env still says: the trial structure every plug-in has (``register_gym_task`` sets both).
PASSED_THROUGH = ("episode_length", "episodes_per_trial")


class UndeclaredVectorEnv(VectorEnv):
    """``env`` with its spaces, device and trial structure, and none of its other declarations.

    Args:
        env: a torch-native vector env of tasks (a :class:`~meta_rl.env_contract.MetaVectorEnv` or a plug-in).
    """

    def __init__(self, env: VectorEnv) -> None:
        self.env = env
        self.num_envs = env.num_envs
        self.single_observation_space, self.single_action_space = env.single_observation_space, env.single_action_space
        self.observation_space, self.action_space = env.observation_space, env.action_space
        self.metadata = dict(env.metadata)
        self.render_mode = None
        self.device: torch.device = getattr(env, "device", torch.device("cpu"))
        for name in PASSED_THROUGH:
            setattr(self, name, getattr(env, name, None))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        return self.env.reset(seed=seed, options=options)

    def step(self, actions: Any) -> Any:
        return self.env.step(actions)

    def close_extras(self, **kwargs: Any) -> None:
        self.env.close()


def register_undeclared(env_id: str) -> str:
    """Register ``env_id`` wrapped in :class:`UndeclaredVectorEnv` as ``meta_rl/Undeclared-NAME`` (once); its id.

    The new id takes the original's keyword arguments (``split`` and ``device`` where the original takes them).
    """
    name = f"meta_rl/Undeclared-{env_id.split('/')[-1]}"
    if name in gym.registry:
        return name
    spec = gym.spec(env_id)
    entry = spec.vector_entry_point
    creator: Any = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    takes = inspect.signature(creator).parameters

    def make(num_envs: int = 1, split: str = "train", device: torch.device | str = "cpu", **kwargs: Any) -> VectorEnv:
        named: dict[str, Any] = {k: v for k, v in (("split", split), ("device", device)) if k in takes}
        return UndeclaredVectorEnv(gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                                               **named, **kwargs))

    gym.register(name, vector_entry_point=make)
    return name
