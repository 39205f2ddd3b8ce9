"""Action distributions as pure functions of their parameters (no state on objects).

Categorical: parameters are logits (..., A). Squashed Gaussian for ``Box`` actions: a
state-dependent output ``mu`` (..., D) and a learned ``log_std`` (D,) define ``z ~ N(m, σ)`` with
the mean ``m = MEAN_BOUND · tanh(mu / MEAN_BOUND)``; the action is
``low + (tanh(z) + 1) / 2 * (high - low)``, so it always lies within the bounds, and the
log-probability includes the change of variables.

Why the mean is bounded: the rollout keeps the squashed action, and the update recovers ``z``
as atanh of it. Where float32 ``tanh(z)`` rounds to ±1 (|z| beyond about 7) that recovery is
clamped and no longer ``z``, so the score function is evaluated at the wrong point and has a
nonzero mean. An unbounded mean drifts there and runs away: PointNav runs were seen with
|mu| ≈ 200, 41% of actions pinned to a bound and gradient norms of 1e7 before clipping. With
``|m| < 3`` (``tanh(3)`` is 99.5% of the half-range) the samples stay where atanh recovers them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

__all__ = [
    "MEAN_BOUND",
    "ActionHead",
    "CategoricalHead",
    "SquashedGaussianHead",
    "bounded_mean",
    "categorical_entropy",
    "categorical_log_prob",
    "categorical_mode",
    "categorical_noise",
    "categorical_sample",
    "categorical_sample_from_noise",
    "gaussian_entropy",
    "gaussian_noise",
    "squashed_gaussian_log_prob",
    "squashed_gaussian_mode",
    "squashed_gaussian_sample",
    "squashed_gaussian_sample_from_noise",
]

_LOG_2PI = math.log(2.0 * math.pi)
#: Largest |mean| of the pre-squash Gaussian (see the module docstring).
MEAN_BOUND = 3.0


def categorical_noise(shape: torch.Size, generator: torch.Generator | None, device: torch.device,
                      dtype: torch.dtype) -> torch.Tensor:
    """The uniform draw U(0, 1) of ``shape`` (the logits') that :func:`categorical_sample_from_noise` takes."""
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


def categorical_sample_from_noise(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The Gumbel-max sample for the uniform draw ``uniform`` (the logits' shape): argmax(logits + Gumbel)."""
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
    return torch.argmax(logits + gumbel, dim=-1)


def categorical_sample(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Sample by the Gumbel-max trick: one on-device draw, no host synchronisation."""
    uniform = categorical_noise(logits.shape, generator, logits.device, logits.dtype)
    return categorical_sample_from_noise(logits, uniform)


def categorical_mode(logits: torch.Tensor) -> torch.Tensor:
    return torch.argmax(logits, dim=-1)


def categorical_log_prob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits, dim=-1)
    return torch.gather(log_p, -1, actions.long().unsqueeze(-1)).squeeze(-1)


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def _squash(z: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    return low + (torch.tanh(z) + 1.0) * 0.5 * (high - low)


def _unsquash(a: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    y = (2.0 * (a - low) / (high - low) - 1.0).clamp(-1.0 + 1e-6, 1.0 - 1e-6)
    return torch.atanh(y)


def bounded_mean(mu: torch.Tensor) -> torch.Tensor:
    """The pre-squash Gaussian's mean for the head's output ``mu``: ``MEAN_BOUND · tanh(mu / MEAN_BOUND)``."""
    return MEAN_BOUND * torch.tanh(mu / MEAN_BOUND)


def gaussian_noise(shape: torch.Size, generator: torch.Generator | None, device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
    """The standard normal draw of ``shape`` (the means') that :func:`squashed_gaussian_sample_from_noise` takes."""
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def squashed_gaussian_sample_from_noise(
    mu: torch.Tensor, log_std: torch.Tensor, low: torch.Tensor, high: torch.Tensor, normal: torch.Tensor,
) -> torch.Tensor:
    """The squashed sample ``low + (tanh(m + σ·normal) + 1) / 2 · (high - low)`` for the draw ``normal`` (mu's
    shape), m = bounded_mean(mu) and σ = exp(log_std)."""
    return _squash(bounded_mean(mu) + log_std.exp() * normal, low, high)


def squashed_gaussian_sample(
    mu: torch.Tensor, log_std: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    normal = gaussian_noise(mu.shape, generator, mu.device, mu.dtype)
    return squashed_gaussian_sample_from_noise(mu, log_std, low, high, normal)


def squashed_gaussian_mode(mu: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    return _squash(bounded_mean(mu), low, high)


def squashed_gaussian_log_prob(
    mu: torch.Tensor, log_std: torch.Tensor, low: torch.Tensor, high: torch.Tensor, actions: torch.Tensor
) -> torch.Tensor:
    """log π(a) = log N(z; m, σ) - Σ log|da/dz|, with z = atanh of the rescaled action and m = bounded_mean(mu)."""
    z = _unsquash(actions, low, high)
    std = log_std.exp()
    normal = -0.5 * (((z - bounded_mean(mu)) / std) ** 2 + 2.0 * log_std + _LOG_2PI)
    # da/dz = (high - low) / 2 * (1 - tanh(z)^2); log(1 - tanh^2) = 2 (log 2 - z - softplus(-2z)).
    log_det = torch.log((high - low) * 0.5) + 2.0 * (math.log(2.0) - z - torch.nn.functional.softplus(-2.0 * z))
    return (normal - log_det).sum(-1)


def gaussian_entropy(log_std: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Entropy of the unsquashed Gaussian N(μ, σ), broadcast to ``shape`` (the batch shape).

    The squashed distribution has no closed-form entropy; this is the usual bonus term.
    """
    per_dim = 0.5 * (1.0 + _LOG_2PI) + log_std
    return per_dim.sum(-1).expand(shape)


# --- action heads: the distribution for an action space, chosen once --------------------------


class _Sampler(ABC):
    """A head's sampling: a random draw of the parameters' shape, then a pure function of the parameters and it."""

    @abstractmethod
    def noise(self, shape: torch.Size, generator: torch.Generator | None, device: torch.device,
              dtype: torch.dtype) -> torch.Tensor:
        """The random draw that sampling parameters of ``shape`` takes (one call advances ``generator`` once)."""

    @abstractmethod
    def sample_from_noise(self, params: torch.Tensor, scale: torch.Tensor | None, low: torch.Tensor,
                          high: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """The action for the draw ``noise`` (from :meth:`noise`), or the distribution's mode where it is None."""

    def sample(self, params: torch.Tensor, scale: torch.Tensor | None, low: torch.Tensor, high: torch.Tensor,
               generator: torch.Generator | None, deterministic: bool) -> torch.Tensor:
        """An action drawn from ``generator`` (the mode if ``deterministic``, which draws nothing)."""
        noise = None if deterministic else self.noise(params.shape, generator, params.device, params.dtype)
        return self.sample_from_noise(params, scale, low, high, noise)


class CategoricalHead(_Sampler):
    """``Discrete(n)`` actions: logits (..., n) from the policy head; int64 actions of shape (...).

    Stateless: every method takes the tensors it needs (``scale``, ``low``, ``high`` are unused).
    """

    dtype = torch.int64

    def __init__(self, n: int) -> None:
        self.dim = n
        self.shape: tuple[int, ...] = ()

    def encode(self, action: torch.Tensor, lead: torch.Size) -> torch.Tensor:
        """(*lead,) actions as the policy's input: one-hot (*lead, n)."""
        return torch.nn.functional.one_hot(action.long().clamp(0, self.dim - 1), self.dim).float()

    def noise(self, shape: torch.Size, generator: torch.Generator | None, device: torch.device,
              dtype: torch.dtype) -> torch.Tensor:
        return categorical_noise(shape, generator, device, dtype)

    def sample_from_noise(self, params: torch.Tensor, scale: torch.Tensor | None, low: torch.Tensor,
                          high: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return categorical_mode(params) if noise is None else categorical_sample_from_noise(params, noise)

    def log_prob(self, params: torch.Tensor, scale: torch.Tensor | None, low: torch.Tensor, high: torch.Tensor,
                 actions: torch.Tensor) -> torch.Tensor:
        return categorical_log_prob(params, actions)

    def entropy(self, params: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        return categorical_entropy(params)


class SquashedGaussianHead(_Sampler):
    """Bounded 1-D ``Box(d)`` actions: mean μ (..., d) from the policy head, the policy's learned log σ
    (``scale``, (d,)) and the bounds ``low`` / ``high``; float32 actions of shape (..., d)."""

    dtype = torch.float32

    def __init__(self, d: int) -> None:
        self.dim = d
        self.shape: tuple[int, ...] = (d,)

    def encode(self, action: torch.Tensor, lead: torch.Size) -> torch.Tensor:
        """(*lead, d) actions as the policy's input: as they are."""
        return action.float().reshape(*lead, self.dim)

    def noise(self, shape: torch.Size, generator: torch.Generator | None, device: torch.device,
              dtype: torch.dtype) -> torch.Tensor:
        return gaussian_noise(shape, generator, device, dtype)

    def sample_from_noise(self, params: torch.Tensor, scale: torch.Tensor | None, low: torch.Tensor,
                          high: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None:
            return squashed_gaussian_mode(params, low, high)
        assert scale is not None
        return squashed_gaussian_sample_from_noise(params, scale, low, high, noise)

    def log_prob(self, params: torch.Tensor, scale: torch.Tensor | None, low: torch.Tensor, high: torch.Tensor,
                 actions: torch.Tensor) -> torch.Tensor:
        assert scale is not None
        return squashed_gaussian_log_prob(params, scale, low, high, actions)

    def entropy(self, params: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        assert scale is not None
        return gaussian_entropy(scale, params.shape[:-1])


ActionHead = CategoricalHead | SquashedGaussianHead
