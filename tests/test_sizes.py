"""Configs too large for the machine are refused before allocation, thread counts are bounded, and the
held-out evaluation honours the time limit and SIGINT/SIGTERM between its batches."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import meta_rl.evaluation as evaluation_module
from meta_rl.checkpoint import load_checkpoint
from meta_rl.config import ConfigError, TrainConfig
from meta_rl.evaluation import EvaluationStopped, evaluate
from meta_rl.memory_estimate import MemoryEstimate, check_fits, check_threads
from meta_rl.train import CHECKPOINT_NAME, TrainingInterrupted, build_policy, make_vec_env, train

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
# 3-way tasks with 3 instances per class: T = 9 steps a task. 256 held-out tasks make one batch.
EVAL_BATCH = 256


def tiny(dataset: str, **changes: Any) -> TrainConfig:
    cfg = TrainConfig(
        env_id="meta_rl/FewShot-v0", env_kwargs={"dataset": dataset, "n_way": 3, "instances_per_class": 3},
        num_envs=4, encoder_hidden=[16], hidden=8, core_kwargs={"key_dim": 8}, total_env_steps=4 * 9 * 4, log_every=1,
        eval_every=0, checkpoint_every=2, device="cpu",
    )
    return dataclasses.replace(cfg, **changes).validate()


@pytest.mark.parametrize(
    ("changes", "keys"),
    [
        ({"num_envs": 1_000_000_000}, "num_envs"),
        ({"hidden": 10_000_000}, "hidden"),
        ({"encoder_hidden": [100_000_000]}, "encoder_hidden"),
        ({"eval_every": 1, "eval_episodes": 1_000_000_000}, "eval_episodes"),
    ],
)
def test_config_beyond_the_machine_is_refused_before_allocation(
    proto_dataset: str, tmp_path: Path, changes: dict[str, Any], keys: str
) -> None:
    cfg = tiny(proto_dataset, **changes)
    with pytest.raises(ConfigError, match=r"this config needs about [\d.]+ (GiB|MiB) on cpu .*but only "
                                          r"[\d.]+ (GiB|MiB) is free") as info:
        train(cfg, tmp_path / "run", progress=False)
    assert keys in str(info.value).split("Lower ", 1)[1]  # the keys of the largest part
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


def test_estimate_names_the_largest_part_and_the_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("meta_rl.memory_estimate.available_memory", lambda device: 10 * 2**30)
    fits = MemoryEstimate(parameters=2**30, activations=2**30, rollout=2**30, env=2**30, evaluation=2**30)
    check_fits(fits, CPU, ConfigError)  # 5 GiB of 8 usable
    too_big = dataclasses.replace(fits, rollout=6 * 2**30)
    with pytest.raises(ConfigError, match=r"needs about 10\.00 GiB .*rollout 6\.00 GiB.*only 10\.00 GiB is free"
                                          r".*Lower num_envs or the steps of a task \(rollout_steps"):
        check_fits(too_big, CPU, ConfigError)


def test_unknown_free_memory_skips_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("meta_rl.memory_estimate.available_memory", lambda device: None)
    check_fits(MemoryEstimate(2**60, 0, 0, 0, 0), CPU, ConfigError)


def test_estimate_grows_with_the_sizes_it_names(proto_dataset: str) -> None:
    from meta_rl.memory_estimate import estimate_training_memory

    cfg = tiny(proto_dataset)
    probe = make_vec_env(cfg, cfg.train_split, 1, CPU)
    space = probe.single_observation_space
    small = estimate_training_memory(lambda: build_policy(cfg, probe, 9), space, 9, 4, 0, 0)
    wide = estimate_training_memory(lambda: build_policy(cfg, probe, 9), space, 9, 400, 0, 0)
    big = estimate_training_memory(
        lambda: build_policy(dataclasses.replace(cfg, hidden=512), probe, 9), space, 9, 4, 0, 0)
    evals = estimate_training_memory(lambda: build_policy(cfg, probe, 9), space, 9, 4, 256, 10**6)
    probe.close()
    assert wide.activations > 50 * small.activations and wide.rollout == 100 * small.rollout
    assert big.parameters > 10 * small.parameters
    assert small.evaluation == 0 and evals.evaluation > 10**6 * 16


@pytest.mark.parametrize("threads", [100_000, (os.cpu_count() or 1) + 1])
def test_thread_count_beyond_the_cpus_is_refused(proto_dataset: str, tmp_path: Path, threads: int) -> None:
    cpus = os.cpu_count() or 1
    with pytest.raises(ConfigError, match=rf"torch_threads = {threads} exceeds the {cpus} CPUs .*from 1 to {cpus}"):
        train(tiny(proto_dataset, torch_threads=threads), tmp_path / "run", progress=False)
    assert torch.get_num_threads() == 1  # nothing was set


def test_thread_count_up_to_the_cpus_is_accepted() -> None:
    check_threads(0)
    check_threads(os.cpu_count() or 1)
    with pytest.raises(ValueError, match="torch_threads"):
        check_threads((os.cpu_count() or 1) + 1)


class CountingCollect:
    """Wraps the held-out evaluation's ``collect``; runs ``on_call(n)`` after its n-th batch."""

    def __init__(self, on_call: Any) -> None:
        self.calls = 0
        self._collect = evaluation_module.collect
        self._on_call = on_call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self._collect(*args, **kwargs)
        self.calls += 1
        self._on_call(self.calls)
        return out


