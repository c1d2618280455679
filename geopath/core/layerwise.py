"""Metric products by each layer's own rule on the network's traced graph (``--jvp layerwise``).

torch.func's products see the network as one function: forward mode redoes the forward pass beside
the tangent at every ``J u``, and the transposed VJP differentiates a whole backward graph. For a
network :mod:`torch.fx` can trace, :func:`plan` reads the graph once, and :meth:`Plan.linearise` runs
it once per step and micro-batch, keeping what each node's derivative needs. A product then applies
each node's own linear map:

* ``nn.Linear`` and ``nn.Conv2d`` by hand: the tangent of ``a = W h + b`` is ``W ḣ + U h + u_b``
  (the layer's output is not computed again), its transpose the layer's ordinary backward;
* BatchNorm (batch or running statistics) through ATen's fused batch-norm backward, in both
  directions (its derivative is self-adjoint per channel);
* max pooling by the indices of its maxima, an activation of one tensor by its derivative (a
  tensor of the input's shape, kept once per step);
* every other node that depends on the weights (an average pooling, a sum, a product) through
  :mod:`torch.func` on that node alone: its VJP closure built once per step, its JVP recomputing
  only that node.

Each node's outputs are computed by the network's own kernel, so they equal the network's bit for
bit (an output rounded differently could cross a ReLU's kink and change ``J u`` by a whole entry).
Nodes whose value does not depend on the weights (the input's preprocessing, shapes) carry no
tangent. A graph whose parameters are not all read by layers called once each, that changes a
tensor in place, that returns more than one tensor, or that torch.fx cannot trace has no plan
(:func:`plan` returns ``None``): its products stay with torch.func. Nothing here decides whether a
plan computes the network's function: :class:`geopath.core.metric.MetricOperator` compares its
outputs and products with torch.func's once per network and process before it trusts them.
"""

from __future__ import annotations

import operator
import weakref
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.func import functional_call, jvp, vjp
from torch.nn import functional as F

from geopath.core.params import ParamSpace

_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.setitem}
# activations that act on each entry alone: their derivative is kept as one tensor of the input's shape
_ELEMENTWISE_FUNCTIONS = {torch.relu, F.relu, torch.tanh, F.tanh, torch.sigmoid, F.sigmoid, F.gelu, F.elu, F.selu,
                          F.silu, F.mish, F.leaky_relu, F.softplus, F.relu6, F.hardtanh}
_ELEMENTWISE_METHODS = {"relu", "tanh", "sigmoid"}
_RELU_FUNCTIONS, _RELU_METHODS = {torch.relu, F.relu}, {"relu"}  # derivative: where the output is positive
_ELEMENTWISE_MODULES = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SELU, nn.SiLU, nn.Mish, nn.LeakyReLU,
                        nn.Softplus, nn.ReLU6, nn.Hardtanh)


class Unsupported(Exception):
    """The graph has something a plan cannot follow."""


def _inplace(node: fx.Node, module: nn.Module | None) -> bool:
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.target in _INPLACE_FUNCTIONS or (name.endswith("_") and not name.startswith("__"))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("__")
    if node.op == "call_module":
        return getattr(module, "inplace", False) is True
    return False


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """The nodes ``node`` reads, each once, in order."""
    seen: dict[fx.Node, None] = {}
    fx.node.map_arg((node.args, node.kwargs), lambda a: seen.setdefault(a))
    return list(seen)


class Plan:
    """The traced graph of a network, with the parameters each layer owns."""

    def __init__(self, gm: fx.GraphModule, space: ParamSpace):
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        names = set(space.names)
        self.owned: dict[fx.Node, dict[str, str]] = {}  # call_module node -> {local name: space name}
        claimed: set[str] = set()
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if not placeholders or any(not n.args for n in placeholders[1:]):  # one input; other arguments defaulted
            raise Unsupported("not a network of one input")
        self.input = placeholders[0]
        for n in self.nodes:
            module = gm.get_submodule(n.target) if n.op == "call_module" else None
            if _inplace(n, module):
                raise Unsupported(f"{n.name} works in place")
            if n.op == "get_attr" and (n.target in names or any(k.startswith(n.target + ".") for k in names)):
                raise Unsupported(f"{n.target} is read outside its layer")
            if module is not None:
                own = {local: f"{n.target}.{local}" for local, _ in module.named_parameters()}
                if claimed & set(own.values()):
                    raise Unsupported(f"{n.target} is called more than once")
                claimed.update(own.values())
                self.owned[n] = own
        if not names <= claimed:
            raise Unsupported(f"{sorted(names - claimed)[:3]} are not read by a layer")
        outputs = [n for n in self.nodes if n.op == "output"]
        if len(outputs) != 1 or not isinstance(outputs[0].args[0], fx.Node):
            raise Unsupported("the network does not return one tensor")
        self.output = outputs[0].args[0]
        self.names = space.names

    def linearise(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                  x: torch.Tensor) -> "Linearised":
        """Run the graph on ``x`` at ``params``, keeping each node's linearisation."""
        return Linearised(self, params, buffers, x)


