"""The action distributions against torch.distributions."""

from __future__ import annotations

import math

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
    ref = _reference(D.bounded_mean(mu), log_std, low, high).log_prob(actions).sum(-1)
    assert ours.shape == (64,)
    torch.testing.assert_close(ours, ref, atol=1e-8, rtol=1e-8)


def test_bounded_mean_is_near_the_identity_and_bounded() -> None:
    mu = torch.tensor([-1e4, -3.0, -0.5, 0.0, 0.5, 3.0, 1e4], dtype=torch.float64)
    m = D.bounded_mean(mu)
    assert (m.abs() <= D.MEAN_BOUND).all() and m[0] == -D.MEAN_BOUND and m[-1] == D.MEAN_BOUND
    torch.testing.assert_close(m[2:5], mu[2:5], atol=0.02, rtol=0)  # near the origin the head's output is the mean
    assert (torch.diff(m) >= 0).all()  # monotone


def test_score_has_no_drift_where_the_head_output_saturates() -> None:
    """The expected score E[d log π(a) / d m] is 0 under the policy's own float32 samples, also for a head
    output far out (mean m within 0.1% of MEAN_BOUND): the squashed actions are recovered where they were
    drawn. With an unbounded mean of 11.4 every action would round to the bound in float32, atanh would
    recover about 7.25 instead, and the score would average (7.25 - 11.4) / σ² ≈ -11: the runaway."""
    g = torch.Generator().manual_seed(5)
    low, high = torch.tensor([-1.0]), torch.tensor([1.0])
    log_std = torch.tensor([-0.5])
    for out in (0.0, 2.0, D.MEAN_BOUND * math.atanh(0.999)):
        mu = torch.full((200_000, 1), out, requires_grad=True)
        a = D.squashed_gaussian_sample(mu.detach(), log_std, low, high, g)  # float32, as in a rollout
        D.squashed_gaussian_log_prob(mu, log_std, low, high, a).mean().backward()
        assert mu.grad is not None
        slope = 1.0 - math.tanh(out / D.MEAN_BOUND) ** 2  # dm / dmu
        score = float(mu.grad.sum()) / slope  # mean over samples of d log π / d m
        assert abs(score) < 0.02 / math.exp(-0.5), (out, score)  # about 9 standard errors


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
