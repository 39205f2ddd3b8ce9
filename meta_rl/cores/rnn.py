"""GRU and LSTM cores, and :func:`run_rnn`, which runs a torch RNN over a sequence cut at task starts."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from meta_rl.cores.base import Core, State, register_core

__all__ = ["GRUCore", "LSTMCore", "run_rnn"]


def run_rnn(rnn: nn.GRU | nn.LSTM, x: torch.Tensor, state: State, starts: torch.Tensor) -> tuple[torch.Tensor, State]:
    """Run ``rnn`` over (T, B, D) from the batch-first ``state`` ((B, H) each), zeroed where ``starts`` is True.

    The sequence is cut only at steps where some task starts (found with one host read, which is
    skipped for T = 1, the acting step); where none starts inside it, it is one cuDNN/MKL call.
    """
    steps = x.shape[0]
    cuts = [0, steps]
    if steps > 1 and not x.is_meta:  # meta tensors (memory estimates) carry no values: one segment
        inner = torch.nonzero(starts[1:].any(dim=1)).flatten().add(1).tolist()
        cuts = [0, *inner, steps]
    outs = []
    for a, b in itertools.pairwise(cuts):
        keep = (~starts[a]).to(x.dtype).view(-1, 1)  # (B, 1)
        state = tuple(s * keep for s in state)
        if isinstance(rnn, nn.LSTM):
            out, (h, c) = rnn(x[a:b], (state[0].unsqueeze(0), state[1].unsqueeze(0)))
            state = (h[0], c[0])
        else:
            out, h = rnn(x[a:b], state[0].unsqueeze(0))
            state = (h[0],)
        outs.append(out)
    return torch.cat(outs) if len(outs) > 1 else outs[0], state  # (T, B, H)


class _RNNCore(Core):
    """A torch RNN over ``concat(embed, context)``."""

    rnn: nn.GRU | nn.LSTM
    state_tensors = 1

    def __init__(self, rnn: nn.GRU | nn.LSTM, hidden: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.hidden = hidden
        self.out_dim = hidden

    def initial_state(self, batch: int, device: torch.device) -> State:
        h = torch.zeros(batch, self.hidden, device=device)  # (B, H)
        return tuple(h.clone() for _ in range(self.state_tensors)) if self.state_tensors > 1 else (h,)

    def forward(
        self, embed: torch.Tensor, context: torch.Tensor, starts: torch.Tensor, state: State, need_state: bool = True
    ) -> tuple[torch.Tensor, State]:
        return run_rnn(self.rnn, torch.cat([embed, context], dim=-1), state, starts)


@register_core("gru")
class GRUCore(_RNNCore):
    """A GRU over ``concat(embed, context)``; state (h (B, H),)."""

    def __init__(
        self, embed_dim: int, context_dim: int, *, hidden: int = 128, task_length: int = 0, outputs: Sequence[str] = ()
    ) -> None:
        super().__init__(nn.GRU(embed_dim + context_dim, hidden), hidden)


@register_core("lstm")
class LSTMCore(_RNNCore):
    """An LSTM over ``concat(embed, context)``; state (h (B, H), c (B, H))."""

    state_tensors = 2

    def __init__(
        self, embed_dim: int, context_dim: int, *, hidden: int = 128, task_length: int = 0, outputs: Sequence[str] = ()
    ) -> None:
        super().__init__(nn.LSTM(embed_dim + context_dim, hidden), hidden)