class _LinearRule:
    """``a = F.linear(h, W, b)`` (or ``conv2d``): tangent ``W ḣ + U h + u_b``, transpose the usual backward."""

    def __init__(self, module: nn.Module, own: dict[str, str], params, h: torch.Tensor, h_tangent: bool):
        self.conv = isinstance(module, nn.Conv2d)
        self.w = params.get(own["weight"], module.weight).detach()
        self.has_bias = "bias" in own
        b = params.get(own["bias"], module.bias).detach() if self.has_bias else None
        self.wname = own["weight"] if own["weight"] in params else None
        self.bname = own["bias"] if self.has_bias and own["bias"] in params else None
        self.h, self.h_tangent = h, h_tangent
        if self.conv:
            self.args = (module.stride, module.padding, module.dilation, module.groups)
            self.out = F.conv2d(h, self.w, b, *self.args)
        else:
            self.out = F.linear(h, self.w, b)

    def _apply(self, h, w, b):
        return F.conv2d(h, w, b, *self.args) if self.conv else F.linear(h, w, b)

    def jvp(self, tangents: list, tangent: dict):
        u, ub = tangent.get(self.wname), tangent.get(self.bname)
        out = None
        if tangents and tangents[0] is not None:
            out = self._apply(tangents[0], self.w, None)
        if u is not None or ub is not None:
            own = self._apply(self.h, u if u is not None else torch.zeros_like(self.w), ub)
            out = own if out is None else out + own
        return out

    def vjp(self, c: torch.Tensor):
        grads = {}
        if self.conv:
            bias_sizes = [self.w.shape[0]] if self.has_bias else None
            stride, padding, dilation, groups = self.args
            gh, gw, gb = torch.ops.aten.convolution_backward(
                c, self.h, self.w, bias_sizes, list(stride), list(padding), list(dilation), False, [0, 0], groups,
                [self.h_tangent, self.wname is not None, self.bname is not None])
        else:
            c2, h2 = c.reshape(-1, c.shape[-1]), self.h.reshape(-1, self.h.shape[-1])
            gh = c @ self.w if self.h_tangent else None
            gw = c2.T @ h2 if self.wname else None
            gb = c2.sum(0) if self.bname else None
        if self.wname:
            grads[self.wname] = gw
        if self.bname:
            grads[self.bname] = gb
        return [gh], grads


def _elementwise(n: fx.Node, module: nn.Module | None) -> bool:
    if n.op == "call_function":
        return n.target in _ELEMENTWISE_FUNCTIONS
    if n.op == "call_method":
        return n.target in _ELEMENTWISE_METHODS
    return type(module) in _ELEMENTWISE_MODULES


class _ElementwiseRule:
    """An activation of one tensor, entry by entry: ``J`` is the diagonal ``σ'(a)``, kept once per step."""

    def __init__(self, fn, a: torch.Tensor, relu: bool = False):
        if relu:  # (the derivative autograd uses, without a forward-mode pass)
            self.out = torch.relu(a)
            self.d = (self.out > 0).to(a.dtype)
        else:
            self.out, self.d = jvp(lambda t: fn({}, t), (a,), (torch.ones_like(a),))

    def jvp(self, tangents: list, tangent: dict):
        return self.d * tangents[0]

    def vjp(self, c: torch.Tensor):
        return [self.d * c], {}


class _MaxPoolRule:
    """2-D max pooling: each output is one input entry, found once per step (``return_indices``)."""

    def __init__(self, a: torch.Tensor, args: tuple, kwargs: dict):
        kwargs = {k: v for k, v in kwargs.items() if k != "return_indices"}  # (False, or the rule would not apply)
        self.out, self.idx = F.max_pool2d(a, *args, **kwargs, return_indices=True)
        self.shape = a.shape

    def jvp(self, tangents: list, tangent: dict):
        t = tangents[0]
        return t.flatten(-2).gather(-1, self.idx.flatten(-2)).view_as(self.out)

    def vjp(self, c: torch.Tensor):
        g = c.new_zeros(self.shape).flatten(-2)
        return [g.scatter_add_(-1, self.idx.flatten(-2), c.flatten(-2)).view(self.shape)], {}


