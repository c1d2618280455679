"""The ``merge`` job: from network A (task A) toward network B (task B), recording
every network on the way, to find networks that serve both tasks.

Glue only. :func:`prepare` loads both networks and all data splits and settles the
output head; the geodesic (:func:`geopath.core.path.walk` toward a
:class:`~geopath.core.targets.NetworkTarget`, without landing) or a peer from
:mod:`geopath.peers` produces the trace; :mod:`geopath.jobs.selection` picks the
reported network and the Pareto front.

Heads. ``--head shared``: both networks have the same outputs and each task's
labels index them (the network is not told which task an input is from).
``--head split``: one head with task A's classes first and task B's after them
(B's labels are shifted by A's class count); networks with one task's classes each
are widened first — A's new rows (B's classes) get zero weights and a bias below
every logit A gives on its own inputs, and likewise for B — so both start with
their old predictions, and accuracy is taken over all outputs.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geopath.jobs import common as job
from geopath.report.text import fmt
from geopath.peers.task import PeerTask
from geopath.core.params import ParamSpace, model_vector
from geopath.io.archs import build_model
from geopath.io.checkpoint import META_PREFIX
from geopath.config import Head, Manifold, MergeConfig, MergeMethod
from geopath.io.data import Dataset, one_set
from geopath.errors import UsageError
from geopath.core.evaluate import has_batchnorm
from geopath.core.path import MetricSource, walk
from geopath.io.rundir import RunWriter
from geopath.jobs.selection import pareto_front, select
from geopath.core.targets import NetworkTarget
from geopath.io.trace import columns

COLUMNS = columns("test_accuracy_a", "test_accuracy_b", "test_loss_a", "test_loss_b", "val_accuracy_a",
                  "val_accuracy_b", "alpha")
HEADLINE = ["test_accuracy_a", "test_accuracy_b", "min_test_accuracy", "epochs", "wall_time"]
STEP_SCALE = 5.0  # default ε = (STEP_SCALE · d0 / steps)²: the walk may cover ~5 × the A–B distance


@dataclass
class Tasks:
    """Everything a merge needs, head settled: both networks and every data split."""

    model_a: nn.Module
    model_b: nn.Module
    arch: str
    arch_kwargs: dict  # of the path's networks (a widened head has more classes)
    source_arch_kwargs: dict  # of the checkpoints as given (what config.yaml records)
    sha_a: str
    data_a: str
    data_b: str
    metric_a: Dataset
    metric_b: Dataset
    val_a: Dataset | None
    val_b: Dataset | None
    test_a: Dataset
    test_b: Dataset
    offset_b: int  # added to task B's labels (split head)
    carry: dict | None = None  # what saved networks inherit from A (a compact network's recipe)
    reading: tuple[str | None, int | None] = (None, None)  # image size and channels, as the run read them


def _shift(ds: Dataset | None, offset: int) -> Dataset | None:
    return None if ds is None else ds.shifted(offset)


def _outputs(model: nn.Module, ds: Dataset, device) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ds.x[:512].to(device))


def _widen(ck, probe: Dataset, classes_a: int, classes_b: int, first: bool, device) -> nn.Module:
    """``ck``'s network with a (classes_a + classes_b)-way head; its own rows first or last."""
    total = classes_a + classes_b
    try:
        wide = build_model(ck.arch, {**ck.arch_kwargs, "num_classes": total})
    except UsageError:
        raise UsageError(f"--head split: architecture {ck.arch!r} takes no num_classes argument; train both "
                         f"networks with {total} outputs (B's labels shifted by {classes_a}) instead") from None
    old, new = ck.model.state_dict(), wide.state_dict()
    if list(old) != list(new):
        raise UsageError(f"--head split: {ck.arch!r} with num_classes={total} is not the same network with a wider head")
    low = float(_outputs(ck.model, probe, device).min()) - 1.0
    own = slice(0, classes_a) if first else slice(classes_a, total)
    for k in new:
        if old[k].shape == new[k].shape:
            new[k] = old[k].clone()
            continue
        if old[k].shape[1:] != new[k].shape[1:] or (old[k].shape[0], new[k].shape[0]) != (own.stop - own.start, total):
            raise UsageError(f"--head split: {k} changes from {tuple(old[k].shape)} to {tuple(new[k].shape)}, "
                             "not like an output layer")
        filled = torch.zeros_like(new[k]) if new[k].ndim > 1 else torch.full_like(new[k], low)
        filled[own] = old[k]
        new[k] = filled
    wide.load_state_dict(new)
    return wide.to(device).eval()


