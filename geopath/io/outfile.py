"""Where a command that writes one file (``train``, ``export``, ``plot``) may write it; run directories have
:func:`geopath.io.rundir.check_output`."""

from __future__ import annotations

import os
from pathlib import Path

from geopath.errors import UsageError
from geopath.io.manifest import MANIFEST


def check_output_file(out: str | os.PathLike, overwrite: bool, suffixes: tuple[str, ...],
                      inputs: tuple = ()) -> Path:
    """A one-line usage error unless ``out`` can take one new file (``train``, ``export``, ``plot``): one of
    ``suffixes``; no folder; an existing file only with ``overwrite`` and never one of ``inputs``; a parent that is
    (or can become) a folder; not inside a finished run, whose manifest lists every file (``geopath verify`` would
    fail). Touches nothing."""
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{out}: is a directory; name the file to write")
    if out.suffix.lower() not in suffixes:
        raise UsageError(f"{out}: the output must be a {' or '.join(suffixes)} file")
    if any(out.resolve() == Path(p).resolve() for p in inputs):
        raise UsageError(f"{out}: is the input; write the result to another file")
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: already exists (pass --overwrite to replace it)")
    where = out.resolve()  # (links and .. resolved: ../fig.png from inside a run lands beside it)
    for parent in where.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{out}: {parent} is not a directory")
            break
    for parent in where.parents:
        if (parent / MANIFEST).is_file() and (parent / "config.yaml").is_file():
            raise UsageError(f"{out}: inside the finished run {parent} (its manifest lists every file, so "
                             "geopath verify would fail); write it elsewhere")
    return out