class _BatchNormRule:
    """BatchNorm (1-D, 2-D) on the batch's statistics (their derivative included) or on fixed running ones.

    Both directions go through ATen's fused batch-norm backward: the derivative of ``x ↦ γ x̂`` is
    self-adjoint per channel, so the kernel that gives ``Jᵀ c`` gives ``J ṫ`` too. The tangent of ``γ``,
    ``x̂ u_γ``, is the per-channel affine map ``a · (σ⁻¹ u_γ) − μ σ⁻¹ u_γ`` of the input: ``x̂`` is never
    stored."""

    def __init__(self, module: nn.modules.batchnorm._BatchNorm, own: dict[str, str], params, a: torch.Tensor):
        self.dims = [d for d in range(a.dim()) if d != 1]
        self.view = [1, -1] + [1] * (a.dim() - 2)
        self.batch = module.training or module.running_mean is None
        if self.batch:
            var, self.mean = torch.var_mean(a, self.dims, unbiased=False)
            self.invstd = (var + module.eps).rsqrt()
            self.stats = (None, None, self.mean, self.invstd)
        else:
            self.mean, self.invstd = module.running_mean, (module.running_var + module.eps).rsqrt()
            self.stats = (module.running_mean, module.running_var, None, None)
        self.a, self.eps = a, module.eps
        gamma = params.get(own.get("weight"), module.weight)
        self.gamma = None if gamma is None else gamma.detach()
        beta = params.get(own.get("bias"), module.bias)
        self.out = F.batch_norm(a, *self.stats[:2], self.gamma, None if beta is None else beta.detach(),
                                self.batch, 0.0, module.eps)  # (the module's own kernel: its outputs to the bit)
        self.wname = own.get("weight") if own.get("weight") in params else None
        self.bname = own.get("bias") if own.get("bias") in params else None

    def _backward(self, c: torch.Tensor, mask: list[bool]):
        """ATen's batch-norm backward at this pass: ``(γ ∂x̂)ᵀ c``, ``Σ c x̂`` and ``Σ c`` per channel, as ``mask`` asks."""
        return torch.ops.aten.native_batch_norm_backward(c.contiguous(), self.a, self.gamma, *self.stats,
                                                         self.batch, self.eps, mask)

    def jvp(self, tangents: list, tangent: dict):
        out = None
        if tangents and tangents[0] is not None:
            out = self._backward(tangents[0], [True, False, False])[0]
        shift = tangent[self.bname] if self.bname else None  # per channel
        if self.wname:
            scale = self.invstd * tangent[self.wname]
            shift = -self.mean * scale if shift is None else shift - self.mean * scale
            out = (self.a * scale.view(self.view) if out is None
                   else out.addcmul_(self.a, scale.view(self.view)))  # (in place: ``out`` is this product's own)
        if shift is not None:
            out = shift.view(self.view).expand_as(self.a) if out is None else out.add_(shift.view(self.view))
        return out

    def vjp(self, c: torch.Tensor):
        gi, gw, gb = self._backward(c, [True, self.wname is not None, self.bname is not None])
        grads = {}
        if self.wname:
            grads[self.wname] = gw
        if self.bname:
            grads[self.bname] = gb
        return [gi], grads


class _NodeRule:
    """Any other node that depends on the weights, through torch.func on that node alone."""

    def __init__(self, fn, inputs: list[torch.Tensor], own: dict[str, str], params):
        self.own = {local: name for local, name in own.items() if name in params}
        self.fn = fn
        self.p = {local: params[name].detach() for local, name in self.own.items()}
        self.inputs = inputs
        self.out, self._vjp = vjp(fn, self.p, *inputs)

    def jvp(self, tangents: list, tangent: dict):
        tp = {local: tangent[name] for local, name in self.own.items()}
        ts = [t if t is not None else torch.zeros_like(x) for t, x in zip(tangents, self.inputs)]
        return jvp(self.fn, (self.p, *self.inputs), (tp, *ts))[1]

    def vjp(self, c: torch.Tensor):
        gp, *gins = self._vjp(c)
        return gins, {name: gp[local] for local, name in self.own.items()}


