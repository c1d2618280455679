"""Quality bar of issue #2: MLP 784-300-100-10 on full MNIST driven to 70/90/95 % sparsity.

    python bench/sparsify_mnist.py [--data-root ../shared/data] [--sparsities 0.7 0.9 0.95]

For each sparsity, in the same run and on the same data: dense accuracy, one-shot
global magnitude pruning, magnitude pruning + fine-tuning given exactly the sample
passes geopath spent, and geopath (CLI defaults). Writes
docs/bench_sparsify_mnist.{json,md}; prints a one-line summary; exits 3 when a
target of the issue is missed (70 %: ≥ 96.8 % and within 0.3 points of dense;
95 %: geopath ≥ prune + fine-tune).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from geopath.core.params import ParamSpace, model_vector
from geopath.peers import prune_finetune
from geopath.io.checkpoint import load_checkpoint
from geopath.config import SparsifyConfig
from geopath.io.data import load_dataset
from geopath.core.evaluate import evaluate
from geopath.report.plot import plot_runs
from geopath.jobs.sparsify import run_sparsify
from geopath.core.targets import MagnitudeTarget, prunable_parameters

from _common import ROOT, add_common_args, machine  # noqa: E402 (bench/ is on sys.path when run as a script)

CKPT = ROOT / "sample_checkpoints" / "mlp_mnist.safetensors"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, work="sparsify_mnist", quick=False)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.7, 0.9, 0.95])
    args = ap.parse_args()
    train = load_dataset("mnist", "train", args.data_root)
    test = load_dataset("mnist", "test", args.data_root)
    dense = evaluate(load_checkpoint(CKPT).model, test).accuracy
    results, runs = [], []
    for s in args.sparsities:
        out = Path(args.work) / f"geopath_{int(round(s * 100))}"
        runs.append(out)
        shutil.rmtree(out, ignore_errors=True)
        cfg = SparsifyConfig(checkpoint=str(CKPT), out=str(out), data="mnist", data_root=args.data_root,
                             sparsity=s, save_every=25, criterion="magnitude", settle="geodesic").validate()
        t0 = time.perf_counter()
        summary = run_sparsify(cfg)
        geo_time = time.perf_counter() - t0
        passes = int(summary["sample_passes"])

        model = load_checkpoint(CKPT).model
        space = ParamSpace.of(model)
        target = MagnitudeTarget(space, model_vector(model, space), s, prunable_parameters(model))
        prune_finetune(model, target, train, 0)
        oneshot = evaluate(model, test).accuracy

        model = load_checkpoint(CKPT).model
        torch.manual_seed(0)
        t0 = time.perf_counter()
        stats = prune_finetune(model, target, train, passes)
        pft_time = time.perf_counter() - t0
        pft = evaluate(model, test).accuracy
        row = {"sparsity": s, "dense": dense, "one_shot": oneshot, "prune_finetune": pft, "geopath": summary["test_accuracy"],
               "sample_passes": passes, "epochs": passes / len(train), "geopath_seconds": geo_time,
               "prune_finetune_seconds": pft_time, "prune_finetune_passes": stats.sample_passes,
               "geopath_steps": summary["step"]}
        print(json.dumps(row), flush=True)
        results.append(row)

    (Path(args.docs) / "img").mkdir(parents=True, exist_ok=True)
    plot_runs(runs,
              Path(args.docs) / "img" / "sparsify_mnist.png", x="epochs",
              labels=[f"geodesic to {r['sparsity']:.0%} sparsity" for r in results],
              title="sparsify, MLP on MNIST: test accuracy along the geodesic", overwrite=True)
    checks = []
    for r in results:
        if abs(r["sparsity"] - 0.7) < 1e-9:
            checks.append(("70%: geopath >= 96.8% (paper)", r["geopath"] >= 0.968))
            checks.append(("70%: within 0.3 points of dense", r["geopath"] >= r["dense"] - 0.003))
        if abs(r["sparsity"] - 0.95) < 1e-9:
            checks.append(("95%: geopath >= prune+fine-tune, same passes", r["geopath"] >= r["prune_finetune"]))
    host = machine()
    docs = Path(args.docs)
    (docs / "bench_sparsify_mnist.json").write_text(json.dumps({"machine": host, "results": results,
                                                                 "checks": dict(checks)}, indent=2) + "\n")
    lines = ["# Sparsify: MLP 784-300-100-10 on MNIST", "",
             f"Produced by `python bench/sparsify_mnist.py` on {host}. Test accuracy on the full",
             "10,000-image MNIST test set; every method on the same network and data. *Passes* are",
             "forward+backward sample passes (geopath's cost model in docs/method.md); prune + fine-tune",
             "gets exactly geopath's passes.", "",
             "| sparsity | dense | one-shot magnitude | prune + fine-tune | geopath | passes (epochs) | geopath s | p+ft s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['sparsity']:.0%} | {r['dense']:.2%} | {r['one_shot']:.2%} | {r['prune_finetune']:.2%} | "
                     f"{r['geopath']:.2%} | {r['sample_passes']:,} ({r['epochs']:.2f}) | {r['geopath_seconds']:.0f} | "
                     f"{r['prune_finetune_seconds']:.0f} |")
    lines += ["", "Checks against the issue's bar:", ""]
    lines += [f"- {'PASS' if ok else 'MISS'} — {name}" for name, ok in checks]
    lines += ["", "![test accuracy along the geodesics](img/sparsify_mnist.png)"]
    (docs / "bench_sparsify_mnist.md").write_text("\n".join(lines) + "\n")
    missed = [n for n, ok in checks if not ok]
    print(f"sparsify_mnist: {len(checks) - len(missed)}/{len(checks)} checks passed"
          + (f"; missed: {'; '.join(missed)}" if missed else ""))
    return 3 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
