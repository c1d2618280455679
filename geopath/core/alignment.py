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

Only "chain" networks are supported: Linear/Conv layers applied one after the other
in module-registration order (``mlp``, ``lenet5``, ``vgg11``), with element-wise
activations, pooling, BatchNorm and flattening between them. Residual connections,
concatenations or grouped convolutions tie the permutations of different layers
together; :func:`check_permutation_invariance` detects such models by testing that
random permutations really leave the outputs unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

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


def _unit_axes(layers: list[ChainLayer], k: int, keys: set[str]) -> list[_Axis]:
    """Every state-dict entry (among ``keys``) that a permutation of hidden layer ``k`` reorders."""
    layer, nxt = layers[k], layers[k + 1]
    own = [f"{layer.name}.weight", f"{layer.name}.bias"]
    if layer.batchnorm is not None:
        own += [f"{layer.batchnorm}.{s}" for s in _BN_STATE]
    axes = [_Axis(key, 0, 1) for key in own] + [_Axis(f"{nxt.name}.weight", 1, nxt.expand)]
    return [a for a in axes if a.key in keys]


def _block_index(perm: Tensor, expand: int) -> Tensor:
    """Index that moves whole blocks of ``expand`` consecutive entries: block ``i`` ← block ``perm[i]``."""
    return (perm[:, None] * expand + torch.arange(expand)).reshape(-1)


def _permute(t: Tensor, axis: _Axis, perm: Tensor) -> Tensor:
    return t.index_select(axis.dim, _block_index(perm, axis.expand).to(t.device))


def _unit_rows(t: Tensor, axis: _Axis, units: int) -> Tensor:
    """``t`` as a ``units × rest`` float64 matrix, one row per unit along ``axis``."""
    return t.movedim(axis.dim, 0).reshape(units, -1).to(torch.float64)


def _permute_state(layers: list[ChainLayer], state: dict[str, Tensor], perms: dict[int, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state`` with hidden layer ``k``'s units reordered by ``perms[k]`` (unit ``i`` ← ``perms[k][i]``)."""
    out = {key: t.clone() for key, t in state.items()}
    for k, perm in perms.items():
        for axis in _unit_axes(layers, k, set(state)):
            out[axis.key] = _permute(out[axis.key], axis, perm)
    return out


def _similarity(k: int, axes: dict[int, list[_Axis]], state_a: dict[str, Tensor], state_b: dict[str, Tensor],
                perms: dict[int, Tensor], units: int) -> Tensor:
    """``S[i, j]`` = <A's parameters at unit ``i``, B's at unit ``j``> of hidden layer ``k``.

    ``axes[j]`` lists the parameters hidden layer ``j`` reorders. B's tensors carry the
    current permutations of the other hidden layers (the previous layer's on the
    incoming weights, the next layer's on the outgoing ones).
    """
    sim = torch.zeros(units, units, dtype=torch.float64)
    for axis in axes[k]:
        b = state_b[axis.key]
        for j, others in axes.items():
            for other in others:
                if j != k and other.key == axis.key:
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

    ``model`` gives the architecture (its own weights are not used); it must be a chain
    network, which :func:`check_permutation_invariance` verifies. Returns the permuted
    copy of ``state_b`` and, for every hidden layer (every chain layer but the last),
    its permutation ``p`` as a LongTensor: unit ``i`` of the result is unit ``p[i]`` of B.
    """
    _check_states(model, state_a, state_b)
    layers = chain_layers(model)
    params = {name for name, _ in model.named_parameters()}
    perms = {k: torch.arange(layer.out_units) for k, layer in enumerate(layers[:-1])}
    axes = {k: _unit_axes(layers, k, params) for k in perms}
    order_gen = torch.Generator().manual_seed(seed)
    for _ in range(max_iter):
        improved = False
        for k in torch.randperm(len(perms), generator=order_gen).tolist():
            sim = _similarity(k, axes, state_a, state_b, perms, layers[k].out_units)
            _, cols = linear_sum_assignment(sim.numpy(), maximize=True)
            best = torch.as_tensor(cols, dtype=torch.long)
            rows = torch.arange(len(best))
            old, new = float(sim[rows, perms[k]].sum()), float(sim[rows, best].sum())
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[k], improved = best, True
        if not improved:
            break
    aligned = _permute_state(layers, state_b, perms)
    return aligned, {layers[k].name: perm for k, perm in perms.items()}


def _random_shuffle(units: int, gen: torch.Generator) -> Tensor:
    """A random permutation that is not the identity (when ``units > 1``), so every layer is tested."""
    perm = torch.randperm(units, generator=gen)
    return perm.roll(1) if units > 1 and torch.equal(perm, torch.arange(units)) else perm


@torch.no_grad()
def check_permutation_invariance(model: nn.Module, sample: Tensor, seed: int = 0) -> None:
    """Raise :class:`UsageError` unless randomly permuting ``model``'s hidden units keeps its outputs on ``sample``.

    Both networks run on copies in eval mode, float32, on the CPU (no TF32 convolutions,
    whose rounding could mask or fake a difference); ``model`` itself is untouched.
    """
    refusal = (f"--align supports chain networks (Linear/Conv layers applied in registration order, "
               f"e.g. mlp, lenet5, vgg11); {type(model).__name__} is not one")
    try:
        layers = chain_layers(model)
    except UsageError as e:
        raise UsageError(refusal) from e
    gen = torch.Generator().manual_seed(seed)
    perms = {k: _random_shuffle(layer.out_units, gen) for k, layer in enumerate(layers[:-1])}
    original = copy.deepcopy(model).to("cpu", torch.float32).eval()
    shuffled = copy.deepcopy(original)
    shuffled.load_state_dict(_permute_state(layers, original.state_dict(), perms))
    x = sample.to("cpu", torch.float32)
    if not torch.allclose(shuffled(x), original(x), rtol=1e-4, atol=1e-5):
        raise UsageError(refusal)
