"""Targets: where a path is going. Small strategy objects over flat weight vectors.

A target answers four questions about a point ``w`` of weight space:

* ``direction(w)`` — the vector ``v(w)`` the step is pulled along;
* ``distance(w)`` — how far ``w`` still is from the target (Euclidean);
* ``project(w)`` — the nearest point of the target (the path's endpoint);
* ``refresh(w)`` — a hook called before each step (dynamic masks re-choose here).

The sparse targets are hyperplanes ``{w : w[mask] = 0}``: ``v(w) = P(w) − w``.
"""

from __future__ import annotations

from enum import Enum
from typing import Sequence

import torch
from torch import nn

from ._params import ParamSpace
from .errors import UsageError


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
    """``{w : w[mask] = 0}`` for a boolean ``mask`` over the flat weight vector."""

    name = "hyperplane"

    def __init__(self, mask: torch.Tensor):
        self.mask = mask.bool()

    def direction(self, w):
        return torch.where(self.mask, -w, torch.zeros_like(w))

    def distance(self, w):
        return float(torch.linalg.vector_norm(w[self.mask]))

    def project(self, w):
        return torch.where(self.mask, torch.zeros_like(w), w)

    def free(self):
        return ~self.mask

    def describe(self):
        return {"target": self.name, "masked": int(self.mask.sum())}


class MaskScope(str, Enum):
    """How many weights each layer gives up for unstructured magnitude sparsity."""

    GLOBAL = "global"
    """The smallest-magnitude weights over all prunable layers together."""
    LAYER = "layer"
    """The same fraction of every prunable layer."""


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
    """

    name = "magnitude"

    def __init__(self, space: ParamSpace, w0: torch.Tensor, sparsity: float,
                 parameters: Sequence[str], scope: MaskScope | str = MaskScope.GLOBAL, dynamic: bool = False):
        if not 0.0 <= sparsity < 1.0:
            raise UsageError(f"sparsity must be in [0, 1), got {sparsity}")
        unknown = [p for p in parameters if p not in space.names]
        if unknown:
            raise UsageError(f"unknown parameters for pruning: {', '.join(unknown)}")
        if not parameters:
            raise UsageError("no prunable parameters (no Linear or Conv layers found)")
        self.space, self.sparsity, self.parameters = space, float(sparsity), list(parameters)
        self.scope, self.dynamic = MaskScope(scope), dynamic
        slices = space.slices()
        self._slices = [slices[p] for p in self.parameters]
        super().__init__(self._choose(w0))

    def _choose(self, w: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(w, dtype=torch.bool)
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

    def describe(self):
        return {"target": self.name, "sparsity": self.sparsity, "scope": self.scope.value,
                "dynamic": self.dynamic, "parameters": self.parameters, "masked": int(self.mask.sum())}


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


class StructuredTarget(HyperplaneTarget):
    """Whole output units (conv filters / linear neurons) of named layers set to zero.

    ``counts`` maps a layer name to how many of its units go: the units with the
    smallest L2 norm of their weights and bias at the start. A unit's group is its
    weight row, its bias entry, and the weight and bias of the BatchNorm channel
    that directly follows the layer (so the removed channel outputs exactly zero).
    """

    name = "structured"

    def __init__(self, model: nn.Module, space: ParamSpace, w0: torch.Tensor, counts: dict[str, int]):
        modules = dict(model.named_modules())
        slices = space.slices()
        mask = torch.zeros_like(w0, dtype=torch.bool)
        self.counts, self.removed = dict(counts), {}
        for layer, k in counts.items():
            m = modules.get(layer)
            if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                raise UsageError(f"--structured: {layer!r} is not a Linear or Conv layer of this model")
            units = m.weight.shape[0]
            if not 0 <= k < units:
                raise UsageError(f"--structured: cannot remove {k} of the {units} units of {layer!r}")
            wsl = slices[f"{layer}.weight"]
            rows = w0[wsl].view(units, -1)
            groups = [(f"{layer}.weight", lambda i: (wsl.start + i * rows.shape[1], wsl.start + (i + 1) * rows.shape[1]))]
            norms = rows.pow(2).sum(1)
            for pname in (f"{layer}.bias",):
                if pname in slices:
                    norms = norms + w0[slices[pname]].pow(2)
            chosen = torch.topk(norms, k, largest=False).indices.sort().values.tolist() if k else []
            self.removed[layer] = chosen
            extra = [f"{layer}.bias"]
            bn = _following_batchnorm(model, layer, units)
            if bn:
                extra += [f"{bn}.weight", f"{bn}.bias"]
            for i in chosen:
                a, b = groups[0][1](i)
                mask[a:b] = True
                for pname in extra:
                    if pname in slices:
                        mask[slices[pname].start + i] = True
        super().__init__(mask)

    def describe(self):
        return {"target": self.name, "counts": self.counts, "removed": self.removed, "masked": int(self.mask.sum())}


def parse_structured(spec: str | Sequence[str] | None) -> dict[str, int]:
    """``"features.0:50,layers.1:200"`` → ``{"features.0": 50, "layers.1": 200}``."""
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
            try:
                out[layer] = int(count)
            except ValueError:
                raise UsageError(f"--structured: {count!r} is not a whole number") from None
    return out
