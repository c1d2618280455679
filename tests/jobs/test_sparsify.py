"""A real sparsify run on a slice of MNIST: files, trace consistency, endpoint, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from geopath.core.params import ParamSpace, model_vector
from geopath.io.checkpoint import load_checkpoint, read_tensors
from geopath.io.data import load_dataset
from geopath.core.evaluate import evaluate
from geopath.core.targets import MagnitudeTarget, prunable_parameters
from geopath.io.trace import read_csv

from .._helpers import (DATA_ROOT, FAST, FAST_DATA, ROOT, SAMPLE, SETTLE_STEPS, geopath, needs_mnist, spy_on_training,
                       train_net)

pytestmark = needs_mnist

# the path engine alone (a magnitude mask the tests can rebuild, geodesic settle steps); the defaults
# (saliency mask, settle by fine-tuning) have their own tests below
ENGINE = ["--criterion", "magnitude", "--settle", "geodesic", *SETTLE_STEPS]


@pytest.fixture(scope="module")
def run70(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    proc = geopath("sparsify", SAMPLE, "-o", out, "--sparsity", "0.7", *FAST, *ENGINE, "--json")
    assert proc.returncode == 0, proc.stderr
    return out, [json.loads(l) for l in proc.stdout.splitlines()]


def test_writes_expected_files(run70):
    out, lines = run70
    for name in ("config.yaml", "trace.csv", "trace.jsonl", "final.safetensors", "summary.json", "manifest.json"):
        assert (out / name).is_file(), name
    steps = sorted(p.name for p in (out / "steps").iterdir())
    assert steps[0] == "step_00000.safetensors" and len(steps) >= 3
    rows = [json.loads(l) for l in (out / "trace.jsonl").read_text().splitlines()]
    assert [r["step"] for r in read_csv(out / "trace.csv")] == [str(r["step"]) for r in rows]
    # stdout: one JSON object per line, a step event per trace row, then the result
    assert [l["event"] for l in lines] == ["step"] * len(rows) + ["result"]
    assert lines[-1]["test_accuracy"] == rows[-1]["test_accuracy"]
    # every row's checkpoint is on disk, and the manifest hashes match
    import hashlib

    manifest = json.loads((out / "manifest.json").read_text())
    for r in rows:
        assert r["checkpoint"] in manifest
    for rel, digest in manifest.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest


def test_config_is_resolved_and_reusable(run70, tmp_path):
    out, _ = run70
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["sparsity"] == 0.7 and cfg["arch"] == "mlp" and cfg["data"] == "mnist"
    assert cfg["step_size"] > 0 and cfg["max_steps"] == 12  # the defaults were resolved


def test_trace_reproduced_by_saved_networks(run70):
    out, _ = run70
    test = load_dataset("mnist", "test", DATA_ROOT).head(500)
    start = load_checkpoint(SAMPLE).model
    space = ParamSpace.of(start)
    target = MagnitudeTarget(space, model_vector(start, space), 0.7, prunable_parameters(start))
    rows = [json.loads(l) for l in (out / "trace.jsonl").read_text().splitlines()]
    for r in rows:
        ck = load_checkpoint(out / r["checkpoint"])
        ev = evaluate(ck.model, test)
        assert ev.accuracy == pytest.approx(r["test_accuracy"], abs=1e-12)
        assert ev.loss == pytest.approx(r["test_loss"], rel=1e-5)
        assert target.distance(model_vector(ck.model, space)) == pytest.approx(r["distance"], rel=1e-5, abs=1e-6)
        assert ck.metadata["geopath.step"] == str(r["step"])
        assert ck.metadata["geopath.parent_sha256"] == load_checkpoint(SAMPLE).sha256


def test_endpoint_exactly_on_hyperplane(run70):
    out, _ = run70
    start = load_checkpoint(SAMPLE).model
    space = ParamSpace.of(start)
    target = MagnitudeTarget(space, model_vector(start, space), 0.7, prunable_parameters(start))
    tensors, meta = read_tensors(out / "final.safetensors")
    w = space.flatten(tensors)
    assert bool((w[target.mask] == 0).all())  # true zeros, stored as such
    n_prunable = sum(start.get_parameter(p).numel() for p in prunable_parameters(start))
    assert int((torch.cat([tensors[p].reshape(-1) for p in prunable_parameters(start)]) == 0).sum()) >= round(0.7 * n_prunable)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sparsity"] == pytest.approx(0.7, abs=1e-4)
    assert summary["test_accuracy"] > 0.9  # the function was kept


def test_resume_after_interrupt_matches_uninterrupted(run70, tmp_path):
    """Kill a real run with SIGINT, resume it, and get the uninterrupted result."""
    full_out, _ = run70
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "geopath", "sparsify", str(SAMPLE), "-o", str(out), "--sparsity", "0.7",
           *FAST, *ENGINE, "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    seen = 0
    for line in proc.stdout:  # wait for the row of step 2, then interrupt
        if json.loads(line).get("step", 0) >= 2:
            seen = 1
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert seen and proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert not (out / "final.safetensors").exists()
    resumed = geopath("sparsify", "-o", out, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    a, _ = read_tensors(full_out / "final.safetensors")
    b, _ = read_tensors(out / "final.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    ra = [json.loads(l) for l in (full_out / "trace.jsonl").read_text().splitlines()]
    rb = [json.loads(l) for l in (out / "trace.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    assert [r["test_accuracy"] for r in ra] == [r["test_accuracy"] for r in rb]


def test_structured_removes_whole_neurons(tmp_path):
    out = tmp_path / "out"
    proc = geopath("sparsify", SAMPLE, "-o", out, "--structured", "layers.0:200", *FAST, "--json")
    assert proc.returncode == 0, proc.stderr
    tensors, _ = read_tensors(out / "final.safetensors")
    dead = (tensors["layers.0.weight"].abs().sum(1) == 0) & (tensors["layers.0.bias"] == 0)
    assert int(dead.sum()) == 200
    assert json.loads(proc.stdout.splitlines()[-1])["test_accuracy"] > 0.85
    # no weight is ranked, so no criterion is recorded, and the run's config replays (--criterion is refused here)
    from geopath.config import SparsifyConfig, resolve

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["criterion"] is None
    assert resolve(SparsifyConfig, saved, {}).structured == "layers.0:200"


@pytest.mark.parametrize("method", ["geodesic", "prune-finetune"])
def test_a_layer_run_reports_the_whole_networks_sparsity_and_the_layers(tmp_path, method):
    """--layer layers.2.weight --sparsity 0.5 zeroes 500 of the 266,200 weights: the run's sparsity (trace, summary,
    text, what compare shows) is the whole network's, as eval counts it, and layer_sparsity the named layer's."""
    out = tmp_path / method
    proc = geopath("sparsify", SAMPLE, "-o", out, "--layer", "layers.2.weight", "--sparsity", "0.5",
                   "--method", method, *(FAST if method == "geodesic" else [*FAST_DATA, "--finetune-epochs", "0.05"]))
    assert proc.returncode == 0, proc.stderr
    tensors, _ = read_tensors(out / "final.safetensors")
    zeros = int((tensors["layers.2.weight"] == 0).sum())
    total = sum(tensors[k].numel() for k in ("layers.0.weight", "layers.1.weight", "layers.2.weight"))
    assert zeros == 500
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sparsity"] == pytest.approx(zeros / total) and summary["layer_sparsity"] == 0.5
    assert f"sparsity:        {zeros / total:.4f} (0.5000 of the --layer parameters)" in proc.stdout
    rows = [json.loads(l) for l in (out / "trace.jsonl").read_text().splitlines()]
    assert rows[-1]["sparsity"] == summary["sparsity"] and rows[0]["layer_sparsity"] == 0.0


@pytest.mark.parametrize("method", ["geodesic", "prune-finetune"])
def test_the_wall_time_counts_the_work_the_passes_count_before_the_walk(tmp_path, monkeypatch, method):
    """Ranking the weights and the settle rules are counted in sample passes from the start; their seconds are
    counted too (the clock started only with the walk or the peer, so the geodesic's rules were free of time)."""
    from geopath.jobs import sparsify

    from .._helpers import cli

    real = sparsify.build_target
    monkeypatch.setattr(sparsify, "build_target", lambda *a, **k: time.sleep(0.4) or real(*a, **k))
    out = tmp_path / method
    proc = cli("sparsify", SAMPLE, "-o", out, "--sparsity", "0.5", "--method", method,
               *(FAST if method == "geodesic" else [*FAST_DATA, "--finetune-epochs", "0.05"]))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(l) for l in (out / "trace.jsonl").read_text().splitlines()]
    assert rows[0]["wall_time"] >= 0.4 and rows[-1]["wall_time"] > rows[0]["wall_time"]


