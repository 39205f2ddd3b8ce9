"""`experiments/bench.py time-to-accuracy` end to end on a tiny budget (our side only; no speed is asserted)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from experiment_scripts import import_script

pytestmark = pytest.mark.usefixtures("one_thread", "glyph_splits")


def test_time_to_accuracy_trains_with_the_trainers_update_and_the_overrides(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = import_script("bench")

    calls: list[Any] = []
    update = bench.optimize

    def spy(policy: Any, optimizer: Any, algorithm: Any, ro: Any, cfg: Any, **kw: Any) -> Any:
        calls.append(cfg)
        return update(policy, optimizer, algorithm, ro, cfg, **kw)

    monkeypatch.setattr(bench, "optimize", spy)
    bench.main(["time-to-accuracy", "--json", "--no-sb3", "--cap-minutes", "0.01", "--eval-seconds", "0.2",
                "--eval-episodes", "4", "--num-envs", "2", "--target", "1.01", "hidden=8", "learning_rate=0.003"])
    out = json.loads(capsys.readouterr().out)
    ours = out["ours"]
    assert out["ours_reached"] is False and out["ours_seconds"] is None  # a target above 1 is never reached
    assert ours["overrides"] == ["hidden=8", "learning_rate=0.003"] and ours["num_envs"] == 2
    # The trainer's own update (PopArt statistics included) ran every update, with the overridden config.
    assert calls and all(c.hidden == 8 and c.learning_rate == 0.003 and c.num_envs == 2 for c in calls)
    assert ours["env_steps"] == len(calls) * 2 * 50
    # The curve: [training seconds, env steps, accuracy at the 2nd instance], in order, up to the cap.
    curve = ours["curve"]
    assert curve and all(len(point) == 3 and 0.0 <= point[2] <= 1.0 for point in curve)
    assert [p[1] for p in curve] == sorted(p[1] for p in curve) and curve[-1][1] == ours["env_steps"]
    assert curve[-1][0] >= 0.6
