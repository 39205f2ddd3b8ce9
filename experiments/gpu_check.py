"""One device check in one call: named steps, each a subprocess with its own time cap, into one JSON file.

``experiments/gpu_check.sh`` runs this on a borrowed GPU machine (issue 35)::

    python experiments/gpu_check.py --out gpu_check.json                 # every step, 8-minute budget
    python experiments/gpu_check.py --steps setup,throughput --out x.json
    python experiments/gpu_check.py --device cpu --tiny --out x.json     # the same steps on a CPU, tiny budgets

The steps (:func:`step_table`), in order:

* ``setup``: versions (Python, torch, CUDA, GPU, driver) and the glyph dataset's content hash and build seconds;
* ``cuda_tests``: ``pytest -k cuda tests/`` (the tests named or marked cuda), pass / fail / skip counts;
* ``throughput``: ``bench.py gpu`` (env and end-to-end training steps/s) at two batches, MLP and CNN encoders;
* ``switches``: ``bench.py switches``, one process per speed switch (off and on alternated in it);
* ``time_to_accuracy``: ``bench.py time-to-accuracy`` on the default task, its training cap what the budget
  leaves after the steps behind it (at most 3 minutes);
* ``suite_bandit`` and ``suite_mdp``: ``suite.py`` on ``bandit-k5-n100`` and ``mdp-n10`` for a minute each;
* ``plateau`` (only when ``--steps`` names it: a second call, ``--steps plateau``): issue 35's decisive run on
  where 2nd-instance accuracy stops, ``bench.py time-to-accuracy`` at B = 1024 for 3 minutes with the default task
  as it is, then with its training classes turned (``env_kwargs.class_transforms=8``), 1000 val tasks an
  evaluation (BENCHMARKS.md § "Where the GPU plateau comes from").

Each command's stdout is read as JSON lines (or the JSON file it writes, or pytest's counts); a command that fails
or runs past its step's cap is recorded (exit status, seconds, the tails of its stdout and stderr) and the next runs.
A step whose cap no longer fits in what is left of ``--budget-minutes`` is recorded as skipped, with why; so is a
step left out by ``--steps``. The JSON file is rewritten after every step, so a run stopped from outside still
leaves what it measured. Exit status: 0 when every step that ran passed, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_STEPS", "FULL", "PLATEAU_RUNS", "STEP_NAMES", "TINY", "Command", "Sizes",
    "Step", "main", "probe", "run_checks", "step_table",
]

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
TAIL_CHARS = 3000  # of stdout and stderr kept for a command that failed


def json_lines(stdout: str) -> list[Any]:
    """The lines of ``stdout`` that are JSON objects, parsed (progress and tables are left out)."""
    found = []
    for line in stdout.splitlines():
        text = line.strip()
        if text.startswith("{"):
            try:
                found.append(json.loads(text))
            except json.JSONDecodeError:
                continue
    return found


_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|xfailed|xpassed|errors?|warnings?)\b")


def pytest_counts(stdout: str) -> dict[str, int]:
    """pytest's closing counts (``{"passed": 6, "skipped": 2, ...}``) from its last summary line; ``{}`` if none."""
    for line in reversed(stdout.splitlines()):
        counts = {kind.rstrip("s") if kind.startswith(("error", "warning")) else kind: int(n)
                  for n, kind in _PYTEST_COUNT.findall(line)}
        if counts and re.search(r" in [\d.]+s", line):
            return counts
    return {}


@dataclass(frozen=True)
class Command:
    """One subprocess of a step, run from the repository's root.

    Attributes:
        argv: the command line.
        parse: what its stdout holds (default: JSON lines).
        reads: a JSON file the command writes, recorded as its result instead of its stdout's.
    """

    argv: tuple[str, ...]
    parse: Callable[[str], Any] = json_lines
    reads: Path | None = None


