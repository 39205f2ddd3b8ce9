"""Callbacks and loggers in SB3's manner (issue 34, item 3): hooks at the phase boundaries, a callback's stop ending the
run normally (also agreed over ranks), StopOnThreshold, SaveBestCheckpoint and best.pt, and the ``log_to`` writers
(CSV, JSON lines, stdout) with their resume semantics."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_usability import readme_block
from tiny_runs import STEPS_PER_UPDATE, tiny_config

import meta_rl
from meta_rl.callbacks import STOPPING_HOOKS, Callback, RunView, check_callbacks, run_hook
from meta_rl.checkpoint import CheckpointError, CheckpointWriteError, load_checkpoint
from meta_rl.cli import main
from meta_rl.config import ConfigError, TrainConfig
from meta_rl.lifecycle import BEST_NAME, CHECKPOINT_NAME, check_holds_only_run_files
from meta_rl.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

S = STEPS_PER_UPDATE  # env steps per update of a tiny run (36)
TESTS = Path(__file__).resolve().parent


class Recorder(Callback):
    """Every hook call with the counters and figures it saw."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_training_start(self, run: RunView) -> None:
        self.calls.append(("start", run.update, run.env_steps))

    def on_rollout_end(self, run: RunView) -> None:
        self.calls.append(("rollout_end", run.update, run.env_steps))

    def on_update(self, run: RunView) -> None:
        logged = run.logged_at == run.env_steps
        assert not logged or "charts/return" in run.metrics  # figures at log time
        self.calls.append(("update", run.update, run.env_steps, run.logged_at))

    def on_eval(self, run: RunView) -> None:
        assert run.evaluated_at == run.env_steps and 0.0 <= run.evaluation["eval/accuracy"] <= 1.0
        self.calls.append(("eval", run.update, run.env_steps))

    def on_checkpoint(self, run: RunView) -> None:
        assert load_checkpoint(run.checkpoint_path)["counters"]["update"] == run.update
        self.calls.append(("checkpoint", run.update))

    def on_training_end(self, run: RunView) -> None:
        self.calls.append(("end", run.update))


class StopAt(Callback):
    """Ends the run from ``hook`` once ``run.update`` reaches ``update``."""

    def __init__(self, hook: str, update: int) -> None:
        self.hook, self.update = hook, update
        setattr(self, hook, self._maybe_stop)

    def _maybe_stop(self, run: RunView) -> bool | None:
        return False if run.update >= self.update else None

    def __repr__(self) -> str:
        return f"StopAt({self.hook})"


class Crash(Callback):
    def __init__(self, update: int) -> None:
        self.at = update

    def on_update(self, run: RunView) -> None:
        if run.update == self.at:
            raise RuntimeError("boom")


def jsonl(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]