def prepare(cfg: MergeConfig, device) -> Tasks:
    a, b = job.load(cfg, cfg.checkpoint), job.load(cfg, cfg.checkpoint_b)
    provenance = job.two_network_provenance(a, b)
    cfg = job.with_reading(cfg, a, b)
    data_a = job.data_name(cfg.data_a, a, "--data-a")
    data_b = job.data_name(cfg.data_b, b, "--data-b")
    recorded_a, recorded_b = (job.recorded(ck.data) for ck in (a, b))
    if recorded_a != recorded_b and (data_a, data_b) == (recorded_b, recorded_a):
        raise UsageError(f"--data-a {data_a} and --data-b {data_b} swap the tasks: network A records {recorded_a} "
                         f"and B {recorded_b} (each task's data set goes with its own network)")
    for name, flag in ((data_a, "--data-a"), (data_b, "--data-b")):
        if one_set(name):
            raise UsageError(f"{flag} {name} is one set of labelled data with no test split: merge needs each task's "
                             "train and test split (a named set, or a folder holding train/ and test/ image folders "
                             "or train.npz and test.npz)")
    pre_a, pre_b = job.preprocess_of(cfg, a, data_a), job.preprocess_of(cfg, b, data_b)  # each task's own inputs
    full_a, full_b = (job.load_split(d, "train", cfg, preprocess=p) for d, p in ((data_a, pre_a), (data_b, pre_b)))
    classes_a, classes_b = (int(ds.y.max()) + 1 for ds in (full_a, full_b))  # (every label, not --metric-size's)
    train_a, val_a = job.split_train(full_a, cfg.val_size)
    train_b, val_b = job.split_train(full_b, cfg.val_size)
    train_a, train_b = train_a.head(cfg.metric_size), train_b.head(cfg.metric_size)
    test_a = job.load_split(data_a, "test", cfg, cfg.eval_size, train_a.preprocess)
    test_b = job.load_split(data_b, "test", cfg, cfg.eval_size, train_b.preprocess)
    if train_a.x.shape[1:] != train_b.x.shape[1:]:
        raise UsageError(f"task A's inputs {tuple(train_a.x.shape[1:])} and task B's {tuple(train_b.x.shape[1:])} "
                         "differ; one network cannot take both")
    model_a, model_b = a.model.to(device), b.model.to(device)
    for ck, ds, name in ((a, test_a, "A"), (b, test_b, "B")):
        try:
            _outputs(ck.model, ds, device)
        except Exception as e:
            raise UsageError(f"network {name} ({ck.path}) cannot take inputs of shape {tuple(ds.x.shape[1:])} "
                             f"from {ds.name}: {str(e).splitlines()[0]}") from None
    out_a = _outputs(model_a, train_a, device).shape[1]
    out_b = _outputs(model_b, train_b, device).shape[1]
    arch_kwargs = a.arch_kwargs
    offset = 0
    for ck in (a, b):  # (its outputs follow two tasks' classes: whose labels are these?)
        if ck.metadata.get(META_PREFIX + job.LABEL_OFFSET_KEY):
            raise UsageError(f"{ck.path}: a split-head merged network; merge the networks of its tasks instead")
    if cfg.head is Head.SHARED:
        job.same_arch(a, b, hint="; networks with different output heads: use --head split")
        if out_a < max(classes_a, classes_b):
            raise UsageError(f"--head shared: the networks have {out_a} outputs but the tasks have {classes_a} and "
                             f"{classes_b} classes; use --head split")
    else:
        if job.recorded(data_a) == job.recorded(data_b):  # (which head a later run scores would rest on a name)
            raise UsageError(f"--head split: both tasks are {data_b}; a split head gives each task its own data set")
        offset = classes_a
        if out_a == out_b == classes_a + classes_b:
            job.same_arch(a, b)
        elif out_a == classes_a and out_b == classes_b:
            job.same_arch(a, b, hint="; --head split widens networks of the same architecture only")
            model_a = _widen(a, train_a, classes_a, classes_b, True, device)
            model_b = _widen(b, train_b, classes_a, classes_b, False, device)
            arch_kwargs = {**a.arch_kwargs, "num_classes": classes_a + classes_b}
        else:
            raise UsageError(f"--head split: A has {out_a} outputs and B {out_b}; expected {classes_a} and "
                             f"{classes_b} (geopath widens them) or {classes_a + classes_b} each (B's classes "
                             f"from {classes_a})")
    return Tasks(model_a, model_b, a.arch, arch_kwargs, a.arch_kwargs, a.sha256, data_a, data_b, train_a, _shift(train_b, offset),
                 val_a, _shift(val_b, offset), test_a, _shift(test_b, offset), offset,
                 carry={**_not_task_b(job.carried(a)), **provenance, **_task_b_reading(data_a, data_b, train_b),
                        **_task_b_labels(offset)},
                 reading=(cfg.image_size, cfg.channels))


