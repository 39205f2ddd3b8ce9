"""The bandit and tabular-MDP meta-RL tasks, their registration, and the classic baselines on them."""

from __future__ import annotations

import functools
import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from env_checks import assert_bad_resets_refused, assert_single_env_passes_checkers, bad_action_cases
from gymnasium import spaces

from meta_rl.envs import (
    REGISTERED_IDS,
    BernoulliBanditEnv,
    BernoulliBanditVectorEnv,
    DependentBanditVectorEnv,
    TabularMDPEnv,
    TabularMDPVectorEnv,
)
from meta_rl.envs.bandit_baselines import (
    bandit_gittins,
    bandit_greedy,
    bandit_oracle,
    bandit_random,
    bandit_thompson,
    bandit_ucb1,
    gittins_table,
)
from meta_rl.envs.baseline_harness import mean_ci
from meta_rl.envs.checker import check_vector_env
from meta_rl.envs.mdp_baselines import finite_horizon_q, mdp_psrl, mdp_random, mdp_value_iteration
from meta_rl.envs.seeded_sampling import sample_beta, sample_gamma

NEW_IDS = [i for i in REGISTERED_IDS if "Bandit" in i or "TabularMDP" in i]


def test_all_ids_are_registered() -> None:
    expected = {f"meta_rl/Bandit-k{k}-n{n}-v0" for k in (5, 10, 50) for n in (10, 100, 500)}
    expected |= {"meta_rl/DependentBandit-v0"} | {f"meta_rl/TabularMDP-n{n}-v0" for n in (10, 25, 50)}
    assert set(NEW_IDS) == expected
    vec = gym.make_vec("meta_rl/Bandit-k10-n500-v0", num_envs=3, vectorization_mode="vector_entry_point")
    assert isinstance(vec, BernoulliBanditVectorEnv) and (vec.arms, vec.pulls, vec.episode_length) == (10, 500, 500)
    assert vec.episodes_per_trial is None and vec.single_action_space == spaces.Discrete(10)
    mdp = gym.make_vec("meta_rl/TabularMDP-n25-v0", num_envs=2, vectorization_mode="vector_entry_point")
    assert isinstance(mdp, TabularMDPVectorEnv) and (mdp.episodes_per_trial, mdp.episode_length) == (25, 250)
    dep = gym.make_vec("meta_rl/DependentBandit-v0", num_envs=2, vectorization_mode="vector_entry_point")
    assert isinstance(dep, DependentBanditVectorEnv) and dep.pulls == 100


@pytest.mark.parametrize("env_id", NEW_IDS)
def test_registered_ids_pass_the_vector_and_single_env_checkers(env_id: str) -> None:
    check_vector_env(lambda: gym.make_vec(env_id, num_envs=4, vectorization_mode="vector_entry_point"))
    assert_single_env_passes_checkers(env_id)


# -- bandit env --------------------------------------------------------------------------------


def test_bandit_trial_structure_and_autoreset() -> None:
    env = BernoulliBanditVectorEnv(3, arms=4, pulls=5)
    obs, info = env.reset(seed=0)
    assert info == {} and obs.dtype == torch.float32 and torch.equal(obs, torch.zeros(3, 1))
    p = env.probabilities()
    assert p.shape == (3, 4) and bool(((p >= 0) & (p <= 1)).all())
    for t in range(5):
        obs, reward, terminated, truncated, info = env.step(torch.tensor([0, 1, 3]))
        assert reward.dtype == torch.float32 and set(reward.tolist()) <= {0.0, 1.0}
        assert bool(terminated.all()) == (t == 4) and not truncated.any()
        if t < 4:
            assert torch.allclose(obs, torch.full((3, 1), (t + 1) / 5))
    assert torch.equal(info["final_obs"], torch.ones(3, 1)) and torch.equal(obs, torch.zeros(3, 1))
    assert not torch.equal(env.probabilities(), p)  # new bandits
    probs = env.probabilities()
    probs[:] = 2.0  # a clone: the env's own tensor is untouched
    assert bool((env.probabilities() <= 1).all())


