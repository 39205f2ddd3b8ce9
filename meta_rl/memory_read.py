"""The memory-read head: what a policy builds on a core that offers named reads of its memory.

A core with a content-addressed memory (:class:`~meta_rl.cores.EpisodicMemoryCore`) outputs, besides its
controller state, the ``read`` of the contexts stored at similar steps and the ``total`` of every context
stored in the task. Those reads hold the revealed labels, the actions taken and the rewards they earned.
This head turns them into action preferences, as one part:

* **label vote** (tasks that reveal labels): the read of label j starts as a vote for action j and its
  total as a vote against it (a new image most likely has a label not yet taken);
* **credit vote** (tasks that reveal only rewards): the read of the reward action j earned starts as a
  vote for j, the read of "j taken" as a vote against it;
* **value read**: each action's mean reward among the similar steps and whether it was tried there,
  appended to the linear heads' features;
* **index head**: a per-action logit term from one small network shared by all actions, computed from
  that action's mean reward, tried flag and count (the core's ``mass`` output gives the count).

The votes are priors in the action net's initial weights; everything stays learnable. Which of them a
run builds is its ``read_head`` table (:class:`ReadHeadConfig`); the saved config records what was built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from meta_rl.errors import ConfigError

__all__ = [
    "VALUE_READ_EPS", "IndexHead", "MemoryReadHead", "ReadHeadConfig", "action_counts", "action_value_read",
]

#: The core outputs the head reads (``mass`` too when it counts).
REQUIRED_OUTPUTS = ("controller", "read", "total")


@dataclass
class ReadHeadConfig:
    """The memory-read head's settings: the ``read_head`` table of a config (``read_head.read_gain=5``)."""

    read_gain: float = 5.0
    """Initial weight from the memory's read of a revealed label (or, where no label is revealed, of the reward
    an action earned: the credit input) to the same action's logit."""
    taken_gain: float = 2.0
    """Initial negative weight from the tally of a revealed label (or, without labels, from the read of an action
    taken and left unrewarded) to the same action's logit."""
    value_read: bool = False
    """Also give the heads each action's mean reward over the similar stored steps (the read of its credit over
    the read of its being taken) and whether it was taken there: a per-action value estimate that the softmax
    read's fractions give only as a ratio."""
    value_read_gain: float = 5.0
    """With the value read and no revealed labels, the initial weight from an action's mean reward to its logit,
    and half of it against the action having been tried among the similar steps."""
    index_head: bool = True
    """Add to each action's logit a term from one small network shared by all actions (:class:`IndexHead`),
    computed from that action's mean reward, whether it was tried and how often (switches the value read on).
    On for every task whose head is built: what an env declares chooses nothing."""


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


class MemoryReadHead(nn.Module):
    """The memory-read mechanisms on top of a core (see the module docstring).

    Args:
        core_layout: the core's named outputs (:meth:`~meta_rl.cores.Core.output_layout`).
        context_layout: where each part of the RL² context lies (``action``, ``credit`` and, where the
            task reveals labels, ``label``): :attr:`~meta_rl.policy.MetaPolicy.context_layout`.
        action_dim: the number of actions.
        settings: the ``read_head`` settings.
        count_scale: what the index head divides log counts by (log(1 + the memory's capacity)).

    Raises:
        ConfigError: the core lacks a named output the settings need.
    """

    def __init__(
        self, core_layout: dict[str, slice], context_layout: dict[str, slice], action_dim: int,
        settings: ReadHeadConfig, count_scale: float,
    ) -> None:
        super().__init__()
        needed = [*REQUIRED_OUTPUTS, *self.outputs(settings)]
        missing = [name for name in needed if name not in core_layout]
        if missing:
            raise ConfigError(f"the memory-read head needs the core outputs {missing}, which this core lacks "
                              f"(it offers {list(core_layout)}); use core=memory or remove read_head.")
        self.settings = settings
        self.action_dim = action_dim
        self.value_read = bool(settings.value_read or settings.index_head)
        read, action, credit = core_layout["read"].start, context_layout["action"], context_layout["credit"]
        self.taken = slice(read + action.start, read + action.stop)  # the read of "action j taken" (A)
        self.credit = slice(read + credit.start, read + credit.stop)  # the read of the reward j earned (A)
        self.controller = core_layout["controller"]
        self.mass = core_layout.get("mass")
        self.label = None
        if "label" in context_layout:
            label = context_layout["label"]
            self.label = (slice(core_layout["read"].start + label.start, core_layout["read"].start + label.stop),
                          slice(core_layout["total"].start + label.start, core_layout["total"].start + label.stop))
        controller_dim = self.controller.stop - self.controller.start
        self.index_head = IndexHead(controller_dim, count_scale=count_scale) if settings.index_head else None

    @staticmethod
    def outputs(settings: ReadHeadConfig) -> tuple[str, ...]:
        """The optional core outputs the settings need: ``mass`` for the index head's counts."""
        return ("mass",) if settings.index_head else ()

    @staticmethod
    def features_dim(core_dim: int, action_dim: int, settings: ReadHeadConfig) -> int:
        """The size of the linear heads' features: the core's, less ``mass``, plus the value read (2 per action)."""
        index = bool(settings.index_head)
        return core_dim - int(index) + (2 * action_dim if settings.value_read or index else 0)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(T, B, F) core features -> the linear heads' features (T, B, F') and the index term (T, B, A) or None."""
        if not self.value_read:
            return feats, None
        stats = action_value_read(feats[..., self.taken], feats[..., self.credit])  # (T, B, 2A): means, tried
        index = None
        if self.index_head is not None and self.mass is not None:
            counts = action_counts(feats[..., self.taken], feats[..., self.mass])  # (T, B, A)
            per_action = torch.cat([stats, counts], dim=-1).unflatten(-1, (IndexHead.STATS, self.action_dim))
            per_action = per_action.transpose(-1, -2)  # (T, B, A, 3): mean, tried, log count of each action
            index = self.index_head(per_action, feats[..., self.controller])  # (T, B, A)
            feats = feats[..., : self.mass.start]  # (T, B, F - 1)
        return torch.cat([feats, stats], dim=-1), index  # (T, B, F' + 2A)

    @torch.no_grad()
    def set_priors(self, action_net: nn.Linear) -> None:
        """Write the votes into the action net's initial weights: the label vote where the task reveals labels,
        else the credit vote (and the value read's)."""
        s = self.settings
        if self.label is not None:
            read, total = self.label
            n = min(self.action_dim, read.stop - read.start)
            rows = torch.arange(n)
            action_net.weight[rows, read.start + rows] += s.read_gain
            action_net.weight[rows, total.start + rows] -= s.taken_gain
            return
        rows = torch.arange(self.action_dim)
        action_net.weight[rows, self.credit.start + rows] += s.read_gain + s.taken_gain
        action_net.weight[rows, self.taken.start + rows] -= s.taken_gain
        if self.value_read:  # the value read follows the core's features: mean reward (A), then tried (A)
            mean = action_net.in_features - 2 * self.action_dim
            action_net.weight[rows, mean + rows] += s.value_read_gain
            action_net.weight[rows, mean + self.action_dim + rows] -= s.value_read_gain / 2