def _task_b_reading(data_a: str, data_b: str, train_b: Dataset) -> dict[str, str]:
    """What every merged network records of task B (task A's data set and preprocessing are its ``data`` and
    ``preprocess``): ``eval --data`` of B's set reads it as the merge scored it (Checkpoint.reading)."""
    return {"data_a": job.recorded(data_a), "data_b": job.recorded(data_b), "preprocess_b": train_b.preprocess}


def _not_task_b(record: dict[str, str]) -> dict[str, str]:
    """What A carries, less a task B of its own (A merged before): this merge records its own B."""
    return {k: v for k, v in record.items() if k not in job.MERGED_TASK_KEYS + (job.LABEL_OFFSET_KEY,)}


def _task_b_labels(offset: int) -> dict[str, str]:
    """A split head's record of where task B's classes start (``eval`` and every job that reads B's labels shift
    them by it: :func:`geopath.jobs.common.label_offset`)."""
    return {job.LABEL_OFFSET_KEY: str(offset)} if offset else {}


class BothTasks:
    """``evaluate(model)`` for a merge row: test accuracy/loss and validation accuracy on both tasks."""

    def __init__(self, tasks: Tasks, device):
        self.tasks, self.device = tasks, device

    def __call__(self, net: nn.Module) -> dict:
        t, d = self.tasks, self.device
        row = {**job.task_metrics(net, t.test_a, d, "test_", "_a"), **job.task_metrics(net, t.test_b, d, "test_", "_b")}
        row["val_accuracy_a"] = job.task_metrics(net, t.val_a, d, "val_", "_a")["val_accuracy_a"]
        row["val_accuracy_b"] = job.task_metrics(net, t.val_b, d, "val_", "_b")["val_accuracy_b"]
        return row


def sources(cfg: MergeConfig, tasks: Tasks) -> list[MetricSource]:
    a = MetricSource(tasks.metric_a, reference=tasks.model_a, name="a", weight=1.0)
    b = MetricSource(tasks.metric_b, reference=tasks.model_b, name="b", weight=cfg.weight_b)
    return {Manifold.A: [a], Manifold.B: [b], Manifold.BOTH: [a, b]}[cfg.manifold]


