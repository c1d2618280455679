"""The GPU path: the same numbers on ``cuda`` as on the CPU.

Skipped where no CUDA device is visible (CI and the CPU machines); run on a GPU machine with
``pytest tests/test_cuda.py``. Each test compares a computation on the device with the same
computation on the CPU, so it fails on a wrong result as well as on a misplaced tensor.
``GEOPATH_TEST_DEVICE=cpu`` runs the same tests with the CPU as "the device" (a check of the
tests themselves on a machine without a GPU).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from geopath.core.params import ParamSpace, model_vector
from geopath.core.cg import cg
from geopath.core.step import Anchor, MetricBatch, StepConfig, geodesic_step
from geopath.core.metric import MetricOperator
from geopath.core.targets import MagnitudeTarget, StructuredTarget, prunable_parameters
from geopath.io.trace import read_csv

from ._helpers import DATA_ROOT, FAST, ROOT, SAMPLE, geopath, needs_mnist

DEVICE = os.environ.get("GEOPATH_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                reason="needs a CUDA device")

D = torch.float64


def on(t: torch.Tensor, device: str) -> bool:
    """Whether ``t`` lives on ``device``: ``cuda`` means any CUDA device, ``cuda:1`` that one (a tensor moved
    ``.to("cuda")`` reports ``cuda:0``, which ``torch.device("cuda")`` does not equal)."""
    want = torch.device(device)
    return t.device.type == want.type and (want.index is None or t.device.index == want.index)


@pytest.mark.parametrize("jvp_mode", ["forward", "reverse", "layerwise"])
@pytest.mark.parametrize("bn_stats", ["batch", "running"])
def test_metric_products_match_the_cpu(case, bn_stats, jvp_mode):
    model = case.make_model()
    space = ParamSpace.of(model)
    w, x = model_vector(model, space), case.inputs
    u = torch.randn(space.n, generator=torch.Generator().manual_seed(3), dtype=D)
    cpu = MetricOperator(model, space, w, x, bn_stats=bn_stats, jvp_mode="forward")
    gpu = MetricOperator(case.make_model().to(DEVICE), space, w.to(DEVICE), x.to(DEVICE), bn_stats=bn_stats,
                         jvp_mode=jvp_mode)
    gu = gpu.matvec(u.to(DEVICE))
    assert on(gu, DEVICE) and gpu.jvp_mode.value == jvp_mode  # (reverse or layerwise kept: it passed its check)
    torch.testing.assert_close(gu.cpu(), cpu.matvec(u), rtol=1e-10, atol=1e-12)
    c = [torch.randn_like(z) for z in cpu.logits]
    torch.testing.assert_close(gpu.rmatvec_outputs([t.to(DEVICE) for t in c]).cpu(), cpu.rmatvec_outputs(c),
                               rtol=1e-10, atol=1e-12)
    # CG sees only the operator: it runs where its vectors are
    b = cpu.matvec(u)
    torch.testing.assert_close(cg(gpu, b.to(DEVICE), max_iters=3 * space.n, rtol=1e-12).x.cpu(),
                               cg(cpu, b, max_iters=3 * space.n, rtol=1e-12).x, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("target_kind", ["magnitude", "structured"])
def test_geodesic_step_matches_the_cpu(bn_case, target_kind):
    def setup(device):
        model = bn_case.make_model().to(device)
        space = ParamSpace.of(model)
        w = model_vector(model, space).to(device)
        if target_kind == "magnitude":
            target = MagnitudeTarget(space, w, 0.5, prunable_parameters(model))
        else:
            target = StructuredTarget(model, space, w, {"conv": 1})
        x = bn_case.inputs.to(device)
        with torch.no_grad():
            z0 = [model(x) + 0.05]
        return model, space, w, [x], z0, target

    cfg = StepConfig(beta=0.7, step_size=1e-2, cg_iters=20, cg_rtol=1e-12, anchor=Anchor.START)
    steps = {}
    for device in ("cpu", DEVICE):
        model, space, w, chunks, z0, target = setup(device)
        info = geodesic_step(model, space, w, [MetricBatch(chunks, z0)], target, cfg)
        assert on(info.theta, device)
        landed = target.project(w + info.theta)
        assert on(landed, device) and float(target.distance(landed)) == 0.0
        steps[device] = info
    torch.testing.assert_close(steps[DEVICE].theta.cpu(), steps["cpu"].theta, rtol=1e-8, atol=1e-10)
    assert steps[DEVICE].metric_length == pytest.approx(steps["cpu"].metric_length, rel=1e-8)


@needs_mnist
def test_sparsify_end_to_end_on_cuda(tmp_path):
    """The whole CLI run on the GPU follows the CPU run's path (float32: loose tolerances)."""
    rows = {}
    for name, device in (("cpu", "cpu"), ("device", DEVICE)):
        out = tmp_path / name
        proc = geopath("sparsify", SAMPLE, "-o", out, "--sparsity", "0.7", *FAST, "--json", "--device", device)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout.splitlines()[-1])["event"] == "result"
        rows[name] = read_csv(out / "trace.csv")
    cpu, gpu = rows["cpu"], rows["device"]
    assert [r["step"] for r in gpu] == [r["step"] for r in cpu]
    assert gpu[-1]["landed_at"] == cpu[-1]["landed_at"]
    for a, b in zip(gpu, cpu):
        assert float(a["distance"]) == pytest.approx(float(b["distance"]), rel=1e-2, abs=1e-3)
        assert abs(float(a["test_accuracy"]) - float(b["test_accuracy"])) <= 0.01  # 5 of the 500 images
    assert float(gpu[-1]["sparsity"]) == pytest.approx(0.7, abs=1e-3)


