"""`experiments/gpu_check.py` (issue 35's one device check) run end to end on the CPU with tiny budgets, its rules
for failing, hanging and over-budget steps on stand-in steps, and `bench.py switches` (no speed is asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from experiment_scripts import import_script

from meta_rl.data import content_hash
from meta_rl.errors import ConfigError

gpu_check = import_script("gpu_check")
bench = import_script("bench")

TINY_STEPS = ("setup", "switches", "suite_bandit")


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory, glyph_splits: Any) -> dict[str, Any]:
    """A tiny CPU run of three steps (the glyph cache built first, as the setup step does on the GPU machine)."""
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--steps", ",".join(TINY_STEPS), "--out", str(out)])
    return {"rc": rc, **json.loads(out.read_text())}


def test_a_tiny_cpu_run_records_every_step(tiny_report: dict[str, Any]) -> None:
    steps = tiny_report["steps"]
    assert tiny_report["rc"] == 0 and list(steps) == list(gpu_check.STEP_NAMES)
    for name, record in steps.items():
        if name in TINY_STEPS:
            assert record["status"] == "ok" and record["runs"] and all(r["rc"] == 0 for r in record["runs"]), name
        else:
            assert record == {"status": "skipped", "reason": "not in --steps"}
    (setup,) = steps["setup"]["runs"][0]["result"]
    assert setup["glyphs_content_hash"] == content_hash("glyphs") and setup["torch"] == torch.__version__
    assert setup["cuda_available"] is False and setup["glyphs_seconds"] >= 0


def test_the_switches_step_times_each_switch_off_and_on_in_pairs(tiny_report: dict[str, Any]) -> None:
    runs = tiny_report["steps"]["switches"]["runs"]
    assert len(runs) == len(gpu_check.CPU_SWITCHES)  # one process per switch
    (result,) = runs[0]["result"]
    (row,) = result["rows"]
    repeats = gpu_check.TINY.switch_repeats
    assert (row["switch"], row["off"], row["on"]) == ("encoder_precision", "float32", "bfloat16")
    assert len(row["rounds"]) == repeats and all(len(pair) == 2 and min(pair) > 0 for pair in row["rounds"])
    assert row["off_steps_per_s"]["n"] == row["on_steps_per_s"]["n"] == row["on_over_off"]["n"] == repeats
    assert result["device"] == "cpu" and result["batch"] == gpu_check.TINY.switch_batch


def test_the_suite_step_records_the_suites_json(tiny_report: dict[str, Any]) -> None:
    result = tiny_report["steps"]["suite_bandit"]["runs"][0]["result"]
    assert result["overrides"]["device"] == "cpu" and [r["task"] for r in result["rows"]] == ["bandit-k5-n100"]


def _python(name: str, code: str, cap_s: float = 30.0, *more: str) -> Any:
    """A stand-in step: ``python -c CODE`` (then ``python -c`` each of ``more``)."""
    commands = [gpu_check.Command((sys.executable, "-c", c)) for c in (code, *more)]
    return gpu_check.Step(name, cap_s, lambda _granted: commands)


HANGS = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
         "print('started', flush=True); time.sleep(60)")


def test_a_failing_or_hanging_step_is_recorded_and_the_next_runs(tmp_path: Path) -> None:
    steps = [_python("fails", "import sys; print('partial', flush=True); sys.exit(3)", 30.0, "print('{\"b\": 2}')"),
             _python("hangs", HANGS, 2.0),
             _python("after", "print('progress'); print('{\"x\": 1}')")]
    report = gpu_check.run_checks(steps, ["fails", "hangs", "after"], budget_s=60, out=tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == report
    fails, hangs, after = (report["steps"][n] for n in ("fails", "hangs", "after"))
    assert fails["status"] == "failed" and [r["rc"] for r in fails["runs"]] == [3, 0]
    assert "partial" in fails["runs"][0]["stdout_tail"] and fails["runs"][1]["result"] == [{"b": 2}]
    # Killed at its cap with the process it started (else reading its output would wait for that one's minute).
    assert hangs["status"] == "timed_out" and hangs["runs"][0]["timed_out"] and hangs["seconds"] < 20
    assert "started" in hangs["runs"][0]["stdout_tail"]
    assert after["status"] == "ok" and after["runs"][0]["result"] == [{"x": 1}]
    assert "stdout_tail" not in after["runs"][0]  # tails are kept for failures only


def test_the_budget_skips_a_step_that_does_not_fit_and_shrinks_one_that_can(tmp_path: Path) -> None:
    def granted(g: float) -> list[Any]:
        return [gpu_check.Command((sys.executable, "-c", f"print('{{\"granted\": {g}}}')"))]

    flex = gpu_check.Step("flex", 100.0, granted, min_s=5.0)
    steps = [_python("quick", "pass", 5.0), _python("big", "pass", 100.0), flex, _python("last", "pass", 10.0)]
    report = gpu_check.run_checks(steps, ["quick", "big", "flex", "last"], budget_s=30, out=tmp_path / "r.json")
    quick, big, shrunk, last = report["steps"].values()
    assert quick["status"] == last["status"] == shrunk["status"] == "ok"
    assert big["status"] == "skipped" and "cap of 100 s does not fit" in big["reason"]
    # flex got what the budget left after the 10 s kept for "last", not its cap of 100.
    (result,) = shrunk["runs"][0]["result"]
    assert 5.0 <= result["granted"] <= 20.0 and shrunk["granted_s"] == pytest.approx(result["granted"], abs=0.1)

    report = gpu_check.run_checks([flex, _python("last", "pass", 10.0)], ["flex", "last"], budget_s=12,
                                  out=tmp_path / "r2.json")
    assert report["steps"]["flex"]["status"] == "skipped" and "at least 5 s" in report["steps"]["flex"]["reason"]
    assert report["steps"]["last"]["status"] == "ok"


def test_the_gpu_table_lists_the_cuda_switches_and_sizes_the_time_to_accuracy_cap(tmp_path: Path) -> None:
    steps = {s.name: s for s in gpu_check.step_table(gpu_check.FULL, "cuda", tmp_path)}
    assert list(steps) == list(gpu_check.STEP_NAMES)
    switches = [c.argv[c.argv.index("--switch") + 1] for c in steps["switches"].commands(0)]
    assert switches == ["encoder_precision=float32:bfloat16", "cuda_graphs=false:true", "compile_update=false:true"]
    tta = steps["time_to_accuracy"]

    def cap_minutes(granted: float) -> float:
        (command,) = tta.commands(granted)
        return float(command.argv[command.argv.index("--cap-minutes") + 1])

    assert cap_minutes(tta.cap_s) == 3.0 and cap_minutes(85) == 1.0 and tta.min_s is not None
    for step in steps.values():
        for command in step.commands(step.cap_s):
            assert "cpu" not in command.argv and "device=cpu" not in command.argv


def test_the_plateau_step_runs_only_when_named_and_compares_plain_and_turned_classes(tmp_path: Path) -> None:
    assert "plateau" in gpu_check.STEP_NAMES and "plateau" not in gpu_check.selected_steps(None)
    assert gpu_check.selected_steps("plateau") == ["plateau"]
    steps = {s.name: s for s in gpu_check.step_table(gpu_check.FULL, "cuda", tmp_path)}
    plain, turned = steps["plateau"].commands(steps["plateau"].cap_s)
    assert plain.argv[plain.argv.index("--cap-minutes") + 1] == "3.0"
    assert plain.argv[plain.argv.index("--num-envs") + 1] == "1024"
    assert turned.argv[: len(plain.argv)] == plain.argv and turned.argv[len(plain.argv):] == (
        "env_kwargs.class_transforms=8",)
    assert steps["plateau"].cap_s >= 2 * 60 * gpu_check.FULL.plateau_minutes


def test_steps_names_only_known_steps(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\['nope'\] is not a step; choose from setup, cuda_tests"):
        gpu_check.main(["--steps", "setup,nope", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


@pytest.mark.usefixtures("one_thread", "glyph_splits")
def test_bench_switches_prints_a_row_of_off_and_on_per_switch(capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["switches", "--device", "cpu", "--batch", "4", "--seconds", "0.2", "--warmup", "0.1", "--repeats", "2",
                "--threads", "1", "--switch", "num_envs=4:8", "hidden=16"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["switch", "off", "steps/s", "on", "steps/s", "on", "/", "off"] and len(lines) == 3
    cells = lines[1].split()
    assert cells[0] == "num_envs" and cells[1] == "4:" and "8:" in cells and cells[-3].startswith("x")
    assert lines[2].startswith("B = 4 on cpu, 2 rounds of off then on")


@pytest.mark.parametrize(("switch", "error", "message"), [
    ("num_envs=4", ValueError, "must look like KEY=OFF:ON"),
    ("device=cpu:cuda:0", ValueError, "must look like KEY=OFF:ON"),
    ("num_envs=8:8", ValueError, "the same value '8' off and on"),
    ("hidden=8:16", ValueError, r"\['hidden'\] is both a --switch and a key=value override"),
    ("no_such_key=false:true", ConfigError, r"unknown key\(s\) \['no_such_key'\]"),
])
def test_bench_switches_refuses_a_switch_it_cannot_time(switch: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        bench.main(["switches", "--device", "cpu", "--switch", switch, "hidden=32"])
