"""Nothing lost, nothing half-written: full disks, kills, numerical faults, bad input for every job."""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import signal
import subprocess
import sys

import pytest
import torch

from geopath.core.params import ParamSpace, model_vector
from geopath.io.archs import MLP, build_model
from geopath.io.checkpoint import read_tensors, save_checkpoint
from geopath.io.data import Dataset
from geopath.errors import NumericalError
from geopath.core.step import Probe, StepConfig, StepInfo, step_fault
from geopath.core.path import PathConfig, walk
from geopath.core.record import Recorder
from geopath.io.rundir import RunWriter
from geopath.core.targets import NetworkTarget
from geopath.io.trace import Trace

from .._helpers import DATA_ROOT, FAST, ROOT, SAMPLE, cli, geopath, needs_mnist, one_error_line

SEED1 = ROOT / "sample_checkpoints" / "mlp_mnist_seed1.safetensors"
FMNIST = ROOT / "sample_checkpoints" / "mlp_fashion_mnist.safetensors"
SMALL = ["--metric-size", "2000", "--eval-size", "300", "--batch-size", "64", "--cg-iters", "3", "--save-every", "2"]


def _leftovers(out):
    """Temp files or a pending endpoint left in a run directory."""
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*") if p.is_file())


def _no_completion(out):
    for name in ("final.safetensors", "summary.json", "manifest.json"):
        assert not (out / name).exists(), name


# --------------------------------------------------------------------------- storage


def _small_files_only(limit: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk

    return preexec


@needs_mnist
def test_full_disk_is_one_line_exit_1_and_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "out"
    # config.yaml and the trace fit; the first 1 MB checkpoint does not
    proc = geopath("sparsify", SAMPLE, "-o", out, *FAST, preexec_fn=_small_files_only(200_000))
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc)
    assert "cannot write" in line and "step_00000.safetensors" in line and "too large" in line.lower()
    assert _leftovers(out) == []  # the temp file was removed
    assert not (out / "steps").exists() or not any((out / "steps").iterdir())
    _no_completion(out)


def test_storage_errors_in_process(tmp_path, monkeypatch):
    """ENOSPC from the file system while saving a checkpoint: StorageError, no file, no temp file."""
    import errno

    from geopath.io import checkpoint
    from geopath.errors import StorageError

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os if hasattr(checkpoint, "os") else os, "replace", full, raising=False)
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StorageError, match="No space left on device"):
        save_checkpoint(tmp_path / "x.safetensors", MLP(4, (3,), 2), "mlp")
    assert list(tmp_path.iterdir()) == []


def test_torn_trace_row_is_skipped_and_rewritten_on_resume(tmp_path):
    trace = Trace(tmp_path)
    trace.create()
    trace.append({"step": 0, "checkpoint": "steps/step_00000.safetensors"})
    trace.append({"step": 2, "checkpoint": "steps/step_00002.safetensors"})
    with open(tmp_path / "trace.jsonl", "a") as f:
        f.write('{"step": 4, "checkp')  # a crash in the middle of a row
    assert [r["step"] for r in trace.rows()] == [0, 2]
    trace.keep(trace.rows())
    assert (tmp_path / "trace.jsonl").read_text().count("\n") == 2
    assert [json.loads(line)["step"] for line in (tmp_path / "trace.jsonl").read_text().splitlines()] == [0, 2]


# --------------------------------------------------------------------------- completion and manifest


