"""Baselines share the agent's run lifecycle: lock, signal stop with checkpoint, exact resume, time limit, NaN guard."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from meta_rl.baselines.cli import build_baseline
from meta_rl.baselines.config import BaselineConfig
from meta_rl.baselines.protonet import ProtoNetConfig
from meta_rl.baselines.training import CHECKPOINT_NAME, train_baseline
from meta_rl.checkpoint import load_checkpoint
from meta_rl.cli import main
from meta_rl.config import ConfigError
from meta_rl.lifecycle import TrainingInterrupted
from meta_rl.nonfinite_guard import NonFiniteError
from meta_rl.runlock import RunLockedError, run_lock

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(dataset: str, **changes: Any) -> ProtoNetConfig:
    data = dict(dataset=dataset, n_way=3, shots=1, queries_per_class=2, meta_batch=4, max_updates=6,
                encoder="mlp", encoder_hidden=[16], eval_episodes=0, log_every=1, checkpoint_every=2,
                max_minutes=0.0)
    cfg = ProtoNetConfig.from_dict({**data, **changes}, source="the test")
    assert isinstance(cfg, ProtoNetConfig)
    return cfg


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a["counters"] != b["counters"] or a["config"] != b["config"]:
        return False
    tensors = [(a["policy"][k], b["policy"][k]) for k in a["policy"]] + [(a["rng"]["tasks"], b["rng"]["tasks"])]
    states = a["optimizer"]["state"], b["optimizer"]["state"]
    tensors += [(states[0][i][k], states[1][i][k]) for i in states[0] for k in states[0][i]]
    return all(torch.equal(x, y) for x, y in tensors)


def test_resume_ends_exactly_where_an_unbroken_run_does(proto_dataset: str, tmp_path: Path) -> None:
    train_baseline(tiny(proto_dataset), build_baseline, tmp_path / "whole", progress=False)
    train_baseline(tiny(proto_dataset, max_updates=4), build_baseline, tmp_path / "split", progress=False)
    assert load_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)["counters"]["update"] == 4
    result = train_baseline(tiny(proto_dataset), build_baseline, tmp_path / "split", resume=True, progress=False)
    assert result["updates"] == 6
    assert same_state(load_checkpoint(tmp_path / "whole" / CHECKPOINT_NAME),
                      load_checkpoint(tmp_path / "split" / CHECKPOINT_NAME))


def test_sigterm_stops_after_the_update_with_a_checkpoint(proto_dataset: str, tmp_path: Path) -> None:
    calls = 0

    def build(cfg: BaselineConfig, shape: tuple[int, int, int], device: torch.device) -> Any:
        baseline = build_baseline(cfg, shape, device)
        real = baseline.compute_gradients

        def compute_gradients(episode: Any) -> dict[str, float]:
            nonlocal calls
            calls += 1
            if calls == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(episode)

        baseline.compute_gradients = compute_gradients  # type: ignore[method-assign]
        return baseline

    with pytest.raises(TrainingInterrupted, match=r"SIGTERM after update 3 .*meta-rl baseline --resume") as info:
        train_baseline(tiny(proto_dataset, max_updates=100), build, tmp_path / "run", progress=False)
    assert info.value.exit_code == 143
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["counters"]["update"] == 3
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []  # no lock left


def test_a_run_directory_is_held_by_one_run(proto_dataset: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with run_lock(run_dir), pytest.raises(RunLockedError, match=rf"PID {os.getpid()}"):
        train_baseline(tiny(proto_dataset), build_baseline, run_dir, progress=False)
    train_baseline(tiny(proto_dataset, max_updates=2), build_baseline, run_dir, progress=False)
    with pytest.raises(ConfigError, match=r"already holds a checkpoint; resume it with meta-rl baseline --resume"):
        train_baseline(tiny(proto_dataset), build_baseline, run_dir, progress=False)


def test_resume_refuses_another_config(proto_dataset: str, tmp_path: Path) -> None:
    from meta_rl.checkpoint import CheckpointError

    train_baseline(tiny(proto_dataset, max_updates=2), build_baseline, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match=r"another config \(changed: learning_rate\).*max_updates"):
        train_baseline(tiny(proto_dataset, learning_rate=0.5), build_baseline, tmp_path / "run", resume=True,
                       progress=False)


def test_nan_loss_stops_before_anything_bad_is_saved(proto_dataset: str, tmp_path: Path) -> None:
    def build(cfg: BaselineConfig, shape: tuple[int, int, int], device: torch.device) -> Any:
        baseline = build_baseline(cfg, shape, device)
        real = baseline.compute_gradients
        calls = 0

        def compute_gradients(episode: Any) -> dict[str, float]:
            nonlocal calls
            calls += 1
            stats = real(episode)
            return {**stats, "loss": float("nan")} if calls == 3 else stats

        baseline.compute_gradients = compute_gradients  # type: ignore[method-assign]
        return baseline

    with pytest.raises(NonFiniteError, match=r"loss is nan at update 3 \(episode 12\).*update 2\) is intact"):
        train_baseline(tiny(proto_dataset), build, tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["counters"]["update"] == 2


def test_default_config_has_a_time_budget() -> None:
    assert 0 < BaselineConfig().max_minutes <= 60


def test_cli_resume(proto_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The dataset is registered in this process only: the CLI runs in-process.
    args = [f"dataset={proto_dataset}", "n_way=3", "shots=1", "queries_per_class=2", "meta_batch=4", "max_updates=2",
            "encoder=mlp", "encoder_hidden=[16]", "eval_episodes=0", "log_every=1"]
    run_dir = str(tmp_path / "run")
    assert main(["baseline", "protonet", "--run-dir", run_dir, "--no-progress", *args]) == 0
    assert main(["baseline", "--resume", run_dir, "max_updates=3", "--no-progress"]) == 0
    assert '"updates": 3' in capsys.readouterr().out
    assert main(["baseline", "protonet", "--resume", run_dir]) == 2
    assert "--resume DIR continues a baseline run with its saved kind and config" in capsys.readouterr().err
    assert main(["eval", run_dir, "--allow-dataset-change"]) == 2  # a flag that would do nothing is refused
    assert "records no dataset hash" in capsys.readouterr().err


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def test_a_resumed_run_logs_what_an_unbroken_one_does(proto_dataset: str, tmp_path: Path) -> None:
    """Means over the updates actually summed, and no held-out point logged twice at one step."""
    changes = {"log_every": 4, "eval_episodes": 6, "eval_every": 0, "max_updates": 8}
    train_baseline(tiny(proto_dataset, **changes), build_baseline, tmp_path / "whole", progress=False)
    train_baseline(tiny(proto_dataset, **{**changes, "max_updates": 6}), build_baseline, tmp_path / "split",
                   progress=False)
    train_baseline(tiny(proto_dataset, **changes), build_baseline, tmp_path / "split", resume=True, progress=False)
    train_baseline(tiny(proto_dataset, **changes), build_baseline, tmp_path / "split", resume=True, progress=False)
    whole, split = scalars(tmp_path / "whole", "train/loss"), scalars(tmp_path / "split", "train/loss")
    assert [s for s, _ in split] == [s for s, _ in whole] == [4, 8]
    assert split[0][1] == pytest.approx(whole[0][1])
    # Update 8's mean covers updates 7-8 only (the process that logged it started at 6): the mean of
    # those two updates' losses, read from a run that logs every update (training is the same).
    train_baseline(tiny(proto_dataset, **{**changes, "log_every": 1}), build_baseline, tmp_path / "fine",
                   progress=False)
    fine = dict(scalars(tmp_path / "fine", "train/loss"))
    assert split[1][1] == pytest.approx((fine[7] + fine[8]) / 2, rel=1e-5)
    assert [s for s, _ in scalars(tmp_path / "split", "eval/query_accuracy")] == [6, 8]


def test_resume_refuses_overrides_that_cannot_change_before_loading_anything(
    proto_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_baseline(tiny(proto_dataset, max_updates=2), build_baseline, tmp_path / "run", progress=False)
    assert main(["baseline", "--resume", str(tmp_path / "run"), "n_way=5"]) == 2
    assert "n_way cannot change when a run is resumed" in capsys.readouterr().err
    assert main(["baseline", "--resume", str(tmp_path / "run"), "--seed", "3"]) == 2
    assert "--seed cannot change when a run is resumed" in capsys.readouterr().err


def test_redirected_stderr_gets_lines_with_the_time_limit_in_the_total(
        proto_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No bar is drawn into a log file (stderr is not a terminal under capsys): one line per log instead, whose
    total follows the time limit where it comes before ``max_updates``."""
    train_baseline(tiny(proto_dataset, max_updates=100_000, max_minutes=0.002), build_baseline, tmp_path / "run")
    err = capsys.readouterr().err
    assert "it/s" not in err and "update/s" not in err and "\r" not in err  # no tqdm bar
    totals = [int(t) for t in re.findall(r"^meta-rl baseline \| update \d+/(\d+) \|", err, re.M)]
    assert totals, err
    assert max(totals) < 10_000, err  # 0.12 s of updates: the time limit's total, not max_updates' 100k
    train_baseline(tiny(proto_dataset, max_updates=3), build_baseline, tmp_path / "run2")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("meta-rl baseline |")]
    assert [line.split(" | ")[1] for line in lines] == ["update 1/3", "update 2/3", "update 3/3"]
