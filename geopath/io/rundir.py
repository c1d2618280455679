"""The output directory of a run and everything written into it.

    OUT/config.yaml                 fully resolved configuration
    OUT/steps/step_NNNNN.safetensors every K-th network on the path (step 0 = start)
    OUT/trace.csv, OUT/trace.jsonl  one row per saved network (the job's columns; jsonl has all)
    OUT/final.safetensors           the endpoint: appears only when the run completed
    OUT/summary.json                the final row plus run facts
    OUT/manifest.json               every file with its sha256, written last: the run is complete

Every file is written atomically (temp name, fsync, rename). The endpoint is written as
``.final.pending.safetensors`` and renamed to ``final.safetensors`` by :meth:`RunWriter.finish`,
just before the summary and the manifest, so a run that stopped early never has one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from geopath.core import distributed
from geopath.io.atomic import atomic_path, sha256_file, write_text_atomic
from geopath.io.jsontext import dumps
from geopath.io.checkpoint import save_checkpoint
from geopath.errors import UsageError
from geopath.io.manifest import MANIFEST, run_files
from geopath.io.trace import Trace


def check_output(out: str | os.PathLike, overwrite: bool, resume: bool, inputs: tuple = (),
                 resumable: bool = True) -> Path:
    """Raise a usage error unless ``out`` can take this run; touches nothing. ``inputs``: the run's input paths
    (checkpoints, data, plan), none of which ``--overwrite`` may empty.

    Jobs call this first and :func:`prepare_output` only once their inputs have loaded, so a
    run that fails on a bad checkpoint or data set neither leaves an empty directory behind nor
    (with ``--overwrite``) destroys the run that was there. Under ``torchrun`` rank 0 alone checks
    (the others would race with its :func:`prepare_output`).
    """
    out = Path(out)
    if not distributed.current().is_main:
        return out
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")
    if resume:
        if not (out / "config.yaml").is_file():
            raise UsageError(f"{out}: nothing to resume (no config.yaml)")
        if (out / MANIFEST).exists():
            raise UsageError(f"{out}: this run already completed (manifest.json exists)")
    elif out.exists() and any(out.iterdir()):
        if not overwrite:
            hint = ", or --resume" if resumable else ""  # (a peer, connect's relaxation: nothing to continue)
            raise UsageError(f"{out}: output directory is not empty (pass --overwrite to replace it{hint})")
        if not ((out / "config.yaml").is_file() and (out / "trace.jsonl").is_file()):  # (a run writes both first)
            raise UsageError(f"{out}: not a geopath run's directory (no config.yaml and trace.jsonl); --overwrite "
                             "only replaces a run, it does not empty other folders: choose another --out")
        inside = [str(p) for p in inputs if _within(Path(p), out)]
        if inside:
            raise UsageError(f"{inside[0]} is inside {out}, which --overwrite would empty (deleting the run's "
                             "input): copy it elsewhere or choose another --out")
    return out


def _within(path: Path, folder: Path) -> bool:
    """Whether ``path`` (an existing file or folder) is ``folder`` or lies inside it, links resolved."""
    try:
        path, folder = path.expanduser().resolve(), folder.resolve()
    except OSError:
        return False
    return path.exists() and (path == folder or folder in path.parents)


def prepare_output(out: str | os.PathLike, overwrite: bool, resume: bool) -> Path:
    """Check, then create (or with ``overwrite`` empty) the output directory.

    Under ``torchrun`` rank 0 does this while the other ranks wait for it.
    """
    comm = distributed.current()
    if not comm.is_main:
        comm.barrier()
        return Path(out)
    out = _prepare(check_output(out, overwrite, resume), overwrite, resume)
    comm.barrier()
    return out


def _prepare(out: Path, overwrite: bool, resume: bool) -> Path:
    if resume:
        return out
    if out.exists() and any(out.iterdir()):  # check_output allowed it: --overwrite
        import shutil

        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".geopath-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"{out}: output directory is not writable ({e.strerror})") from None
    return out


FINAL = "final.safetensors"
PENDING = ".final.pending.safetensors"


class RunWriter:
    """Writes checkpoints, trace rows and closing files of one run.

    Under ``torchrun`` only rank 0 writes; on the other ranks every write is skipped
    (reads — resuming — see the same directory).
    """

    def __init__(self, out: Path, arch: str, arch_kwargs: dict, parent_sha256: str | None, job: str, data: str | None,
                 columns: tuple[str, ...] | None = None, preprocess: str | None = None, carry: dict | None = None):
        self.out, self.arch, self.arch_kwargs = Path(out), arch, arch_kwargs
        self.parent_sha256, self.job, self.data, self.preprocess = parent_sha256, job, data, preprocess
        self.carry = dict(carry or {})  # metadata every saved network inherits (a compact network's recipe)
        self.trace = Trace(self.out, columns) if columns else Trace(self.out)
        self.writes = self.trace.writes = distributed.current().is_main

    def write_config(self, config: dict[str, Any]) -> None:
        if self.writes:
            write_text_atomic(self.out / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def step_path(self, step: int) -> Path:
        return self.out / "steps" / f"step_{step:05d}.safetensors"

    def _target(self, path: Path) -> Path:
        """Where a file is written now: the endpoint goes to its pending name until :meth:`finish`."""
        return self.out / PENDING if Path(path) == self.out / FINAL else Path(path)

    def network_file(self, rel: str) -> Path:
        """A saved network's file, the pending endpoint included."""
        path = self.out / rel
        return self.out / PENDING if rel == FINAL and not path.exists() else path

    def save_network(self, path: Path, model: nn.Module, step: int) -> str:
        if self.writes:
            save_checkpoint(self._target(path), model, self.arch, self.arch_kwargs, step=step,
                            parent_sha256=self.parent_sha256,
                            extra={"job": self.job, **({"data": self.data} if self.data else {}),
                                   **({"preprocess": self.preprocess} if self.preprocess else {}), **self.carry})
        return str(Path(path).relative_to(self.out))

    def write_json(self, name: str, obj: Any) -> None:
        if self.writes:
            write_text_atomic(self.out / name, dumps(obj, indent=2) + "\n")

    def copy_network(self, rel_src: str, name: str) -> None:
        """Copy a saved network (e.g. the selected step) to ``OUT/name``, atomically."""
        import shutil

        if not self.writes:
            return
        with atomic_path(self._target(self.out / name)) as tmp:
            shutil.copyfile(self.network_file(rel_src), tmp)

    def finish(self, summary: dict[str, Any]) -> None:
        """Complete the run: the endpoint under its real name, then the summary, then the manifest."""
        if not self.writes:
            return
        if (self.out / PENDING).exists():
            os.replace(self.out / PENDING, self.out / FINAL)
        write_text_atomic(self.out / "summary.json", dumps(summary, indent=2) + "\n")
        manifest = {rel: sha256_file(self.out / rel) for rel in run_files(self.out)}
        write_text_atomic(self.out / MANIFEST, dumps(manifest, indent=2) + "\n")
