"""A real transition run on the MNIST MLP: units off (two legs) and half of them on again,
checked unit by unit; bad plans; resuming in the middle of a leg."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from geopath.io.checkpoint import load_checkpoint, read_tensors
from geopath.io.data import load_dataset
from geopath.core.evaluate import evaluate

from .._helpers import (DATA_ROOT, SAMPLE, check_manifest, cli, geopath, interrupt_when, jsonl, needs_mnist,
                       one_error_line, spy_on_training)
from .._helpers import one_thread_subprocesses  # noqa: F401 (autouse: one thread per run)

pytestmark = needs_mnist

PLAN = {"legs": [{"name": "cut0", "remove": {"layers.0": 100}},
                 {"name": "cut1", "remove": {"layers.1": 30}},
                 {"name": "back0", "restore": {"layers.0": 50}}]}
# FAST_TRAIN with a training settle (--settle finetune/distill refuses --settle-steps); FAST with geodesic settle steps
FAST_TRAIN = ["--data-root", str(DATA_ROOT), "--metric-size", "2000", "--eval-size", "500", "--steps", "10",
              "--batch-size", "64", "--cg-iters", "3", "--save-every", "5"]
FAST = [*FAST_TRAIN, "--settle-steps", "3"]
LEG_FILES = ["legs/leg_01_cut0.safetensors", "legs/leg_02_cut1.safetensors", "legs/leg_03_back0.safetensors"]


def _dead(tensors, layer) -> set[int]:
    """Units of ``layer`` whose weight row and bias are exactly zero."""
    w, b = tensors[f"{layer}.weight"], tensors[f"{layer}.bias"]
    return {int(i) for i in torch.nonzero((w == 0).all(1) & (b == 0)).flatten()}


def _smallest_units(tensors, layer, k, exclude=()) -> set[int]:
    norms = tensors[f"{layer}.weight"].pow(2).sum(1) + tensors[f"{layer}.bias"].pow(2)
    order = [int(i) for i in torch.argsort(norms, stable=True) if int(i) not in set(exclude)]
    return set(order[:k])


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "plan.yaml"
    path.write_text(yaml.safe_dump(PLAN, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, plan_file):
    out = tmp_path_factory.mktemp("transition") / "out"
    proc = geopath("transition", SAMPLE, "--plan", plan_file, "-o", out, *FAST, "--json")
    assert proc.returncode == 0, proc.stderr
    return out, [json.loads(l) for l in proc.stdout.splitlines()]


def test_writes_legs_and_run_files(run):
    out, lines = run
    for name in ("config.yaml", "trace.csv", "trace.jsonl", "final.safetensors", "legs.json", "summary.json",
                 "manifest.json"):
        assert (out / name).is_file(), name
    assert sorted(str(p.relative_to(out)) for p in (out / "legs").iterdir()) == LEG_FILES
    assert (out / "final.safetensors").read_bytes() == (out / LEG_FILES[-1]).read_bytes()
    check_manifest(out)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["plan"] == PLAN["legs"] and cfg["data"] == "mnist" and cfg["arch"] == "mlp"  # the plan inline
    rows = jsonl(out / "trace.jsonl")
    assert [l["event"] for l in lines] == ["step"] * len(rows) + ["result"]
    summary = json.loads((out / "summary.json").read_text())
    assert [l["file"] for l in summary["legs"]] == LEG_FILES
    assert summary["start_test_accuracy"] == rows[0]["test_accuracy"]
    assert summary["test_accuracy"] == rows[-1]["test_accuracy"] > 0.9
    # each leg's own cost beside the chain's running total
    legs = summary["legs"]
    assert sum(l["leg_epochs"] for l in legs) == pytest.approx(legs[-1]["epochs"]) == pytest.approx(summary["epochs"])
    assert all(0 < l["leg_epochs"] < l["epochs"] for l in legs[1:])


def test_units_switched_off_and_on_leg_by_leg(run):
    out, _ = run
    start, _ = read_tensors(SAMPLE)
    legs = [read_tensors(out / f)[0] for f in LEG_FILES]
    removed = json.loads((out / "legs.json").read_text())
    # leg 1: exactly the 100 smallest units of layers.0 are off, nothing in layers.1
    off0 = _dead(legs[0], "layers.0")
    assert len(off0) == 100 and not _dead(legs[0], "layers.1")
    assert off0 == _smallest_units(start, "layers.0", 100)
    assert off0 == set(removed[0]["switchboard"]["removed"]["layers.0"])
    # leg 2: the same 100 stay off, plus the 30 smallest units of layers.1 at the leg's start
    off1 = _dead(legs[1], "layers.1")
    assert _dead(legs[1], "layers.0") == off0 and len(off1) == 30
    assert off1 == _smallest_units(legs[0], "layers.1", 30)
    assert off1 == set(removed[1]["switchboard"]["removed"]["layers.1"])
    # leg 3: 50 of layers.0 come back (the most recently removed); 50 stay off, a subset of the 100
    still = _dead(legs[2], "layers.0")
    assert len(still) == 50 and still < off0
    order = removed[0]["switchboard"]["removed"]["layers.0"]
    assert still == set(order[:50]) == set(removed[2]["switchboard"]["removed"]["layers.0"])
    assert _dead(legs[2], "layers.1") == off1
    back = sorted(off0 - still)
    assert bool((legs[2]["layers.0.weight"][back].abs().sum(1) > 0).all())  # the restored units live again
    # ... pulled back to their values in the starting network, then freed (they moved only a little)
    rel = torch.linalg.vector_norm(legs[2]["layers.0.weight"][back] - start["layers.0.weight"][back]) \
        / torch.linalg.vector_norm(start["layers.0.weight"][back])
    assert 0 < float(rel) < 0.1
    # the rest of the network is dense: no other weight was zeroed
    assert int((legs[2]["layers.2.weight"] == 0).sum()) == 0


def test_settle_rows_of_a_restoring_leg_are_on_its_target(run):
    """Once a leg that restores units lands, its settle steps train the restored weights: they are free, not off
    the target, so those rows say t = 1 and distance 0 (t fell back to 0.97 and the distance grew as they trained)."""
    out, _ = run
    rows = [r for r in jsonl(out / "trace.jsonl") if r.get("leg_name") == "back0"]
    landed = [r for r in rows if r.get("landed_at") is not None and r["step"] > r["landed_at"]]
    assert landed, "the restoring leg took settle steps"
    assert all(r["t"] == 1.0 and r["distance"] == 0.0 for r in landed)


def test_trace_rows_carry_legs_and_match_legs_json(run):
    out, _ = run
    rows = jsonl(out / "trace.jsonl")
    legs = json.loads((out / "legs.json").read_text())
    assert [r["leg"] for r in rows] == sorted(r["leg"] for r in rows) and {r["leg"] for r in rows} == {1, 2, 3}
    names = {1: "cut0", 2: "cut1", 3: "back0"}
    assert all(r["leg_name"] == names[r["leg"]] for r in rows)
    assert rows[0]["step"] == 0 and rows[0]["leg"] == 1 and rows[0]["units_off"] == 0
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    assert [d["units_off"] for d in legs] == [100, 130, 80]
    for d in legs:
        last = [r for r in rows if r["leg"] == d["leg"]][-1]
        assert last["checkpoint"] == d["file"] == LEG_FILES[d["leg"] - 1]
        assert (d["name"], d["step"], d["test_accuracy"], d["units_off"]) == (last["leg_name"], last["step"],
                                                                               last["test_accuracy"], last["units_off"])
    assert legs[0]["remove"] == {"layers.0": 100} and legs[2]["restore"] == {"layers.0": 50}
    test = load_dataset("mnist", "test", DATA_ROOT).head(500)
    for r in rows:  # every saved network gives its row's numbers
        tensors, meta = read_tensors(out / r["checkpoint"])
        assert len(_dead(tensors, "layers.0")) + len(_dead(tensors, "layers.1")) == r["units_off"]
        assert meta["geopath.step"] == str(r["step"])
    for r in rows[:: max(1, len(rows) // 5)] + [rows[-1]]:
        assert evaluate(load_checkpoint(out / r["checkpoint"]).model, test).accuracy == pytest.approx(
            r["test_accuracy"], abs=1e-12)


@pytest.mark.parametrize(
    "plan, needle",
    [
        ({"legs": [{"remove": {"layers.0": 5}, "settle": 3}]}, "unknown key(s) settle"),
        ({"legs": [{"remove": {"layers.0": 5}}, {"restore": {"layers.0": 6}}]}, "cannot restore 6 units"),
        ({"legs": [{"remove": {"layers.7": 5}}]}, "'layers.7' is not a Linear or Conv layer"),
        ({"legs": [{"remove": {"layers.1": 100}}]}, "cannot remove 100 more units"),
    ],
    ids=["unknown-key", "restore-too-many", "unknown-layer", "remove-all"],
)
def test_bad_plans_fail_before_any_step(tmp_path, plan, needle):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    out = tmp_path / "out"
    proc = cli("transition", SAMPLE, "--plan", path, "-o", out, *FAST)
    assert proc.returncode == 2, proc.stderr
    assert needle in one_error_line(proc)
    assert not (out / "steps").exists() and not (out / "trace.jsonl").exists()
    assert not (out / "config.yaml").exists() and not (out / "final.safetensors").exists()


def test_resume_in_the_middle_of_leg_two(run, plan_file, tmp_path):
    full, _ = run
    out = tmp_path / "out"
    rc, err, hit = interrupt_when(["transition", SAMPLE, "--plan", plan_file, "-o", out, *FAST, "--json"],
                                  lambda r: r.get("leg") == 2 and r["checkpoint"].startswith("steps/"))
    assert hit is not None and rc == 130, err
    assert "--resume" in err and "Traceback" not in err
    legs = json.loads((out / "legs.json").read_text())
    assert [d["leg"] for d in legs] == [1]  # stopped inside leg 2
    assert jsonl(out / "trace.jsonl")[-1]["leg"] == 2 and not (out / LEG_FILES[1]).exists()
    resumed = geopath("transition", "-o", out, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    a, _ = read_tensors(full / "final.safetensors")
    b, _ = read_tensors(out / "final.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    for k in ("layers.0", "layers.1"):
        assert _dead(a, k) == _dead(b, k)
    la, lb = (json.loads((d / "legs.json").read_text()) for d in (full, out))
    assert [(d["file"], d["step"], d["units_off"], d["switchboard"]) for d in la] == \
           [(d["file"], d["step"], d["units_off"], d["switchboard"]) for d in lb]
    ra, rb = jsonl(full / "trace.jsonl"), jsonl(out / "trace.jsonl")
    assert [(r["step"], r["leg"]) for r in ra] == [(r["step"], r["leg"]) for r in rb]
    assert [r["test_accuracy"] for r in ra] == [r["test_accuracy"] for r in rb]
    check_manifest(out)


def test_settle_by_finetuning_keeps_each_legs_zeros_and_trains_the_rest(plan_file, tmp_path):
    """--settle finetune: each leg lands, then masked SGD on the labels for --settle-epochs (a leg may
    override it): the leg's units stay exactly off, restored units train, the passes add up."""
    plan = {"legs": [*PLAN["legs"][:2], {**PLAN["legs"][2], "settle_epochs": 0.5}]}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    out = tmp_path / "out"
    proc = geopath("transition", SAMPLE, "--plan", path, "-o", out, *FAST_TRAIN, "--settle", "finetune",
                   "--settle-epochs", "0.25", "--json")
    assert proc.returncode == 0, proc.stderr
    start, _ = read_tensors(SAMPLE)
    legs = [read_tensors(out / f)[0] for f in LEG_FILES]
    landed = [read_tensors(out / f"steps/leg_{i:02d}_landed.safetensors")[0] for i in (1, 2, 3)]
    off0 = _smallest_units(start, "layers.0", 100)
    assert _dead(legs[0], "layers.0") == off0 and not _dead(legs[0], "layers.1")
    off1 = _dead(legs[1], "layers.1")
    assert len(off1) == 30 and _dead(legs[1], "layers.0") == off0
    assert off1 == _smallest_units(legs[0], "layers.1", 30)
    still = _dead(legs[2], "layers.0")
    assert len(still) == 50 and still < off0 and _dead(legs[2], "layers.1") == off1
    back = sorted(off0 - still)
    for a, b in zip(landed, legs):  # SGD moved the network from where it landed
        assert not torch.equal(a["layers.2.weight"], b["layers.2.weight"])
    assert not torch.equal(landed[2]["layers.0.weight"][back], legs[2]["layers.0.weight"][back])  # restored: trained
    rows = jsonl(out / "trace.jsonl")
    by_file = {r["checkpoint"]: r for r in rows}
    for i, epochs in ((1, 0.25), (2, 0.25), (3, 0.5)):  # each settle: its epochs of the 2000 inputs, in SGD steps of 64
        a, b = by_file[f"steps/leg_{i:02d}_landed.safetensors"], by_file[LEG_FILES[i - 1]]
        assert b["sample_passes"] - a["sample_passes"] == (int(epochs * 2000) // 64) * 64
        assert b["step"] - a["step"] == int(epochs * 2000) // 64 and b["distance"] == 0.0
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    assert [d["units_off"] for d in json.loads((out / "legs.json").read_text())] == [100, 130, 80]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["settle"] == "finetune" and cfg["settle_epochs"] == 0.25
    check_manifest(out)


def test_a_run_stopped_while_settling_by_training_is_refused_on_resume(plan_file, tmp_path):
    out = tmp_path / "out"
    rc, err, hit = interrupt_when(["transition", SAMPLE, "--plan", plan_file, "-o", out, *FAST_TRAIN, "--settle",
                                   "finetune", "--settle-epochs", "40", "--json"],  # the signal lands mid-settle
                                  lambda r: r["checkpoint"] == "steps/leg_02_landed.safetensors")
    assert hit is not None and rc == 130, err
    resumed = cli("transition", "-o", out, "--resume")
    assert resumed.returncode == 2 and "during --settle finetune" in one_error_line(resumed)


@pytest.mark.parametrize("override, needle, settle", [
    ({"settle_epochs": -1}, "settle_epochs must be a finite number ≥ 0", []),
    ({"settle_epochs": float("inf")}, "settle_epochs must be a finite number ≥ 0", []),  # (overflowed mid-run)
    ({"steps": None}, "steps must be a whole number ≥ 1, got None", []),  # (a YAML null: TypeError mid-run)
    ({"beta": None}, "beta must be a finite number > 0, got None", []),
    ({"settle_steps": 50}, "settle_steps is not read with --settle finetune", ["--settle", "finetune"]),
    ({"settle_epochs": 3}, "settle_epochs is not read with --settle geodesic", ["--settle-steps", "3"]),
])
def test_a_bad_leg_override_fails_before_any_step(tmp_path, override, needle, settle):
    """A leg's override must be a value the leg reads: a null, an infinity, or the settle option the run's
    --settle does not use (it was silently ignored; the same flags are refused) fail before anything is written."""
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"legs": [{"remove": {"layers.0": 5}, **override}]}))
    proc = cli("transition", SAMPLE, "--plan", path, "-o", tmp_path / "out", *FAST_TRAIN, *settle)
    assert proc.returncode == 2 and needle in one_error_line(proc), proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_sparsity_level_counts_switched_off_units_exactly():
    """`sparsity: S` with units off holds exactly S of the Linear/Conv weights at zero, the units' included (the
    magnitude part was chosen among weights already zero, tied with the units', and overshot: 0.5626 for 0.5)."""
    from geopath.core.params import ParamSpace, model_vector
    from geopath.core.targets import prunable_parameters
    from geopath.io.archs import build_model
    from geopath.jobs.transition import Leg, Switchboard

    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [40, 20]})
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    slices = space.slices()
    names = prunable_parameters(model)
    total = sum(slices[n].stop - slices[n].start for n in names)
    board = Switchboard()
    board.apply(Leg("s", sparsity=0.5), model, space, w)
    w = torch.where(board.mask(model, space, w), torch.zeros_like(w), w)  # (the leg lands: its zeros)
    board.apply(Leg("u", remove={"layers.0": 10}), model, space, w)
    mask = board.mask(model, space, w)
    held = sum(int(mask[slices[n]].sum()) for n in names)
    assert held == round(0.5 * total)
    assert board.unit_mask(model, space, w).logical_and(~mask).sum() == 0  # every unit weight still held


