"""Random draws from an explicit ``torch.Generator``: Gamma and Beta variates, argmax with random ties.

torch's own Gamma and Beta distributions draw from the global RNG; these take the generator, so
a baseline's randomness stays on its own stream and the global RNG is untouched.
"""

from __future__ import annotations

import torch

__all__ = ["argmax_random", "sample_beta", "sample_gamma"]


def _marsaglia_tsang(d: torch.Tensor, generator: torch.Generator, tries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``tries`` parallel Marsaglia-Tsang proposals per entry: the first accepted value, and whether any was."""
    c = 1.0 / torch.sqrt(9.0 * d)
    shape = (tries, *d.shape)
    x = torch.randn(shape, generator=generator, device=d.device, dtype=d.dtype)  # (tries, ...)
    u = torch.rand(shape, generator=generator, device=d.device, dtype=d.dtype)
    v = (1.0 + c * x) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp_min(1e-30)))
    value = d * v
    out, found = value[-1], ok[-1]
    for i in range(tries - 2, -1, -1):  # the earliest accepted proposal wins
        out = torch.where(ok[i], value[i], out)
        found = found | ok[i]
    return out, found


def sample_gamma(alpha: torch.Tensor, generator: torch.Generator, tries: int = 8) -> torch.Tensor:
    """Gamma(alpha, 1) draws for ``alpha >= 1`` (Marsaglia & Tsang 2000) from ``generator``.

    Each proposal is accepted with probability above 0.95. Two proposals are tried for every
    entry, then ``tries`` more for the (few) entries that rejected both; an entry that rejects
    them all (probability below 1e-13) takes the proposal's mode ``alpha - 1/3``.
    """
    d = alpha - 1.0 / 3.0
    out, found = _marsaglia_tsang(d, generator, 2)
    missing = (~found).nonzero(as_tuple=True)  # one host read: the rejected entries
    if missing[0].numel():
        retry, retry_found = _marsaglia_tsang(d[missing], generator, tries)
        out[missing] = torch.where(retry_found, retry, d[missing])
    return out


def sample_beta(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Beta(a, b) draws for ``a, b >= 1`` as X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b)."""
    x = sample_gamma(a, generator)
    y = sample_gamma(b, generator)
    return x / (x + y)


def argmax_random(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Argmax over the last axis with ties broken uniformly at random: (..., k) -> (...,) int64."""
    best = scores == scores.max(-1, keepdim=True).values
    u = torch.rand(scores.shape, generator=generator, device=scores.device)
    return torch.where(best, u, -1.0).argmax(-1)
