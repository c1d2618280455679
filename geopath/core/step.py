"""One geodesic step: build the metric at ``w``, pose the trust-region problem, solve it.

    argmin_θ  θᵀ g θ − β θᵀ v   subject to  θᵀθ ≤ ε

``g`` is the metric operator on a batch of inputs, ``v`` the target's direction.
With ``anchor="start"`` (the default) the functional change is measured against
the *starting* network's outputs ``z0`` rather than only locally: the objective
becomes the Gauss-Newton model ``θᵀgθ + 2θᵀJᵀr − βθᵀv`` with ``r`` the output
residual to ``z0`` (see :func:`geopath.core.metric.output_residual`), which corrects the
drift that accumulates along the path. ``anchor="none"`` is the plain local step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from geopath.core.params import ParamSpace, buffers_of
from geopath.core.evaluate import has_batchnorm
from geopath.core.metric import BNStats, MetricKind, MetricOperator, metric_mode, output_distance, output_residual
from geopath.core.operators import Identity, RestrictedOperator
from geopath.core.targets import Target
from geopath.core.trust_region import TRMethod, trust_region_step
from geopath.core.choices import Anchor, JVPMode

# Cost model in forward+backward sample passes (a forward is counted 1/3, a
# backward 2/3; a JVP as two forwards): used for budgets and reports.
PASS_FORWARD = 1.0 / 3.0
PASS_VJP = 2.0 / 3.0
PASS_JVP = 2.0 / 3.0
PASS_MATVEC = PASS_JVP + PASS_VJP


def product_passes(G: MetricOperator) -> float:
    """The sample passes of the products taken on ``G`` so far: a JVP and a VJP each per sample, plus the forward
    pass an uncached product redoes."""
    return (PASS_MATVEC + PASS_FORWARD * G.forward_passes_per_product) * G.num_samples * G.matvecs


@dataclass(frozen=True)
class StepConfig:
    beta: float = 1.0
    step_size: float = 1e-4  # ε, the bound on θᵀθ
    cg_iters: int = 10
    cg_rtol: float = 1e-4
    damping: float = 0.0
    metric: MetricKind = MetricKind.LOGITS
    solver: TRMethod = TRMethod.STEIHAUG
    anchor: Anchor = Anchor.START
    label_weight: float = 1.0  # λ of anchor="start+labels"
    bn_stats: BNStats = BNStats.BATCH
    cache: bool = True  # linearise each micro-batch once per step (False: O(one micro-batch) memory)
    jvp_mode: JVPMode = JVPMode.FORWARD  # how a cached product computes J u

    def __post_init__(self):  # accept plain strings from library callers
        object.__setattr__(self, "bn_stats", BNStats(self.bn_stats))
        object.__setattr__(self, "metric", MetricKind(self.metric))
        object.__setattr__(self, "solver", TRMethod(self.solver))
        object.__setattr__(self, "anchor", Anchor(self.anchor))
        object.__setattr__(self, "jvp_mode", JVPMode(self.jvp_mode))


@dataclass
class Probe:
    """A few of the step's inputs with reference outputs, to check the step's real effect."""

    inputs: torch.Tensor
    reference: torch.Tensor  # reference outputs (anchored steps) or the outputs at the step's start
    before: float  # functional distance of the outputs at the step's start to ``reference``


@dataclass
class StepInfo:
    theta: torch.Tensor
    metric_length: float  # sqrt(θᵀ g θ): the functional length of this step
    drift: float  # functional distance to the reference outputs at the start of the step
    products: int
    on_boundary: bool
    sample_passes: float
    probe: Probe | None = None


PROBE_SAMPLES = 64
JUMP_FACTOR = 4.0


def step_fault(model: nn.Module, space: ParamSpace, w: torch.Tensor, info: StepInfo, metric: MetricKind,
               bn_stats: BNStats | str = BNStats.BATCH) -> str | None:
    """Why a step must not be taken, or ``None``.

    A step is refused when it is not finite, or when it moves the probe inputs' outputs
    much further from their reference than its metric length allows: under the
    linearisation the distance after the step is at most ``(√before + √(θᵀgθ))²``; more
    than ``JUMP_FACTOR`` times that is a sharp, unmodelled change (a breakdown of the
    local model, a NaN, an exploding unit). Costs one forward pass on the probe.
    """
    if not bool(torch.isfinite(info.theta).all()) or not math.isfinite(info.metric_length):
        return "the solver produced a non-finite step"
    if info.probe is None:
        return None
    p = info.probe
    with torch.no_grad(), metric_mode(model, bn_stats):
        out = functional_call(model, (space.unflatten(w + info.theta), buffers_of(model)), (p.inputs,))
    after = float(output_distance(metric, out, p.reference))
    bound = JUMP_FACTOR * (math.sqrt(max(p.before, 0.0)) + info.metric_length) ** 2
    if not math.isfinite(after):
        return "the step makes the network's outputs non-finite"
    if after > bound + 1e-9 * (1.0 + p.before):
        return (f"the step changes the function sharply (distance {p.before:.3g} -> {after:.3g}, "
                f"the local model allows {bound / JUMP_FACTOR:.3g})")
    return None


@dataclass
class MetricBatch:
    """One source of metric inputs for a step (one task's data, say).

    ``inputs`` are micro-batches; ``reference_logits`` (same split) are the outputs the
    step keeps with ``anchor="start"``; ``labels`` are used with ``anchor="labels"``.
    A step over several batches uses ``g = Σ_s ω_s g_s`` with weights ``ω_s`` normalised
    to sum to one, so one batch or many give metrics of the same scale.
    """

    inputs: list[torch.Tensor]
    reference_logits: list[torch.Tensor] | None = None
    labels: list[torch.Tensor] | None = None
    weight: float = 1.0


def _residuals(cfg: StepConfig, G: MetricOperator, batch: MetricBatch):
    """Output residuals ``r`` and the mean distance they are the gradient of, or ``(None, 0)``."""
    res, dist = None, 0.0
    if cfg.anchor.keeps_reference and batch.reference_logits is not None:
        pairs = list(zip(G.logits, batch.reference_logits))
        res = [output_residual(cfg.metric, z, z0) for z, z0 in pairs]
        dist = sum(float(output_distance(cfg.metric, z, z0)) * len(z) for z, z0 in pairs)
    if cfg.anchor.uses_labels and batch.labels is not None:
        lam = cfg.label_weight if cfg.anchor is Anchor.START_LABELS else 1.0
        pairs = list(zip(G.logits, batch.labels))
        ce = [lam * (torch.softmax(z, -1) - F.one_hot(y, z.shape[-1]).to(z.dtype)) for z, y in pairs]
        res = ce if res is None else [a + b for a, b in zip(res, ce)]
        dist += lam * sum(float(F.cross_entropy(z, y, reduction="sum")) for z, y in pairs)
    if res is None:
        return None, 0.0
    return res, G.comm.sum_float(dist) / G.num_samples


def geodesic_step(
    model: nn.Module,
    space: ParamSpace,
    w: torch.Tensor,
    batches: Sequence[MetricBatch],
    target: Target,
    cfg: StepConfig,
    free: torch.Tensor | None = None,
) -> StepInfo:
    """Compute one step ``θ`` from ``w`` (``w`` itself is not changed).

    ``batches`` are the step's :class:`MetricBatch` sources (one or more).
    ``free`` (bool, optional) restricts the step to those coordinates: the problem
    is solved with ``P A P`` and ``P b``, so the other coordinates stay exactly put.
    """
    total_weight = sum(bt.weight for bt in batches)
    b = cfg.beta * target.direction(w)
    G = None
    drift, passes, parts, probe = 0.0, 0.0, [], None
    for bt in batches:
        Gs = MetricOperator(model, space, w, bt.inputs, cfg.metric, cfg.bn_stats, cache=cfg.cache,
                            jvp_mode=cfg.jvp_mode)
        omega = bt.weight / total_weight
        parts.append(Gs)
        G = omega * Gs if G is None else G + omega * Gs
        passes += PASS_FORWARD * Gs.num_samples
        residuals, dist = _residuals(cfg, Gs, bt)
        if residuals is not None:
            b = b - 2.0 * omega * Gs.rmatvec_outputs(residuals)
            passes += PASS_VJP * Gs.num_samples
            drift += omega * dist
        if probe is None:
            probe = _probe(cfg, Gs, bt)
    A = 2.0 * G if cfg.damping <= 0 else 2.0 * (G + cfg.damping * Identity(G.n, G.dtype, G.device))
    if free is not None:
        free = free.to(b.device)
        A = RestrictedOperator(A, free)
        b = b * free
    res = trust_region_step(A, b, math.sqrt(cfg.step_size), cfg.solver, cfg.cg_iters, cfg.cg_rtol)
    theta_g_theta = res.curvature / 2.0
    if cfg.damping > 0:
        theta_g_theta -= cfg.damping * float(torch.dot(res.theta, res.theta))
    passes += sum(product_passes(Gs) for Gs in parts)
    passes += PASS_FORWARD * len(probe.inputs)  # the check in step_fault
    return StepInfo(
        theta=res.theta,
        metric_length=math.sqrt(max(theta_g_theta, 0.0)),
        drift=drift,
        products=max(Gs.matvecs for Gs in parts),
        on_boundary=res.on_boundary,
        sample_passes=passes,
        probe=probe,
    )


def _probe(cfg: StepConfig, G: MetricOperator, batch: MetricBatch) -> Probe:
    # with batch statistics an output depends on its whole micro-batch: probe all of it
    k = None if cfg.bn_stats is BNStats.BATCH and has_batchnorm(G.model) else PROBE_SAMPLES
    x, z = batch.inputs[0][:k], G.logits[0][:k]
    anchored = cfg.anchor.keeps_reference and batch.reference_logits is not None
    ref = batch.reference_logits[0][:k] if anchored else z
    return Probe(x, ref.detach(), float(output_distance(cfg.metric, z, ref)) if anchored else 0.0)
