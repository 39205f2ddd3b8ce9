"""The episodic key-value memory core: a recurrent state holding every step of the task, read by content."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from meta_rl.cores.base import Core, State, register_core
from meta_rl.cores.rnn import run_rnn

__all__ = ["EpisodicMemoryCore"]


@register_core("memory")
class EpisodicMemoryCore(Core):
    """A recurrent state holding a key-value memory written every step and read by content.

    At step t the memory receives the pair (key of the previous observation, context u_t):
    ``u_t`` carries what the agent learned about that observation (its revealed label, the
    action taken and the reward), as in Santoro et al.'s MANN, but the whole core is trained
    by RL. The current observation's key then reads the memory by cosine similarity with a
    learned sharpness, giving a weighted read, the sum of everything stored in the task (which
    labels are taken) and the best similarity. A learned empty slot takes the weight when nothing
    stored is similar, so a novel observation reads (almost) nothing. A GRU controller sees these with the inputs.

    The whole-sequence forward computes every read at once as causal attention; the step
    forward (T = 1) is the same computation, so both agree while a task's pairs fit in
    ``capacity`` slots (older pairs are overwritten beyond that in the step form).

    Named outputs (:meth:`output_layout`): ``controller`` (H), the ``read`` of the stored contexts (U),
    their ``total`` (U), the ``best`` similarity (1), and, when ``outputs`` asks for it, ``mass`` (1): the
    log of the read's softmax normaliser over e^β, from which the memory-read head counts similar steps.

    Options (``core_kwargs``): ``key_dim`` (64), the size of keys; ``capacity`` (0: the task's length),
    the slots of the step form's ring buffer.

    State: (keys (B, S, K), values (B, S, U), writes (B,), previous key (B, K), has previous
    key (B,), controller h (B, H)).
    """

    def __init__(
        self, embed_dim: int, context_dim: int, *, hidden: int = 128, task_length: int = 0, outputs: Sequence[str] = (),
        key_dim: int = 64, capacity: int = 0,
    ) -> None:
        super().__init__()
        capacity = capacity or task_length
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 slot, got {capacity}; use at least the episode length "
                             "(core_kwargs.capacity = 0 takes the task's length).")
        if key_dim < 1:
            raise ValueError(f"key_dim must be >= 1, got {key_dim}; the default is 64.")
        self.key = nn.Linear(embed_dim, key_dim)
        self.log_beta = nn.Parameter(torch.tensor(math.log(10.0)))
        # Score of an empty "nothing similar" slot: a novel observation sends its weight there.
        self.null_score = nn.Parameter(torch.tensor(5.0))
        self.key_dim = key_dim
        self.context_dim = context_dim
        self.capacity = capacity
        self.hidden = hidden
        read_dim = 2 * context_dim + 1
        self.rnn = nn.GRU(embed_dim + context_dim + read_dim, hidden)
        self.mass = "mass" in outputs
        self.out_dim = hidden + read_dim + int(self.mass)

    def output_layout(self) -> dict[str, slice]:
        """Where each part of the output features lies: ``controller`` (H), then the memory's ``read`` of the
        context (U), the ``total`` of every context stored in the task (U) and the ``best`` similarity (1)."""
        h, u = self.hidden, self.context_dim
        layout = {"controller": slice(0, h), "read": slice(h, h + u), "total": slice(h + u, h + 2 * u),
                  "best": slice(h + 2 * u, h + 2 * u + 1)}
        if self.mass:
            layout["mass"] = slice(h + 2 * u + 1, h + 2 * u + 2)
        return layout

    def initial_state(self, batch: int, device: torch.device) -> State:
        s, k, u = self.capacity, self.key_dim, self.context_dim
        return (
            torch.zeros(batch, s, k, device=device),
            torch.zeros(batch, s, u, device=device),
            torch.zeros(batch, dtype=torch.int64, device=device),
            torch.zeros(batch, k, device=device),
            torch.zeros(batch, dtype=torch.bool, device=device),
            torch.zeros(batch, self.hidden, device=device),
        )

    def forward(
        self, e: torch.Tensor, u: torch.Tensor, starts: torch.Tensor, state: State, need_state: bool = True
    ) -> tuple[torch.Tensor, State]:
        mem_k, mem_v, writes, prev_k, has_prev, h = state
        steps = starts.shape[0]
        k = self.key(e)  # (T, B, K)
        # Pair s joins key_{s-1} (prev_k for s = 0) with context u_s; valid inside a task.
        pair_k = torch.cat([prev_k.unsqueeze(0), k[:-1]])  # (T, B, K)
        has_before = torch.cat([has_prev.unsqueeze(0), torch.ones_like(starts[:-1])])  # (T, B)
        pair_ok = ~starts & has_before  # (T, B)
        seg = torch.cumsum(starts.long(), dim=0)  # (T, B): task index since the sequence began
        # allowed[b, t, j]: query t may read slot j (initial memory first, then the T pairs).
        slot = torch.arange(self.capacity, device=e.device)
        init_ok = (slot.view(1, 1, -1) < writes.clamp(max=self.capacity).view(-1, 1, 1)) & (
            seg.t().unsqueeze(-1) == 0
        )  # (B, T, S)
        causal = torch.ones(steps, steps, dtype=torch.bool, device=e.device).tril()  # (T, T): s <= t
        same_task = seg.t().unsqueeze(-1) == seg.t().unsqueeze(1)  # (B, T, T)
        pair_allowed = causal & same_task & pair_ok.t().unsqueeze(1)  # (B, T, T)
        allowed = torch.cat([init_ok, pair_allowed], dim=-1)  # (B, T, S + T)
        keys = torch.cat([mem_k, pair_k.transpose(0, 1)], dim=1)  # (B, S + T, K)
        values = torch.cat([mem_v, u.transpose(0, 1)], dim=1)  # (B, S + T, U)
        query = F.normalize(k.transpose(0, 1), dim=-1)  # (B, T, K)
        sim = query @ F.normalize(keys, dim=-1).transpose(1, 2)  # (B, T, S + T)
        scores = torch.where(allowed, self.log_beta.exp() * sim, torch.full_like(sim, -1e9))
        null = self.null_score.expand(*scores.shape[:-1], 1)  # (B, T, 1)
        weights = torch.softmax(torch.cat([scores, null], dim=-1), dim=-1)[..., :-1] * allowed  # (B, T, S + T)
        read = weights @ values  # (B, T, U)
        total = torch.tanh(allowed.to(values.dtype) @ values)  # (B, T, U): what the task revealed so far
        best = torch.where(allowed, sim, torch.full_like(sim, -1.0)).amax(-1, keepdim=True)  # (B, T, 1)
        reads = torch.cat([read, total, best], dim=-1).transpose(0, 1)  # (T, B, 2U + 1)
        ctrl, (h,) = run_rnn(self.rnn, torch.cat([e, u, reads], dim=-1), (h,), starts)  # (T, B, H)
        out = torch.cat([ctrl, reads], dim=-1)  # (T, B, H + 2U + 1)
        if self.mass:  # log of the read's mass over e^b, the null slot's included: log(e^(n-b) + sum e^(b(sim-1)))
            mass = torch.logsumexp(torch.cat([scores, null], dim=-1), dim=-1) - self.log_beta.exp()  # (B, T)
            out = torch.cat([out, mass.detach().t().unsqueeze(-1)], dim=-1)  # (T, B, H + 2U + 2)
        if not need_state:
            return out, (mem_k, mem_v, writes, prev_k, has_prev, h)
        # Write the T pairs into the ring buffer to get the state after the sequence.
        for t in range(steps):
            writes = torch.where(starts[t], torch.zeros_like(writes), writes)
            ok = pair_ok[t]  # (B,)
            hot = F.one_hot(writes % self.capacity, self.capacity).bool() & ok.unsqueeze(-1)  # (B, S)
            mem_k = torch.where(hot.unsqueeze(-1), pair_k[t].unsqueeze(1), mem_k)  # (B, S, K)
            mem_v = torch.where(hot.unsqueeze(-1), u[t].unsqueeze(1), mem_v)  # (B, S, U)
            writes = writes + ok.long()
        return out, (mem_k, mem_v, writes, k[-1], torch.ones_like(has_prev), h)
