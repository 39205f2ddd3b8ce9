"""Where a run's logged figures go, chosen by ``log_to`` (SB3's output formats): TensorBoard, CSV, JSON lines, stdout.

Every writer takes one dump at a time, :meth:`MetricWriter.write` ``(values, env_steps)``: the training means of a
log (:class:`~meta_rl.logger.MetricLogger`) or the figures of a held-out evaluation. ``progress.csv`` holds one row
per dump under a header of every key seen so far (a dump that brings new keys rewrites the file, atomically, with
the wider header, earlier rows left empty there, as SB3 does); ``progress.jsonl`` one JSON object per dump. Both
start with ``env_steps``, TensorBoard's x axis. A resumed run keeps the rows up to its checkpoint's env step and
drops those a killed process logged after it (TensorBoard's ``purge_step``), so no step appears twice; a fresh run
starts them anew. Only rank 0 writes.
"""

from __future__ import annotations

import abc
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Protocol, TextIO

from meta_rl.atomic import write_atomic, write_error
from meta_rl.errors import ConfigError

__all__ = [
    "CSV_NAME",
    "JSONL_NAME",
    "LOG_WRITERS",
    "STEP_KEY",
    "CSVWriter",
    "JSONLinesWriter",
    "MetricWriter",
    "StdoutWriter",
    "TensorBoardScalars",
    "file_writers",
    "read_jsonl",
]

CSV_NAME = "progress.csv"
JSONL_NAME = "progress.jsonl"
#: The column / key of every row that holds its env step.
STEP_KEY = "env_steps"
#: The names ``log_to`` takes.
LOG_WRITERS = ("tensorboard", "csv", "jsonl", "stdout")


class MetricWriter(Protocol):
    """One destination of a run's figures."""

    def write(self, values: dict[str, float], step: int) -> None:
        """Write one dump: ``values`` by tag, at env step ``step``."""


class TensorBoardScalars:
    """The scalars of a dump as TensorBoard events (``add_scalar`` per tag) on a SummaryWriter-like ``writer``."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def write(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class StdoutWriter:
    """An SB3-style table per dump on ``stream`` (default stdout): the env step, then each tag under its group."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def write(self, values: dict[str, float], step: int) -> None:
        rows: list[tuple[str, str]] = [(STEP_KEY, str(step))]
        group = None
        for key in sorted(values):
            head, slash, name = key.rpartition("/")
            if slash and head != group:
                rows.append((f"{head}/", ""))
                group = head
            rows.append((f"    {name}" if slash else key, _fmt(values[key])))
        kw, vw = max(len(k) for k, _ in rows), max(len(v) for _, v in rows)
        rule = "-" * (kw + vw + 7)
        lines = [rule, *(f"| {k:<{kw}} | {v:<{vw}} |" for k, v in rows), rule]
        stream = self.stream or sys.stdout
        print("\n".join(lines), file=stream, flush=True)


class _FileWriter(abc.ABC):
    """A log file of the run directory, with one clear :class:`~meta_rl.atomic.WriteError` for a failed write.

    A format gives :meth:`parse` (a file's text to its rows) and :meth:`start` (the file anew from the rows kept).
    """

    name = ""
    what = ""

    def __init__(self, run_dir: Path, keep_until: int | None) -> None:
        self.path = run_dir / self.name
        rows = self.read(keep_until) if keep_until is not None and self.path.is_file() else []
        self.start(rows)

    def read(self, keep_until: int) -> list[dict[str, Any]]:
        """The rows of the file at env steps <= ``keep_until``; a last line cut short by a kill is dropped."""
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {self.path} to resume its log ({exc}); move it away (the resumed run "
                              f"starts a new {self.name}) or restore it.") from exc
        if text and not text.endswith("\n"):  # a write cut short by a kill: not a whole row
            text = text[: text.rfind("\n") + 1]
        rows = self.parse(text)
        for i, row in enumerate(rows, start=1):
            if not isinstance(row.get(STEP_KEY), int):
                raise ConfigError(f"{self.path}: row {i} has no whole-number {STEP_KEY!r} ({row!r}); it was edited "
                                  f"or is not a meta-rl log: move it away (the resumed run starts a new one) or "
                                  "repair it.")
        return [row for row in rows if row[STEP_KEY] <= keep_until]

    @abc.abstractmethod
    def parse(self, text: str) -> list[dict[str, Any]]:
        """The rows of a file's text."""

    @abc.abstractmethod
    def start(self, rows: list[dict[str, Any]]) -> None:
        """Write the file anew, holding ``rows`` (none for a fresh run)."""

    def replace(self, text: str) -> None:
        write_atomic(self.path, text.encode(), what=self.what, then=self._then())

    def append(self, text: str) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(text)
        except OSError as exc:
            raise write_error(self.what, self.path, exc, kept="the rows written before are intact",
                              then=self._then()) from exc

    def _then(self) -> str:
        return f"resume with meta-rl train --resume {self.path.parent}"


