"""A causal Transformer core: self-attention over the steps of the current task, with a key-value cache for acting.

Each step is projected from ``concat(embed, context)`` to ``hidden`` (d_model) and passes ``layers``
pre-norm blocks (LayerNorm -> causal self-attention -> residual; LayerNorm -> MLP -> residual) and a
final LayerNorm. A step attends only to earlier steps of its own task: attention is cut at task starts.

Positions: rotary embeddings (RoPE) on queries and keys, with the step's index *within its task*
(0 at a task start). RoPE makes the attention score depend only on the offset between two steps,
not on where they sit, has no learned position table (so ``max_len`` can change without touching
the parameters) and leaves attention content-addressed at any distance (its low frequencies,
wavelengths up to 2π·10⁴ steps, barely turn across a trial), which suits trials of 10 to 500 steps
where a label seen long ago must still be found. Since positions reset at every task start, the
offsets met while acting are those of one task, the same ones the update trains on.

Acting (the step form, T = 1) keeps every layer's rotated keys and values in a cache of ``C`` slots
(``C = max_len or task_length``) and attends to the cache plus the step itself: O(C) per step, with
no host reads. Beyond ``C`` steps in a task the cache is a ring buffer (step ``p`` goes to slot
``p % C``, overwriting step ``p - C``), so a step attends to the last ``C`` steps and itself: a sliding
window. The sequence form applies the same window, so the two forms agree for tasks of any length;
while a task fits in ``C`` the window is the whole task.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from meta_rl.cores.base import Core, State, register_core

__all__ = ["TransformerCore"]

ROPE_BASE = 10_000.0


def _positions(starts: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each step's index within its task, and which task of the call it belongs to.

    Args:
        starts: (T, B) bool, True at a task's first step.
        count: (B,) int64, steps of the current task already in the state.

    Returns:
        pos: (T, B) int64, the step's index within its task (``count + t`` until a start occurs in the call).
        seg: (T, B) int64, the number of task starts at or before the step in this call (0: the state's task).
    """
    steps = starts.shape[0]
    t = torch.arange(steps, device=starts.device).view(-1, 1)  # (T, 1)
    last = torch.cummax(torch.where(starts, t, torch.full_like(t, -1)), dim=0).values  # (T, B): last start <= t
    pos = torch.where(last >= 0, t - last, count.view(1, -1) + t)  # (T, B)
    seg = torch.cumsum(starts.long(), dim=0)  # (T, B)
    return pos, seg


def _attention_mask(pos: torch.Tensor, seg: torch.Tensor, count: torch.Tensor, capacity: int) -> torch.Tensor:
    """Which keys each query may attend to: the cache's ``capacity`` slots, then the call's T steps.

    A query at in-task position ``p`` sees the steps of its own task at positions ``p - capacity .. p``.
    Cache slot ``j`` holds the latest position ``≡ j (mod capacity)`` below ``count``; it is valid while
    no task has started in this call before the query.

    Returns:
        (B, T, capacity + T) bool.
    """
    steps = pos.shape[0]
    dev = pos.device
    pos_b, seg_b = pos.t(), seg.t()  # (B, T)
    slot = torch.arange(capacity, device=dev).view(1, -1)  # (1, C)
    n = count.view(-1, 1)  # (B, 1)
    slot_pos = n - 1 - torch.remainder(n - 1 - slot, capacity)  # (B, C): position held by slot j
    slot_ok = slot < n.clamp(max=capacity)  # (B, C)
    cache_ok = (
        slot_ok.unsqueeze(1)
        & (seg_b == 0).unsqueeze(-1)
        & (slot_pos.unsqueeze(1) >= (pos_b - capacity).unsqueeze(-1))
    )  # (B, T, C)
    t = torch.arange(steps, device=dev)
    lag = t.view(-1, 1) - t.view(1, -1)  # (T, T): query t minus key s
    causal = (lag >= 0) & (lag <= capacity)  # (T, T)
    same_task = seg_b.unsqueeze(-1) == seg_b.unsqueeze(1)  # (B, T, T)
    return torch.cat([cache_ok, causal & same_task], dim=-1)  # (B, T, C + T)


