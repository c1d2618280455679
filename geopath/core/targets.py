"""Targets: where a path is going. Small strategy objects over flat weight vectors.

A target answers four questions about a point ``w`` of weight space:

* ``direction(w)`` — the vector ``v(w)`` the step is pulled along;
* ``distance(w)`` — how far ``w`` still is from the target (Euclidean);
* ``project(w)`` — the nearest point of the target (the path's endpoint);
* ``refresh(w)`` — a hook called before each step (dynamic masks re-choose here).

The sparse targets are hyperplanes ``{w : w[mask] = 0}``: ``v(w) = P(w) − w``. A
:class:`NetworkTarget` is a single point, a second network ``w_B``: ``v(w) = w_B − w``.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from geopath.core.params import ParamSpace
from geopath.errors import UsageError
from geopath.core.choices import MaskScope


def prunable_parameters(model: nn.Module) -> list[str]:
    """Names of the weights (not biases, not norms) of every Linear and Conv layer."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.weight.requires_grad:
            out.append(f"{name}.weight" if name else "weight")
    return out


class Target:
    """Base class of every target; see module docstring."""

    name = "target"

    def direction(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def distance(self, w: torch.Tensor) -> float:
        raise NotImplementedError

    def project(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def refresh(self, w: torch.Tensor) -> None:
        return None

    def free(self) -> torch.Tensor | None:
        """Coordinates that may still move once the path is on the target (``None``: none)."""
        return None

    def describe(self) -> dict:
        return {"target": self.name}


class HyperplaneTarget(Target):
    """``{w : w[mask] = values[mask]}`` for a boolean ``mask`` over the flat weight vector.

    ``values`` defaults to zero (a sparse hyperplane). ``free`` are the coordinates
    that may move once the path is on the target (default: those off the mask); a
    transition that restores units pins them to their old values for the approach and
    frees them again on the target.
    """

    name = "hyperplane"

    def __init__(self, mask: torch.Tensor, values: torch.Tensor | None = None, free: torch.Tensor | None = None):
        self.mask = mask.bool()
        self.values = None if values is None else values.detach().clone()
        self._free = None if free is None else free.bool()

    def _mask_at(self, w):
        """The mask on ``w``'s device, moved there once (not copied again at every call)."""
        if self.mask.device != w.device:
            self.mask = self.mask.to(w.device)
        return self.mask

    def _c(self, w):
        if self.values is None:
            return torch.zeros_like(w)
        if self.values.device != w.device:
            self.values = self.values.to(w.device)
        return self.values.to(w.dtype)

    def direction(self, w):
        return torch.where(self._mask_at(w), self._c(w) - w, torch.zeros_like(w))

    def distance(self, w):
        off = w if self.values is None else w - self._c(w)
        return float(torch.linalg.vector_norm(off.masked_fill(~self._mask_at(w), 0)))

    def project(self, w):
        return torch.where(self._mask_at(w), self._c(w), w)

    def free(self):
        return ~self.mask if self._free is None else self._free

    def describe(self):
        return {"target": self.name, "masked": int(self.mask.sum())}


class NetworkTarget(Target):
    """A second network ``w_B`` of the same architecture: ``v(w) = w_B − w``.

    ``merge`` walks toward it without landing (the path's networks serve both tasks on
    the way); ``connect`` lands on it exactly (the path ends at the second optimum).
    """

    name = "network"

    def __init__(self, w_target: torch.Tensor):
        self.w = w_target.detach().clone()

    def direction(self, w):
        return self.w.to(w) - w

    def distance(self, w):
        return float(torch.linalg.vector_norm(w - self.w.to(w)))

    def project(self, w):
        return self.w.to(w).clone()

    def describe(self):
        return {"target": self.name, "parameters": int(self.w.numel())}


def _smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    if k > 0:
        idx = torch.topk(values.abs(), k, largest=False, sorted=False).indices
        mask[idx] = True
    return mask


class MagnitudeTarget(HyperplaneTarget):
    """Unstructured magnitude sparsity: the ``sparsity`` fraction of smallest weights.

    With ``dynamic=True`` the mask is re-chosen from the current weights before
    every step (weights may leave and re-enter); otherwise it is fixed at the start.
    With ``scores`` (one non-negative number per coordinate, e.g. the metric's diagonal
    from :func:`geopath.core.saliency.metric_diagonal`) weights are ranked by ``w² · score``
    (Optimal Brain Damage's saliency) instead of ``|w|``.
    """

    name = "magnitude"

    def __init__(self, space: ParamSpace, w0: torch.Tensor, sparsity: float,
                 parameters: Sequence[str], scope: MaskScope | str = MaskScope.GLOBAL, dynamic: bool = False,
                 scores: torch.Tensor | None = None):
        if not 0.0 <= sparsity < 1.0:
            raise UsageError(f"sparsity must be in [0, 1), got {sparsity}")
        unknown = [p for p in parameters if p not in space.names]
        if unknown:
            raise UsageError(f"unknown parameters for pruning: {', '.join(unknown)}")
        if not parameters:
            raise UsageError("no prunable parameters (no Linear or Conv layers found)")
        self.space, self.sparsity, self.parameters = space, float(sparsity), list(parameters)
        self.scope, self.dynamic = MaskScope(scope), dynamic
        self.scores = None if scores is None else scores.detach()
        slices = space.slices()
        self._slices = [slices[p] for p in self.parameters]
        super().__init__(self._choose(w0))

    def _ranked(self, w: torch.Tensor) -> torch.Tensor:
        """What the smallest are chosen by: ``|w|``, or ``w² · scores``."""
        if self.scores is None:
            return w
        return w.pow(2) * self.scores.to(w)

    def _choose(self, w: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(w, dtype=torch.bool)
        w = self._ranked(w)
        if self.scope is MaskScope.GLOBAL:
            values = torch.cat([w[s] for s in self._slices])
            chosen = _smallest(values, int(round(self.sparsity * values.numel())))
            start = 0
            for s in self._slices:
                k = s.stop - s.start
                mask[s] = chosen[start:start + k]
                start += k
        else:
            for s in self._slices:
                mask[s] = _smallest(w[s], int(round(self.sparsity * (s.stop - s.start))))
        return mask

    def refresh(self, w):
        if self.dynamic:
            self.mask = self._choose(w)

    def rechosen(self, w: torch.Tensor, sparsity: float) -> "MagnitudeTarget":
        """A fixed mask at ``w`` with ``sparsity``, by the same ranking (magnitude, or ``w²·scores``) and scope.
        Zero weights rank lowest, so masks re-chosen at growing sparsity from weights held at zero are nested."""
        return MagnitudeTarget(self.space, w, sparsity, self.parameters, self.scope, scores=self.scores)

    def stage(self, w: torch.Tensor, fraction: float) -> "MagnitudeTarget":
        """A fixed mask at ``w`` with sparsity ``1 − (1 − s)^fraction`` (exactly ``s`` at 1).

        Pruned weights are zero, hence the smallest, so stages of growing ``fraction`` have
        nested masks (iterative pruning's geometric schedule).
        """
        return self.rechosen(w, self.sparsity if fraction >= 1 else 1.0 - (1.0 - self.sparsity) ** fraction)

    def describe(self):
        return {"target": self.name, "sparsity": self.sparsity, "scope": self.scope.value,
                "dynamic": self.dynamic, "criterion": "magnitude" if self.scores is None else "saliency",
                "parameters": self.parameters, "masked": int(self.mask.sum())}


def _following_batchnorm(model: nn.Module, layer_name: str, channels: int) -> str | None:
    """The BatchNorm that normalises ``layer_name``'s outputs, if it comes next in module order."""
    names = [(n, m) for n, m in model.named_modules() if n]
    seen = False
    for n, m in names:
        if n == layer_name:
            seen = True
            continue
        if not seen:
            continue
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and m.num_features == channels:
            return n
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return None
    return None


def unit_groups(model: nn.Module, space: ParamSpace, layer: str, batchnorm: bool = True) -> torch.Tensor:
    """Flat indices of each output unit of ``layer`` (a conv filter or a linear neuron).

    Row ``i`` of the returned ``[units, group size]`` tensor is unit ``i``'s group: its
    weight row, its bias entry and (``batchnorm=True``) the weight and bias of the
    BatchNorm channel that directly follows the layer, so a unit whose group is zero
    outputs exactly zero. Units are ranked by the norm of the group without the
    BatchNorm channel. Built and used whole (no per-unit loop), so wide layers cost a
    few kernels on a GPU.
    """
    m = dict(model.named_modules()).get(layer)
    if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise UsageError(f"{layer!r} is not a Linear or Conv layer of this model")
    slices = space.slices()
    units = m.weight.shape[0]
    wsl = slices[f"{layer}.weight"]
    fan = (wsl.stop - wsl.start) // units
    per_unit = [f"{layer}.bias"]
    bn = _following_batchnorm(model, layer, units) if batchnorm else None
    if bn:
        per_unit += [f"{bn}.weight", f"{bn}.bias"]
    extra = torch.tensor([slices[p].start for p in per_unit if p in slices], dtype=torch.long)
    unit = torch.arange(units).unsqueeze(1)
    return torch.cat([wsl.start + unit * fan + torch.arange(fan), extra + unit], dim=1)


def unit_norms(groups: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each unit's group in ``w`` (``groups``: rows of :func:`unit_groups`)."""
    return w[groups.to(w.device)].pow(2).sum(1)


def group_mask(groups: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """A bool mask shaped like ``like`` (on its device), true on every index of the index tensors ``groups``
    (e.g. some rows of several layers' :func:`unit_groups`)."""
    mask = torch.zeros_like(like, dtype=torch.bool)
    if groups:
        mask[torch.cat([g.reshape(-1) for g in groups]).to(mask.device)] = True
    return mask


class StructuredTarget(HyperplaneTarget):
    """Whole output units (conv filters / linear neurons) of named layers set to zero.

    ``counts`` maps a layer name to how many of its units go: the units with the smallest L2
    norm of their own weights at the start. With ``example`` inputs, a unit's group is every
    parameter that produces its channel, traced through the network (:mod:`geopath.core.coupling`:
    the following BatchNorm, and every conv and BatchNorm adding into the same residual stream),
    so the removed channel is zero everywhere downstream; without, the layer's row and the
    BatchNorm channel right after it (:func:`unit_groups`).
    """

    name = "structured"

    def __init__(self, model: nn.Module, space: ParamSpace, w0: torch.Tensor, counts: dict[str, int],
                 example: torch.Tensor | None = None):
        from geopath.core.coupling import coupled_groups, coupled_layers, dependency_graph

        self.counts, self._groups, self.coupled = dict(counts), {}, {}
        graph = None
        for layer, k in counts.items():
            try:
                if example is None:
                    groups = unit_groups(model, space, layer)
                else:
                    if graph is None:  # traced once for every layer
                        graph = dependency_graph(model, example)
                    groups = coupled_groups(model, space, layer, graph)
                    self.coupled[layer] = coupled_layers(model, layer, graph)
            except UsageError as e:
                raise UsageError(f"--structured: {e}") from None
            if not 0 <= k < len(groups):
                raise UsageError(f"--structured: cannot remove {k} of the {len(groups)} units of {layer!r}")
            self._groups[layer] = (groups, unit_groups(model, space, layer, batchnorm=False))
        super().__init__(self._choose(w0))

    def _choose(self, w: torch.Tensor) -> torch.Tensor:
        self.removed, chosen_groups = {}, []
        for layer, k in self.counts.items():
            groups, ranked = self._groups[layer]
            chosen = torch.topk(unit_norms(ranked, w), k, largest=False).indices.sort().values.cpu()
            self.removed[layer] = chosen.tolist()
            chosen_groups.append(groups[chosen])
        return group_mask(chosen_groups, w)

    def stage(self, w: torch.Tensor, fraction: float) -> "StructuredTarget":
        """The same layers with ``round(fraction × count)`` units each, chosen afresh at ``w``.

        Units already at zero have the smallest norm, so stages of growing ``fraction``
        remove nested sets of units (iterative pruning).
        """
        out = copy.copy(self)
        out.counts = {layer: int(round(fraction * k)) for layer, k in self.counts.items()}
        out.mask, out._free = out._choose(w), None
        return out

    def describe(self):
        out = {"target": self.name, "counts": self.counts, "removed": self.removed, "masked": int(self.mask.sum())}
        if self.coupled:
            out["coupled"] = self.coupled  # the other layers each removed channel is zeroed in
        return out


def parse_structured(spec: str | Sequence[str] | None, required: bool = False) -> dict[str, int]:
    """``"features.0:50,layers.1:200"`` → ``{"features.0": 50, "layers.1": 200}`` (every count ≥ 1; ``required``:
    a given spec must name a layer)."""
    if spec is None:
        return {}
    items = [spec] if isinstance(spec, str) else list(spec)
    out: dict[str, int] = {}
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            layer, sep, count = part.rpartition(":")
            if not sep or not layer:
                raise UsageError(f"--structured expects LAYER:COUNT (e.g. features.0:50), got {part!r}")
            if layer in out:
                raise UsageError(f"--structured names {layer} twice; give each layer one count")
            try:
                out[layer] = int(count)
            except ValueError:
                raise UsageError(f"--structured: {count!r} is not a whole number") from None
            if out[layer] < 1:
                raise UsageError(f"--structured {part}: remove at least one unit (a count ≥ 1)")
    if required and not out:
        raise UsageError(f"--structured names no layer ({spec!r}); give LAYER:COUNT (e.g. features.0:50)")
    return out
