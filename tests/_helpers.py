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

MNIST_PRESENT = (DATA_ROOT / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists()
# an end-to-end run on real data: marked slow (``pytest -m "not slow"`` leaves them out), and skipped
# by conftest.py where MNIST is absent
needs_mnist = pytest.mark.slow

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


# --------------------------------------------------------------------------- helpers of the job end-to-end tests


def jsonl(path) -> list[dict]:
    """The rows of a ``trace.jsonl`` (or any JSON-lines file)."""
    import json

    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


def check_manifest(out: Path) -> dict:
    """Every file under ``out`` (but the manifest) is listed in manifest.json with its sha256."""
    import hashlib
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"
               and not p.name.startswith(".")}
    assert set(manifest) == on_disk
    for rel, digest in manifest.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest, rel
    return manifest


def interrupt_when(cmd: list, predicate, timeout: float = 300) -> tuple[int, str, dict]:
    """Run a ``--json`` geopath command, send SIGINT on the first stdout row that satisfies
    ``predicate``; return (exit code, stderr, that row)."""
    import json
    import signal

    env = {**os.environ, "GEOPATH_DATA_ROOT": str(DATA_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "geopath", *map(str, cmd)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    hit = None
    for line in proc.stdout:
        row = json.loads(line)
        if row.get("event") == "step" and predicate(row):
            hit = row
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err, hit


def train_net(path: Path, arch: str = "mlp", arch_kwargs: dict | None = None, data: str = "mnist",
              size: int = 3000, epochs: float = 1.0, seed: int = 1, batch_size: int = 128) -> Path:
    """A small self-describing checkpoint trained in-process (geopath.core.train.train)."""
    import torch

    from geopath.io.archs import build_model
    from geopath.io.checkpoint import save_checkpoint
    from geopath.io.data import load_dataset
    from geopath.core.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a thread pool buys nothing and stalls on a busy machine
    try:
        torch.manual_seed(seed)
        model = build_model(arch, arch_kwargs or {})
        train(model, load_dataset(data, "train", DATA_ROOT).head(size), epochs=epochs, batch_size=batch_size,
              seed=seed)
    finally:
        torch.set_num_threads(threads)
    save_checkpoint(path, model, arch, arch_kwargs or {}, step=0, extra={"data": data})
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread_subprocesses():
    """Import into a test module to run its geopath subprocesses (and its own torch work) with
    one intra-op thread.

    The runs use small slices: a second thread saves little on an idle machine, while on a
    busy one OpenMP's spinning threads make every step many times slower.
    """
    import torch

    before, threads = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if before is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = before


from torch import nn as _nn  # noqa: E402


class BNMLP(_nn.Module):
    """784 → 32 → BatchNorm → ReLU → 10: a network with BatchNorm that is quick on a CPU
    (``--arch tests._helpers:BNMLP``, importable from the repository root)."""

    def __init__(self, hidden: int = 32, num_classes: int = 10):
        super().__init__()
        self.fc1 = _nn.Linear(784, hidden)
        self.bn = _nn.BatchNorm1d(hidden)
        self.fc2 = _nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(self.bn(self.fc1(x.flatten(1))).relu())


cifar10_present = (DATA_ROOT / "cifar10" / "test.npz").exists() and any(
    (DATA_ROOT / "cifar10" / f).exists() for f in ("train.npz", "train_20k.npz"))