def test_bandit_rewards_follow_the_probabilities() -> None:
    env = BernoulliBanditVectorEnv(4000, arms=5, pulls=3)
    env.reset(seed=1)
    p = env.probabilities()
    assert abs(float(p.mean()) - 0.5) < 0.01 and abs(float(p.var()) - 1 / 12) < 0.005  # Uniform(0, 1)
    actions = torch.arange(4000) % 5
    _, reward, *_ = env.step(actions)
    resid = reward - p[torch.arange(4000), actions]  # mean 0, std at most 1/2 / sqrt(B) per entry
    assert abs(float(resid.mean())) < 4 * 0.5 / math.sqrt(4000)


def test_dependent_bandit_arms_are_p_and_one_minus_p() -> None:
    env = DependentBanditVectorEnv(1000)
    env.reset(seed=2)
    p = env.probabilities()
    assert p.shape == (1000, 2) and torch.allclose(p.sum(-1), torch.ones(1000))
    assert env.single_action_space == spaces.Discrete(2) and env.episode_length == 100
    assert abs(float(p[:, 0].mean()) - 0.5) < 0.04


def test_bandit_seeds_repeat_splits_differ_and_actions_do_not_change_the_tasks() -> None:
    def run(split: str, seed: int, arm: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        env = BernoulliBanditVectorEnv(8, arms=5, pulls=4, split=split)
        env.reset(seed=seed)
        p = env.probabilities()
        rewards = torch.stack([env.step(torch.full((8,), arm))[1] for _ in range(4)])
        return p, rewards, env.probabilities()

    p, r, nxt = run("train", 3, 0)
    p2, r2, nxt2 = run("train", 3, 0)
    assert torch.equal(p, p2) and torch.equal(r, r2) and torch.equal(nxt, nxt2)
    assert not torch.equal(p, run("test", 3, 0)[0]) and not torch.equal(p, run("train", 4, 0)[0])
    assert torch.equal(run("train", 3, 4)[2], nxt)  # the next tasks do not depend on the actions


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arms": 1}, r"arms must be an int >= 2, got 1"),
        ({"pulls": 0}, r"pulls must be an int >= 1, got 0"),
        ({"num_envs": 0}, r"num_envs must be an int >= 1, got 0"),
        ({"pulls": 2.5}, r"pulls must be an int >= 1, got 2.5"),
        ({"arms": True}, r"arms must be an int >= 2, got True"),
        ({"split": "dev"}, r"unknown split 'dev'; expected one of \['test', 'train', 'val'\]"),
        ({"render_mode": "human"}, r"render_mode 'human' is not supported"),
    ],
)
def test_bandit_bad_constructor_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BernoulliBanditVectorEnv(**kwargs)


@pytest.mark.parametrize(("actions", "error", "match"), bad_action_cases(5))
def test_bad_actions_are_refused(actions: Any, error: type[Exception], match: str) -> None:
    env = BernoulliBanditVectorEnv(2)
    env.reset(seed=0)
    with pytest.raises(error, match=f"BernoulliBanditVectorEnv: .*{match}"):
        env.step(actions)
    obs, *_ = env.step(np.array([0, 4]))  # numpy ints are fine, and the refused step changed nothing
    assert torch.allclose(obs, torch.full((2, 1), 0.01))


def test_bad_reset_arguments() -> None:
    assert_bad_resets_refused(BernoulliBanditVectorEnv(2), options={"arms": 3})


def test_single_bandit_env_matches_the_vector_env() -> None:
    single = BernoulliBanditEnv(arms=3, pulls=6)
    vec = BernoulliBanditVectorEnv(1, arms=3, pulls=6)
    obs, _ = single.reset(seed=9)
    vobs, _ = vec.reset(seed=9)
    for t in range(6):
        assert np.array_equal(obs, vobs[0].numpy()) and obs.dtype == np.float32
        obs, reward, terminated, _, _ = single.step(t % 3)
        vobs, vreward, vterm, _, vinfo = vec.step(torch.tensor([t % 3]))
        assert reward == float(vreward[0]) and terminated == bool(vterm[0])
    assert terminated and np.array_equal(obs, vinfo["final_obs"][0].numpy())
    with pytest.raises(ValueError, match="use BernoulliBanditVectorEnv"):
        BernoulliBanditEnv(num_envs=4)


# -- tabular MDP env ---------------------------------------------------------------------------


