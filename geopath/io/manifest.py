"""A finished run's manifest: every file it wrote with its sha256 (torch-free, so ``geopath verify`` starts fast).

:class:`geopath.io.rundir.RunWriter` writes ``manifest.json`` last; :func:`verify_run` checks a run against it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from geopath.io.atomic import sha256_file
from geopath.io.reader import MANIFEST, read_manifest


def run_files(run: Path) -> list[str]:
    """The files a manifest lists: every file under ``run`` but the manifest and hidden (temporary) ones."""
    files = sorted(p for p in run.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))
    return [str(p.relative_to(run)) for p in files]


def verify_run(run: str | os.PathLike) -> dict[str, Any]:
    """Compare a run's files with its ``manifest.json``: missing, changed and unlisted files."""
    run = Path(run)
    manifest = read_manifest(run)
    missing = sorted(k for k in manifest if not (run / k).is_file())
    changed = sorted(k for k, digest in manifest.items() if (run / k).is_file() and sha256_file(run / k) != digest)
    unlisted = sorted(set(run_files(run)) - set(manifest))
    return {"run": str(run), "files": len(manifest), "missing": missing, "changed": changed, "unlisted": unlisted,
            "ok": not (missing or changed or unlisted)}
