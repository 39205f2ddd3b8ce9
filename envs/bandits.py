"""Multi-armed Bernoulli bandits as meta-RL tasks (Duan et al. 2016, RL², Table 1; Wang et al. 2016)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from meta_rl.envs.bandit_baselines import BANDIT_BASELINES
from meta_rl.envs.single_task_env import SingleTaskEnv
from meta_rl.envs.task_vector_env import (
    HasClassicBaselines,
    TaskVectorEnv,
    check_discrete_actions,
    check_positive_int,
)

__all__ = [
    "BernoulliBanditEnv",
    "BernoulliBanditVectorEnv",
    "DependentBanditEnv",
    "DependentBanditVectorEnv",
]


class BernoulliBanditVectorEnv(HasClassicBaselines, TaskVectorEnv):
    """B multi-armed Bernoulli bandits stepped together as tensors, one trial of ``pulls`` pulls each.

    ## Description
    Every task is a bandit with ``arms`` arms whose success probabilities ``p_i`` are drawn
    i.i.d. from Uniform(0, 1) (Duan et al. 2016, RL², Table 1). A trial is ``pulls`` pulls of
    the same bandit; a meta-learner must balance trying arms against pulling the best one so
    far, and the Bayes-optimal policy under the uniform prior is the target. The probabilities
    are hidden from the agent (:meth:`probabilities` exposes them for analysis and baselines).

    ## Action Space
    ``Discrete(arms)``: the arm to pull, as an int64 tensor of shape (B,). Labels outside
    ``0..arms-1`` raise ``ValueError`` when ``validate_actions`` is on (the CPU default).

    ## Observation Space
    ``Box(0, 1, (1,), float32)``: the fraction of the trial elapsed, ``t / pulls``. Everything
    else the agent needs (its last action and reward) is what a recurrent meta-learner feeds
    back to itself, as in RL².

    ## Rewards
    1.0 with probability ``p[action]``, else 0.0 (float32, shape (B,)).

    ## Episode End
    Terminates after ``pulls`` steps; never truncates. All B trials end together and restart in
    the same step with new bandits (``SAME_STEP`` autoreset, the terminal observation in
    ``info["final_obs"]``).

    ## Info
    Empty, except ``"final_obs"`` / ``"_final_obs"`` at the end of a trial.

    Args:
        num_envs: B.
        arms: arms per bandit (k), at least 2.
        pulls: pulls per trial (n).
        split: ``"train"``, ``"val"`` or ``"test"``: separate task streams for the same seed.
        device: where the tensors live.
        render_mode: must be None.
        validate_actions: check that actions are in range (one host read per step); default:
            on for the CPU, off elsewhere.
    """

    reference_baselines = BANDIT_BASELINES

    def __init__(
        self,
        num_envs: int = 1,
        arms: int = 5,
        pulls: int = 100,
        split: str = "train",
        device: torch.device | str = "cpu",
        render_mode: str | None = None,
        validate_actions: bool | None = None,
    ) -> None:
        check_positive_int("num_envs", num_envs)
        check_positive_int("arms", arms, minimum=2)
        check_positive_int("pulls", pulls)
        self.arms = int(arms)
        self.pulls = int(pulls)
        self.episode_length = self.pulls
        self.episodes_per_trial = None
        self._init_task_env(
            num_envs, split, device, render_mode, spaces.Box(0.0, 1.0, (1,), np.float32), spaces.Discrete(self.arms)
        )
        self.validate_actions = self.device.type == "cpu" if validate_actions is None else bool(validate_actions)
        self._rows = torch.arange(self.num_envs, device=self.device)
        self._t = 0
        self._p = torch.zeros(self.num_envs, self.arms, device=self.device)
        self._new_tasks()

    def step(
        self, actions: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        actions = check_discrete_actions(self, actions, self.arms, self.validate_actions)
        u = torch.rand(self.num_envs, generator=self._generator, device=self.device)  # (B,)
        reward = (u < self._p[self._rows, actions]).float()  # (B,)
        info: dict[str, Any] = {}
        self._t += 1
        done = self._t == self.episode_length  # a host int: no device read
        obs, terminated, truncated = self._end_step(done, info)
        return obs, reward, terminated, truncated, info

    def probabilities(self) -> torch.Tensor:
        """(B, arms) the current success probabilities (for analysis and baselines; agents must not read them)."""
        return self._p.clone()

    def _draw_probabilities(self) -> torch.Tensor:
        return torch.rand(self.num_envs, self.arms, generator=self._generator, device=self.device)  # (B, arms)

    def _new_tasks(self) -> None:
        self._p = self._draw_probabilities()
        self._t = 0

    def _observe(self) -> torch.Tensor:
        return torch.full((self.num_envs, 1), self._t / self.pulls, device=self.device)  # (B, 1) float32


class DependentBanditVectorEnv(BernoulliBanditVectorEnv):
    """B two-armed *dependent* Bernoulli bandits: the arms pay with probabilities ``p`` and ``1 - p``.

    ## Description
    Wang et al. 2016 ("Learning to reinforcement learn"): per task ``p ~ Uniform(0, 1)``, arm 0
    pays 1 with probability ``p`` and arm 1 with probability ``1 - p``, so a pull of either arm
    tells about both. A trial is ``pulls`` pulls of one bandit. Everything else (spaces,
    rewards, episode end, info, seeding) is as in :class:`BernoulliBanditVectorEnv` with
    ``arms=2``.

    Args:
        num_envs: B.
        pulls: pulls per trial.
        **kwargs: ``split``, ``device``, ``render_mode`` and ``validate_actions``, as for
            :class:`BernoulliBanditVectorEnv`.
    """

    def __init__(self, num_envs: int = 1, pulls: int = 100, **kwargs: Any) -> None:
        super().__init__(num_envs, 2, pulls, **kwargs)

    def _draw_probabilities(self) -> torch.Tensor:
        p = torch.rand(self.num_envs, 1, generator=self._generator, device=self.device)  # (B, 1)
        return torch.cat([p, 1.0 - p], dim=-1)  # (B, 2)


class BernoulliBanditEnv(SingleTaskEnv):
    """One Bernoulli-bandit trial at a time with numpy observations (see :class:`BernoulliBanditVectorEnv`)."""

    vector_cls = BernoulliBanditVectorEnv


class DependentBanditEnv(SingleTaskEnv):
    """One dependent two-armed bandit trial at a time (see :class:`DependentBanditVectorEnv`)."""

    vector_cls = DependentBanditVectorEnv
