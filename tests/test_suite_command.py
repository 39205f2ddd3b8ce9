"""``python experiments/suite.py`` end to end on a tiny budget: every family trains, is evaluated and gets a row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from experiment_scripts import import_script

pytestmark = pytest.mark.usefixtures("one_thread")


def test_suite_runs_end_to_end_on_a_tiny_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = import_script("suite")

    tasks = "bandit-k5-n10,mdp-n10,cartpole,glyphs-reward,glyphs-active"
    assert suite.main(["--tasks", tasks, "--steps", "600", "--minutes", "0", "--trials", "16",
                       "--out", str(tmp_path / "s"), "num_envs=4", "hidden=8", "encoder_hidden=[8]"]) == 0
    rows = {r["task"]: r for r in json.loads((tmp_path / "s" / "suite.json").read_text())["rows"]}
    assert list(rows) == tasks.split(",")
    assert set(rows["bandit-k5-n10"]["baselines"]) >= {"random", "gittins", "thompson", "ucb1", "oracle"}
    assert set(rows["mdp-n10"]["baselines"]) == {"random", "value_iteration", "psrl"}
    assert set(rows["cartpole"]["baselines"]) == {"random", "oracle"}
    assert len(rows["cartpole"]["return_by_episode"]) == 2
    assert len(rows["glyphs-reward"]["oracle_by_instance"]) == 10 and "share_of_oracle" in rows["glyphs-reward"]
    assert "request_rate_by_instance" in rows["glyphs-active"]
    table = (tmp_path / "s" / "suite.md").read_text()
    assert table.count("\n") == 2 + 5 and "| bandit-k5-n10 |" in table and "RL² 6.7" in table
    assert "| glyphs-reward |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown task"):
        suite.main(["--tasks", "nope", "--steps", "10"])
    with pytest.raises(SystemExit, match="exists"):
        suite.main(["--tasks", "bandit-k5-n10", "--steps", "10", "--out", str(tmp_path / "s")])


def test_episode_change_is_reported_with_its_paired_interval() -> None:
    """ep 2 - ep 1 carries the paired interval of the per-task change, not episode 2's own interval."""
    suite = import_script("suite")

    two = {"return_per_trial": 3.0, "return_per_trial_ci95": 0.5, "return_by_episode": {"1": 1.0, "2": 2.0},
           "ci95": {"1": 0.4, "2": 0.9}, "improvement": 1.0, "improvement_ci95": 0.12}
    assert suite._cell(two) == "3.00 ± 0.50; by episode 1.0 / 2.0 (ep 2 - ep 1 +1.00 ± 0.12)"
    three = {**two, "return_by_episode": {"1": 1.0, "2": 1.5, "3": 2.5}, "ci95": {"1": 0.4, "2": 0.9, "3": 1.0},
             "improvement": 1.5, "improvement_ci95": 0.2}
    assert suite._cell(three).endswith("(ep 2 - ep 1 +0.50; last - 1st +1.50 ± 0.20)")