def csv_rows(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(run_dir / "progress.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


# --------------------------------------------------------------------------------------------
# hooks
# --------------------------------------------------------------------------------------------


def test_hooks_run_in_order_with_the_counters(proto_dataset: str, tmp_path: Path) -> None:
    rec = Recorder()
    cfg = tiny_config(proto_dataset, 4, eval_every=2, eval_episodes=4, checkpoint_every=3, log_every=2)
    result = train(cfg, tmp_path / "run", progress=False, callbacks=[rec])
    assert rec.calls == [
        ("start", 0, 0),
        ("rollout_end", 0, 0), ("update", 1, S, None),
        ("rollout_end", 1, S), ("update", 2, 2 * S, 2 * S), ("eval", 2, 2 * S),
        ("rollout_end", 2, 2 * S), ("update", 3, 3 * S, 2 * S), ("checkpoint", 3),
        ("rollout_end", 3, 3 * S), ("update", 4, 4 * S, 4 * S), ("eval", 4, 4 * S),
        ("checkpoint", 4),  # the final one (the last update's evaluation was the loop's)
        ("end", 4),
    ]
    assert "stopped_by" not in result and result["updates"] == 4


@pytest.mark.parametrize("hook", STOPPING_HOOKS)
def test_a_callback_stop_ends_the_run_normally(proto_dataset: str, tmp_path: Path, hook: str) -> None:
    """From any stopping hook: training ends after update 2 of 6, then the final held-out evaluation (logged) and the
    final checkpoint, and the result names the callback."""
    # on_rollout_end sees the update before it is counted: the rollout of update 2 is seen at run.update == 1.
    stop = StopAt(hook, 1 if hook == "on_rollout_end" else 2)
    rec = Recorder()
    cfg = tiny_config(proto_dataset, 6, eval_every=2, eval_episodes=4, checkpoint_every=2, log_to=["jsonl"])
    result = train(cfg, tmp_path / "run", progress=False, callbacks=[stop, rec])
    assert result["updates"] == 2 and result["env_steps"] == 2 * S
    assert result["stopped_by"] == f"StopAt({hook})"
    assert 0.0 <= result["eval/accuracy"] <= 1.0
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["counters"] == {"update": 2, "env_steps": 2 * S}
    evals = [row for row in jsonl(tmp_path / "run") if "eval/accuracy" in row]
    assert [row["env_steps"] for row in evals] == [2 * S]  # evaluated once at the last step, logged
    assert rec.calls[-1] == ("end", 2) and rec.calls[-2] == ("checkpoint", 2)
    assert rec.calls.count(("eval", 2, 2 * S)) == 1
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))  # log_to has no tensorboard


def test_a_raising_callback_fails_the_run_cleanly(proto_dataset: str, tmp_path: Path) -> None:
    """Before the first checkpoint the run directory it created goes, as for any failure; the error names the
    callback and the hook."""
    cfg = tiny_config(proto_dataset, 4, eval_every=0, log_to=["csv", "jsonl", "tensorboard"])
    with pytest.raises(RuntimeError, match="boom") as info:
        train(cfg, tmp_path / "run", progress=False, callbacks=[Crash(2)])
    if sys.version_info >= (3, 11):
        assert "raised by callback Crash in on_update at update 2" in "".join(info.value.__notes__)
    assert not (tmp_path / "run").exists()


