"""Where does gradual pruning's lead come from, and can the geodesic take it? (issue 19: what was tried)

    python bench/mask_origin.py [--cases lenet5_95 mnist_sgd_raw_90] [--geodesic-cases ...] [--seeds 0 1 2]

Gradual magnitude pruning (``--method gradual``) is the best peer on LeNet-5 at 95 % and on the
plain-SGD MNIST MLP, where the geodesic and prune + fine-tune trail it. Part one asks, on seed 0 at the
suite's budget-5 passes (4.83 epochs, SGD lr 0.1 everywhere), whether the lead is its training or its mask:

=========================  ============================================================================
``gradual``                the peer's recipe (cubic schedule over 3/4 of the steps, 40 mask updates)
``pft``                    prune + fine-tune: one-shot global magnitude mask at the start, masked SGD
``pft, gradual's mask``    the same fine-tuning from the dense start, on the mask gradual ended with
``pft, gradual's layers``  gradual's per-layer sparsities, magnitude within each layer
``pft, LAMP``              layer-adaptive magnitude scores (Lee et al. 2021), a known one-shot allocation
``pft, compensated mask``  a label-free mask: the sparsity grows on the cubic schedule in 40 updates, each
                           removing its weights by a metric (OBS) compensation of the free ones (512
                           inputs, 10 CG products); fine-tuned from the dense start
``pft, probe's mask``      the mask of a gradual run of 0.5 epochs (the probe), fine-tuned from the dense
                           start for the remaining 4.33 epochs (weight rewinding)
=========================  ============================================================================

(the compensated and probe masks' own passes are not charged in part one: it asks which mask is good,
not what it costs). Part two charges them: the geodesic (the suite's options, ``bench/suite.py``) walks
from the start to the hyperplane of the probe's mask, the probe ranking by the geodesic's own
``--criterion auto`` choice, and its passes taken off the settle; against the geodesic's defaults, on
``--geodesic-cases`` and ``--seeds``.

Writes docs/mask_origin.{json,md}. Exits 3 unless the probe beats the defaults on the mean of part two and
loses on no case (it would then be worth making a default).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

from _common import ROOT, add_common_args, machine  # noqa: E402 (bench/ is on sys.path when run as a script)

sys.path.insert(0, str(ROOT))

import suite  # noqa: E402

import geopath.jobs.sparsify as sparsify  # noqa: E402
from geopath.config import SparsifyConfig  # noqa: E402
from geopath.core.cg import cg  # noqa: E402
from geopath.core.metric import MetricOperator  # noqa: E402
from geopath.core.operators import Identity, RestrictedOperator  # noqa: E402
from geopath.core.params import ParamSpace, model_vector  # noqa: E402
from geopath.core.targets import HyperplaneTarget, MagnitudeTarget  # noqa: E402
from geopath.peers.pruning import cubic_sparsity, gradual_prune, prune_finetune  # noqa: E402

EPOCHS, LR = 4.83, 0.1  # the suite's budget-5 passes; the settle's and the peers' winning lr
PROBE_EPOCHS = 0.5
COMP_UPDATES, COMP_BATCH, COMP_PRODUCTS, COMP_DAMPING = 40, 512, 10, 1e-3
WORK = ROOT / "bench" / "_work" / "mask_origin"
VARIANTS = ["gradual", "pft", "pft, gradual's mask", "pft, gradual's layers", "pft, LAMP", "pft, compensated mask",
            "pft, probe's mask"]


def _fresh(ckpt: Path, sparsity: float, data_root: str, seed: int = 0):
    cfg = SparsifyConfig(checkpoint=str(ckpt), out=str(WORK / "unused"), data_root=data_root, sparsity=sparsity,
                         seed=seed, train_eval_size=0, criterion="magnitude").validate()
    setup = sparsify.JOB.prepare(cfg, "cpu")
    model = setup.model
    return setup, model, setup.own["metric"], ParamSpace.of(model), sparsify.sparse_parameters(setup.cfg, model)


def lamp_scores(w: torch.Tensor, space: ParamSpace, names: list[str]) -> torch.Tensor:
    """Scores ``s`` with ``w²·s`` = LAMP's score: ``w_q²`` over the sum of the squares not smaller, per layer."""
    out, slices = torch.zeros_like(w), space.slices()
    for n in names:
        sq = w[slices[n]].pow(2)
        order = torch.argsort(sq)
        tail = torch.flip(torch.cumsum(torch.flip(sq[order], [0]), 0), [0])
        lamp = torch.empty_like(sq)
        lamp[order] = sq[order] / tail.clamp_min(1e-30)
        out[slices[n]] = torch.where(sq > 0, lamp / sq.clamp_min(1e-30), torch.zeros_like(sq))
    return out


