"""Permutation alignment of two networks ("weight matching").

Permuting the hidden units of a network, together with the rows of everything that
produces them and the columns of everything that consumes them, leaves its function
unchanged. Two independently trained networks A and B of one architecture therefore
sit in weight space at arbitrary relative permutations, and the straight line (or
geodesic) between them crosses high-loss regions that are an artefact of that choice.
Before connecting them we permute B's hidden units to bring its weights as close to
A's as possible:

    maximise  Σ_layers <W_A, P_l W_B P_{l-1}ᵀ>   over permutations P_l of each hidden layer,

which is the same as minimising ‖w_A − π(w_B)‖, since permutations keep ‖w_B‖.

This is Algorithm 1 ("weight matching") of Ainsworth, Hayase & Srinivasa, "Git
Re-Basin: Merging Models modulo Permutation Symmetries", ICLR 2023. The problem is
NP-hard jointly, so it is solved by coordinate descent over the hidden layers in a
random order: with every other permutation held fixed, the objective is linear in
P_l, and finding the best P_l is a linear assignment problem on the similarity
matrix ``S[i, j]`` = Σ <(A's parameters attached to unit i), (B's attached to unit j)>
— the unit's incoming weights, bias, BatchNorm scale and shift, and the next layer's
weights that read it. Sweeps repeat until one improves nothing.

Which entries a hidden "unit space" reorders is read from the model's graph
(``torch.fx``; :func:`permutation_spec`): every Linear/Conv layer opens a new space for
its outputs; BatchNorm, element-wise activations, pooling, dropout, flattening and
spatial means carry a space through; a residual sum ``a + b`` ties the spaces of ``a``
and ``b`` into one (ResNet's stream of identity shortcuts is one space per stage, its
1×1 projection shortcuts open the next); the network's inputs and outputs are never
permuted. Concatenations, grouped convolutions, attention and anything else unknown are
refused, and a model that cannot be traced falls back to the registration-order chain
(``mlp``, ``lenet5``, ``vgg11``). :func:`check_permutation_invariance` then confirms that
random permutations of the spaces found really leave the outputs unchanged.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, fx, nn
from torch.nn import functional as F

from geopath.errors import UsageError
from geopath.core.targets import _following_batchnorm

_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
_BN_STATE = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class ChainLayer:
    """One Linear/Conv layer of a chain network.

    ``expand`` is how many input features of this layer each output unit of the
    previous layer feeds: 1 normally, ``H*W`` for a Linear layer that reads the
    flattened ``C×H×W`` output of a convolution (channel-major, as ``flatten(1)``
    on NCHW gives). The first layer has ``expand == 1``.
    """

    name: str
    out_units: int
    batchnorm: str | None
    expand: int


@dataclass(frozen=True)
class _Axis:
    """Where a hidden layer's units live in one state-dict entry: along ``dim``, ``expand`` entries per unit."""

    key: str
    dim: int
    expand: int


def chain_layers(model: nn.Module) -> list[ChainLayer]:
    """The Linear/Conv1d/Conv2d layers of ``model`` in registration order (see :class:`ChainLayer`).

    Raises :class:`UsageError` if a layer's inputs are not a whole multiple of the
    previous layer's outputs, or a convolution is grouped.
    """
    layers: list[ChainLayer] = []
    for name, m in model.named_modules():
        if not isinstance(m, _LAYER_TYPES):
            continue
        if getattr(m, "groups", 1) != 1:
            raise UsageError(f"{name!r} is a grouped convolution; permutation alignment does not support it")
        n_in, n_out = m.weight.shape[1], m.weight.shape[0]
        expand = 1
        if layers:
            prev = layers[-1]
            if n_in % prev.out_units:
                raise UsageError(f"{name!r} takes {n_in} inputs, not a whole multiple of the "
                                 f"{prev.out_units} outputs of {prev.name!r}")
            expand = n_in // prev.out_units
        layers.append(ChainLayer(name, n_out, _following_batchnorm(model, name, n_out), expand))
    return layers


@dataclass(frozen=True)
class PermutationSpec:
    """The hidden unit spaces of a network and every state-dict entry each one reorders.

    Space ``k`` has ``units[k]`` units, is named after ``names[k]`` (the first layer that
    produces it) and reorders ``axes[k]``: the weights, biases and BatchNorm entries of its
    producers along dim 0, and its consumers' weights along dim 1 (``expand`` inputs per
    unit where a Linear layer reads a flattened ``C×H×W`` map).
    """

    names: list[str]
    units: list[int]
    axes: list[list[_Axis]]


