"""Where the seconds of a whole ``sparsify`` run go, phase by phase, next to prune + fine-tune's.

    python bench/profile_sparsify.py [--sparsity 0.9] [--case mlp|vgg] [--device cpu|cuda] [--repeats 3] [--quick]

Runs ``geopath sparsify`` on the shipped MNIST MLP in three variants — the defaults (saliency
mask, settle by fine-tuning; ``--jvp auto`` is layerwise on the CPU), the same with ``--jvp
reverse`` (torch.func's faster mode on this MLP), and the former path (``--criterion magnitude
--settle geodesic``) — or (``--case vgg``) the VGG11 filter removal with ``bench/vgg_filters.py``'s
options and with those and ``--jvp forward`` — with a timer around
each phase, each followed by ``--method prune-finetune`` given exactly that run's sample passes, in
the same process; ``--repeats`` times in turn, the median run of each reported. Phases: the
saliency estimate, building the metric (forward pass + VJP closure), metric products inside CG,
the anchor's forward passes, the step's fault probe, the settle's SGD, evaluating recorded
networks, BatchNorm re-estimation, checkpoint writes, and the rest (data loading, Python, the
solver's vector algebra). On CUDA each phase ends with a ``torch.cuda.synchronize()``, so its
seconds are its own kernels' and not the next phase's. Writes docs/profile_sparsify.{json,md}
(``_vgg`` for the VGG case, ``_cuda`` on a GPU); prints a one-line summary; exits 3 when the
first variant's (the defaults') median run takes more wall-clock than its prune + fine-tune peer at equal passes
(issue 21's goal; the other variants are there to compare with).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

from _common import ROOT, docs_dir, machine  # noqa: E402 (bench/ is on sys.path when run as a script)

sys.path.insert(0, str(ROOT))

import geopath.core.evaluate as evaluate_mod  # noqa: E402
import geopath.core.metric as metric_mod  # noqa: E402
import geopath.core.path as path_mod  # noqa: E402
import geopath.core.record as record_mod  # noqa: E402
import geopath.core.saliency as saliency_mod  # noqa: E402
import geopath.core.train as train_mod  # noqa: E402
import geopath.io.rundir as rundir_mod  # noqa: E402
import geopath.jobs.sparsify as sparsify_mod  # noqa: E402
import geopath.peers.pruning as pruning_mod  # noqa: E402
from geopath.config import SparsifyConfig  # noqa: E402

CKPT = ROOT / "sample_checkpoints" / "mlp_mnist.safetensors"
VGG_CKPT = ROOT / "sample_checkpoints" / "vgg11w025_cifar10.safetensors"
TIMES: dict[str, float] = defaultdict(float)
_STACK: list[list[float]] = []  # per active phase: the time spent in phases nested in it
SYNC = [lambda: None]  # what ends a phase: torch.cuda.synchronize on CUDA (kernels run asynchronously)


def timed(phase: str, fn):
    """``fn`` with its own wall time (minus that of timed phases nested in it) added to ``TIMES[phase]``."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _STACK.append([0.0])
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SYNC[0]()
            elapsed = time.perf_counter() - t0
            nested = _STACK.pop()[0]
            TIMES[phase] += elapsed - nested
            if _STACK:
                _STACK[-1][0] += elapsed
    return wrapper


def instrument() -> None:
    """Put a timer around each phase where the engine and the job call it."""
    metric_mod.MetricOperator.__init__ = timed("metric build (forward + VJP closure)",
                                               metric_mod.MetricOperator.__init__)
    metric_mod.MetricOperator._matvec = timed("metric products (CG)", metric_mod.MetricOperator._matvec)
    metric_mod.MetricOperator.rmatvec_outputs = timed("anchor residual VJP", metric_mod.MetricOperator.rmatvec_outputs)
    path_mod._step_batches = timed("anchor forward passes + batch draw", path_mod._step_batches)
    path_mod.step_fault = timed("fault probe", path_mod.step_fault)
    saliency_mod.metric_diagonal = timed("saliency estimate", saliency_mod.metric_diagonal)
    train_mod.train = timed("settle / fine-tune SGD", train_mod.train)
    pruning_mod.train = train_mod.train
    record_mod.recompute_batchnorm = timed("BatchNorm re-estimation", record_mod.recompute_batchnorm)
    rundir_mod.RunWriter.save_network = timed("checkpoint writes", rundir_mod.RunWriter.save_network)
    evaluate_mod.evaluate = timed("evaluating recorded networks", evaluate_mod.evaluate)
    sparsify_mod.evaluate = evaluate_mod.evaluate


def run(out: Path, checkpoint: Path = CKPT, data: str = "mnist", **options) -> tuple[dict, dict[str, float], float]:
    shutil.rmtree(out, ignore_errors=True)
    TIMES.clear()
    cfg = SparsifyConfig(checkpoint=str(checkpoint), out=str(out), data=data, **options).validate()
    t0 = time.perf_counter()
    summary = sparsify_mod.run_sparsify(cfg)
    total = time.perf_counter() - t0
    phases = dict(TIMES)
    phases["rest (data loading, Python, solver algebra, setup)"] = total - sum(phases.values())
    return summary, phases, total


