"""One learner, told nothing (issue 32): what an env declares chooses no learning setting.

The discount, the heads and their gains are the same defaults for every env, so a user's plain
``gymnasium.Env`` is learned as the suite's own tasks are; the one statistic the policy adapts, the
mean reward that credits are measured against, is measured in training the same way for every task.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import make_synthetic_dataset
from test_train import assert_same_tree

from meta_rl.algorithms import make_algorithm
from meta_rl.checkpoint import load_checkpoint
from meta_rl.config import ConfigError, TrainConfig
from meta_rl.envs import BernoulliBanditVectorEnv, CartPoleTaskVectorEnv, FewShotVectorEnv, TabularMDPVectorEnv
from meta_rl.envs.gym_tasks import GymTaskVectorEnv, register_gym_task
from meta_rl.envs.undeclared import UndeclaredVectorEnv, register_undeclared
from meta_rl.evaluation import evaluate_task
from meta_rl.rollout import collect
from meta_rl.train import CHECKPOINT_NAME, build_policy, make_vec_env, train

CPU = torch.device("cpu")
TINY = {"encoder": "mlp", "hidden": 8, "encoder_hidden": [8], "core_kwargs": {"key_dim": 4}}


def _gym_cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def _no_task(env: gym.Env, rng: np.random.Generator) -> None:
    del env, rng


def _envs() -> dict[str, Any]:
    data = make_synthetic_dataset(num_classes=10, images_per_class=12)
    return {
        "bandit": BernoulliBanditVectorEnv(num_envs=2, arms=5, pulls=10),
        "mdp": TabularMDPVectorEnv(num_envs=2),
        "cartpole": CartPoleTaskVectorEnv(num_envs=2),
        **{f"glyphs-{f}": FewShotVectorEnv(num_envs=2, dataset=data, feedback=f)
           for f in ("label", "reward", "active")},
        "plug-in": GymTaskVectorEnv(_gym_cartpole, _no_task, num_envs=2, episodes_per_trial=2, max_episode_steps=20),
    }


@pytest.mark.parametrize("kind", ["bandit", "mdp", "cartpole", "glyphs-label", "glyphs-reward", "glyphs-active",
                                  "plug-in"])
def test_declared_and_undeclared_envs_get_the_same_policy_and_discount(kind: str) -> None:
    """Each env, as registered and wrapped so that it declares nothing, builds the same policy from the same seed
    (parameters, buffers and memory-read head) and the same algorithm: the index head is on wherever actions are
    discrete, and the discount is the config's."""
    env = _envs()[kind]
    bare = UndeclaredVectorEnv(env)
    steps = int(env.episode_length)
    cfg = TrainConfig(**TINY).validate()
    built = []
    for e in (env, bare):
        torch.manual_seed(0)
        built.append(build_policy(cfg, e, steps))
    assert_same_tree(built[0].state_dict(), built[1].state_dict())
    assert built[0].read_head_settings == built[1].read_head_settings
    assert built[0].read_head_settings["index_head"] is True
    assert make_algorithm(cfg).gamma == cfg.gamma == TrainConfig().gamma
    env.close()


def test_a_declared_bandit_and_its_undeclared_twin_train_to_the_same_parameters(tmp_path: Path) -> None:
    """The same seed and budget on the suite's bandit and on the same bandit told nothing: identical checkpoints
    (the policy, its running statistics, the optimizer), so nothing the env declares reaches the learner."""
    base = TrainConfig(**TINY, num_envs=4, total_env_steps=4 * 10 * 3, eval_every=0, torch_threads=1,
                       env_id="meta_rl/Bandit-k5-n10-v0")
    undeclared = TrainConfig(**{**base.to_dict(), "env_id": register_undeclared(base.env_id)})
    train(base, tmp_path / "declared", progress=False)
    train(undeclared, tmp_path / "undeclared", progress=False)
    a, b = (load_checkpoint(tmp_path / run / CHECKPOINT_NAME) for run in ("declared", "undeclared"))
    assert_same_tree(a["policy"], b["policy"])
    assert_same_tree(a["optimizer"]["state"], b["optimizer"]["state"])
    assert float(a["policy"]["reward_mean"][1]) == 3  # the credit baseline moved once per update
    assert {k: v for k, v in a["config"].items() if k != "env_id"} == {
        k: v for k, v in b["config"].items() if k != "env_id"}