def test_mdp_trial_structure_and_observations() -> None:
    env = TabularMDPVectorEnv(3, states=4, actions=2, horizon=3, episodes_per_trial=2)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 5) and obs.dtype == torch.float32
    assert torch.equal(obs, torch.tensor([[1.0, 0, 0, 0, 1]] * 3))  # state 0, first-step flag
    mdp = env.mdp()
    for t in range(6):
        obs, reward, terminated, truncated, info = env.step(torch.tensor([0, 1, 1]))
        assert torch.equal(info["inner_episode"], torch.full((3,), t // 3))
        assert info["inner_episode"].dtype == torch.int64
        assert reward.dtype == torch.float32 and bool(terminated.all()) == (t == 5) and not truncated.any()
        assert torch.equal(obs[:, :4].sum(-1), torch.ones(3))  # a one-hot state
        assert bool((obs[:, 4] == 1.0).all()) == (t in (2, 5))  # a new inner episode starts
        if t == 2:  # back to state 0, same MDP
            assert torch.equal(obs[:, 0], torch.ones(3)) and all(torch.equal(a, b) for a, b in zip(env.mdp(), mdp))
    assert "final_obs" in info and not torch.equal(env.mdp()[0], mdp[0])


def test_mdp_statistics() -> None:
    env = TabularMDPVectorEnv(3000, states=3, actions=2, horizon=4, episodes_per_trial=1)
    env.reset(seed=4)
    mu, p = env.mdp()
    assert mu.shape == (3000, 3, 2) and p.shape == (3000, 3, 2, 3)
    assert abs(float(mu.mean()) - 1.0) < 0.03 and abs(float(mu.std()) - 1.0) < 0.03  # Normal(1, 1)
    assert torch.allclose(p.sum(-1), torch.ones(3000, 3, 2)) and bool((p > 0).all())
    assert abs(float(p[..., 0].var()) - 1 / 18) < 0.005  # flat Dirichlet over 3: Beta(1, 2) marginals
    obs, reward, *_ = env.step(torch.ones(3000, dtype=torch.long))
    noise = reward - mu[:, 0, 1]
    assert abs(float(noise.mean())) < 0.08 and abs(float(noise.std()) - 1.0) < 0.05
    one_hot = obs[:, :3]
    calibration = (one_hot - p[:, 0, 1]).mean(0)  # the next state is drawn from P(. | 0, 1)
    assert float(calibration.abs().max()) < 4 * 0.5 / math.sqrt(3000)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"states": 0}, r"states must be an int >= 1, got 0"),
        ({"actions": -2}, r"actions must be an int >= 1, got -2"),
        ({"horizon": 1.0}, r"horizon must be an int >= 1, got 1.0"),
        ({"episodes_per_trial": None}, r"episodes_per_trial must be an int >= 1, got None"),
        ({"split": "validation"}, r"unknown split 'validation'"),
    ],
)
def test_mdp_bad_constructor_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TabularMDPVectorEnv(**kwargs)


def test_mdp_seeds_repeat_and_the_single_env_refuses_bad_actions() -> None:
    def rewards(seed: int) -> torch.Tensor:
        env = TabularMDPVectorEnv(4, horizon=2, episodes_per_trial=2)
        env.reset(seed=seed)
        return torch.stack([env.step(torch.tensor([0, 1, 2, 3]))[1] for _ in range(5)])

    assert torch.equal(rewards(7), rewards(7)) and not torch.equal(rewards(7), rewards(8))
    single = TabularMDPEnv(states=3, actions=2)
    single.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions \[2\] are out of range; valid actions are 0..1"):
        single.step(2)
    with pytest.raises(TypeError, match="action must be an int label"):
        single.step(0.5)


# -- bandit baselines ---------------------------------------------------------------------------


