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
* a node linear in its tangent-carrying inputs (a reshape, an average pooling, a sum of two branches, a
  product with a constant) by applying it to the tangents; its transpose through :mod:`torch.func`;
* a parameter the graph reads itself (a position embedding) by its own entry of the tangent;
* every other node that depends on the weights (a product of two branches, a LayerNorm, an attention
  layer, an item of a split) through :mod:`torch.func` on that node alone: its VJP closure built once
  per step, its JVP recomputing only that node.

Each node's outputs are computed by the network's own kernel, so they equal the network's bit for
bit (an output rounded differently could cross a ReLU's kink and change ``J u`` by a whole entry).
Nodes whose value does not depend on the weights (the input's preprocessing, shapes) carry no
tangent. A node that changes its first input in place (``nn.ReLU(inplace=True)``, ``x.relu_()``) runs
out of place on a copy when no other node reads that input: the same values, and the stored inputs of the
other rules stay intact. A graph whose parameters are not all read by layers called once each, that changes
in place a tensor other nodes read (or the input, or an assignment into a tensor), that returns more than
one tensor, or that torch.fx cannot trace has no plan
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
                          F.silu, F.mish, F.leaky_relu, F.softplus, F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid}
_ELEMENTWISE_METHODS = {"relu", "tanh", "sigmoid"}
_SHAPE_METHODS = {"size", "dim", "numel", "ndimension", "nelement"}
_RELU_FUNCTIONS, _RELU_METHODS = {torch.relu, F.relu}, {"relu"}  # derivative: where the output is positive
_ELEMENTWISE_MODULES = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SELU, nn.SiLU, nn.Mish, nn.LeakyReLU,
                        nn.Softplus, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid)
# nodes linear in their one tensor input (the others are constants: sizes, dims): J ṫ is the node applied to ṫ
_LINEAR_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
                     F.adaptive_avg_pool2d, F.avg_pool2d, torch.mean, torch.sum, operator.getitem, operator.neg}
_LINEAR_METHODS = {"flatten", "view", "reshape", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
                   "mean", "sum", "view_as", "reshape_as", "t"}
_LINEAR_MODULES = (nn.Flatten, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Identity, nn.Dropout)


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
        self.inplace: set[fx.Node] = set()  # nodes that change their first input in place, run on a copy of it
        for n in self.nodes:
            module = gm.get_submodule(n.target) if n.op == "call_module" else None
            if _inplace(n, module):
                first = n.args[0] if n.args else None
                if (n.target is operator.setitem or not isinstance(first, fx.Node) or len(first.users) != 1
                        or first.op not in ("call_module", "call_function", "call_method")):
                    raise Unsupported(f"{n.name} works in place on a tensor other nodes read")
                self.inplace.add(n)
            if n.op == "get_attr" and n.target in names:  # a parameter of its own (a position embedding)
                if n.target in claimed:
                    raise Unsupported(f"{n.target} is read twice")
                claimed.add(n.target)
                self.owned[n] = {"": n.target}
            elif n.op == "get_attr" and any(k.startswith(n.target + ".") for k in names):
                raise Unsupported(f"{n.target} is read outside its layer")
            if module is not None:
                own = {local: f"{n.target}.{local}" for local, _ in module.named_parameters()}
                if claimed & set(own.values()):
                    raise Unsupported(f"{n.target} is called more than once")
                claimed.update(own.values())
                self.owned[n] = own
        # whether every layer with parameters has its own rule (none goes through torch.func: --jvp auto takes the
        # plan only then; an attention or a LayerNorm through torch.func is slower than torch.func's whole product)
        self.native = all(n.op == "get_attr" or _linear_layer(n, gm.get_submodule(n.target))
                          or _batchnorm_layer(n, gm.get_submodule(n.target)) for n, own in self.owned.items() if own)
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


def _linear_layer(n: fx.Node, module: nn.Module | None) -> bool:
    """A Linear or 2-D convolution applied to one tensor (its own rule)."""
    return (type(module) in (nn.Linear, nn.Conv2d) and len(n.args) == 1 and not n.kwargs
            and getattr(module, "padding_mode", "zeros") == "zeros" and not isinstance(getattr(module, "padding", 0), str))


