"""The recurrent meta-policy: RL² inputs, an encoder, a recurrent core and heads fitted to the action space."""

from __future__ import annotations

import contextlib
import dataclasses
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
from meta_rl.config import CRITICS, ModelConfig, check_read_head
from meta_rl.cores import Core, State, make_core
from meta_rl.encoders import PRECISIONS, build_encoder, native_bfloat16, resolved_encoder
from meta_rl.errors import ConfigError
from meta_rl.memory_read import REQUIRED_OUTPUTS, MemoryReadHead
from meta_rl.returns import popart_preserve, popart_stats, popart_std, running_average
from meta_rl.sb3_adapter import OBSERVATION_KEY, PREV_REWARD_KEY, RL2ObservationWrapper, RL2State

__all__ = [  # the RL2 names and keys are sb3_adapter's
    "OBSERVATION_KEY", "PREV_REWARD_KEY", "MetaPolicy", "RL2ObservationWrapper", "RL2State",
]

Obs = dict[str, torch.Tensor]


def _is_image(space: spaces.Space[Any]) -> bool:
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def _check_zero_start(space: spaces.Discrete, what: str) -> None:
    """Refuse ``Discrete(n, start=s)`` with s != 0: the policy numbers actions and observations 0..n-1."""
    if int(space.start) != 0:
        raise TypeError(
            f"{what} {space} starts at {int(space.start)}; the policy numbers its values 0..{int(space.n) - 1}. "
            "Register a gymnasium.Env with meta_rl.envs.register_gym_task (which maps start for you), or have the "
            "vector env use Discrete(n) and add start itself."
        )


