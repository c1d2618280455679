"""The pull-back metric ``g(w) = mean_i J_iᵀ H_i J_i`` as a matrix-free operator.

``J_i`` is the Jacobian of the network's outputs (logits) for input ``i`` with
respect to the weights. Two choices of the output-space matrix ``H_i``:

* ``MetricKind.LOGITS`` — ``H = I``: the plain pull-back of the Euclidean metric on
  logits, ``g = JᵀJ`` (the source paper's metric).
* ``MetricKind.FISHER`` — ``H = diag(p) − ppᵀ`` with ``p = softmax(z)``: the Fisher
  information / generalized Gauss-Newton matrix of the softmax cross-entropy.

A product ``g·u`` is one forward-mode JVP (``J u``) followed by one reverse-mode
VJP (``Jᵀ(H J u)``), both through :mod:`torch.func`; ``J`` is never built. The
forward pass and VJP closure of each micro-batch are computed once when the
operator is created and reused for every product (CG calls it many times).

BatchNorm (``BNStats``): by default (``batch``) every BatchNorm layer normalises with the
statistics of the micro-batch itself, without reading or updating its running
statistics: the function the weights compute once running statistics are re-estimated
for them (geopath re-estimates them at every recorded network). ``running`` uses the
stored running statistics instead, held fixed — the function of the *old* statistics,
which drifts away from the real one as the weights move (measured: 10 % of the way
between two CIFAR-10 VGGs, 50 % test accuracy with the old statistics, 74 % with fresh
ones). Dropout is always off. Either way ``torch.func`` never meets a BatchNorm that
updates buffers.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from geopath.core import distributed, layerwise
from geopath.core.params import ParamSpace, buffers_of
from geopath.core.operators import LinearOperator
from geopath.core.choices import BNStats, JVPMode, MetricKind
from geopath.core.evaluate import has_batchnorm


@contextmanager
def bn_statistics(model: nn.Module, mode: BNStats | str) -> Iterator[None]:
    """Within the block, ``model`` is in eval mode and its BatchNorm layers use ``mode``'s statistics.

    ``batch``: each BatchNorm is put in training mode with ``track_running_stats`` off, so
    it normalises with the batch's statistics and neither reads nor writes its running
    statistics. The modules' modes and flags are restored afterwards.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns and not any(m.training for m in model.modules()):  # nothing to switch (a metric product's case)
        yield
        return
    modes = [(m, m.training) for m in model.modules()]  # every module's own (a caller's may differ by module)
    tracks = [(m, m.track_running_stats) for m in bns]
    model.eval()
    if BNStats(mode) is BNStats.BATCH:
        for m in bns:
            m.train()
            m.track_running_stats = False
    try:
        yield
    finally:
        for m, track in tracks:
            m.track_running_stats = track
        for m, training in modes:
            m.training = training  # (each module alone: train() would reset its children)


@contextmanager
def math_attention() -> Iterator[None]:
    """Within the block, attention runs as plain differentiable operations: ``nn.MultiheadAttention``'s
    (and ``nn.TransformerEncoderLayer``'s) fused fast path is off and ``scaled_dot_product_attention``
    uses its math kernel. Forward-mode AD — the JVP of every metric product — has no rule for the
    fused kernels; the math kernel computes the same function. Restored afterwards."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


@contextmanager
def metric_mode(model: nn.Module, bn_stats: BNStats | str) -> Iterator[None]:
    """The function the metric differentiates: ``model`` in eval mode with ``bn_stats``' BatchNorm
    statistics (:func:`bn_statistics`) and differentiable attention (:func:`math_attention`). Metric
    products, the reference outputs they are compared with and the step's fault check all run in it."""
    with bn_statistics(model, bn_stats), math_attention():
        yield


