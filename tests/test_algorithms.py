"""The algorithm seam: rollouts carry the behaviour policy, a loss is an object over a policy and a rollout, and PPO
reduces to REINFORCE at one epoch with a clip that does not bind."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from meta_rl.algorithms import PPO, Reinforce, make_algorithm
from meta_rl.config import TrainConfig
from meta_rl.envs import BernoulliBanditVectorEnv
from meta_rl.errors import ConfigError
from meta_rl.policy import MetaPolicy
from meta_rl.rollout import Rollout, collect
from meta_rl.train import build_policy, optimize, train

B, PULLS = 4, 6


def _setup(**changes: object) -> tuple[TrainConfig, MetaPolicy, Rollout, BernoulliBanditVectorEnv]:
    env = BernoulliBanditVectorEnv(num_envs=B, arms=3, pulls=PULLS)
    cfg = TrainConfig(env_id="meta_rl/Bandit-k5-n10-v0", encoder="mlp", hidden=8, encoder_hidden=[8],
                      core_kwargs={"key_dim": 4}, **changes).validate()  # type: ignore[arg-type]
    torch.manual_seed(0)
    policy = build_policy(cfg, env, PULLS)
    ro = collect(env, policy, PULLS, torch.Generator().manual_seed(0), reset_seed=0)
    return cfg, policy, ro, env


def _grads(policy: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in policy.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def test_the_rollout_carries_the_behaviour_log_probs_and_values() -> None:
    cfg, policy, ro, env = _setup()
    log_probs, _, values = Reinforce(cfg).evaluate(policy, ro)  # the same policy, as one sequence
    torch.testing.assert_close(ro.log_probs, log_probs.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ro.values, values.detach(), atol=1e-5, rtol=1e-5)
    assert ro.log_probs.shape == ro.values.shape == (PULLS, B) and bool((ro.log_probs <= 0).all())
    env.close()


def test_ppo_at_one_epoch_without_clipping_is_the_reinforce_gradient() -> None:
    """ρ = 1 where the behaviour policy is the policy: the clipped surrogate's gradient is -mean(A ∇ log π)."""
    cfg, policy, ro, env = _setup()
    reinforce = Reinforce(cfg)
    log_probs, _, values = reinforce.evaluate(policy, ro)
    behaviour = dataclasses.replace(ro, log_probs=log_probs.detach(), values=values.detach())
    ppo = PPO(cfg, epochs=1, minibatches=1, clip_range=1e6)
    loss_r, stats_r = reinforce(policy, behaviour)
    loss_p, stats_p = ppo(policy, behaviour)
    assert torch.equal(stats_p["losses/value_target_mean"], stats_r["losses/value_target_mean"])
    # The losses differ by a constant (ρ = 1 against log π): their gradients agree.
    for gp, gr in zip(_grads(policy, loss_p), _grads(policy, loss_r)):
        torch.testing.assert_close(gp, gr, atol=1e-6, rtol=1e-5)
    assert any(float(g.abs().sum()) > 0 for g in _grads(policy, loss_p))
    # A clip that binds changes the gradient once the policy has moved away from the behaviour policy.
    moved = dataclasses.replace(behaviour, log_probs=behaviour.log_probs - 0.5)
    tight = PPO(cfg, epochs=1, minibatches=1, clip_range=0.1)(policy, moved)[0]
    assert not torch.allclose(tight, PPO(cfg, epochs=1, minibatches=1, clip_range=1e6)(policy, moved)[0])
    env.close()


def test_ppo_steps_over_epochs_of_minibatches_of_tasks() -> None:
    cfg, policy, ro, env = _setup(algo="ppo", algo_kwargs={"epochs": 2, "minibatches": 2})
    algorithm = make_algorithm(cfg)
    assert isinstance(algorithm, PPO) and (algorithm.epochs, algorithm.minibatches) == (2, 2)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in policy.parameters()]
    stats = optimize(policy, optimizer, algorithm, ro, cfg)
    assert len(stats) == 4 and all(torch.isfinite(s["losses/total"]) for s in stats)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    half = ro.select(torch.tensor([3, 1]))
    assert half.rewards.shape == (PULLS, 2) and torch.equal(half.actions, ro.actions[:, [3, 1]])
    assert all(s.shape[0] == 2 for s in half.state0)
    with pytest.raises(ConfigError, match=r"algo_kwargs.minibatches = 3 does not divide num_envs = 4"):
        optimize(policy, optimizer, PPO(cfg, minibatches=3), ro, cfg)
    env.close()


def test_algorithm_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"algo_kwargs \['epochs'\] do nothing for algo = 'reinforce', which takes "
                                          r"no options"):
        make_algorithm(TrainConfig(algo_kwargs={"epochs": 2}))
    with pytest.raises(ConfigError, match=r"algo_kwargs \['clip'\] do nothing for algo = 'ppo', which takes epochs"):
        make_algorithm(TrainConfig(algo="ppo", algo_kwargs={"clip": 0.1}))
    with pytest.raises(ValueError, match="ppo needs epochs >= 1"):
        make_algorithm(TrainConfig(algo="ppo", algo_kwargs={"epochs": 0}))


def test_ppo_trains_through_the_trainer(tmp_path: Path) -> None:
    cfg = TrainConfig(env_id="meta_rl/Bandit-k5-n10-v0", num_envs=4, hidden=8, encoder_hidden=[8],
                      core_kwargs={"key_dim": 4}, algo="ppo", algo_kwargs={"epochs": 2, "minibatches": 2},
                      total_env_steps=80, eval_every=0, torch_threads=1, device="cpu")
    result = train(cfg, tmp_path / "run", progress=False)
    assert result["updates"] == 2 and result["env_steps"] == 80


def test_ppo_epochs_re_encode_images_whose_graph_the_rollout_kept(proto_dataset: str, tmp_path: Path) -> None:
    """The trainer's rollout keeps its image encoding's graph for one backward pass; a second epoch encodes anew."""
    cfg = TrainConfig(env_id="meta_rl/FewShot-v0", env_kwargs={"dataset": proto_dataset, "n_way": 3,
                                                               "instances_per_class": 2},
                      num_envs=4, hidden=8, encoder_hidden=[8], core_kwargs={"key_dim": 4}, algo="ppo",
                      algo_kwargs={"epochs": 2, "minibatches": 1}, total_env_steps=48, eval_every=0,
                      torch_threads=1, device="cpu")
    result = train(cfg, tmp_path / "run", progress=False)
    assert result["updates"] == 2
