"""Figure 2D of the sparsification paper on VGG11: transitions C1 → C2 → C3 → C4 on CIFAR-10.

    python bench/transitions_vgg.py [--data-root ../shared/data] [--settle distill|finetune|geodesic] [--seed 0]
                                   [--quick]

C1 is a width-0.25 VGG11 with the original VGG's fully connected classifier layers (hidden
1024-1024, the paper's 4096 scaled by the width), trained by ``bench/train_vgg11_cifar.py --hidden
1024 1024 --epochs 30`` (run first when the network is missing, about 8 CPU minutes). The paper's
chain, its counts scaled to the width (50 of 64 layer-1 filters → 12 of 16; 1000 classifier neurons
→ 250; 30 filters restored → 8):

* C2: 12 of the 16 layer-1 filters (``features.0``) off;
* C3: also 250 of the 1024 neurons of the first classifier layer (``classifier.0``) off;
* C4: 8 of the removed layer-1 filters back on.

Each leg a geodesic with the approach the filter-removal bench uses for BatchNorm networks
(docs/method.md: β 16 growing ×4, land at 15 % of the distance), then 4 epochs of masked SGD on the
hyperplane matching the starting network's outputs (``--settle distill``, no labels; 10 % warm-up; half of
every batch's images mirrored left to right, the starting network matched on the same view,
``--settle-augment flip``; ending on the average of the weights over the last half of the SGD steps,
``--settle-average 0.5``),
at most 5 epochs of the 20k training images per leg. Beside every
configuration: the same units switched off in the trained network with no updates (gating).
Accuracy on the full 10,000-image test set, BatchNorm statistics re-estimated for every geodesic
network (the gated ones keep the trained statistics: no updates). Writes
docs/bench_transitions_vgg.{json,md} and docs/img/transitions_vgg.png; prints a one-line summary;
exits 3 when a configuration ends more than 2 points below C1 or a leg takes more than 5 epochs
(issue 20's bar). ``--settle finetune`` settles on the labels instead, ``--settle geodesic`` with the former geodesic
steps on each hyperplane.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, add_common_args, machine  # noqa: E402 (bench/ is on sys.path when run as a script)

sys.path.insert(0, str(ROOT))

from transitions_mlp import gated  # noqa: E402

from geopath.config import TransitionConfig  # noqa: E402
from geopath.core.evaluate import evaluate  # noqa: E402
from geopath.io.checkpoint import load_checkpoint  # noqa: E402
from geopath.io.data import load_dataset  # noqa: E402
from geopath.jobs.transition import run_transition  # noqa: E402
from geopath.report.plot import plot_runs  # noqa: E402

CKPT = ROOT / "bench" / "_work" / "nets" / "vgg11w025fc_cifar10.safetensors"
LAYERS = ("features.0", "classifier.0")
PLAN = [{"name": "C2", "remove": {"features.0": 12}},
        {"name": "C3", "remove": {"classifier.0": 250}},
        {"name": "C4", "restore": {"features.0": 8}}]
# each leg: the filter-removal bench's approach (bench/vgg_filters.py), then by --settle: 4 epochs of masked SGD
# on the starting network's outputs (distill) or on the labels (finetune), batches of 128, the learning rate
# warmed up over the first 10 % of the steps; or, formerly, 350 geodesic steps on the hyperplane, batches of 32
_APPROACH = {"steps": 100, "beta": 16.0, "beta_growth": 4.0, "tol": 0.15, "save_every": 10}
SETTLES = {"distill": {**_APPROACH, "settle": "distill", "settle_epochs": 4.0, "settle_warmup": 0.1,
                       "settle_average": 0.5, "settle_augment": "flip"},
           "finetune": {**_APPROACH, "settle": "finetune", "settle_epochs": 4.0, "settle_warmup": 0.1},
           "geodesic": {"steps": 60, "beta": 16.0, "beta_growth": 4.0, "tol": 0.15, "settle_steps": 350,
                        "batch_size": 32, "save_every": 10, "settle": "geodesic"}}
MAX_EPOCHS_PER_LEG = 5.0
MAX_DROP = 0.02


def ensure_network(data_root: str) -> Path:
    if not CKPT.exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "train_vgg11_cifar.py"), "--hidden", "1024", "1024",
                        "--epochs", "30", "--data-root", data_root, "--out", str(CKPT)], check=True)
    return CKPT


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, work="transitions_vgg")
    ap.add_argument("--settle", choices=sorted(SETTLES), default="distill",
                    help="how each leg settles on its hyperplane (docs/reproduction.md compares them)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the run (other than 0: prints, writes no docs)")
    args = ap.parse_args()
    chosen = SETTLES[args.settle]
    ckpt = ensure_network(args.data_root)
    out = Path(args.work) / "chain"
    shutil.rmtree(out, ignore_errors=True)
    options = dict(chosen, **(dict(metric_size=2000, eval_size=1000, steps=5, settle_steps=5, settle_epochs=0.5)
                                if args.quick else {}))
    cfg = TransitionConfig(checkpoint=str(ckpt), plan={"legs": PLAN}, out=str(out), data_root=args.data_root, seed=args.seed,
                           **options).validate()
    t0 = time.perf_counter()
    summary = run_transition(cfg)
    seconds = time.perf_counter() - t0
    test = load_dataset("cifar10", "test", args.data_root, preprocess=load_checkpoint(ckpt).reading(None)[0])
    if args.quick:
        test = test.head(1000)
    start_acc = summary["start_test_accuracy"]
    rows = [{"config": "C1", "name": "trained", "geodesic": start_acc, "gated": start_acc, "units_off": 0,
             "epochs": 0.0, "leg_epochs": 0.0}]
    previous = 0.0
    for leg in summary["legs"]:
        net = load_checkpoint(out / leg["file"]).model
        rows.append({"config": leg["name"], "name": leg["name"], "geodesic": leg["test_accuracy"],
                     "gated": evaluate(gated(load_checkpoint(ckpt).model, net, LAYERS), test).accuracy,
                     "units_off": leg["units_off"], "epochs": leg["epochs"], "leg_epochs": leg["epochs"] - previous})
        previous = leg["epochs"]
        print(json.dumps(rows[-1]), flush=True)
    docs = Path(args.docs)
    (docs / "img").mkdir(parents=True, exist_ok=True)
    checks = [(f"{r['config']} within {MAX_DROP:.0%} of C1 ({r['geodesic']:.2%} vs {start_acc:.2%})",
               r["geodesic"] >= start_acc - MAX_DROP) for r in rows[1:]]
    checks += [(f"{r['config']} leg within {MAX_EPOCHS_PER_LEG:g} epochs ({r['leg_epochs']:.2f})",
                r["leg_epochs"] <= MAX_EPOCHS_PER_LEG) for r in rows[1:]]
    host = machine()
    if not args.quick and args.seed == 0 and args.settle == "distill":
        plot_runs([out], docs / "img" / "transitions_vgg.png", x="step", labels=["C1 → C2 → C3 → C4"],
                  title="transitions, VGG11 (width 0.25) on CIFAR-10: test accuracy along the chain", overwrite=True)
        (docs / "bench_transitions_vgg.json").write_text(json.dumps(
            {"machine": host, "plan": PLAN, "settle": args.settle, "options": chosen, "rows": rows, "seconds": seconds,
             "checks": dict(checks)}, indent=2) + "\n")
        lines = ["# Transitions C1 → C2 → C3 → C4: VGG11 (width 0.25, FC 1024-1024) on CIFAR-10", "",
                 f"Produced by `python bench/transitions_vgg.py` on {host} ({seconds:.0f} s). Plan: "
                 f"`{json.dumps(PLAN)}`; options `{json.dumps(chosen)}`. *Gated*: the trained network with the same "
                 "units switched off and no updates. Test accuracy on the full CIFAR-10 test set; epochs of the 20k "
                 "training images.", "",
                 "| config | units off (features.0 + classifier.0) | geodesic | gated, no updates | epochs (leg) | "
                 "epochs (total) |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['config']} | {r['units_off']} | {r['geodesic']:.2%} | {r['gated']:.2%} | "
                  f"{r['leg_epochs']:.2f} | {r['epochs']:.2f} |" for r in rows]
        lines += ["", "Checks (issue 20):", ""] + [f"- {'PASS' if ok else 'MISS'} — {n}" for n, ok in checks]
        lines += ["", "![accuracy along the chain](img/transitions_vgg.png)"]
        (docs / "bench_transitions_vgg.md").write_text("\n".join(lines) + "\n")
    missed = [n for n, ok in checks if not ok]
    print("transitions_vgg: " + ", ".join(f"{r['config']} {r['geodesic']:.2%} (gated {r['gated']:.2%})" for r in rows)
          + f"; {len(checks) - len(missed)}/{len(checks)} checks passed" + (f"; missed: {'; '.join(missed)}" if missed else ""))
    return 3 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
