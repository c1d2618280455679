"""The ``sparsify`` job: walk a trained network to a sparse hyperplane.

Glue only: load the checkpoint and data, build the target, hand everything to
the path engine (:func:`geopath.core.path.walk`) — or, with ``--method``, to a peer
from :mod:`geopath.peers` — and summarise (the run's skeleton: :class:`geopath.jobs.common.Job`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from geopath.jobs import common as job
from geopath.core.augment import check_images
from geopath.jobs.settle import SGD_STEPS_PER_STEP, settle_by_training
from geopath.report.text import fmt
from geopath.peers.task import PeerTask
from geopath.core.params import ParamSpace, model_vector
from geopath.io.checkpoint import sparsity_of
from geopath.config import Criterion, MaskMode, Settle, SettleOptimizer, SparsifyConfig, SparsifyMethod
from geopath.errors import UsageError
from geopath.core.evaluate import evaluate, has_batchnorm
from geopath.core.path import PathState, micro_batches, walk, walk_before
from geopath.core.targets import MagnitudeTarget, StructuredTarget, Target, parse_structured, prunable_parameters
from geopath.io.trace import columns

COLUMNS = columns("train_accuracy", "test_accuracy", "test_loss", "sparsity")
HEADLINE = ["test_accuracy", "sparsity", "epochs", "wall_time"]
STEP_SCALE = 4.0  # default ε = (STEP_SCALE · d0 / steps)²


def sparse_parameters(cfg: SparsifyConfig, model) -> list[str]:
    """The parameters whose sparsity is the goal: ``--layer`` names, or every Linear/Conv weight."""
    return list(cfg.layers) if cfg.layers else prunable_parameters(model)


def seeded_order(data, seed: int) -> torch.Tensor:
    """The training inputs' indices in the order ``--seed`` draws them: every rule of a run that looks at the
    start on a sample (the saliency diagonal, ``--criterion``, ``--settle`` and ``--settle-optimizer auto``) takes
    a prefix or a slice of it."""
    return torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))


def saliency_scores(cfg: SparsifyConfig, model, space: ParamSpace, w0: torch.Tensor, data) -> tuple[torch.Tensor, int]:
    """The metric's diagonal at the start on ``--saliency-samples`` inputs drawn (seeded by ``--seed``) from
    ``data``, and its cost in sample passes (one forward+backward per sample)."""
    from geopath.core.saliency import metric_diagonal

    n = min(cfg.saliency_samples, len(data))
    idx = seeded_order(data, cfg.seed)[:n]
    return metric_diagonal(model, space, w0, data.x[idx], cfg.metric, seed=cfg.seed), n


def choose_ranking(cfg: SparsifyConfig, model, space: ParamSpace, w0: torch.Tensor, data,
                   scores: torch.Tensor) -> tuple[torch.Tensor | None, dict, int]:
    """``--criterion auto``: prune in one shot by magnitude and by saliency (``w²·scores``), and keep saliency when
    its network agrees with the start's top-1 prediction on more of ``--saliency-samples`` inputs other than the
    diagonal's (the same seeded draw, continued; BatchNorm on ``--bn-stats``' statistics) by more than chance
    (:func:`ranking_choice`); else magnitude. Label-free. Returns the scores to rank by (``None``: magnitude),
    the rule's record for the summary, and its cost in sample passes (three forward passes of the inputs: the
    start and both candidates)."""
    from torch.func import functional_call

    from geopath.core.metric import bn_statistics
    from geopath.core.params import buffers_of
    from geopath.core.step import PASS_FORWARD

    n = min(cfg.saliency_samples, len(data))
    order = seeded_order(data, cfg.seed)
    # the inputs after the diagonal's (as many, or all the others where fewer are left); its own only where none is
    idx = order[n:2 * n] if len(data) > n else order[:n]
    x = data.x[idx]
    buffers = buffers_of(model)
    names = sparse_parameters(cfg, model)

    def predictions(w: torch.Tensor) -> torch.Tensor:
        params = space.unflatten(w)
        with torch.no_grad(), bn_statistics(model, cfg.bn_stats):
            return torch.cat([functional_call(model, (params, buffers), (x[i:i + 256].to(w.device),)).argmax(-1)
                              for i in range(0, len(x), 256)])

    start = predictions(w0)
    kept = {name: predictions(MagnitudeTarget(space, w0, cfg.sparsity, names, cfg.scope, scores=s).project(w0)) == start
            for name, s in (("magnitude", None), ("saliency", scores))}
    record = {"rule": "auto", "inputs": len(x), **ranking_choice(kept["magnitude"], kept["saliency"])}
    chosen = record["chosen"]
    return (scores if chosen == "saliency" else None), record, int(round(3 * PASS_FORWARD * len(x)))


RANKING_SIGNIFICANCE = 0.05  # --criterion auto: saliency replaces magnitude only below this chance


def ranking_choice(by_magnitude: torch.Tensor, by_saliency: torch.Tensor) -> dict:
    """The choice of ``--criterion auto`` from which inputs each one-shot network agrees with the start on (two
    boolean tensors over the same inputs). Saliency only where it keeps more predictions by more than chance: a
    one-sided sign test on the inputs just one of the two keeps (n of them, s saliency's), the chance of s or more
    of n fair coin flips below :data:`RANKING_SIGNIFICANCE`; magnitude, the ranking of every peer but
    obd, otherwise. (The wide MNIST MLP at 95 % had saliency ahead by 2–3 of 1,024 inputs on two seeds of three, and
    its geodesic lost 0.19 points to the magnitude seed; every other network of the suite was 9 or more inputs
    apart: docs/method.md.) Returns ``chosen``, both ``agreement`` fractions, ``only`` (the inputs only that
    ranking keeps) and the test's ``p``."""
    import math

    only_s = int((by_saliency & ~by_magnitude).sum())
    only_m = int((by_magnitude & ~by_saliency).sum())
    n = only_s + only_m
    p = sum(math.comb(n, k) for k in range(only_s, n + 1)) / (1 << n)  # (exact integers: n may pass 1,024)
    chosen = "saliency" if only_s > only_m and p < RANKING_SIGNIFICANCE else "magnitude"
    return {"chosen": chosen,
            "agreement": {"magnitude": float(by_magnitude.float().mean()), "saliency": float(by_saliency.float().mean())},
            "only": {"magnitude": only_m, "saliency": only_s}, "p": p}


SETTLE_RULE_SAMPLES = 2048  # --settle auto: the training inputs the start is scored on
SETTLE_RULE_ACCURACY = 0.998  # ... and the accuracy from which it counts as having fitted its labels


def choose_settle(cfg: SparsifyConfig, model, data, device) -> tuple[Settle, dict | None, int]:
    """``--settle auto``: settle on the start's outputs (``distill``) when the start classifies at least
    :data:`SETTLE_RULE_ACCURACY` of :data:`SETTLE_RULE_SAMPLES` training inputs (a draw seeded by ``--seed``; the
    network as it is evaluated, BatchNorm on its running statistics) right, else on the labels (``finetune``).
    A start that has fitted its labels loses nothing of them in its outputs and adds their soft part; one that
    has not would teach its mistakes. With ``--structured`` (whole units go) always on the labels, unmeasured:
    the network lands far from the start's function there, and matching its outputs was unstable (two of five
    seeds fell 2.6–3.7 points on VGG11's filters; docs/method.md, "Which settle"). Returns the settle, the rule's
    record for the summary (``None`` where nothing was chosen) and its cost in sample passes (one forward pass
    of the inputs). Any other ``--settle``, or no settle (``--settle-epochs 0``), is returned as it is, at no
    cost."""
    from geopath.core.dataset import Dataset
    from geopath.core.step import PASS_FORWARD

    if cfg.settle is not Settle.AUTO:
        return cfg.settle, None, 0
    if cfg.method is not SparsifyMethod.GEODESIC or cfg.settle_epochs == 0:
        return Settle.FINETUNE, None, 0  # (nothing settles by training: the choice is never read)
    if parse_structured(cfg.structured):
        return Settle.FINETUNE, {"rule": "auto", "chosen": Settle.FINETUNE.value, "structured": True}, 0
    n = min(SETTLE_RULE_SAMPLES, len(data))
    idx = seeded_order(data, cfg.seed)[:n]
    accuracy = evaluate(model, Dataset(data.x[idx], data.y[idx], data.name, data.split, data.preprocess),
                        device=device).accuracy
    chosen = Settle.DISTILL if accuracy >= SETTLE_RULE_ACCURACY else Settle.FINETUNE
    record = {"rule": "auto", "chosen": chosen.value, "inputs": n, "train_accuracy": accuracy,
              "threshold": SETTLE_RULE_ACCURACY}
    return chosen, record, int(round(PASS_FORWARD * n))


def ranking_text(record: dict) -> str:
    """What ``--criterion auto`` chose and why, for a person (the summary's ``ranking`` record, as the run just
    made it)."""
    only = record["only"]
    return (f"{record['chosen']} (auto: of {record['inputs']:,} inputs, {only['saliency']} keep the start's prediction "
            f"only by saliency, {only['magnitude']} only by magnitude; p = {record['p']:.2g})")


def settle_text(record: dict) -> str:
    """What ``--settle auto`` chose and why, for a person (the summary's ``settle`` record)."""
    if record.get("structured"):
        return f"{record['chosen']} (auto: whole units go)"
    return (f"{record['chosen']} (auto: the start gets {record['train_accuracy']:.2%} of {record['inputs']:,} "
            f"training inputs right; distils from {record['threshold']:.1%})")


# --settle-optimizer auto (docs/method.md, "Which optimizer settles"): the sharpness λ of the start's softmax GGN
# (its largest eigenvalue: SHARPNESS_ITERATIONS Lanczos products on SHARPNESS_SAMPLES training inputs) against
# SGD's learning rate; Adam settles where lr·λ exceeds SHARPNESS_BOUND, and only for a start that has finished
# training: its cross-entropy on those inputs below TRAINED_LOSS × ln C, C classes (chance's loss is ln C)
SHARPNESS_SAMPLES = 256
SHARPNESS_ITERATIONS = 10
SHARPNESS_BOUND = 2.5
TRAINED_LOSS = 1.0 / 6.0


def choose_settle_optimizer(cfg: SparsifyConfig, settle: Settle, model, space: ParamSpace, w0: torch.Tensor,
                            data, device) -> tuple[SettleOptimizer, dict | None, float]:
    """``--settle-optimizer auto``: Adam (at 0.001) when SGD's learning rate times the start's sharpness exceeds
    :data:`SHARPNESS_BOUND`, else SGD. The sharpness is the largest eigenvalue of the softmax Fisher (the
    cross-entropy's Gauss-Newton matrix) of the start network on a draw of :data:`SHARPNESS_SAMPLES` training
    inputs seeded by ``--seed`` (:func:`geopath.core.lanczos.top_eigenvalue`, :data:`SHARPNESS_ITERATIONS`
    products). Gradient descent at rate lr is stable along a direction of curvature λ only while lr·λ < 2 (heavy
    ball with momentum 0.9: < 3.8); past the bound SGD at the settle's rate mostly bounces along the sharpest
    directions, while Adam's steps do not scale with the curvature. Settling on the labels, a start that has not
    finished training (its cross-entropy on the same inputs at or above :data:`TRAINED_LOSS` × ln C, C classes)
    keeps SGD unmeasured: its sharpness is not the one its training would settle at (on six under-trained MLPs
    where the sharpness alone chose Adam, SGD was ahead on four by 0.8–1.7 points and within 0.3 on the other
    two: docs/method.md). Returns the optimizer, the rule's record for the
    summary (``None`` where nothing was chosen) and its cost in sample passes. Any other ``--settle-optimizer``,
    or a run that does not settle by training, is returned as it is (SGD), at no cost."""
    from geopath.core import distributed
    from geopath.core.choices import MetricKind
    from geopath.core.lanczos import top_eigenvalue
    from geopath.core.metric import MetricOperator
    from geopath.core.step import PASS_FORWARD, product_passes

    if cfg.settle_optimizer is not SettleOptimizer.AUTO:
        return cfg.settle_optimizer, None, 0.0
    if cfg.method is not SparsifyMethod.GEODESIC or settle is Settle.GEODESIC or cfg.settle_epochs == 0:
        return SettleOptimizer.SGD, None, 0.0  # (nothing settles by training: the choice is never read)
    lr = settle_lr_of(cfg, settle)  # (SGD's: --settle-lr, else its default)
    n = min(SHARPNESS_SAMPLES, len(data))
    idx = seeded_order(data, cfg.seed)[:n]
    mine = idx[distributed.current().shard(n)]  # under torchrun: this rank's share of the draw
    fisher = MetricOperator(model, space, w0, micro_batches(data.x[mine].to(device), cfg.micro_batch),
                            MetricKind.FISHER, cfg.bn_stats, cache=cfg.micro_batch is None, jvp_mode=cfg.jvp)
    cost = PASS_FORWARD * fisher.num_samples  # (building it: one forward pass, whose outputs give the loss too)
    record = {"rule": "auto", "chosen": SettleOptimizer.SGD.value, "sgd_lr": lr, "inputs": n}
    if settle is Settle.FINETUNE:  # (a settle on the start's outputs reads no label, and neither does its rule)
        labels = micro_batches(data.y[mine].to(device), cfg.micro_batch)
        loss = fisher.comm.sum_float(sum(float(F.cross_entropy(z, t, reduction="sum"))
                                         for z, t in zip(fisher.logits, labels))) / fisher.num_samples
        record.update(train_loss=loss, loss_bound=TRAINED_LOSS * math.log(fisher.logits[0].shape[-1]))
        if not loss < record["loss_bound"]:  # (a NaN loss too: nothing says Adam is safer there)
            return SettleOptimizer.SGD, record, cost
    sharpness = top_eigenvalue(fisher, SHARPNESS_ITERATIONS, torch.Generator().manual_seed(cfg.seed))
    chosen = SettleOptimizer.ADAM if lr * sharpness > SHARPNESS_BOUND else SettleOptimizer.SGD
    record.update(chosen=chosen.value, sharpness=sharpness, bound=SHARPNESS_BOUND, products=fisher.matvecs)
    return chosen, record, cost + product_passes(fisher)


def optimizer_text(record: dict) -> str:
    """What ``--settle-optimizer auto`` chose and why, for a person (the summary's ``settle_optimizer``)."""
    if "sharpness" not in record:
        return (f"{record['chosen']} (auto: the start's training loss {record['train_loss']:.3g} is not below "
                f"{record['loss_bound']:.3g}, a sixth of chance's: it has not finished training; on such starts "
                "--method gradual or prune-finetune did better at the same passes, docs/method.md)")
    return (f"{record['chosen']} (auto: SGD's rate {record['sgd_lr']:g} × the start's sharpness "
            f"{record['sharpness']:.3g} = {record['sgd_lr'] * record['sharpness']:.3g}; Adam above "
            f"{record['bound']:g})")


def default_max_steps(cfg: SparsifyConfig) -> int:
    """The approach's length when ``--max-steps`` is not given: ``--steps`` when a training settle follows at a
    constant β (the approach never comes within ``--tol`` on the suite's networks, and the settle, given the
    passes instead, does better: docs/method.md); three times ``--steps`` before geodesic settle steps, without
    a settle (``--settle-epochs 0``: nothing would use the passes saved), or when β grows past ``--steps``
    (``--beta-growth``: the growth needs the steps)."""
    if cfg.settle is not Settle.GEODESIC and cfg.settle_epochs > 0 and cfg.beta_growth == 1.0:
        return cfg.steps
    return 3 * cfg.steps


ADAM_LR = 0.001  # the settle's rate with Adam (--settle-optimizer adam, or where auto chooses it)


def default_settle_lr(cfg: SparsifyConfig, settle: Settle) -> float:
    """The learning rate of a training ``settle`` when ``--settle-lr`` is not given: 0.1 on the labels for
    unstructured sparsity; 0.05 when whole units go (``--structured``) or on the start's outputs (``distill``).
    Measured (docs/method.md): on the labels 0.1 gains on every unstructured suite network and on VGG11 at 90 %;
    with whole units removed 0.05 is ahead on VGG11's filter removal by 1.75 points and on two of three MLPs
    (by 0.04 and 0.51; 0.05 behind on the third: bench/settle_lr_structured.py); on the start's outputs 0.05 is
    ahead on VGG11 at 90 % by 1.38 points (three seeds) and on three of the four label-free cases, 0.09 behind
    on the shipped MNIST MLP. With ``--settle-optimizer adam``: 0.001 (the peers' Adam grid point; measured on the
    wide MNIST MLP trained with Adam, docs/method.md)."""
    if cfg.settle_optimizer is SettleOptimizer.ADAM:
        return ADAM_LR
    return 0.05 if parse_structured(cfg.structured) or settle is Settle.DISTILL else 0.1


SETTLE_PRUNE = 0.2  # --settle-prune's default where it applies (docs/method.md, "Pruning during the settle")


def settle_prune_of(cfg: SparsifyConfig) -> float | None:
    """The fraction of the removals a geodesic run leaves to its settle: ``--settle-prune``, else
    :data:`SETTLE_PRUNE`, for unstructured sparsity with a fixed mask and a training settle; ``None`` (nothing
    reads it, and the run's config records none) otherwise."""
    if cfg.method is not SparsifyMethod.GEODESIC or cfg.settle is Settle.GEODESIC or cfg.structured \
            or cfg.mask is MaskMode.DYNAMIC or cfg.settle_epochs == 0:
        return None
    return cfg.settle_prune if cfg.settle_prune is not None else SETTLE_PRUNE


# --settle-prune-until's default: the fraction of the settle's steps over which its sparsity grows, by what it
# trains on (docs/method.md, "How long the settle prunes"): on the labels three quarters, as gradual pruning's
# schedule (Zhu & Gupta); on the start's outputs the first half
SETTLE_PRUNE_UNTIL = {Settle.FINETUNE: 0.75, Settle.DISTILL: 0.5}


def settle_prune_until_of(cfg: SparsifyConfig, settle: Settle) -> float | None:
    """Over which fraction of its steps a geodesic run's settle grows the sparsity: ``--settle-prune-until``,
    else :data:`SETTLE_PRUNE_UNTIL` of ``settle`` (the one ``--settle auto`` chose); ``None`` where the settle
    prunes nothing (:func:`settle_prune_of` is ``None`` or 0)."""
    if not settle_prune_of(cfg):
        return None
    return cfg.settle_prune_until if cfg.settle_prune_until is not None else SETTLE_PRUNE_UNTIL[settle]


def settle_lr_of(cfg: SparsifyConfig, settle: Settle | None = None) -> float | None:
    """The settle learning rate a geodesic run uses and records: ``--settle-lr``, else :func:`default_settle_lr`
    of ``settle`` (the one ``--settle auto`` chose; default ``--settle``); none before geodesic settle steps
    (they read no learning rate) or with ``--settle-epochs 0``."""
    settle = cfg.settle if settle is None else settle
    if settle is Settle.GEODESIC or cfg.settle_epochs == 0:  # (no training settle: nothing reads it)
        return cfg.settle_lr
    return cfg.settle_lr if cfg.settle_lr is not None else default_settle_lr(cfg, settle)


def build_target(cfg: SparsifyConfig, model, space: ParamSpace, w0: torch.Tensor,
                 example: torch.Tensor | None = None, scores: torch.Tensor | None = None) -> Target:
    """The sparse hyperplane: whole units of ``--structured`` layers (their channels traced through the
    network on ``example`` inputs), else unstructured sparsity, ranked by magnitude or by ``w²·scores``."""
    counts = parse_structured(cfg.structured)
    if counts:
        return StructuredTarget(model, space, w0, counts, example)
    return MagnitudeTarget(space, w0, cfg.sparsity, sparse_parameters(cfg, model), cfg.scope,
                           dynamic=cfg.mask is MaskMode.DYNAMIC, scores=scores)


class Sparsify(job.Job):
    name, columns, headline, gate_on = "sparsify", COLUMNS, HEADLINE, "test_accuracy"

    @staticmethod
    def text(s: dict) -> list[str]:
        return [f"final network:   {Path(s['out']) / s['final']}",
                f"test accuracy:   {fmt(s['test_accuracy'])} (start {fmt(s['dense_test_accuracy'])})",
                f"sparsity:        {fmt(s['sparsity'])}"
                + (f" ({fmt(s['layer_sparsity'])} of the --layer parameters)" if "layer_sparsity" in s else ""),
                f"path length:     {fmt(s['length'])}   steps: {s['step']}   epochs of data: {s['epochs']:.2f}"
                ] + ([f"ranking:         {ranking_text(s['ranking'])}"] if s.get("ranking") else []) \
            + ([f"settle:          {settle_text(s['settle'])}"] if s.get("settle") else []) \
            + ([f"optimizer:       {optimizer_text(s['settle_optimizer'])}"] if s.get("settle_optimizer") else [])

    def prepare(self, cfg: SparsifyConfig, device) -> job.Setup:
        ck = job.load(cfg, cfg.checkpoint)
        cfg = job.with_reading(cfg, ck)
        data_name, metric_data, test_data, train_eval = job.single_task_data(cfg, ck, device)
        check_images(cfg.settle_augment, tuple(metric_data.x.shape[1:]))
        reference = job.frozen_copy(ck.model, device)  # the starting network, kept frozen
        model = ck.model.to(device)
        space = ParamSpace.of(model)
        w0 = model_vector(model, space)
        scores, spent, ranking = None, 0, None
        tic = time.perf_counter()  # (the work whose passes count from the start: its seconds count too)
        if cfg.method is SparsifyMethod.OBD:  # the peer is one-shot pruning by saliency
            cfg = dataclasses.replace(cfg, criterion=Criterion.SALIENCY)
        elif cfg.criterion is None and not cfg.structured:  # magnitude, the geodesic's too (docs/method.md)
            # (a structured target ranks no weight: its config records no criterion, so that it replays)
            cfg = dataclasses.replace(cfg, criterion=Criterion.MAGNITUDE)
        if cfg.criterion in (Criterion.SALIENCY, Criterion.AUTO) and not cfg.structured:
            scores, spent = saliency_scores(cfg, model, space, w0, metric_data)
            if cfg.criterion is Criterion.AUTO:
                scores, ranking, checked = choose_ranking(cfg, model, space, w0, metric_data, scores)
                spent += checked
        settle, settle_rule, checked = choose_settle(cfg, model, metric_data, device)
        spent += checked
        optimizer, optimizer_rule, checked = choose_settle_optimizer(cfg, settle, model, space, w0, metric_data,
                                                                     device)
        spent += checked
        target = build_target(cfg, model, space, w0, example=test_data.x[:2].to(device), scores=scores)
        spent_seconds = time.perf_counter() - tic
        max_steps = cfg.max_steps or default_max_steps(cfg)
        step_size = cfg.step_size or job.default_step_size(target.distance(w0), cfg.steps, STEP_SCALE)
        if cfg.method is SparsifyMethod.GEODESIC:  # (a peer's config records no step it does not take)
            cfg = dataclasses.replace(cfg, step_size=step_size, max_steps=max_steps,
                                      settle_lr=settle_lr_of(cfg, settle), settle_prune=settle_prune_of(cfg),
                                      settle_prune_until=settle_prune_until_of(cfg, settle))
        cfg = dataclasses.replace(cfg, data=data_name, eval_data=job.recorded(cfg.eval_data),
                                  normalize=metric_data.preprocess, arch=ck.arch, arch_kwargs=ck.arch_kwargs,
                                  checkpoint=str(ck.path.resolve()))
        sparse_names = sparse_parameters(cfg, model)
        walk_target = target  # (chosen at the start, also when a run resumes from a later network)
        if cfg.method is SparsifyMethod.GEODESIC and cfg.settle_prune:
            walk_target = target.rechosen(w0, (1.0 - cfg.settle_prune) * target.sparsity)

        def evaluate_row(net) -> dict:
            ev = evaluate(net, test_data, device=device)
            # the whole network's, as eval counts it; with --layer also the named parameters' (the target's)
            row = {"test_accuracy": ev.accuracy, "test_loss": ev.loss, "sparsity": sparsity_of(net)}
            if cfg.layers:
                row["layer_sparsity"] = sparsity_of(net, sparse_names)
            row["train_accuracy"] = evaluate(net, train_eval, device=device).accuracy if train_eval else math.nan
            return row

        bn_data = metric_data.head(cfg.bn_samples) if has_batchnorm(model) else None
        return job.Setup(cfg, model, ck.arch, ck.arch_kwargs, ck.sha256, data_name, evaluate_row, len(metric_data),
                         bn_data, max_steps + cfg.settle_steps,
                         own={"target": target, "walk_target": walk_target, "metric": metric_data,
                              "reference": reference, "spent": spent, "ranking": ranking, "settle": settle,
                              "settle_rule": settle_rule, "optimizer": optimizer, "optimizer_rule": optimizer_rule},
                         preprocess=metric_data.preprocess, carry=job.carried(ck), spent_seconds=spent_seconds)

    def walk(self, setup: job.Setup, recorder, state, device) -> job.Outcome:
        cfg, own = setup.cfg, setup.own
        by_training = cfg.settle is not Settle.GEODESIC
        if by_training and state is not None and state.landed_at is not None:
            raise UsageError(f"{recorder.writer.out}: the run stopped after landing, during --settle "
                             f"{cfg.settle.value} (the optimizer's state is not saved); start it again with "
                             "--overwrite")
        pcfg = job.path_config(cfg, cfg.step_size, cfg.max_steps, settle_steps=0 if by_training else cfg.settle_steps,
                               settle_anchor=cfg.settle_anchor)
        record_start = None
        if state is None:  # the passes and seconds spent choosing the mask and the rules count from the start
            state, record_start = PathState(sample_passes=float(own["spent"]), wall_time=setup.spent_seconds), True
        target = own["walk_target"]  # --settle-prune F: 1 − F of the removals; the settle makes the rest
        with walk_before(f"the --settle {own['settle'].value} training", by_training):
            result = walk(setup.model, target, own["metric"], pcfg, recorder, reference=own["reference"],
                          state=state, device=device, record_start=record_start,
                          final_path="steps/landed.safetensors" if by_training else "final.safetensors")
        if by_training:  # (--settle auto: as the rule chose; the config records auto, which replays the same)
            # (--settle-optimizer auto: as the rule chose, Adam at its own rate; the config records auto and SGD's
            # rate, which replay the same)
            lr = ADAM_LR if cfg.settle_optimizer is SettleOptimizer.AUTO and own["optimizer"] is SettleOptimizer.ADAM \
                else cfg.settle_lr
            chosen = dataclasses.replace(cfg, settle=own["settle"], settle_optimizer=own["optimizer"], settle_lr=lr)
            return job.Outcome(settle_by_training(chosen, setup.model,
                                                  target, own["metric"], own["reference"],
                                                  result, recorder, device,
                                                  grow_to=own["target"] if cfg.settle_prune else None))
        return job.Outcome(result.final)

    def peer_task(self, setup: job.Setup, record, device) -> PeerTask:
        cfg = setup.cfg
        # the geodesic's cadence: one network every --save-every geodesic steps' worth of passes, so that
        # both runs spend the same time recording at equal passes
        every = cfg.save_every * SGD_STEPS_PER_STEP * cfg.batch_size
        budget = cfg.finetune_epochs * len(setup.own["metric"])
        return PeerTask(setup.model, setup.own["metric"], record, cfg, device, target=setup.own["target"],
                        records=max(2, round(budget / every)), spent=setup.own["spent"])

    def summarise(self, setup: job.Setup, writer, outcome: job.Outcome) -> dict[str, Any]:
        final, start = outcome.final, writer.trace.rows()[0]
        target = outcome.target or setup.own["target"]
        return {
            "dense_test_accuracy": start["test_accuracy"],
            **{k: final[k] for k in ("step", "test_accuracy", "test_loss", "train_accuracy", "sparsity",
                                      "length", "sample_passes", "epochs", "wall_time")},
            **({"layer_sparsity": final["layer_sparsity"]} if "layer_sparsity" in final else {}),
            "target": target.describe() if not isinstance(target, MagnitudeTarget) else
            {k: v for k, v in target.describe().items() if k != "parameters"},
            **({"ranking": setup.own["ranking"]} if setup.own.get("ranking") else {}),
            **({"settle": setup.own["settle_rule"]} if setup.own.get("settle_rule") else {}),
            **({"settle_optimizer": setup.own["optimizer_rule"]} if setup.own.get("optimizer_rule") else {}),
        }


JOB = Sparsify()
run_sparsify = JOB.run
