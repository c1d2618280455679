"""Shared helpers for the command-line and end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_checkpoints" / "mlp_mnist.safetensors"
DATA_ROOT = Path(os.environ.get("GEOPATH_DATA_ROOT", ROOT.parent / "shared" / "data"))

needs_mnist = pytest.mark.skipif(
    not (DATA_ROOT / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists(),
    reason=f"MNIST not found under {DATA_ROOT}",
)

# a small, fast sparsify run on a slice of MNIST
FAST = ["--data-root", str(DATA_ROOT), "--metric-size", "2000", "--eval-size", "500", "--steps", "6",
        "--max-steps", "12", "--settle-steps", "4", "--batch-size", "64", "--cg-iters", "3", "--save-every", "2"]


def geopath(*args, cwd=None, timeout=300, **kw) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess."""
    env = {**os.environ, "GEOPATH_DATA_ROOT": str(DATA_ROOT)}
    return subprocess.run([sys.executable, "-m", "geopath", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout, env=env, **kw)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]
