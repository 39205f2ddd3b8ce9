"""The recurrent meta-policy: RL² inputs, an encoder, a recurrent core and heads fitted to the action space."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from meta_rl import distributions as D
from meta_rl import sb3_adapter
from meta_rl.cores import CRITICS, EpisodicMemoryCore, State, make_core
from meta_rl.encoders import PRECISIONS, make_encoder, native_bfloat16
from meta_rl.returns import popart_preserve, popart_stats, popart_std
from meta_rl.sb3_adapter import PREV_REWARD_KEY, RL2ObservationWrapper, RL2State

__all__ = [
    "PREV_REWARD_KEY", "IndexHead", "MetaPolicy", "RL2ObservationWrapper", "RL2State", "action_counts",
    "action_value_read",
]  # PREV_REWARD_KEY and the RL2 names are sb3_adapter's

Obs = dict[str, torch.Tensor]


def _is_image(space: spaces.Space[Any]) -> bool:
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


VALUE_READ_EPS = 1e-3
"""Read weight below which an action counts as not taken among the similar stored steps."""


def action_value_read(taken: torch.Tensor, credit: torch.Tensor, eps: float = VALUE_READ_EPS) -> torch.Tensor:
    """Each action's mean reward over the stored steps a memory read weighs, and whether it was taken there.

    A softmax read returns weighted fractions: ``taken[j]`` = Σ_s w_s [a_s = j] and ``credit[j]`` =
    Σ_s w_s [a_s = j] r_s. Their ratio is action j's mean reward among the similar steps, the
    estimate a greedy or episodic-control agent acts on, which a linear head cannot form from
    the fractions. Both outputs are detached: they are statistics of the read, and the ratio's
    gradient is unbounded where ``taken`` is small.

    Args:
        taken: (..., A) read of the one-hot actions.
        credit: (..., A) read of one-hot(a) · r.
        eps: read weight under which an action counts as untaken (mean 0, tried 0).

    Returns:
        (..., 2A): the mean rewards, then ``taken / (taken + eps)`` (1 where taken, 0 where not).
    """
    taken, credit = taken.detach().clamp(min=0.0), credit.detach()
    denom = taken + eps  # (..., A)
    return torch.cat([credit / denom, taken / denom], dim=-1)  # (..., 2A)


def action_counts(taken: torch.Tensor, log_mass: torch.Tensor) -> torch.Tensor:
    """How often each action was taken among the similar stored steps, on a log scale: log(1 + n_j).

    A softmax read gives only fractions, ``taken[j]`` = Σ_s w_s [a_s = j]; the memory's ``mass``
    (:class:`~meta_rl.cores.EpisodicMemoryCore`) is the log of the read's normaliser over e^β, so
    ``taken[j] · exp(mass)`` = Σ_s e^{β (sim_s − 1)} [a_s = j]: each stored step counts by its
    similarity, an exact match as 1. Where every step matches (a bandit) n_j is the number of pulls of
    arm j, which an exploring policy weighs against the arm's mean reward. Detached, as the value read.

    Args:
        taken: (..., A) read of the one-hot actions.
        log_mass: (..., 1) the memory's ``mass`` output.

    Returns:
        (..., A) log(1 + n_j).
    """
    return torch.log1p(taken.detach().clamp(min=0.0) * log_mass.detach().exp())  # (..., A)


class IndexHead(nn.Module):
    """A per-action term of the logits, the same small network for every action (an index policy).

    Action j's term is a function of its own statistics (mean reward, tried, log count: from
    :func:`action_value_read` and :func:`action_counts`) and a projection of the core's controller
    state, so what the head learns for one action holds for all: a rule such as "mean reward plus a
    bonus that shrinks with the count", which Gittins and UCB indices have, and which the plain
    linear head would have to learn once per action. Its last layer starts at zero, so the policy
    starts as it would without it.
    """

    STATS = 3
    """Statistics per action: mean reward, tried, log count."""

    def __init__(self, controller_dim: int, count_scale: float = 1.0, proj: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.count_scale = float(count_scale)
        self.proj = nn.Linear(controller_dim, proj)
        # No bias at the end: a constant added to every action's logit changes nothing (and gets no gradient).
        first, last = nn.Linear(self.STATS + proj, hidden), nn.Linear(hidden, 1, bias=False)
        nn.init.zeros_(last.weight)
        self.mlp = nn.Sequential(first, nn.Tanh(), last)

    def forward(self, stats: torch.Tensor, controller: torch.Tensor) -> torch.Tensor:
        """(T, B, A, 3) per-action statistics, (T, B, H) controller features -> (T, B, A) logit terms.

        The log counts are divided by ``count_scale`` (log(1 + the memory's capacity)), so they lie in [0, 1], as
        the tried flags do (and a bandit's mean rewards).
        """
        stats = torch.cat([stats[..., :2], stats[..., 2:] / self.count_scale], dim=-1)  # (T, B, A, 3)
        ctx = self.proj(controller)  # (T, B, P)
        ctx = ctx.unsqueeze(-2).expand(*stats.shape[:-1], ctx.shape[-1])  # (T, B, A, P)
        return self.mlp(torch.cat([stats, ctx], dim=-1)).squeeze(-1)  # (T, B, A)


class MetaPolicy(nn.Module):
    """An RL² actor-critic for any ``gymnasium`` observation and action space.

    Inputs at step t: the observation (its ``"image"`` entry, or the whole observation, goes
    through the encoder; other ``Dict`` entries such as the revealed ``"label"`` join the
    context), the previous action (one-hot for ``Discrete``, raw for ``Box``), the previous
    reward and a task-start flag. The core's state is cleared only where a task starts.

    Heads: categorical logits for ``Discrete`` actions; for ``Box`` actions a state-dependent
    mean μ (kept within ±3 before the squash: :func:`~meta_rl.distributions.bounded_mean`) and a learned
    log σ of a Gaussian squashed into the bounds; a value head.

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
            from the memory's read of label j to the logit of action j (0: plain random init);
            with discrete actions and no label, from the read of the reward action j earned.
        taken_gain: likewise, the initial negative weight from the tally of revealed label j
            (label j is taken in this task) to the logit of action j; without a label, from the
            read of action j taken and left unrewarded.
        value_read: with the memory core and discrete actions, append to the heads' features each
            action's mean reward over the similar stored steps and whether it was taken there
            (see :func:`action_value_read`).
        value_read_gain: with ``value_read``, the initial weight from action j's mean reward to
            its logit, and half of it against "j was tried" (0: the heads learn the value read's
            use from a plain init).
        encoder_precision: the arithmetic of the encoder: ``"float32"`` (the default here),
            ``"bfloat16"`` (autocast, whatever the input; parameters, gradients and the features it
            returns stay float32) or ``"auto"`` (bfloat16 for image inputs where
            :func:`native_bfloat16`, else float32; :class:`~meta_rl.config.TrainConfig`'s default).
        index_head: with the memory core and discrete actions, add to each action's logit an
            :class:`IndexHead` term computed from that action's value read and count among the similar
            stored steps (implies ``value_read``'s features).
        critic: the value head's trunk: ``"shared"`` (the policy's core features), ``"detached"`` (the
            same features with no value gradient into the core or encoder) or ``"separate"`` (its own
            core of the same kind over the detached encoding; its state follows the policy core's).
    """

    low: torch.Tensor
    high: torch.Tensor
    return_stats: torch.Tensor

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
        value_read: bool = False,
        value_read_gain: float = 5.0,
        encoder_precision: str = "float32",
        critic: str = "shared",
        index_head: bool = False,
    ) -> None:
        super().__init__()
        if critic not in CRITICS:
            raise ValueError(f"critic must be one of {CRITICS}, got {critic!r}; 'shared' is the default.")
        if encoder_precision not in PRECISIONS:
            raise ValueError(f"encoder_precision must be one of {PRECISIONS}, got {encoder_precision!r}; use 'auto' to "
                             "let the hardware decide or 'float32' for exact arithmetic.")
        if isinstance(observation_space, spaces.Dict):
            keys = sorted(observation_space.spaces)
            self.main_key: str | None = "image" if "image" in keys else None
            self.context_keys = [k for k in keys if k != self.main_key]
            main_space = observation_space.spaces["image"] if self.main_key else None
        else:
            self.main_key, self.context_keys, main_space = None, [], observation_space
        self.context_spaces = {k: observation_space[k] for k in self.context_keys}  # type: ignore[index]
        for k, s in self.context_spaces.items():
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
        self.encoder_precision = encoder_precision

        self.head: D.ActionHead
        if isinstance(action_space, spaces.Discrete):
            self.head = D.CategoricalHead(int(action_space.n))
            self.action_dim = int(action_space.n)
            self.register_buffer("low", torch.zeros(0), persistent=False)
            self.register_buffer("high", torch.zeros(0), persistent=False)
        elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
            if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
                raise ValueError(
                    f"Box action space {action_space} must be bounded: the Gaussian head squashes into "
                    "[low, high]; wrap the env with gymnasium.wrappers.RescaleAction."
                )
            self.head = D.SquashedGaussianHead(int(action_space.shape[0]))
            self.action_dim = int(action_space.shape[0])
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32), persistent=False)
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32), persistent=False)
        else:
            raise TypeError(f"action space {action_space} is not supported; use Discrete or a 1-D bounded Box.")
        self.action_space = action_space

        # previous action, previous reward, task-start flag; for labels also the reward credited to the
        # previous action (one-hot(a) * r): "action j earned r" as one input, which a sum over memory
        # slots or a GRU input cannot otherwise tell from "j was taken" and "some action earned r".
        self.credit = isinstance(action_space, spaces.Discrete)
        context_dim = self.action_dim * (2 if self.credit else 1) + 2
        for s in self.context_spaces.values():
            context_dim += int(s.n) if isinstance(s, spaces.Discrete) else int(np.prod(s.shape))
        self.context_dim = context_dim
        self.embed_dim = embed_dim
        use_index = bool(index_head) and self.credit and core == "memory"  # it reads the memory's value read
        self.core = make_core(core, embed_dim, context_dim, hidden=hidden, key_dim=key_dim, capacity=memory_capacity,
                              mass=use_index)
        self.value_read = (bool(value_read) or use_index) and self.credit and isinstance(self.core, EpisodicMemoryCore)
        self._value_slices = self._read_slices() if self.value_read else None  # fixed by the spaces: once, not per step
        # The linear heads read the core's features (less the memory's mass) and the value read (2 per action).
        out = self.core.out_dim - int(use_index) + (2 * self.action_dim if self.value_read else 0)
        self.policy_head = nn.Linear(out, self.action_dim)
        self.index_head = IndexHead(hidden, count_scale=math.log1p(memory_capacity)) if use_index else None
        self._index_slices: tuple[slice, slice] | None = None  # its inputs in the core output, set once
        if use_index:
            assert isinstance(self.core, EpisodicMemoryCore)
            layout = self.core.output_layout()
            self._index_slices = (layout["controller"], layout["mass"])
        self.critic = critic
        self._policy_state_len = len(self.core.initial_state(1, torch.device("cpu")))
        self.critic_core = (make_core(core, embed_dim, context_dim, hidden=hidden, key_dim=key_dim,
                                      capacity=memory_capacity) if critic == "separate" else None)
        self.value_head = nn.Linear(out if self.critic_core is None else self.critic_core.out_dim, 1)
        # The critic's output is μ + σ·value_head(f), μ and σ running statistics of its targets (PopArt):
        # fixed at 0 and 1 unless the trainer updates them (update_return_stats).
        self.register_buffer("return_stats", torch.tensor([0.0, 1.0, 0.0]))  # (3,): E[G], E[G²], updates
        gaussian = isinstance(self.head, D.SquashedGaussianHead)
        self.log_std = nn.Parameter(torch.full((self.action_dim,), float(init_log_std))) if gaussian else None
        memory = isinstance(self.core, EpisodicMemoryCore)
        labels = isinstance(self.head, D.CategoricalHead)
        if (read_gain or taken_gain) and memory and labels:
            if "label" in self.context_spaces:
                self._init_label_vote(read_gain, taken_gain)
            else:
                self._init_credit_vote(read_gain, taken_gain, value_read_gain)

    def _init_label_vote(self, read_gain: float, taken_gain: float) -> None:
        """Priors for label feedback, set in the policy head's initial weights (all stay learnable).

        The memory core's read and total (what the task has revealed so far) hold the context,
        whose entries for the one-hot ``"label"`` follow the context keys sorted before it. The
        read of label j starts as a vote for action j: without it no gradient reaches the keys
        until the head has learned to use the read, and matching images is learned very slowly.
        The tally of label j starts as a vote against action j: a new image most likely has a
        label not yet taken.
        """
        assert isinstance(self.core, EpisodicMemoryCore)
        layout = self.core.output_layout()
        label = 0  # where the label's one-hot starts in the context
        for k, s in self.context_spaces.items():
            if k == "label":
                break
            label += int(s.n) if isinstance(s, spaces.Discrete) else int(np.prod(s.shape))
        n = min(self.action_dim, int(self.context_spaces["label"].n))
        read, total = layout["read"].start + label, layout["total"].start + label
        with torch.no_grad():
            rows = torch.arange(n)
            self.policy_head.weight[rows, read + rows] += read_gain
            self.policy_head.weight[rows, total + rows] -= taken_gain

    def _init_credit_vote(self, read_gain: float, tried_gain: float, value_gain: float) -> None:
        """Priors for tasks that reveal only rewards, set in the policy head's initial weights (all learnable).

        The memory's read holds, over the stored steps most similar to now, the actions taken
        (one-hot) and the reward each earned (the credit input). The read of action j's credit
        starts as a vote for j (repeat what was rewarded in a similar situation); the read of
        "j taken" minus its credit as a vote against j (avoid what went unrewarded there).
        """
        taken, credit = self._read_slices()
        rows = torch.arange(self.action_dim)
        with torch.no_grad():
            self.policy_head.weight[rows, credit.start + rows] += read_gain + tried_gain
            self.policy_head.weight[rows, taken.start + rows] -= tried_gain
            if self.value_read:  # the value read follows the core's features: mean reward (A), then taken (A)
                mean = self.policy_head.in_features - 2 * self.action_dim
                tried = mean + self.action_dim
                self.policy_head.weight[rows, mean + rows] += value_gain
                self.policy_head.weight[rows, tried + rows] -= value_gain / 2

    def _read_slices(self) -> tuple[slice, slice]:
        """Where the memory's read of "action j taken" (A) and of the reward it earned (A) lie in the core's output."""
        assert isinstance(self.core, EpisodicMemoryCore)
        read = self.core.output_layout()["read"].start
        extras = sum(int(s.n) if isinstance(s, spaces.Discrete) else int(np.prod(s.shape))
                     for s in self.context_spaces.values())
        a = self.action_dim
        taken, credit = read + extras, read + extras + a + 2  # context: extras, a (A), r, start, a * r (A)
        return slice(taken, taken + a), slice(credit, credit + a)

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
        precision = (torch.autocast(flat.device.type, dtype=torch.bfloat16) if self._bfloat16(flat.device)
                     else contextlib.nullcontext())
        with precision:
            out = self.encoder(flat)  # (N, E)
        return out.float().reshape(*lead, -1)  # (*lead, E)

    def _bfloat16(self, device: torch.device) -> bool:
        """Whether :meth:`encode` autocasts to bfloat16 on ``device`` (never where autocast is unavailable,
        such as the meta tensors of memory estimates, which then count float32: the larger bound)."""
        if not torch.amp.is_autocast_available(device.type):
            return False
        if self.encoder_precision == "auto":
            return self.image_input and native_bfloat16(device)
        return self.encoder_precision == "bfloat16"

    def context(
        self, obs: Obs | torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor, starts: torch.Tensor
    ) -> torch.Tensor:
        """The RL² context (*lead, U): observation extras, previous action and reward, start flag.

        The previous action and reward are zeroed where a task starts.
        """
        keep = (~starts).float().unsqueeze(-1)  # (*lead, 1)
        parts = []
        for k, s in self.context_spaces.items():
            v = obs[k]  # type: ignore[index]
            if isinstance(s, spaces.Discrete):
                parts.append(F.one_hot(v.long(), int(s.n)).float())  # (*lead, n)
            else:
                parts.append(v.float().reshape(*starts.shape, -1))  # (*lead, d)
        a = self.head.encode(prev_action, starts.shape)  # (*lead, A)
        r = prev_reward.float().unsqueeze(-1)  # (*lead, 1)
        parts += [a * keep, r * keep, starts.float().unsqueeze(-1)]
        if self.credit:
            parts.append(a * r * keep)  # (*lead, A): the reward credited to the previous action
        return torch.cat(parts, dim=-1)  # (*lead, U)

    # -- core and heads --------------------------------------------------------------------

    def initial_state(self, batch: int, device: torch.device | str) -> State:
        state = self.core.initial_state(batch, torch.device(device))
        if self.critic_core is not None:
            state = state + self.critic_core.initial_state(batch, torch.device(device))
        return state

    def forward(
        self, embed: torch.Tensor, context: torch.Tensor, starts: torch.Tensor, state: State, need_state: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """(T, B, E), (T, B, U), (T, B) -> distribution parameters (T, B, A), values (T, B), state."""
        n = self._policy_state_len  # state: the policy core's n tensors, then the separate critic's
        feats, state_out = self.core(embed, context, starts, state[:n], need_state=need_state)  # (T, B, F)
        index = None
        if self._value_slices is not None:
            taken, credit = self._value_slices
            stats = action_value_read(feats[..., taken], feats[..., credit])  # (T, B, 2A): means, tried
            if self.index_head is not None and self._index_slices is not None:
                controller, mass = self._index_slices
                counts = action_counts(feats[..., taken], feats[..., mass])  # (T, B, A)
                per_action = torch.cat([stats, counts], dim=-1).unflatten(-1, (IndexHead.STATS, self.action_dim))
                per_action = per_action.transpose(-1, -2)  # (T, B, A, 3): mean, tried, log count of each action
                index = self.index_head(per_action, feats[..., controller])  # (T, B, A)
                feats = feats[..., : mass.start]  # (T, B, F - 1): the linear heads' features
            feats = torch.cat([feats, stats], dim=-1)  # (T, B, F' + 2A)
        if self.critic_core is not None:
            vfeats, critic_state = self.critic_core(embed.detach(), context, starts, state[n:], need_state=need_state)
            state_out = state_out + critic_state  # the policy core's state, then the critic core's
        else:
            vfeats = feats.detach() if self.critic == "detached" else feats
        values = self.return_stats[0] + self.return_scale() * self.value_head(vfeats).squeeze(-1)  # (T, B)
        logits = self.policy_head(feats)  # (T, B, A)
        return (logits if index is None else logits + index), values, state_out

    def return_scale(self) -> torch.Tensor:
        """σ of the critic's targets (1 until the trainer updates the statistics)."""
        return popart_std(self.return_stats[0], self.return_stats[1])

    @torch.no_grad()
    def update_return_stats(self, batch_mean: torch.Tensor, batch_second: torch.Tensor, rate: float) -> None:
        """Move the critic's target statistics towards a batch's, keeping every value it predicts unchanged."""
        old = (self.return_stats[0].clone(), self.return_scale())
        mean, second, count = popart_stats(self.return_stats[0], self.return_stats[1], self.return_stats[2],
                                           batch_mean, batch_second, rate)
        self.return_stats.copy_(torch.stack([mean, second, count]))
        w, b = popart_preserve(self.value_head.weight, self.value_head.bias, old, (mean, self.return_scale()))
        self.value_head.weight.copy_(w)
        self.value_head.bias.copy_(b)

    # -- distribution ----------------------------------------------------------------------

    def sample(
        self, params: torch.Tensor, generator: torch.Generator | None, deterministic: bool = False
    ) -> torch.Tensor:
        return self.head.sample(params, self.log_std, self.low, self.high, generator, deterministic)

    def log_prob(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.head.log_prob(params, self.log_std, self.low, self.high, actions)

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        return self.head.entropy(params, self.log_std)

    @property
    def discrete(self) -> bool:
        """Whether actions are labels (``Discrete``); the head decides everything else."""
        return isinstance(self.head, D.CategoricalHead)

    # -- stable-baselines3 interface -------------------------------------------------------

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: RL2State | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, RL2State]:
        """Actions for numpy observations, with stable-baselines3's ``predict`` signature
        (see :func:`meta_rl.sb3_adapter.predict`)."""
        return sb3_adapter.predict(self, observation, state, episode_start, deterministic)