def _batchnorm_layer(n: fx.Node, module: nn.Module | None) -> bool:
    return type(module) in (nn.BatchNorm1d, nn.BatchNorm2d) and len(n.args) == 1 and not n.kwargs


def _shape_query(n: fx.Node) -> bool:
    """A node that reads a tensor's shape (``x.size(1)``, ``x.shape``): no tangent, whatever it reads."""
    return ((n.op == "call_method" and n.target in _SHAPE_METHODS)
            or (n.op == "call_function" and n.target is getattr and n.args[1:2] in (("shape",), ("ndim",)))
            or (n.op == "call_function" and n.target is len))


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


class _ParameterRule:
    """A parameter read by the graph itself (``self.pos``): its tangent is its own entry of ``u``."""

    def __init__(self, name: str, value: torch.Tensor):
        self.name, self.out = name, value

    def jvp(self, tangents: list, tangent: dict):
        return tangent[self.name]

    def vjp(self, c: torch.Tensor):
        return [], {self.name: c}


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


class _LinearNodeRule(_NodeRule):
    """A node linear in the inputs that carry a tangent (a reshape, a pooling average, a sum of two branches, a
    product with a constant): ``J ṫ`` is the node itself applied to the tangents; ``Jᵀ c`` through torch.func."""

    def __init__(self, fn, inputs: list[torch.Tensor], params):
        super().__init__(fn, inputs, {}, params)

    def jvp(self, tangents: list, tangent: dict):
        return self.fn({}, *[t if t is not None else torch.zeros_like(x) for t, x in zip(tangents, self.inputs)])