class Merge(job.Job):
    name, columns, headline, gate_on = "merge", COLUMNS, HEADLINE, "min_test_accuracy"

    @staticmethod
    def text(s: dict) -> list[str]:
        b, st = s["best"], s["start"]
        return [f"best network:    {Path(s['out']) / s['best_file']} (step {b['step']}, {s['select']} on "
                f"{s['selected_on']})",
                f"test accuracy:   A {fmt(b['test_accuracy_a'])} (start {fmt(st['test_accuracy_a'])})   "
                f"B {fmt(b['test_accuracy_b'])} (start {fmt(st['test_accuracy_b'])})",
                f"pareto front:    {s['pareto_size']} networks ({Path(s['out']) / 'pareto.json'})",
                f"path length:     {fmt(s['length'])}   steps: {s['step']}   epochs of data: {s['epochs']:.2f}"]

    def prepare(self, cfg: MergeConfig, device) -> job.Setup:
        tasks = prepare(cfg, device)
        space = ParamSpace.of(tasks.model_a)
        w_a, w_b = model_vector(tasks.model_a, space), model_vector(tasks.model_b, space)
        d0 = float(torch.linalg.vector_norm(w_b - w_a))
        if d0 == 0.0:
            raise UsageError("networks A and B have the same weights: there is nothing to merge")
        max_steps = cfg.max_steps or cfg.steps
        step_size = cfg.step_size or job.default_step_size(d0, cfg.steps, STEP_SCALE)
        same = tasks.metric_a.preprocess == tasks.metric_b.preprocess  # else each checkpoint's record applies
        if cfg.method is MergeMethod.GEODESIC:  # (a peer's config records no step it does not take)
            cfg = dataclasses.replace(cfg, step_size=step_size, max_steps=max_steps)
        cfg = dataclasses.replace(cfg, data_a=tasks.data_a, data_b=tasks.data_b,
                                  image_size=tasks.reading[0], channels=tasks.reading[1],
                                  arch=tasks.arch, arch_kwargs=tasks.source_arch_kwargs,
                                  normalize=tasks.metric_a.preprocess if same else cfg.normalize,
                                  checkpoint=str(Path(cfg.checkpoint).resolve()),
                                  checkpoint_b=str(Path(cfg.checkpoint_b).resolve()))
        model = copy.deepcopy(tasks.model_a)
        # a network for both tasks: BatchNorm statistics from both tasks' inputs, at every evaluated network
        bn_data = job.mix([tasks.metric_a, tasks.metric_b], cfg.bn_samples) if has_batchnorm(model) else None
        epoch_size = len(tasks.metric_a) + len(tasks.metric_b)  # "epochs" count both tasks' training data
        return job.Setup(cfg, model, tasks.arch, tasks.arch_kwargs, tasks.sha_a, tasks.data_a,
                         BothTasks(tasks, device), epoch_size, bn_data, max_steps,
                         own={"tasks": tasks, "w_a": w_a, "w_b": w_b},
                         preprocess=tasks.metric_a.preprocess,  # task A's, as the data set they record
                         carry=tasks.carry)

    def walk(self, setup: job.Setup, recorder, state, device) -> job.Outcome:
        cfg, tasks = setup.cfg, setup.own["tasks"]
        pcfg = job.path_config(cfg, cfg.step_size, cfg.max_steps, land=False, combine=cfg.combine)
        result = walk(setup.model, NetworkTarget(setup.own["w_b"]), sources(cfg, tasks), pcfg, recorder,
                      reference=tasks.model_a, state=state, device=device)
        return job.Outcome(result.final)

    def peer_task(self, setup: job.Setup, record, device) -> PeerTask:
        tasks, own = setup.own["tasks"], setup.own
        return PeerTask(setup.model, tasks.metric_b, record, setup.cfg, device,
                        records=max(2, setup.cfg.steps // setup.cfg.save_every), w_a=own["w_a"], w_b=own["w_b"],
                        model_a=tasks.model_a, model_b=tasks.model_b, data_a=tasks.metric_a)

    def summarise(self, setup: job.Setup, writer: RunWriter, outcome: job.Outcome) -> dict[str, Any]:
        cfg = setup.cfg
        rows = writer.trace.rows()
        on_val = cfg.val_size > 0
        ka, kb = ("val_accuracy_a", "val_accuracy_b") if on_val else ("test_accuracy_a", "test_accuracy_b")
        best = select(rows, cfg.select, ka, kb)
        front = pareto_front(rows, ka, kb)
        keep = ("step", "t", "distance", "test_accuracy_a", "test_accuracy_b", "val_accuracy_a", "val_accuracy_b",
                "alpha", "checkpoint")
        writer.write_json("pareto.json", {"selected_on": "val" if on_val else "test", "front": [
            {k: r.get(k) for k in keep} for r in front]})
        writer.copy_network(best["checkpoint"], "best.safetensors")
        final, start = rows[-1], rows[0]

        def pick(r):
            return {k: r.get(k) for k in ("step", "t", "distance", "test_accuracy_a", "test_accuracy_b",
                                           "test_loss_a", "test_loss_b", "val_accuracy_a", "val_accuracy_b",
                                           "alpha", "checkpoint")}

        return {
            "best_file": "best.safetensors",
            "select": cfg.select.value,
            "selected_on": "val" if on_val else "test",
            "start": pick(start),
            "best": pick(best),
            "test_accuracy_a": best["test_accuracy_a"],
            "test_accuracy_b": best["test_accuracy_b"],
            "min_test_accuracy": min(best["test_accuracy_a"], best["test_accuracy_b"]),
            "pareto_size": len(front),
            **{k: final[k] for k in ("step", "length", "sample_passes", "epochs", "wall_time")},
        }


JOB = Merge()
run_merge = JOB.run
