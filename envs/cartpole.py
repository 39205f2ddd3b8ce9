"""CartPole with its physics and actuator sign drawn per task (Barto et al. 1983; gymnasium's ``CartPole-v1``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from meta_rl.envs.cartpole_baselines import CONTROL_BASELINES
from meta_rl.envs.cartpole_physics import euler_step
from meta_rl.envs.single_task_env import SingleTaskEnv
from meta_rl.envs.task_vector_env import (
    HasClassicBaselines,
    TaskVectorEnv,
    check_discrete_actions,
    check_positive_int,
)

__all__ = ["TASK_RANGES", "CartPoleTaskEnv", "CartPoleTaskVectorEnv"]

X_THRESHOLD = 2.4
THETA_THRESHOLD = 12 * 2 * math.pi / 360  # 12 degrees, in radians
RESET_BOUND = 0.05  # the cart state starts uniform in [-0.05, 0.05]^4

# name -> (low, high) of the uniform draw per task; "sign" (the actuator sign) is +-1 separately.
TASK_RANGES: dict[str, tuple[float, float]] = {
    "length": (0.25, 1.0),  # half the pole's length, as gymnasium's ``length``
    "masspole": (0.05, 0.5),
    "masscart": (0.5, 2.0),
    "force_mag": (5.0, 15.0),
}


class CartPoleTaskVectorEnv(HasClassicBaselines, TaskVectorEnv):
    """B CartPole tasks with different physics stepped together as tensors, each a trial of several episodes.

    ## Description
    The classic cart-pole (Barto, Sutton & Anderson 1983), with gymnasium's ``CartPole-v1``
    dynamics: explicit Euler steps of ``tau = 0.02`` s, gravity 9.8. Every task draws its own
    physics from the env's generator: the pole's half-length ``length ~ U(0.25, 1.0)``,
    ``masspole ~ U(0.05, 0.5)``, ``masscart ~ U(0.5, 2.0)``, ``force_mag ~ U(5, 15)`` and an
    actuator sign of +1 or -1 with probability 1/2 each (always +1 with ``flip_actions=False``).
    The sign is what makes the task need adaptation: the same action pushes the cart left in one
    task and right in another, so an agent must find out from the first steps which way its
    pushes go. A *trial* is ``episodes_per_trial`` inner episodes with the same task; the cart is
    reset between them but the task stays, so an agent that remembers the sign can balance from
    the first step of the next episode. For the gymnasium API one trial is one episode: the
    trainer keeps the agent's memory across the inner episodes and clears it when a new task begins.

    ## Action Space
    ``Discrete(2)``: 0 pushes the cart with force ``-sign * force_mag``, 1 with ``+sign * force_mag``.
    Actions are an integer tensor of shape (B,) on ``device`` (numpy arrays are accepted and
    copied); a wrong type, shape or device raises, and so do labels outside ``{0, 1}`` when
    ``validate_actions`` is on (the CPU default; it costs one host read per step).

    ## Observation Space
    ``Box(-inf, inf, (5,), float32)``: the cart position ``x``, its velocity, the pole angle
    ``theta`` (radians, 0 upright), its angular velocity, and 1.0 at the first step of each
    inner episode (else 0.0). The physics and the sign are hidden (:meth:`tasks` exposes them
    for oracles and analysis).

    ## Rewards
    1.0 for every step, including the step on which the pole falls (gymnasium's convention), so
    an inner episode returns its length (at most ``max_episode_steps``).

    ## Episode End
    An inner episode ends when the pole falls (``|x| > 2.4`` or ``|theta| > 12`` degrees) or after
    ``max_episode_steps`` steps; this is *not* reported as done (``info["episode_end"]`` marks
    it) and the cart state is redrawn uniformly in ``[-0.05, 0.05]^4`` with the same task. The
    step that ends the last inner episode reports ``terminated=True`` for that env only, and that
    env starts a new trial with a new task in the same step (``SAME_STEP`` autoreset). Trials end
    at different times in different envs; ``episode_length = episodes_per_trial *
    max_episode_steps`` is the longest a trial can last (the trainer's rollout length). Never
    truncates.

    ## Info
    ``"inner_episode"``: int64 (B,), the index (0, 1, ...) of the inner episode the step belonged
    to; ``"episode_end"``: bool (B,), the step ended an inner episode; ``"final_obs"``: (B, 5),
    the step's observation before any reset, the terminal observation of the trial where
    ``"_final_obs"`` (bool (B,), equal to ``terminated``) is True. Both are in every step's info,
    so that no step reads a device value to decide.

    Args:
        num_envs: B.
        episodes_per_trial: inner episodes per task.
        max_episode_steps: the longest inner episode.
        flip_actions: draw the actuator sign +-1 per task (else always +1).
        split: ``"train"``, ``"val"`` or ``"test"``: separate task streams for the same seed,
            so held-out tasks are never the training ones.
        device: where the tensors live.
        render_mode: must be None.
        validate_actions: check that actions are 0 or 1 (one host read per step); default: on
            for the CPU, off elsewhere.
    """

    reference_baselines = CONTROL_BASELINES

    def __init__(
        self,
        num_envs: int = 1,
        episodes_per_trial: int = 2,
        max_episode_steps: int = 100,
        flip_actions: bool = True,
        split: str = "train",
        device: torch.device | str = "cpu",
        render_mode: str | None = None,
        validate_actions: bool | None = None,
    ) -> None:
        check_positive_int("num_envs", num_envs)
        check_positive_int("episodes_per_trial", episodes_per_trial)
        check_positive_int("max_episode_steps", max_episode_steps)
        if not isinstance(flip_actions, (bool, np.bool_)):
            raise TypeError(f"flip_actions must be a bool, got {flip_actions!r}; pass flip_actions=True or False.")
        self.episodes_per_trial = int(episodes_per_trial)
        self.max_episode_steps = int(max_episode_steps)
        self.episode_length = self.episodes_per_trial * self.max_episode_steps
        self._last_inner = self.episodes_per_trial - 1
        self.flip_actions = bool(flip_actions)
        observation_space = spaces.Box(-np.inf, np.inf, (5,), np.float32)
        self._init_task_env(num_envs, split, device, render_mode, observation_space, spaces.Discrete(2))
        self.validate_actions = self.device.type == "cpu" if validate_actions is None else bool(validate_actions)
        b = self.num_envs
        self._low = torch.tensor([lo for lo, _ in TASK_RANGES.values()], device=self.device)  # (4,)
        self._span = torch.tensor([hi - lo for lo, hi in TASK_RANGES.values()], device=self.device)  # (4,)
        self._state = torch.zeros(b, 4, device=self.device)  # (B, 4): x, x_dot, theta, theta_dot
        self._task: dict[str, torch.Tensor] = {}
        self._steps = torch.zeros(b, dtype=torch.int64, device=self.device)  # steps into the inner episode
        self._inner = torch.zeros(b, dtype=torch.int64, device=self.device)  # the inner episode's index
        self._new_tasks()

    def step(
        self, actions: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        actions = check_discrete_actions(self, actions, 2, self.validate_actions)
        task = self._task
        force = torch.where(actions == 1, 1.0, -1.0) * task["sign"] * task["force_mag"]  # (B,)
        self._state = euler_step(self._state, force, task)
        x, theta = self._state[:, 0], self._state[:, 2]
        fell = (x.abs() > X_THRESHOLD) | (theta.abs() > THETA_THRESHOLD)  # (B,)
        self._steps = self._steps + 1
        episode_end = fell | (self._steps >= self.max_episode_steps)  # (B,)
        terminated = episode_end & (self._inner == self._last_inner)  # (B,) the trial ended
        info: dict[str, Any] = {"inner_episode": self._inner.clone(), "episode_end": episode_end}
        info["final_obs"] = self._observe()
        info["_final_obs"] = terminated.clone()
        # Every step draws the same random numbers whatever happened, and uses them where needed.
        tasks = self._draw_tasks()
        start = self._draw_start()  # (B, 4)
        self._task = {k: torch.where(terminated, tasks[k], v) for k, v in task.items()}
        self._state = torch.where(episode_end.unsqueeze(-1), start, self._state)
        self._steps = self._steps.masked_fill(episode_end, 0)
        self._inner = torch.where(terminated, 0, self._inner + episode_end.long())
        reward = torch.ones(self.num_envs, device=self.device)
        return self._observe(), reward, terminated, torch.zeros_like(terminated), info

    def reference_returns(self, trials: int, seed: int) -> dict[str, torch.Tensor]:
        """The CartPole baselines of :mod:`meta_rl.envs.cartpole_baselines` on these tasks: float64 (trials,) each.

        The return per trial (the sum over its inner episodes; the baselines give them one by one).
        Round i of B trials starts from ``reset(seed=seed + i)``, as an agent's evaluation does.
        """
        return {name: returns.sum(-1) for name, returns in super().reference_returns(trials, seed).items()}

    def tasks(self) -> dict[str, torch.Tensor]:
        """The current physics, (B,) float32 tensors ``length``, ``masspole``, ``masscart``, ``force_mag`` and
        ``sign`` (+-1.0): for oracles and analysis; agents must not read them."""
        return {k: v.clone() for k, v in self._task.items()}

    def _draw_tasks(self) -> dict[str, torch.Tensor]:
        u = torch.rand(self.num_envs, 5, generator=self._generator, device=self.device)  # (B, 5)
        physics = self._low + self._span * u[:, :4]  # (B, 4)
        tasks = {name: physics[:, i].contiguous() for i, name in enumerate(TASK_RANGES)}
        flip = (u[:, 4] < 0.5) if self.flip_actions else torch.zeros_like(u[:, 4], dtype=torch.bool)
        tasks["sign"] = torch.where(flip, -1.0, 1.0)
        return tasks

    def _draw_start(self) -> torch.Tensor:
        u = torch.rand(self.num_envs, 4, generator=self._generator, device=self.device)
        return (2.0 * u - 1.0) * RESET_BOUND  # (B, 4) uniform in [-0.05, 0.05]

    def _new_tasks(self) -> None:
        self._task = self._draw_tasks()
        self._state = self._draw_start()
        self._steps = torch.zeros_like(self._steps)
        self._inner = torch.zeros_like(self._inner)

    def _observe(self) -> torch.Tensor:
        first = (self._steps == 0).float().unsqueeze(-1)  # (B, 1)
        return torch.cat([self._state, first], dim=-1)  # (B, 5) float32


class CartPoleTaskEnv(SingleTaskEnv):
    """One CartPole trial at a time with numpy observations (see :class:`CartPoleTaskVectorEnv`)."""

    vector_cls = CartPoleTaskVectorEnv