def _output_hessian_product(kind: MetricKind, logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    if MetricKind(kind) is MetricKind.LOGITS:
        return u
    p = torch.softmax(logits, dim=-1)
    return p * u - p * (p * u).sum(dim=-1, keepdim=True)


def output_residual(kind: MetricKind, logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. the logits of the functional distance to the reference outputs.

    LOGITS: ``z − z0`` (of ``½‖z − z0‖²``); FISHER: ``softmax(z) − softmax(z0)``
    (of ``KL(p0 ‖ p)``). Its output Hessian is exactly the ``H`` of the metric, so
    ``θᵀgθ + 2θᵀJᵀr`` is the Gauss-Newton model of twice that distance.
    """
    if MetricKind(kind) is MetricKind.LOGITS:
        return logits - reference_logits
    return torch.softmax(logits, dim=-1) - torch.softmax(reference_logits, dim=-1)


def output_distance(kind: MetricKind, logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """Mean per-sample functional distance (twice the loss whose gradient is above)."""
    if MetricKind(kind) is MetricKind.LOGITS:
        return ((logits - reference_logits) ** 2).sum(-1).mean()
    logp = torch.log_softmax(logits, -1)
    logp0 = torch.log_softmax(reference_logits, -1)
    return 2 * (logp0.exp() * (logp0 - logp)).sum(-1).mean()


def resolve_jvp_mode(mode: JVPMode | str, model: nn.Module) -> JVPMode:
    """``auto``: on the CPU ``layerwise`` (where the network has no plan, its plan fails the check, or a layer
    with parameters would go through torch.func inside it (an attention, a LayerNorm: slower than torch.func's
    whole product, bench/metric_speed.py), the operator takes torch.func's faster product instead,
    :func:`_torch_func_mode`); on other devices that
    torch.func product straight away: ``reverse`` for a network without BatchNorm, ``forward`` otherwise.

    Chosen by ``bench/metric_speed.py``. On the CPU (docs/performance.md) the layerwise product cost 0.70–1.23×
    a forward+backward pass on the MLP, LeNet-5 and both VGG11s in two runs, against 1.31–2.71× for the better
    torch.func mode. It has not run on a GPU yet, so on CUDA ``auto`` keeps what was measured there
    (docs/performance_cuda.md): reverse mode faster on the MLP (1.7–2.9× → 1.3–1.7× on an H200) and LeNet-5,
    forward mode on the VGG11s (BatchNorm; 1.8–3.1× against 2.7–4.4×)."""
    mode = JVPMode(mode)
    if mode is not JVPMode.AUTO:
        return mode
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return JVPMode.LAYERWISE if device.type == "cpu" else _torch_func_mode(model)


def _torch_func_mode(model: nn.Module) -> JVPMode:
    """The faster torch.func product for ``model`` (``auto``'s choice, and where ``layerwise`` cannot go)."""
    return JVPMode.FORWARD if has_batchnorm(model) else JVPMode.REVERSE


# per network: whether reverse-mode J u agreed with forward mode (checked once per process)
_REVERSE_CHECKED: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()
# per network: whether its layerwise plan's outputs, J u and Jᵀc agreed with torch.func (checked once per process)
_LAYERWISE_CHECKED: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()
CHECK_RTOL = 1e-4  # the largest difference a checked product may have, relative to its largest entry


def _close(got: torch.Tensor, exact: torch.Tensor) -> bool:
    scale = float(exact.abs().max()) + 1e-30
    return bool(torch.isfinite(got).all()) and float((got - exact).abs().max()) <= CHECK_RTOL * scale


def _layerwise_agrees(lin: "layerwise.Linearised", f, params: dict, space: ParamSpace) -> bool:
    """Whether ``lin`` (one micro-batch's layerwise linearisation) gives torch.func's outputs, ``J u`` and
    ``Jᵀc`` for a random ``u`` and ``c`` (a plan that misreads the graph differs in at least one)."""
    logits, vjp_fn = vjp(f, params)
    if lin.logits.shape != logits.shape or not _close(lin.logits, logits):
        return False
    gen = torch.Generator().manual_seed(0)
    u = space.unflatten(torch.randn(space.n, generator=gen, dtype=logits.dtype).to(logits.device))
    c = torch.randn(logits.shape, generator=gen, dtype=logits.dtype).to(logits.device)
    ju = jvp(f, (params,), (u,))[1]
    jtc = space.flatten(vjp_fn(c)[0])
    return _close(lin.jvp(u), ju) and _close(space.flatten(lin.vjp(c)), jtc)


class MetricOperator(LinearOperator):
    """``g(w)`` averaged over the samples of one or more micro-batches of inputs.

    ``cache=True`` (default) linearises each micro-batch once, when the operator is built,
    and reuses the forward pass for every product: fastest, but the activations of *all*
    micro-batches stay in memory. ``cache=False`` keeps only the outputs and redoes each
    micro-batch's forward pass inside every product, so memory is the parameters plus the
    activations of one micro-batch (one more forward pass per product).

    Under ``torchrun`` (:mod:`geopath.core.distributed`) the inputs are this rank's shard; every
    product is summed over ranks and divided by the total number of samples.
    """

    def __init__(
        self,
        model: nn.Module,
        space: ParamSpace,
        w: torch.Tensor,
        inputs: torch.Tensor | Sequence[torch.Tensor],
        kind: MetricKind | str = MetricKind.LOGITS,
        bn_stats: BNStats | str = BNStats.BATCH,
        cache: bool = True,
        comm: distributed.Single | None = None,
        jvp_mode: JVPMode | str = JVPMode.FORWARD,
    ):
        super().__init__(space.n, w.dtype, w.device)
        self.model, self.space = model, space
        self.kind = MetricKind(kind)
        self.bn_stats = BNStats(bn_stats)
        self.cache = cache
        self.jvp_mode = resolve_jvp_mode(jvp_mode, model) if cache else JVPMode.FORWARD
        plan = layerwise.plan(model, space) if self.jvp_mode is JVPMode.LAYERWISE else None
        if self.jvp_mode is JVPMode.LAYERWISE and (plan is None or _LAYERWISE_CHECKED.get(model) is False
                                                   or JVPMode(jvp_mode) is JVPMode.AUTO and not plan.native):
            self.jvp_mode = _torch_func_mode(model)  # a network the plan cannot follow (or, for auto, not by hand)
        self._linearised: list[layerwise.Linearised] = []  # per micro-batch (jvp_mode layerwise)
        self._transposed: list = []  # per micro-batch: u ↦ J u, the VJP of the cached VJP (jvp_mode reverse)
        self.comm = comm or distributed.current()
        self.micro_batches = [x for x in ([inputs] if isinstance(inputs, torch.Tensor) else inputs) if len(x)]
        self.local_samples = sum(int(x.shape[0]) for x in self.micro_batches)
        self.num_samples = int(round(self.comm.sum_float(float(self.local_samples))))
        if self.num_samples == 0:
            raise ValueError("the metric needs at least one input sample")
        self.params = space.unflatten(w.detach())
        self.buffers = buffers_of(model)
        self._logits, self._vjps = [], []
        with metric_mode(model, self.bn_stats):
            if self.jvp_mode is JVPMode.LAYERWISE:
                self._linearised = [self._linearise(plan, x) for x in self.micro_batches]
                if all(lin is not None for lin in self._linearised):
                    self._logits = [lin.logits for lin in self._linearised]
                    self._vjps = [lambda c, lin=lin: (lin.vjp(c),) for lin in self._linearised]
                    return
                self._linearised, self.jvp_mode = [], _torch_func_mode(model)
            for x in self.micro_batches:
                if cache:
                    logits, vjp_fn = vjp(self._f(x), self.params)
                    self._vjps.append(vjp_fn)
                else:
                    with torch.no_grad():
                        logits = self._f(x)(self.params)
                self._logits.append(logits.detach())

    def _linearise(self, plan: "layerwise.Plan", x: torch.Tensor) -> "layerwise.Linearised | None":
        """Micro-batch ``x``'s layerwise linearisation; the first one of a network is checked against torch.func,
        and a network whose plan fails (or cannot run on ``x``) uses torch.func's products from then on."""
        try:
            lin = plan.linearise(self.params, self.buffers, x)
            ok = _LAYERWISE_CHECKED.get(self.model)
            if ok is None:
                ok = _LAYERWISE_CHECKED[self.model] = _layerwise_agrees(lin, self._f(x), self.params, self.space)
        except (layerwise.Unsupported, RuntimeError):
            lin, ok = None, False
            _LAYERWISE_CHECKED[self.model] = False
        return lin if ok else None

    def _f(self, x):
        def f(params):
            return functional_call(self.model, (params, self.buffers), (x,))

        return f

    @property
    def logits(self) -> list[torch.Tensor]:
        """The outputs at ``w`` of each (local) micro-batch."""
        return self._logits

    @property
    def forward_passes_per_product(self) -> int:
        """Forward passes a product redoes per sample (0 with the cache, 1 without)."""
        return 0 if self.cache else 1

    def _vjp(self, i: int):
        if self.cache:
            return self._vjps[i]
        return vjp(self._f(self.micro_batches[i]), self.params)[1]

    def _jvp(self, i: int, x: torch.Tensor, tangent: dict) -> torch.Tensor:
        """``J u`` on micro-batch ``i``: forward mode, or (``jvp_mode`` reverse) the transpose of its cached VJP.

        The transpose is only as right as every layer's backward is differentiable: the first time a
        network is used in reverse mode its ``J u`` is checked against forward mode (once per network and
        process, :data:`_REVERSE_CHECKED`); a layer without a second derivative, or one whose backward is
        not differentiable (a silent zero), sends that network to forward mode for good."""
        if self.jvp_mode is JVPMode.LAYERWISE:
            return self._linearised[i].jvp(tangent)
        ok = _REVERSE_CHECKED.get(self.model)
        ju = self._reverse_jvp(i, tangent) if self.jvp_mode is JVPMode.REVERSE and ok is not False else None
        if ju is not None and ok:
            return ju
        exact = jvp(self._f(x), (self.params,), (tangent,))[1]
        if ju is not None:  # the first reverse product of this network: check it
            ok = _REVERSE_CHECKED[self.model] = _close(ju, exact)
            if ok:
                return ju
        if self.jvp_mode is JVPMode.REVERSE:  # this network's J u comes by forward mode from here on
            self.jvp_mode, self._transposed = JVPMode.FORWARD, []
        return exact

    def _reverse_jvp(self, i: int, tangent: dict) -> torch.Tensor | None:
        """``J u`` as the VJP of micro-batch ``i``'s cached VJP (built once per operator), or ``None`` (and the
        network marked) when a layer has no second derivative."""
        try:
            if len(self._transposed) <= i:
                vjp_fn = self._vjps[i]
                _, transposed = vjp(lambda c: vjp_fn(c)[0], torch.zeros_like(self._logits[i]))
                self._transposed.append(transposed)
            return self._transposed[i](tangent)[0]
        except RuntimeError:
            _REVERSE_CHECKED[self.model] = False
            return None

    def _matvec(self, u: torch.Tensor) -> torch.Tensor:
        tangent = self.space.unflatten(u)
        total = torch.zeros_like(u)
        with metric_mode(self.model, self.bn_stats):
            for i, (x, logits) in enumerate(zip(self.micro_batches, self._logits)):
                ju = self._jvp(i, x, tangent)
                (grads,) = self._vjp(i)(_output_hessian_product(self.kind, logits, ju))
                total += self.space.flatten(grads)
        return self.comm.sum_(total) / self.num_samples

    def rmatvec_outputs(self, cotangents: Sequence[torch.Tensor]) -> torch.Tensor:
        """``mean_i J_iᵀ c_i`` for per-sample output cotangents (one per local micro-batch)."""
        total = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        with metric_mode(self.model, self.bn_stats):
            for i, c in enumerate(cotangents):
                (grads,) = self._vjp(i)(c)
                total += self.space.flatten(grads)
        return self.comm.sum_(total) / self.num_samples
