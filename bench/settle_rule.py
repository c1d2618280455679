"""What ``--settle auto`` sees on each suite network, and how likely its draw is to choose otherwise.

    python bench/settle_rule.py [--nets NAME ...] [--seeds 0 1 2]

The rule (``choose_settle``, geopath/jobs/sparsify.py) scores the start on a seeded draw of
``SETTLE_RULE_SAMPLES`` training inputs and distils when at least ``SETTLE_RULE_ACCURACY`` of them are
classified right, else fine-tunes on the labels (with ``--structured`` it always fine-tunes: nothing to see
here). For every network of bench/suite.py (or those named) this runs the rule itself at each seed (the
suite's seeds) and scores the start on all its training inputs; from
that accuracy ``p`` it gives the chance that a draw of the rule's size chooses otherwise than the whole set
would (the number wrong taken as binomial, n = the draw, 1 − p): a network whose choice rests on luck of the
draw shows there. Forward passes only (seconds a network), except that LeNet-5 and the ResNet-20 are trained
when bench/_work does not hold them yet (about 2 and 12+ CPU minutes).

Writes docs/settle_rule.{json,md}; prints a one-line summary; exits 3 when a network's choice differs between
seeds or its chance of a flip is above 5 %.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import suite  # its network() (bench/ is on sys.path when run as a script)
from _common import add_common_args, machine

from geopath.config import SparsifyConfig
from geopath.core.evaluate import evaluate
from geopath.jobs import common as job
from geopath.jobs.sparsify import SETTLE_RULE_ACCURACY, SETTLE_RULE_SAMPLES, choose_settle

NETS = ["mlp_mnist", "mlp_fashion_mnist", "fmnist_adam", "mnist_sgd_raw", "mnist_wide", "lenet5", "vit",
        "vgg11w025_cifar10", "resnet20"]
FLIP_BAR = 0.05


def flip_chance(p: float, n: int, threshold: float) -> float:
    """P(a draw of ``n`` inputs chooses otherwise than accuracy ``p`` on the whole set would): the number wrong
    ``k ~ Binomial(n, 1 − p)``; the draw distils when ``k ≤ n·(1 − threshold)``."""
    q, most = 1.0 - p, math.floor(n * (1.0 - threshold) + 1e-9)  # the most wrong a distilling draw may have

    def pmf(k: int) -> float:
        if q == 0.0:
            return 1.0 if k == 0 else 0.0
        if q == 1.0:
            return 1.0 if k == n else 0.0
        return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                        + k * math.log(q) + (n - k) * math.log1p(-q))

    distils = min(1.0, sum(pmf(k) for k in range(0, most + 1)))
    return 1.0 - distils if p >= threshold else distils


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, quick=False)
    ap.add_argument("--nets", nargs="+", choices=NETS, default=NETS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    rows = []
    for name in args.nets:
        ckpt = suite.network(name, args.data_root)
        cfg = SparsifyConfig(checkpoint=str(ckpt), out="unused", data_root=args.data_root, sparsity=0.9,
                             train_eval_size=0).validate()  # (unstructured: with --structured auto fine-tunes)
        ck = job.load(cfg, cfg.checkpoint)
        _, data, _, _ = job.single_task_data(cfg, ck, "cpu")
        model = ck.model.eval()
        full = evaluate(model, data, device="cpu").accuracy
        draws = []
        for seed in args.seeds:
            settle, record, _ = choose_settle(dataclasses.replace(cfg, seed=seed), model, data, "cpu")
            draws.append({"seed": seed, "train_accuracy": record["train_accuracy"], "chosen": settle.value})
        n = record["inputs"]  # (the rule's draw: min(SETTLE_RULE_SAMPLES, len(data)))
        rows.append({"net": name, "inputs": len(data), "full_accuracy": full, "draw": n,
                     "full_choice": "distill" if full >= SETTLE_RULE_ACCURACY else "finetune",
                     "flip_chance": flip_chance(full, n, SETTLE_RULE_ACCURACY), "draws": draws})
        print(json.dumps(rows[-1]), flush=True)

    unstable = [r["net"] for r in rows if len({d["chosen"] for d in r["draws"]}) > 1 or r["flip_chance"] > FLIP_BAR]
    command = "python bench/settle_rule.py" + ("" if args.nets == NETS else " --nets " + " ".join(args.nets)) + (
        "" if args.seeds == [0, 1, 2] else " --seeds " + " ".join(map(str, args.seeds)))
    host = machine()
    docs = Path(args.docs)
    (docs / "settle_rule.json").write_text(json.dumps(
        {"machine": host, "command": command, "threshold": SETTLE_RULE_ACCURACY, "samples": SETTLE_RULE_SAMPLES,
         "seeds": args.seeds, "results": rows, "unstable": unstable}, indent=2) + "\n")
    lines = ["# What `--settle auto` sees", "",
             f"Produced by `{command}` on {host}. The rule scores the start on a seeded draw of "
             f"{SETTLE_RULE_SAMPLES:,} training inputs (all of them when there are fewer) and distils from "
             f"{SETTLE_RULE_ACCURACY:.1%} right; *flip chance*: how likely a draw of that size chooses otherwise "
             "than the whole training set would (binomial in the number wrong).", "",
             "| network | training inputs | accuracy on all of them | the whole set chooses | "
             + " | ".join(f"seed {s}: draw (choice)" for s in args.seeds) + " | flip chance |",
             "|---|---:|---:|---|" + "---|" * len(args.seeds) + "---:|"]
    for r in rows:
        lines.append(f"| {r['net']} | {r['inputs']:,} | {r['full_accuracy']:.3%} | {r['full_choice']} | "
                     + " | ".join(f"{d['train_accuracy']:.3%} ({d['chosen']})" for d in r["draws"])
                     + f" | {r['flip_chance']:.2%} |")
    lines += ["", f"Bar: every network chooses the same at every seed, with a flip chance of at most {FLIP_BAR:.0%}: "
              + ("PASS" if not unstable else f"MISS ({', '.join(unstable)})") + "."]
    (docs / "settle_rule.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"settle rule: {len(rows) - len(unstable)}/{len(rows)} networks choose stably"
          + (f"; unstable: {', '.join(unstable)}" if unstable else ""))
    return 3 if unstable else 0


if __name__ == "__main__":
    sys.exit(main())
