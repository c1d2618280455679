"""The output directory of a run and everything written into it.

    OUT/config.yaml                 fully resolved configuration
    OUT/steps/step_NNNNN.safetensors every K-th network on the path (step 0 = start)
    OUT/trace.csv, OUT/trace.jsonl  one row per saved network (the job's columns; jsonl has all)
    OUT/final.safetensors           the endpoint, written only when the run completed
    OUT/summary.json                the final row plus run facts, written last
    OUT/manifest.json               every file with its sha256, written last

Every file is written atomically (temp name, fsync, rename).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ._atomic import atomic_path, sha256_file, write_text_atomic
from .checkpoint import save_checkpoint
from .errors import UsageError
from .trace import Trace


def prepare_output(out: str | os.PathLike, overwrite: bool, resume: bool) -> Path:
    """Check (and create) the output directory under the usual rules."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")
    if resume:
        if not (out / "config.yaml").is_file():
            raise UsageError(f"{out}: nothing to resume (no config.yaml)")
        if (out / "final.safetensors").exists():
            raise UsageError(f"{out}: this run already completed (final.safetensors exists)")
        return out
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out}: output directory is not empty (pass --overwrite to replace it, or --resume)")
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


class RunWriter:
    """Writes checkpoints, trace rows and closing files of one run."""

    def __init__(self, out: Path, arch: str, arch_kwargs: dict, parent_sha256: str | None, job: str, data: str | None,
                 columns: tuple[str, ...] | None = None):
        self.out, self.arch, self.arch_kwargs = Path(out), arch, arch_kwargs
        self.parent_sha256, self.job, self.data = parent_sha256, job, data
        self.trace = Trace(self.out, columns) if columns else Trace(self.out)

    def write_config(self, config: dict[str, Any]) -> None:
        write_text_atomic(self.out / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def step_path(self, step: int) -> Path:
        return self.out / "steps" / f"step_{step:05d}.safetensors"

    def save_network(self, path: Path, model: nn.Module, step: int) -> str:
        save_checkpoint(path, model, self.arch, self.arch_kwargs, step=step, parent_sha256=self.parent_sha256,
                        extra={"job": self.job, **({"data": self.data} if self.data else {})})
        return str(path.relative_to(self.out))

    def write_json(self, name: str, obj: Any) -> None:
        write_text_atomic(self.out / name, json.dumps(obj, indent=2, default=str) + "\n")

    def copy_network(self, rel_src: str, name: str) -> None:
        """Copy a saved network (e.g. the selected step) to ``OUT/name``, atomically."""
        import shutil

        with atomic_path(self.out / name) as tmp:
            shutil.copyfile(self.out / rel_src, tmp)

    def finish(self, summary: dict[str, Any]) -> None:
        write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        files = sorted(p for p in self.out.rglob("*") if p.is_file() and p.name != "manifest.json"
                       and not p.name.startswith("."))
        manifest = {str(p.relative_to(self.out)): sha256_file(p) for p in files}
        write_text_atomic(self.out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
