"""The recurrent meta-policy: RL² inputs, an encoder, a recurrent core and heads fitted to the action space."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from meta_rl import distributions as D
from meta_rl.cores import EpisodicMemoryCore, State, make_core
from meta_rl.encoders import make_encoder

__all__ = ["PREV_REWARD_KEY", "MetaPolicy", "RL2ObservationWrapper", "RL2State"]

Obs = dict[str, torch.Tensor]


PREV_REWARD_KEY = "prev_reward"
"""Observation entry added by :class:`RL2ObservationWrapper`; :meth:`MetaPolicy.predict` reads it."""


@dataclass
class RL2State:
    """The recurrent state :meth:`MetaPolicy.predict` returns and takes back (SB3's ``state``).

    RL² also feeds the previous action and reward, which SB3's ``evaluate_policy`` does not pass
    to ``predict``, so they travel in the state next to the core's own tensors.

    Attributes:
        core: the core's state for the B envs (tensors on the policy's device).
        prev_action: (B,) int64 or (B, A) float32, the last action of each env.
        prev_reward: (B,) float32, the last reward, where known (see :meth:`MetaPolicy.predict`).
        starts: (B,) bool, the next step is the first of a task (set before the first call).
    """

    core: State
    prev_action: np.ndarray
    prev_reward: np.ndarray
    starts: np.ndarray


class RL2ObservationWrapper(gym.ObservationWrapper[dict[str, Any], Any, dict[str, Any]]):
    """Adds the previous reward to a ``Dict`` observation as ``"prev_reward"`` (float32, shape (1,)).

    Wrap a single env with it before SB3's ``evaluate_policy`` (or any loop that only calls
    ``predict``) so that :meth:`MetaPolicy.predict` sees the previous reward, the one RL² input
    that SB3 never passes to ``predict``. The entry is 0 after ``reset``. The policy itself is
    built on (and trained with) the unwrapped observation space; ``predict`` drops the entry
    from the observation after reading it.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        if not isinstance(env.observation_space, spaces.Dict):
            raise TypeError(f"RL2ObservationWrapper needs a Dict observation space, got {env.observation_space}.")
        if PREV_REWARD_KEY in env.observation_space.spaces:
            raise ValueError(f"the observation already has a {PREV_REWARD_KEY!r} entry.")
        self.observation_space = spaces.Dict(
            {**env.observation_space.spaces,
             PREV_REWARD_KEY: spaces.Box(-np.inf, np.inf, (1,), np.float32)}
        )
        self._prev_reward = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        self._prev_reward = 0.0
        return super().reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._prev_reward = float(reward)
        return self.observation(obs), reward, terminated, truncated, info

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {**observation, PREV_REWARD_KEY: np.array([self._prev_reward], dtype=np.float32)}


def _is_image(space: spaces.Space[Any]) -> bool:
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


