"""Evaluation that fits the task: returns for bandits, MDPs and control, label-request rates in active mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gymnasium import spaces

from meta_rl.cli import main
from meta_rl.config import ConfigError, ModelConfig, TrainConfig
from meta_rl.envs import BernoulliBanditVectorEnv, FewShotVectorEnv, PointNavVectorEnv
from meta_rl.evaluation import EvalResult, TrialReturns, evaluate, evaluate_task, reports_instances, returns_table
from meta_rl.policy import MetaPolicy
from meta_rl.train import build_policy, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _policy(env: object, **kw: object) -> MetaPolicy:
    cfg = TrainConfig(env_id="unused", env_module="", encoder_hidden=[8], hidden=8, core_kwargs={"key_dim": 4}, **kw)  # type: ignore[arg-type]
    return build_policy(cfg, env, int(env.episode_length))  # type: ignore[attr-defined]


def _always(policy: MetaPolicy, action: int) -> MetaPolicy:
    """Make ``policy`` pick ``action`` whatever it sees (a large logit bias, no weights)."""
    with torch.no_grad():
        policy.policy_head.weight.zero_()
        policy.policy_head.bias.fill_(-50.0)
        policy.policy_head.bias[action] = 50.0
    return policy


def test_kind_of_task_is_read_from_one_probe_step(synthetic: object) -> None:
    assert reports_instances(FewShotVectorEnv(2, dataset=synthetic, n_way=3, instances_per_class=2))
    assert not reports_instances(BernoulliBanditVectorEnv(2, arms=3, pulls=4))
    assert not reports_instances(PointNavVectorEnv(2, horizon=3))


def test_active_mode_reports_label_requests_by_instance(synthetic: object) -> None:
    env = FewShotVectorEnv(4, dataset=synthetic, n_way=3, instances_per_class=2, feedback="active")
    asks = evaluate(env, _always(_policy(env), 3), 8)  # action n_way asks for the label
    assert asks.request_rate_by_instance == [1.0, 1.0] and asks.accuracy_by_instance == [0.0, 0.0]
    assert asks.request_ci95 == [0.0, 0.0] and asks.to_json()["request_rate_by_instance"] == {"1": 1.0, "2": 1.0}
    answers = evaluate(env, _always(_policy(env), 0), 8)  # always label 0: right a third of the time
    assert answers.request_rate_by_instance == [0.0, 0.0] and answers.accuracy == pytest.approx(1 / 3)
    label_env = FewShotVectorEnv(4, dataset=synthetic, n_way=3, instances_per_class=2)
    plain = evaluate(label_env, _policy(label_env), 8)
    assert plain.request_rate_by_instance is None and "request_rate_by_instance" not in plain.to_json()


def test_bandit_evaluation_counts_returns_per_trial() -> None:
    """A policy that always pulls arm 0 earns, per trial, the successes of arm 0: ``pulls * p_0`` on average."""
    env = BernoulliBanditVectorEnv(50, arms=3, pulls=20, split="test")
    res = evaluate_task(env, _always(_policy(env), 0), 400, seed=3)
    assert isinstance(res, TrialReturns) and res.trials == 400 and len(res.mean) == 1
    assert res.total == res.mean[0] and abs(res.total - 20 * 0.5) < 4 * res.total_ci95  # E[p_0] = 1/2
    with pytest.raises(ValueError, match="evaluate_task"):
        evaluate(env, _policy(env), 4)
    baselines = env.reference_returns(400, seed=3)
    table = returns_table(res, baselines, label="arm 0")
    assert table.splitlines()[2].startswith("arm 0") and "gittins" in table and "400 held-out trials" in table
    # The baselines meet the evaluation's tasks: the oracle's mean beats every other's on them.
    assert float(baselines["oracle"].mean()) > float(baselines["gittins"].mean()) > float(baselines["random"].mean())


def test_bandit_run_logs_returns_and_eval_prints_them_beside_the_baselines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = TrainConfig(env_id="meta_rl/Bandit-k5-n10-v0", num_envs=8, hidden=8, core_kwargs={"key_dim": 4},
                      encoder_hidden=[8],
                      total_env_steps=8 * 10 * 4, eval_every=2, eval_episodes=16, log_every=1, device="cpu")
    result = train(cfg, tmp_path / "run", progress=False)
    assert set(result) >= {"eval/return"} and not any("accuracy" in k for k in result)
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert "eval/return" in scalars and "charts/return" in scalars
    assert not any("accuracy" in tag for tag in scalars)
    assert acc.PluginTagToContent("hparams")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--episodes", "40", "--batch", "20"]) == 0
    out = capsys.readouterr().out
    assert "per trial" in out and "gittins" in out and "thompson" in out and "1st" not in out
    assert main(["eval", str(tmp_path / "run"), "--episodes", "40", "--batch", "20", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["trials"] == 40 and set(row["baselines"]) >= {"random", "gittins", "oracle"}


def test_multi_episode_tasks_log_return_by_episode(tmp_path: Path) -> None:
    cfg = TrainConfig(env_id="meta_rl/PointNav-v0", env_kwargs={"horizon": 3}, num_envs=4, hidden=8,
                      encoder_hidden=[8], total_env_steps=4 * 6 * 2, eval_every=1, eval_episodes=8, device="cpu")
    result = train(cfg, tmp_path / "run", progress=False)
    assert {"eval/return", "eval/return_episode_1", "eval/return_episode_2", "eval/improvement"} <= set(
        result)
    assert result["eval/return"] == pytest.approx(result["eval/return_episode_1"]
                                                     + result["eval/return_episode_2"])


def test_accuracy_tasks_keep_their_table(synthetic: object) -> None:
    env = FewShotVectorEnv(4, dataset=synthetic, n_way=3, instances_per_class=2)
    assert isinstance(evaluate_task(env, _policy(env), 8), EvalResult)


def test_credit_vote_prior_only_without_revealed_labels() -> None:
    """Reward-only discrete tasks: the memory's read of "j earned r" starts as a vote for j, of "j taken" against."""
    obs = spaces.Box(-1.0, 1.0, (3,))

    def policy(core: str = "memory", **read_head: float) -> MetaPolicy:
        torch.manual_seed(0)
        model = ModelConfig(encoder_hidden=[8], hidden=8, core=core, read_head=read_head,
                            core_kwargs={"key_dim": 4} if core == "memory" else {})
        return MetaPolicy(obs, spaces.Discrete(3), model, task_length=6)

    plain, prior = policy(read_gain=0.0, taken_gain=0.0), policy(read_gain=5.0, taken_gain=2.0)
    read = 8  # the read follows the controller's hidden state: a (3), r, start, a * r (3)
    expected = torch.zeros_like(plain.policy_head.weight)
    expected[torch.arange(3), read + torch.arange(3)] = -2.0
    expected[torch.arange(3), read + 5 + torch.arange(3)] = 7.0
    torch.testing.assert_close(prior.policy_head.weight - plain.policy_head.weight, expected)
    with pytest.raises(ConfigError, match="does nothing here"):  # a GRU has no memory to read
        policy("gru", read_gain=5.0)


