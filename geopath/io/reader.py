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
from geopath.io.atomic import sha256_file

MANIFEST = "manifest.json"  # a run's list of files with their sha256, written last (geopath.io.manifest)
NETWORK = ".safetensors"  # a run's networks end so; every other file it writes is a record of the run
READ = ("config.yaml", "summary.json", "trace.jsonl")  # the records the reports read


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
        if not (run / "config.yaml").is_file() and not (run / "trace.jsonl").is_file():
            raise UsageError(f"{run}: not a geopath run (no config.yaml or trace.jsonl)")
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


def read_manifest(run: str | Path) -> dict[str, str]:
    """A finished run's ``manifest.json``, ``{file: sha256}``, or a one-line usage error: missing (the run did not
    complete), not JSON, not a map of file names to digests, listing nothing or a file outside the run."""
    run = Path(run)
    manifest = read_run_json(run, MANIFEST, "the run did not complete")
    if not isinstance(manifest, dict) or not all(isinstance(v, str) for v in manifest.values()):
        raise UsageError(f"{run / MANIFEST}: not a geopath manifest")
    if not manifest:  # (every run writes at least its config, trace and summary)
        raise UsageError(f"{run / MANIFEST}: lists no file (not a geopath manifest)")
    outside = sorted(k for k in manifest if Path(k).is_absolute() or ".." in Path(k).parts)
    if outside:
        raise UsageError(f"{run / MANIFEST}: lists {outside[0]}, outside the run (not a geopath manifest)")
    return manifest


def read_run(run: str | Path) -> tuple[dict, list[dict]]:
    """A finished run's summary (:func:`read_summary`) and trace rows (:func:`read_trace`), for the commands that
    report its results, once the run has passed the checks every such reader makes, each a one-line usage error:
    a summary and a manifest, a whole ``trace.jsonl`` (a bad line anywhere is damage: a finished run has no torn
    line), a manifest that parses (:func:`read_manifest`) and lists the records read, and every record it lists
    (each file but the networks, ``*.safetensors``: config, traces, summary, ...) as the run left it. The networks
    are left to ``geopath verify``: a table of figures would wait on hashing gigabytes of checkpoints it never
    reads, and a run whose step checkpoints were deleted to save space still has its figures."""
    run = Path(run)
    summary = read_summary(run)
    rows = read_trace(run)
    manifest = read_manifest(run)
    unlisted = [name for name in READ if name not in manifest]
    if unlisted:
        raise UsageError(f"{run}: {MANIFEST} does not list {unlisted[0]} (not this run's manifest)")
    for name, digest in sorted(manifest.items()):
        if name.endswith(NETWORK):
            continue
        if not (run / name).is_file():
            raise UsageError(f"{run}: {name} is missing (the run's {MANIFEST} lists it)")
        if sha256_file(run / name) != digest:
            raise UsageError(f"{run}: {name} has changed since the run finished (its sha256 is not the one in "
                             f"{MANIFEST}; geopath verify {run} lists every difference)")
    return summary, rows