def test_bad_callbacks_are_refused(proto_dataset: str, tmp_path: Path) -> None:
    class SB3Style(Callback):
        def _on_step(self) -> bool:
            return True

    cfg = tiny_config(proto_dataset, 1, eval_every=0)
    for bad, message in [
        (Recorder(), r"must be a list.*callbacks=\[\.\.\.\]"),
        ([Recorder], r"the class Recorder, not an instance; pass Recorder\(\.\.\.\)"),
        ([object()], r"not a meta_rl.Callback; subclass meta_rl.Callback"),
        ([SB3Style()], r"SB3Style\._on_step is not a hook and would never be called.*on_update"),
    ]:
        with pytest.raises(TypeError, match=message):
            train(cfg, tmp_path / "run", progress=False, callbacks=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()
    assert check_callbacks(None) == []

    class Returns(Callback):
        def on_update(self, run: RunView) -> Any:
            return 1

        def on_training_start(self, run: RunView) -> Any:
            return False

    view = RunView(type("T", (), {"update": 3, "env_steps": 9})())
    with pytest.raises(TypeError, match=r"Returns.on_update returned 1; a hook returns None or True to go on, False"):
        run_hook([Returns()], "on_update", view)
    with pytest.raises(TypeError, match=r"on_training_start cannot end the run; return False from one of on_rollout"):
        run_hook([Returns()], "on_training_start", view)
    first, second = StopAt("on_eval", 0), StopAt("on_eval", 0)
    assert run_hook([Recorder(), first, second], "on_rollout_end", view) is None
    assert run_hook([first, second], "on_eval", view) is first


# --------------------------------------------------------------------------------------------
# StopOnThreshold
# --------------------------------------------------------------------------------------------


def test_stop_on_threshold_reached_and_not(proto_dataset: str, tmp_path: Path) -> None:
    cfg = tiny_config(proto_dataset, 6, eval_every=2, eval_episodes=4, log_to=["jsonl"])
    reached = meta_rl.StopOnThreshold("eval/accuracy", 0.0)
    result = train(cfg, tmp_path / "a", progress=False, callbacks=[reached])
    assert result["updates"] == 2
    assert reached.reached == (result["eval/accuracy"], 2 * S)
    assert re.fullmatch(r"StopOnThreshold\(eval/accuracy >= 0\): [0-9.]+ at env step 72", result["stopped_by"])

    never = meta_rl.StopOnThreshold("eval/accuracy", 1.5)
    result = train(cfg, tmp_path / "b", progress=False, callbacks=[never])
    assert result["updates"] == 6 and "stopped_by" not in result and never.reached is None

    # A training figure is checked at each log; mode="min" stops at or below the threshold.
    rows = jsonl(tmp_path / "b")
    first_entropy = rows[0]["losses/entropy"]
    low = meta_rl.StopOnThreshold("losses/entropy", first_entropy + 1.0, mode="min")
    result = train(cfg, tmp_path / "c", progress=False, callbacks=[low])
    assert result["updates"] == 1 and result["stopped_by"].startswith("StopOnThreshold(losses/entropy <= ")


def test_stop_on_threshold_refuses_figures_the_run_never_makes(proto_dataset: str, tmp_path: Path) -> None:
    cfg = tiny_config(proto_dataset, 4, eval_every=2, eval_episodes=4)
    with pytest.raises(ConfigError, match=r"'eval/acc' is not among this run's held-out figures \(eval/accuracy, "
                                          r"eval/accuracy_instance_1.*did you mean 'eval/accuracy'\?"):
        train(cfg, tmp_path / "a", progress=False, callbacks=[meta_rl.StopOnThreshold("eval/acc", 0.5)])
    with pytest.raises(ConfigError, match=r"'charts/retrun' is not among this run's logged training figures.*did "
                                          r"you mean 'charts/return'\?"):
        train(cfg, tmp_path / "b", progress=False, callbacks=[meta_rl.StopOnThreshold("charts/retrun", 0.5)])
    no_eval = tiny_config(proto_dataset, 4, eval_every=0)
    for cb in (meta_rl.StopOnThreshold("eval/accuracy", 0.5), meta_rl.SaveBestCheckpoint()):
        with pytest.raises(ConfigError, match=r"this run never evaluates on held-out tasks.*set eval_every"):
            train(no_eval, tmp_path / "c", progress=False, callbacks=[cb])
    assert not any((tmp_path / d).exists() for d in "abc")  # failed before a checkpoint: nothing left
    with pytest.raises(ValueError, match="finite number"):
        meta_rl.StopOnThreshold("eval/accuracy", float("nan"))
    with pytest.raises(ValueError, match=r"use 'max'.*or 'min'"):
        meta_rl.StopOnThreshold("eval/accuracy", 0.5, mode="above")
    with pytest.raises(ValueError, match="name a held-out figure"):
        meta_rl.SaveBestCheckpoint("charts/return")


# --------------------------------------------------------------------------------------------
# SaveBestCheckpoint and best.pt
# --------------------------------------------------------------------------------------------


class FakeRun:
    """A RunView stand-in: a sequence of held-out figures and the saves asked for."""

    def __init__(self, run_dir: Path, resumed: bool = False) -> None:
        self.run_dir, self.resumed, self.evaluates = run_dir, resumed, True
        self.evaluation: dict[str, float] = {}
        self.env_steps = 0
        self.saved: list[int] = []

    def save_checkpoint(self, name: str) -> Path:
        assert name == BEST_NAME
        self.saved.append(self.env_steps)
        return self.run_dir / name


def test_save_best_writes_only_on_improvement(tmp_path: Path) -> None:
    for mode, values, saved_at in [("max", [0.5, 0.4, 0.6, 0.6, math.nan, 0.7], [1, 3, 6]),
                                   ("min", [0.5, 0.4, 0.6, 0.4, 0.1], [1, 2, 5])]:
        cb, run = meta_rl.SaveBestCheckpoint(mode=mode), FakeRun(tmp_path)
        cb.on_training_start(run)  # type: ignore[arg-type]
        for step, value in enumerate(values, start=1):
            run.env_steps, run.evaluation = step, {"eval/accuracy": value, "eval/accuracy_instance_1": 0.9}
            assert cb.on_eval(run) is None  # type: ignore[arg-type]
        assert run.saved == saved_at and cb.saves == len(saved_at) and cb.best_at == saved_at[-1]
    # Without labels the task's metric is eval/return; another figure is refused with the ones there are.
    cb, run = meta_rl.SaveBestCheckpoint(), FakeRun(tmp_path)
    run.evaluation = {"eval/return": 3.0}
    cb.on_eval(run)  # type: ignore[arg-type]
    assert cb.best == 3.0
    with pytest.raises(ConfigError, match=r"'eval/accuracy_instance_2' is not among.*\(eval/return\)"):
        meta_rl.SaveBestCheckpoint("eval/accuracy_instance_2").on_eval(run)  # type: ignore[arg-type]


def test_best_checkpoint_is_the_best_evaluation_and_loads(proto_dataset: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    cfg = tiny_config(proto_dataset, 5, eval_every=1, eval_episodes=8, log_to=["jsonl"])
    best_cb = meta_rl.SaveBestCheckpoint()
    train(cfg, run_dir, progress=False, callbacks=[best_cb])
    evals = [row for row in jsonl(run_dir) if "eval/accuracy" in row]
    assert [row["env_steps"] for row in evals] == [k * S for k in range(1, 6)]
    top = max(evals, key=lambda row: row["eval/accuracy"])  # the first of equal maxima: only improvements save
    best = load_checkpoint(run_dir / BEST_NAME)
    assert best["counters"]["env_steps"] == top["env_steps"] == best_cb.best_at
    assert best["evaluation"] == {k: v for k, v in top.items() if k != "env_steps"}
    assert best.keys() >= load_checkpoint(run_dir / CHECKPOINT_NAME).keys()  # checkpoint.pt's format

    agent = meta_rl.load(run_dir, checkpoint="best")
    assert all(torch.equal(p, best["policy"][k]) for k, p in agent.policy.state_dict().items())
    assert agent.checkpoint["counters"] == best["counters"]
    assert main(["eval", str(run_dir), "--checkpoint", "best", "--episodes", "8", "--json"]) == 0
    assert "accuracy_by_instance" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"checkpoint = 'top'; use 'last'.*or 'best'"):
        meta_rl.load(run_dir, checkpoint="top")

    # A resumed run starts from the best that best.pt records: an equal figure does not replace it, a better one does.
    resumed, run = meta_rl.SaveBestCheckpoint(), FakeRun(run_dir, resumed=True)
    run.env_steps = 5 * S  # the checkpoint it resumes
    resumed.on_training_start(run)  # type: ignore[arg-type]
    for step, value in ((6 * S, top["eval/accuracy"]), (7 * S, top["eval/accuracy"] + 0.01)):
        run.env_steps, run.evaluation = step, {"eval/accuracy": value}
        resumed.on_eval(run)  # type: ignore[arg-type]
    assert run.saved == [7 * S]
    # One written after the checkpoint a run resumes (by a process killed since) is no bar: the next evaluation
    # replaces it, however good it was.
    stale, run = meta_rl.SaveBestCheckpoint(), FakeRun(run_dir, resumed=True)
    run.env_steps = top["env_steps"] - S
    stale.on_training_start(run)  # type: ignore[arg-type]
    run.env_steps, run.evaluation = top["env_steps"], {"eval/accuracy": top["eval/accuracy"] - 0.5}
    stale.on_eval(run)  # type: ignore[arg-type]
    assert run.saved == [top["env_steps"]]
    (run_dir / BEST_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"has no best.pt: a run writes it when trained with the "
                                              r"SaveBestCheckpoint callback"):
        meta_rl.load(run_dir, checkpoint="best")
    assert main(["eval", str(run_dir), "--checkpoint", "best"]) == 2
    assert "has no best.pt" in capsys.readouterr().err

    # A best.pt that records no evaluation has nothing to beat.
    best_cb_again = meta_rl.SaveBestCheckpoint()
    run = FakeRun(run_dir, resumed=True)
    (run_dir / BEST_NAME).write_bytes((run_dir / CHECKPOINT_NAME).read_bytes())  # a best.pt without "evaluation"
    best_cb_again.on_training_start(run)  # type: ignore[arg-type]
    run.evaluation = {"eval/accuracy": 0.0}
    best_cb_again.on_eval(run)  # type: ignore[arg-type]
    assert run.saved == [0]  # nothing recorded to beat


def test_best_checkpoint_is_written_atomically(proto_dataset: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A best.pt write that fails (disk full at the rename) leaves the previous best.pt whole and no temporary file."""
    import meta_rl.atomic

    class SaveEveryEval(Callback):
        def on_eval(self, run: RunView) -> None:
            run.save_checkpoint(BEST_NAME)

    real_replace, writes = os.replace, []

    def replace(src: str, dst: str) -> None:
        if Path(dst).name == BEST_NAME:
            writes.append(dst)
            if len(writes) == 2:
                raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(meta_rl.atomic.os, "replace", replace)
    run_dir = tmp_path / "run"
    cfg = tiny_config(proto_dataset, 4, eval_every=1, eval_episodes=4, checkpoint_every=1)
    with pytest.raises(CheckpointWriteError, match=r"best.pt: the disk is full.*no temporary file was left behind"):
        train(cfg, run_dir, progress=False, callbacks=[SaveEveryEval()])
    assert load_checkpoint(run_dir / BEST_NAME)["counters"]["update"] == 1  # the first one, whole
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------
# log_to: CSV, JSON lines, stdout
# --------------------------------------------------------------------------------------------


def test_csv_and_jsonl_hold_every_log_and_evaluation(proto_dataset: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = tiny_config(proto_dataset, 4, eval_every=2, eval_episodes=4, log_to=["csv", "jsonl"])
    result = train(cfg, run_dir, progress=False)
    rows = jsonl(run_dir)
    steps = [row["env_steps"] for row in rows]
    assert steps == sorted(steps)
    train_rows = [row for row in rows if "charts/return" in row]
    eval_rows = [row for row in rows if "eval/accuracy" in row]
    assert [row["env_steps"] for row in train_rows] == [S, 2 * S, 3 * S, 4 * S]
    assert [row["env_steps"] for row in eval_rows] == [2 * S, 4 * S]
    assert len(rows) == 6 and all(all(k == "env_steps" or k.startswith("eval/") for k in row) for row in eval_rows)
    assert {"losses/policy", "charts/accuracy", "charts/steps_per_second"} <= train_rows[0].keys()
    assert {k: v for k, v in eval_rows[-1].items() if k != "env_steps"} == {
        k: v for k, v in result.items() if k.startswith("eval/")}

    # The CSV: a header of every key (the evaluation's came after the first rows: the file was rewritten), the
    # same rows, empty where a row lacks a key.
    header, table = csv_rows(run_dir)
    assert header[0] == "env_steps" and set(header) == set().union(*rows)
    assert len(table) == len(rows)
    for line, row in zip(table, rows):
        assert {k for k, v in line.items() if v != ""} == row.keys()
        assert all(float(line[k]) == pytest.approx(v, rel=1e-12) for k, v in row.items())
    assert not list(run_dir.glob("events.out.tfevents.*"))


def test_stdout_prints_a_table_per_log(proto_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config(proto_dataset, 2, eval_every=2, eval_episodes=4, log_to=["stdout", "tensorboard"])
    train(cfg, tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    tables = re.findall(r"^-+\n((?:\|.*\|\n)+)-+$", out, re.M)
    assert len(tables) == 3, out  # two logs and the evaluation
    assert re.search(r"^\| env_steps +\| 36 +\|$", tables[0], re.M)
    assert re.search(r"^\| charts/ +\| +\|\n(\|     \S+ +\| \S+ +\|\n)*\|     return +\| -?[0-9.]+", tables[0], re.M)
    assert re.search(r"^\| eval/ +\| +\|\n\|     accuracy +\| [0-9.]+", tables[2], re.M)
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert not (tmp_path / "run" / "progress.csv").exists()


def test_resume_drops_the_rows_logged_after_the_checkpoint(proto_dataset: str, tmp_path: Path) -> None:
    """A run killed at update 3 (checkpoint at 2) logged a row past its checkpoint, and its last JSON line was cut
    short; the resumed run's files hold each step once."""
    run_dir = tmp_path / "run"
    cfg = tiny_config(proto_dataset, 6, eval_every=2, eval_episodes=4, checkpoint_every=2, log_to=["csv", "jsonl"])
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg, run_dir, progress=False, callbacks=[Crash(3)])
    assert [row["env_steps"] for row in jsonl(run_dir)] == [S, 2 * S, 2 * S, 3 * S]  # 3 * S: after the checkpoint
    with open(run_dir / "progress.jsonl", "a") as f:
        f.write('{"env_steps": 108, "charts/ret')
    result = train(cfg, run_dir, resume=True, progress=False)
    assert result["updates"] == 6
    for rows in (jsonl(run_dir), [{k: v for k, v in r.items() if v} for r in csv_rows(run_dir)[1]]):
        train_steps = [int(row["env_steps"]) for row in rows if "charts/return" in row]
        eval_steps = [int(row["env_steps"]) for row in rows if "eval/accuracy" in row]
        assert train_steps == [k * S for k in range(1, 7)]
        assert eval_steps == [2 * S, 4 * S, 6 * S]
    # A log edited by hand is not silently dropped: the resume names the line and the fix.
    lines = (run_dir / "progress.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "progress.jsonl").write_text("".join([lines[0], "not json\n", *lines[1:]]))
    longer = dataclasses.replace(cfg, total_env_steps=7 * S)
    with pytest.raises(ConfigError, match=r"progress.jsonl: line 2 is not a JSON object.*move it away"):
        train(longer, run_dir, resume=True, progress=False)


def test_a_fresh_run_starts_its_logs_anew_and_run_files_are_accepted(proto_dataset: str, tmp_path: Path) -> None:
    """What an attempt without a checkpoint left (logs, best.pt) is the run's own: accepted and replaced."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "progress.jsonl").write_text('{"env_steps": 999999, "charts/return": 1.0}\n')
    (run_dir / "progress.csv").write_text("env_steps,charts/old\n999999,1.0\n")
    (run_dir / BEST_NAME).write_bytes(b"stale")
    check_holds_only_run_files(run_dir)
    cfg = tiny_config(proto_dataset, 2, eval_every=0, log_to=["csv", "jsonl"])
    train(cfg, run_dir, progress=False)
    assert [row["env_steps"] for row in jsonl(run_dir)] == [S, 2 * S]
    header, table = csv_rows(run_dir)
    assert "charts/old" not in header and [int(r["env_steps"]) for r in table] == [S, 2 * S]
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds files a meta-rl run did not write \(checkpoint.pt, notes.txt\)"):
        check_holds_only_run_files(run_dir)


@pytest.mark.parametrize(("value", "message"), [
    ([], r"log_to = \[\] would log nothing; name at least one of tensorboard, csv, jsonl, stdout"),
    (["csv", "csv"], r"log_to names 'csv' more than once"),
    (["tensorbord"], r"'tensorbord', which is not a writer.*did you mean 'tensorboard'\?"),
    ("csv", r"log_to must be a list of writer names.*log_to='\[\"tensorboard\",\"csv\"\]' on the command line"),
])
def test_bad_log_to_is_refused(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(log_to=value).validate()


def test_log_to_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_usability import TINY

    assert main(["train", "--run-dir", str(tmp_path / "a"), "--no-progress", "log_to=csv", *TINY]) == 2
    assert "log_to must be a list of writer names" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    # The README's line, in a scratch folder, with the tiny settings added.
    line = readme_block("### Callbacks and loggers", "bash").strip()
    argv = shlex.split(line)
    assert argv[:4] == ["meta-rl", "train", "--run-dir", "runs/logged"]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main([*argv[1:], "--no-progress", *TINY]) == 0
    finally:
        os.chdir(cwd)
    run_dir = tmp_path / "runs" / "logged"
    assert json.loads((run_dir / "config.json").read_text())["log_to"] == ["tensorboard", "csv", "jsonl"]
    assert len(jsonl(run_dir)) == 3 and len(csv_rows(run_dir)[1]) == 3  # 600 steps: 3 updates of 4 x 50
    assert list(run_dir.glob("events.out.tfevents.*"))


def test_readme_callbacks_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    code = readme_block("### Callbacks and loggers", "python")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    evals = [line for line in printed if line.startswith("update ")]
    assert evals and all(re.fullmatch(r"update \d+: held-out return [0-9.]+", line) for line in evals)
    result = namespace["result"]
    assert printed[-1] == f"{result.get('stopped_by', 'ran its budget')} {result['env_steps']}"
    assert (tmp_path / "runs" / "bandit" / "progress.csv").is_file()
    best = load_checkpoint(tmp_path / "runs" / "bandit" / BEST_NAME)
    assert best["evaluation"]["eval/return"] == namespace["callbacks"][2].best
    assert isinstance(namespace["best"], meta_rl.TrainedAgent)


# --------------------------------------------------------------------------------------------
# several ranks: the stop is agreed
# --------------------------------------------------------------------------------------------

DDP_SCRIPT = f"""
import json, os, sys
sys.path.insert(0, {str(TESTS)!r})
from conftest import PROTO_DATASET, make_prototype_splits
from meta_rl.data import register_dataset
register_dataset(PROTO_DATASET, make_prototype_splits())
import meta_rl
from tiny_runs import tiny_config
from meta_rl.train import train

class StopAt2(meta_rl.Callback):
    def on_update(self, run):
        return run.update < 2

cfg = tiny_config(PROTO_DATASET, 10, eval_every=0, checkpoint_every=1000, normalize_advantages=False,
                  log_to=["jsonl"])
result = train(cfg, sys.argv[1], progress=False, callbacks=[StopAt2()])
with open(os.path.join(sys.argv[2], "result-" + os.environ["RANK"] + ".json"), "w") as f:
    json.dump(result, f)  # a file each: two ranks printing to one pipe can interleave their lines
"""


def test_a_callback_stop_is_agreed_by_every_rank(tmp_path: Path) -> None:
    """Under torchrun the callbacks run on rank 0; its stop ends both ranks after the same update, normally."""
    script = tmp_path / "ddp_callbacks.py"
    script.write_text(DDP_SCRIPT)
    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # torchrun, from this interpreter
    proc = subprocess.run([*torchrun, "--standalone", "--nproc-per-node", "2", str(script), str(tmp_path / "run"),
                           str(tmp_path)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = {rank: json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in ("0", "1")}
    assert ranks["0"]["updates"] == ranks["1"]["updates"] == 2
    assert ranks["0"]["stopped_by"] == "StopAt2" and ranks["1"]["stopped_by"] == "a callback on rank 0"
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert ckpt["counters"]["update"] == 2 and len(set(ckpt["distributed"]["param_digests"])) == 1
    assert [row["env_steps"] for row in jsonl(tmp_path / "run")] == [2 * S, 4 * S]  # only rank 0 wrote


# --------------------------------------------------------------------------------------------
# review fixes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eval_every", [4, 3])
def test_a_stop_asked_when_the_budget_is_spent_names_no_callback(proto_dataset: str, tmp_path: Path,
                                                                  eval_every: int) -> None:
    """Whether the last update is also an evaluation point or not, the budget ended the run: no ``stopped_by``."""
    cfg = tiny_config(proto_dataset, 4, eval_every=eval_every, eval_episodes=4, log_to=["jsonl"])
    result = train(cfg, tmp_path / "run", progress=False, callbacks=[StopAt("on_eval", 4)])
    assert result["updates"] == 4 and "stopped_by" not in result


def test_a_stop_at_a_checkpoint_writes_that_checkpoint_once(proto_dataset: str, tmp_path: Path) -> None:
    rec = Recorder()
    cfg = tiny_config(proto_dataset, 6, eval_every=0, checkpoint_every=2, log_to=["jsonl"])
    result = train(cfg, tmp_path / "run", progress=False, callbacks=[StopAt("on_checkpoint", 2), rec])
    assert result["updates"] == 2 and result["stopped_by"] == "StopAt(on_checkpoint)"
    assert [c for c in rec.calls if c[0] == "checkpoint"] == [("checkpoint", 2)]


def test_save_checkpoint_takes_plain_pt_names_only(tmp_path: Path) -> None:
    from meta_rl.callbacks import RunView as View

    class Trainer:
        run_dir, ckpt_path = tmp_path, tmp_path / CHECKPOINT_NAME

        def save_checkpoint(self, path: Path) -> None:
            path.write_bytes(b"")

    view = View(Trainer())
    for bad in ("config.json", "progress.csv", "sub/x.pt", str(tmp_path / "elsewhere.pt"), CHECKPOINT_NAME):
        with pytest.raises(ValueError, match=r"save_checkpoint"):
            view.save_checkpoint(bad)
    assert view.save_checkpoint("update-100.pt") == tmp_path / "update-100.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["update-100.pt"]


def test_numpy_thresholds_and_helper_methods_are_taken() -> None:
    import numpy as np

    assert meta_rl.StopOnThreshold("eval/return", np.float32(0.5)).threshold == 0.5
    assert meta_rl.StopOnThreshold("eval/return", np.int64(7)).threshold == 7.0

    class Best(meta_rl.SaveBestCheckpoint):
        def on_new_best(self, run: RunView) -> None:  # a helper of the user's, not a misspelt hook
            pass

    assert len(check_callbacks([Best()])) == 1


def test_a_failing_set_up_closes_the_event_writer(proto_dataset: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import meta_rl.train as train_module

    real = train_module.make_vec_env

    def no_heldout(cfg: Any, split: str, num_envs: int, device: torch.device) -> Any:
        if split == cfg.heldout_split:
            raise RuntimeError("the held-out split cannot be built")
        return real(cfg, split, num_envs, device)

    monkeypatch.setattr(train_module, "make_vec_env", no_heldout)
    hook = threading.excepthook
    cfg = tiny_config(proto_dataset, 2, eval_every=1, eval_episodes=4)
    with pytest.raises(RuntimeError, match="held-out split"):
        train(cfg, tmp_path / "run", progress=False)
    assert threading.excepthook is hook  # the event writer was closed (it puts the hook back)