@needs_mnist
def test_endpoint_appears_only_on_completion_and_verify_checks_the_manifest(tmp_path):
    out = tmp_path / "out"
    proc = geopath("sparsify", SAMPLE, "-o", out, *FAST)
    assert proc.returncode == 0, proc.stderr
    assert (out / "final.safetensors").is_file() and _leftovers(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert "final.safetensors" in manifest and not any(k.startswith(".") for k in manifest)
    ok = geopath("verify", out, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    again = cli("sparsify", "-o", out, "--resume")
    assert again.returncode == 2 and "already completed" in one_error_line(again)
    # a changed step and a stray file are both reported; exit 3 (a check that failed)
    step = out / "steps" / "step_00002.safetensors"
    step.write_bytes(step.read_bytes()[:-1] + b"\x00")
    (out / "notes.txt").write_text("mine")
    bad = geopath("verify", out, "--json")
    assert bad.returncode == 3
    res = json.loads(bad.stdout.splitlines()[0])
    assert res["changed"] == ["steps/step_00002.safetensors"] and res["unlisted"] == ["notes.txt"]
    assert cli("verify", tmp_path).returncode == 2  # not a run


# --------------------------------------------------------------------------- kills


def _run_and_signal(cmd, sig, after_step: int):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "GEOPATH_DATA_ROOT": str(DATA_ROOT)})
    sent = False
    for line in proc.stdout:
        if json.loads(line).get("step", 0) >= after_step:
            proc.send_signal(sig)
            sent = True
            break
    _, err = proc.communicate(timeout=180)
    assert sent, err
    return proc, err


