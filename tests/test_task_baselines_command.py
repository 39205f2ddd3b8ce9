"""``python -m meta_rl.envs.task_baselines`` picks settings with ``--tasks`` (whole words) and reports progress."""

from __future__ import annotations

import pytest

from meta_rl.envs.task_baselines import main


def test_tasks_picks_whole_labels_and_progress_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--tasks", "n=10 k=5", "MDP n=10", "--trials", "20", "--num-envs", "20"])
    out, err = capsys.readouterr()
    labels = [line.split(":")[0] for line in out.splitlines()]
    assert labels == ["bandit n=10 k=5", "tabular MDP n=10"]  # not k=50, not MDP n=... of other lengths
    assert "gittins" in out and "psrl" in out
    assert "[1/2] bandit n=10 k=5: gittins took" in err and "[2/2] tabular MDP n=10: psrl took" in err


def test_tasks_that_match_nothing_are_refused_with_the_labels(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--tasks", "n=7"])
    assert done.value.code == 2
    assert "no setting matches" in capsys.readouterr().err