def test_a_leg_that_restores_and_removes_in_one_layer_removes_other_units():
    """restore 2 and remove 2 of one layer in one leg: the two brought back are on, two others go (it removed the
    same two again, still zero in the weights, and the leg changed nothing)."""
    from geopath.core.params import ParamSpace, model_vector
    from geopath.io.archs import build_model
    from geopath.jobs.transition import Leg, Switchboard

    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [12]})
    space = ParamSpace.of(model)
    board = Switchboard()
    board.apply(Leg("cut", remove={"layers.0": 5}), model, space, model_vector(model, space))
    first = list(board.removed["layers.0"])
    w = torch.where(board.unit_mask(model, space, model_vector(model, space)), 0.0, model_vector(model, space))
    board.apply(Leg("swap", restore={"layers.0": 2}, remove={"layers.0": 2}), model, space, w)
    now = board.removed["layers.0"]
    assert len(now) == 5 and set(first[3:]).isdisjoint(now) and now[:3] == first[:3]


def test_settle_augment_is_refused_for_vectors_and_with_geodesic_settle_steps(plan_file, tmp_path):
    """A transition's --settle-augment needs image inputs (checked before the first leg) and a training settle."""
    import numpy as np

    images = load_dataset("mnist", "train", DATA_ROOT).head(256)
    flat = tmp_path / "flat.npz"
    np.savez(flat, x=images.x.reshape(256, -1).numpy(), y=images.y.numpy())
    for extra, needle in (([*FAST_TRAIN, "--data", flat, "--eval-data", flat, "--settle", "distill",
                            "--settle-augment", "flip"],
                           "--settle-augment flip needs image inputs (C×H×W); these are 784 per sample"),
                          ([*FAST, "--settle-augment", "flip"], "--settle-augment needs --settle finetune or distill")):
        proc = cli("transition", SAMPLE, "--plan", plan_file, "-o", tmp_path / "out", *extra)
        assert proc.returncode == 2 and needle in one_error_line(proc), proc.stderr
        assert not (tmp_path / "out").exists()


