"""Figure D of the sparsification paper: dynamic transitions between configurations C1 → C2 → C3 → C4.

    python bench/transitions_mlp.py [--data-root ../shared/data] [--quick]

C1 is the trained MLP 784-300-100-10 (sample_checkpoints/mlp_mnist.safetensors); the chain of
docs/examples/plan_mlp.yaml switches half of the first hidden layer off (C2), then half of the
second (C3), then 100 of the first layer's units back on (C4), each leg a geodesic (CLI defaults).
Beside every configuration: switching the same units off in the trained network with no updates at
all (what a device would get by gating units without geopath). Accuracy on the full MNIST test set.
Writes docs/bench_transitions.{json,md} and docs/img/transitions_mlp.png; prints a one-line summary;
exits 3 when a configuration ends more than 1 point below C1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

from geopath.core.params import ParamSpace, load_vector, model_vector
from geopath.io.checkpoint import load_checkpoint
from geopath.config import TransitionConfig
from geopath.io.data import load_dataset
from geopath.core.evaluate import evaluate
from geopath.report.plot import plot_runs
from geopath.core.targets import unit_groups
from geopath.jobs.transition import run_transition

from _common import ROOT, add_common_args, machine  # noqa: E402 (bench/ is on sys.path when run as a script)

CKPT = ROOT / "sample_checkpoints" / "mlp_mnist.safetensors"
PLAN = ROOT / "docs" / "examples" / "plan_mlp.yaml"
LAYERS = ("layers.0", "layers.1")


def gated(start, leg_net, layers=LAYERS) -> torch.nn.Module:
    """The trained network with exactly the units of ``layers`` that are off in ``leg_net`` zeroed (with a
    following BatchNorm's scale and shift), nothing else changed."""
    space = ParamSpace.of(start)
    w, w_leg = model_vector(start, space), model_vector(leg_net, space)
    for layer in layers:
        for g in unit_groups(start, space, layer):
            if bool((w_leg[g] == 0).all()):
                w[g] = 0.0
    load_vector(start, space, w)
    return start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, work="transitions")
    args = ap.parse_args()
    out = Path(args.work) / "chain"
    shutil.rmtree(out, ignore_errors=True)
    quick = dict(metric_size=2000, eval_size=1000, steps=10, settle_steps=5) if args.quick else {}
    cfg = TransitionConfig(checkpoint=str(CKPT), plan=yaml.safe_load(PLAN.read_text()), out=str(out),
                           data_root=args.data_root, **quick).validate()
    t0 = time.perf_counter()
    summary = run_transition(cfg)
    seconds = time.perf_counter() - t0
    test = load_dataset("mnist", "test", args.data_root, preprocess=load_checkpoint(CKPT).reading(None)[0])
    if args.quick:
        test = test.head(1000)
    start_acc = summary["start_test_accuracy"]
    rows = [{"config": "C1", "name": "trained", "geodesic": start_acc, "gated": start_acc, "units_off": 0,
             "epochs": 0.0}]
    for leg in summary["legs"]:
        net = load_checkpoint(out / leg["file"]).model
        rows.append({"config": f"C{leg['leg'] + 1}", "name": leg["name"], "geodesic": leg["test_accuracy"],
                     "gated": evaluate(gated(load_checkpoint(CKPT).model, net), test).accuracy,
                     "units_off": leg["units_off"], "epochs": leg["epochs"]})
        print(json.dumps(rows[-1]), flush=True)
    docs = Path(args.docs)
    (docs / "img").mkdir(parents=True, exist_ok=True)
    plot_runs([out], docs / "img" / "transitions_mlp.png", x="step", labels=["C1 → C2 → C3 → C4"],
              title="transitions, MLP on MNIST: test accuracy along the chain", overwrite=True)
    checks = [(f"{r['config']} within 1 point of C1", r["geodesic"] >= start_acc - 0.01) for r in rows[1:]]
    host = machine()
    if not args.quick:
        (docs / "bench_transitions.json").write_text(json.dumps(
            {"machine": host, "rows": rows, "seconds": seconds, "checks": dict(checks)}, indent=2) + "\n")
        lines = ["# Transitions C1 → C2 → C3 → C4: MLP 784-300-100-10 on MNIST", "",
                 f"Produced by `python bench/transitions_mlp.py` on {host} ({seconds:.0f} s). Plan: "
                 "`docs/examples/plan_mlp.yaml`; CLI defaults. *Gated*: the trained network with the same units "
                 "switched off and no updates. Test accuracy on the full MNIST test set; epochs are cumulative.", "",
                 "| config | leg | units off | geodesic | gated, no updates | epochs |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['config']} | {r['name']} | {r['units_off']} | {r['geodesic']:.2%} | {r['gated']:.2%} | "
                  f"{r['epochs']:.2f} |" for r in rows]
        lines += ["", "Checks:", ""] + [f"- {'PASS' if ok else 'MISS'} — {n}" for n, ok in checks]
        lines += ["", "![accuracy along the chain](img/transitions_mlp.png)"]
        (docs / "bench_transitions.md").write_text("\n".join(lines) + "\n")
    missed = [n for n, ok in checks if not ok]
    print("transitions_mlp: " + ", ".join(f"{r['config']} {r['geodesic']:.2%} (gated {r['gated']:.2%})" for r in rows)
          + f"; {len(checks) - len(missed)}/{len(checks)} checks passed" + (f"; missed: {'; '.join(missed)}" if missed else ""))
    return 3 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
