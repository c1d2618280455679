"""Cost of one metric-vector product against one forward+backward pass, and its memory.

    python bench/metric_speed.py [--batch 128] [--repeats 21] [--device cpu|cuda] [--quick]

For an MLP (MNIST), LeNet-5 (MNIST) and VGG11 (CIFAR-10, full width and width 0.25), on the
same batch in the same run:

- ``fwd+bwd``: one training pass (cross-entropy, ``loss.backward()``), the baseline;
- ``linearize``: building the metric operator (one forward pass that keeps the VJP closure);
- ``g·u``: one product with the cached linearisation (JVP + VJP), the one CG repeats;
- ``g·u, micro-batch``: the same product accumulated over micro-batches of 32 without the
  cache (``--micro-batch 32``: one extra forward pass, activations of one micro-batch);
- on the MLP, the explicit-Jacobian route (``torch.func.jacrev`` then ``Jᵀ(Ju)``) for the gap.

Times are medians over ``--repeats`` after two warm-ups. Peak memory: on CPU the growth of the
peak resident set over the process's size with model and batch loaded, in a fresh subprocess per
(model, operation); on CUDA the growth of ``torch.cuda.max_memory_allocated``, in this process.
It is set against the model's parameter memory plus one batch of activations (the outputs of
every leaf module in a forward pass). Writes docs/performance.{json,md}; prints a one-line
summary; exits 3 when the fastest cached product (forward, reverse or layerwise ``J u``) costs more than 1.3× a
forward+backward pass on some model. curvlinops (``pip install curvlinops-for-pytorch``, the ``bench``
extra) is timed beside geopath when installed, and every product is checked against geopath's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.nn import functional as F

from _common import ROOT, docs_dir, machine  # noqa: E402 (bench/ is on sys.path when run as a script)

sys.path.insert(0, str(ROOT))

from geopath.core.params import ParamSpace, model_vector  # noqa: E402
from geopath.io.archs import build_model  # noqa: E402
from geopath.jobs.common import full_float32_on_cuda  # noqa: E402
from geopath.core.metric import MetricOperator  # noqa: E402
from geopath.core.saliency import metric_diagonal  # noqa: E402

MODELS = {
    "mlp": ("mlp", {}, (1, 28, 28)),
    "lenet5": ("lenet5", {}, (1, 28, 28)),
    "vgg11_w025": ("vgg11", {"width": 0.25}, (3, 32, 32)),
    "vgg11": ("vgg11", {}, (3, 32, 32)),
}
OPS = ("fwd+bwd", "linearize", "g·u", "g·u, reverse J u", "linearize, layerwise", "g·u, layerwise", "curvlinops GGN",
       "g·u, micro-batch", "saliency diagonal", "explicit J")
CACHED = ("g·u", "g·u, reverse J u", "g·u, layerwise")  # the cached products, one per --jvp mode
MICRO = 32
BATCH = 128
AGREE = 1e-4  # relative difference allowed between products (float32)
TARGET_RATIO = 1.3  # issue 21: the cached product (the faster J u mode) within 1.3 forward+backward passes


def setup(name: str, batch: int, device: str):
    arch, kw, shape = MODELS[name]
    torch.manual_seed(0)
    model = build_model(arch, kw).to(device).eval()
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return model, x, y


def run_op(op: str, model: nn.Module, x, y):
    """A callable doing ``op`` once (after its own setup)."""
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    u = torch.randn(space.n, device=w.device)
    if op == "fwd+bwd":
        model.train()

        def f():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
        return f
    if op == "linearize":
        return lambda: MetricOperator(model, space, w, x)
    if op == "g·u":
        G = MetricOperator(model, space, w, x)
        return lambda: G.matvec(u)
    if op == "g·u, reverse J u":
        G = MetricOperator(model, space, w, x, jvp_mode="reverse")
        return lambda: G.matvec(u)
    if op == "linearize, layerwise":
        return lambda: _layerwise(model, space, w, x)
    if op == "g·u, layerwise":
        G = _layerwise(model, space, w, x)
        return lambda: G.matvec(u)
    if op == "curvlinops GGN":
        G, us = curvlinops_ggn(model, x, u)
        return lambda: G @ us
    if op == "g·u, micro-batch":
        G = MetricOperator(model, space, w, list(torch.split(x, MICRO)), cache=False)
        return lambda: G.matvec(u)
    if op == "saliency diagonal":  # counted as one forward+backward pass per sample (docs/method.md)
        return lambda: metric_diagonal(model, space, w, x)
    if op == "explicit J":
        params = space.unflatten(w)

        def f():
            J = jacrev(lambda p: functional_call(model, p, (x,)))(params)
            J = torch.cat([J[k].reshape(x.shape[0] * 10, -1) for k in params], 1)
            return J.T @ (J @ u) / x.shape[0]
        return f
    raise ValueError(op)


def _layerwise(model, space, w, x) -> MetricOperator:
    G = MetricOperator(model, space, w, x, jvp_mode="layerwise")
    if G.jvp_mode.value != "layerwise":  # (a bench of the layerwise products must not time another mode)
        raise SystemExit(f"metric_speed: {type(model).__name__} has no layerwise plan")
    return G


def curvlinops_ggn(model: nn.Module, x, u):
    """curvlinops' ``GGNLinearOperator`` for the same ``JᵀJ`` (MSE on the logits, summed: its GGN is ``2 Σ JᵀJ``,
    ``2N`` times geopath's mean) and ``u`` split into the parameters' shapes."""
    from curvlinops import GGNLinearOperator

    model.eval()  # BatchNorm on its running statistics (a forward in training mode would update them)
    params = [p for p in model.parameters() if p.requires_grad]
    targets = torch.zeros(x.shape[0], 10, device=x.device)
    G = GGNLinearOperator(model, nn.MSELoss(reduction="sum"), params, [(x, targets)], check_deterministic=False)
    us = [t.view(p.shape) for t, p in zip(torch.split(u, [p.numel() for p in params]), params)]
    return G, us


def agreement(model: nn.Module, x) -> dict[str, float]:
    """Largest relative difference of each product to geopath's forward-mode one, on one random ``u``."""
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    u = torch.randn(space.n, device=w.device, generator=torch.Generator(device=w.device).manual_seed(1))
    ours = MetricOperator(model, space, w, x).matvec(u)
    scale = float(ours.abs().max())
    out = {f"g·u, {mode} J u": float((MetricOperator(model, space, w, x, jvp_mode=mode).matvec(u) - ours)
                                     .abs().max()) / scale for mode in ("reverse", "layerwise")}
    if not has_curvlinops():
        return out
    G, us = curvlinops_ggn(model, x, u)
    theirs = torch.cat([t.reshape(-1) for t in G @ us]) / (2 * x.shape[0])
    same = MetricOperator(model, space, w, x, bn_stats="running").matvec(u)  # curvlinops' BatchNorm: running stats
    out["curvlinops GGN"] = float((theirs - same).abs().max()) / float(same.abs().max())
    return out


