"""Quality bar of the connect issue: low-loss paths between independently trained networks.

    python bench/connect_paths.py [--part mnist|lenet|vgg|resnet|cifar|all] [--data-root ../shared/data] [--quick]

Parts (``cifar`` is ``vgg`` and ``resnet`` together, ``all`` every part):

- ``mnist``: A = sample_checkpoints/mlp_mnist.safetensors, B = sample_checkpoints/mlp_mnist_seed1.safetensors
  (MLP 784-300-100-10, different initialisations).
- ``lenet``: two LeNet-5s trained here for 3 epochs on MNIST (cached), a pair no default was chosen on.
- ``vgg``: two VGG11 at width 0.25 (with BatchNorm, ~0.58 M parameters) trained here from different seeds for
  15 epochs on the 20k CIFAR-10 training images (cached in bench/_work/connect/).
- ``resnet``: two ResNet-20s (CIFAR variant, 0.27 M parameters), 12 epochs each, cached likewise.

In one run per part, on the same endpoints and data, with and without weight matching (--align): the geodesic
(CLI defaults: the whole path relaxed at once, ``--path relax``, 10 epochs of fitting; 5 after --align), the
linear path, and a quadratic Bezier curve trained for the geodesic's epochs. The MNIST part also runs the greedy
walk (``--path walk``), which stalls on the CIFAR pairs (docs/method.md). Every evaluated network gets fresh
BatchNorm statistics; the barrier is measured on the test set (CIFAR: its first 5,000 images) at 21 points of
every path. Writes docs/bench_connect.{json,md} and
docs/img/connect_<part>.png; prints a one-line summary; exits 3 when a bar is missed: on every pair, with and
without --align, the geodesic's path ends exactly at B (the aligned B), its max test error is within 1 point of
the worse endpoint's and its barrier is no worse than the Bezier curve's at the same budget; and the CIFAR parts
together take under 45 minutes.
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
# arch → (built-in name, kwargs, file stem, data set); the endpoints are trained here from seeds 0 and 1
TRAINED = {"vgg11": ("vgg11", {"width": 0.25}, "vgg11w025", "cifar10"),
           "resnet20": ("resnet20", {}, "resnet20", "cifar10"),
           "lenet5": ("lenet5", {}, "lenet5", "mnist")}


def trained_endpoints(work: Path, data_root: str, epochs: float, quick: bool, arch: str = "vgg11"
                      ) -> tuple[Path, Path]:
    """Two networks (``arch``: VGG11 width 0.25 or ResNet-20 on CIFAR-10's 20k images, LeNet-5 on MNIST)
    trained from seeds 0 and 1 (SGD, lr 0.05, weight decay 5e-4; cached in ``work``)."""
    return (trained(work, data_root, epochs, quick, arch, seed=0),
            trained(work, data_root, epochs, quick, arch, seed=1))


def trained(work: Path, data_root: str, epochs: float, quick: bool, arch: str, seed: int) -> Path:
    """One of :func:`trained_endpoints`' networks: ``arch`` trained from ``seed`` (cached in ``work``)."""
    name, kwargs, stem, data = TRAINED[arch]
    path = work / f"{stem}_{data}_seed{seed}{'_quick' if quick else ''}.safetensors"
    if path.exists():
        return path
    tr = load_dataset(data, "train", data_root)
    te = load_dataset(data, "test", data_root)
    if quick:
        tr, epochs = tr.head(1000), 0.5
    torch.manual_seed(seed)
    model = build_model(name, kwargs)
    t0 = time.perf_counter()
    train(model, tr, epochs=epochs, batch_size=128, lr=0.05, weight_decay=5e-4, seed=seed)
    acc = evaluate(model, te).accuracy
    save_checkpoint(path, model, name, kwargs, step=0,
                    extra={"data": data, "test_accuracy": f"{acc:.4f}", "seed": str(seed),
                           "train_epochs": str(epochs)})
    print(json.dumps({"trained": path.name, "test_accuracy": acc,
                      "seconds": round(time.perf_counter() - t0)}), flush=True)
    return path


def run_part(part: str, a: Path, b: Path, work: Path, data_root: str, extra: dict) -> list[dict]:
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

    results = []
    # after --align the pair is already nearly connected: half the default fitting budget (and the same for Bezier)
    for suffix, align, budget in (("", False, {}), ("_aligned", True, {"relax_epochs": 5.0})):
        geo = run("geodesic" + suffix, points=21, align=align, **budget)
        results += [geo, run("linear" + suffix, method="linear", points=21, align=align),
                    run("bezier" + suffix, method="bezier", points=21, align=align,
                        epochs=max(geo["summary"]["epochs"], 0.01))]
        if part == "mnist":
            results.append(run("walk" + suffix, path="walk", align=align))
    return results


CIFAR_BAR_S = 45 * 60  # the CIFAR parts together (endpoints cached), seconds
TIE = 0.001  # barriers closer than 0.1 point are a tie (5 test images of CIFAR's 5,000-image slice, 10 of MNIST's)


def _part_setup(part: str, work: Path, args) -> tuple[Path, Path, dict, str, float]:
    """Endpoints, extra options, description and endpoint-training seconds of one part."""
    quick = dict(metric_size=2000, eval_size=1000) if args.quick else {}
    if part == "mnist":
        desc = "MLP 784-300-100-10 on MNIST (sample checkpoints, seeds 0 and 1)"
        return SAMPLES / "mlp_mnist.safetensors", SAMPLES / "mlp_mnist_seed1.safetensors", dict(quick), desc, 0.0
    t0 = time.perf_counter()
    if part == "lenet":
        a, b = trained_endpoints(work, args.data_root, 3.0, args.quick, arch="lenet5")
        desc = "LeNet-5 on MNIST (trained here for 3 epochs, seeds 0 and 1; not used to choose any default)"
        return a, b, dict(quick), desc, time.perf_counter() - t0
    if part == "resnet":
        a, b = trained_endpoints(work, args.data_root, 12.0, args.quick, arch="resnet20")
        desc = "ResNet-20 on CIFAR-10 (trained here for 12 epochs on 20k images, seeds 0 and 1)"
    else:
        a, b = trained_endpoints(work, args.data_root, args.cifar_epochs, args.quick)
        desc = (f"VGG11 width 0.25 with BatchNorm on CIFAR-10 (trained here for {args.cifar_epochs:g} epochs on "
                "20k images, seeds 0 and 1)")
    # CPU budget: a 5,000-image test slice for the barrier (2,000 images for BatchNorm statistics, the default)
    extra = {**dict(eval_size=5000), **quick}
    return a, b, extra, desc + "; barrier on the first 5,000 test images", time.perf_counter() - t0


def _checks(report: dict) -> list[tuple[str, bool, str]]:
    """(what, passed, detail) for every bar of the module docstring."""
    checks = []
    for part, rep in report["parts"].items():
        rows = {r["name"]: r for r in rep["results"]}
        for suffix in ("", "_aligned"):
            geo, bez = rows.get("geodesic" + suffix), rows.get("bezier" + suffix)
            if geo is None or bez is None:
                continue
            worse = 1 - min(geo["test_accuracy_a"], geo["test_accuracy_b"])
            ok = geo["reached"] and geo["accuracy_barrier"] <= 0.01 and \
                geo["accuracy_barrier"] <= bez["accuracy_barrier"] + TIE
            checks.append((f"{part}{suffix}", ok,
                           f"geodesic max error {1 - geo['min_test_accuracy']:.2%} vs worse endpoint {worse:.2%}, "
                           f"barrier {100 * geo['accuracy_barrier']:.2f} points vs Bezier "
                           f"{100 * bez['accuracy_barrier']:.2f}, linear "
                           f"{100 * rows['linear' + suffix]['accuracy_barrier']:.2f}"
                           f"{'' if geo['reached'] else ', did not reach B'}"))
    cifar = [report["parts"][p] for p in ("vgg", "resnet") if p in report["parts"]]
    if len(cifar) == 2:
        total = sum(rep["seconds"] for rep in cifar)
        checks.append(("cifar time", total <= CIFAR_BAR_S,
                       f"vgg + resnet parts {total / 60:.1f} min (bar {CIFAR_BAR_S // 60} min; endpoints cached)"))
    return checks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["mnist", "lenet", "vgg", "resnet", "cifar", "all"], default="all")
    add_common_args(ap, work="connect")
    ap.add_argument("--cifar-epochs", type=float, default=15.0)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    docs = Path(args.docs)
    (docs / "img").mkdir(parents=True, exist_ok=True)
    parts = {"all": ["mnist", "lenet", "vgg", "resnet"], "cifar": ["vgg", "resnet"]}.get(args.part, [args.part])
    json_path = docs / "bench_connect.json"
    report = json.loads(json_path.read_text()) if json_path.exists() and not args.quick else {}
    report.setdefault("parts", {})
    for part in parts:
        a, b, extra, desc, endpoint_s = _part_setup(part, work, args)
        t0 = time.perf_counter()
        results = run_part(part, a, b, work, args.data_root, extra)
        seconds = time.perf_counter() - t0
        plot_runs([work / part / r["name"] for r in results if not r["name"].endswith("_aligned")],
                  docs / "img" / f"connect_{part}.png", x="t", title=f"connect, {part}: test accuracy along each path",
                  overwrite=True)
        keys = ("test_accuracy_a", "test_accuracy_b", "min_test_accuracy", "accuracy_barrier", "loss_barrier",
                "max_test_loss", "reached", "evaluated_points", "step", "sample_passes", "epochs", "seconds")
        report["parts"][part] = {"description": desc, "machine": machine(), "quick": args.quick,
                                 "seconds": round(seconds), "endpoint_training_seconds": round(endpoint_s),
                                 "results": [{"name": r["name"], "options": r["options"],
                                              **{k: r["summary"][k] for k in keys}} for r in results]}
    checks = _checks(report)
    json_path.write_text(json.dumps({**report, "checks": {w: ok for w, ok, _ in checks}}, indent=2) + "\n")
    _write_md(docs / "bench_connect.md", report, checks)
    print("connect_paths: " + "; ".join(f"{w}: {d} {'PASS' if ok else 'MISS'}" for w, ok, d in checks))
    return 0 if all(ok for _, ok, _ in checks) else 3