def test_gamma_is_one_number_for_every_task_and_names_the_fix() -> None:
    assert TrainConfig().gamma == 0.9 and TrainConfig(gamma=1).validate().gamma == 1.0
    with pytest.raises(ConfigError, match=r"gamma"):
        TrainConfig(gamma="auto").validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"gamma must lie in \[0, 1\], got 1.5"):
        TrainConfig(gamma=1.5).validate()
    with pytest.raises(ConfigError, match=r"read_head.index_head"):
        TrainConfig(read_head={"index_head": "auto"}).validate()


def test_the_algorithm_discounts_with_the_configured_gamma() -> None:
    env = BernoulliBanditVectorEnv(num_envs=4, arms=2, pulls=6)
    cfg = TrainConfig(env_id="meta_rl/Bandit-k5-n10-v0", encoder="mlp", core="gru", hidden=8, encoder_hidden=[8])
    torch.manual_seed(0)
    policy = build_policy(cfg, env, 6)
    ro = collect(env, policy, 6, torch.Generator().manual_seed(0), reset_seed=0)
    near = make_algorithm(TrainConfig(**{**cfg.to_dict(), "gamma": 0.5}))(policy, ro)[1]
    far = make_algorithm(TrainConfig(**{**cfg.to_dict(), "gamma": 0.99}))(policy, ro)[1]
    assert far["losses/value_target_mean"] > near["losses/value_target_mean"]  # later rewards count at 0.99
    env.close()


def test_credits_are_measured_against_the_running_mean_reward() -> None:
    """Where every step pays alike (CartPole's +1) the credit input is zero once the mean is measured, so the
    memory-read votes see no difference between actions; before any update it is the raw reward."""
    env = CartPoleTaskVectorEnv(num_envs=3)
    cfg = TrainConfig(**TINY).validate()
    policy = build_policy(cfg, env, int(env.episode_length))
    credit = policy.context_layout["credit"]
    starts = torch.zeros(3, dtype=torch.bool)
    action, reward = torch.tensor([0, 1, 1]), torch.ones(3)
    raw = policy.context(env.reset(seed=0)[0], action, reward, starts)[..., credit]
    assert torch.equal(raw, torch.nn.functional.one_hot(action, 2).float())
    policy.update_reward_mean(torch.tensor(1.0), rate=0.01)  # the first update takes the batch's mean as it is
    centred = policy.context(env.reset(seed=0)[0], action, reward, starts)[..., credit]
    assert torch.equal(centred, torch.zeros(3, 2))
    policy.update_reward_mean(torch.tensor(0.0), rate=0.01)  # then a running average: (1 + 0) / 2
    assert torch.allclose(policy.reward_mean, torch.tensor([0.5, 2.0]))
    env.close()


# A plain gymnasium.Env that declares nothing: of 5 arms, arm (offset + t) mod 5 pays 1 at pull t, the offset hidden
# per task. Random play, or any agent without memory of the task (it sees nothing but zeros), earns 1 in 5, 2.0 in 10
# pulls; repeating the arm that paid (what the memory-read votes start with) earns less. An agent that infers the
# offset from its first hit and steps on earns about 10 - 2 = 8.
ARMS, PULLS = 5, 10


class RotatingBandit(gym.Env):  # type: ignore[type-arg]
    def __init__(self) -> None:
        self.action_space = gym.spaces.Discrete(ARMS)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.offset = self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        paid = float(int(action) == (self.offset + self.t) % ARMS)
        self.t += 1
        return np.zeros(1, np.float32), paid, False, False, {}