def test_every_saved_network_has_fresh_batchnorm_statistics(tmp_path):
    """Regression: sparsify used to re-estimate BatchNorm statistics at the endpoint only, so the
    trace scored intermediate networks with the start's stale statistics (on a CIFAR VGG11 a path
    that kept 72 % under batch statistics was reported at 35 %)."""
    from .._helpers import train_net
    from .test_connect import _assert_fresh_bn

    start = train_net(tmp_path / "bn.safetensors", "tests._helpers:BNMLP", {}, "mnist", size=1000, epochs=1, seed=0)
    out = tmp_path / "out"
    proc = geopath("sparsify", start, "-o", out, "--arch", "tests._helpers:BNMLP", "--structured", "fc1:16",
                   "--data-root", DATA_ROOT,
                   "--metric-size", "1000", "--eval-size", "300", "--bn-samples", "500", "--steps", "6",
                   "--save-every", "2", "--batch-size", "64", "--cg-iters", "3")
    assert proc.returncode == 0, proc.stderr
    bn_data = load_dataset("mnist", "train", DATA_ROOT).head(500)
    test = load_dataset("mnist", "test", DATA_ROOT).head(300)
    ts, _ = read_tensors(start)
    rows = read_csv(out / "trace.csv")
    assert len(rows) >= 4
    for r in rows[1:]:  # (the start keeps its trained statistics)
        _assert_fresh_bn(out / r["checkpoint"], bn_data, [ts])
        net = load_checkpoint(out / r["checkpoint"], trust_code=True).model
        assert evaluate(net, test).accuracy == pytest.approx(float(r["test_accuracy"]), abs=1e-12)