@dataclass(frozen=True)
class Step:
    """A named step: commands run one after the other inside ``cap_s`` seconds in all.

    Attributes:
        name: the step's name in the JSON file and in ``--steps``.
        cap_s: the most seconds the step may take.
        commands: the step's commands for the seconds it is granted (a step that shrinks to fit sizes its work from
            them; the others ignore them).
        min_s: for a step that shrinks to fit, the fewest seconds it can use: it is granted what the budget
            leaves after the least seconds of the selected steps behind it, at most ``cap_s``, and skipped below
            ``min_s``. None (the default): the step runs only where ``cap_s`` fits in what is left of the budget.
    """

    name: str
    cap_s: float
    commands: Callable[[float], list[Command]]
    min_s: float | None = None

    def __post_init__(self) -> None:
        if self.min_s is not None and not 0 < self.min_s <= self.cap_s:
            raise ValueError(f"step {self.name!r}: min_s = {self.min_s} must be above 0 and at most cap_s = "
                             f"{self.cap_s}.")

    @property
    def least_s(self) -> float:
        """The fewest seconds the step runs in (its ``min_s``, else its ``cap_s``)."""
        return self.cap_s if self.min_s is None else self.min_s


@dataclass(frozen=True)
class Sizes:
    """Every budget the steps use: :data:`FULL` on a GPU, :data:`TINY` for a test of the whole run on a CPU."""

    threads: int
    setup_s: float
    tests_s: float
    throughput_batches: tuple[int, ...]
    throughput_seconds: float
    throughput_warmup: float
    throughput_s: float
    switch_batch: int
    switch_seconds: float
    switch_warmup: float
    switch_repeats: int
    switches_s: float
    tta_envs: int
    tta_max_minutes: float
    tta_overhead_s: float
    tta_min_s: float
    tta_eval_seconds: float
    tta_eval_episodes: int
    suite_minutes: float
    suite_trials: int
    suite_s: float
    plateau_minutes: float
    plateau_eval_seconds: float
    plateau_eval_episodes: int
    plateau_s: float


#: The GPU run (an H100 or H200 with 16 cores). Expected there: setup about 25 s (the glyphs built in about 17 s),
#: cuda_tests 30, throughput 60, switches 80 (more where a switch compiles), each suite 70: about 5.5 minutes, so
#: that time_to_accuracy trains for what an 8-minute budget leaves (1.5 to 2 minutes; 3 at most, with --steps).
FULL = Sizes(threads=8, setup_s=45, tests_s=75, throughput_batches=(4096, 16384), throughput_seconds=2.0,
             throughput_warmup=1.0, throughput_s=80, switch_batch=4096, switch_seconds=2.0, switch_warmup=1.0,
             switch_repeats=3, switches_s=110, tta_envs=1024, tta_max_minutes=3.0, tta_overhead_s=25, tta_min_s=75,
             tta_eval_seconds=10.0, tta_eval_episodes=256, suite_minutes=1.0, suite_trials=1000, suite_s=80,
             plateau_minutes=3.0, plateau_eval_seconds=20.0, plateau_eval_episodes=1000, plateau_s=460)
#: Every budget shrunk for a test of the whole run on a CPU (``--tiny``): 45 s of CPU time on 2 cores (87 s of wall
#: time where they were shared with other work), nearly all of it the start of each command's process.
TINY = Sizes(threads=1, setup_s=30, tests_s=60, throughput_batches=(8,), throughput_seconds=0.2,
             throughput_warmup=0.1, throughput_s=40, switch_batch=4, switch_seconds=0.2, switch_warmup=0.1,
             switch_repeats=2, switches_s=40, tta_envs=4, tta_max_minutes=0.05, tta_overhead_s=10, tta_min_s=11,
             tta_eval_seconds=0.2, tta_eval_episodes=4, suite_minutes=0.02, suite_trials=20, suite_s=40,
             plateau_minutes=0.02, plateau_eval_seconds=0.2, plateau_eval_episodes=4, plateau_s=60)

STEP_NAMES = ("setup", "cuda_tests", "throughput", "switches", "time_to_accuracy", "suite_bandit", "suite_mdp",
              "plateau")
#: The steps run without ``--steps``: all but ``plateau``, which needs a call of its own.
DEFAULT_STEPS = STEP_NAMES[:-1]
#: The two runs of the plateau step: the default task as it is, and with its training classes turned.
PLATEAU_RUNS = ((), ("env_kwargs.class_transforms=8",))
#: The speed switches timed by default on CUDA (each a RunConfig / ModelConfig / AlgorithmConfig key) and on a CPU.
CUDA_SWITCHES = ("encoder_precision=float32:bfloat16", "cuda_graphs=false:true", "compile_update=false:true")
CPU_SWITCHES = ("encoder_precision=float32:bfloat16",)