def _write_md(path: Path, report: dict, checks) -> None:
    lines = ["# Connect: low-loss paths between independently trained networks", "",
             "Produced by `python bench/connect_paths.py`. For every path: test accuracy at both endpoints, the",
             "lowest test accuracy at any evaluated point (*min*), the **accuracy barrier** (worse endpoint minus",
             "min, in points) and the **loss barrier** (max test loss minus the mean of the endpoint losses). Every",
             "evaluated network has freshly estimated BatchNorm statistics. *Passes* are forward+backward sample",
             "passes. *geodesic* is `geopath connect` with its defaults (the whole path relaxed at once); the Bezier",
             "curve gets the geodesic's budget (the aligned one the aligned geodesic's); *walk* is the greedy",
             "`--path walk`. `_aligned` rows ran with `--align`.", ""]
    for part, rep in report["parts"].items():
        lines += [f"## {part}: {rep['description']}", "",
                  f"Machine: {rep['machine']}{' (quick smoke run, not a result)' if rep.get('quick') else ''}. "
                  f"The part took {rep['seconds'] / 60:.1f} min ("
                  + (f"and training its endpoints {rep['endpoint_training_seconds']} s before it)."
                     if rep["endpoint_training_seconds"] >= 10 else "endpoints cached).")
                  + (" The greedy walk (`--path walk`) is not run on the CIFAR pairs: it stalled on the VGG pair "
                     "(docs/method.md) and costs more than the whole part." if part in ("vgg", "resnet") else ""), "",
                  "| path | A | B | min | accuracy barrier | loss barrier | points | passes (epochs) | seconds |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rep["results"]:
            lines.append(f"| {r['name']} | {r['test_accuracy_a']:.2%} | {r['test_accuracy_b']:.2%} | "
                         f"{r['min_test_accuracy']:.2%} | {100 * r['accuracy_barrier']:.2f} | "
                         f"{r['loss_barrier']:.4f} | "
                         f"{r['evaluated_points']} | {r['sample_passes']:,.0f} ({r['epochs']:.2f}) | "
                         f"{r['seconds']:.0f} |")
        lines += ["", f"![{part}](img/connect_{part}.png)", ""]
    lines += ["Checks (on every pair, with and without `--align`: the geodesic ends at B, its max test error is within "
              "1 point of the worse endpoint's, its barrier is no worse than Bezier's (0.1-point tie); the CIFAR parts "
              "together under 45 minutes):", ""]
    lines += [f"- {'PASS' if ok else 'MISS'} — {w}: {d}" for w, ok, d in checks]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