def test_settle_auto_is_refused(plan_file, tmp_path):
    """--settle auto is sparsify's rule (one start, one settle); a chain names its settle."""
    proc = cli("transition", SAMPLE, "--plan", plan_file, "-o", tmp_path / "out", *FAST, "--settle", "auto")
    assert proc.returncode == 2 and "--settle auto is sparsify's rule" in one_error_line(proc), proc.stderr
    assert not (tmp_path / "out").exists()


def test_settle_optimizer_adam_trains_each_legs_settle_with_adam_and_records_its_lr(tmp_path, monkeypatch):
    """--settle-optimizer adam: every leg's settle runs Adam at the resolved lr 0.001 (SGD at 0.05 by default), the
    config records both and replays to the same networks; with geodesic settle steps the option is refused."""
    seen = spy_on_training(monkeypatch)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"legs": PLAN["legs"][:2]}, sort_keys=False))
    train = [*FAST_TRAIN, "--settle", "finetune", "--settle-epochs", "0.1"]
    for name, extra in (("adam", ["--settle-optimizer", "adam"]), ("sgd", [])):
        proc = cli("transition", SAMPLE, "--plan", path, "-o", tmp_path / name, *train, *extra)
        assert proc.returncode == 0, proc.stderr
    assert seen == [("adam", 0.001)] * 2 + [("sgd", 0.05)] * 2
    recorded = {n: yaml.safe_load((tmp_path / n / "config.yaml").read_text()) for n in ("adam", "sgd")}
    assert (recorded["adam"]["settle_optimizer"], recorded["adam"]["settle_lr"]) == ("adam", 0.001)
    assert (recorded["sgd"]["settle_optimizer"], recorded["sgd"]["settle_lr"]) == ("sgd", 0.05)
    a, _ = read_tensors(tmp_path / "adam" / LEG_FILES[1])
    b, _ = read_tensors(tmp_path / "sgd" / LEG_FILES[1])
    assert any(not torch.equal(a[k], b[k]) for k in a)
    again = cli("transition", "--config", tmp_path / "adam" / "config.yaml", "-o", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    assert seen[-1] == ("adam", 0.001)
    c, _ = read_tensors(tmp_path / "again" / LEG_FILES[1])
    assert all(torch.equal(a[k], c[k]) for k in a)
    refused = cli("transition", SAMPLE, "--plan", path, "-o", tmp_path / "geo", *FAST, "--settle-optimizer", "adam")
    assert refused.returncode == 2 and "--settle-optimizer: not read by this run" in one_error_line(refused)
    assert not (tmp_path / "geo").exists()