class CSVWriter(_FileWriter):
    """``progress.csv``: a header of ``env_steps`` and every tag seen (sorted), one row per dump.

    A dump with tags not in the header rewrites the file with the wider header (atomically); earlier rows are left
    empty in the new columns, and rows without a tag (an evaluation's row has no training means) leave it empty.
    """

    name = CSV_NAME
    what = "CSV log"

    def parse(self, text: str) -> list[dict[str, Any]]:
        reader = csv.DictReader(io.StringIO(text))
        self.keys = [k for k in reader.fieldnames or [] if k != STEP_KEY]
        rows = []
        for row in reader:
            step = row.get(STEP_KEY) or ""
            rows.append({**row, STEP_KEY: int(step) if step.isdigit() else step})
        return rows

    def start(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            self.keys = []
        self.replace(self.render(rows, header=bool(self.keys)))

    def render(self, rows: list[dict[str, Any]], header: bool = False) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, [STEP_KEY, *self.keys], restval="", lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()

    def write(self, values: dict[str, float], step: int) -> None:
        row = {STEP_KEY: step, **values}
        new = [k for k in values if k not in self.keys]
        if new:  # a wider header: the file again, with the rows so far
            old = self.parse(self.path.read_text()) if self.path.is_file() else []
            self.keys = sorted({*self.keys, *new})
            self.replace(self.render([*old, row], header=True))
        else:
            self.append(self.render([row]))


def _plain_number(value: float) -> float | None:
    """A value JSON can hold: non-finite figures (NaN, inf) as null."""
    return value if math.isfinite(value) else None


class JSONLinesWriter(_FileWriter):
    """``progress.jsonl``: one JSON object per dump, ``{"env_steps": ..., tag: value, ...}`` (NaN and inf as null)."""

    name = JSONL_NAME
    what = "JSON-lines log"

    def parse(self, text: str) -> list[dict[str, Any]]:
        return read_jsonl(text, self.path)

    def start(self, rows: list[dict[str, Any]]) -> None:
        self.replace("".join(json.dumps(row) + "\n" for row in rows))

    def write(self, values: dict[str, float], step: int) -> None:
        row = {STEP_KEY: step, **{k: _plain_number(float(v)) for k, v in values.items()}}
        self.append(json.dumps(row) + "\n")


def read_jsonl(text: str, path: Path | str = JSONL_NAME) -> list[dict[str, Any]]:
    """The objects of a ``progress.jsonl`` text, one per line.

    Raises:
        ConfigError: a line is not a JSON object (naming the file, the line and the fix).
    """
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}: line {i} is not a JSON object ({line[:80]!r}); it was edited or is not a "
                              "meta-rl log: move it away (the resumed run starts a new one) or repair it.")
        rows.append(row)
    return rows


def file_writers(log_to: list[str], run_dir: Path, keep_until: int | None) -> list[MetricWriter]:
    """The writers ``log_to`` names besides TensorBoard, for the run directory ``run_dir``.

    Args:
        log_to: the config's writer names (checked by :class:`~meta_rl.config.TrainConfig`).
        run_dir: where the files go.
        keep_until: a resumed run's checkpoint env step: rows after it are dropped; None: a fresh run, which starts
            the files anew.

    Raises:
        ConfigError: a resumed run's log cannot be read back. WriteError: a file cannot be written.
    """
    writers: list[MetricWriter] = []
    for name in log_to:
        if name == "csv":
            writers.append(CSVWriter(run_dir, keep_until))
        elif name == "jsonl":
            writers.append(JSONLinesWriter(run_dir, keep_until))
        elif name == "stdout":
            writers.append(StdoutWriter())
    return writers