def _rope_angles(pos: torch.Tensor, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles for (T, B) positions: each (B, T, 1, head_dim // 2)."""
    half = head_dim // 2
    inv_freq = ROPE_BASE ** (-torch.arange(half, device=pos.device, dtype=dtype) / half)  # (dh/2,)
    angle = pos.t().to(dtype).unsqueeze(-1) * inv_freq  # (B, T, dh/2)
    return angle.cos().unsqueeze(2), angle.sin().unsqueeze(2)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply the rotary embedding to (B, T, heads, dh) with cos/sin (B, T, 1, dh/2) (rotate-half layout)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, T, heads, dh/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def _write_cache(
    cache: torch.Tensor, new: torch.Tensor, pos: torch.Tensor, seg: torch.Tensor, count: torch.Tensor, capacity: int
) -> torch.Tensor:
    """The cache after the call: the last ``capacity`` steps of each element's final task, slot ``pos % capacity``.

    Args:
        cache: (B, L, C, heads, dh) before the call.
        new: (B, L, T, heads, dh) the call's keys (or values).
        pos, seg: (T, B) from :func:`_positions`; count: (B,) the steps in the final task after the call.

    Slots no step of the call writes keep their entry (still valid if the final task began before the call).
    """
    keep = (seg == seg[-1:]) & (pos >= (count - capacity).view(1, -1))  # (T, B): unique slots per element
    index = torch.where(keep, torch.remainder(pos, capacity), torch.full_like(pos, capacity)).t()  # (B, T)
    index = index.view(index.shape[0], 1, -1, 1, 1).expand_as(new)  # (B, L, T, heads, dh)
    pad = cache.new_zeros(cache.shape[0], cache.shape[1], 1, *cache.shape[3:])  # slot C takes the rest
    padded = torch.cat([cache.to(new.dtype), pad.to(new.dtype)], dim=2)  # (B, L, C + 1, heads, dh)
    return padded.scatter(2, index, new)[:, :, :capacity]  # (B, L, C, heads, dh)


class _Block(nn.Module):
    """A pre-norm Transformer block with rotary causal self-attention over a cache plus the call's steps."""

    def __init__(self, hidden: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, ff_mult * hidden), nn.GELU(), nn.Linear(ff_mult * hidden, hidden))

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
        cache_k: torch.Tensor, cache_v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) -> (B, T, D) and the steps' rotated keys and values (B, T, heads, dh) for the cache.

        ``mask`` is (B, T, C + T) over ``cache_k``/``cache_v`` (B, C, heads, dh) followed by the T steps.
        """
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, self.head_dim).unbind(2)  # (B, T, h, dh)
        q, k = _rotate(q, *rope), _rotate(k, *rope)
        keys = torch.cat([cache_k.to(k.dtype), k], dim=1).transpose(1, 2)  # (B, h, C + T, dh)
        values = torch.cat([cache_v.to(v.dtype), v], dim=1).transpose(1, 2)  # (B, h, C + T, dh)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask.unsqueeze(1))
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))  # att: (B, h, T, dh)
        x = x + self.mlp(self.norm2(x))
        return x, k, v


@register_core("transformer")
class TransformerCore(Core):
    """A causal pre-norm Transformer over ``concat(embed, context)``, attending within the current task.

    See the module docstring for the positions (RoPE on the step's index within its task) and the cache.

    Options (``core_kwargs``): ``layers`` (2) blocks; ``heads`` (4) attention heads, which must divide
    ``hidden`` into an even head size; ``ff_mult`` (2) the MLP's width over ``hidden``; ``max_len`` (0: the
    task's length) the cache's slots ``C``, also the attention window (a step sees its last ``C`` steps).

    State: (keys (B, L, C, heads, dh), values (B, L, C, heads, dh), count (B,) int64, the steps of the
    current task seen so far; slot ``p % C`` holds step ``p``).
    """

    def __init__(
        self, embed_dim: int, context_dim: int, *, hidden: int = 128, task_length: int = 0, outputs: Sequence[str] = (),
        layers: int = 2, heads: int = 4, ff_mult: int = 2, max_len: int = 0,
    ) -> None:
        super().__init__()
        capacity = max_len or task_length
        if capacity < 1:
            raise ValueError(f"the transformer's cache needs >= 1 slot, got max_len = {max_len} and task_length = "
                             f"{task_length}; set core_kwargs.max_len to the task's length (0 takes task_length).")
        if layers < 1 or heads < 1 or ff_mult < 1:
            raise ValueError(f"layers, heads and ff_mult must be >= 1, got {layers}, {heads} and {ff_mult}.")
        if hidden % heads or (hidden // heads) % 2:
            raise ValueError(f"hidden = {hidden} must split into {heads} heads of an even size (rotary embeddings); "
                             "pick heads so that hidden / heads is even.")
        self.capacity, self.layers, self.heads, self.head_dim = capacity, layers, heads, hidden // heads
        self.hidden = hidden
        self.out_dim = hidden
        self.inp = nn.Linear(embed_dim + context_dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, heads, ff_mult) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)

    def initial_state(self, batch: int, device: torch.device) -> State:
        shape = (batch, self.layers, self.capacity, self.heads, self.head_dim)
        dtype = self.inp.weight.dtype
        return (
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(batch, dtype=torch.int64, device=device),
        )

    def forward(
        self, embed: torch.Tensor, context: torch.Tensor, starts: torch.Tensor, state: State, need_state: bool = True
    ) -> tuple[torch.Tensor, State]:
        """(T, B, E), (T, B, U), (T, B) and a state -> features (T, B, hidden) and the state after step T."""
        cache_k, cache_v, count = state  # (B, L, C, h, dh), (B, L, C, h, dh), (B,)
        pos, seg = _positions(starts, count)  # (T, B) each
        mask = _attention_mask(pos, seg, count, self.capacity)  # (B, T, C + T)
        x = self.inp(torch.cat([embed, context], dim=-1)).transpose(0, 1)  # (B, T, D)
        rope = _rope_angles(pos, self.head_dim, x.dtype)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, rope, mask, cache_k[:, i], cache_v[:, i])
            keys.append(k)
            values.append(v)
        out = self.norm(x).transpose(0, 1)  # (T, B, D)
        if not need_state:
            return out, state
        count = pos[-1] + 1  # (B,)
        cache_k = _write_cache(cache_k, torch.stack(keys, dim=1), pos, seg, count, self.capacity)
        cache_v = _write_cache(cache_v, torch.stack(values, dim=1), pos, seg, count, self.capacity)
        return out, (cache_k, cache_v, count)