FASHION = ROOT / "sample_checkpoints" / "mlp_fashion_mnist.safetensors"
SEED1 = ROOT / "sample_checkpoints" / "mlp_mnist_seed1.safetensors"
SMALL = ["--data-root", str(DATA_ROOT), "--metric-size", "2000", "--eval-size", "500", "--batch-size", "64",
         "--cg-iters", "3", "--save-every", "5"]
STRUCTURED = ["--structured", "layers.0:100", "--steps", "6", "--max-steps", "12"]
PEER_SMALL = [*SMALL[:8], *SMALL[10:]]  # (SMALL without --cg-iters, which a peer does not read)
JOBS = {
    "sparsify-structured": ["sparsify", SAMPLE, *SMALL, *STRUCTURED],
    "sparsify-prune-finetune": ["sparsify", SAMPLE, *PEER_SMALL, "--method", "prune-finetune", "--finetune-epochs",
                                "0.1"],
    "sparsify-iterative-prune": ["sparsify", SAMPLE, *PEER_SMALL, "--method", "iterative-prune", "--finetune-epochs",
                                 "0.1", "--rounds", "2"],
    "merge-geodesic": ["merge", SAMPLE, FASHION, *SMALL, "--val-size", "500", "--steps", "10"],
    "merge-ewc": ["merge", SAMPLE, FASHION, *PEER_SMALL, "--val-size", "500", "--method", "ewc", "--epochs", "0.1",
                  "--fisher-samples", "200"],
    "merge-fisher-split": ["merge", SAMPLE, FASHION, *PEER_SMALL, "--val-size", "500", "--method", "fisher", "--head",
                           "split", "--fisher-samples", "200", "--points", "3"],
    "transition": ["transition", SAMPLE, "--plan", ROOT / "docs" / "examples" / "plan_mlp.yaml", *SMALL,
                   "--steps", "6", "--settle-steps", "2"],
    "connect-geodesic": ["connect", SAMPLE, SEED1, *PEER_SMALL, "--relax-epochs", "0.2", "--points", "3",
                         "--align"],  # (no --cg-iters: the relaxed path does not read it)
    "connect-walk": ["connect", SAMPLE, SEED1, *SMALL, "--path", "walk", "--steps", "10", "--points", "3"],
    "connect-bezier-aligned": ["connect", SAMPLE, SEED1, *PEER_SMALL, "--method", "bezier", "--epochs", "0.1",
                               "--align", "--points", "3"],
}


@needs_mnist
@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_job_and_peer_on_the_device_follows_the_cpu(tmp_path, job):
    """Each job (and each peer method) runs whole on the device and ends where the CPU run ends."""
    finals = {}
    for name, device in (("cpu", "cpu"), ("device", DEVICE)):
        out = tmp_path / name
        proc = geopath(*JOBS[job], "-o", out, "--json", "--device", device)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout.splitlines()[-1])["event"] == "result"
        rows = read_csv(out / "trace.csv")
        assert (out / "final.safetensors").is_file() and (out / "manifest.json").is_file()
        finals[name] = rows
    cpu, dev = finals["cpu"], finals["device"]
    assert len(dev) == len(cpu)
    accuracies = [k for k in cpu[-1] if "accuracy" in k and cpu[-1][k] not in ("", None)]
    assert accuracies
    for k in accuracies:  # float32 on a GPU: a few of the 500 images may flip
        assert abs(float(dev[-1][k]) - float(cpu[-1][k])) <= 0.02, k
