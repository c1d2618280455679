"""A finished run's manifest: every file it wrote with its sha256 (torch-free, so ``geopath verify`` starts fast).

:class:`geopath.io.rundir.RunWriter` writes ``manifest.json`` last; :func:`verify_run` checks a run against it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from geopath.errors import UsageError
from geopath.io.atomic import sha256_file
from geopath.io.reader import MANIFEST, read_run_json


def run_files(run: Path) -> list[str]:
    """The files a manifest lists: every file under ``run`` but the manifest and hidden (temporary) ones."""
    files = sorted(p for p in run.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))
    return [str(p.relative_to(run)) for p in files]


def verify_run(run: str | os.PathLike) -> dict[str, Any]:
    """Compare a run's files with its ``manifest.json``: missing, changed and unlisted files."""
    run = Path(run)
    manifest = read_run_json(run, MANIFEST, "the run did not complete")
    if not isinstance(manifest, dict) or not all(isinstance(v, str) for v in manifest.values()):
        raise UsageError(f"{run / MANIFEST}: not a geopath manifest")
    if not manifest:  # (every run writes at least its config, trace and summary)
        raise UsageError(f"{run / MANIFEST}: lists no file (not a geopath manifest)")
    outside = sorted(k for k in manifest if Path(k).is_absolute() or ".." in Path(k).parts)
    if outside:
        raise UsageError(f"{run / MANIFEST}: lists {outside[0]}, outside the run (not a geopath manifest)")
    missing = sorted(k for k in manifest if not (run / k).is_file())
    changed = sorted(k for k, digest in manifest.items() if (run / k).is_file() and sha256_file(run / k) != digest)
    unlisted = sorted(set(run_files(run)) - set(manifest))
    return {"run": str(run), "files": len(manifest), "missing": missing, "changed": changed, "unlisted": unlisted,
            "ok": not (missing or changed or unlisted)}