@needs_mnist
def test_sigterm_connect_then_resume_matches_uninterrupted(tmp_path):
    args = ["connect", str(SAMPLE), str(SEED1), *SMALL, "--path", "walk", "--steps", "10", "--max-steps", "12", "--points", "5",
            "--json"]
    full = tmp_path / "full"
    done = geopath(*args, "-o", full)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    proc, err = _run_and_signal([sys.executable, "-m", "geopath", *args, "-o", str(out)], signal.SIGTERM, 4)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    _no_completion(out)
    resumed = geopath("connect", "-o", out, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    a, _ = read_tensors(full / "final.safetensors")
    b, _ = read_tensors(out / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = [json.loads(x) for x in (full / "trace.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (out / "trace.jsonl").read_text().splitlines()]
    assert [(r["step"], r["test_accuracy"], r["milestone"]) for r in ra] == \
           [(r["step"], r["test_accuracy"], r["milestone"]) for r in rb]
    assert json.loads((out / "points.json").read_text()) == json.loads((full / "points.json").read_text())


@needs_mnist
def test_sigterm_during_a_peer_exits_130_without_temp_files(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "geopath", "merge", str(SAMPLE), str(FMNIST), "-o", str(out), "--method", "ewc",
           "--epochs", "3", "--metric-size", "2000", "--val-size", "200", "--eval-size", "200",
           "--fisher-samples", "100", "--save-every", "1", "--json"]
    proc, err = _run_and_signal(cmd, signal.SIGTERM, 3)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("Error: interrupted") and "Traceback" not in err
    _no_completion(out)
    assert _leftovers(out) == []


# --------------------------------------------------------------------------- bad input for every job


def _ckpt(tmp_path, name, **kw) -> str:
    path = tmp_path / name
    save_checkpoint(path, build_model("mlp", kw), "mlp", kw, extra={"data": "mnist"})
    return str(path)


@needs_mnist
@pytest.mark.parametrize("job", ["merge", "connect"])
def test_two_network_jobs_refuse_bad_second_network(tmp_path, job):
    other = _ckpt(tmp_path, "other.safetensors", hidden=[32])
    proc = cli(job, SAMPLE, other, "-o", tmp_path / "o1")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "differ" in line or "different architectures" in line
    missing = cli(job, SAMPLE, tmp_path / "nope.safetensors", "-o", tmp_path / "o2")
    assert missing.returncode == 2 and "no such checkpoint" in one_error_line(missing)
    one = cli(job, SAMPLE, "-o", tmp_path / "o3")
    assert one.returncode == 2 and "two checkpoints" in one_error_line(one)
    for o in ("o1", "o2", "o3"):
        assert not (tmp_path / o).exists()


def test_inf_weights_are_refused(tmp_path):
    model = build_model("mlp")
    with torch.no_grad():
        model.layers[1].bias[3] = -math.inf
    from safetensors.torch import save_file

    path = tmp_path / "inf.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"geopath.arch": "mlp", "geopath.data": "mnist"})
    proc = cli("connect", SAMPLE, path, "-o", tmp_path / "out")
    assert proc.returncode == 2 and "NaN or Inf" in one_error_line(proc)


@pytest.mark.parametrize("job", ["merge", "connect", "transition"])
def test_config_unknown_keys_for_every_job(tmp_path, job):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("steps: 10\nstpes: 20\n")
    proc = cli(job, SAMPLE, SAMPLE, "-o", tmp_path / "out", "--config", cfg) if job != "transition" else \
        cli(job, SAMPLE, "-o", tmp_path / "out", "--config", cfg)
    assert proc.returncode == 2 and "unknown option(s) in config file: stpes" in one_error_line(proc)


def test_resume_refuses_changed_options(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("checkpoint: x\n")
    proc = cli("merge", "-o", out, "--resume", "--steps", "5")
    assert proc.returncode == 2 and "drop --steps" in one_error_line(proc)


def test_resume_refuses_overwrite_a_bad_config_file_and_another_jobs_run(tmp_path):
    """--resume with --overwrite (continue, or replace?), a --config file with keys no option has (they were
    never read), and a merge run resumed by `geopath sparsify` (it said "unknown option(s) in config file:
    checkpoint_b ..." of a file the user never named) are each one clear line; nothing is touched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("checkpoint: x\ncheckpoint_b: y\ndata_a: mnist\n")  # (merge's alone)
    (out / "trace.jsonl").write_text("")
    both = cli("merge", "-o", out, "--resume", "--overwrite")
    assert both.returncode == 2 and "choose one" in one_error_line(both)
    bad = tmp_path / "bad.yaml"
    bad.write_text("stpes: 5\n")
    proc = cli("merge", "-o", out, "--resume", "--config", bad)
    assert proc.returncode == 2 and "unknown option(s) in config file: stpes" in one_error_line(proc)
    other = cli("sparsify", "-o", out, "--resume")
    assert other.returncode == 2 and "a merge run, not a sparsify run" in one_error_line(other)
    assert "checkpoint_b" in one_error_line(other) and "geopath merge --resume" in one_error_line(other)
    (out / "config.yaml").write_text("checkpoint: x\nsparsity: 0.5\nfuture_option: 1\n")  # (a hand edit)
    edited = cli("sparsify", "-o", out, "--resume")
    assert edited.returncode == 2 and "unknown option(s) in" in one_error_line(edited)
    assert "future_option" in one_error_line(edited) and "not a sparsify run" not in one_error_line(edited)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "trace.jsonl"]


# --------------------------------------------------------------------------- numerical faults


def _toy():
    torch.manual_seed(0)
    model = MLP(6, (5,), 3).double()
    space = ParamSpace.of(model)
    x = torch.randn(40, 6, dtype=torch.float64)
    return model, space, model_vector(model, space), Dataset(x, torch.randint(0, 3, (40,)), "toy", "train")


def test_step_fault_detects_non_finite_and_sharp_steps():
    model, space, w, ds = _toy()
    z = model(ds.x[:8]).detach()
    probe = Probe(ds.x[:8], z, 0.0)
    small = 1e-3 * torch.randn(space.n, dtype=torch.float64)
    ok = StepInfo(small, metric_length=1.0, drift=0.0, products=1, on_boundary=False, sample_passes=0.0, probe=probe)
    assert step_fault(model, space, w, ok, "logits") is None
    nan = StepInfo(small.clone().fill_(math.nan), 1.0, 0.0, 1, False, 0.0, probe)
    assert "non-finite" in step_fault(model, space, w, nan, "logits")
    # a large step whose reported metric length is tiny: the function moved far more than the model allowed
    big = StepInfo(10 * torch.randn(space.n, dtype=torch.float64), 1e-3, 0.0, 1, False, 0.0, probe)
    assert "sharply" in step_fault(model, space, w, big, "logits")


def test_walk_shrinks_a_faulty_step_then_gives_up(tmp_path, monkeypatch):
    from geopath.core import path as path_mod

    model, space, w, ds = _toy()
    w_b = w + 0.5 * torch.randn(space.n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    real = path_mod.geodesic_step
    sizes = []

    def flaky(model, space, w, batches, target, cfg, free=None):
        info = real(model, space, w, batches, target, cfg, free=free)
        sizes.append(cfg.step_size)
        if len(sizes) in (3, 4):  # the third step fails twice, then succeeds with radius /4
            info.theta = info.theta.clone().fill_(math.nan)
        return info

    monkeypatch.setattr(path_mod, "geodesic_step", flaky)
    cfg = PathConfig(step=StepConfig(step_size=1e-2, cg_iters=3), max_steps=5, save_every=1, batch_size=16,
                     land=False)
    writer = RunWriter(tmp_path / "a", "mlp", {}, None, "test", None)
    writer.trace.create()
    res = walk(copy.deepcopy(model), NetworkTarget(w_b), ds, cfg, Recorder(writer, lambda m: {}))
    assert res.state.retries == 2 and res.final["retries"] == 2
    assert sizes[2:5] == pytest.approx([1e-2, 1e-2 / 4, 1e-2 / 16])
    assert res.state.step == 5

    def broken(model, space, w, batches, target, cfg, free=None):
        info = real(model, space, w, batches, target, cfg, free=free)
        if target.distance(w) < target.distance(w_saved):  # after the first step: always NaN
            info.theta = info.theta.clone().fill_(math.nan)
        return info

    w_saved = w.clone()
    monkeypatch.setattr(path_mod, "geodesic_step", broken)
    writer = RunWriter(tmp_path / "b", "mlp", {}, None, "test", None)
    writer.trace.create()
    with pytest.raises(NumericalError, match=r"step 2: the solver produced a non-finite step, also with a 16× smaller"):
        walk(copy.deepcopy(model), NetworkTarget(w_b), ds, cfg, Recorder(writer, lambda m: {}))
    # what was written is finite, and nothing claims completion
    for f in (tmp_path / "b" / "steps").iterdir():
        tensors, _ = read_tensors(f)
        assert all(bool(torch.isfinite(t).all()) for t in tensors.values())
    assert not (tmp_path / "b" / "final.safetensors").exists()


def test_solver_breakdown_is_retried(tmp_path, monkeypatch):
    """A FloatingPointError from the trust-region solve (non-finite curvature) is a fault like a NaN step."""
    from geopath.core import path as path_mod

    model, space, w, ds = _toy()
    w_b = w + 0.3
    real, calls = path_mod.geodesic_step, []

    def breaks_once(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise FloatingPointError("non-finite curvature in the trust-region solve")
        return real(*a, **k)

    monkeypatch.setattr(path_mod, "geodesic_step", breaks_once)
    cfg = PathConfig(step=StepConfig(step_size=1e-2, cg_iters=3), max_steps=3, save_every=1, batch_size=16, land=False)
    writer = RunWriter(tmp_path, "mlp", {}, None, "test", None)
    writer.trace.create()
    res = walk(copy.deepcopy(model), NetworkTarget(w_b), ds, cfg, Recorder(writer, lambda m: {}))
    assert res.state.retries == 1 and len(calls) == 4


@pytest.mark.parametrize("fails_at, left", [(1, False), (3, True)])
def test_a_step_fault_says_overwrite_only_where_the_run_is_left(tmp_path, monkeypatch, fails_at, left):
    """A fault at the first step removes the run (a corrected command needs nothing more); a later one leaves its
    steps, and only then does the line say that --overwrite replaces them."""
    from geopath.core import path as path_mod

    real, calls = path_mod.geodesic_step, []

    def faulty(*a, **k):
        info = real(*a, **k)
        calls.append(1)
        if len(calls) >= fails_at:  # (the failing step's every try, its smaller radii too)
            info.theta = info.theta.clone().fill_(math.nan)
        return info

    monkeypatch.setattr(path_mod, "geodesic_step", faulty)
    out = tmp_path / "run"
    proc = cli("sparsify", SAMPLE, "-o", out, "--steps", "6", "--settle-epochs", "0", "--save-every", "1",
               "--eval-size", "200", "--metric-size", "512", "--train-eval-size", "0", "--cg-iters", "2",
               "--data-root", DATA_ROOT)
    line = one_error_line(proc)
    assert proc.returncode == 1 and f"step {fails_at}:" in line
    assert line.endswith("; --overwrite replaces what the run wrote") is left and out.exists() is left