def _linear(n: fx.Node, module: nn.Module | None, varying: list[fx.Node]) -> bool:
    """Whether ``n`` (with no parameters of its own) is linear in its ``varying`` inputs: a reshape, an average
    or an item of the first and only one (its other arguments sizes and constants); a sum or difference of two;
    a product or quotient of one with a constant."""
    reads: list[fx.Node] = []  # every argument node, as often as it is read (``x * x`` reads ``x`` twice)
    fx.node.map_arg((n.args, n.kwargs), reads.append)
    first = len(varying) == 1 and n.args[:1] == (varying[0],) and reads.count(varying[0]) == 1
    if n.op == "call_module":
        return first and type(module) in _LINEAR_MODULES
    if n.op == "call_method":
        return first and n.target in _LINEAR_METHODS
    if n.op != "call_function":
        return False
    if n.target in (operator.add, operator.sub) and not n.kwargs:
        return len(n.args) == 2 and all(a in varying for a in n.args)
    if n.target in (operator.mul, torch.mul) and not n.kwargs:
        return len(n.args) == 2 and len(varying) == 1 and reads.count(varying[0]) == 1
    if n.target is operator.truediv:
        return first
    return first and n.target in _LINEAR_FUNCTIONS


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
        tuples: dict[fx.Node, tuple] = {}  # a node that returns several tensors -> (its varying inputs, module, own)
        gm = plan.gm
        for n in plan.nodes:
            if n.op == "output":
                continue
            if n.op == "placeholder":
                values[n] = x if n is plan.input else n.args[0]
                continue
            if n.op == "get_attr" and n.target in plan.owned.get(n, {}).values():
                values[n] = params[n.target].detach() if n.target in params else getattr(gm, n.target).detach()
                if n.target in params:
                    rule = _ParameterRule(n.target, values[n])
                    self.rules[n] = (rule, [])
                continue
            if n.op == "get_attr":
                values[n] = buffers[n.target] if n.target in buffers else getattr(gm, n.target)
                continue
            module = gm.get_submodule(n.target) if n.op == "call_module" else None
            own = plan.owned.get(n, {})
            varying = [a for a in _tensor_inputs(n) if a in self.rules]  # inputs that carry a tangent
            if any(a in tuples for a in _tensor_inputs(n)):  # an item of a split (``x.chunk(2)[0]``)
                if not (n.op == "call_function" and n.target is operator.getitem and len(_tensor_inputs(n)) == 1
                        and isinstance(n.args[1], (int, slice))):
                    raise Unsupported(f"{n.name} reads a tuple of tensors other than by item")
                item = values[n.args[0]][n.args[1]]
                if not isinstance(item, torch.Tensor) or not item.is_floating_point():  # (attention weights not
                    values[n] = item  # asked for: None)
                    continue
                rule = self._item_rule(n, *tuples[n.args[0]], buffers, values, params)
                values[n] = rule.out = rule.out.detach()
                self.rules[n] = (rule, tuples[n.args[0]][0])
                continue
            if not varying and not any(name in params for name in own.values()) or _shape_query(n):
                with torch.no_grad():
                    values[n] = self._call(n, module, own, params, buffers, values, {}, None)
                continue
            if n.users and all(u.op == "call_function" and u.target is operator.getitem for u in n.users):
                with torch.no_grad():  # (a tensor read only by indexing is computed twice: rare, and still right)
                    value = self._call(n, module, own, params, buffers, values, {}, None)
                if isinstance(value, (tuple, list)):  # a split into several tensors, an attention's (outputs, weights)
                    values[n], tuples[n] = value, (varying, module, own)
                    continue
            single = len(n.args) >= 1 and varying[:1] == [n.args[0]] and len(varying) == 1  # one varying input, first
            if _batchnorm_layer(n, module):
                rule = _BatchNormRule(module, own, params, values[n.args[0]])
            elif single and not own and (n.target in (F.max_pool2d, torch.max_pool2d)
                                         or type(module) is nn.MaxPool2d) and not n.kwargs.get("return_indices"):
                args, kwargs = fx.node.map_arg((n.args[1:], n.kwargs), lambda a: values[a])
                if module is not None:
                    args, kwargs = (module.kernel_size, module.stride, module.padding, module.dilation,
                                    module.ceil_mode), {}
                rule = _MaxPoolRule(values[n.args[0]], args, kwargs)
            elif _linear_layer(n, module):
                rule = _LinearRule(module, own, params, values[n.args[0]], bool(varying))
            else:
                def fn(p, *ins, n=n, module=module, own=own, varying=varying):
                    return self._call(n, module, own, {}, buffers, values, dict(zip(varying, ins)), p)

                ins = [values[a] for a in varying]
                elementwise = _elementwise(n, module) and not own and single
                relu = (type(module) is nn.ReLU or (n.op == "call_function" and n.target in _RELU_FUNCTIONS)
                        or (n.op == "call_method" and n.target in _RELU_METHODS))
                if elementwise:
                    rule = _ElementwiseRule(fn, ins[0], relu)
                elif not own and _linear(n, module, varying):
                    rule = _LinearNodeRule(fn, ins, params)
                else:
                    rule = _NodeRule(fn, ins, own, params)
            if not isinstance(rule.out, torch.Tensor) or not rule.out.is_floating_point():
                raise Unsupported(f"{n.name} does not give one floating-point tensor")
            values[n] = rule.out = rule.out.detach()
            self.rules[n] = (rule, varying)
        self.logits = values[plan.output]
        if plan.output not in self.rules:
            raise Unsupported("the outputs do not depend on the weights")

    def _item_rule(self, n: fx.Node, varying: list[fx.Node], module, own, buffers, values, params) -> "_NodeRule":
        """``split(...)[i]``, through torch.func on the split and the item together (the split has no rule; an
        item of a layer's tuple carries that layer's parameters)."""
        source, index = n.args[0], n.args[1]

        def fn(p, *ins):
            return self._call(source, module, own, {}, buffers, values, dict(zip(varying, ins)), p)[index]

        return _NodeRule(fn, [values[a] for a in varying], own, params)

    def _call(self, n: fx.Node, module, own, params, buffers, values, swapped, local_params):
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: swapped[a] if a in swapped else values[a])
        if n in self.plan.inplace:  # (its input is read by no other node: the same values, out of place)
            args = (args[0].clone(),) + tuple(args[1:])
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
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # (a branch on ``self.training`` is traced as the metric runs it: in eval mode)
    try:
        result = Plan(fx.symbolic_trace(model), space)
    except Exception:  # noqa: BLE001 (any tracing failure: control flow on values, unsupported Python)
        result = None
    finally:
        for m, training in modes:
            m.training = training
    _PLANS[model] = (space, result)
    return result