def has_curvlinops() -> bool:
    try:
        import curvlinops  # noqa: F401
    except ImportError:
        return False
    return True


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_op(op, model, x, y, repeats: int, device: str) -> float:
    f = run_op(op, model, x, y)
    for _ in range(2):
        f()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def activation_bytes(model: nn.Module, x) -> int:
    """Bytes of every leaf module's output in one forward pass (one batch of activations)."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        total += out.numel() * out.element_size()

    hs = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return total


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak_rss() -> int:
    """Reset the peak resident set to the current one (Linux); returns the current one.

    (``getrusage``'s ``ru_maxrss`` survives ``exec`` and would report the parent's peak.)
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss() -> int:
    try:
        return _status("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_peak(name: str, op: str, batch: int, device: str) -> int:
    """Peak memory growth of doing ``op`` three times (on CPU: run it in a fresh process, :func:`peak_memory`)."""
    model, x, y = setup(name, batch, device)
    run_op(op, model, x[:2], y[:2])()  # load torch's lazily imported code first: it is not the operation's memory
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _reset_peak_rss()
    f = run_op(op, model, x, y)
    for _ in range(3):
        f()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return _peak_rss() - base


def peak_child(name: str, op: str, batch: int, device: str) -> None:
    """(In a subprocess) print :func:`measure_peak`."""
    print(json.dumps({"peak": measure_peak(name, op, batch, device)}))


def peak_memory(name: str, op: str, batch: int, device: str) -> int:
    """On CUDA measured in this process (``max_memory_allocated`` counts live tensors only, so what earlier
    operations left in the allocator's cache does not count); on CPU in a fresh subprocess, whose resident set
    holds nothing else."""
    if device.startswith("cuda"):
        gc.collect()
        return measure_peak(name, op, batch, device)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, __file__, "--_peak", name, op, "--batch", str(batch), "--device", device],
                         capture_output=True, text=True, env=env, check=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["peak"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--docs", default=str(ROOT / "docs"), type=docs_dir)
    ap.add_argument("--quick", action="store_true", help="mlp only, 2 repeats (a smoke test, not a result)")
    ap.add_argument("--_peak", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device.startswith("cuda"):
        full_float32_on_cuda()  # as every geopath job does on CUDA
    if args._peak:
        peak_child(*args._peak, args.batch, args.device)
        return 0
    names = ["mlp"] if args.quick else args.models.split(",")
    curv = has_curvlinops()
    repeats = 2 if args.quick else args.repeats
    results = []
    for name in names:
        model, x, y = setup(name, args.batch, args.device)
        n = ParamSpace.of(model).n
        ops = [op for op in OPS if (op != "explicit J" or name == "mlp") and (op != "curvlinops GGN" or curv)]
        row = {"model": name, "parameters": n, "batch": args.batch, "seconds": {}, "peak_bytes": {},
               "param_bytes": n * 4, "activation_bytes": activation_bytes(model, x)}
        for op in ops:
            row["seconds"][op] = time_op(op, model, x, y, repeats, args.device)
            row["peak_bytes"][op] = peak_memory(name, op, args.batch, args.device)
        base = row["seconds"]["fwd+bwd"]
        row["ratio"] = {op: s / base for op, s in row["seconds"].items()}
        row["agreement"] = agreement(model, x)
        bad = {k: v for k, v in row["agreement"].items() if not v <= AGREE}
        if bad:
            raise SystemExit(f"metric_speed: {name}: products disagree with geopath's: {bad}")
        row["best cached"] = min(row["ratio"][op] for op in CACHED)
        results.append(row)
        print(json.dumps({"model": name, **{op: round(r, 2) for op, r in row["ratio"].items()}}), flush=True)
    host = machine(args.device)
    worst = max(r["best cached"] for r in results)
    ok = worst <= TARGET_RATIO
    if not args.quick:
        docs = Path(args.docs)
        tag = ("" if args.device == "cpu" else "_" + args.device.split(":")[0]) + (
            "" if args.batch == BATCH else f"_b{args.batch}")
        (docs / f"performance{tag}.json").write_text(json.dumps({"machine": host, "results": results}, indent=2)
                                                     + "\n")
        write_md(docs / f"performance{tag}.md", host, results, args)
    print(f"metric_speed: the fastest cached g·u costs at most {worst:.2f}× a forward+backward pass (target ≤ "
          f"{TARGET_RATIO:g}×) {'PASS' if ok else 'MISS'}")
    return 0 if ok else 3


def _fastest(row: dict) -> str:
    op = min(CACHED, key=lambda o: row["ratio"][o])
    return {"g·u": "forward", "g·u, reverse J u": "reverse", "g·u, layerwise": "layerwise"}[op] + \
        f" ({row['ratio'][op]:.2f}×)"


def _mb(b: int) -> str:
    return f"{b / 2**20:,.1f}"


def write_md(path: Path, machine: str, results: list[dict], args) -> None:
    lines = ["# Performance of the metric products", "",
             f"Produced by `python bench/metric_speed.py --device {args.device}"
             f"{'' if args.batch == BATCH else f' --batch {args.batch}'}` (batch {args.batch}, median of "
             f"{args.repeats} after two warm-ups). Machine: {machine}. Inputs are random tensors of the data "
             "set's shape (the cost does not depend on the values).", "",
             "Time of each operation as a multiple of one forward+backward pass on the same batch, measured in the "
             "same run (seconds in brackets). *linearize* is done once per step; *g·u* is what conjugate gradient "
             f"repeats (`--cg-iters` times per step), with `J u` by forward-mode AD (`--jvp forward`); *g·u, "
             "reverse J u* computes `J u` as the transpose of the cached VJP (`--jvp reverse`; its extra backward "
             "graph is built once per step, inside the product timed here only once in the warm-up); *linearize, "
             "layerwise* and *g·u, layerwise* are the same with `--jvp layerwise` (each layer's own rule on the "
             "torch.fx graph, docs/method.md); *curvlinops "
             "GGN* is curvlinops' `GGNLinearOperator` for the same `JᵀJ` (MSE on the logits); *g·u, micro-batch* "
             f"accumulates over micro-batches of {MICRO} without the cached linearisation (`--micro-batch`); *saliency "
             "diagonal* is the metric's diagonal estimated on the batch (`--criterion saliency`, counted as one "
             "forward+backward pass per sample: one backward pass and a matrix product per layer on an MLP, "
             "per-sample gradients by `torch.func.vmap` otherwise).", "",
             "| model | parameters | " + " | ".join(OPS) + " |", "|---|---:|" + "---:|" * len(OPS)]
    for r in results:
        cells = [f"{r['ratio'][op]:.2f}× ({r['seconds'][op]:.3g} s)" if op in r["ratio"] else "—" for op in OPS]
        lines.append(f"| {r['model']} | {r['parameters']:,} | " + " | ".join(cells) + " |")
    lines += ["", "Largest relative difference of each product to geopath's forward-mode product, same `u` "
              f"(the run stops above {AGREE:g}):", "",
              "| model | " + " | ".join(results[0]["agreement"]) + " |",
              "|---|" + "---:|" * len(results[0]["agreement"])]
    for r in results:
        lines.append(f"| {r['model']} | " + " | ".join(f"{v:.1e}" for v in r["agreement"].values()) + " |")
    lines += ["", "Peak memory growth while doing each operation three times, MiB, against the parameters' memory "
              "plus one batch of activations (*P + A*):", "",
              "| model | P + A | " + " | ".join(OPS) + " |", "|---|---:|" + "---:|" * len(OPS)]
    for r in results:
        cells = [_mb(r["peak_bytes"][op]) if op in r["peak_bytes"] else "—" for op in OPS]
        lines.append(f"| {r['model']} | {_mb(r['param_bytes'] + r['activation_bytes'])} | " + " | ".join(cells)
                     + " |")
    lines += ["", "CPU peaks are growths of the resident set (the allocator keeps freed memory, so they are upper "
              "bounds and ~1 MiB-granular); the explicit Jacobian alone is batch × classes × parameters × 4 bytes.",
              "A cached product holds the whole batch's linearisation (the VJP's saved activations) and the JVP's "
              "own activations on top; the micro-batch product holds one micro-batch's at a time (a quarter of the batch here), "
              "so its peak no longer grows with the batch size (`--micro-batch`, docs/scaling.md).", "",
              "`--jvp auto` (the default) takes the layerwise product on the CPU and, on a GPU (where the layerwise "
              "product has not been measured yet), the transposed VJP for networks without BatchNorm and forward mode "
              "otherwise (chosen from this bench's runs: [performance.md](performance.md), "
              "[performance_cuda.md](performance_cuda.md)). In this run the fastest cached product was: "
              + "; ".join(f"{r['model']} {_fastest(r)}" for r in results)
              + (f"; it reaches issue 21's {TARGET_RATIO:g}× goal on every network"
                 if all(r["best cached"] <= TARGET_RATIO for r in results) else
                 f"; it misses issue 21's {TARGET_RATIO:g}× goal on at least one network")
              + f" (worst {max(r['best cached'] for r in results):.2f}×). "
              "`torch.func.linearize` (a JVP that "
              "reuses the primal) was measured too, on the CPU: its products cost 0.97× (MLP), 1.00× (LeNet-5), 1.31× (VGG11 w0.25) a forward+backward pass, but "
              "tracing it costs 33×, 12× and 8× one, once per step and micro-batch, more than it saves at "
              "`--cg-iters 5`.", "",
              "Where the seconds of a whole `sparsify` run go, next to prune + fine-tune at the same passes: "
              "[profile_sparsify.md](profile_sparsify.md) (`bench/profile_sparsify.py`); for the VGG11 filter removal, "
              "[profile_sparsify_vgg.md](profile_sparsify_vgg.md) (`--case vgg`); on an H200, "
              "[profile_sparsify_cuda.md](profile_sparsify_cuda.md) (`--device cuda`).", ""]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