@functools.cache
def _bisection_gittins(s: int, f: int, gamma: float, depth: int = 60) -> float:
    """The Gittins index by bisection on the retirement reward, each time a fresh exact DP (slow)."""

    def advantage(lam: float) -> float:
        values: dict[tuple[int, int], float] = {}

        def v(a: int, b: int) -> float:
            if (a, b) not in values:
                mu = (a + 1) / (a + b + 2)
                if a + b >= s + f + depth:
                    values[a, b] = max(lam, mu) / (1 - gamma)
                else:
                    pull = mu * (1 + gamma * v(a + 1, b)) + (1 - mu) * gamma * v(a, b + 1)
                    values[a, b] = max(pull, lam / (1 - gamma))
            return values[a, b]

        mu = (s + 1) / (s + f + 2)
        return mu * (1 + gamma * v(s + 1, f)) + (1 - mu) * gamma * v(s, f + 1) - lam / (1 - gamma)

    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if advantage(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def test_gittins_table_matches_published_and_brute_force_values() -> None:
    assert abs(float(gittins_table(10, 0.9)[0, 0]) - 0.7029) < 2e-4  # Gittins et al., Beta(1, 1), gamma 0.9
    assert abs(float(gittins_table(10, 0.99)[0, 0]) - 0.8699) < 3e-4  # gamma 0.99
    table = gittins_table(6, 0.5)
    for s, f in [(0, 0), (1, 0), (0, 1), (2, 3), (4, 2)]:
        assert abs(float(table[s, f]) - _bisection_gittins(s, f, 0.5)) < 5e-4
        assert float(table[s, f]) >= (s + 1) / (s + f + 2)  # never below the posterior mean
    assert math.isnan(float(table[4, 3]))  # beyond the trial
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\)"):
        gittins_table(5, 1.0)


def test_gittins_index_with_one_step_to_learn() -> None:
    # gamma -> 0: the index is the immediate expected reward, the posterior mean.
    table = gittins_table(3, 1e-6)
    means = (torch.arange(4.0) + 1) / (torch.arange(4.0) + 2)  # (s + 1) / (s + f + 2) at s = 0..3, f = 0
    assert torch.allclose(table[:4, 0], means.double(), atol=1e-3)


class _RecordingBandit(BernoulliBanditVectorEnv):
    """Remembers the actions played; optionally every bandit is arm 0 never pays, arm 1 always."""

    def __init__(self, *args: Any, fixed: bool = False, **kwargs: Any) -> None:
        self.fixed = fixed
        self.played: list[torch.Tensor] = []
        super().__init__(*args, **kwargs)

    def step(self, actions: Any) -> Any:
        self.played.append(torch.as_tensor(actions).clone())
        return super().step(actions)

    def _draw_probabilities(self) -> torch.Tensor:
        p = super()._draw_probabilities()  # keep the generator's draws
        return torch.tensor([[0.0, 1.0]]).expand_as(p).clone() if self.fixed else p


def test_ucb1_pulls_every_arm_once_first() -> None:
    env = _RecordingBandit(6, arms=4, pulls=9)
    bandit_ucb1(env, seed=0, trials=12)  # two rounds of trials
    played = torch.stack(env.played)  # (2 * pulls, B)
    for start in (0, 9):
        assert torch.equal(played[start : start + 4], torch.arange(4).unsqueeze(1).expand(4, 6))


@pytest.mark.parametrize("policy", [bandit_greedy, bandit_gittins], ids=["greedy", "gittins"])
def test_index_policies_stick_to_the_arm_that_pays(policy: Any) -> None:
    env = _RecordingBandit(50, arms=2, pulls=10, fixed=True)
    totals = policy(env, seed=0, trials=50)
    assert totals.dtype == torch.float64 and totals.shape == (50,)
    assert bool(((totals == 9) | (totals == 10)).all())  # at most one failed pull of arm 0
    assert 0 < int((totals == 10).sum()) < 50  # the first pull is a fair coin between the arms


def test_random_thompson_and_oracle_figures() -> None:
    env = BernoulliBanditVectorEnv(500, arms=5, pulls=100, split="test")
    random = mean_ci(bandit_random(env, seed=0, trials=500))
    thompson = mean_ci(bandit_thompson(env, seed=0, trials=500))
    oracle = mean_ci(bandit_oracle(env, seed=0, trials=500))
    assert random.low < 50 < random.high + 0.5 and abs(random.mean - 50) < 2  # 0.5 * n
    assert thompson.mean > random.mean + 15  # Duan et al.: 74.7 against 49.9
    assert abs(oracle.mean - 100 * 5 / 6) < 2.5 and oracle.mean > thompson.mean
    assert torch.equal(bandit_thompson(env, seed=0, trials=500), bandit_thompson(env, seed=0, trials=500))