def median_run(runs: list[tuple[dict, dict[str, float], float]]) -> tuple[dict, dict[str, float], float]:
    """The run with the median total (the lower middle one of an even number)."""
    return sorted(runs, key=lambda r: r[2])[(len(runs) - 1) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--docs", default=str(ROOT / "docs"), type=docs_dir)
    ap.add_argument("--work", default=str(ROOT / "bench" / "_work" / "profile"))
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--case", choices=["mlp", "vgg"], default="mlp")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each geodesic variant and its peer, "
                    "interleaved; the median run of each is reported")
    ap.add_argument("--quick", action="store_true", help="5,000 inputs and few steps (a smoke test, not a result)")
    args = ap.parse_args()
    instrument()
    if args.device.startswith("cuda"):
        import torch

        SYNC[0] = torch.cuda.synchronize
    if args.case == "vgg":
        from vgg_filters import GEODESIC, LAYER

        common = {"data_root": args.data_root, "device": args.device, "checkpoint": VGG_CKPT, "data": "cifar10",
                  "structured": f"{LAYER}:12", "train_eval_size": 0}
        variants = {"geodesic (bench/vgg_filters.py options)": dict(GEODESIC),
                    "geodesic (the same, --jvp forward)": {**GEODESIC, "jvp": "forward"}}
        title = "the shipped width-0.25 VGG11, 12 of its 16 layer-1 filters removed, the 20k CIFAR-10 training images"
    else:
        common = {"data_root": args.data_root, "device": args.device, "sparsity": args.sparsity}
        variants = {"geodesic (defaults)": {},
                    "geodesic (--jvp reverse)": {"jvp": "reverse"},
                    "geodesic (--criterion magnitude --settle geodesic)": {"criterion": "magnitude",
                                                                           "settle": "geodesic"}}
        title = f"the shipped MNIST MLP at {args.sparsity:.0%} sparsity, full MNIST"
    quick = dict(metric_size=5000, eval_size=1000, steps=10, settle_steps=20, settle_epochs=0.5) if args.quick else {}
    run(Path(args.work) / "warm-up", **{**common, "metric_size": 512, "eval_size": 256, "steps": 2,
                                        "settle_epochs": 0.1, "settle_steps": 2})  # first-call costs (lazy imports) out of the timings
    rows = []
    repeats = 1 if args.quick else args.repeats
    for name, opts in variants.items():
        work = Path(args.work)
        geo, peer = [], []
        for _ in range(repeats):  # interleaved: a slow spell of the machine hits both alike
            geo.append(run(work / "geodesic", **{**common, **opts, **quick}))
            peer.append(run(work / "peer", **{**common, **quick}, method="prune-finetune",
                            finetune_epochs=geo[-1][0]["epochs"]))
        summary, phases, total = median_run(geo)
        _, peer_phases, peer_total = median_run(peer)
        rows.append({"variant": name, "seconds": total, "phases": phases, "epochs": summary["epochs"],
                     "test_accuracy": summary["test_accuracy"], "peer_seconds": peer_total,
                     "peer_phases": peer_phases, "seconds_runs": [g[2] for g in geo],
                     "peer_seconds_runs": [q[2] for q in peer]})
        print(json.dumps({"variant": name, "seconds": round(total, 1), "peer_seconds": round(peer_total, 1),
                          "epochs": round(summary["epochs"], 2)}), flush=True)
    host = machine(None if args.device == "cpu" else args.device)
    ok = rows[0]["seconds"] <= rows[0]["peer_seconds"]  # the bar: the defaults (the others are for comparison)
    if not args.quick:
        docs = Path(args.docs)
        stem = ("profile_sparsify" + ("_vgg" if args.case == "vgg" else "")
                + ("" if args.device == "cpu" else "_" + args.device.split(":")[0]))
        (docs / f"{stem}.json").write_text(json.dumps({"machine": host, "results": rows}, indent=2) + "\n")
        lines = ["# Where a sparsify run's seconds go", "",
                 f"Produced by `python bench/profile_sparsify.py{' --case vgg' if args.case == 'vgg' else ''}"
                 f"{'' if args.device == 'cpu' else ' --device ' + args.device}` on "
                 f"{host}: {title}, each geodesic run followed by prune + fine-tune "
                 f"given exactly its sample passes, in the same process, {repeats} time(s) in turn; the run with "
                 "the median total of each is shown. Seconds per phase, each "
                 "without the phases nested in it (recording inside the fine-tuning counts as recording).", ""]
        for r in rows:
            lines += [f"## {r['variant']}", "",
                      f"{r['epochs']:.2f} epochs of passes, test accuracy {r['test_accuracy']:.2%}: "
                      f"**{r['seconds']:.1f} s**, prune + fine-tune at the same passes **{r['peer_seconds']:.1f} s** "
                      f"({r['seconds'] / r['peer_seconds']:.2f}×; every run: geodesic "
                      + ", ".join(f"{t:.1f}" for t in r["seconds_runs"]) + " s, prune + fine-tune "
                      + ", ".join(f"{t:.1f}" for t in r["peer_seconds_runs"]) + " s).", "",
                      "| phase | geodesic s | share | prune + fine-tune s |", "|---|---:|---:|---:|"]
            for phase in sorted(set(r["phases"]) | set(r["peer_phases"]), key=lambda p: -r["phases"].get(p, 0)):
                g, p = r["phases"].get(phase, 0.0), r["peer_phases"].get(phase, 0.0)
                lines.append(f"| {phase} | {g:.1f} | {g / r['seconds']:.0%} | {p:.1f} |")
            lines.append("")
        (docs / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("profile_sparsify: geodesic / prune+fine-tune wall-clock at equal passes: "
          + ", ".join(f"{r['seconds'] / r['peer_seconds']:.2f}×" for r in rows) + f" {'PASS' if ok else 'MISS'}")
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
