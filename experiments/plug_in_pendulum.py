"""Plug in your own task: Pendulum-v1 with a mass and a length drawn per task, trained by RL².

    python experiments/plug_in_pendulum.py --minutes 0.2 --run-dir /tmp/plug
"""

import argparse

import gymnasium as gym

import meta_rl
from meta_rl.config import TrainConfig
from meta_rl.envs.gym_tasks import register_gym_task
from meta_rl.evaluation import trial_returns
from meta_rl.train import train


def make_pendulum() -> gym.Env:
    return gym.make("Pendulum-v1")


def sample_task(env: gym.Env, rng) -> None:  # a new pendulum for every trial
    env.unwrapped.m = rng.uniform(0.5, 2.0)
    env.unwrapped.l = rng.uniform(0.5, 2.0)


register_gym_task("mine/Pendulum-v0", make_pendulum, sample_task, episodes_per_trial=2, max_episode_steps=50)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--run-dir", default="runs/plug_in_pendulum")
    args = parser.parse_args()
    cfg = TrainConfig(env_id="mine/Pendulum-v0", env_module="plug_in_pendulum", core="gru", encoder="mlp",
                      encoder_hidden=[64, 64], num_envs=16, gamma=0.99, max_minutes=args.minutes,
                      eval_every=0, torch_threads=1)
    result = train(cfg, args.run_dir, progress=False)
    agent = meta_rl.load(args.run_dir, env_module="plug_in_pendulum")  # you trust your own module
    res = trial_returns(agent.make_env("test", 64), agent.policy, trials=64)  # held-out pendulums
    print(f"{result['updates']} updates, {result['env_steps']} steps; held-out return by episode of a trial: "
          f"{[round(m, 1) for m in res.mean]}, improvement {res.improvement:+.1f} ± {res.improvement_ci95:.1f}")
