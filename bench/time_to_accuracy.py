"""Seconds to the geodesic's accuracy: how long a peer needs to get as far as ``geopath sparsify``'s defaults.

    python bench/time_to_accuracy.py [--sparsity 0.9] [--seeds 0 1 2] [--quick]

The shipped MNIST MLP at ``--sparsity``: the geodesic with its defaults, and prune + fine-tune and gradual
magnitude pruning on a ladder of budgets (``--epochs``, in epochs of sample passes; the geodesic's own
budget is added), each at SGD lr 0.05 and 0.1 (the better mean reported per budget), every run over
``--seeds``, all in this process one after the other (after a warm-up run), timed around the whole job
(data loading, evaluation and checkpoint writes included, as a user waits for them). For each peer: the
mean accuracy and seconds per budget, and the seconds it needs to reach the geodesic's mean accuracy
(linear between the first budget that reaches it and the one before). Writes
docs/time_to_accuracy.{json,md}; prints a one-line summary; exits 3 when a peer reaches the geodesic's
accuracy in fewer seconds than the geodesic took (issue 21: at equal test accuracy, fewer seconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import profile_sparsify  # its run(): one whole sparsify run, timed (bench/ is on sys.path when run as a script)
from _common import add_common_args, machine

PEERS = ("prune-finetune", "gradual")
LRS = (0.05, 0.1)


def timed_run(out: Path, **options) -> tuple[float, float, float]:
    """(test accuracy, epochs of passes, seconds) of one sparsify run of the shipped MNIST MLP."""
    summary, _, seconds = profile_sparsify.run(out, **options)
    return float(summary["test_accuracy"]), float(summary["epochs"]), seconds


def seconds_to_reach(points: list[dict], accuracy: float) -> float | None:
    """Seconds at which the peer's (seconds, accuracy) ladder first reaches ``accuracy`` (linear between the
    first budget that reaches it and the one before it; the first budget's own seconds if that one does)."""
    for i, p in enumerate(points):
        if p["accuracy"] >= accuracy:
            if i == 0:
                return p["seconds"]
            q = points[i - 1]
            frac = (accuracy - q["accuracy"]) / (p["accuracy"] - q["accuracy"])
            return q["seconds"] + frac * (p["seconds"] - q["seconds"])
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, work="time_to_accuracy")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=float, nargs="+", default=[0.5, 1.0, 2.0, 5.0, 8.0],
                    help="the peers' budgets (the geodesic's own is added)")
    args = ap.parse_args()
    work = Path(args.work)
    common = {"data_root": args.data_root, "sparsity": args.sparsity}
    if args.quick:
        common.update(metric_size=5000, eval_size=1000)
        args.seeds, args.epochs = args.seeds[:1], [0.5, 1.0]
    timed_run(work / "warm-up", **{**common, "metric_size": 512, "eval_size": 256, "steps": 2, "settle_epochs": 0.1})
    geo = [timed_run(work / f"geodesic_s{s}", seed=s, **common) for s in args.seeds]
    geodesic = {"accuracy": statistics.mean(g[0] for g in geo), "epochs": statistics.mean(g[1] for g in geo),
                "seconds": statistics.mean(g[2] for g in geo), "runs": geo}
    print(json.dumps({"geodesic": {k: round(v, 4) for k, v in geodesic.items() if k != "runs"}}), flush=True)
    budgets = sorted(set(args.epochs) | {round(geodesic["epochs"], 2)})
    peers = {}
    for method in PEERS:
        ladder = []
        for epochs in budgets:
            best = None
            for lr in LRS:
                runs = [timed_run(work / f"{method}_e{epochs}_lr{lr}_s{s}", method=method, finetune_epochs=epochs,
                                  lr=lr, seed=s, **common) for s in args.seeds]
                point = {"epochs": epochs, "lr": lr, "accuracy": statistics.mean(r[0] for r in runs),
                         "seconds": statistics.mean(r[2] for r in runs), "runs": runs}
                if best is None or point["accuracy"] > best["accuracy"]:
                    best = point
            ladder.append(best)
            print(json.dumps({"method": method, **{k: v for k, v in best.items() if k != "runs"}}), flush=True)
        need = seconds_to_reach(ladder, geodesic["accuracy"])
        peers[method] = {"ladder": ladder, "seconds_to_geodesic_accuracy": need}
    ok = all(p["seconds_to_geodesic_accuracy"] is None or p["seconds_to_geodesic_accuracy"] >= geodesic["seconds"]
             for p in peers.values())
    host = machine()
    if not args.quick:
        docs = Path(args.docs)
        (docs / "time_to_accuracy.json").write_text(json.dumps({"machine": host, "sparsity": args.sparsity,
                                                                "seeds": args.seeds, "geodesic": geodesic,
                                                                "peers": peers}, indent=2) + "\n")
        write_md(docs / "time_to_accuracy.md", host, args, geodesic, peers)
    summary = "; ".join(f"{m} {_seconds(p['seconds_to_geodesic_accuracy'])}" for m, p in peers.items())
    print(f"time_to_accuracy: geodesic {geodesic['accuracy']:.2%} in {geodesic['seconds']:.1f} s; peers to the same "
          f"accuracy: {summary} {'PASS' if ok else 'MISS'}")
    return 0 if ok else 3


def _seconds(need: float | None) -> str:
    return "never (within the ladder)" if need is None else f"{need:.1f} s"


def write_md(path: Path, host: str, args, geodesic: dict, peers: dict) -> None:
    lines = ["# Seconds to the geodesic's accuracy", "",
             f"Produced by `python bench/time_to_accuracy.py --sparsity {args.sparsity}` on {host}: the shipped MNIST "
             f"MLP at {args.sparsity:.0%} sparsity, full MNIST, seeds {', '.join(map(str, args.seeds))}, every run in "
             "one process one after the other, each timed whole (data loading, evaluation, checkpoint writes). "
             "Each peer budget is the better of SGD lr 0.05 and 0.1 on the mean over the seeds.", "",
             f"**geodesic (defaults): {geodesic['accuracy']:.2%}** in {geodesic['epochs']:.2f} epochs of passes, "
             f"**{geodesic['seconds']:.1f} s** (runs: "
             + ", ".join(f"{a:.2%} in {t:.1f} s" for a, _, t in geodesic["runs"]) + ").", "",
             "| peer | epochs | lr | test accuracy | seconds |", "|---|---:|---:|---:|---:|"]
    for method, p in peers.items():
        for q in p["ladder"]:
            lines.append(f"| {method} | {q['epochs']:.2f} | {q['lr']:g} | {q['accuracy']:.2%} | {q['seconds']:.1f} |")
    lines += ["", "Seconds each peer needs to reach the geodesic's mean accuracy (linear between the first budget "
              "that reaches it and the one before):", ""]
    for method, p in peers.items():
        need = p["seconds_to_geodesic_accuracy"]
        lines.append(f"- {method}: " + ("not reached within the ladder" if need is None else
                                         f"{need:.1f} s ({need / geodesic['seconds']:.2f}× the geodesic's)"))
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