class MetaPolicy(nn.Module):
    """An RL² actor-critic for any ``gymnasium`` observation and action space.

    Inputs at step t: the observation (its ``"image"`` entry, or the whole observation, goes
    through the encoder; other ``Dict`` entries such as the revealed ``"label"`` join the
    context), the previous action (one-hot for ``Discrete``, raw for ``Box``), the previous
    reward and a task-start flag. The core's state is cleared only where a task starts.

    Heads: categorical logits for ``Discrete`` actions; for ``Box`` actions a state-dependent
    mean μ and a learned log σ of a Gaussian squashed into the bounds; a value head.

    Args:
        observation_space: the single-env observation space.
        action_space: the single-env action space (``Discrete`` or bounded ``Box``).
        encoder: ``"conv4"``, ``"seed_cnn"`` or ``"mlp"``.
        core: ``"memory"``, ``"gru"`` or ``"lstm"``.
        hidden: the core's hidden size.
        encoder_hidden: MLP encoder layer sizes.
        conv_filters: conv4 filters.
        conv_norm: conv4 normalisation: ``"batch"``, ``"group"`` or ``"none"``.
        key_dim: memory key size.
        memory_capacity: memory slots (at least the steps of a task).
        init_log_std: initial log σ of the Gaussian head.
        read_gain: with the memory core and a revealed ``"label"`` observation, the initial weight
            from the memory's read of label j to the logit of action j (0: plain random init).
        taken_gain: likewise, the initial negative weight from the tally of revealed label j
            (label j is taken in this task) to the logit of action j.
    """

    low: torch.Tensor
    high: torch.Tensor

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        *,
        encoder: str = "mlp",
        core: str = "memory",
        hidden: int = 128,
        encoder_hidden: Sequence[int] = (256, 256, 64),
        conv_filters: int = 64,
        conv_norm: str = "batch",
        key_dim: int = 64,
        memory_capacity: int = 64,
        init_log_std: float = -0.5,
        read_gain: float = 5.0,
        taken_gain: float = 2.0,
    ) -> None:
        super().__init__()
        if isinstance(observation_space, spaces.Dict):
            keys = sorted(observation_space.spaces)
            self.main_key: str | None = "image" if "image" in keys else None
            self.context_keys = [k for k in keys if k != self.main_key]
            main_space = observation_space.spaces["image"] if self.main_key else None
        else:
            self.main_key, self.context_keys, main_space = None, [], observation_space
        self._context_spaces = {k: observation_space[k] for k in self.context_keys}  # type: ignore[index]
        for k, s in self._context_spaces.items():
            if not isinstance(s, (spaces.Discrete, spaces.Box)):
                raise TypeError(f"observation entry {k!r} has space {s}; only Discrete and Box entries are supported.")
        self.image_input = main_space is not None and _is_image(main_space)
        if main_space is None:
            self.encoder: nn.Module | None = None
            embed_dim = 0
        elif isinstance(main_space, spaces.Discrete):
            self.encoder = make_encoder("mlp", (int(main_space.n),), hidden=encoder_hidden)
            embed_dim = int(self.encoder.out_dim)
        elif isinstance(main_space, spaces.Box):
            enc = make_encoder(
                encoder, main_space.shape, filters=conv_filters, hidden=encoder_hidden, norm=conv_norm
            )
            self.encoder = enc
            embed_dim = int(enc.out_dim)
        else:
            raise TypeError(f"observation space {main_space} is not supported; use Box, Discrete or a Dict of them.")
        self.main_space = main_space

        if isinstance(action_space, spaces.Discrete):
            self.discrete = True
            self.action_dim = int(action_space.n)
            self.register_buffer("low", torch.zeros(0), persistent=False)
            self.register_buffer("high", torch.zeros(0), persistent=False)
        elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
            if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
                raise ValueError(
                    f"Box action space {action_space} must be bounded: the Gaussian head squashes into "
                    "[low, high]; wrap the env with gymnasium.wrappers.RescaleAction."
                )
            self.discrete = False
            self.action_dim = int(action_space.shape[0])
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32), persistent=False)
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32), persistent=False)
        else:
            raise TypeError(f"action space {action_space} is not supported; use Discrete or a 1-D bounded Box.")
        self.action_space = action_space

        context_dim = self.action_dim + 2  # previous action, previous reward, task-start flag
        for s in self._context_spaces.values():
            context_dim += int(s.n) if isinstance(s, spaces.Discrete) else int(np.prod(s.shape))
        self.context_dim = context_dim
        self.embed_dim = embed_dim
        self.core = make_core(core, embed_dim, context_dim, hidden=hidden, key_dim=key_dim, capacity=memory_capacity)
        out = self.core.out_dim
        self.policy_head = nn.Linear(out, self.action_dim)
        self.value_head = nn.Linear(out, 1)
        self.log_std = nn.Parameter(torch.full((self.action_dim,), float(init_log_std))) if not self.discrete else None
        memory = isinstance(self.core, EpisodicMemoryCore)
        if (read_gain or taken_gain) and memory and self.discrete and "label" in self._context_spaces:
            self._init_label_vote(read_gain, taken_gain)

    def _init_label_vote(self, read_gain: float, taken_gain: float) -> None:
        """Priors for label feedback, set in the policy head's initial weights (all stay learnable).

        The memory core's output is [controller, read, total, best]; the read and the total
        (what the task has revealed so far) hold the context, whose first entries are the one-hot
        ``"label"`` (context keys are sorted, so extras before it shift it). The read of label j
        starts as a vote for action j: without it no gradient reaches the keys until the head has
        learned to use the read, and matching images is learned very slowly. The tally of label j
        starts as a vote against action j: a new image most likely has a label not yet taken.
        """
        assert isinstance(self.core, EpisodicMemoryCore)
        offset = self.core.hidden
        for k, s in self._context_spaces.items():
            if k == "label":
                break
            offset += int(s.n) if isinstance(s, spaces.Discrete) else int(np.prod(s.shape))
        n = min(self.action_dim, int(self._context_spaces["label"].n))
        total = offset + self.context_dim  # the total follows the read, which has context_dim entries
        with torch.no_grad():
            rows = torch.arange(n)
            self.policy_head.weight[rows, offset + rows] += read_gain
            self.policy_head.weight[rows, total + rows] -= taken_gain

    # -- inputs ----------------------------------------------------------------------------

    def main_obs(self, obs: Obs | torch.Tensor) -> torch.Tensor | None:
        """The part of an observation that goes through the encoder."""
        if self.main_key is not None:
            return obs[self.main_key]  # type: ignore[index]
        return None if isinstance(obs, dict) else obs

    def encode(self, x: torch.Tensor | None, lead: Sequence[int]) -> torch.Tensor:
        """Encode main observations with leading shape ``lead`` (e.g. (T, B)) into (*lead, E)."""
        if self.encoder is None or x is None:
            return torch.zeros(*lead, 0, device=self.value_head.weight.device)
        n = int(np.prod(lead))
        flat = x.reshape(n, *x.shape[len(lead) :])  # (N, *obs_shape)
        if isinstance(self.main_space, spaces.Discrete):
            flat = F.one_hot(flat.long(), int(self.main_space.n)).float()  # (N, n)
        elif self.image_input:
            flat = flat.float() / 255.0  # (N, C, H, W)
        else:
            flat = flat.float()
        return self.encoder(flat).reshape(*lead, -1)  # (*lead, E)

    def context(
        self, obs: Obs | torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor, starts: torch.Tensor
    ) -> torch.Tensor:
        """The RL² context (*lead, U): observation extras, previous action and reward, start flag.

        The previous action and reward are zeroed where a task starts.
        """
        keep = (~starts).float().unsqueeze(-1)  # (*lead, 1)
        parts = []
        for k, s in self._context_spaces.items():
            v = obs[k]  # type: ignore[index]
            if isinstance(s, spaces.Discrete):
                parts.append(F.one_hot(v.long(), int(s.n)).float())  # (*lead, n)
            else:
                parts.append(v.float().reshape(*starts.shape, -1))  # (*lead, d)
        if self.discrete:
            a = F.one_hot(prev_action.long().clamp(0, self.action_dim - 1), self.action_dim).float()  # (*lead, A)
        else:
            a = prev_action.float().reshape(*starts.shape, self.action_dim)  # (*lead, A)
        parts += [a * keep, prev_reward.float().unsqueeze(-1) * keep, starts.float().unsqueeze(-1)]
        return torch.cat(parts, dim=-1)  # (*lead, U)

    # -- core and heads --------------------------------------------------------------------

    def initial_state(self, batch: int, device: torch.device | str) -> State:
        return self.core.initial_state(batch, torch.device(device))

    def forward(
        self, embed: torch.Tensor, context: torch.Tensor, starts: torch.Tensor, state: State, need_state: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """(T, B, E), (T, B, U), (T, B) -> distribution parameters (T, B, A), values (T, B), state."""
        feats, state = self.core(embed, context, starts, state, need_state=need_state)  # (T, B, F)
        return self.policy_head(feats), self.value_head(feats).squeeze(-1), state

    # -- distribution ----------------------------------------------------------------------

    def sample(
        self, params: torch.Tensor, generator: torch.Generator | None, deterministic: bool = False
    ) -> torch.Tensor:
        if self.discrete:
            return D.categorical_mode(params) if deterministic else D.categorical_sample(params, generator)
        if deterministic:
            return D.squashed_gaussian_mode(params, self.low, self.high)
        assert self.log_std is not None
        return D.squashed_gaussian_sample(params, self.log_std, self.low, self.high, generator)

    def log_prob(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return D.categorical_log_prob(params, actions)
        assert self.log_std is not None
        return D.squashed_gaussian_log_prob(params, self.log_std, self.low, self.high, actions)

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return D.categorical_entropy(params)
        assert self.log_std is not None
        return D.gaussian_entropy(self.log_std, params.shape[:-1])

    # -- stable-baselines3 interface -------------------------------------------------------

    def _is_single(self, observation: Any) -> bool:
        """Whether ``observation`` is one observation (no batch dimension)."""
        if isinstance(observation, dict):
            if self.main_key is not None:
                value, space = observation[self.main_key], self.main_space
            elif self.context_keys:
                value, space = observation[self.context_keys[0]], self._context_spaces[self.context_keys[0]]
            else:
                return True
        else:
            value, space = observation, self.main_space
        assert space is not None
        return bool(np.ndim(value) == len(space.shape or ()))

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: RL2State | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, RL2State]:
        """Actions for numpy observations, with stable-baselines3's ``predict`` signature.

        ``stable_baselines3.common.evaluation.evaluate_policy(policy, env)`` works on a
        MetaPolicy: it passes back the returned ``state`` and sets ``episode_start`` where a
        new episode (task) began.

        Args:
            observation: one observation or a batch of B (for a ``Dict`` space, a dict of
                arrays). An extra ``"prev_reward"`` entry (see :class:`RL2ObservationWrapper`)
                gives the previous reward.
            state: what the previous call returned, or None to start fresh tasks.
            episode_start: (B,) bool, True where the env has just been reset: the core's memory
                and the previous action and reward are cleared there. None: no resets.
            deterministic: take the most likely action instead of sampling.

        Returns:
            actions ((B,) or (B, A); without the batch dimension for a single observation) and
            the new :class:`RL2State`.

        Note:
            SB3's loops do not pass rewards to ``predict``. The previous action is kept in the
            state; the previous reward is read from the observation's ``"prev_reward"`` entry
            when present (wrap the env with :class:`RL2ObservationWrapper`), and is fed as 0
            otherwise. With label feedback the revealed ``"label"`` carries the same
            information, so accuracy hardly suffers; with reward-only feedback use the wrapper.
        """
        single = self._is_single(observation)
        obs: dict[str, Any] | Any
        prev_reward_obs = None
        if isinstance(observation, dict):
            obs = dict(observation)
            prev_reward_obs = obs.pop(PREV_REWARD_KEY, None)
        else:
            obs = observation
        device = self.value_head.weight.device

        def batched(x: Any) -> torch.Tensor:
            t = torch.as_tensor(np.asarray(x), device=device)
            return t.unsqueeze(0) if single else t

        if isinstance(obs, dict):
            obs_t: Any = {k: batched(v) for k, v in obs.items()}
        else:
            obs_t = batched(obs)
        main = self.main_obs(obs_t)
        if main is not None:
            b = int(main.shape[0])
        else:
            b = int(next(iter(obs_t.values())).shape[0]) if isinstance(obs_t, dict) else 1
        if state is None:
            shape = () if self.discrete else (self.action_dim,)
            state = RL2State(
                self.initial_state(b, device),
                np.zeros((b, *shape), dtype=np.int64 if self.discrete else np.float32),
                np.zeros(b, dtype=np.float32),
                np.ones(b, dtype=bool),
            )
        starts = state.starts.copy()
        if episode_start is not None:
            starts |= np.asarray(episode_start, dtype=bool).reshape(b)
        prev_reward = state.prev_reward
        if prev_reward_obs is not None:
            prev_reward = np.asarray(prev_reward_obs, dtype=np.float32).reshape(b)

        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                starts_t = torch.as_tensor(starts, device=device)[None]  # (1, B)
                extras = {k: obs_t[k][None] for k in self.context_keys}
                embed = self.encode(None if main is None else main[None], (1, b))  # (1, B, E)
                context = self.context(
                    extras,
                    torch.as_tensor(state.prev_action, device=device)[None],
                    torch.as_tensor(prev_reward, device=device)[None],
                    starts_t,
                )
                params, _, core = self(embed, context, starts_t, state.core)
                action_t = self.sample(params[0], None, deterministic)
        finally:
            self.train(was_training)
        actions = action_t.cpu().numpy()
        new_state = RL2State(core, actions.copy(), np.zeros(b, dtype=np.float32), np.zeros(b, dtype=bool))
        return (actions[0] if single else actions), new_state
