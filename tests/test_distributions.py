"""The action distributions against torch.distributions."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import AffineTransform, Categorical, Normal, TanhTransform, TransformedDistribution

from meta_rl import distributions as D


@pytest.fixture
def logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 5, 4, generator=g, dtype=torch.float64) * 2  # (T, B, A)


def test_categorical_log_prob_and_entropy_match_torch(logits: torch.Tensor) -> None:
    ref = Categorical(logits=logits)
    actions = torch.arange(15).reshape(3, 5) % 4
    torch.testing.assert_close(D.categorical_log_prob(logits, actions), ref.log_prob(actions))
    torch.testing.assert_close(D.categorical_entropy(logits), ref.entropy())
    torch.testing.assert_close(D.categorical_mode(logits), logits.argmax(-1))


def test_categorical_entropy_extremes() -> None:
    assert D.categorical_entropy(torch.zeros(6)).item() == pytest.approx(torch.log(torch.tensor(6.0)).item())
    assert D.categorical_entropy(torch.tensor([0.0, -1e4, -1e4])).item() == pytest.approx(0.0, abs=1e-6)


def test_gumbel_max_frequencies_match_softmax() -> None:
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0])
    n = 40_000
    g = torch.Generator().manual_seed(123)
    samples = D.categorical_sample(logits.expand(n, 4), g)
    assert samples.shape == (n,) and samples.dtype == torch.int64
    freq = torch.bincount(samples, minlength=4).double() / n
    # Standard error is at most sqrt(0.25 / n) = 0.0025: 0.015 is a loose 6-sigma bound.
    torch.testing.assert_close(freq, torch.softmax(logits.double(), -1), atol=0.015, rtol=0)
    # A near-certain action is (almost) always drawn.
    sure = D.categorical_sample(torch.tensor([0.0, 30.0, 0.0]).expand(1000, 3), g)
    assert (sure == 1).all()


def test_categorical_sample_is_reproducible(logits: torch.Tensor) -> None:
    a = D.categorical_sample(logits, torch.Generator().manual_seed(7))
    b = D.categorical_sample(logits, torch.Generator().manual_seed(7))
    c = D.categorical_sample(logits.expand(50, *logits.shape), torch.Generator().manual_seed(8))
    assert a.shape == (3, 5)
    assert torch.equal(a, b)
    assert not (c == a).all()  # another seed draws other actions somewhere


def _bounds() -> tuple[torch.Tensor, torch.Tensor]:
    low = torch.tensor([-1.0, 0.0, -3.0], dtype=torch.float64)
    high = torch.tensor([1.0, 10.0, -2.5], dtype=torch.float64)
    return low, high


def _reference(
    mu: torch.Tensor, log_std: torch.Tensor, low: torch.Tensor, high: torch.Tensor
) -> TransformedDistribution:
    return TransformedDistribution(
        Normal(mu, log_std.exp().expand_as(mu)),
        [TanhTransform(), AffineTransform(loc=(low + high) / 2, scale=(high - low) / 2)],
    )


def test_squashed_gaussian_log_prob_matches_transformed_distribution() -> None:
    g = torch.Generator().manual_seed(1)
    low, high = _bounds()
    mu = torch.randn(64, 3, generator=g, dtype=torch.float64)
    log_std = torch.tensor([-0.5, 0.3, -1.2], dtype=torch.float64)
    # Actions strictly inside the bounds (away from the edges, where tanh saturates).
    frac = 0.02 + 0.96 * torch.rand(64, 3, generator=g, dtype=torch.float64)
    actions = low + frac * (high - low)
    ours = D.squashed_gaussian_log_prob(mu, log_std, low, high, actions)
    ref = _reference(mu, log_std, low, high).log_prob(actions).sum(-1)
    assert ours.shape == (64,)
    torch.testing.assert_close(ours, ref, atol=1e-8, rtol=1e-8)


def test_squashed_gaussian_samples_stay_within_bounds() -> None:
    g = torch.Generator().manual_seed(2)
    low, high = _bounds()
    mu = 5 * torch.randn(2000, 3, generator=g, dtype=torch.float64)  # far out: tanh saturates
    log_std = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    a = D.squashed_gaussian_sample(mu, log_std, low, high, g)
    assert a.shape == (2000, 3)
    assert ((a >= low) & (a <= high)).all()
    assert (a[:, 1] > 9.0).any() and (a[:, 1] < 1.0).any()  # it does reach both ends
    # Same generator seed, same samples; the log-probability of a sample is finite.
    a2 = D.squashed_gaussian_sample(mu, log_std, low, high, torch.Generator().manual_seed(3))
    a3 = D.squashed_gaussian_sample(mu, log_std, low, high, torch.Generator().manual_seed(3))
    assert torch.equal(a2, a3)
    assert torch.isfinite(D.squashed_gaussian_log_prob(mu, log_std, low, high, a)).all()
    mode = D.squashed_gaussian_mode(torch.zeros(3, dtype=torch.float64), low, high)
    torch.testing.assert_close(mode, (low + high) / 2)


def test_squashed_gaussian_samples_follow_the_distribution() -> None:
    g = torch.Generator().manual_seed(4)
    low, high = _bounds()
    mu = torch.tensor([0.3, -0.2, 0.8], dtype=torch.float64)
    log_std = torch.tensor([-0.7, 0.0, -0.3], dtype=torch.float64)
    a = D.squashed_gaussian_sample(mu.expand(50_000, 3), log_std, low, high, g)
    # The median of the squashed variable is the squashed mean.
    torch.testing.assert_close(a.median(0).values, D.squashed_gaussian_mode(mu, low, high), atol=0.03, rtol=0)


def test_gaussian_entropy_matches_normal() -> None:
    mu = torch.randn(4, 6, 3, dtype=torch.float64)
    log_std = torch.tensor([-0.5, 0.0, 1.3], dtype=torch.float64)
    ours = D.gaussian_entropy(log_std, mu.shape[:-1])
    assert ours.shape == (4, 6)
    torch.testing.assert_close(ours, Normal(mu, log_std.exp()).entropy().sum(-1))