def test_baselines_check_their_arguments() -> None:
    with pytest.raises(TypeError, match="env must be a BernoulliBanditVectorEnv, got TabularMDPVectorEnv"):
        bandit_random(TabularMDPVectorEnv(2), seed=0, trials=2)
    with pytest.raises(ValueError, match="trials must be a positive int"):
        bandit_random(BernoulliBanditVectorEnv(2), seed=0, trials=0)
    with pytest.raises(ValueError, match="returns is empty"):
        mean_ci(torch.zeros(0))


def test_mean_ci_and_samplers() -> None:
    s = mean_ci(torch.tensor([1.0, 2.0, 3.0]))
    assert s.mean == 2.0 and s.trials == 3 and math.isclose(s.high - s.mean, 1.96 / math.sqrt(3))
    state = torch.get_rng_state()
    gen = torch.Generator().manual_seed(0)
    x = sample_gamma(torch.full((100_000,), 3.0, dtype=torch.float64), gen)
    assert abs(float(x.mean()) - 3.0) < 0.03 and abs(float(x.var()) - 3.0) < 0.1
    b = sample_beta(torch.full((100_000,), 2.0), torch.full((100_000,), 6.0), gen)
    assert abs(float(b.mean()) - 0.25) < 0.005
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched


# -- MDP baselines ------------------------------------------------------------------------------

# State 0: action 0 pays 1 and stays, action 1 pays 0 and moves to state 1.
# State 1: action 0 pays 3 and stays, action 1 pays 0 and moves to state 0.
_MU = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
_P = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])


class _HandMDP(TabularMDPVectorEnv):
    def _new_tasks(self) -> None:
        super()._new_tasks()  # keep the generator's draws
        self._mu = _MU.expand(self.num_envs, 2, 2).clone()
        self._p = _P.expand(self.num_envs, 2, 2, 2).clone()


def test_finite_horizon_q_by_hand() -> None:
    q = finite_horizon_q(_MU.unsqueeze(0), _P.unsqueeze(0), 3)[:, 0]  # (H, S, A)
    assert torch.equal(q[0], _MU)
    assert torch.equal(q[1], torch.tensor([[2.0, 3.0], [6.0, 1.0]]))  # mu + max_a q[0](next)
    assert torch.equal(q[2], torch.tensor([[4.0, 6.0], [9.0, 3.0]]))


def test_value_iteration_on_a_hand_made_mdp() -> None:
    env = _HandMDP(200, states=2, actions=2, horizon=3, episodes_per_trial=2)
    exact = mdp_value_iteration(env, seed=0, trials=400, exact=True)
    assert torch.equal(exact, torch.full((400,), 12.0, dtype=torch.float64))  # 2 x (0 + 3 + 3)
    played = mean_ci(mdp_value_iteration(env, seed=0, trials=400))  # reward noise: std sqrt(6)
    assert abs(played.mean - 12.0) < 0.6
    psrl = mean_ci(mdp_psrl(env, seed=0, trials=400))
    random = mean_ci(mdp_random(env, seed=0, trials=400))
    assert random.mean + 1 < psrl.mean < 12.0 + 0.6


def test_psrl_and_value_iteration_beat_random_on_random_mdps() -> None:
    env = TabularMDPVectorEnv(200, split="test")
    random = mean_ci(mdp_random(env, seed=1, trials=200))
    psrl = mean_ci(mdp_psrl(env, seed=1, trials=200))
    best = mean_ci(mdp_value_iteration(env, seed=1, trials=200, exact=True))
    assert abs(random.mean - 100) < 5  # mean reward 1, 100 steps
    assert psrl.mean > random.mean + 20 and best.mean > psrl.mean + 40


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tasks_and_baselines_on_cuda() -> None:
    bandit = BernoulliBanditVectorEnv(256, arms=5, pulls=20, device="cuda")
    assert bandit.device.type == "cuda" and not bandit.validate_actions
    thompson = bandit_thompson(bandit, seed=0, trials=256)
    assert thompson.device.type == "cpu" and thompson.mean() > bandit_random(bandit, seed=0, trials=256).mean()
    mdp = TabularMDPVectorEnv(64, device="cuda")
    obs, _ = mdp.reset(seed=0)
    obs, reward, *_ = mdp.step(torch.zeros(64, dtype=torch.long, device=mdp.device))
    assert obs.device == mdp.device and reward.device == mdp.device
    assert mdp_psrl(mdp, seed=0, trials=64).mean() > mdp_random(mdp, seed=0, trials=64).mean()
