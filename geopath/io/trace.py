"""The trace of a run: one row per recorded step, in ``trace.csv`` and ``trace.jsonl``.

Rows are appended and fsynced one at a time, so a reader sees whole rows only;
on ``--resume`` the rows after the last saved checkpoint are dropped (rewritten
atomically) before the run continues.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from geopath.io.atomic import STORAGE_ERRNOS, storage_error, write_text_atomic
from geopath.io.jsontext import dumps, finite
from geopath.io.reader import read_jsonl

# the columns of every job's trace.csv; a job adds its own in the middle (trace.jsonl has all keys)
HEAD = ("step", "t", "distance", "length", "drift")
TAIL = ("sample_passes", "epochs", "wall_time", "landed_at", "retries", "checkpoint")


def columns(*job_columns: str) -> tuple[str, ...]:
    return HEAD + tuple(job_columns) + TAIL


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return "" if v is None else str(v)


class Trace:
    def __init__(self, run_dir: str | os.PathLike, columns: tuple[str, ...] = columns()):
        self.dir = Path(run_dir)
        self.columns = tuple(columns)
        self.csv_path = self.dir / "trace.csv"
        self.jsonl_path = self.dir / "trace.jsonl"
        self.writes = True  # False on the ranks > 0 of a torchrun job: rows are kept in memory instead
        self._memory: list[dict] | None = None


    def create(self) -> None:
        if not self.writes:
            self._memory = []
            return
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(self.columns)
        write_text_atomic(self.csv_path, buf.getvalue())
        write_text_atomic(self.jsonl_path, "")

    def append(self, row: dict) -> None:
        clean = finite(row)
        if not self.writes:
            self._memory = (self._memory if self._memory is not None else self.rows()) + [json.loads(dumps(clean))]
            return
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([_fmt(row.get(k)) for k in self.columns])
        for path, text in ((self.csv_path, buf.getvalue()), (self.jsonl_path, dumps(clean) + "\n")):
            try:
                with open(path, "a") as f:  # one write() per row, then fsync: readers see whole rows
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                if e.errno in STORAGE_ERRNOS:
                    raise storage_error(path, e) from None
                raise

    def rows(self) -> list[dict]:
        if self._memory is not None:
            return list(self._memory)
        return read_jsonl(self.jsonl_path)  # a torn last line from a crash ends the rows

    def keep(self, rows: list[dict]) -> None:
        """Rewrite both files with exactly ``rows`` (used when resuming)."""
        if not self.writes:
            self._memory = [dict(r) for r in rows]
            return
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        for r in rows:
            w.writerow([_fmt(r.get(k)) for k in self.columns])
        write_text_atomic(self.csv_path, buf.getvalue())
        write_text_atomic(self.jsonl_path, "".join(dumps(r) + "\n" for r in rows))


def read_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
