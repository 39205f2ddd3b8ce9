"""2-D point navigation to a goal hidden per task (Finn et al. 2017; Duan et al. 2016; Rakelly et al. 2019)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from meta_rl.envs.checker import check_finite_actions
from meta_rl.envs.single_task_env import SingleTaskEnv
from meta_rl.envs.task_vector_env import TaskVectorEnv

__all__ = ["PointNavEnv", "PointNavVectorEnv"]


class PointNavVectorEnv(TaskVectorEnv):
    """B point-navigation tasks stepped together as tensors, each a trial of several episodes.

    ## Description
    A point starts at the origin of the plane and must reach a goal it cannot see, drawn per
    task uniformly on a circle of radius ``goal_radius`` (the upper half-plane by default, as
    in PEARL). A *trial* is ``episodes_per_trial`` episodes of ``horizon`` steps with the same
    goal: the point returns to the origin between episodes but the task stays, so an agent
    that remembers where it found reward can head straight there in the next episode. For the
    gymnasium API one trial is one episode: the trainer keeps the agent's memory across the
    inner episodes and clears it only when a new task begins.

    ## Action Space
    ``Box(-1, 1, (2,), float32)``: the displacement of the point in units of ``max_step``,
    clipped to the bounds. NaN / inf actions raise ``ValueError`` (the env is left unchanged).

    ## Observation Space
    ``Box(-inf, inf, (4,), float32)``: the position (x, y), the fraction of the current episode
    elapsed, and 1.0 at the first step of each inner episode (else 0.0).

    ## Rewards
    Minus the distance to the goal after the move, every step (dense, as in MAML's point task).

    ## Episode End
    Terminates after ``episodes_per_trial * horizon`` steps; never truncates. All B trials end
    together and restart in the same step (``SAME_STEP`` autoreset, the terminal observation in
    ``info["final_obs"]``).

    ## Info
    ``"inner_episode"``: int64 (B,), the index (0, 1, ...) of the inner episode the step belonged to.

    Args:
        num_envs: B.
        episodes_per_trial: inner episodes per task.
        horizon: steps per inner episode.
        goal_radius: distance of the goals from the origin.
        half_circle: goals on the upper half circle (else the whole circle).
        max_step: largest move per axis per step.
        split: ``"train"``, ``"val"`` or ``"test"``: separate goal streams for the same seed,
            so held-out goals are never the training ones.
        device: where the tensors live.
    """


    def __init__(
        self,
        num_envs: int = 1,
        episodes_per_trial: int = 2,
        horizon: int = 20,
        goal_radius: float = 1.0,
        half_circle: bool = True,
        max_step: float = 0.1,
        split: str = "train",
        device: torch.device | str = "cpu",
        render_mode: str | None = None,
    ) -> None:
        for name, value in (("num_envs", num_envs), ("episodes_per_trial", episodes_per_trial), ("horizon", horizon)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        for name, length in (("goal_radius", goal_radius), ("max_step", max_step)):
            if not 0 < length < math.inf:
                raise ValueError(f"PointNav: {name} must be a finite number > 0, got {length!r}; pass a positive "
                                 f"env_kwargs.{name} such as the default {1.0 if name == 'goal_radius' else 0.1}.")
        self.episodes_per_trial = episodes_per_trial
        self.horizon = horizon
        self.episode_length = episodes_per_trial * horizon
        self.goal_radius = float(goal_radius)
        self.half_circle = half_circle
        self.max_step = float(max_step)
        observation_space = spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self._init_task_env(
            num_envs, split, device, render_mode, observation_space, spaces.Box(-1.0, 1.0, (2,), np.float32)
        )
        self._t = 0
        self._pos = torch.zeros(num_envs, 2, device=self.device)
        self._goal = torch.zeros(num_envs, 2, device=self.device)
        self._new_tasks()

    def step(
        self, actions: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        actions = self._check_actions(actions)
        inner = self._t // self.horizon
        self._pos = self._pos + actions.clamp(-1.0, 1.0) * self.max_step
        reward = -torch.linalg.vector_norm(self._pos - self._goal, dim=-1)  # (B,)
        info: dict[str, Any] = {"inner_episode": torch.full((self.num_envs,), inner, device=self.device)}
        self._t += 1
        if self._t % self.horizon == 0:  # a host int: the inner episode ended, back to the start
            self._pos = torch.zeros_like(self._pos)
        done = self._t == self.episode_length
        obs, terminated, truncated = self._end_step(done, info)
        return obs, reward, terminated, truncated, info

    def goals(self) -> torch.Tensor:
        """(B, 2) the current hidden goals (for analysis; agents must not read them)."""
        return self._goal.clone()

    def _new_tasks(self) -> None:
        span = math.pi if self.half_circle else 2 * math.pi
        angle = torch.rand(self.num_envs, generator=self._generator, device=self.device) * span  # (B,)
        self._goal = self.goal_radius * torch.stack([angle.cos(), angle.sin()], dim=-1)  # (B, 2)
        self._pos = torch.zeros(self.num_envs, 2, device=self.device)
        self._t = 0

    def _observe(self) -> torch.Tensor:
        phase = (self._t % self.horizon) / self.horizon
        first = 1.0 if self._t % self.horizon == 0 else 0.0
        extra = torch.tensor([phase, first], device=self.device).expand(self.num_envs, 2)  # (B, 2)
        return torch.cat([self._pos, extra], dim=-1).float()  # (B, 4)

    def _check_actions(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(actions, np.ndarray):
            actions = torch.as_tensor(actions, device=self.device)
        if not isinstance(actions, torch.Tensor):
            raise TypeError(
                f"actions must be a torch.Tensor of shape ({self.num_envs}, 2), got {type(actions).__name__}; "
                "wrap them with torch.as_tensor(actions, device=env.device)."
            )
        if not actions.dtype.is_floating_point:
            raise TypeError(f"actions must be floats, got {actions.dtype}; cast with actions.float().")
        if actions.shape != (self.num_envs, 2):
            raise ValueError(f"actions must have shape ({self.num_envs}, 2), got {tuple(actions.shape)}.")
        if actions.device != self.device:
            raise ValueError(f"actions are on {actions.device} but the env runs on {self.device}; use .to(env.device).")
        check_finite_actions(self, actions, self.single_action_space)  # one bool read; before any state changes
        return actions.float()


class PointNavEnv(SingleTaskEnv):
    """One point-navigation trial at a time with numpy observations (see :class:`PointNavVectorEnv`)."""

    vector_cls = PointNavVectorEnv
