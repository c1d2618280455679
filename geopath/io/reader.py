"""Reading a run directory: the one reader behind ``compare``, ``plot``, ``verify`` and ``--resume``.

Torch-free, so the commands that only read finished runs start fast. Every problem is a one-line
usage error naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from geopath.errors import UsageError

MANIFEST = "manifest.json"  # a run's list of files with their sha256, written last (geopath.io.manifest)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSON-lines file (``trace.jsonl``); a torn last line (a crash mid-write) ends them. A line that
    is not a JSON object anywhere else is damage, not a crash: a one-line usage error (rows after it would be
    dropped silently)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # a torn last line: everything before it is whole
            raise UsageError(f"{path}: line {i + 1} of {len(lines)} is not valid JSON (the file is damaged; only its "
                             "last line may be torn)") from None
        if not isinstance(row, dict):
            raise UsageError(f"{path}: line {i + 1} is not a JSON object (not a geopath trace)")
        out.append(row)
    return out


def read_run_json(run: Path, name: str, absent: str) -> Any:
    """The parsed JSON file ``name`` of the run directory ``run``, or a one-line usage error
    (``absent`` says why the file would be missing: the run did not complete, ...)."""
    run = Path(run)
    path = run / name
    if not run.is_dir():
        raise UsageError(f"{run}: not a run directory")
    if not path.is_file():
        raise UsageError(f"{run}: no {name} ({absent})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None


def read_summary(run: str | Path) -> dict:
    """A finished run's ``summary.json``: a run whose manifest (written last) is missing did not complete, and what
    ``compare`` and ``plot`` would show of it is not its result."""
    run = Path(run)
    summary = read_run_json(run, "summary.json", "the run did not finish")
    headline = summary.get("headline", []) if isinstance(summary, dict) else None
    if not isinstance(summary, dict) or "job" not in summary or not (
            isinstance(headline, list) and all(isinstance(k, str) for k in headline)):
        raise UsageError(f"{run / 'summary.json'}: not a geopath summary")
    if not (run / MANIFEST).is_file():
        raise UsageError(f"{run}: no {MANIFEST} (the run did not complete; --resume it or run it again)")
    return summary


def read_trace(run: str | Path) -> list[dict]:
    """A run's trace rows in path order: a connect run's landing segment (rows tagged ``jump``,
    evaluated after its final row) is put before the final row, where it lies on the path."""
    run = Path(run)
    if not (run / "trace.jsonl").is_file():
        raise UsageError(f"{run}: no trace.jsonl")
    rows = read_jsonl(run / "trace.jsonl")
    jump = [r for r in rows if r.get("segment") == "jump"]
    path = [r for r in rows if r.get("segment") != "jump"]
    return path[:-1] + jump + path[-1:] if jump else path