def _chain_spec(model: nn.Module) -> PermutationSpec:
    """The spec of a chain network: every layer but the last owns one space (see :func:`chain_layers`)."""
    layers = chain_layers(model)
    axes = []
    for layer, nxt in zip(layers[:-1], layers[1:]):
        own = [f"{layer.name}.weight", f"{layer.name}.bias"]
        if layer.batchnorm is not None:
            own += [f"{layer.batchnorm}.{s}" for s in _BN_STATE]
        axes.append([_Axis(key, 0, 1) for key in own] + [_Axis(f"{nxt.name}.weight", 1, nxt.expand)])
    return _existing(model, PermutationSpec([c.name for c in layers[:-1]], [c.out_units for c in layers[:-1]], axes))


def _existing(model: nn.Module, spec: PermutationSpec) -> PermutationSpec:
    """``spec`` without the entries the model does not have (e.g. ``bias=False`` layers)."""
    keys = set(model.state_dict())
    return PermutationSpec(spec.names, spec.units, [[a for a in axes if a.key in keys] for axes in spec.axes])


# modules and functions that keep each unit in its own channel (dim 1): the space passes through
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardswish,
                 nn.Softmax, nn.LogSoftmax, nn.Dropout, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
                 nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)
_PASS_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, torch.tanh, torch.sigmoid,
                   F.hardswish, F.softmax, F.log_softmax, torch.softmax, F.dropout, torch.max_pool2d, F.max_pool2d,
                   F.avg_pool2d, F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool1d,
                   torch.flatten}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "softmax", "log_softmax", "flatten", "view", "reshape", "mean",
                 "contiguous"}
_ADD = {operator.add, operator.iadd, torch.add}
_SCALE = {operator.mul, operator.truediv, torch.mul}


@dataclass
class _Spaces:
    """Union-find over the unit spaces met while walking a traced graph."""

    units: list[int] = field(default_factory=list)
    owner: list[str] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    fixed: list[bool] = field(default_factory=list)
    axes: list[list[_Axis]] = field(default_factory=list)

    def new(self, units: int, owner: str, fixed: bool = False) -> int:
        for lst, v in ((self.units, units), (self.owner, owner), (self.parent, len(self.parent)),
                       (self.fixed, fixed), (self.axes, [])):
            lst.append(v)
        return len(self.units) - 1

    def root(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int, where: str) -> int:
        a, b = self.root(a), self.root(b)
        if a == b:
            return a
        if self.units[a] != self.units[b] and not (self.fixed[a] or self.fixed[b]):
            raise UsageError(f"{where} adds {self.units[a]} to {self.units[b]} channels")
        a, b = min(a, b), max(a, b)  # the earlier space names the union
        self.parent[b] = a
        self.fixed[a] = self.fixed[a] or self.fixed[b]
        return a


def _inputs(node: fx.Node) -> list[fx.Node]:
    """The graph nodes among ``node``'s positional and keyword arguments, in order."""
    return [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]


