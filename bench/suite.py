"""The sparsify suite: the geodesic against every pruning peer, on networks it was not tuned on.

    python bench/suite.py [--quick] [--cases NAME ...] [--budgets 1 2 5] [--seeds 0 1 2] [--grid OPT:LR ...]
                          [--criterion auto|saliency|magnitude] [--peers-from OLD.json] [--grid-from OLD.json]
                          [--rerun]

Every method runs on the same network, data and budget of forward+backward sample passes
(docs/method.md): the geodesic first (CLI defaults; the only rule that depends on the budget
``B`` epochs is ``--steps 5·B --settle-epochs 0.875·B``, what ``geopath sparsify --budget B`` sets), then every
peer given exactly the passes the geodesic spent. Peers are tuned fairly: each runs over a small grid (SGD lr 0.1, 0.05 and 0.01, Adam lr
0.001) and its best test accuracy is reported (chosen on the test set: generous to the peers).
Networks: the shipped MNIST and Fashion-MNIST MLPs, the MLPs of ``bench/train_mlps.py`` (Adam on
[0, 1] inputs, plain SGD without normalisation, a wide 784-1000-1000-10), a LeNet-5 and a small vision
transformer (geopath's built-in ``vit``: 16 patches of 7×7, 4 pre-norm blocks of width 64) trained here on
MNIST, and on
CIFAR-10 (its 20k training images) the shipped width-0.25 VGG11 at 90 % and with 12 of its 16 layer-1
filters removed (the geodesic with the approach docs/method.md gives BatchNorm networks for structured
targets; obd ranks single weights and sits that case out), and the ResNet-20 of bench/connect_paths.py
at 90 %. Held-out cases add MLPs trained after the defaults were chosen, each with its own
page, eight of them under-trained on purpose (docs/bench_suite_heldout_undertrained.md, _fit.md, _loss.md). A CIFAR-10
case runs one seed unless ``--seeds`` is given (each costs well over 10 CPU minutes
a budget).

The bar (issue 19): at the largest budget the geodesic is ≥ the best peer in every case (a
shortfall within the larger seed spread is a tie) and ahead of the best peer on the suite mean.
A label-free table follows: only N unlabeled inputs, geodesic (``--settle distill``, ``--steps 10``,
settling for 3/4 of 120,000 sample passes after them) against prune + distillation (the geodesic's
passes) and one-shot saliency pruning, on those of the MNIST MLP at 90 %, the Adam Fashion-MNIST MLP at 90 %,
LeNet-5 and the ViT that ``--cases`` names (with ``--peers-from``, a row the earlier run lacks is run in full).

Writes docs/bench_suite.{json,md} (``--quick``: docs/bench_suite_quick.*: one seed, budget 5,
three networks, peers at SGD lr 0.1 only, the geodesic settle's; a smoke run, not a result); prints the
table and a one-line summary; exits 3 when the bar is missed.

``--peers-from OLD.json`` re-runs the geodesic alone (after a change to it) and takes every peer's figures
for the same case, budget and seeds from an earlier run's JSON; the peers then had that run's geodesic
passes, and the page says by how much the passes differ; a case whose network is not the earlier run's
(its dense accuracy differs: bench/train_mlps.py's networks depend on the machine) is refused.
``--grid-from OLD.json --grid OPT:LR ...`` re-runs the peers at this geodesic's passes, each on the grid
point that won in the earlier run (for its case, peer and seed) and on the points given (a grid extended
without re-running the points that lost). ``--criterion`` sets the geodesic's ranking
(``magnitude`` by default since 2026-12-07; ``auto`` was the default before, ``saliency`` before that). A
finished run in bench/_work/suite with the same
options is reused (a suite stopped part-way goes on where it stopped; ``--rerun`` redoes everything);
seconds are each run's own wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from _common import ROOT, add_common_args, machine  # noqa: E402 (bench/ is on sys.path when run as a script)

sys.path.insert(0, str(ROOT))

import train_mlps  # noqa: E402

from geopath.config import SparsifyConfig, budget_rule  # noqa: E402
from geopath.jobs.checkpoints import train_checkpoint  # noqa: E402
from geopath.jobs.sparsify import SHARPNESS_BOUND, TRAINED_LOSS, run_sparsify  # noqa: E402

SHIPPED = ROOT / "sample_checkpoints"
WORK = ROOT / "bench" / "_work" / "suite"
# case: (network, sparsity)
CASES = {
    "mnist_mlp_90": ("mlp_mnist", 0.90),
    "mnist_mlp_95": ("mlp_mnist", 0.95),
    "mnist_mlp_98": ("mlp_mnist", 0.98),
    "fmnist_mlp_90": ("mlp_fashion_mnist", 0.90),
    "fmnist_mlp_95": ("mlp_fashion_mnist", 0.95),
    "fmnist_adam_90": ("fmnist_adam", 0.90),
    "fmnist_adam_95": ("fmnist_adam", 0.95),
    "mnist_sgd_raw_90": ("mnist_sgd_raw", 0.90),
    "mnist_wide_95": ("mnist_wide", 0.95),
    "lenet5_95": ("lenet5", 0.95),
    "vit_90": ("vit", 0.90),
    "vgg11_90": ("vgg11w025_cifar10", 0.90),
    "vgg11_filters": ("vgg11w025_cifar10", 0.0),
    "resnet20_90": ("resnet20", 0.90),
    "mnist_deep_95": ("mnist_deep", 0.95),
    "fmnist_adamw_90": ("fmnist_adamw", 0.90),
    "cifar_mlp_90": ("cifar_mlp", 0.90),
    "cifar_mlp_sgd_90": ("cifar_mlp_sgd", 0.90),
    "fmnist_wide_adam_95": ("fmnist_wide_adam", 0.95),
    "fmnist_short_90": ("fmnist_short", 0.90),
    "mnist_short_90": ("mnist_short", 0.90),
    "cifar_mlp_short_90": ("cifar_mlp_short", 0.90),
    "fmnist_slow_90": ("fmnist_slow", 0.90),
    "cifar_mlp_adam_short_90": ("cifar_mlp_adam_short", 0.90),
    "mnist_adam_short_90": ("mnist_adam_short", 0.90),
    "cifar_mlp_sgd_short_90": ("cifar_mlp_sgd_short", 0.90),
    "fmnist_sgdm_short_90": ("fmnist_sgdm_short", 0.90),
    "fmnist_deep_sgdm_90": ("fmnist_deep_sgdm", 0.90),
    "mnist_adamw_wide_95": ("mnist_adamw_wide", 0.95),
}
# (mnist_deep_95 and fmnist_adamw_90 were added after every default was fixed, and never run before: the
# held-out check, docs/bench_suite_heldout_auto.md; they then chose the default ranking, magnitude, and
# cifar_mlp_90 was added after that: docs/bench_suite_heldout.md; it then chose --settle-optimizer auto's rule, and
# cifar_mlp_sgd_90 and fmnist_wide_adam_95 were added after that: docs/bench_suite_heldout_sharpness.md; then three
# under-trained starts, docs/bench_suite_heldout_undertrained.md; two more as the check of a rule by the start's
# fit, docs/bench_suite_heldout_fit.md; three more as the check of the settle optimizer's loss bound,
# docs/bench_suite_heldout_loss.md; two converged ones after all of that, docs/bench_suite_heldout_late.md)
# the CIFAR-10 cases (the 20k training images; one seed: each costs well over 10 CPU minutes a budget)
CIFAR_CASES = ("vgg11_90", "vgg11_filters", "resnet20_90")
# options of a case beside its sparsity, for every method: 12 of the 16 layer-1 filters of the VGG11 (issue 19's
# structured case); and for the geodesic alone, the approach docs/method.md gives BatchNorm networks for
# structured targets (bench/vgg_filters.py: pull hard, land at 15 % of the distance)
CASE_OPTIONS = {"vgg11_filters": {"structured": "features.0:12"}}
GEODESIC_CASE_OPTIONS = {"vgg11_filters": {"beta": 16.0, "beta_growth": 4.0, "tol": 0.15}}
NO_PEERS = {"vgg11_filters": {"obd"}}  # obd ranks single weights
QUICK_CASES = ["mnist_mlp_90", "fmnist_adam_90", "mnist_sgd_raw_90"]
PEERS = ["prune-finetune", "gradual", "iterative-prune", "distill", "obd"]
GRID = [("sgd", 0.1), ("sgd", 0.05), ("sgd", 0.01), ("adam", 0.001)]
LABEL_FREE_CASES = ["mnist_mlp_90", "fmnist_adam_90", "lenet5_95", "vit_90"]  # (each where --cases names it)
LABEL_FREE_PASSES = 120_000  # two epochs of the 60,000 training images, in passes over the N inputs


def network(name: str, data_root: str) -> Path:
    """The checkpoint of ``name``: shipped, made by bench/train_mlps.py, trained here (LeNet-5), or the
    ResNet-20 of bench/connect_paths.py (its seed-0 endpoint: 12 epochs, cached in bench/_work/connect)."""
    if (SHIPPED / f"{name}.safetensors").exists():
        return SHIPPED / f"{name}.safetensors"
    if name in train_mlps.RECIPES:
        return train_mlps.ensure([name], data_root=data_root)[name]
    if name == "resnet20":
        import connect_paths

        return connect_paths.trained(ROOT / "bench" / "_work" / "connect", data_root, 12.0, False, "resnet20",
                                     seed=0)
    path = WORK / "nets" / f"{name}.safetensors"
    if not path.exists():  # on MNIST by geopath train's recipe (SGD lr 0.05, momentum 0.9, cosine decay)
        path.parent.mkdir(parents=True, exist_ok=True)
        print(json.dumps(train_checkpoint(path, arch=name, data="mnist", data_root=data_root,
                                          epochs=TRAIN_EPOCHS[name])))
    return path


# networks trained here on MNIST, and for how many epochs: LeNet-5 about 2 CPU minutes, the ViT about 4
TRAIN_EPOCHS = {"lenet5": 3.0, "vit": 10.0}

RERUN = False  # --rerun: never reuse a finished run


def run(ckpt: Path, out: Path, data_root: str, **options) -> dict:
    """One sparsify run, or the finished run already in ``out`` with the same options (a suite stopped part-way
    goes on where it stopped). Seconds are the run's own wall time, as its summary records it. Whole units
    (``structured``): ``sparsity`` is not read, so it keeps its default, as the CLI records it (the run's config then
    replays with ``geopath sparsify --config``)."""
    if options.get("structured"):
        options.pop("sparsity", None)
    cfg = SparsifyConfig(checkpoint=str(ckpt), out=str(out), data_root=data_root, save_every=1000,
                         train_eval_size=0, **options).validate()
    s = None if RERUN else finished(out, ckpt, cfg, options)
    if s is None:
        shutil.rmtree(out, ignore_errors=True)
        s = run_sparsify(cfg)
    return {"accuracy": s["test_accuracy"], "passes": s["sample_passes"], "epochs": s["epochs"],
            "seconds": s["wall_time"], "dense": s["dense_test_accuracy"],
            "ranking": s.get("ranking", {}).get("chosen") or s["target"].get("criterion"),
            "optimizer": _optimizer(s.get("settle_optimizer"))}


def _optimizer(rule: dict | None) -> str | None:
    """What --settle-optimizer auto chose, with SGD's rate × the sharpness it compared, or the start's training loss
    where that kept SGD unmeasured (``None`` without a rule)."""
    if not rule:
        return None
    if "sharpness" not in rule:
        return f"{rule['chosen']} (loss {rule['train_loss']:.2f})"
    return f"{rule['chosen']} ({rule['sgd_lr'] * rule['sharpness']:.2f})"


def finished(out: Path, ckpt: Path, cfg: SparsifyConfig, options: dict) -> dict | None:
    """The summary of a complete run in ``out`` (its manifest written) of ``ckpt`` with ``options``, the same seed
    and the ranking ``cfg`` resolves to (a geodesic's also the settle lr and approach length); else ``None``."""
    import yaml

    if not (out / "manifest.json").is_file() or not (out / "summary.json").is_file():
        return None
    saved = yaml.safe_load((out / "config.yaml").read_text())
    method = getattr(cfg.method, "value", cfg.method)
    criterion = getattr(cfg.criterion, "value", cfg.criterion) or ("saliency" if method == "obd" else "magnitude")
    wanted = {**{k: getattr(v, "value", v) for k, v in options.items()}, "seed": cfg.seed, "method": method}
    if Path(saved.get("checkpoint", "")) != ckpt.resolve() or (not cfg.structured
                                                                and saved.get("criterion") != criterion):
        return None
    if any(saved.get(k) != v for k, v in wanted.items()):
        return None
    summary = json.loads((out / "summary.json").read_text())
    if method == "geodesic":  # defaults the options above do not name, as the run resolved them (they change)
        from geopath.config import Settle
        from geopath.jobs.sparsify import default_max_steps, settle_lr_of, settle_prune_of, settle_prune_until_of

        rule = summary.get("settle", {})
        if cfg.settle is Settle.AUTO and cfg.structured and not rule.get("structured"):
            return None  # (made before --settle auto fine-tuned whenever whole units go)
        chosen = Settle(rule["chosen"]) if rule.get("chosen") else None  # (what --settle auto chose)
        if chosen is None and cfg.settle is Settle.AUTO:
            return None  # (made before --settle auto)
        if summary.get("ranking", {}).get("rule") == "auto" and "p" not in summary["ranking"]:
            return None  # (made before --criterion auto's sign test)
        resolved = {"settle": cfg.settle.value, "settle_lr": settle_lr_of(cfg, chosen),
                    "settle_optimizer": cfg.settle_optimizer.value,
                    "max_steps": cfg.max_steps or default_max_steps(cfg), "settle_prune": settle_prune_of(cfg),
                    "settle_prune_until": settle_prune_until_of(cfg, chosen or cfg.settle)}
        if any(saved.get(k) != v for k, v in resolved.items()):
            return None
    return summary


def geodesic_options(budget: float) -> dict:
    """The one budget rule: approach steps and settle epochs scale with the budget (the approach, ``--steps``
    long by default, and the ranking cost about an eighth of it)."""
    steps, settle_epochs = budget_rule(budget)  # (what ``geopath sparsify --budget B`` sets)
    return {"steps": steps, "settle_epochs": settle_epochs}


def best_peer(ckpt, out, data_root, method, sparsity, epochs, seed, grid, **extra) -> dict:
    best = None
    for opt, lr in dict.fromkeys(grid):  # (once each)
        r = run(ckpt, out / f"{method}_{opt}_{lr:g}", data_root, method=method, sparsity=sparsity,
                finetune_epochs=epochs, optimizer=opt, lr=lr, seed=seed, **extra)
        r["grid"] = f"{opt} {lr:g}"
        if best is None or r["accuracy"] > best["accuracy"]:
            best = r
    return best


def _point(text: str) -> tuple[str, float]:
    """``"sgd 0.05"`` (a grid point as the JSON records it) → ``("sgd", 0.05)``."""
    opt, lr = text.split()
    return opt, float(lr)


def _grid_text(grid: list, grid_from: dict | None, free_grid: list | None) -> str:
    """The peers' grid as the page names it: its points, or (``--grid-from``) the earlier winners and the points
    added, with the label-free table's."""
    def points(g: list) -> str:
        return ", ".join(f"{o} lr {lr:g}" for o, lr in g)

    free = f"; the label-free table: {points(free_grid)}" if free_grid else ""
    if not grid_from:
        same = free_grid and [tuple(g) for g in free_grid] == [tuple(g) for g in grid]
        return f"({points(grid)}{'' if same else free})."
    return f"(on each case and seed, the grid point that won in `{grid_from.get('command')}`, and {points(grid)}{free})."


def spread(xs: list[float]) -> float:
    return max(xs) - min(xs) if len(xs) > 1 else 0.0


def _peers_note(old: dict, rows: list[dict], free_rows: list[dict]) -> str:
    """What ``--peers-from`` means for the table: whose peers, and how far their passes are from this geodesic's."""
    gaps = [r["methods"]["geodesic"]["epochs"] / r["peer_epochs"] - 1 for r in rows]
    gaps += [r["epochs"] / r["peer_epochs"] - 1 for r in free_rows]
    worst = max(gaps, key=abs) if gaps else 0.0
    here = [f"{r['case']} with {r['inputs']:,} inputs" for r in free_rows if r.get("ran_here")]
    return (f" **Only the geodesic was run here**: every peer's figure is the earlier run's "
            f"(`{peers_origin(old)['command']}`), whose peers had that run's geodesic passes; this geodesic spent "
            f"{worst:+.2%} of those at most. The seconds columns set this run's geodesic beside the earlier run's "
            "peers: not timed in the same run, so no speed comparison."
            + (f" The label-free rows the earlier run lacks were run here in full, peers included ({'; '.join(here)})."
               if here else ""))


def peers_origin(old: dict) -> dict:
    """The run whose peers ``old`` (a suite JSON) holds: ``old`` itself, or the run it took them from (a
    ``--peers-from`` run of a ``--peers-from`` run names the run that ran the peers, with its passes)."""
    return old.get("peers_from") or {"command": old.get("command"), "machine": old["machine"]}


def shown_arguments(argv: list[str]) -> list[str]:
    """``argv`` without the machine-local ``--data-root`` and ``--docs`` (and their values)."""
    shown, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--data-root", "--docs"):
            skip = True
        elif not a.startswith(("--data-root=", "--docs=")):
            shown.append(a)
    return shown


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES))
    ap.add_argument("--budgets", type=float, nargs="+")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--label-free", type=int, nargs="*", help="N unlabeled inputs (default 1000 10000; none: skip)")
    ap.add_argument("--grid", nargs="+", metavar="OPT:LR",
                    help="the peers' grid instead of the default (e.g. sgd:0.05 for one point; a partial result)")
    ap.add_argument("--peers-from", type=Path, metavar="OLD.json",
                    help="run the geodesic alone; every peer's figures come from this earlier run of the suite")
    ap.add_argument("--grid-from", type=Path, metavar="OLD.json",
                    help="re-run the peers, each on the grid point that won in this earlier run (per case, peer "
                         "and seed) and on the points of --grid (a grid extended without re-running its losers)")
    ap.add_argument("--criterion", choices=["auto", "saliency", "magnitude"],
                    help="the geodesic's --criterion (default: the CLI's, magnitude; auto and saliency were "
                         "defaults before)")
    ap.add_argument("--rerun", action="store_true", help="run everything again (by default a finished run in "
                                                         "bench/_work/suite with the same options is reused)")
    args = ap.parse_args()
    global RERUN
    RERUN = args.rerun
    old = json.loads(args.peers_from.read_text()) if args.peers_from else None
    if args.grid_from and (old is not None or not args.grid):
        raise SystemExit("--grid-from takes the points to add in --grid, and no --peers-from")
    grid_old = json.loads(args.grid_from.read_text()) if args.grid_from else None
    cases = args.cases or (QUICK_CASES if args.quick else list(CASES))
    budgets = args.budgets or ([5.0] if args.quick else [1.0, 2.0, 5.0])
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    grid = [("sgd", 0.1)] if args.quick else GRID  # (quick: the geodesic settle's lr)
    if args.grid:
        grid = [(g.split(":")[0], float(g.split(":")[1])) for g in args.grid]
    label_free = args.label_free if args.label_free is not None else ([1000] if args.quick else [1000, 10000])

    rows = []
    for case in cases:
        net, sparsity = CASES[case]
        ckpt = network(net, args.data_root)
        extra = CASE_OPTIONS.get(case, {})
        case_seeds = seeds if args.seeds or case not in CIFAR_CASES else seeds[:1]
        for budget in budgets:
            per_method: dict[str, list[dict]] = {}
            earlier = winners = None
            if grid_old is not None:
                winners = next((r for r in grid_old["results"] if r["case"] == case and r["budget"] == budget
                                and r["seeds"] == case_seeds), None)
                if winners is None:
                    raise SystemExit(f"{args.grid_from}: no {case} at budget {budget:g} with seeds {case_seeds}")
            if old is not None:
                earlier = next((r for r in old["results"] if r["case"] == case and r["budget"] == budget
                                and r["seeds"] == case_seeds), None)
                if earlier is None:
                    raise SystemExit(f"{args.peers_from}: no {case} at budget {budget:g} with seeds {case_seeds}")
            for seed in case_seeds:
                out = WORK / case / f"b{budget:g}_s{seed}"
                geo = run(ckpt, out / "geodesic", args.data_root, sparsity=sparsity, seed=seed,
                          **geodesic_options(budget), **extra, **GEODESIC_CASE_OPTIONS.get(case, {}),
                          **({"criterion": args.criterion} if args.criterion and "structured" not in extra else {}))
                per_method.setdefault("geodesic", []).append(geo)
                if earlier is not None:
                    continue
                epochs = geo["epochs"]  # every peer gets the geodesic's passes
                per_method.setdefault("one-shot", []).append(
                    run(ckpt, out / "oneshot", args.data_root, method="prune-finetune", sparsity=sparsity,
                        finetune_epochs=0, seed=seed, **extra))
                for method in PEERS:
                    if method not in NO_PEERS.get(case, ()):
                        won = winners and winners["methods"].get(method)  # (a peer the earlier run had)
                        points = grid if not won else [_point(won["grid"][case_seeds.index(seed)])] + grid
                        per_method.setdefault(method, []).append(
                            best_peer(ckpt, out, args.data_root, method, sparsity, epochs, seed, points, **extra))
            row = {"case": case, "budget": budget, "sparsity": sparsity, "seeds": case_seeds,
                   "dense": per_method["geodesic"][0]["dense"],
                   "methods": {m: {"mean": statistics.mean(r["accuracy"] for r in rs),
                                   "spread": spread([r["accuracy"] for r in rs]),
                                   "accuracies": [r["accuracy"] for r in rs],
                                   "epochs": statistics.mean(r["epochs"] for r in rs),
                                   "seconds": statistics.mean(r["seconds"] for r in rs),
                                   "grid": [r.get("grid") for r in rs],
                                   "ranking": [r.get("ranking") for r in rs],
                                   **({"optimizer": [r["optimizer"] for r in rs]}
                                      if any(r.get("optimizer") for r in rs) else {})}
                               for m, rs in per_method.items()}}
            if earlier is not None:  # the peers of the earlier run, at its geodesic's passes
                if abs(earlier["dense"] - row["dense"]) > 1e-9:  # not the same network (re-made elsewhere?)
                    raise SystemExit(f"{args.peers_from}: {case}'s network is not this run's (dense "
                                     f"{earlier['dense']:.2%} there, {row['dense']:.2%} here): its peers do not "
                                     "compare; re-run them")
                row["methods"].update({m: v for m, v in earlier["methods"].items() if m != "geodesic"})
                # (their passes: the earlier geodesic's, or, where the earlier run took them from a run before
                # it, that run's)
                row["peer_epochs"] = earlier.get("peer_epochs", earlier["methods"]["geodesic"]["epochs"])
            rows.append(row)
            print(json.dumps({"case": case, "budget": budget,
                              **{m: round(v["mean"], 4) for m, v in row["methods"].items()}}), flush=True)

    free_rows = []
    free_grid = grid if grid_old is None else list(dict.fromkeys(GRID + grid))  # (label-free: no earlier winners)
    for case in (LABEL_FREE_CASES if label_free else []):
        if case not in cases:
            continue
        net, sparsity = CASES[case]
        ckpt = network(net, args.data_root)
        for n in label_free:
            out = WORK / case / f"labelfree_{n}"
            # the budget: a settle of 3/4 of LABEL_FREE_PASSES sample passes whatever N, after the approach's 10
            # steps (about 100,000 passes in all with N = 1,000); prune + distillation gets the same
            geo = run(ckpt, out / "geodesic", args.data_root, sparsity=sparsity, settle="distill", metric_size=n,
                      steps=10, settle_epochs=0.75 * LABEL_FREE_PASSES / n,
                      **({"criterion": args.criterion} if args.criterion else {}))
            earlier = None if old is None else next(
                (r for r in old["label_free"] if r["case"] == case and r["inputs"] == n), None)
            if earlier is not None:
                free_rows.append({**earlier, "geodesic": geo["accuracy"], "epochs": geo["epochs"],
                                  "peer_epochs": earlier.get("peer_epochs", earlier["epochs"])})
                print(json.dumps(free_rows[-1]), flush=True)
                continue
            # (with --peers-from, a label-free row the earlier run lacks is run here, its peers too)
            dist = best_peer(ckpt, out, args.data_root, "distill", sparsity, geo["epochs"], 0, free_grid,
                             metric_size=n)
            obd = run(ckpt, out / "obd", args.data_root, method="obd", sparsity=sparsity, finetune_epochs=0,
                      metric_size=n)
            free_rows.append({"case": case, "inputs": n, "geodesic": geo["accuracy"], "distill": dist["accuracy"],
                              "obd_one_shot": obd["accuracy"], "epochs": geo["epochs"], "dense": geo["dense"],
                              **({"peer_epochs": geo["epochs"], "ran_here": True} if old is not None else {})})
            print(json.dumps(free_rows[-1]), flush=True)

    # the bar: at the largest budget, geodesic >= best peer (within the larger seed spread) everywhere; ahead on mean
    top = max(budgets)
    checks, gaps = [], []
    for r in rows:
        if r["budget"] != top:
            continue
        peers = {m: v for m, v in r["methods"].items() if m != "geodesic"}
        best = max(peers, key=lambda m: peers[m]["mean"])
        geo = r["methods"]["geodesic"]
        tie = max(geo["spread"], peers[best]["spread"])
        gap = geo["mean"] - peers[best]["mean"]
        gaps.append(gap)
        checks.append((f"{r['case']}: geodesic {geo['mean']:.2%} vs {best} {peers[best]['mean']:.2%}",
                       gap >= -tie - 1e-12))
    if gaps:
        checks.append((f"suite mean: geodesic ahead of the best peer by {statistics.mean(gaps) * 100:+.2f} points",
                       statistics.mean(gaps) > 0))

    # the grids the peers of the table ran on: this run's, or with --peers-from the earlier run's
    ran_here = any(r.get("ran_here") for r in free_rows)  # (label-free rows run in full beside --peers-from)
    peers_grids = ((grid, grid_old and {"command": grid_old.get("command")}, free_grid if label_free else None)
                   if old is None else (old["grid"], old.get("grid_from"),
                                        old.get("label_free_grid") or (free_grid if ran_here else None)))
    stem = "bench_suite_quick" if args.quick else "bench_suite"
    # the command as run (cases, budgets, seeds and grid included: a partial run says what it covers)
    command = " ".join(["python bench/suite.py"] + shown_arguments(sys.argv[1:]))
    host = machine()
    docs = Path(args.docs)
    (docs / f"{stem}.json").write_text(json.dumps({"machine": host, "command": command, "seeds": seeds,
                                                   "budgets": budgets, "grid": peers_grids[0], "results": rows,
                                                   "label_free_grid": peers_grids[2],
                                                   "label_free": free_rows, "checks": dict(checks),
                                                   "peers_from": old and peers_origin(old),
                                                   # (the peers' --grid-from: this run's, or the earlier run's)
                                                   "grid_from": (grid_old and {"command": grid_old.get("command"),
                                                                               "machine": grid_old["machine"]})
                                                   if old is None else old.get("grid_from")},
                                                  indent=2) + "\n")
    methods = ["geodesic", "one-shot"] + PEERS
    lines = [f"# Sparsify suite{' (quick: a smoke run, not a result)' if args.quick else ''}", "",
             f"Produced by `{command}` on {host}. Test accuracy "
             f"(mean over seeds {seeds}, ± the spread max − min"
             + ("; the CIFAR-10 cases: seed 0 alone" if not args.seeds and set(cases) & set(CIFAR_CASES) else "")
             + "); every peer gets the geodesic's sample passes "
             "and reports the best of its grid "
             + _grid_text(*peers_grids)
             + (_peers_note(old, rows, free_rows) if old is not None else ""), "",
             "| case | budget (epochs) | dense | " + " | ".join(methods) + " | geodesic s | best peer s |",
             "|---|---:|---:|" + "---:|" * len(methods) + "---:|---:|"]
    for r in rows:
        ms = r["methods"]
        peers = {m: v for m, v in ms.items() if m != "geodesic"}
        best = max(peers, key=lambda m: peers[m]["mean"])
        cells = []
        for m in methods:
            if m not in ms:  # a peer that does not apply to the case
                cells.append("—")
                continue
            v = ms[m]
            cell = f"{v['mean']:.2%}" + (f" ±{v['spread'] * 100:.2f}" if len(r["seeds"]) > 1 else "")
            cells.append(f"**{cell}**" if m == best or (m == "geodesic" and v["mean"] >= peers[best]["mean"])
                         else cell)
        lines.append(f"| {r['case']} | {ms['geodesic']['epochs']:.2f} | {r['dense']:.2%} | " + " | ".join(cells)
                     + f" | {ms['geodesic']['seconds']:.0f} | {peers[best]['seconds']:.0f} |")
    rankings = {r["case"]: sorted(set(filter(None, r["methods"]["geodesic"].get("ranking", [])))) for r in rows}
    if any(rankings.values()):
        lines += ["", "The geodesic ranked the weights by (`--criterion`; magnitude unless the command names "
                  "another, `auto` choosing per network): "
                  + "; ".join(f"{case} {'/'.join(k)}" for case, k in rankings.items() if k) + "."]
    optimizers = {r["case"]: r["methods"]["geodesic"]["optimizer"] for r in rows
                  if r["methods"]["geodesic"].get("optimizer")}
    if optimizers:
        lines += ["", "The geodesic's settle optimizer by seed (`--settle-optimizer auto`: Adam where SGD's rate × the "
                  f"start's sharpness, in brackets, exceeds {SHARPNESS_BOUND:g}; SGD unmeasured where the start's "
                  f"training loss, in brackets, is not below {TRAINED_LOSS:.3g} × ln C: it has not finished "
                  "training): "
                  + "; ".join(f"{case} {', '.join(map(str, k))}" for case, k in optimizers.items()) + "."]
    if free_rows:
        lines += ["", "## Label-free: N unlabeled inputs", "",
                  "| case | inputs | dense | geodesic (settle distill) | prune + distill | one-shot saliency | epochs |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in free_rows:
            lines.append(f"| {r['case']} | {r['inputs']:,} | {r['dense']:.2%} | {r['geodesic']:.2%} | "
                         f"{r['distill']:.2%} | {r['obd_one_shot']:.2%} | {r['epochs']:.2f} |")
    lines += ["", "Checks against the bar of issue 19:", ""]
    lines += [f"- {'PASS' if ok else 'MISS'} — {name}" for name, ok in checks]
    (docs / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    missed = [n for n, ok in checks if not ok]
    print(f"suite: {len(checks) - len(missed)}/{len(checks)} checks passed" + (f"; missed: {'; '.join(missed)}"
                                                                              if missed else ""))
    return 3 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