def step_table(sizes: Sizes, device: str, work: Path, switches: Sequence[str] | None = None,
               python: str = sys.executable) -> list[Step]:
    """The steps of :data:`STEP_NAMES`, in that order, with their commands.

    Args:
        sizes: the budgets (:data:`FULL` or :data:`TINY`).
        device: ``cuda`` or ``cpu``, for every step that trains.
        work: a folder for the suite's runs (each step writes under its own name).
        switches: ``KEY=OFF:ON`` for the switches step (default: :data:`CUDA_SWITCHES` on cuda, else
            :data:`CPU_SWITCHES`).
        python: the interpreter that runs each command.
    """
    s = sizes
    bench = [python, str(EXPERIMENTS / "bench.py")]
    threads = ["--threads", str(s.threads)]
    chosen = list(switches) if switches else list(CUDA_SWITCHES if device.startswith("cuda") else CPU_SWITCHES)

    def fixed(*commands: Command) -> Callable[[float], list[Command]]:
        return lambda _granted: list(commands)

    def tta(granted: float) -> list[Command]:  # the training cap is what the step was granted, less its set-up
        minutes = round(min(s.tta_max_minutes, (granted - s.tta_overhead_s) / 60), 3)
        return [Command((*bench, "time-to-accuracy", "--json", "--no-sb3", "--device", device, "--num-envs",
                         str(s.tta_envs), "--target", "0.97", "--cap-minutes", str(minutes), "--eval-seconds",
                         str(s.tta_eval_seconds), "--eval-episodes", str(s.tta_eval_episodes), *threads))]

    def suite(name: str, task: str) -> Step:
        out = work / name
        return Step(name, s.suite_s, fixed(Command(
            (python, str(EXPERIMENTS / "suite.py"), "--tasks", task, "--minutes", str(s.suite_minutes), "--trials",
             str(s.suite_trials), "--out", str(out), f"device={device}", f"torch_threads={s.threads}"),
            reads=out / "suite.json")))

    return [
        Step("setup", s.setup_s, fixed(Command((python, str(Path(__file__).resolve()), "--probe")))),
        Step("cuda_tests", s.tests_s, fixed(Command(
            (python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda", "tests/"),
            parse=pytest_counts))),
        Step("throughput", s.throughput_s, fixed(*(
            Command((*bench, "gpu", "--json", "--device", device, "--encoder", encoder, "--batch", str(batch),
                     "--seconds", str(s.throughput_seconds), "--warmup", str(s.throughput_warmup), *threads))
            for encoder in ("mlp", "cnn") for batch in s.throughput_batches))),
        Step("switches", s.switches_s, fixed(*(
            Command((*bench, "switches", "--json", "--device", device, "--batch", str(s.switch_batch), "--seconds",
                     str(s.switch_seconds), "--warmup", str(s.switch_warmup), "--repeats", str(s.switch_repeats),
                     *threads, "--switch", switch))
            for switch in chosen))),
        Step("time_to_accuracy", s.tta_overhead_s + 60 * s.tta_max_minutes, tta, min_s=s.tta_min_s),
        suite("suite_bandit", "bandit-k5-n100"),
        suite("suite_mdp", "mdp-n10"),
        Step("plateau", s.plateau_s, fixed(*(
            Command((*bench, "time-to-accuracy", "--json", "--no-sb3", "--device", device, "--num-envs",
                     str(s.tta_envs), "--target", "0.99", "--cap-minutes", str(s.plateau_minutes), "--eval-seconds",
                     str(s.plateau_eval_seconds), "--eval-episodes", str(s.plateau_eval_episodes), *threads, *extra))
            for extra in PLATEAU_RUNS))),
    ]


def _tail(text: str) -> str:
    return text[-TAIL_CHARS:]


def run_command(command: Command, timeout: float) -> dict[str, Any]:
    """Run one command (its own process group, killed whole at ``timeout`` seconds) and record what it gave."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(command.argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=max(timeout, 0.0))
        timed_out = False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it ended between the timeout and the kill
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        timed_out = True
    record: dict[str, Any] = {"argv": list(command.argv), "rc": proc.returncode, "timed_out": timed_out,
                              "seconds": round(time.monotonic() - start, 2)}
    if command.reads is not None and command.reads.is_file():
        record["result"] = json.loads(command.reads.read_text())
    else:
        record["result"] = command.parse(stdout)
    if timed_out or proc.returncode != 0:
        record.update(stdout_tail=_tail(stdout), stderr_tail=_tail(stderr))
    return record


def _grant(step: Step, left: float, reserve: float) -> tuple[float, str | None]:
    """The seconds ``step`` may run with ``left`` seconds of the budget and ``reserve`` kept for the steps behind
    it, or why it cannot run."""
    if step.min_s is None:
        if step.cap_s > left:
            return 0.0, f"its cap of {step.cap_s:.0f} s does not fit in the {left:.0f} s left of the budget"
        return step.cap_s, None
    granted = min(step.cap_s, left - reserve)
    if granted < step.least_s:
        return 0.0, (f"it needs at least {step.min_s:.0f} s; {left:.0f} s were left of the budget, {reserve:.0f} s "
                     "of them kept for the steps behind it")
    return granted, None


def run_step(step: Step, granted: float) -> dict[str, Any]:
    """Run ``step``'s commands in order within ``granted`` seconds; one that fails does not stop the next."""
    start = time.monotonic()
    runs: list[dict[str, Any]] = []
    for command in step.commands(granted):
        left = granted - (time.monotonic() - start)
        if left <= 0:
            runs.append({"argv": list(command.argv), "skipped": "the step's cap was spent by the commands before"})
            continue
        runs.append(run_command(command, left))
    ran = [r for r in runs if "rc" in r]
    status = ("timed_out" if any(r["timed_out"] for r in ran) else
              "failed" if any(r["rc"] != 0 for r in ran) or len(ran) < len(runs) else "ok")
    return {"status": status, "seconds": round(time.monotonic() - start, 2), "granted_s": round(granted, 1),
            "runs": runs}


def _write(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` whole (a temporary file, then renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)


def run_checks(steps: Sequence[Step], selected: Sequence[str], budget_s: float, out: Path,
               context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the ``selected`` steps in table order inside ``budget_s`` seconds, writing ``out`` after each.

    Args:
        steps: the step table (every step is recorded, those not selected as skipped).
        selected: names of the steps to run.
        budget_s: seconds for all of them; a step that no longer fits is skipped (see :class:`Step`).
        out: the JSON file.
        context: extra fields for the report (the command line, the sizes).

    Returns:
        The report written to ``out``: ``steps`` maps each step's name to its record.
    """
    start = time.monotonic()
    report: dict[str, Any] = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "budget_s": budget_s, **(context or {}), "elapsed_s": 0.0,
                              "steps": {s.name: {"status": "pending"} if s.name in selected else
                                        {"status": "skipped", "reason": "not in --steps"} for s in steps}}
    for i, step in enumerate(steps):
        if step.name not in selected:
            continue
        left = budget_s - (time.monotonic() - start)
        reserve = sum(s.least_s for s in steps[i + 1:] if s.name in selected)
        granted, why = _grant(step, left, reserve)
        if why is not None:
            record: dict[str, Any] = {"status": "skipped", "reason": why, "cap_s": step.cap_s}
        else:
            print(f"gpu_check: {step.name} ({granted:.0f} s at most) ...", file=sys.stderr, flush=True)
            record = {**run_step(step, granted), "cap_s": step.cap_s}
        print(f"gpu_check: {step.name}: {record['status']}" + (f" in {record['seconds']} s" if "seconds" in record
                                                                 else f" ({record['reason']})"),
              file=sys.stderr, flush=True)
        for run in record.get("runs", []):
            if run.get("rc", 0) != 0 or run.get("timed_out"):
                print(f"  {' '.join(run['argv'])}: rc {run['rc']}"
                      f"{' (timed out)' if run['timed_out'] else ''}\n{run['stderr_tail'][-800:]}",
                      file=sys.stderr, flush=True)
        report["steps"][step.name] = record
        report["elapsed_s"] = round(time.monotonic() - start, 1)
        _write(out, report)
    report["elapsed_s"] = round(time.monotonic() - start, 1)
    _write(out, report)
    return report


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _driver() -> dict[str, Any]:
    """The NVIDIA driver: its version through NVML (the ``nvidia-ml-py`` torch reads utilisation with) and the
    CUDA driver API version torch sees."""
    import torch

    found: dict[str, Any] = {"driver": None, "cuda_driver_api": None}
    get = getattr(torch._C, "_cuda_getDriverVersion", None)
    if get is not None:
        found["cuda_driver_api"] = int(get())
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        found["driver"] = version.decode() if isinstance(version, bytes) else str(version)
    except Exception as exc:  # no NVML here: the driver stays unknown, and why is recorded
        found["driver_error"] = f"{type(exc).__name__}: {exc}"
    return found


def probe() -> dict[str, Any]:
    """The setup step's record: versions, the GPU, and the glyph dataset's content hash and build seconds."""
    import platform

    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                            "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count(),
                            **{name: _version(name) for name in ("numpy", "gymnasium", "stable_baselines3",
                                                                 "sb3_contrib", "filelock", "meta-rl")}}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                    **_driver())
    from meta_rl.data import content_hash, load_splits

    cache = os.environ.get("META_RL_CACHE")
    before = sorted(p.name for p in Path(cache).glob("glyphs-*")) if cache and Path(cache).is_dir() else []
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stdout is this step's JSON line
        load_splits("glyphs")
    info["glyphs_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    info["glyphs_content_hash"] = content_hash("glyphs")
    info.update(glyphs_hash_seconds=round(time.perf_counter() - t0, 2), glyphs_cache=cache,
                glyphs_cached_before=before)
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, help="the JSON file to write (required unless --probe)")
    parser.add_argument("--budget-minutes", type=float, default=8.0, help="for all the steps together (default 8)")
    parser.add_argument("--steps", help=f"comma-separated subset of {', '.join(STEP_NAMES)} (default: all but "
                        "plateau)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="where the steps train")
    parser.add_argument("--tiny", action="store_true", help="shrink every budget (seconds, batches, minutes) to "
                        "test the whole run on a CPU in well under a minute")
    parser.add_argument("--switch", action="append", default=[], metavar="KEY=OFF:ON",
                        help="a switch for the switches step (repeatable; default: "
                             f"{' '.join(CUDA_SWITCHES)} on cuda, {' '.join(CPU_SWITCHES)} on cpu)")
    parser.add_argument("--probe", action="store_true", help="print the setup step's JSON line and exit")
    return parser


def selected_steps(text: str | None) -> list[str]:
    """The names ``--steps`` gives (:data:`DEFAULT_STEPS` when None).

    Raises:
        ValueError: a name that is not a step, or no name at all.
    """
    if text is None:
        return list(DEFAULT_STEPS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STEP_NAMES]
    if unknown or not names:
        raise ValueError(f"--steps {text!r}: {unknown or 'no step'} is not a step; choose from "
                         f"{', '.join(STEP_NAMES)}, comma-separated.")
    return names


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.probe:
        print(json.dumps(probe()), flush=True)
        return 0
    if args.out is None:
        raise ValueError("gpu_check needs --out PATH, the JSON file to write.")
    if args.budget_minutes <= 0:
        raise ValueError(f"--budget-minutes {args.budget_minutes} must be above 0.")
    selected = selected_steps(args.steps)
    sizes = TINY if args.tiny else FULL
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    try:
        steps = step_table(sizes, args.device, work, args.switch or None)
        report = run_checks(steps, selected, args.budget_minutes * 60, args.out, context={
            "argv": sys.argv[1:] if argv is None else list(argv), "device": args.device, "tiny": args.tiny,
            "sizes": dataclasses.asdict(sizes)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"gpu_check: wrote {args.out} ({report['elapsed_s']} s)", file=sys.stderr, flush=True)
    return 0 if all(r["status"] in ("ok", "skipped") for r in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