def _traced_spec(model: nn.Module) -> PermutationSpec | None:
    """The spec read from ``model``'s ``torch.fx`` graph (see the module docstring); ``None`` if the model
    cannot be traced symbolically.

    Raises :class:`UsageError` on an operation it does not know to keep units in place, or a
    layer applied more than once (its weights would be permuted once per use).
    """
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - symbolic tracing fails on data-dependent control flow
        return None
    modules = dict(model.named_modules())
    called: set[str] = set()
    sp = _Spaces()
    val: dict[fx.Node, int | None] = {}

    def space(arg, where: str) -> int:
        if not isinstance(arg, fx.Node) or val.get(arg) is None:
            raise UsageError(f"{where}: its input is not a tensor this alignment follows")
        return sp.root(val[arg])

    for node in graph.nodes:
        where = f"{node.op} {node.target!s}"
        if node.op == "placeholder":
            val[node] = sp.new(0, "input", fixed=True)
        elif node.op == "output":
            for arg in node.all_input_nodes:
                if val.get(arg) is not None:
                    sp.fixed[space(arg, where)] = True
        elif node.op == "call_module":
            m = modules[node.target]
            if node.target in called and not isinstance(m, _PASS_MODULES):
                raise UsageError(f"{node.target!r} is applied more than once; permutation alignment needs each "
                                 "layer's weights in one place")
            called.add(node.target)
            s_in = space(_inputs(node)[0] if _inputs(node) else None, f"{node.target!r}")
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                if getattr(m, "groups", 1) != 1:
                    raise UsageError(f"{node.target!r} is a grouped convolution; permutation alignment does not "
                                     "support it")
                n_out, n_in = m.weight.shape[0], m.weight.shape[1]
                if not sp.fixed[s_in]:
                    if n_in % sp.units[s_in]:
                        raise UsageError(f"{node.target!r} takes {n_in} inputs, not a whole multiple of the "
                                         f"{sp.units[s_in]} units it reads")
                    sp.axes[s_in].append(_Axis(f"{node.target}.weight", 1, n_in // sp.units[s_in]))
                s_out = sp.new(n_out, node.target)
                sp.axes[s_out] += [_Axis(f"{node.target}.weight", 0, 1), _Axis(f"{node.target}.bias", 0, 1)]
                val[node] = s_out
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                if not sp.fixed[s_in] and m.num_features != sp.units[s_in]:
                    raise UsageError(f"{node.target!r} normalises {m.num_features} channels of "
                                     f"{sp.units[s_in]} units")
                sp.axes[s_in] += [_Axis(f"{node.target}.{e}", 0, 1) for e in _BN_STATE]
                val[node] = s_in
            elif isinstance(m, _PASS_MODULES):
                if isinstance(m, nn.Flatten) and m.start_dim != 1:
                    raise UsageError(f"{node.target!r} flattens from dim {m.start_dim}, not 1")
                val[node] = s_in
            else:
                raise UsageError(f"{node.target!r} is a {type(m).__name__}, which permutation alignment does not "
                                 "know to keep units in place")
        elif node.op == "call_function" and node.target in _ADD:
            spaces = [space(a, where) for a in _inputs(node)]
            s = spaces[0]
            for other in spaces[1:]:
                s = sp.union(s, other, f"{node.name}")
            val[node] = s
        elif node.op == "call_function" and (node.target in _PASS_FUNCTIONS or node.target in _SCALE):
            tensors = _inputs(node)
            if len(tensors) != 1:
                raise UsageError(f"{where}: combines {len(tensors)} tensors")
            val[node] = space(tensors[0], where)
        elif (node.op == "call_method" and node.target == "size") or (
                node.op == "call_function" and node.target in (getattr, operator.getitem)
                and isinstance(node.args[0], fx.Node) and (val.get(node.args[0]) is None or node.args[1] == "shape")):
            val[node] = None  # a shape, or an entry of one (e.g. ``x.view(x.shape[0], -1)``)
        elif node.op == "call_method" and node.target in _PASS_METHODS | {"add", "add_", "mul", "div"}:
            tensors = [a for a in _inputs(node) if val.get(a) is not None]
            s = space(tensors[0] if tensors else None, where)
            for other in tensors[1:]:
                if node.target not in ("add", "add_"):
                    raise UsageError(f"{where}: combines two tensors")
                s = sp.union(s, space(other, where), node.name)
            val[node] = s
        else:
            raise UsageError(f"{where} is an operation permutation alignment does not know to keep units in place")

    roots = sorted({sp.root(s) for s in range(len(sp.units))} - {r for r in range(len(sp.units)) if sp.fixed[r]})
    spec = PermutationSpec([sp.owner[r] for r in roots], [sp.units[r] for r in roots], [[] for _ in roots])
    index = {r: i for i, r in enumerate(roots)}
    for s, axes in enumerate(sp.axes):
        r = sp.root(s)
        if r in index:
            spec.axes[index[r]].extend(axes)
    return _existing(model, spec)


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The unit spaces of ``model``: read from its ``torch.fx`` graph, or from its chain of layers where the
    graph cannot be traced (the invariance check then decides). Raises :class:`UsageError` where the graph
    holds an operation the tracer does not follow, or neither way reads the network."""
    spec = _traced_spec(model)  # (a UsageError: the graph shows an operation that may mix units; refused)
    return spec if spec is not None else _chain_spec(model)


def _block_index(perm: Tensor, expand: int) -> Tensor:
    """Index that moves whole blocks of ``expand`` consecutive entries: block ``i`` ← block ``perm[i]``."""
    return (perm[:, None] * expand + torch.arange(expand)).reshape(-1)


def _permute(t: Tensor, axis: _Axis, perm: Tensor) -> Tensor:
    return t.index_select(axis.dim, _block_index(perm, axis.expand).to(t.device))


def _unit_rows(t: Tensor, axis: _Axis, units: int) -> Tensor:
    """``t`` as a ``units × rest`` float64 matrix, one row per unit along ``axis``."""
    return t.movedim(axis.dim, 0).reshape(units, -1).to(torch.float64)


def _permute_state(spec: PermutationSpec, state: dict[str, Tensor], perms: dict[int, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state`` with space ``k``'s units reordered by ``perms[k]`` (unit ``i`` ← ``perms[k][i]``)."""
    out = {key: t.clone() for key, t in state.items()}
    for k, perm in perms.items():
        for axis in spec.axes[k]:
            out[axis.key] = _permute(out[axis.key], axis, perm)
    return out


def _similarity(k: int, axes: list[list[_Axis]], state_a: dict[str, Tensor], state_b: dict[str, Tensor],
                perms: dict[int, Tensor], units: int) -> Tensor:
    """``S[i, j]`` = <A's parameters at unit ``i``, B's at unit ``j``> of space ``k``.

    ``axes[j]`` lists the parameters space ``j`` reorders. B's tensors carry the current
    permutations of the other axes of each tensor (the previous space's on a layer's
    inputs, the next one's on its outputs).
    """
    sim = torch.zeros(units, units, dtype=torch.float64)
    for axis in axes[k]:
        b = state_b[axis.key]
        for j, others in enumerate(axes):
            for other in others:
                if other.key == axis.key and other.dim != axis.dim:
                    b = _permute(b, other, perms[j])
        sim += (_unit_rows(state_a[axis.key], axis, units) @ _unit_rows(b, axis, units).T).cpu()
    return sim


def _check_states(model: nn.Module, state_a: dict[str, Tensor], state_b: dict[str, Tensor]) -> None:
    expected = set(model.state_dict())
    for label, state in (("A", state_a), ("B", state_b)):
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise UsageError(f"network {label} does not fit {type(model).__name__}: "
                             f"missing {missing[:3]}, unexpected {extra[:3]}")


def weight_matching(model: nn.Module, state_a: dict[str, Tensor], state_b: dict[str, Tensor],
                    max_iter: int = 100, seed: int = 0) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Permute B's hidden units to match A's (see module docstring).

    ``model`` gives the architecture (its own weights are not used; see
    :func:`permutation_spec`, and :func:`check_permutation_invariance` to verify it).
    Returns the permuted copy of ``state_b`` and, for every hidden unit space, named after
    the first layer producing it, its permutation ``p`` as a LongTensor: unit ``i`` of the
    result is unit ``p[i]`` of B.
    """
    _check_states(model, state_a, state_b)
    spec = permutation_spec(model)
    params = {name for name, _ in model.named_parameters()}
    perms = {k: torch.arange(units) for k, units in enumerate(spec.units)}
    axes = [[a for a in space if a.key in params] for space in spec.axes]
    order_gen = torch.Generator().manual_seed(seed)
    for _ in range(max_iter):
        improved = False
        for k in torch.randperm(len(perms), generator=order_gen).tolist():
            sim = _similarity(k, axes, state_a, state_b, perms, spec.units[k])
            _, cols = linear_sum_assignment(sim.numpy(), maximize=True)
            best = torch.as_tensor(cols, dtype=torch.long)
            rows = torch.arange(len(best))
            old, new = float(sim[rows, perms[k]].sum()), float(sim[rows, best].sum())
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[k], improved = best, True
        if not improved:
            break
    aligned = _permute_state(spec, state_b, perms)
    return aligned, {spec.names[k]: perm for k, perm in perms.items()}


def _random_shuffle(units: int, gen: torch.Generator) -> Tensor:
    """A random permutation that is not the identity (when ``units > 1``), so every layer is tested."""
    perm = torch.randperm(units, generator=gen)
    return perm.roll(1) if units > 1 and torch.equal(perm, torch.arange(units)) else perm


@torch.no_grad()
def check_permutation_invariance(model: nn.Module, sample: Tensor, seed: int = 0) -> None:
    """Raise :class:`UsageError` unless randomly permuting ``model``'s hidden unit spaces keeps its outputs on
    ``sample``.

    Both networks run on copies in eval mode, float32, on the CPU (no TF32 convolutions,
    whose rounding could mask or fake a difference); ``model`` itself is untouched.
    """
    refusal = (f"--align supports networks of Linear/Conv layers in a chain or with residual sums "
               f"(e.g. mlp, lenet5, vgg11, resnet20); {type(model).__name__} is not one")
    try:
        spec = permutation_spec(model)
    except UsageError as e:
        raise UsageError(f"{refusal} ({e})") from e
    gen = torch.Generator().manual_seed(seed)
    perms = {k: _random_shuffle(units, gen) for k, units in enumerate(spec.units)}
    original = copy.deepcopy(model).to("cpu", torch.float32).eval()
    shuffled = copy.deepcopy(original)
    shuffled.load_state_dict(_permute_state(spec, original.state_dict(), perms))
    x = sample.to("cpu", torch.float32)
    if not torch.allclose(shuffled(x), original(x), rtol=1e-4, atol=1e-5):
        raise UsageError(refusal)


@torch.no_grad()
def same_function(model: nn.Module, state: dict[str, Tensor], permuted: dict[str, Tensor], sample: Tensor) -> bool:
    """Whether ``model`` computes the same outputs on ``sample`` with ``state`` and with ``permuted`` (copies in
    eval mode, float32, on the CPU): the check of the permutation actually applied, after the random one of
    :func:`check_permutation_invariance`."""
    nets = []
    for s in (state, permuted):
        net = copy.deepcopy(model).to("cpu", torch.float32).eval()
        net.load_state_dict({k: v.to("cpu") for k, v in s.items()})
        nets.append(net)
    x = sample.to("cpu", torch.float32)
    return torch.allclose(nets[0](x), nets[1](x), rtol=1e-4, atol=1e-5)
