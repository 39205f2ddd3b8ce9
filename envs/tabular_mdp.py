"""Random tabular MDPs as meta-RL tasks (Duan et al. 2016, RL², Table 2)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from meta_rl.envs.mdp_baselines import MDP_BASELINES
from meta_rl.envs.single_task_env import SingleTaskEnv
from meta_rl.envs.task_vector_env import (
    HasClassicBaselines,
    TaskVectorEnv,
    check_discrete_actions,
    check_positive_int,
)

__all__ = ["TabularMDPEnv", "TabularMDPVectorEnv", "sample_dirichlet_flat"]


def sample_dirichlet_flat(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Rows drawn from the flat Dirichlet(1, ..., 1) over the last axis of ``shape``.

    Gamma(1) is the unit exponential, so normalising i.i.d. exponentials gives the Dirichlet;
    drawing them with ``Tensor.exponential_`` keeps every draw on ``generator``.
    """
    gamma = torch.empty(shape, device=device).exponential_(generator=generator)  # (..., S)
    return gamma / gamma.sum(-1, keepdim=True)


class TabularMDPVectorEnv(HasClassicBaselines, TaskVectorEnv):
    """B random tabular MDPs stepped together as tensors, each a trial of several inner episodes.

    ## Description
    Every task is an MDP with ``states`` states and ``actions`` actions (Duan et al. 2016, RL²,
    Table 2): mean rewards ``mu(s, a) ~ Normal(1, 1)`` and transition rows
    ``P(. | s, a) ~ Dirichlet(1, ..., 1)``, all i.i.d. A trial is ``episodes_per_trial`` inner
    episodes of ``horizon`` steps with the same MDP. Every inner episode starts in state 0
    (the paper leaves the initial state unspecified; a fixed start state makes what the agent
    learned in one episode directly usable in the next). The MDP is hidden from the agent
    (:meth:`mdp` exposes it for analysis and baselines).

    ## Action Space
    ``Discrete(actions)`` as an int64 tensor of shape (B,). Labels outside ``0..actions-1``
    raise ``ValueError`` when ``validate_actions`` is on (the CPU default; one host read per step).

    ## Observation Space
    ``Box(0, 1, (states + 1,), float32)``: the one-hot of the current state, then 1.0 at the
    first step of each inner episode (else 0.0).

    ## Rewards
    ``r ~ Normal(mu(s, a), 1)`` for the action taken in the current state (float32, (B,)).

    ## Episode End
    Terminates after ``episodes_per_trial * horizon`` steps; never truncates. All B trials end
    together and restart in the same step with new MDPs (``SAME_STEP`` autoreset, the terminal
    observation in ``info["final_obs"]``). Between inner episodes the state returns to 0 and the
    MDP stays.

    ## Info
    ``"inner_episode"``: int64 (B,), the index (0, 1, ...) of the inner episode the step belonged to.

    Every step draws B normals and B uniforms from the env's generator whatever the actions, so
    the same seed gives the same sequence of MDPs to every policy.

    Args:
        num_envs: B.
        states: states per MDP.
        actions: actions per state.
        horizon: steps per inner episode.
        episodes_per_trial: inner episodes per task.
        split: ``"train"``, ``"val"`` or ``"test"``: separate task streams for the same seed.
        device: where the tensors live.
        render_mode: must be None.
        validate_actions: check that actions are in range; default: on for the CPU, off elsewhere.
    """

    reference_baselines = MDP_BASELINES

    def __init__(
        self,
        num_envs: int = 1,
        states: int = 10,
        actions: int = 5,
        horizon: int = 10,
        episodes_per_trial: int = 10,
        split: str = "train",
        device: torch.device | str = "cpu",
        render_mode: str | None = None,
        validate_actions: bool | None = None,
    ) -> None:
        for name, value in (
            ("num_envs", num_envs), ("states", states), ("actions", actions), ("horizon", horizon),
            ("episodes_per_trial", episodes_per_trial),
        ):
            check_positive_int(name, value)
        self.states = int(states)
        self.actions = int(actions)
        self.horizon = int(horizon)
        self.episodes_per_trial = int(episodes_per_trial)
        self.episode_length = self.horizon * self.episodes_per_trial
        observation_space = spaces.Box(0.0, 1.0, (self.states + 1,), np.float32)
        self._init_task_env(num_envs, split, device, render_mode, observation_space, spaces.Discrete(self.actions))
        self.validate_actions = self.device.type == "cpu" if validate_actions is None else bool(validate_actions)
        self._rows = torch.arange(self.num_envs, device=self.device)
        self._eye = torch.eye(self.states, device=self.device)
        self._t = 0
        self._state = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._mu = torch.zeros(self.num_envs, self.states, self.actions, device=self.device)
        self._p = torch.zeros(self.num_envs, self.states, self.actions, self.states, device=self.device)
        self._new_tasks()

    def step(
        self, actions: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        actions = check_discrete_actions(self, actions, self.actions, self.validate_actions)
        noise = torch.randn(self.num_envs, generator=self._generator, device=self.device)  # (B,)
        u = torch.rand(self.num_envs, 1, generator=self._generator, device=self.device)  # (B, 1)
        reward = self._mu[self._rows, self._state, actions] + noise  # (B,)
        cdf = self._p[self._rows, self._state, actions].cumsum(-1)  # (B, S)
        # The first state whose cumulative probability exceeds u (scaled by the row sum against rounding).
        next_state = (cdf <= u * cdf[:, -1:]).sum(-1).clamp_(max=self.states - 1)  # (B,)
        info: dict[str, Any] = {"inner_episode": torch.full((self.num_envs,), self._t // self.horizon,
                                                            dtype=torch.long, device=self.device)}
        self._t += 1
        if self._t % self.horizon == 0:  # a host int: the inner episode ended, back to the start state
            next_state = torch.zeros_like(next_state)
        self._state = next_state
        done = self._t == self.episode_length
        obs, terminated, truncated = self._end_step(done, info)
        return obs, reward.float(), terminated, truncated, info

    def mdp(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current MDPs (for analysis and baselines; agents must not read them).

        Returns:
            The mean rewards (B, S, A) and the transition probabilities (B, S, A, S).
        """
        return self._mu.clone(), self._p.clone()

    def _new_tasks(self) -> None:
        shape = (self.num_envs, self.states, self.actions)
        self._mu = 1.0 + torch.randn(shape, generator=self._generator, device=self.device)  # (B, S, A)
        self._p = sample_dirichlet_flat((*shape, self.states), self._generator, self.device)  # (B, S, A, S)
        self._state = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._t = 0

    def _observe(self) -> torch.Tensor:
        first = 1.0 if self._t % self.horizon == 0 else 0.0
        flag = torch.full((self.num_envs, 1), first, device=self.device)  # (B, 1)
        return torch.cat([self._eye[self._state], flag], dim=-1)  # (B, S + 1)


class TabularMDPEnv(SingleTaskEnv):
    """One tabular-MDP trial at a time with numpy observations (see :class:`TabularMDPVectorEnv`)."""

    vector_cls = TabularMDPVectorEnv
