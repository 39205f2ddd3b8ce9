"""``python experiments/suite.py`` end to end on a tiny budget: every family trains, is evaluated and gets a row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_suite_runs_end_to_end_on_a_tiny_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import suite  # experiments/ is on sys.path (conftest.py)

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
