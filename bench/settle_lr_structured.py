"""The training settle's learning rate when whole units go: ``--settle-lr`` 0.05 against 0.1 with ``--structured``.

    python bench/settle_lr_structured.py [--seeds 0 1] [--no-vgg]

The measurement behind ``default_settle_lr`` (geopath/jobs/sparsify.py): the geodesic with sparsify's
defaults and ``--structured`` on three MLPs (the shipped MNIST and Fashion-MNIST MLPs, bench/train_mlps.py's
Adam-trained Fashion-MNIST MLP; 200 of 300 and 50 of 100 hidden units removed), and on the shipped VGG11
(width 0.25) with 12 of its 16 layer-1 filters removed and bench/vgg_filters.py's approach (seed 0 only:
about 90 s a run), each at lr 0.05 and 0.1. Runs go through bench/suite.py's runner (finished runs in
bench/_work/suite/settle_lr are reused). Writes docs/settle_lr_structured.{json,md}; prints a one-line summary;
exits 3 when 0.05, the default for ``--structured``, is behind 0.1 on the mean over the networks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import suite  # its network() and run() (bench/ is on sys.path when run as a script)
from _common import add_common_args, machine
from vgg_filters import GEODESIC, LAYER

MLPS = {"mlp_mnist": "layers.0:200,layers.1:50", "mlp_fashion_mnist": "layers.0:200,layers.1:50",
        "fmnist_adam": "layers.0:200,layers.1:50"}
VGG = "vgg11w025_cifar10"
LRS = (0.05, 0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, work="suite/settle_lr", quick=False)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--no-vgg", action="store_true", help="the three MLPs only")
    args = ap.parse_args()
    work = Path(args.work)
    cases = [(net, structured, {}, args.seeds) for net, structured in MLPS.items()]
    if not args.no_vgg:
        vgg_options = {k: v for k, v in GEODESIC.items() if k != "save_every"}
        cases.append((VGG, f"{LAYER}:12", vgg_options, [0]))
    rows = []
    for net, structured, options, seeds in cases:
        ckpt = suite.network(net, args.data_root)
        row = {"network": net, "structured": structured, "seeds": seeds, "accuracy": {}}
        for lr in LRS:
            runs = [suite.run(ckpt, work / net / f"lr{lr}_s{s}", args.data_root, structured=structured, seed=s,
                              settle_lr=lr, **options) for s in seeds]
            row["accuracy"][str(lr)] = [r["accuracy"] for r in runs]
            row["epochs"] = runs[0]["epochs"]
        row["gain_of_0.05"] = (statistics.mean(row["accuracy"]["0.05"]) - statistics.mean(row["accuracy"]["0.1"]))
        rows.append(row)
        print(json.dumps({"network": net, **{lr: round(statistics.mean(a), 4) for lr, a in row["accuracy"].items()}}),
              flush=True)
    mean_gain = statistics.mean(r["gain_of_0.05"] for r in rows)
    host = machine()
    docs = Path(args.docs)
    (docs / "settle_lr_structured.json").write_text(json.dumps({"machine": host, "results": rows}, indent=2) + "\n")
    lines = ["# The settle's learning rate when whole units go", "",
             f"Produced by `python bench/settle_lr_structured.py{' --no-vgg' if args.no_vgg else ''}` on {host}: the "
             "geodesic with sparsify's defaults and `--structured`, `--settle-lr` 0.05 against 0.1 (mean test "
             "accuracy over the seeds).", "",
             "| network | removed | seeds | epochs | lr 0.05 | lr 0.1 | 0.05 − 0.1 |", "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        a, b = (statistics.mean(r["accuracy"][lr]) for lr in ("0.05", "0.1"))
        lines.append(f"| {r['network']} | `{r['structured']}` | {', '.join(map(str, r['seeds']))} | {r['epochs']:.2f} "
                     f"| {a:.2%} | {b:.2%} | {100 * (a - b):+.2f} |")
    lines += ["", f"Mean difference over the networks: {100 * mean_gain:+.2f} points for 0.05 (the `--structured` "
              "default; 0.1 stays the default for unstructured `--sparsity`, docs/method.md).", ""]
    (docs / "settle_lr_structured.md").write_text("\n".join(lines) + "\n")
    ok = mean_gain >= 0
    print(f"settle_lr_structured: lr 0.05 {'ahead of' if ok else 'behind'} 0.1 by {100 * abs(mean_gain):.2f} points "
          f"on the mean over {len(rows)} networks {'PASS' if ok else 'MISS'}")
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