def _hide_the_offset(env: gym.Env, rng: np.random.Generator) -> None:
    env.unwrapped.offset = int(rng.integers(ARMS))  # type: ignore[attr-defined]


def test_the_default_learns_an_undeclared_plug_in_bandit_no_memoryless_agent_can(tmp_path: Path) -> None:
    """The README's plug-in route, nothing set but the budget: held-out tasks reach 6 of 10 pulls, three times what
    random or memoryless play earns (2) and above the untrained policy."""
    register_gym_task("test/RotatingBandit-v0", RotatingBandit, _hide_the_offset, episodes_per_trial=1,
                      max_episode_steps=PULLS)
    cfg = TrainConfig(env_id="test/RotatingBandit-v0", env_module="", total_env_steps=150_000, eval_every=0,
                      torch_threads=1, seed=0).validate()
    env = make_vec_env(cfg, "test", 250, CPU)
    torch.manual_seed(cfg.seed)  # the trainer's initial policy
    untrained = evaluate_task(env, build_policy(cfg, env, PULLS), 500, seed=7, steps=PULLS).to_json()
    assert untrained["return_per_trial"] < 3.0
    train(cfg, tmp_path / "run", progress=False)
    policy = build_policy(cfg, env, PULLS)
    policy.load_state_dict(load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["policy"])
    trained = evaluate_task(env, policy, 500, seed=7, steps=PULLS).to_json()
    assert trained["return_per_trial"] >= 6.0  # this seed: see the test's log; random and memoryless: 2.0
    env.close()


def test_the_plug_in_bandit_experiment_trains_and_scores(tmp_path: Path) -> None:
    """``experiments/plug_in_bandit.py`` (the issue's Bernoulli bandit as a plain ``gymnasium.Env``) runs end to end
    on a tiny budget and prints its held-out score."""
    script = Path(__file__).resolve().parents[1] / "experiments" / "plug_in_bandit.py"
    done = subprocess.run([sys.executable, str(script), "--minutes", "0.05", "--run-dir", str(tmp_path / "run"),
                           "--trials", "16", "num_envs=4", "hidden=8", "encoder_hidden=[8]", "core_kwargs.key_dim=4",
                           "torch_threads=1"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["env_steps"] > 0 and 0 <= out["return_per_trial"] <= 100


def test_the_default_learns_to_stop_asking_after_the_first_instance(proto_dataset: str, tmp_path: Path) -> None:
    """Active classification (the 4th action asks for the label at a cost) with the default config, on 3-way
    streams of prototype classes, in a short run: held-out tasks ask at the 1st instance of a class (this seed:
    57%) and no longer from the 2nd on (0%), where the label is in memory. On the suite's glyphs the default does
    not get there in the suite's budget (BENCHMARKS.md § "One learner, told nothing")."""
    cfg = TrainConfig.load(None, [
        "env_id=meta_rl/FewShot-v0", "env_kwargs.feedback=active", f"env_kwargs.dataset={proto_dataset}",
        "env_kwargs.n_way=3", "env_kwargs.instances_per_class=4", "num_envs=32", "hidden=32", "encoder_hidden=[32]",
        "core_kwargs.key_dim=16", "total_env_steps=240000", "eval_every=0", "torch_threads=1", "seed=0",
    ])
    train(cfg, tmp_path / "run", progress=False)
    env = make_vec_env(cfg, "test", 100, CPU)
    policy = build_policy(cfg, env, int(env.episode_length))
    policy.load_state_dict(load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["policy"])
    rates = evaluate_task(env, policy, 200, seed=7, steps=int(env.episode_length)).to_json()
    asked = list(rates["request_rate_by_instance"].values())
    assert asked[0] >= 0.4 and max(asked[2:]) <= 0.1, asked
    env.close()
