"""Quality bar of the connect issue: low-loss paths between independently trained networks.

    python bench/connect_paths.py [--part mnist|cifar|all] [--data-root ../shared/data] [--quick]

MNIST: A = sample_checkpoints/mlp_mnist.safetensors, B = sample_checkpoints/mlp_mnist_seed1.safetensors
(MLP 784-300-100-10, different initialisations). CIFAR-10: two VGG11 at width 0.25 (with BatchNorm,
~0.58 M parameters) trained here from different seeds on the 20k training images (cached in
bench/_work/connect/), a CPU-sized stand-in for "two small CIFAR-10 CNNs".

In one run per part, on the same endpoints and data: the geodesic (CLI defaults), the linear path,
a quadratic Bezier curve trained for the geodesic's epochs, and the same three after weight matching
(--align), and the geodesic found by relaxing the whole path (``--path relax``, default budget 5 epochs plus
the endpoints' outputs; ``relax``/``relax_aligned``). ``--part resnet``: two ResNet-20s (12 epochs each, cached),
without the aligned runs. Every evaluated network gets fresh BatchNorm statistics. The barrier is measured on the
test set at every evaluated point (geodesic: every --save-every steps and at --points milestones;
peers: 21 points). Writes docs/bench_connect.{json,md} and docs/img/connect_<part>.png; prints a
one-line summary; exits 3 when a geodesic path's max test error exceeds the worse endpoint's + 1 point.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from geopath.io.archs import build_model
from geopath.io.checkpoint import save_checkpoint
from geopath.config import ConnectConfig
from geopath.jobs.connect import run_connect
from geopath.io.data import load_dataset
from geopath.core.evaluate import evaluate
from geopath.report.plot import plot_runs
from geopath.core.train import train

from _common import ROOT, add_common_args, machine  # noqa: E402 (bench/ is on sys.path when run as a script)

SAMPLES = ROOT / "sample_checkpoints"
CIFAR_ARCHS = {"vgg11": ("vgg11", {"width": 0.25}, "vgg11w025"), "resnet20": ("resnet20", {}, "resnet20")}


def cifar_endpoints(work: Path, data_root: str, epochs: float, quick: bool, arch: str = "vgg11") -> tuple[Path, Path]:
    """Two networks (``arch``: VGG11 width 0.25 or ResNet-20) trained on CIFAR-10's 20k images from seeds 0
    and 1 (cached in ``work``)."""
    name, kwargs, stem = CIFAR_ARCHS[arch]
    tr = load_dataset("cifar10", "train", data_root)
    te = load_dataset("cifar10", "test", data_root)
    if quick:
        tr, epochs = tr.head(1000), 0.5
    paths = []
    for seed in (0, 1):
        path = work / f"{stem}_cifar10_seed{seed}{'_quick' if quick else ''}.safetensors"
        if not path.exists():
            torch.manual_seed(seed)
            model = build_model(name, kwargs)
            t0 = time.perf_counter()
            train(model, tr, epochs=epochs, batch_size=128, lr=0.05, weight_decay=5e-4, seed=seed)
            acc = evaluate(model, te).accuracy
            save_checkpoint(path, model, name, kwargs, step=0,
                            extra={"data": "cifar10", "test_accuracy": f"{acc:.4f}", "seed": str(seed),
                                   "train_epochs": str(epochs)})
            print(json.dumps({"trained": path.name, "test_accuracy": acc,
                              "seconds": round(time.perf_counter() - t0)}), flush=True)
        paths.append(path)
    return paths[0], paths[1]


def run_part(part: str, a: Path, b: Path, work: Path, data_root: str, extra: dict, aligned: bool = True) -> list[dict]:
    def run(name: str, **kw) -> dict:
        out = work / part / name
        shutil.rmtree(out, ignore_errors=True)
        cfg = ConnectConfig(checkpoint=str(a), checkpoint_b=str(b), out=str(out), data_root=data_root,
                            **{**extra, **kw}).validate()
        t0 = time.perf_counter()
        s = run_connect(cfg)
        s["seconds"] = time.perf_counter() - t0
        print(json.dumps({"part": part, "run": name, "min_acc": s["min_test_accuracy"],
                          "acc_barrier": s["accuracy_barrier"], "loss_barrier": s["loss_barrier"],
                          "epochs": round(s["epochs"], 2), "s": round(s["seconds"])}), flush=True)
        return {"name": name, "summary": s, "options": kw}

    geo = run("geodesic")
    epochs = max(geo["summary"]["epochs"], 0.01)
    results = [geo, run("linear", method="linear", points=21),
               run("bezier", method="bezier", points=21, epochs=epochs),
               run("relax", path="relax", points=21)]
    if not aligned:  # weight matching supports chain networks only (not residual ones)
        return results
    results.append(run("relax_aligned", path="relax", points=21, align=True))
    geo_al = run("geodesic_aligned", align=True)
    results += [geo_al, run("linear_aligned", method="linear", points=21, align=True),
                run("bezier_aligned", method="bezier", points=21, align=True,
                    epochs=max(geo_al["summary"]["epochs"], 0.01))]
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["mnist", "cifar", "resnet", "all"], default="all")
    add_common_args(ap, work="connect")
    ap.add_argument("--cifar-epochs", type=float, default=15.0)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    docs = Path(args.docs)
    (docs / "img").mkdir(parents=True, exist_ok=True)
    quick = dict(metric_size=2000, eval_size=1000, steps=40) if args.quick else {}
    parts = ["mnist", "cifar", "resnet"] if args.part == "all" else [args.part]
    json_path = docs / "bench_connect.json"
    report = json.loads(json_path.read_text()) if json_path.exists() and not args.quick else {}
    report.setdefault("parts", {})
    for part in parts:
        if part == "mnist":
            a, b = SAMPLES / "mlp_mnist.safetensors", SAMPLES / "mlp_mnist_seed1.safetensors"
            extra = dict(quick)
            desc = "MLP 784-300-100-10 on MNIST (sample checkpoints, seeds 0 and 1)"
        elif part == "resnet":
            a, b = cifar_endpoints(work, args.data_root, 12.0, args.quick, arch="resnet20")
            extra = {**dict(eval_size=5000, save_every=10), **quick}
            desc = ("ResNet-20 on CIFAR-10 (trained here for 12 epochs on 20k images, seeds 0 and 1); barrier on the "
                    "first 5,000 test images; no aligned runs (weight matching supports chain networks only)")
        else:
            a, b = cifar_endpoints(work, args.data_root, args.cifar_epochs, args.quick)
            # CPU budget: a 5,000-image test slice for the barrier, 2,000 images for BatchNorm statistics
            extra = {**dict(eval_size=5000, save_every=10), **quick}
            desc = (f"VGG11 width 0.25 with BatchNorm on CIFAR-10 (trained here for {args.cifar_epochs:g} epochs on "
                    "20k images, seeds 0 and 1); barrier on the first 5,000 test images")
        results = run_part(part, a, b, work, args.data_root, extra, aligned=part != "resnet")
        plot_runs([work / part / r["name"] for r in results[:3]], docs / "img" / f"connect_{part}.png", x="t",
                  title=f"connect, {part}: test accuracy along each path")
        report["parts"][part] = {"description": desc, "machine": machine(), "quick": args.quick, "results": [
            {"name": r["name"], "options": r["options"], **{k: r["summary"][k] for k in (
                "test_accuracy_a", "test_accuracy_b", "min_test_accuracy", "accuracy_barrier", "loss_barrier",
                "max_test_loss", "reached", "evaluated_points", "step", "sample_passes", "epochs", "seconds")}}
            for r in results]}
    checks = []
    for part, rep in report["parts"].items():
        # the check reads the relaxed geodesic where the part ran it (it is what the docs recommend), else the walk
        geo = next((r for r in rep["results"] if r["name"] == "relax"), None) or next(
            r for r in rep["results"] if r["name"] == "geodesic")
        lin = next(r for r in rep["results"] if r["name"] == "linear")
        ok = geo["accuracy_barrier"] <= 0.01
        checks.append((part, ok, geo, lin))
    json_path.write_text(json.dumps({**report, "checks": {p: ok for p, ok, _, _ in checks}}, indent=2) + "\n")
    _write_md(docs / "bench_connect.md", report, checks)
    missed = [p for p, ok, _, _ in checks if not ok]
    print("connect_paths: " + "; ".join(
        f"{p}: geodesic ({g['name']}) max error {1 - g['min_test_accuracy']:.2%} vs worse endpoint "
        f"{1 - min(g['test_accuracy_a'], g['test_accuracy_b']):.2%} (linear {1 - l['min_test_accuracy']:.2%}) "
        f"{'PASS' if ok else 'MISS'}" for p, ok, g, l in checks))
    return 3 if missed else 0


def _write_md(path: Path, report: dict, checks) -> None:
    lines = ["# Connect: low-loss paths between independently trained networks", "",
             "Produced by `python bench/connect_paths.py`. For every path: test accuracy at both endpoints, the",
             "lowest test accuracy at any evaluated point (*min*), the **accuracy barrier** (worse endpoint minus",
             "min, in points) and the **loss barrier** (max test loss minus the mean of the endpoint losses). Every",
             "evaluated network has freshly estimated BatchNorm statistics. *Passes* are forward+backward sample",
             "passes; the Bezier curve gets the geodesic's budget (the aligned one the aligned geodesic's).", ""]
    for part, rep in report["parts"].items():
        lines += [f"## {part}: {rep['description']}", "",
                  f"Machine: {rep['machine']}{' (quick smoke run, not a result)' if rep.get('quick') else ''}.", "",
                  "| path | A | B | min | accuracy barrier | loss barrier | points | passes (epochs) | seconds |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rep["results"]:
            lines.append(f"| {r['name']} | {r['test_accuracy_a']:.2%} | {r['test_accuracy_b']:.2%} | "
                         f"{r['min_test_accuracy']:.2%} | {100 * r['accuracy_barrier']:.2f} | {r['loss_barrier']:.4f} | "
                         f"{r['evaluated_points']} | {r['sample_passes']:,.0f} ({r['epochs']:.2f}) | "
                         f"{r['seconds']:.0f} |")
        lines += ["", f"![{part}](img/connect_{part}.png)", ""]
    lines += ["Checks (geodesic max test error ≤ worse endpoint's + 1 point; the relaxed path where the part ran it):",
              ""]
    lines += [f"- {'PASS' if ok else 'MISS'} — {p}: geodesic ({g['name']}) accuracy barrier {100 * g['accuracy_barrier']:.2f} points "
              f"(linear path: {100 * l['accuracy_barrier']:.2f})" for p, ok, g, l in checks]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