def test_both_results_share_one_view() -> None:
    """Generic code reads score, tasks, scalars(), table() and to_json() without branching on the task."""
    from meta_rl.evaluation import HeldOutResult

    acc = EvalResult([0.2, 0.9], [0.01, 0.02], 40, 0.55, request_rate_by_instance=[0.5, 0.1], request_ci95=[0, 0])
    ret = TrialReturns([1.0, 3.0], [0.1, 0.1], 2.0, 0.2, 30, total=4.0, total_ci95=0.3)
    assert isinstance(acc, HeldOutResult) and isinstance(ret, HeldOutResult)
    assert (acc.score_name, acc.score, acc.tasks) == ("accuracy", 0.55, 40)
    assert (ret.score_name, ret.score, ret.tasks) == ("return", 4.0, 30)
    assert acc.scalars() == {"eval/accuracy_instance_1": 0.2, "eval/accuracy_instance_2": 0.9, "eval/accuracy": 0.55,
                             "eval/request_rate_instance_1": 0.5, "eval/request_rate_instance_2": 0.1}
    assert ret.scalars() == {"eval/return": 4.0, "eval/return_episode_1": 1.0, "eval/return_episode_2": 3.0,
                             "eval/improvement": 2.0}
    assert "20.0±1.0" in acc.table("me") and "MANN" in acc.table("me")
    table = ret.table("me", {"random": torch.tensor([1.0, 3.0])})
    assert "4.00 ± 0.30" in table and "random" in table and "2.00 ±" in table
    assert json.loads(json.dumps(ret.to_json()))["return_per_trial"] == 4.0