def test_defaults_choose_the_ranking_and_the_settle(tmp_path):
    out = tmp_path / "out"
    proc = geopath("sparsify", SAMPLE, "-o", out, "--sparsity", "0.9", *FAST, "--settle-epochs", "0.5", "--json")
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    # the rules are recorded as rules (a replay applies them again); what they chose is in the summary. The
    # shipped MNIST MLP classifies every one of its first 2,000 training inputs right: it settles on its own
    # outputs, at the distillation's learning rate
    assert cfg["criterion"] == "magnitude" and cfg["settle"] == "auto" and cfg["settle_lr"] == 0.05
    rows = [json.loads(l) for l in (out / "trace.jsonl").read_text().splitlines()]
    landed = [r for r in rows if r["checkpoint"] == "steps/landed.safetensors"]
    assert len(landed) == 1 and landed[0]["t"] == 1.0
    after = rows[rows.index(landed[0]):]
    assert [r["step"] for r in after] == sorted(r["step"] for r in after)
    assert all(r["distance"] == 0.0 and r["landed_at"] == landed[0]["landed_at"] for r in after)
    # the settle phase spends --settle-epochs of the 2000 metric inputs (SGD steps of 64), a distillation step
    # paying the start's forward pass too
    spent = after[-1]["sample_passes"] - landed[0]["sample_passes"]
    assert spent == pytest.approx((int(0.5 * 2000 / (4 / 3)) // 64) * 64 * (4 / 3))
    # paid for up front: the settle rule's one forward pass of the 2,000 inputs (magnitude costs nothing) and the
    # settle optimizer rule's sharpness (a forward pass and its products on 256 inputs); it keeps SGD here
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert cfg["settle_optimizer"] == "auto" and summary["settle_optimizer"]["chosen"] == "sgd"
    products = summary["settle_optimizer"]["products"]
    assert products == 10 and rows[0]["sample_passes"] == pytest.approx(round(2000 / 3) + 256 * (1 / 3 + 4 / 3 * 10))
    # the walk lands at 0.8 of the removals (--settle-prune 0.2, resolved and recorded) and the settle prunes
    # the rest: every weight the walk removed stays removed, and the settle did train
    assert cfg["settle_prune"] == 0.2 and landed[0]["sparsity"] == pytest.approx(0.72, abs=1e-4)
    assert cfg["settle_prune_until"] == 0.5  # (distilling: the sparsity grows over the settle's first half)
    assert [r["sparsity"] for r in after] == sorted(r["sparsity"] for r in after)
    landed_w, _ = read_tensors(out / "steps" / "landed.safetensors")
    final_w, _ = read_tensors(out / "final.safetensors")
    for name in prunable_parameters(load_checkpoint(SAMPLE).model):
        assert bool((final_w[name][landed_w[name] == 0] == 0).all())
        assert not torch.equal(landed_w[name], final_w[name])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert "ranking" not in summary and summary["target"]["criterion"] == "magnitude"  # (no rule chose it)
    # (2,000 metric inputs: the rule's draw is all of them)
    fitted = evaluate(load_checkpoint(SAMPLE).model, load_dataset("mnist", "train", DATA_ROOT).head(2000)).accuracy
    assert fitted >= 0.998
    assert summary["settle"] == {"rule": "auto", "chosen": "distill", "inputs": 2000, "train_accuracy": fitted,
                                 "threshold": 0.998}


def test_peers_rank_by_magnitude_unless_obd(tmp_path):
    common = [SAMPLE, "--sparsity", "0.9", *FAST_DATA, "--finetune-epochs", "0"]
    geopath("sparsify", *common, "-o", tmp_path / "pf", "--method", "prune-finetune", check=True)
    geopath("sparsify", *common, "-o", tmp_path / "obd", "--method", "obd", check=True)
    pf = yaml.safe_load((tmp_path / "pf" / "config.yaml").read_text())
    obd = yaml.safe_load((tmp_path / "obd" / "config.yaml").read_text())
    assert pf["criterion"] == "magnitude" and obd["criterion"] == "saliency"
    a, _ = read_tensors(tmp_path / "pf" / "final.safetensors")
    b, _ = read_tensors(tmp_path / "obd" / "final.safetensors")
    assert not torch.equal(a["layers.0.weight"] == 0, b["layers.0.weight"] == 0)  # different weights went
    refused = geopath("sparsify", SAMPLE, "-o", tmp_path / "s", "--method", "obd", "--structured", "layers.0:10",
                      *FAST_DATA)
    assert refused.returncode == 2 and "does not take --structured" in refused.stderr


def test_saliency_passes_count_for_every_peer_and_stages_refuse_it(tmp_path):
    from .._helpers import cli

    out = tmp_path / "pf"
    geopath("sparsify", SAMPLE, "-o", out, "--sparsity", "0.9", *FAST_DATA, "--method", "prune-finetune",
            "--criterion", "saliency", "--finetune-epochs", "1", check=True)
    rows = [json.loads(l) for l in (out / "trace.jsonl").read_text().splitlines()]
    assert rows[0]["sample_passes"] == 1024  # the diagonal's passes, first
    assert rows[-1]["sample_passes"] <= 2000 + 1e-9  # and inside the budget of one epoch of 2000 inputs
    for method in ("gradual", "iterative-prune"):
        refused = cli("sparsify", SAMPLE, "-o", tmp_path / method, "--method", method, "--criterion", "saliency",
                      *FAST_DATA)
        assert refused.returncode == 2 and "does not take --criterion saliency" in refused.stderr


def test_obd_refuses_a_magnitude_ranking(tmp_path):
    from .._helpers import cli

    refused = cli("sparsify", SAMPLE, "-o", tmp_path / "o", "--method", "obd", "--criterion", "magnitude", *FAST_DATA)
    assert refused.returncode == 2 and "does not take --criterion magnitude" in refused.stderr
    assert not (tmp_path / "o").exists()


def test_peers_record_at_the_geodesics_cadence_in_passes(tmp_path):
    """A sparsify peer writes one network every --save-every geodesic steps' worth of passes (8 SGD steps
    of --batch-size each), so at equal passes both runs spend the same time recording."""
    counts = {}
    for save_every in (1, 2):
        out = tmp_path / f"every{save_every}"
        options = [o if o != "2" or FAST_DATA[i - 1] != "--save-every" else str(save_every)
                   for i, o in enumerate(FAST_DATA)]
        geopath("sparsify", SAMPLE, "-o", out, "--sparsity", "0.9", *options, "--method", "prune-finetune",
                "--finetune-epochs", "2", check=True)
        rows = [json.loads(l) for l in (out / "trace.jsonl").read_text().splitlines()]
        counts[save_every] = len(rows) - 3  # beside the dense start, the pruned network and the final one
    # 2 epochs of 2000 inputs = 4000 passes; one network per save_every × 8 × 64 passes
    assert counts == {1: round(4000 / 512), 2: round(4000 / 1024)}


SETTLE = [SAMPLE, "--sparsity", "0.9", *FAST, "--settle-epochs", "0.5"]


@pytest.fixture(scope="module")
def plain_settle(tmp_path_factory):
    """A sparsify run with the settle's defaults, the baseline of the settle-option tests (run once)."""
    out = tmp_path_factory.mktemp("settle") / "plain"
    geopath("sparsify", *SETTLE, "-o", out, check=True)
    return out


def _settle_variant(plain, tmp_path, option: str, value: str) -> tuple[dict, dict, dict, dict]:
    """Final and landed weights of the plain run and of one run with ``option value``; the option is
    recorded in the config, and ``option 1`` is refused in one line."""
    from .._helpers import cli

    out = tmp_path / "variant"
    geopath("sparsify", *SETTLE, "-o", out, option, value, check=True)
    assert yaml.safe_load((out / "config.yaml").read_text())[option[2:].replace("-", "_")] == float(value)
    refused = cli("sparsify", *SETTLE, "-o", tmp_path / "bad", option, "1")
    assert refused.returncode == 2 and f"{option} must be in [0, 1)" in refused.stderr
    return tuple(read_tensors(run / name)[0] for run in (plain, out)
                 for name in ("final.safetensors", "steps/landed.safetensors"))


def test_settle_warmup_changes_the_settle_and_is_recorded(plain_settle, tmp_path):
    a, la, b, lb = _settle_variant(plain_settle, tmp_path, "--settle-warmup", "0.5")
    assert all(torch.equal(la[k], lb[k]) for k in la)  # the same walk ...
    assert not torch.equal(a["layers.0.weight"], b["layers.0.weight"])  # ... then another settle
    # to the same sparsity (the settle re-chooses the last removals, so not necessarily the same weights)
    names = prunable_parameters(load_checkpoint(SAMPLE).model)
    assert sum(int((a[n] == 0).sum()) for n in names) == sum(int((b[n] == 0).sum()) for n in names)


def test_settle_average_ends_on_averaged_weights_on_the_same_hyperplane(plain_settle, tmp_path):
    a, landed, b, _ = _settle_variant(plain_settle, tmp_path, "--settle-average", "0.5")
    assert not torch.equal(a["layers.0.weight"], b["layers.0.weight"])  # another end ...
    assert all(torch.equal(a[k] == 0, b[k] == 0) for k in a)  # ... on the same hyperplane
    # the average of the last half of the steps lies between the landed network and the last step's
    w = {key: torch.cat([t[n].flatten() for n in sorted(t)]) for t, key in ((landed, "l"), (a, "a"), (b, "b"))}
    assert torch.linalg.vector_norm(w["b"] - w["l"]) < torch.linalg.vector_norm(w["a"] - w["l"])


def test_settle_prune_zero_lands_on_the_whole_target_and_the_settle_keeps_its_mask(plain_settle, tmp_path):
    """``--settle-prune 0``: the walk lands on the target itself and fine-tuning never revives a weight; with the
    default the same walk goes to 0.8 of the removals (another landing) and the settle ends on the target."""
    a, la, b, lb = _settle_variant(plain_settle, tmp_path, "--settle-prune", "0")
    names = prunable_parameters(load_checkpoint(SAMPLE).model)
    zeros = {key: sum(int((t[n] == 0).sum()) for n in names) for t, key in ((la, "la"), (a, "a"), (lb, "lb"), (b, "b"))}
    assert zeros["lb"] == zeros["b"] == zeros["a"] > zeros["la"]  # the removals: the target's, or 80 % at landing
    assert all(torch.equal(lb[n] == 0, b[n] == 0) for n in names)


def test_settle_prune_until_changes_the_settle_only_and_defaults_by_what_the_settle_trains_on(plain_settle,
                                                                                             tmp_path):
    """``--settle-prune-until``: the same walk and landing, another settle on a hyperplane of the same size;
    resolved and recorded (0.5 distilling, the plain run; 0.75 on the labels); refused outside (0, 1]."""
    from .._helpers import cli, one_error_line

    out = tmp_path / "until"
    geopath("sparsify", *SETTLE, "-o", out, "--settle-prune-until", "1", check=True)
    assert yaml.safe_load((out / "config.yaml").read_text())["settle_prune_until"] == 1.0
    a, la, b, lb = (read_tensors(run / name)[0] for run in (plain_settle, out)
                    for name in ("final.safetensors", "steps/landed.safetensors"))
    assert all(torch.equal(la[k], lb[k]) for k in la)  # the same walk ...
    names = prunable_parameters(load_checkpoint(SAMPLE).model)
    assert not torch.equal(a[names[0]], b[names[0]])  # ... another settle ...
    assert sum(int((a[n] == 0).sum()) for n in names) == sum(int((b[n] == 0).sum()) for n in names)  # ... same size
    labels = tmp_path / "labels"
    geopath("sparsify", *SETTLE, "-o", labels, "--settle", "finetune", check=True)
    assert yaml.safe_load((labels / "config.yaml").read_text())["settle_prune_until"] == 0.75
    for bad in ("0", "1.5"):
        refused = cli("sparsify", *SETTLE, "-o", tmp_path / "bad", "--settle-prune-until", bad)
        assert refused.returncode == 2 and "--settle-prune-until must be in (0, 1]" in one_error_line(refused)
    refused = cli("sparsify", *SETTLE, "-o", tmp_path / "bad", "--settle-prune", "0", "--settle-prune-until", "0.5")
    assert refused.returncode == 2 and "--settle-prune 0 leaves the settle nothing" in one_error_line(refused)


def test_resumed_default_run_walks_to_the_mask_chosen_at_the_start(tmp_path):
    """Regression: the walk's mask (0.8 of the removals) was re-chosen from the network a run resumed
    from, so an interrupted default run could walk to another mask than the uninterrupted one."""
    args = [*SETTLE, "--steps", "60", "--max-steps", "60", "--save-every", "5"]  # a walk long enough to interrupt
    full, out = tmp_path / "full", tmp_path / "out"
    geopath("sparsify", *args, "-o", full, check=True)
    cmd = [sys.executable, "-m", "geopath", "sparsify", *map(str, args), "-o", str(out), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    seen = 0
    for line in proc.stdout:  # interrupt during the walk, after a network has been saved
        if json.loads(line).get("step", 0) >= 5:
            seen = 1
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert seen and proc.returncode == 130, err
    resumed = geopath("sparsify", "-o", out, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    for name in ("steps/landed.safetensors", "final.safetensors"):
        a, _ = read_tensors(full / name)
        b, _ = read_tensors(out / name)
        assert all(torch.equal(a[k] == 0, b[k] == 0) for k in a), name
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--structured", "layers.0:100"], "--settle-prune: not read by this run (--structured removes whole units"),
    (["--settle", "geodesic", *SETTLE_STEPS], "--settle-prune: not read by this run (--settle geodesic takes steps"),
    (["--mask", "dynamic"], "--settle-prune: not read by this run (--mask dynamic re-chooses"),
    (["--method", "gradual"], "--settle-prune: not read by this run (--method gradual settles by its own")])
@pytest.mark.parametrize("option, value", [("--settle-prune", "0.3"), ("--settle-prune-until", "0.6")])
def test_settle_prune_is_refused_where_nothing_would_read_it(tmp_path, extra, message, option, value):
    from .._helpers import cli, one_error_line

    refused = cli("sparsify", SAMPLE, "-o", tmp_path / "o", *FAST_DATA, option, value,
                  *(["--sparsity", "0.9"] if "--structured" not in extra else []), *extra)
    assert refused.returncode == 2 and message.replace("--settle-prune", option) in one_error_line(refused), \
        refused.stderr


def test_settle_augment_settles_a_convnet_on_views_of_its_images_on_the_same_hyperplane(tmp_path):
    """--settle-augment crop-flip on a LeNet-5: the same walk, another settle, the same hyperplane (the mask
    fixed: --settle-prune 0; pruning in the settle re-chooses it by the weights each settle reaches), recorded."""
    net = train_net(tmp_path / "lenet.safetensors", "lenet5", size=1000, epochs=1, seed=0)
    common = [net, "--sparsity", "0.8", *FAST, "--steps", "3", "--settle-epochs", "0.25", "--settle-prune", "0"]
    ends = {}
    for kind in ("none", "crop-flip"):
        geopath("sparsify", *common, "-o", tmp_path / kind, "--settle-augment", kind, check=True)
        assert yaml.safe_load((tmp_path / kind / "config.yaml").read_text())["settle_augment"] == kind
        ends[kind] = [read_tensors(tmp_path / kind / name)[0] for name in ("steps/landed.safetensors",
                                                                           "final.safetensors")]
    (la, a), (lb, b) = ends["none"], ends["crop-flip"]
    assert all(torch.equal(la[k], lb[k]) for k in la)  # the same walk ...
    assert not torch.equal(a["conv1.weight"], b["conv1.weight"])  # ... then another settle
    assert all(torch.equal(a[k] == 0, b[k] == 0) for k in a)  # on the same hyperplane


def test_settle_augment_is_refused_for_vectors_geodesic_settle_steps_and_peers(tmp_path):
    """Views need images: a data set of flat vectors is refused before anything is written (MNIST's images
    are images, whatever network reads them); geodesic settle steps take no views, and a peer no settle."""
    import numpy as np

    from .._helpers import cli

    images = load_dataset("mnist", "train", DATA_ROOT).head(256)
    flat = tmp_path / "flat.npz"
    np.savez(flat, x=images.x.reshape(256, -1).numpy(), y=images.y.numpy())
    for extra, message in ((["--data", flat, "--eval-data", flat, "--settle-augment", "crop"],
                            "--settle-augment crop needs image inputs (C×H×W); these are 784 per sample"),
                           (["--settle-augment", "crop-flip", "--settle", "geodesic"],
                            "--settle-augment needs --settle finetune or distill"),
                           (["--settle-augment", "flip", "--method", "prune-finetune"],
                            "--settle-augment is an option of the geodesic's settle; --method prune-finetune "
                            "does not take it")):
        refused = cli("sparsify", *SETTLE, "-o", tmp_path / "o", *extra)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o").exists()


def test_settle_holdout_ends_on_the_network_with_the_lowest_held_out_loss(tmp_path):
    """--settle-holdout 0.25: the last 500 of the 2000 metric inputs stay out of the SGD; the run ends on
    whichever of the landed network, the recorded settle networks and the last one has the lowest
    cross-entropy on them, and the held-out forward passes are counted."""
    out = tmp_path / "out"
    geopath("sparsify", SAMPLE, "-o", out, "--sparsity", "0.9", *FAST, "--settle-epochs", "1", "--settle-lr", "0.5",
            "--settle-holdout", "0.25", "--settle-prune", "0", "--settle", "finetune", check=True)
    held = load_dataset("mnist", "train", DATA_ROOT).head(2000)
    x, y = held.x[1500:], held.y[1500:]

    def loss(path) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(load_checkpoint(path).model.eval()(x), y))

    rows = [json.loads(l) for l in (out / "trace.jsonl").read_text().splitlines()]
    landed = next(r for r in rows if r["checkpoint"] == "steps/landed.safetensors")
    settle = [r for r in rows[rows.index(landed):] if r["checkpoint"] != "final.safetensors"]
    candidates = [loss(out / r["checkpoint"]) for r in settle]
    final = loss(out / "final.safetensors")
    assert final <= min(candidates) + 1e-6
    # SGD on the other 1,500 inputs for 31 steps (an epoch of 24 batches, the last of 28, then 7 of 64), plus
    # 3 held-out checks (landed, step 16, last) of 500 forward passes at 1/3 each
    assert rows[-1]["sample_passes"] - landed["sample_passes"] == pytest.approx(1500 + 7 * 64 + 3 * 500 / 3)
    a, _ = read_tensors(out / "final.safetensors")
    for name in prunable_parameters(load_checkpoint(SAMPLE).model):  # still on the hyperplane
        assert torch.equal(a[name] == 0, read_tensors(out / "steps" / "landed.safetensors")[0][name] == 0)
    # with --settle-prune 0.2 (the default) only networks at the target's sparsity can end the run: not the
    # landed one (at 0.72) nor one recorded while the sparsity grows (over the first 15 of the 31 steps with
    # --settle-prune-until 0.5; the step-16 network is then at the target's sparsity)
    grown = tmp_path / "grown"
    geopath("sparsify", SAMPLE, "-o", grown, "--sparsity", "0.9", *FAST, "--settle-epochs", "1", "--settle-lr", "0.5",
            "--settle-holdout", "0.25", "--settle", "finetune", "--settle-prune-until", "0.5", check=True)
    rows = [json.loads(l) for l in (grown / "trace.jsonl").read_text().splitlines()]
    landed = next(r for r in rows if r["checkpoint"] == "steps/landed.safetensors")
    assert rows[-1]["sparsity"] == pytest.approx(0.9, abs=1e-4) and landed["sparsity"] < 0.8
    settle = [r for r in rows[rows.index(landed):] if r["checkpoint"] != "final.safetensors"]
    candidates = [loss(grown / r["checkpoint"]) for r in settle if r["sparsity"] == pytest.approx(0.9, abs=1e-4)]
    assert len(candidates) == 1 and loss(grown / "final.safetensors") <= min(candidates) + 1e-6
    assert rows[-1]["sample_passes"] - landed["sample_passes"] == pytest.approx(1500 + 7 * 64 + 2 * 500 / 3)


@pytest.mark.parametrize("extra, message", [
    (["--method", "gradual", "--steps", "20"], "--steps: not read by this run (--method gradual takes no option "
                                               "of the geodesic's)"),
    (["--method", "prune-finetune", "--rounds", "3"], "--rounds: not read by this run (--method prune-finetune does "
                                                      "not take it)"),
    (["--finetune-epochs", "2"], "--finetune-epochs: not read by this run (the geodesic takes no peer option)"),
    (["--settle-steps", "40"], "--settle-steps: not read by this run (--settle auto trains (finetune or distill)"),
    (["--settle", "geodesic", "--settle-lr", "0.2"], "--settle-lr: not read by this run (--settle geodesic takes "
                                                     "steps"),
    (["--settle", "geodesic", "--settle-optimizer", "adam"], "--settle-optimizer: not read by this run (--settle "
                                                             "geodesic takes steps"),
    (["--method", "gradual", "--settle-optimizer", "adam"], "--settle-optimizer: not read by this run (--method "
                                                            "gradual settles by its own training"),
    (["--settle-optimizer", "rmsprop"], "rmsprop")])
def test_an_option_the_run_would_not_read_is_refused_before_anything_is_written(tmp_path, extra, message):
    from .._helpers import cli, one_error_line

    refused = cli("sparsify", SAMPLE, "-o", tmp_path / "o", "--sparsity", "0.9", *FAST_DATA, *extra)
    assert refused.returncode == 2 and message in one_error_line(refused), refused.stderr
    assert not (tmp_path / "o").exists()


def test_a_peer_run_repeats_from_its_own_config(tmp_path):
    """A peer's config.yaml names every option (the geodesic's at their defaults: a peer resolves no step size),
    so ``--config OUT/config.yaml`` repeats it and is not refused."""
    first = tmp_path / "first"
    geopath("sparsify", SAMPLE, "-o", first, "--sparsity", "0.9", *FAST_DATA, "--method", "gradual",
            "--finetune-epochs", "0.25", check=True)
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["step_size"] is None and saved["max_steps"] is None
    again = geopath("sparsify", "-o", tmp_path / "again", "--config", first / "config.yaml")
    assert again.returncode == 0, again.stderr
    a, _ = read_tensors(first / "final.safetensors")
    b, _ = read_tensors(tmp_path / "again" / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_default_approach_length_follows_the_settle():
    """Without --max-steps the approach is --steps long before a training settle at constant β (the passes go to
    the settle), and three times that before geodesic settle steps, without a settle, or with a growing β."""
    from geopath.config import Settle, SparsifyConfig
    from geopath.jobs.sparsify import default_max_steps

    def cfg(**kw):
        return SparsifyConfig(checkpoint="x", out="o", sparsity=0.9, steps=20, **kw)

    assert default_max_steps(cfg()) == 20
    assert default_max_steps(cfg(settle=Settle.DISTILL)) == 20
    assert default_max_steps(cfg(settle=Settle.GEODESIC)) == 60
    assert default_max_steps(cfg(beta_growth=4.0)) == 60
    assert default_max_steps(cfg(settle_epochs=0.0)) == 60  # no settle to give the passes to


def test_default_settle_lr_is_lower_when_whole_units_go_or_on_the_starts_outputs():
    from geopath.config import Settle, SparsifyConfig
    from geopath.jobs.sparsify import default_settle_lr

    unstructured = SparsifyConfig(checkpoint="x", out="o", sparsity=0.9)
    units = SparsifyConfig(checkpoint="x", out="o", structured="layers.0:100")
    assert default_settle_lr(unstructured, Settle.FINETUNE) == 0.1
    assert default_settle_lr(unstructured, Settle.DISTILL) == 0.05
    assert default_settle_lr(units, Settle.FINETUNE) == 0.05
    assert default_settle_lr(units, Settle.DISTILL) == 0.05
    adam = SparsifyConfig(checkpoint="x", out="o", sparsity=0.9, settle_optimizer="adam").validate()
    assert default_settle_lr(adam, Settle.FINETUNE) == default_settle_lr(adam, Settle.DISTILL) == 0.001


def test_settle_optimizer_adam_trains_the_settle_with_adam_and_replays(tmp_path, monkeypatch):
    """--settle-optimizer adam: the settle's training runs Adam at the resolved lr 0.001 (the walk is unchanged),
    the config records both and runs again as it is; SGD (the default) otherwise."""
    from geopath.config import SparsifyConfig
    from geopath.jobs.sparsify import run_sparsify

    seen = spy_on_training(monkeypatch)

    def cfg(out, **kw):
        return SparsifyConfig(checkpoint=str(SAMPLE), out=str(out), sparsity=0.9, data_root=str(DATA_ROOT),
                              metric_size=2000, eval_size=500, batch_size=64, steps=4, max_steps=4, cg_iters=2,
                              settle="finetune", settle_epochs=0.05, **kw).validate()

    run_sparsify(cfg(tmp_path / "adam", settle_optimizer="adam"))
    run_sparsify(cfg(tmp_path / "sgd"))
    assert seen == [("adam", 0.001), ("sgd", 0.1)]
    saved = yaml.safe_load((tmp_path / "adam" / "config.yaml").read_text())
    assert saved["settle_optimizer"] == "adam" and saved["settle_lr"] == 0.001
    a, _ = read_tensors(tmp_path / "adam" / "final.safetensors")
    b, _ = read_tensors(tmp_path / "sgd" / "final.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    again = geopath("sparsify", "--config", tmp_path / "adam" / "config.yaml", "--out", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    c, _ = read_tensors(tmp_path / "again" / "final.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)


class _Logits(torch.nn.Module):
    """A network whose outputs are its inputs (so the data decide what it gets right)."""

    def forward(self, x):
        return x


@pytest.mark.parametrize("wrong, chosen", [(0, "distill"), (2, "distill"), (3, "finetune"), (400, "finetune")])
def test_settle_auto_distils_only_a_start_that_fits_its_labels(wrong, chosen):
    """--settle auto: on the labels unless the start gets at least 99.8 % of (at most 2,048 of) the training inputs
    right; the rule costs one forward pass of them and names what it measured."""
    from geopath.config import Settle, SparsifyConfig
    from geopath.core.dataset import Dataset
    from geopath.jobs.sparsify import choose_settle

    n = 1000
    x = torch.nn.functional.one_hot(torch.arange(n) % 10, 10).float()
    y = torch.arange(n) % 10
    y[:wrong] = (y[:wrong] + 1) % 10  # the start gets these wrong
    cfg = SparsifyConfig(checkpoint="x", out="o", sparsity=0.9)
    settle, record, passes = choose_settle(cfg, _Logits(), Dataset(x, y, "toy", "train"), "cpu")
    assert settle is Settle(chosen) and passes == round(n / 3)
    assert record == {"rule": "auto", "chosen": chosen, "inputs": n, "train_accuracy": 1 - wrong / n,
                      "threshold": 0.998}
    # an explicit settle, a peer, or no settle at all: nothing measured, nothing spent
    for other in (dict(settle=Settle.FINETUNE), dict(settle=Settle.DISTILL), dict(method="prune-finetune"),
                  dict(settle_epochs=0.0)):
        settle, record, passes = choose_settle(SparsifyConfig(checkpoint="x", out="o", sparsity=0.9, **other),
                                               _Logits(), Dataset(x, y, "toy", "train"), "cpu")
        assert record is None and passes == 0
        assert settle is other.get("settle", Settle.FINETUNE)


def test_settle_auto_fine_tunes_when_whole_units_go():
    """--structured: on the labels whatever the start fits, at no cost, and the record says why."""
    from geopath.config import Settle, SparsifyConfig
    from geopath.core.dataset import Dataset
    from geopath.jobs.sparsify import choose_settle

    x = torch.nn.functional.one_hot(torch.arange(100) % 10, 10).float()
    data = Dataset(x, torch.arange(100) % 10, "toy", "train")  # the start gets every input right
    fits = choose_settle(SparsifyConfig(checkpoint="x", out="o", sparsity=0.9), _Logits(), data, "cpu")
    assert fits[0] is Settle.DISTILL  # (unstructured, the same start distils)
    settle, record, passes = choose_settle(SparsifyConfig(checkpoint="x", out="o", structured="layers.0:3"),
                                           _Logits(), data, "cpu")
    assert settle is Settle.FINETUNE and passes == 0
    assert record == {"rule": "auto", "chosen": "finetune", "structured": True}


def test_the_text_says_what_settle_auto_chose():
    from geopath.jobs.sparsify import Sparsify

    base = {"out": "o", "final": "final.safetensors", "test_accuracy": 0.98, "dense_test_accuracy": 0.985,
            "sparsity": 0.9, "length": 1.0, "step": 10, "epochs": 4.84}
    assert not any(line.startswith("settle:") for line in Sparsify.text(base))  # (a forced --settle: no rule)
    fitted = {"rule": "auto", "chosen": "distill", "inputs": 2048, "train_accuracy": 0.99853515625,
              "threshold": 0.998}
    assert Sparsify.text({**base, "settle": fitted})[-1] == (
        "settle:          distill (auto: the start gets 99.85% of 2,048 training inputs right; distils from 99.8%)")
    units = {"rule": "auto", "chosen": "finetune", "structured": True}
    assert Sparsify.text({**base, "settle": units})[-1] == "settle:          finetune (auto: whole units go)"


def test_the_text_says_what_criterion_auto_chose():
    from geopath.jobs.sparsify import Sparsify

    base = {"out": "o", "final": "final.safetensors", "test_accuracy": 0.98, "dense_test_accuracy": 0.985,
            "sparsity": 0.9, "length": 1.0, "step": 10, "epochs": 4.84}
    assert not any(line.startswith("ranking:") for line in Sparsify.text(base))  # (a forced --criterion: no rule)
    record = {"rule": "auto", "chosen": "magnitude", "inputs": 1024, "agreement": {"magnitude": 0.96, "saliency": 0.962},
              "only": {"magnitude": 22, "saliency": 25}, "p": 0.3854334972865132}
    assert Sparsify.text({**base, "ranking": record})[-1] == (
        "ranking:         magnitude (auto: of 1,024 inputs, 25 keep the start's prediction only by saliency, "
        "22 only by magnitude; p = 0.39)")


def test_settle_auto_scores_a_seeded_draw_of_2048_inputs():
    from geopath.config import SparsifyConfig
    from geopath.core.dataset import Dataset
    from geopath.jobs.sparsify import choose_settle

    n = 5000
    x = torch.nn.functional.one_hot(torch.arange(n) % 10, 10).float()
    y = torch.arange(n) % 10
    y[:2500] = (y[:2500] + 1) % 10  # half wrong
    ds = Dataset(x, y, "toy", "train")
    records = [choose_settle(SparsifyConfig(checkpoint="x", out="o", sparsity=0.9, seed=s), _Logits(), ds, "cpu")[1]
               for s in (0, 0, 1)]
    assert records[0] == records[1] and records[0]["inputs"] == 2048
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:2048]
    assert records[0]["train_accuracy"] == pytest.approx(float((idx >= 2500).float().mean()))
    assert records[2]["train_accuracy"] != records[0]["train_accuracy"]


@needs_mnist
@pytest.mark.parametrize("target, settle, lr", [
    (["--sparsity", "0.9"], ["--settle-epochs", "0.05", "--settle", "finetune"], 0.1),
    (["--sparsity", "0.9"], ["--settle-epochs", "0.05"], 0.05),  # (auto: the shipped MLP fits its labels)
    (["--structured", "layers.0:100"], ["--settle-epochs", "0.05", "--settle", "finetune"], 0.05),
    (["--sparsity", "0.9"], ["--settle-epochs", "0.05", "--settle-lr", "0.02"], 0.02),
    (["--sparsity", "0.9"], ["--settle", "geodesic", *SETTLE_STEPS], None)])
def test_resolved_settle_lr_is_recorded_and_replays(tmp_path, target, settle, lr):
    """The settle's learning rate the run used is in its config.yaml (none for geodesic settle steps, which read
    none), and that config runs again as it is."""
    out = tmp_path / "run"
    r = geopath("sparsify", str(SAMPLE), *target, "--out", str(out), *FAST, *settle)
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["settle_lr"] == lr
    again = geopath("sparsify", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())["settle_lr"] == lr


@needs_mnist
def test_default_approach_length_is_recorded(tmp_path):
    """A run without --max-steps records the approach length it resolved, and walks no further before landing."""
    out = tmp_path / "run"
    at = FAST.index("--max-steps")
    fast = FAST[:at] + FAST[at + 2:]  # FAST without its --max-steps and that option's value
    r = geopath("sparsify", str(SAMPLE), "--sparsity", "0.9", "--out", str(out), *fast, "--settle-epochs", "0.05")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["max_steps"] == 6
    rows = [json.loads(l) for l in (out / "trace.jsonl").read_text().splitlines()]
    landed = next(r for r in rows if r["checkpoint"] == "steps/landed.safetensors")
    assert landed["step"] <= 7  # six approach steps at most, then the landing