def test_evaluate_stops_between_batches_when_asked(proto_dataset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny(proto_dataset)
    env = make_vec_env(cfg, cfg.heldout_split, 8, CPU)
    policy = build_policy(cfg, env, 9)
    counter = CountingCollect(lambda n: None)
    monkeypatch.setattr(evaluation_module, "collect", counter)
    with pytest.raises(EvaluationStopped, match="after 3 of 10 batches") as info:
        evaluate(env, policy, 80, should_stop=lambda: counter.calls >= 3)
    assert (info.value.batches_done, info.value.batches, counter.calls) == (3, 10, 3)
    assert policy.training  # restored
    env.close()


def test_held_out_evaluation_stops_on_sigterm(proto_dataset: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGTERM during a 40-batch evaluation ends it after the current batch, with a checkpoint."""
    counter = CountingCollect(lambda n: os.kill(os.getpid(), signal.SIGTERM) if n == 1 else None)
    monkeypatch.setattr(evaluation_module, "collect", counter)
    cfg = tiny(proto_dataset, eval_every=2, eval_episodes=40 * EVAL_BATCH)
    started = time.monotonic()
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, tmp_path / "run", progress=False)
    assert counter.calls == 1
    assert time.monotonic() - started < 60
    assert info.value.signum == signal.SIGTERM and info.value.update == 2
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert ckpt["counters"]["update"] == 2


def test_held_out_evaluation_stops_at_the_time_limit(proto_dataset: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """An evaluation that runs past max_minutes stops after the batch in progress; the final evaluation then runs
    whole within its allowance (a tenth of max_minutes, at least 10 s) and is what the run reports."""
    counter = CountingCollect(lambda n: time.sleep(1.3) if n == 1 else None)
    monkeypatch.setattr(evaluation_module, "collect", counter)
    cfg = tiny(proto_dataset, eval_every=2, eval_episodes=4 * EVAL_BATCH, max_minutes=0.02,
               total_env_steps=4 * 9 * 1000)
    result = train(cfg, tmp_path / "run", progress=False)
    assert counter.calls == 1 + 4  # 1 batch of the cut evaluation, then the whole final one
    assert result["updates"] == 2
    assert "eval/accuracy" in result
    assert "stopped by the time limit (max_minutes = 0.02) after 1 of 4 batches; not logged" in capsys.readouterr().err
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert ckpt["counters"]["update"] == 2