class Linearised:
    """One micro-batch's pass through a :class:`Plan`: its outputs, ``J u`` and ``Jᵀ c``.

    Its products must run with the modules in the modes of the pass (a BatchNorm's statistics, Dropout
    off): :class:`geopath.core.metric.MetricOperator` runs both inside the same ``metric_mode``."""

    def __init__(self, plan: Plan, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                 x: torch.Tensor):
        self.plan = plan
        self.params = params
        self.rules: dict[fx.Node, tuple[Any, list[fx.Node]]] = {}  # node -> (rule, the weight-dependent inputs)
        values: dict[fx.Node, Any] = {}
        gm = plan.gm
        for n in plan.nodes:
            if n.op == "output":
                continue
            if n.op == "placeholder":
                values[n] = x if n is plan.input else n.args[0]
                continue
            if n.op == "get_attr":
                values[n] = buffers[n.target] if n.target in buffers else getattr(gm, n.target)
                continue
            module = gm.get_submodule(n.target) if n.op == "call_module" else None
            own = plan.owned.get(n, {})
            varying = [a for a in _tensor_inputs(n) if a in self.rules]  # inputs that carry a tangent
            if not varying and not any(name in params for name in own.values()):
                with torch.no_grad():
                    values[n] = self._call(n, module, own, params, buffers, values, {}, None)
                continue
            single = len(n.args) >= 1 and varying[:1] == [n.args[0]] and len(varying) == 1  # one varying input, first
            if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d) and len(n.args) == 1 and not n.kwargs:
                rule = _BatchNormRule(module, own, params, values[n.args[0]])
            elif single and not own and (n.target in (F.max_pool2d, torch.max_pool2d)
                                         or type(module) is nn.MaxPool2d) and not n.kwargs.get("return_indices"):
                args, kwargs = fx.node.map_arg((n.args[1:], n.kwargs), lambda a: values[a])
                if module is not None:
                    args, kwargs = (module.kernel_size, module.stride, module.padding, module.dilation,
                                    module.ceil_mode), {}
                rule = _MaxPoolRule(values[n.args[0]], args, kwargs)
            elif (type(module) in (nn.Linear, nn.Conv2d) and len(n.args) == 1 and not n.kwargs
                    and getattr(module, "padding_mode", "zeros") == "zeros"
                    and not isinstance(getattr(module, "padding", 0), str)):
                rule = _LinearRule(module, own, params, values[n.args[0]], bool(varying))
            else:
                def fn(p, *ins, n=n, module=module, own=own, varying=varying):
                    return self._call(n, module, own, {}, buffers, values, dict(zip(varying, ins)), p)

                ins = [values[a] for a in varying]
                elementwise = _elementwise(n, module) and not own and single
                relu = (type(module) is nn.ReLU or (n.op == "call_function" and n.target in _RELU_FUNCTIONS)
                        or (n.op == "call_method" and n.target in _RELU_METHODS))
                rule = _ElementwiseRule(fn, ins[0], relu) if elementwise else _NodeRule(fn, ins, own, params)
            if not isinstance(rule.out, torch.Tensor) or not rule.out.is_floating_point():
                raise Unsupported(f"{n.name} does not give one floating-point tensor")
            values[n] = rule.out = rule.out.detach()
            self.rules[n] = (rule, varying)
        self.logits = values[plan.output]
        if plan.output not in self.rules:
            raise Unsupported("the outputs do not depend on the weights")

    def _call(self, n: fx.Node, module, own, params, buffers, values, swapped, local_params):
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: swapped[a] if a in swapped else values[a])
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        prefix = n.target + "."
        state = {k[len(prefix):]: v for k, v in buffers.items() if k.startswith(prefix)}
        state.update({local: params[name] for local, name in own.items() if name in params})
        state.update(local_params or {})
        return functional_call(module, state, tuple(args), kwargs)

    def jvp(self, tangent: dict[str, torch.Tensor]) -> torch.Tensor:
        """``J u`` for the parameter tangent ``tangent`` (a dict by name, as :meth:`ParamSpace.unflatten` gives)."""
        tangents: dict[fx.Node, torch.Tensor | None] = {}
        for n, (rule, varying) in self.rules.items():
            tangents[n] = rule.jvp([tangents[a] for a in varying], tangent)
        out = tangents[self.plan.output]
        return out if out is not None else torch.zeros_like(self.logits)

    def vjp(self, cotangent: torch.Tensor) -> dict[str, torch.Tensor]:
        """``Jᵀ c`` for output cotangents ``c``: the gradient of every parameter of the plan's space."""
        cts: dict[fx.Node, torch.Tensor] = {self.plan.output: cotangent}
        grads: dict[str, torch.Tensor] = {}
        for n in reversed(list(self.rules)):
            c = cts.pop(n, None)
            if c is None:
                continue
            rule, varying = self.rules[n]
            gins, gparams = rule.vjp(c)
            for a, g in zip(varying, gins):
                if g is not None:
                    cts[a] = g if a not in cts else cts[a] + g
            for name, g in gparams.items():
                grads[name] = g if name not in grads else grads[name] + g
        return {name: grads[name] if name in grads else torch.zeros_like(self.params[name])
                for name in self.plan.names}


_PLANS: "weakref.WeakKeyDictionary[nn.Module, tuple[ParamSpace, Plan | None]]" = weakref.WeakKeyDictionary()


def plan(model: nn.Module, space: ParamSpace) -> Plan | None:
    """The network's plan, or ``None`` when torch.fx cannot trace it or the graph has something a plan
    cannot follow (traced once per network and parameter space)."""
    cached = _PLANS.get(model)
    if cached is not None and cached[0] == space:
        return cached[1]
    try:
        result = Plan(fx.symbolic_trace(model), space)
    except Exception:  # noqa: BLE001 (any tracing failure: control flow on values, unsupported Python)
        result = None
    _PLANS[model] = (space, result)
    return result
