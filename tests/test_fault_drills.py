"""tests/faults.py counts lost runs from outcomes and distinct bad inputs once; an empty selection fails."""

from __future__ import annotations

import faults  # beside this file: pytest puts tests/ on sys.path
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lost_runs_come_from_comparing_with_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    def whole(lab: faults.Lab, out: faults.Outcome) -> None:
        run_dir = lab.folder("whole")
        out.expect(run_dir, 3)
        faults.train(lab.config(3), run_dir, progress=False)

    def short(lab: faults.Lab, out: faults.Outcome) -> None:  # claims 3 updates, trains 2: a lost run
        run_dir = lab.folder("short")
        out.expect(run_dir, 3)
        faults.train(lab.config(2), run_dir, progress=False)

    def crashed(lab: faults.Lab, out: faults.Outcome) -> None:  # never wrote its checkpoint
        out.expect(lab.folder("crashed"), 3)
        raise RuntimeError("boom")

    outcomes = faults.run_all([("whole", whole), ("short", short), ("crashed", crashed)])
    assert [(o.name, o.passed, o.runs, o.lost_runs) for o in outcomes] == [
        ("whole", True, 1, 0), ("short", False, 1, 1), ("crashed", False, 1, 1)]
    assert "1 of 1 runs differ" in outcomes[1].detail and "boom" in outcomes[2].detail


def test_bad_inputs_are_counted_once() -> None:
    out = faults.Outcome("x")
    assert [out.hostile(w) for w in ("step(None)", "step(3)", "step(None)")] == [True, True, False]
    assert out.bad_inputs == 2


def test_only_matching_nothing_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert faults.main(["--only", "nosuchscenario"]) == 2
    err = capsys.readouterr().err
    assert "matches no scenario" in err and "'SIGKILL x4'" in err


def test_the_drill_has_at_least_twelve_scenarios() -> None:
    assert len(faults.SCENARIOS) >= 12
    assert len({name for name, _ in faults.SCENARIOS}) == len(faults.SCENARIOS)