def compensated_mask(model, space, names, data, sparsity, scope, seed=0) -> torch.Tensor:
    """The label-free growth: nested global magnitude masks on the cubic schedule, each removal compensated."""
    gen = torch.Generator().manual_seed(seed + 1)
    w = model_vector(model, space)
    mask = torch.zeros_like(w, dtype=torch.bool)
    for k in range(1, COMP_UPDATES + 1):
        new = MagnitudeTarget(space, w, cubic_sparsity(sparsity, k / COMP_UPDATES), names, scope).mask | mask
        G = MetricOperator(model, space, w, [data.x[torch.randint(len(data), (COMP_BATCH,), generator=gen)]],
                           jvp_mode="auto")
        e = torch.where(new, -w, torch.zeros_like(w))
        free = (~new).to(w.dtype)
        A = RestrictedOperator(G + COMP_DAMPING * Identity(G.n, G.dtype, G.device), ~new)
        w = w + e + free * cg(A, -free * G.matvec(e), max_iters=COMP_PRODUCTS, rtol=1e-4).x
        mask = new
    return mask


def part_one(case: str, data_root: str) -> dict:
    net, sparsity = suite.CASES[case]
    ckpt = suite.network(net, data_root)
    acc, masks = {}, {}

    def finetune(mask_or_target, label, epochs=EPOCHS):
        setup, model, data, space, names = _fresh(ckpt, sparsity, data_root)
        target = mask_or_target(model, space, names, data) if callable(mask_or_target) else mask_or_target
        prune_finetune(model, target, data, int(epochs * len(data)), lr=LR, seed=0)
        acc[label] = setup.evaluate(model)["test_accuracy"]
        masks[label] = target.mask

    setup, model, data, space, names = _fresh(ckpt, sparsity, data_root)
    w0 = model_vector(model, space)
    one_shot = MagnitudeTarget(space, w0, sparsity, names, setup.cfg.scope)
    grad = gradual_prune(model, copy.deepcopy(one_shot), data, int(EPOCHS * len(data)), lr=LR, seed=0)
    acc["gradual"], masks["gradual"] = setup.evaluate(model)["test_accuracy"], grad.mask
    setup, model, data, space, names = _fresh(ckpt, sparsity, data_root)
    probe = gradual_prune(model, copy.deepcopy(one_shot), data, int(PROBE_EPOCHS * len(data)), lr=LR, seed=0).mask

    slices = space.slices()
    layers = torch.zeros_like(w0, dtype=torch.bool)
    for n in names:  # gradual's share of each layer, the smallest |w0| of the layer
        part = w0[slices[n]].abs()
        k = int(grad.mask[slices[n]].sum())
        chosen = torch.zeros_like(part, dtype=torch.bool)
        chosen[torch.argsort(part)[:k]] = True
        layers[slices[n]] = chosen
    finetune(one_shot, "pft")
    finetune(HyperplaneTarget(grad.mask), "pft, gradual's mask")
    finetune(HyperplaneTarget(layers), "pft, gradual's layers")
    finetune(MagnitudeTarget(space, w0, sparsity, names, setup.cfg.scope, scores=lamp_scores(w0, space, names)),
             "pft, LAMP")
    finetune(lambda m, s, n, d: HyperplaneTarget(compensated_mask(m, s, n, d, sparsity, setup.cfg.scope)),
             "pft, compensated mask")
    finetune(HyperplaneTarget(probe), "pft, probe's mask", epochs=EPOCHS - PROBE_EPOCHS)  # (rewound: the rest)
    kept = one_shot.mask.sum()
    return {"case": case, "accuracy": {v: acc[v] for v in VARIANTS},
            "overlap_with_one_shot": {v: float((m & one_shot.mask).sum() / kept) for v, m in masks.items()},
            "layer_sparsity": {v: {n: float(masks[v][slices[n]].float().mean()) for n in names}
                               for v in ("pft", "gradual", "pft, LAMP", "pft, compensated mask")}}


def _probe_ranking(original):
    """The geodesic's ranking replaced by the probe's mask: ``--criterion saliency`` with scores 0 on the mask and
    1 elsewhere (so the hyperplane is exactly the probe's mask), the probe ranking by ``auto``'s choice; returns
    the passes of the diagonal, the choice and the probe."""
    def scores(cfg, model, space, w0, data):
        s, spent = original(cfg, model, space, w0, data)
        s, _, checked = sparsify.choose_ranking(cfg, model, space, w0, data, s)
        names = sparsify.sparse_parameters(cfg, model)
        probe = gradual_prune(copy.deepcopy(model), MagnitudeTarget(space, w0, cfg.sparsity, names, cfg.scope, scores=s),
                              data, int(PROBE_EPOCHS * len(data)), lr=LR, seed=cfg.seed)
        return (~probe.mask).to(w0.dtype), spent + checked + int(PROBE_EPOCHS * len(data))

    return scores


