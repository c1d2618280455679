"""Real merge runs (MNIST MLP → Fashion-MNIST MLP) on small slices: files, selection, Pareto
front, reproducibility of the trace, peers, the split head, bad input and resume."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from geopath.core.params import ParamSpace, model_vector
from geopath.io.checkpoint import load_checkpoint, read_tensors
from geopath.io.data import Dataset, load_dataset
from geopath.core.evaluate import evaluate
from geopath.io.trace import read_csv

from .._helpers import (DATA_ROOT, ROOT, SAMPLE, check_manifest, cli, geopath, interrupt_when, jsonl,
                       needs_mnist, one_error_line, train_net)
from .._helpers import one_thread_subprocesses  # noqa: F401 (autouse: one thread per run)

pytestmark = needs_mnist

FASHION = ROOT / "sample_checkpoints" / "mlp_fashion_mnist.safetensors"
DATA_SLICES = ["--data-root", str(DATA_ROOT), "--metric-size", "2000", "--val-size", "500", "--eval-size", "500",
               "--batch-size", "64", "--save-every", "5"]
SLICES = [*DATA_SLICES, "--cg-iters", "3"]
GEO = [*SLICES, "--steps", "20"]
SPLIT = ["--head", "split", *SLICES, "--steps", "10"]
# each peer with its own options (a peer refuses the others' and the geodesic's)
PEER = {"average": [*DATA_SLICES, "--points", "5"],
        "fisher": [*DATA_SLICES, "--fisher-samples", "200", "--points", "5"],
        "ewc": [*DATA_SLICES, "--epochs", "0.2", "--fisher-samples", "200"]}
RUN_FILES = {"config.yaml", "trace.csv", "trace.jsonl", "steps", "final.safetensors", "best.safetensors",
             "pareto.json", "summary.json", "manifest.json"}
JOB_COLUMNS = ["test_accuracy_a", "test_accuracy_b", "test_loss_a", "test_loss_b", "val_accuracy_a",
               "val_accuracy_b", "alpha"]


def _vec(path) -> torch.Tensor:
    ck = load_checkpoint(path)
    return model_vector(ck.model, ParamSpace.of(ck.model))


def _nothing_written(out):
    for name in ("final.safetensors", "best.safetensors", "summary.json", "config.yaml", "steps", "trace.jsonl"):
        assert not (out / name).exists(), name


@pytest.fixture(scope="module")
def slices():
    """The exact data slices a run with SLICES evaluates on (test heads, the last 500 train samples)."""
    out = {}
    for task, name in (("a", "mnist"), ("b", "fashion-mnist")):
        test = load_dataset(name, "test", DATA_ROOT).head(500)
        train = load_dataset(name, "train", DATA_ROOT)
        out[task] = {"test": test, "val": Dataset(train.x[-500:], train.y[-500:], name, "val")}
    return out


@pytest.fixture(scope="module")
def geo(tmp_path_factory):
    out = tmp_path_factory.mktemp("merge") / "geo"
    proc = geopath("merge", SAMPLE, FASHION, "-o", out, *GEO, "--json")
    assert proc.returncode == 0, proc.stderr
    return out, [json.loads(l) for l in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    """``peers(method)``: the run directory of a peer merge (each run once per module)."""
    base, done = tmp_path_factory.mktemp("peers"), {}

    def get(method):
        if method not in done:
            out = base / method
            proc = geopath("merge", SAMPLE, FASHION, "-o", out, "--method", method, *PEER[method])
            assert proc.returncode == 0, proc.stderr
            done[method] = out
        return done[method]

    return get


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("merge") / "split"
    proc = geopath("merge", SAMPLE, FASHION, "-o", out, *SPLIT)
    assert proc.returncode == 0, proc.stderr
    (out.parent / "stdout.txt").write_text(proc.stdout)
    return out


def check_selection_and_front(out):
    """best.safetensors is the row the summary names, that row maximises min(val_a, val_b) and
    pareto.json is exactly the non-dominated set of trace rows (brute force)."""
    rows, summary = jsonl(out / "trace.jsonl"), json.loads((out / "summary.json").read_text())
    assert summary["select"] == "max-min" and summary["selected_on"] == "val"
    best = summary["best"]
    # the file is a byte copy of the named step
    assert (out / "best.safetensors").read_bytes() == (out / best["checkpoint"]).read_bytes()
    row = next(r for r in rows if r["checkpoint"] == best["checkpoint"])
    for k in ("step", "test_accuracy_a", "test_accuracy_b", "val_accuracy_a", "val_accuracy_b"):
        assert best[k] == row[k], k
    # max-min on the validation accuracies, recomputed (ties: larger sum, then the earliest row)
    score = [(min(r["val_accuracy_a"], r["val_accuracy_b"]), r["val_accuracy_a"] + r["val_accuracy_b"]) for r in rows]
    i_best = max(range(len(rows)), key=lambda i: (score[i], -i))
    assert min(row["val_accuracy_a"], row["val_accuracy_b"]) == max(s[0] for s in score)
    assert row["checkpoint"] == rows[i_best]["checkpoint"]
    assert summary["test_accuracy_a"] == row["test_accuracy_a"]
    assert summary["test_accuracy_b"] == row["test_accuracy_b"]
    assert summary["min_test_accuracy"] == min(row["test_accuracy_a"], row["test_accuracy_b"])
    # the Pareto front: rows no other row dominates (equal pairs: the earliest stands for them)
    pts = [(r["val_accuracy_a"], r["val_accuracy_b"]) for r in rows]
    expected = set()
    for i, (a, b) in enumerate(pts):
        dominated = any(a2 >= a and b2 >= b and (a2 > a or b2 > b) for a2, b2 in pts)
        if not dominated and (a, b) not in pts[:i]:
            expected.add(rows[i]["checkpoint"])
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["selected_on"] == "val"
    front = pareto["front"]
    assert {p["checkpoint"] for p in front} == expected
    assert len(front) == len(expected) == summary["pareto_size"]
    assert [p["val_accuracy_a"] for p in front] == sorted(p["val_accuracy_a"] for p in front)
    assert best["checkpoint"] in expected  # max-min never picks a dominated network
    for p in front:
        r = next(r for r in rows if r["checkpoint"] == p["checkpoint"])
        assert p["val_accuracy_b"] == r["val_accuracy_b"] and p["test_accuracy_a"] == r["test_accuracy_a"]


# --------------------------------------------------------------------------- geodesic


def test_geodesic_writes_expected_files(geo):
    out, _ = geo
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    steps = sorted(p.name for p in (out / "steps").iterdir())
    assert steps == [f"step_{s:05d}.safetensors" for s in (0, 5, 10, 15, 20)]
    rows = jsonl(out / "trace.jsonl")
    csv_rows = read_csv(out / "trace.csv")
    header = list(csv_rows[0])
    assert header[:5] == ["step", "t", "distance", "length", "drift"]
    assert header[5:5 + len(JOB_COLUMNS)] == JOB_COLUMNS
    assert [r["checkpoint"] for r in csv_rows] == [r["checkpoint"] for r in rows]
    assert [float(r["val_accuracy_b"]) for r in csv_rows] == [r["val_accuracy_b"] for r in rows]
    assert rows[-1]["checkpoint"] == "final.safetensors" and rows[0]["checkpoint"] == "steps/step_00000.safetensors"
    manifest = check_manifest(out)
    for name in ("best.safetensors", "final.safetensors", "pareto.json", "summary.json", "config.yaml"):
        assert name in manifest
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"] == "geodesic" and cfg["data_a"] == "mnist" and cfg["data_b"] == "fashion-mnist"
    assert cfg["val_size"] == 500 and cfg["max_steps"] == 20 and cfg["step_size"] > 0 and cfg["arch"] == "mlp"


def test_json_output_is_one_object_per_line(geo):
    out, lines = geo
    rows = jsonl(out / "trace.jsonl")
    assert [l["event"] for l in lines] == ["step"] * len(rows) + ["result"]
    assert [l["checkpoint"] for l in lines[:-1]] == [r["checkpoint"] for r in rows]
    result = {k: v for k, v in lines[-1].items() if k != "event"}
    assert result == json.loads((out / "summary.json").read_text())


def test_best_is_the_max_min_row_and_pareto_front_is_exact(geo):
    check_selection_and_front(geo[0])


def test_saved_networks_reproduce_the_trace(geo, slices):
    out, _ = geo
    sha_a = load_checkpoint(SAMPLE).sha256
    w_b = _vec(FASHION)
    for r in jsonl(out / "trace.jsonl"):
        ck = load_checkpoint(out / r["checkpoint"])
        for task in ("a", "b"):
            ev = evaluate(ck.model, slices[task]["test"])
            assert ev.accuracy == pytest.approx(r[f"test_accuracy_{task}"], abs=1e-12)
            assert ev.loss == pytest.approx(r[f"test_loss_{task}"], rel=1e-5)
            assert evaluate(ck.model, slices[task]["val"]).accuracy == pytest.approx(r[f"val_accuracy_{task}"],
                                                                                     abs=1e-12)
        w = model_vector(ck.model, ParamSpace.of(ck.model))
        assert float(torch.linalg.vector_norm(w - w_b)) == pytest.approx(r["distance"], rel=1e-5)
        assert ck.metadata["geopath.step"] == str(r["step"])
        assert ck.metadata["geopath.parent_sha256"] == sha_a


def test_path_moves_toward_b_and_learns_b(geo):
    out, _ = geo
    rows = jsonl(out / "trace.jsonl")
    start, end = rows[0], rows[-1]
    assert start["t"] == 0.0 and start["length"] == 0.0
    assert all(b["distance"] <= a["distance"] for a, b in zip(rows, rows[1:]))
    assert all(b["t"] >= a["t"] for a, b in zip(rows, rows[1:])) and 0.0 < end["t"] < 1.0  # no landing on B
    assert end["distance"] < 0.9 * start["distance"]
    assert all(b["length"] >= a["length"] for a, b in zip(rows, rows[1:])) and end["length"] > 0
    # the start is network A: good on A, at chance on B; B is learnt, A is kept
    assert start["test_accuracy_a"] > 0.95 and start["test_accuracy_b"] < 0.2
    assert end["test_accuracy_b"] > start["test_accuracy_b"] + 0.4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy_a"] > 0.9 and summary["test_accuracy_b"] > 0.5
    assert summary["start"]["checkpoint"] == "steps/step_00000.safetensors"
    # the start network is A, bit for bit
    a, _ = read_tensors(SAMPLE)
    s, _ = read_tensors(out / "steps" / "step_00000.safetensors")
    assert all(torch.equal(a[k], s[k]) for k in a)


def test_resume_after_interrupt_matches_uninterrupted(geo, tmp_path):
    full, _ = geo
    out = tmp_path / "out"
    rc, err, hit = interrupt_when(["merge", SAMPLE, FASHION, "-o", out, *GEO, "--json"], lambda r: r["step"] >= 5)
    assert hit is not None and rc == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert not (out / "final.safetensors").exists() and not (out / "summary.json").exists()
    resumed = geopath("merge", "-o", out, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    a, _ = read_tensors(full / "final.safetensors")
    b, _ = read_tensors(out / "final.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    ra, rb = jsonl(full / "trace.jsonl"), jsonl(out / "trace.jsonl")
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for k in ("test_accuracy_a", "test_accuracy_b", "val_accuracy_a", "val_accuracy_b"):
        assert [r[k] for r in ra] == [r[k] for r in rb], k
    assert [r["length"] for r in rb] == pytest.approx([r["length"] for r in ra], rel=1e-5)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full, out))
    assert sb["best"]["checkpoint"] == sa["best"]["checkpoint"] and sb["pareto_size"] == sa["pareto_size"]
    check_manifest(out)


# --------------------------------------------------------------------------- peers


@pytest.mark.parametrize("method", ["average", "fisher", "ewc"])
def test_peer_writes_the_same_files_and_columns(peers, geo, method):
    out = peers(method)
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    assert list(read_csv(out / "trace.csv")[0]) == list(read_csv(geo[0] / "trace.csv")[0])
    rows = jsonl(out / "trace.jsonl")
    assert all(set(JOB_COLUMNS) - {"alpha"} <= set(r) for r in rows)  # alpha: average and fisher only
    assert rows[-1]["checkpoint"] == "final.safetensors"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"] == method
    # a peer records no step it does not take, so its config replays (an unread option would be refused)
    assert saved["step_size"] is None and saved["max_steps"] is None
    from geopath.config import MergeConfig, resolve

    assert resolve(MergeConfig, saved, {}).method.value == method
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["job"] == "merge"
    check_manifest(out)
    check_selection_and_front(out)
    # every peer starts at A and ends better on B than A was
    assert rows[0]["test_accuracy_b"] < 0.2 and rows[-1]["test_accuracy_b"] > rows[0]["test_accuracy_b"] + 0.2
    a, _ = read_tensors(SAMPLE)
    s, _ = read_tensors(out / rows[0]["checkpoint"])
    assert all(torch.equal(a[k], s[k]) for k in a)


def test_average_is_the_straight_line(peers):
    out = peers("average")
    w_a, w_b = _vec(SAMPLE), _vec(FASHION)
    rows = jsonl(out / "trace.jsonl")
    assert [r["alpha"] for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for r in rows:
        a = r["alpha"]
        torch.testing.assert_close(_vec(out / r["checkpoint"]), (1.0 - a) * w_a + a * w_b, rtol=0, atol=1e-7)
        assert r["distance"] == pytest.approx((1 - a) * float(torch.linalg.vector_norm(w_b - w_a)), rel=1e-5,
                                              abs=1e-6)
    # α = 1 is network B: as good on Fashion-MNIST as B, at chance on MNIST
    assert rows[-1]["test_accuracy_b"] > 0.8 and rows[-1]["test_accuracy_a"] < 0.3


def test_fisher_merge_ends_are_a_and_b(peers):
    out = peers("fisher")
    rows = jsonl(out / "trace.jsonl")
    assert [r["alpha"] for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert torch.equal(_vec(out / rows[0]["checkpoint"]), _vec(SAMPLE))
    assert torch.equal(_vec(out / rows[-1]["checkpoint"]), _vec(FASHION))
    # both Fishers cost 4/3 passes per input (the labels' forward, then forward+backward)
    assert all(r["sample_passes"] == pytest.approx(2 * 200 * 4 / 3) for r in rows)
    # the interior is not the plain average
    w_mid = _vec(out / rows[2]["checkpoint"])
    assert not torch.allclose(w_mid, 0.5 * (_vec(SAMPLE) + _vec(FASHION)), atol=1e-4)


def test_ewc_trains_on_b(peers):
    out = peers("ewc")
    rows = jsonl(out / "trace.jsonl")
    assert rows[0]["t"] == 0.0 and rows[-1]["t"] == 1.0
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    assert all(b["sample_passes"] > a["sample_passes"] for a, b in zip(rows, rows[1:]))
    # the Fisher of task A: 4/3 passes per --fisher-samples input (the labels' forward, then forward+backward)
    assert rows[0]["sample_passes"] == pytest.approx(200 * 4 / 3)
    assert rows[-1]["val_accuracy_b"] > rows[0]["val_accuracy_b"] + 0.2


# --------------------------------------------------------------------------- split head


def test_split_head_networks_have_twenty_outputs(split):
    a, _ = read_tensors(SAMPLE)
    for rel in ("steps/step_00000.safetensors", "final.safetensors", "best.safetensors"):
        tensors, meta = read_tensors(split / rel)
        assert tensors["layers.2.weight"].shape == (20, 100) and tensors["layers.2.bias"].shape == (20,)
        assert json.loads(meta["geopath.arch_kwargs"])["num_classes"] == 20
        ck = load_checkpoint(split / rel)  # self-describing with the wide head
        assert ck.model(torch.zeros(2, 1, 28, 28)).shape == (2, 20)
    start, _ = read_tensors(split / "steps/step_00000.safetensors")
    # the widening: A's rows first, B's rows zero weights and one bias below every logit A gives
    assert torch.equal(start["layers.2.weight"][:10], a["layers.2.weight"])
    assert torch.equal(start["layers.2.bias"][:10], a["layers.2.bias"])
    assert bool((start["layers.2.weight"][10:] == 0).all())
    assert bool((start["layers.2.bias"][10:] == start["layers.2.bias"][10]).all())
    for k in ("layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"):
        assert torch.equal(start[k], a[k])
    # config.yaml records the checkpoints as given (10-way), so --resume / --config repeat the run
    assert yaml.safe_load((split / "config.yaml").read_text())["arch_kwargs"] == {}


def test_split_head_keeps_a_and_shifts_b_labels(split, slices):
    rows = jsonl(split / "trace.jsonl")
    start = rows[0]
    a = load_checkpoint(SAMPLE).model
    assert start["test_accuracy_a"] == pytest.approx(evaluate(a, slices["a"]["test"]).accuracy, abs=1e-12)
    assert start["val_accuracy_a"] == pytest.approx(evaluate(a, slices["a"]["val"]).accuracy, abs=1e-12)
    # A's rows win everywhere at the start: no Fashion-MNIST input is put in B's classes 10..19
    assert start["test_accuracy_b"] <= 0.02 and start["val_accuracy_b"] <= 0.02
    assert max(r["test_accuracy_b"] for r in rows) > 0.2
    assert rows[-1]["test_accuracy_a"] > 0.8
    # the trace's task-B accuracy is over labels shifted by 10
    fb = slices["b"]["test"]
    shifted = Dataset(fb.x, fb.y + 10, fb.name, fb.split)
    for r in rows:
        net = load_checkpoint(split / r["checkpoint"]).model
        assert evaluate(net, shifted).accuracy == pytest.approx(r["test_accuracy_b"], abs=1e-12)
        assert evaluate(net, slices["a"]["test"]).accuracy == pytest.approx(r["test_accuracy_a"], abs=1e-12)
    check_selection_and_front(split)
    # the human summary names the selected network and the front
    summary = json.loads((split / "summary.json").read_text())
    printed = (split.parent / "stdout.txt").read_text()
    assert f"best network:    {split / 'best.safetensors'} (step {summary['best']['step']}, max-min on val)" in printed
    assert f"pareto front:    {summary['pareto_size']} networks" in printed
    assert f"B {summary['test_accuracy_b']:.4f} (start {rows[0]['test_accuracy_b']:.4f})" in printed


def test_a_split_head_network_is_scored_on_task_b_as_the_merge_scored_it(split, slices, tmp_path):
    """``eval --data fashion-mnist`` of a split-head network shifts B's labels by A's 10 classes, as the merge's trace
    did (it reported 0.4 % where the trace said 42 %); task A's data and a plain merge's networks are not shifted."""
    summary = json.loads((split / "summary.json").read_text())
    best = split / "best.safetensors"
    assert read_tensors(best)[1]["geopath.label_offset_b"] == "10"
    for data, key in (("fashion-mnist", "test_accuracy_b"), ("mnist", "test_accuracy_a")):
        proc = cli("eval", best, "--data", data, "--size", "500", "--data-root", DATA_ROOT, "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["accuracy"] == pytest.approx(summary["best"][key], abs=1e-12)
    # a job on task B's data reads the shifted labels too: sparsify's start accuracy is B's
    out = tmp_path / "sp"
    proc = cli("sparsify", best, "--data", "fashion-mnist", "--sparsity", "0.1", "--steps", "1", "--settle-epochs",
               "0", "--eval-size", "500", "--metric-size", "256", "--train-eval-size", "0", "--criterion",
               "magnitude", "--data-root", DATA_ROOT, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    start = json.loads((out / "summary.json").read_text())["dense_test_accuracy"]
    assert start == pytest.approx(summary["best"]["test_accuracy_b"], abs=1e-12)
    # and its networks carry the record: eval of its final network on B is shifted as well
    assert read_tensors(out / "final.safetensors")[1]["geopath.label_offset_b"] == "10"


def test_a_split_head_record_survives_export_and_refuses_what_it_cannot_label(split, tmp_path):
    """export kept only data/preprocess, so B was scored unshifted after it; a data set that is neither task's, a
    merge of a split-head network, a split head over one data set and a connect between different heads are
    refused (each would score labels against the wrong head)."""
    from geopath.errors import UsageError
    from geopath.jobs.common import label_offset

    best = split / "best.safetensors"
    run = tmp_path / "units"
    proc = cli("sparsify", best, "--data", "fashion-mnist", "--structured", "layers.0:10", "--steps", "1",
               "--settle-epochs", "0", "--eval-size", "500", "--metric-size", "256", "--train-eval-size", "0",
               "--data-root", DATA_ROOT, "-o", run)
    assert proc.returncode == 0, proc.stderr
    small = tmp_path / "small.safetensors"
    assert cli("export", run, "-o", small, "--data-root", DATA_ROOT).returncode == 0
    meta = read_tensors(small)[1]
    assert meta["geopath.label_offset_b"] == "10" and meta["geopath.data_a"] == "mnist"
    scored = cli("eval", small, "--data", "fashion-mnist", "--size", "500", "--data-root", DATA_ROOT, "--json")
    final = json.loads((run / "summary.json").read_text())["test_accuracy"]
    assert json.loads(scored.stdout)["accuracy"] == pytest.approx(final, abs=1e-12)
    ck = load_checkpoint(best)
    assert label_offset(ck, "fashion-mnist") == 10 and label_offset(ck, "mnist") == 0
    with pytest.raises(UsageError, match="a split-head merged network, task A mnist, task B fashion-mnist: "):
        label_offset(ck, str(tmp_path / "elsewhere.npz"))
    again = cli("merge", best, FASHION, "-o", tmp_path / "m", *SPLIT)
    assert again.returncode == 2 and "a split-head merged network; merge the networks of its tasks" in \
        one_error_line(again)
    same = cli("merge", SAMPLE, FASHION, "--data-b", "mnist", "-o", tmp_path / "s", *SPLIT)
    assert same.returncode == 2 and "--head split: both tasks are mnist" in one_error_line(same)


def test_a_shared_head_records_no_label_offset(geo):
    out, _ = geo
    for rel in ("final.safetensors", "best.safetensors"):
        meta = read_tensors(out / rel)[1]
        assert "geopath.label_offset_b" not in meta and meta["geopath.data_b"] == "fashion-mnist"


def test_split_head_resume_matches_uninterrupted(split, tmp_path):
    out = tmp_path / "out"
    rc, err, hit = interrupt_when(["merge", SAMPLE, FASHION, "-o", out, *SPLIT, "--json"], lambda r: r["step"] >= 5)
    assert hit is not None and rc == 130, err
    resumed = geopath("merge", "-o", out, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    a, _ = read_tensors(split / "final.safetensors")
    b, _ = read_tensors(out / "final.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert [r["test_accuracy_b"] for r in jsonl(split / "trace.jsonl")] == \
           [r["test_accuracy_b"] for r in jsonl(out / "trace.jsonl")]


# --------------------------------------------------------------------------- bad input


def test_different_architectures_are_refused(tmp_path):
    tiny = train_net(tmp_path / "tiny.safetensors", arch_kwargs={"hidden": [64]}, size=256, epochs=0.5)
    out = tmp_path / "out"
    proc = cli("merge", SAMPLE, tiny, "-o", out, *GEO)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc)
    assert "different architectures" in line or "differ in shape" in line
    assert "--head split" in line
    _nothing_written(out)


def test_unknown_select_is_a_usage_error(tmp_path):
    out = tmp_path / "out"
    proc = cli("merge", SAMPLE, FASHION, "-o", out, *GEO, "--select", "best")
    assert proc.returncode == 2
    assert "'best'" in proc.stderr and "max-min" in proc.stderr and "Traceback" not in proc.stderr
    _nothing_written(out)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("select: best\n")
    proc = cli("merge", SAMPLE, FASHION, "-o", out, "--config", cfg)
    assert proc.returncode == 2
    assert "invalid value 'best' (one of max-min, mean, pareto)" in one_error_line(proc)
    _nothing_written(out)


def test_val_size_larger_than_training_set(tmp_path):
    out = tmp_path / "out"
    proc = cli("merge", SAMPLE, FASHION, "-o", out, "--data-root", DATA_ROOT, "--metric-size", "2000",
                   "--eval-size", "500", "--steps", "20", "--val-size", "60000")
    assert proc.returncode == 2, proc.stderr
    assert "--val-size 60000" in one_error_line(proc)
    _nothing_written(out)
