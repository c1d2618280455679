"""Does the metric improve gradual magnitude pruning? (issue 19: what was tried, with figures)

    python bench/gradual_variants.py [--seeds 0 1 2] [--epochs 5] [--cases NAME ...]

Gradual magnitude pruning (Zhu & Gupta; ``--method gradual``) is the peer that wins most of
the sparsify suite (docs/bench_suite_quick.md). This script asks whether any of the geodesic's
ingredients makes it better, at the same sample passes (every extra pass is taken off the
training budget). All variants share the cubic schedule over the first 3/4 of the steps, 40
mask updates, masked SGD (lr 0.05, momentum 0.9, cosine decay, batch 128):

=================  ================================================================================
``magnitude``      the ``gradual`` peer's recipe: masks re-chosen by ``|w|``
``saliency``       masks re-chosen by ``w²·[g]_qq``, the metric's diagonal estimated once at the start
                   (1,024 inputs, docs/method.md)
``saliency-4``     the same, the diagonal re-estimated 4 times along the schedule
``compensate``     magnitude masks; at every update the newly masked weights are removed by a metric
                   step (``min θᵀ(g + λ)θ`` with the masked coordinates set to zero: OBS's compensation,
                   CG on a batch of 128, 5 products, λ = 1e-3) instead of a hard zero
``anchor``         magnitude masks; the loss adds the functional distance to the starting network,
                   ``T²·KL(p_T(start) ‖ p_T(w))`` at T = 4, weight 1/2 (the metric's anchor, as SGD)
``anchor-ramp``    the same, only while the sparsity grows (then labels alone)
=================  ================================================================================

Writes docs/gradual_variants.{json,md}: test accuracy per case (mean over seeds, ± max − min)
and each variant's mean difference to ``magnitude``. Exits 3 when no variant beats
``magnitude`` on the mean of every case by more than the seed spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

from _common import ROOT, add_common_args, machine  # noqa: E402 (bench/ is on sys.path when run as a script)

sys.path.insert(0, str(ROOT))

import suite  # noqa: E402

from geopath.config import SparsifyConfig  # noqa: E402
from geopath.core.cg import cg  # noqa: E402
from geopath.core.metric import MetricOperator  # noqa: E402
from geopath.core.operators import Identity, RestrictedOperator  # noqa: E402
from geopath.core.params import ParamSpace, load_vector, model_vector  # noqa: E402
from geopath.core.saliency import metric_diagonal  # noqa: E402
from geopath.core.step import PASS_FORWARD, PASS_MATVEC  # noqa: E402
from geopath.core.targets import MagnitudeTarget  # noqa: E402
from geopath.core.train import train  # noqa: E402
from geopath.jobs.sparsify import JOB, sparse_parameters  # noqa: E402
from geopath.peers.pruning import cubic_sparsity  # noqa: E402

VARIANTS = ["magnitude", "saliency", "saliency-4", "compensate", "anchor", "anchor-ramp"]
CASES = ["mnist_mlp_90", "mnist_mlp_98", "fmnist_mlp_90", "fmnist_adam_90", "mnist_sgd_raw_90", "mnist_wide_95"]
BATCH, LR, UNTIL, UPDATES = 128, 0.05, 0.75, 40
DIAG_SAMPLES = 1024
COMP_BATCH, COMP_PRODUCTS, COMP_DAMPING = 128, 5, 1e-3
T, ANCHOR_WEIGHT = 4.0, 0.5


def run(ckpt: Path, sparsity: float, variant: str, epochs: float, seed: int, data_root: str) -> float:
    cfg = SparsifyConfig(checkpoint=str(ckpt), out=str(ROOT / "bench" / "_work" / "unused"), data_root=data_root,
                         sparsity=sparsity, seed=seed, train_eval_size=0, criterion="magnitude").validate()
    setup = JOB.prepare(cfg, "cpu")
    model, data, teacher = setup.model, setup.own["metric"], setup.own["reference"]
    space = ParamSpace.of(model)
    names = sparse_parameters(setup.cfg, model)
    gen = torch.Generator().manual_seed(seed + 17)
    budget = int(epochs * len(data))
    refreshes = {"saliency": 1, "saliency-4": 4}.get(variant, 0)
    budget -= refreshes * DIAG_SAMPLES
    if variant == "compensate":
        budget -= int(UPDATES * COMP_BATCH * (PASS_FORWARD + (COMP_PRODUCTS + 1) * PASS_MATVEC))
    anchored = {"anchor": 1.0, "anchor-ramp": UNTIL}.get(variant, 0.0)  # the fraction of steps paying the teacher
    budget = int(budget / (1.0 + anchored * PASS_FORWARD))
    steps = budget // BATCH
    ramp = max(1, round(UNTIL * steps))
    every = max(1, -(-ramp // UPDATES))
    scores = None

    def diagonal():
        idx = torch.randperm(len(data), generator=gen)[:DIAG_SAMPLES]
        return metric_diagonal(model, space, model_vector(model, space), data.x[idx], setup.cfg.metric, seed=seed)

    if refreshes:
        scores = diagonal()
    state = {"mask": None, "step": 0}

    def compensate(mask):
        """Masked coordinates to zero, the free ones moved by ``(g_FF + λ) δ = −(g e)_F``."""
        w = model_vector(model, space)
        e = torch.where(mask, -w, torch.zeros_like(w))
        idx = torch.randint(len(data), (COMP_BATCH,), generator=gen)
        G = MetricOperator(model, space, w, [data.x[idx]], setup.cfg.metric)
        free = (~mask).to(w.dtype)
        A = RestrictedOperator(G + COMP_DAMPING * Identity(G.n, G.dtype, G.device), ~mask)
        delta = cg(A, -free * G.matvec(e), max_iters=COMP_PRODUCTS, rtol=1e-4).x
        load_vector(model, space, w + e + free * delta)

    def remask(step):
        nonlocal scores
        if step % every or step > ramp + every - 1:
            return None
        k = (step * refreshes) // ramp  # re-estimates 1 … refreshes − 1 at the k/refreshes points of the ramp
        if refreshes > 1 and step and 0 < k < refreshes and k != ((step - every) * refreshes) // ramp:
            scores = diagonal()
        w = model_vector(model, space)
        mask = MagnitudeTarget(space, w, cubic_sparsity(sparsity, step / ramp), names, setup.cfg.scope,
                               scores=scores).mask
        if state["mask"] is not None:
            mask = mask | state["mask"]
        if variant == "compensate" and step:
            compensate(mask)
        state["mask"] = mask
        return mask

    def loss_fn(logits, x, y):
        state["step"] += 1
        ce = F.cross_entropy(logits, y)
        if not anchored or (variant == "anchor-ramp" and state["step"] > ramp):
            return ce
        with torch.no_grad():
            t = torch.log_softmax(teacher(x) / T, -1)
        kl = F.kl_div(torch.log_softmax(logits / T, -1), t, log_target=True, reduction="batchmean")
        return (1 - ANCHOR_WEIGHT) * ce + ANCHOR_WEIGHT * T ** 2 * kl

    train(model, data, epochs=budget / len(data), batch_size=BATCH, lr=LR, seed=seed, max_passes=budget,
          remask=remask, loss_fn=loss_fn)
    final = MagnitudeTarget(space, model_vector(model, space), sparsity, names, setup.cfg.scope, scores=scores)
    load_vector(model, space, final.project(model_vector(model, space)))
    return setup.evaluate(model)["test_accuracy"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, quick=False)
    ap.add_argument("--cases", nargs="+", choices=CASES, default=CASES)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=float, default=5.0)
    args = ap.parse_args()
    results = {}
    for case in args.cases:
        net, sparsity = suite.CASES[case]
        ckpt = suite.network(net, args.data_root)
        results[case] = {v: [run(ckpt, sparsity, v, args.epochs, s, args.data_root) for s in args.seeds]
                         for v in VARIANTS}
        print(json.dumps({"case": case, **{v: [round(a, 4) for a in r] for v, r in results[case].items()}}),
              flush=True)

    def stat(xs):
        return statistics.mean(xs), (max(xs) - min(xs) if len(xs) > 1 else 0.0)

    lines = ["# Gradual pruning with the metric's ingredients (issue 19)", "",
             f"Produced by `python bench/gradual_variants.py` on {machine()}: {args.epochs:g} epochs of sample "
             f"passes, seeds {args.seeds}; test accuracy, mean ± (max − min). The variants are described in the "
             "script's docstring; `magnitude` is the `gradual` peer's recipe.", "",
             "| case | " + " | ".join(VARIANTS) + " |", "|---|" + "---:|" * len(VARIANTS)]
    deltas = {v: [] for v in VARIANTS}
    wins = {v: True for v in VARIANTS}
    for case, r in results.items():
        base, base_spread = stat(r["magnitude"])
        cells = []
        for v in VARIANTS:
            m, s = stat(r[v])
            deltas[v].append(m - base)
            wins[v] &= m - base > max(s, base_spread)
            cells.append(f"{m:.2%} ±{s * 100:.2f}")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    lines.append("| mean difference to magnitude (points) | "
                 + " | ".join(f"{statistics.mean(d) * 100:+.2f}" for d in deltas.values()) + " |")
    better = [v for v in VARIANTS if v != "magnitude" and wins[v]]
    summary = (f"gradual variants: {', '.join(better)} beat magnitude in every case" if better else
               "gradual variants: none beats magnitude in every case (beyond the seed spread)")
    lines += ["", summary]
    docs = Path(args.docs)
    (docs / "gradual_variants.md").write_text("\n".join(lines) + "\n")
    (docs / "gradual_variants.json").write_text(json.dumps(
        {"machine": machine(), "epochs": args.epochs, "seeds": args.seeds, "results": results,
         "mean_difference": {v: statistics.mean(d) for v, d in deltas.items()}}, indent=2) + "\n")
    print("\n".join(lines))
    return 0 if better else 3


if __name__ == "__main__":
    sys.exit(main())