def part_two(cases: list[str], seeds: list[int], data_root: str) -> dict:
    out = {}
    original = sparsify.saliency_scores
    for case in cases:
        net, sparsity = suite.CASES[case]
        ckpt = suite.network(net, data_root)
        rows = {"defaults": [], "probe": []}
        for seed in seeds:
            opts = suite.geodesic_options(5.0)
            r = suite.run(ckpt, WORK / case / f"s{seed}" / "defaults", data_root, sparsity=sparsity, seed=seed, **opts)
            rows["defaults"].append(r)
            sparsify.saliency_scores = _probe_ranking(original)
            try:
                opts["settle_epochs"] -= PROBE_EPOCHS  # the probe's passes come off the settle
                r = suite.run(ckpt, WORK / case / f"s{seed}" / "probe", data_root, sparsity=sparsity, seed=seed,
                              criterion="saliency", **opts)
            finally:
                sparsify.saliency_scores = original
            rows["probe"].append(r)
        out[case] = rows
        print(json.dumps({"case": case, **{k: [round(r["accuracy"], 4) for r in v] for k, v in rows.items()}}),
              flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, quick=False)
    ap.add_argument("--cases", nargs="*", choices=sorted(suite.CASES), default=["lenet5_95", "mnist_sgd_raw_90"])
    ap.add_argument("--geodesic-cases", nargs="*", choices=sorted(suite.CASES),
                    default=[c for c in suite.CASES if c not in suite.CIFAR_CASES])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    suite.RERUN = True
    one = []
    for case in args.cases:
        one.append(part_one(case, args.data_root))
        print(json.dumps({"case": case, **{k: round(v, 4) for k, v in one[-1]["accuracy"].items()}}), flush=True)
    two = part_two(args.geodesic_cases, args.seeds, args.data_root)

    def pct(x):
        return f"{x:.2%}"

    lines = ["# Where gradual pruning's lead comes from (issue 19)", "",
             f"Produced by `python bench/mask_origin.py` on {machine()}. What each row is: the script's docstring.", "",
             f"## Part one: which mask (seed 0, {EPOCHS:g} epochs of passes, SGD lr {LR:g})", "",
             "| case | " + " | ".join(VARIANTS) + " |", "|---|" + "---:|" * len(VARIANTS)]
    for r in one:
        lines.append(f"| {r['case']} | " + " | ".join(pct(r["accuracy"][v]) for v in VARIANTS) + " |")
    lines += ["", "Share of one-shot magnitude's pruned weights each mask also prunes: " + "; ".join(
        f"{r['case']}: " + ", ".join(f"{v} {x:.1%}" for v, x in r["overlap_with_one_shot"].items()
                                     if v != "pft") for r in one) + ".", ""]
    lines += ["## Part two: the geodesic walking to the probe's mask", "",
              f"Seeds {args.seeds}, the suite's budget-5 options; the probe ({PROBE_EPOCHS:g} epoch) is taken off "
              "the settle. Test accuracy, mean ± (max − min).", "",
              "| case | defaults | probe's mask | difference (points) |", "|---|---:|---:|---:|"]
    diffs = []
    for case, rows in two.items():
        a = [r["accuracy"] for r in rows["defaults"]]
        b = [r["accuracy"] for r in rows["probe"]]
        diffs.append(statistics.mean(b) - statistics.mean(a))
        lines.append(f"| {case} | {pct(statistics.mean(a))} ±{(max(a) - min(a)) * 100:.2f} | "
                     f"{pct(statistics.mean(b))} ±{(max(b) - min(b)) * 100:.2f} | {diffs[-1] * 100:+.2f} |")
    mean = statistics.mean(diffs) if diffs else 0.0
    summary = f"mask origin: the probe's mask moves the geodesic by {mean * 100:+.2f} points on the mean of {len(diffs)} cases"
    lines += ["", summary]
    docs = Path(args.docs)
    (docs / "mask_origin.md").write_text("\n".join(lines) + "\n")
    (docs / "mask_origin.json").write_text(json.dumps(
        {"machine": machine(), "epochs": EPOCHS, "lr": LR, "probe_epochs": PROBE_EPOCHS, "part_one": one,
         "part_two": {c: {k: [r["accuracy"] for r in v] for k, v in rows.items()} for c, rows in two.items()},
         "mean_difference": mean}, indent=2) + "\n")
    print("\n".join(lines))
    return 0 if mean > 0 and all(d >= 0 for d in diffs) else 3


if __name__ == "__main__":
    sys.exit(main())
