"""The ``connect`` job: a low-loss path between two trained networks of one architecture.

Glue only. The geodesic walks from A to B (:func:`geopath.core.path.walk` toward a
:class:`~geopath.core.targets.NetworkTarget`, landing exactly on B) while keeping the
function of the *endpoints*: with ``--anchor endpoints`` (the default) each step's
outputs are anchored to ``(1 − t)·f_A + t·f_B``, the two networks' logits blended by
the path's progress ``t = 1 − ‖w − w_B‖/‖w_A − w_B‖`` (:class:`BlendedReference`), so
the function moves from A's to B's as the weights do. Peers from
:mod:`geopath.peers`: the linear path and a trained quadratic Bezier curve.

Every evaluated network gets fresh BatchNorm statistics first (mode connectivity's
classic pitfall). The trace holds test loss and accuracy along the path; the summary
the barriers; ``points/`` the ``--points`` networks evenly spaced in ``t``. If the
approach stops short of B (``--max-steps``), the straight landing segment is
evaluated too, so a jump can never hide a barrier.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geopath.jobs import common as job
from geopath.report.text import fmt
from geopath.peers._budget import samples_seen
from geopath.peers.task import PeerTask
from geopath.core.params import ParamSpace, load_vector, model_vector
from geopath.config import ConnectConfig, ConnectMethod
from geopath.core.evaluate import has_batchnorm
from geopath.core.choices import ConnectPath
from geopath.core.relax import chain_point, node_times, outputs, relax
from geopath.core.step import Anchor
from geopath.core.record import PeerRecorder
from geopath.errors import UsageError
from geopath.core.path import MetricSource, in_one_go, walk
from geopath.io.rundir import RunWriter
from geopath.core.targets import NetworkTarget
from geopath.io.trace import columns

COLUMNS = columns("test_accuracy", "test_loss", "train_loss", "alpha", "segment")
HEADLINE = ["min_test_accuracy", "accuracy_barrier", "loss_barrier", "epochs", "wall_time"]
STEP_SCALE = 2.0  # default ε = (STEP_SCALE · d0 / steps)²
JUMP_POINTS = 5  # interior points evaluated on a landing segment


class BlendedReference(nn.Module):
    """Outputs ``(1 − t)·a(x) + t·b(x)``; the path engine sets ``t`` before every step."""

    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.a, self.b, self.t = a, b, 0.0

    def forward(self, x):
        if self.t <= 0.0:
            return self.a(x)
        if self.t >= 1.0:
            return self.b(x)
        return (1.0 - self.t) * self.a(x) + self.t * self.b(x)


class Connect(job.Job):
    name, columns, headline, gate_on = "connect", COLUMNS, HEADLINE, "min_test_accuracy"

    @staticmethod
    def text(s: dict) -> list[str]:
        lines = [f"path:            {Path(s['out']) / 'points'}/ ({s['evaluated_points']} networks evaluated)",
                 f"endpoints:       A {fmt(s['test_accuracy_a'])}   B {fmt(s['test_accuracy_b'])} test accuracy",
                 f"along the path:  min accuracy {fmt(s['min_test_accuracy'])}   accuracy barrier "
                 f"{fmt(s['accuracy_barrier'])}   loss barrier {fmt(s['loss_barrier'])}",
                 f"path length:     {fmt(s['length'])}   steps: {s['step']}   epochs of data: {s['epochs']:.2f}"]
        if not s["reached"]:
            lines.append("note:            the approach stopped short of B; the landing segment was evaluated too "
                         "(rows marked jump)")
        return lines

    def prepare(self, cfg: ConnectConfig, device) -> job.Setup:
        a, b = job.load_pair(cfg)
        provenance = job.two_network_provenance(a, b)
        cfg = job.with_reading(cfg, a, b)
        splits = job.single_task_data(cfg, a, device, "network A")
        data_name, metric, test, train_eval = splits
        job.same_records(cfg, a, b, splits)
        job.check_inputs(b.model.to(device), test, device, "network B")
        model_a, model_b = a.model.to(device).eval(), b.model.to(device).eval()
        bn_data = metric.head(cfg.bn_samples) if has_batchnorm(model_a) else None
        if cfg.align:
            from geopath.core.alignment import check_permutation_invariance, same_function, weight_matching

            check_permutation_invariance(model_a, test.x[:8].to(device), seed=cfg.seed)
            aligned, _ = weight_matching(model_a, model_a.state_dict(), model_b.state_dict(), seed=cfg.seed)
            if not same_function(model_b, model_b.state_dict(), aligned, test.x[:8]):
                raise UsageError(f"--align: permuting {type(model_b).__name__}'s units changed network B's outputs; "
                                 "this network cannot be aligned")
            model_b.load_state_dict(aligned)
        space = ParamSpace.of(model_a)
        w_a, w_b = model_vector(model_a, space), model_vector(model_b, space)
        d0 = float(torch.linalg.vector_norm(w_b - w_a))
        if d0 == 0.0:
            raise UsageError(f"networks A and B have the same weights{' once aligned' if cfg.align else ''}: "
                             "there is no path to find")
        walking = cfg.method is ConnectMethod.GEODESIC and cfg.path is ConnectPath.WALK
        # the walk's resolved step size and step bound are recorded; a relaxed path or a peer reads neither
        max_steps = (cfg.max_steps or 4 * cfg.steps) if walking else cfg.max_steps
        step_size = (cfg.step_size or job.default_step_size(d0, cfg.steps, STEP_SCALE)) if walking else cfg.step_size
        cfg = dataclasses.replace(cfg, data=data_name, eval_data=job.recorded(cfg.eval_data),
                                  normalize=metric.preprocess, step_size=step_size,
                                  max_steps=max_steps, arch=a.arch, arch_kwargs=a.arch_kwargs,
                                  checkpoint=str(a.path.resolve()), checkpoint_b=str(b.path.resolve()))

        def evaluate_row(net) -> dict:
            row = job.task_metrics(net, test, device, "test_")
            row["train_loss"] = job.task_metrics(net, train_eval, device, "train_")["train_loss"]
            return row

        return job.Setup(cfg, copy.deepcopy(model_a), a.arch, a.arch_kwargs, a.sha256, data_name, evaluate_row,
                         len(metric), bn_data, max_steps or 0,
                         own={"metric": metric, "model_a": model_a, "model_b": model_b, "w_a": w_a, "w_b": w_b,
                              "d0": d0, "space": space}, preprocess=metric.preprocess,
                         carry={**job.carried(a), **provenance})

    def resumable(self, cfg) -> bool:
        return super().resumable(cfg) and cfg.path is ConnectPath.WALK  # (--path relax fits in one go)

    def begin(self, setup: job.Setup, writer: RunWriter, resume: bool, geodesic: bool):
        if resume and geodesic and not self.resumable(setup.cfg):
            raise UsageError("--resume continues --path walk runs; re-run --path relax with --overwrite")
        return super().begin(setup, writer, resume, geodesic)

    def walk(self, setup: job.Setup, recorder, state, device) -> job.Outcome:
        cfg, own = setup.cfg, setup.own
        if cfg.path is ConnectPath.RELAX:
            with in_one_go("--path relax's fit"):
                return _relax(setup, recorder, device)
        d0 = own["d0"]
        blend = BlendedReference(own["model_a"], own["model_b"])
        src = MetricSource(own["metric"], reference=blend if cfg.anchor is Anchor.ENDPOINTS else own["model_a"])
        pcfg = job.path_config(cfg, cfg.step_size, cfg.max_steps, land=True, milestones=cfg.points - 1)
        result = walk(setup.model, NetworkTarget(own["w_b"]), [src], pcfg, recorder, reference=own["model_a"],
                      state=state, device=device, before_step=lambda w, t: setattr(blend, "t", t))
        if result.approach_end is not None and result.landing_gap > cfg.tol * d0:
            _evaluate_jump(setup.model, own["space"], result.approach_end, own["w_b"], d0, result.final, recorder)
        return job.Outcome(result.final, reached=(result.state.landing_gap or 0.0) <= cfg.tol * d0)

    def peer_task(self, setup: job.Setup, record, device) -> PeerTask:
        own = setup.own
        return PeerTask(setup.model, own["metric"], record, setup.cfg, device, w_a=own["w_a"], w_b=own["w_b"])

    def summarise(self, setup: job.Setup, writer: RunWriter, outcome: job.Outcome) -> dict[str, Any]:
        return _summarise(setup.cfg, writer, outcome.reached, setup.own["d0"])


JOB = Connect()
run_connect = JOB.run


def _relax(setup: job.Setup, recorder, device) -> job.Outcome:
    """``--path relax``: fit the path's free nodes (:func:`geopath.core.relax.relax`), then record the networks at
    ``--points`` evenly spaced ``t`` and at every node; the last one is B exactly. The endpoints' outputs on the
    metric inputs cost two forward passes each (counted as 1/3 of a sample pass)."""
    cfg, own = setup.cfg, setup.own
    record = PeerRecorder(recorder)  # (its wall time starts here, so the fit is counted)
    metric = own["metric"]
    z_a, z_b = outputs(own["model_a"], metric, device), outputs(own["model_b"], metric, device)
    passes = int(round(cfg.relax_epochs * len(metric)))
    nodes = relax(setup.model, own["w_a"], own["w_b"], z_a, z_b, metric, passes, free=cfg.nodes,
                  batch_size=cfg.batch_size, lr=cfg.relax_lr, seed=cfg.seed, device=device)
    spent = samples_seen(passes, len(metric), cfg.batch_size) + 2 * len(metric) / 3  # (whole steps' samples)
    ts = sorted({round(t, 12) for t in (*(i / (cfg.points - 1) for i in range(cfg.points)), *node_times(cfg.nodes))})
    space, w_b = own["space"], nodes[-1]
    for i, t in enumerate(ts):
        w = chain_point(nodes, t)
        load_vector(setup.model, space, w)
        record(i, setup.model, spent, t=t, distance=float(torch.linalg.vector_norm(w_b - w)), alpha=t,
               final=i == len(ts) - 1)
    return job.Outcome(record.rows[-1], reached=True)


def _evaluate_jump(model, space, start, end, d0, final_row, recorder) -> None:
    """Evaluate interior points of the straight landing segment ``start → end`` (rows tagged ``jump``)."""
    net = copy.deepcopy(model)
    state = {k: final_row[k] for k in ("landed_at", "milestone", "landing_gap", "retries")}
    for k in range(1, JUMP_POINTS + 1):
        s = k / (JUMP_POINTS + 1)
        w = (1 - s) * start + s * end
        load_vector(net, space, w)
        dist = float(torch.linalg.vector_norm(end - w))
        recorder(final_row["step"], net, recorder.writer.out / "steps" / f"jump_{k:02d}.safetensors", t=1.0 - dist / d0,
                 distance=dist, length=final_row["length"], drift=final_row["drift"],
                 sample_passes=final_row["sample_passes"], clock=lambda: final_row["wall_time"], state=state,
                 segment="jump")


def _points(rows: list[dict], n: int) -> list[dict]:
    """The ``n`` rows nearest to ``t = k/(n−1)``: the start, interior points, the end.

    The landing segment's rows (``segment = jump``) are on the path too and take part.
    """
    on_path = [r for r in rows if r.get("t") is not None]
    end = next(r for r in reversed(rows) if r.get("segment") != "jump")
    out = [rows[0]]
    for k in range(1, n - 1):
        goal = k / (n - 1)
        out.append(min(on_path, key=lambda r: (abs(r["t"] - goal), r["step"])))
    out.append(end)
    return out


def _summarise(cfg: ConnectConfig, writer: RunWriter, reached: bool, d0: float) -> dict[str, Any]:
    rows = writer.trace.rows()
    start, end = rows[0], next(r for r in reversed(rows) if r.get("segment") != "jump")
    points = _points(rows, cfg.points)
    for i, r in enumerate(points):
        writer.copy_network(r["checkpoint"], f"points/point_{i:02d}.safetensors")
    keep = ("step", "t", "test_accuracy", "test_loss", "checkpoint")
    writer.write_json("points.json", [{**{k: r.get(k) for k in keep}, "file": f"points/point_{i:02d}.safetensors"}
                                      for i, r in enumerate(points)])
    losses = [r["test_loss"] for r in rows]
    accs = [r["test_accuracy"] for r in rows]
    end_loss = 0.5 * (start["test_loss"] + end["test_loss"])
    worse_end = min(start["test_accuracy"], end["test_accuracy"])
    return {
        "aligned": cfg.align,
        "reached": reached,
        "evaluated_points": len(rows),
        "distance_ab": d0,
        "test_accuracy_a": start["test_accuracy"],
        "test_accuracy_b": end["test_accuracy"],
        "test_loss_a": start["test_loss"],
        "test_loss_b": end["test_loss"],
        "min_test_accuracy": min(accs),
        "max_test_loss": max(losses),
        "loss_barrier": max(losses) - end_loss,
        "accuracy_barrier": worse_end - min(accs),
        **{k: end[k] for k in ("step", "length", "sample_passes", "epochs", "wall_time")},
    }
