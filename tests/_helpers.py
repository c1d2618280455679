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

# a small, fast sparsify run on a slice of MNIST: FAST_DATA for every method (a peer refuses the geodesic's step
# options), FAST for the geodesic, SETTLE_STEPS with --settle geodesic (a training settle refuses it)
FAST_DATA = ["--data-root", str(DATA_ROOT), "--metric-size", "2000", "--eval-size", "500", "--batch-size", "64",
             "--save-every", "2"]
FAST = [*FAST_DATA, "--steps", "6", "--max-steps", "12", "--cg-iters", "3"]
SETTLE_STEPS = ["--settle-steps", "4"]


def geopath(*args, cwd=None, timeout=300, **kw) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess."""
    env = {**os.environ, "GEOPATH_DATA_ROOT": str(DATA_ROOT)}
    return subprocess.run([sys.executable, "-m", "geopath", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout, env=env, **kw)


def cli(*args, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Run the real entry point ``geopath.cli.main()`` in this process, as :func:`geopath` runs it in a
    subprocess, and return the same ``CompletedProcess`` (``returncode``, ``stdout``, ``stderr``).

    For commands that stop before real work (usage and config errors, refusals): no interpreter
    start and no torch import per call. ``env``: variables to set (``None``: unset) on top of
    ``GEOPATH_DATA_ROOT``; ``cwd``: where to run (default: the repository root, as :func:`geopath`).
    What ``main()`` changes in the process is put back afterwards: the environment, the working
    directory, ``sys.argv``, the SIGTERM handler it installs, the ``warnings`` filters,
    ``sys.excepthook`` (typer sets one), torch's global RNG state (a job seeds it before it
    checks its inputs) and torch's thread count.

    Warnings go to the captured stderr under a fresh interpreter's filters, as in a subprocess,
    not to pytest's warning summary, so ``one_error_line`` still sees them. A crash outside the
    command's own error handling is a traceback on stderr and exit code 1, as in a subprocess.
    (Writes that bypass ``sys.stdout``/``sys.stderr``, straight to the file descriptors, are not
    captured; the program makes none.)
    """
    import contextlib
    import io
    import signal
    import traceback
    import warnings

    from geopath.cli import main

    argv = ["geopath", *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_argv, saved_hook, saved_term = sys.argv, sys.excepthook, signal.getsignal(signal.SIGTERM)
    torch = sys.modules.get("torch")
    saved_torch = (torch.get_rng_state(), torch.get_num_threads()) if torch is not None else None
    code = 0
    try:
        os.environ["GEOPATH_DATA_ROOT"] = str(DATA_ROOT)
        for k, v in (env or {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        os.chdir(cwd or ROOT)
        sys.argv = argv
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            _fresh_interpreter_warnings()
            try:
                main()
            except SystemExit as e:  # what the interpreter makes of sys.exit(code)
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
                    code = 1
            except Exception:  # uncaught: the interpreter prints the traceback and exits 1
                traceback.print_exc()
                code = 1
    finally:
        sys.argv, sys.excepthook = saved_argv, saved_hook
        signal.signal(signal.SIGTERM, saved_term)
        os.chdir(saved_cwd)
        for k in set(os.environ) - set(saved_env):
            del os.environ[k]
        for k, v in saved_env.items():
            if os.environ.get(k) != v:
                os.environ[k] = v
        if saved_torch is not None:
            torch.set_rng_state(saved_torch[0])
            torch.set_num_threads(saved_torch[1])
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def _fresh_interpreter_warnings() -> None:
    """The warning filters of a fresh interpreter (not pytest's), shown on the current ``sys.stderr``.

    https://docs.python.org/3/library/warnings.html#default-warning-filter
    """
    import warnings

    warnings.resetwarnings()
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__", append=True)
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=category, append=True)

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show


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
    # a test run started in the background of a non-interactive shell ignores SIGINT, and so would the child:
    # give it the default disposition, so Python turns SIGINT into KeyboardInterrupt as in a terminal
    proc = subprocess.Popen([sys.executable, "-m", "geopath", *map(str, cmd)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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


def spy_on_training(monkeypatch) -> list[tuple[str, float]]:
    """Record the (optimizer, lr) of every ``geopath.core.train.train`` call, which still runs."""
    import geopath.core.train as core_train

    seen, real = [], core_train.train

    def spy(*a, **kw):
        seen.append((kw.get("optimizer", "sgd"), kw.get("lr")))
        return real(*a, **kw)

    monkeypatch.setattr(core_train, "train", spy)
    return seen