class MetaPolicy(nn.Module):
    """An RL² actor-critic for any ``gymnasium`` observation and action space, as parts:
    encoder → core → (memory-read head) → action head and value head.

    Inputs at step t: the observation (its ``"image"`` entry, or the whole observation, goes
    through the encoder; other ``Dict`` entries such as the revealed ``"label"`` join the
    context), the previous action (one-hot for ``Discrete``, raw for ``Box``), the previous
    reward and a task-start flag. The core's state is cleared only where a task starts.

    * **encoder**: a registered encoder (:data:`meta_rl.encoders.ENCODERS`).
    * **core**: a registered :class:`~meta_rl.cores.Core` (:data:`meta_rl.cores.CORES`).
    * **memory-read head** (:class:`~meta_rl.memory_read.MemoryReadHead`): where the core offers named reads
      of its memory and actions are discrete.
    * **heads**: categorical logits for ``Discrete`` actions; for ``Box`` actions a state-dependent mean μ
      (kept within ±3 before the squash: :func:`~meta_rl.distributions.bounded_mean`) and a learned log σ of a
      Gaussian squashed into the bounds; a value head on the ``critic``'s trunk.

    Args:
        observation_space: the single-env observation space.
        action_space: the single-env action space (``Discrete`` or bounded ``Box``).
        model: the model section of a config (:class:`~meta_rl.config.ModelConfig`, which
            :class:`~meta_rl.config.TrainConfig` is); its defaults are the only ones.
        task_length: the steps of one task (a memory core sizes itself from it).

    Raises:
        ConfigError: a setting that would do nothing with these spaces and this core (a ``read_head`` key
            where no memory-read head is built), or an unknown core, encoder or option.
    """

    low: torch.Tensor
    high: torch.Tensor
    return_stats: torch.Tensor
    reward_mean: torch.Tensor  # (2,): r̄ and updates; only with credit inputs (Discrete actions)

    def __init__(
        self, observation_space: spaces.Space[Any], action_space: spaces.Space[Any], model: ModelConfig | None = None,
        *, task_length: int,
    ) -> None:
        super().__init__()
        model = ModelConfig() if model is None else model
        if model.critic not in CRITICS:
            raise ConfigError(f"critic must be one of {CRITICS}, got {model.critic!r}; 'shared' is the default.")
        if model.encoder_precision not in PRECISIONS:
            raise ConfigError(f"encoder_precision must be one of {PRECISIONS}, got {model.encoder_precision!r}; use "
                              "'auto' to let the hardware decide or 'float32' for exact arithmetic.")
        self.model = model
        embed_dim = self._init_encoder(observation_space, model)
        self._init_action_head(action_space)
        self.context_layout = self._context_layout()
        self.context_dim = self.context_layout["credit" if self.credit else "start"].stop
        self.embed_dim = embed_dim
        read = check_read_head(model.read_head)
        self.core = self._make_core(model, task_length, MemoryReadHead.outputs(read) if self.credit else ())
        build_read = self.credit and all(name in self.core.output_layout() for name in REQUIRED_OUTPUTS)
        if model.read_head and not build_read:
            raise ConfigError(
                f"read_head {sorted(model.read_head)} does nothing here: the memory-read head needs a core with named "
                f"reads (core = {model.core!r} offers {list(self.core.output_layout())}) and Discrete actions (the "
                f"action space is {action_space}); use core=memory or remove read_head.")
        trunk = self.core.out_dim
        if build_read:
            trunk = MemoryReadHead.features_dim(trunk, self.action_dim, read)
        self.policy_head = nn.Linear(trunk, self.action_dim)
        self.read_head = (MemoryReadHead(self.core.output_layout(), self.context_layout, self.action_dim, read,
                                         count_scale=math.log1p(getattr(self.core, "capacity", task_length)))
                          if build_read else None)
        #: What the memory-read head was built with (``{}``: none), which the run's saved config records.
        self.read_head_settings = dataclasses.asdict(read) if build_read else {}
        self.critic = model.critic
        self._policy_state_len = len(self.core.initial_state(1, torch.device("meta")))  # a count: no storage
        self.critic_core = self._make_core(model, task_length) if model.critic == "separate" else None
        self.value_head = nn.Linear(trunk if self.critic_core is None else self.critic_core.out_dim, 1)
        # The critic's output is μ + σ·value_head(f), μ and σ running statistics of its targets (PopArt):
        # fixed at 0 and 1 unless the trainer updates them (update_return_stats).
        self.register_buffer("return_stats", torch.tensor([0.0, 1.0, 0.0]))  # (3,): E[G], E[G²], updates
        if self.credit:
            # The credit input is one-hot(a)·(r − r̄), r̄ the running mean reward over training (update_reward_mean):
            # an action is credited with how much better than usual it paid, so where every step pays alike (a
            # pole's +1) the votes and the index head see no difference between actions instead of "repeat
            # what you did" (BENCHMARKS.md § "One learner, told nothing").
            self.register_buffer("reward_mean", torch.tensor([0.0, 0.0]))  # (2,): r̄, updates
        gaussian = isinstance(self.head, D.SquashedGaussianHead)
        self.log_std = nn.Parameter(torch.full((self.action_dim,), float(model.init_log_std))) if gaussian else None
        if self.read_head is not None:
            self.read_head.set_priors(self.policy_head)

    def _init_encoder(self, observation_space: spaces.Space[Any], model: ModelConfig) -> int:
        """Split the observation into the encoder's part and the context's, build the encoder; its output size."""
        #: Whether observations are ``Dict``s (else one Box or Discrete, all of it for the encoder).
        self.dict_observation = isinstance(observation_space, spaces.Dict)
        if isinstance(observation_space, spaces.Dict):
            keys = sorted(observation_space.spaces)
            self.main_key: str | None = "image" if "image" in keys else None
            self.context_keys = [k for k in keys if k != self.main_key]
            main_space = observation_space.spaces["image"] if self.main_key else None
        else:
            self.main_key, self.context_keys, main_space = None, [], observation_space
        self.context_spaces = {k: observation_space[k] for k in self.context_keys}  # type: ignore[index]
        # The number of values of each Discrete part, as Python ints read once here (a numpy int read per step would
        # be a graph break under torch.compile).
        self.context_classes = {k: int(s.n) for k, s in self.context_spaces.items() if isinstance(s, spaces.Discrete)}
        for k, s in self.context_spaces.items():
            if not isinstance(s, (spaces.Discrete, spaces.Box)):
                raise TypeError(f"observation entry {k!r} has space {s}; only Discrete and Box entries are supported.")
            if isinstance(s, spaces.Discrete):
                _check_zero_start(s, f"observation entry {k!r}")
        self.image_input = main_space is not None and _is_image(main_space)
        self.main_space = main_space
        self.main_classes = int(main_space.n) if isinstance(main_space, spaces.Discrete) else 0
        self.encoder_precision = model.encoder_precision
        self.encoder: nn.Module | None = None
        self.encoder_name = "no"  #: the encoder built (``auto`` resolved), for reports
        if main_space is None:
            return 0
        if isinstance(main_space, spaces.Discrete):
            _check_zero_start(main_space, "observation space")
            self.encoder_name = "mlp"
            self.encoder = build_encoder("mlp", (int(main_space.n),), hidden=model.encoder_hidden)
        elif isinstance(main_space, spaces.Box):
            self.encoder_name = resolved_encoder(model.encoder, main_space.shape)
            self.encoder = build_encoder(model.encoder, main_space.shape, hidden=model.encoder_hidden,
                                         options=model.encoder_kwargs)
        else:
            raise TypeError(f"observation space {main_space} is not supported; use Box, Discrete or a Dict of them.")
        return int(self.encoder.out_dim)  # type: ignore[arg-type]

    def _init_action_head(self, action_space: spaces.Space[Any]) -> None:
        """The action distribution's head for ``action_space``, and the bounds of a ``Box``."""
        self.head: D.ActionHead
        if isinstance(action_space, spaces.Discrete):
            _check_zero_start(action_space, "action space")
            self.head = D.CategoricalHead(int(action_space.n))
            self.action_dim = int(action_space.n)
            low, high = torch.zeros(0), torch.zeros(0)
        elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
            if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
                raise ValueError(
                    f"Box action space {action_space} must be bounded: the Gaussian head squashes into "
                    "[low, high]; wrap the env with gymnasium.wrappers.RescaleAction."
                )
            self.head = D.SquashedGaussianHead(int(action_space.shape[0]))
            self.action_dim = int(action_space.shape[0])
            low = torch.as_tensor(action_space.low, dtype=torch.float32)
            high = torch.as_tensor(action_space.high, dtype=torch.float32)
        else:
            raise TypeError(f"action space {action_space} is not supported; use Discrete or a 1-D bounded Box.")
        self.register_buffer("low", low, persistent=False)
        self.register_buffer("high", high, persistent=False)
        self.action_space = action_space
        # For labels the context also holds the reward credited to the previous action (one-hot(a) * r): "action
        # j earned r" as one input, which a sum over memory slots or a GRU input cannot otherwise tell from "j was
        # taken" and "some action earned r".
        self.credit = isinstance(action_space, spaces.Discrete)

    def _context_layout(self) -> dict[str, slice]:
        """Where each part of the RL² context lies: the observation's extra entries (by key, sorted), then
        ``action`` (A), ``reward`` (1), ``start`` (1) and, for discrete actions, ``credit`` (A)."""
        layout, at = {}, 0
        sizes = [(k, int(s.n) if isinstance(s, spaces.Discrete) else int(np.prod(s.shape)))
                 for k, s in self.context_spaces.items()]
        sizes += [("action", self.action_dim), ("reward", 1), ("start", 1)]
        if self.credit:
            sizes.append(("credit", self.action_dim))
        for name, size in sizes:
            layout[name] = slice(at, at + size)
            at += size
        return layout

    def _make_core(self, model: ModelConfig, task_length: int, outputs: Sequence[str] = ()) -> Core:
        return make_core(model.core, self.embed_dim, self.context_dim, hidden=model.hidden, task_length=task_length,
                         outputs=outputs, options=model.core_kwargs)

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
        n = math.prod(lead)
        flat = x.reshape(n, *x.shape[len(lead) :])  # (N, *obs_shape)
        if isinstance(self.main_space, spaces.Discrete):
            flat = F.one_hot(flat.long(), self.main_classes).float()  # (N, n)
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
                parts.append(F.one_hot(v.long(), self.context_classes[k]).float())  # (*lead, n)
            else:
                parts.append(v.float().reshape(*starts.shape, -1))  # (*lead, d)
        a = self.head.encode(prev_action, starts.shape)  # (*lead, A)
        r = prev_reward.float().unsqueeze(-1)  # (*lead, 1)
        parts += [a * keep, r * keep, starts.float().unsqueeze(-1)]
        if self.credit:
            parts.append(a * (r - self.reward_mean[0]) * keep)  # (*lead, A): the credit of the previous action
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
        if self.read_head is not None:
            feats, index = self.read_head(feats)  # (T, B, F'), (T, B, A) or None
        if self.critic_core is not None:
            vfeats, critic_state = self.critic_core(embed.detach(), context, starts, state[n:], need_state=need_state)
            state_out = state_out + critic_state  # the policy core's state, then the critic core's
        else:
            vfeats = feats.detach() if self.critic == "detached" else feats
        values = self.return_stats[0] + self.return_scale() * self.value_head(vfeats).squeeze(-1)  # (T, B)
        logits = self.policy_head(feats)  # (T, B, A)
        return (logits if index is None else logits + index), values, state_out

    def step(
        self, extras: Obs, prev_action: torch.Tensor, prev_reward: torch.Tensor, starts: torch.Tensor, state: State, *,
        main: torch.Tensor | None = None, embed: torch.Tensor | None = None, need_state: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One step of B envs: the distribution's parameters (B, A), the values (B,) and the core's new state.

        The step a rollout, the rollout's CUDA graph (:mod:`meta_rl.graphed_step`) and SB3's ``predict``
        (:mod:`meta_rl.traced_step`) take: encode, the RL² context, core and heads at T = 1.

        Args:
            extras: the observation's context entries (``context_keys``), (B, ...) each.
            prev_action: (B,) or (B, A). prev_reward: (B,). starts: (B,) bool, a task starts. state: the core's.
            main: (B, *obs) the encoder's part of the observation, encoded here; or ``embed``: (B, E), its
                encoding made beforehand (a rollout that encodes the whole image stream at once). Neither: the
                policy has no encoder input.
            need_state: as in :meth:`forward`.
        """
        lead = (1, starts.shape[0])
        e = embed[None] if embed is not None else self.encode(None if main is None else main[None], lead)  # (1, B, E)
        u = self.context({k: v[None] for k, v in extras.items()}, prev_action[None], prev_reward[None], starts[None])
        params, values, state = self(e, u, starts[None], state, need_state=need_state)
        return params[0], values[0], state

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

    @torch.no_grad()
    def update_reward_mean(self, batch_mean: torch.Tensor, rate: float) -> None:
        """Move the running mean reward that credits are measured against towards a rollout's (no-op without
        credit inputs: ``Box`` actions)."""
        if self.credit:
            mean, count = self.reward_mean
            self.reward_mean.copy_(torch.stack([running_average(mean, count, batch_mean, rate), count + 1]))

    # -- distribution ----------------------------------------------------------------------

    def sample(
        self, params: torch.Tensor, generator: torch.Generator | None, deterministic: bool = False
    ) -> torch.Tensor:
        return self.head.sample(params, self.log_std, self.low, self.high, generator, deterministic)

    def noise(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        """The random draw of one step's sampling for ``batch`` envs (the head's ``noise``): what :meth:`sample`
        draws from ``generator`` for parameters (batch, A)."""
        weight = self.policy_head.weight
        return self.head.noise(torch.Size((batch, self.action_dim)), generator, weight.device, weight.dtype)

    def sample_from_noise(self, params: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """The action for the draw ``noise`` (:meth:`noise`), or the mode where it is None."""
        return self.head.sample_from_noise(params, self.log_std, self.low, self.high, noise)

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
