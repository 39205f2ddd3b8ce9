"""A time-limited run ends with its held-out evaluation, logged, and draws its curves at a cadence that follows time
as well as updates (issue 34, item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_runs import tiny_config

import meta_rl.evaluation as evaluation_module
from meta_rl.distributed import World
from meta_rl.lifecycle import StopPolicy, StopRequest
from meta_rl.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _steps(run_dir: Path, tag: str) -> list[int]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def test_a_time_limited_run_logs_its_final_evaluation_and_ten_points(proto_dataset: str, tmp_path: Path) -> None:
    """Cadences of a million updates would log nothing before the end: time adds at least 10 evaluations (the last
    at the final env step, after the time limit cut training) and more than 10 training points."""
    # 10 points over 6 s: one every 0.6 s
    cfg = tiny_config(proto_dataset, 10**6, eval_every=10**6, log_every=10**6, eval_episodes=8, max_minutes=0.1)
    result = train(cfg, tmp_path / "run", progress=False)
    evals = _steps(tmp_path / "run", "eval/accuracy")
    assert len(evals) >= 10 and evals[-1] == result["env_steps"]
    assert result["eval/accuracy"] > 0
    assert len(_steps(tmp_path / "run", "charts/return")) >= 10


def test_step_budgeted_runs_keep_their_update_cadence(proto_dataset: str, tmp_path: Path) -> None:
    """Without a time limit nothing depends on the clock: evaluations at eval_every and the end, as before."""
    cfg = tiny_config(proto_dataset, 7, eval_every=3, eval_episodes=8)
    train(cfg, tmp_path / "run", progress=False)
    per_update = cfg.total_env_steps // 7
    assert _steps(tmp_path / "run", "eval/accuracy") == [3 * per_update, 6 * per_update, 7 * per_update]


def test_the_final_evaluation_gets_a_tenth_of_the_limit_and_at_least_ten_seconds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("meta_rl.lifecycle.time.monotonic", lambda: clock[0])
    policy = StopPolicy(StopRequest(), World(), max_minutes=10)
    assert policy.final_allowance() == 60.0 and StopPolicy(StopRequest(), World(), 0.05).final_allowance() == 10.0
    clock[0] += 600 + 59
    assert policy.over_time() and not policy.interrupts_final_evaluation()
    clock[0] += 1
    assert policy.interrupts_final_evaluation()


def test_an_evaluation_cut_by_a_signal_is_not_run_again(proto_dataset: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The allowance is for the time limit only: a run stopped by a signal does not evaluate at the end."""
    import signal

    from meta_rl.train import TrainingInterrupted

    calls = [0]
    real = evaluation_module.collect

    def collect(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation_module, "collect", collect)
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(proto_dataset, 4, eval_every=2, eval_episodes=4 * 256), tmp_path / "run", progress=False)
    assert calls[0] == 1
