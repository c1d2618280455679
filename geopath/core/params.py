"""Flat views of a model's parameters: solvers work on one vector, torch.func on dicts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamSpace:
    """Names, shapes and offsets of the trainable parameters of a model."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, model: nn.Module, frozen: bool = False) -> "ParamSpace":
        """The space of ``model``'s trainable parameters (``frozen``: of all of them, frozen ones included)."""
        items = [(n, p.shape) for n, p in model.named_parameters() if frozen or p.requires_grad]
        return cls(tuple(n for n, _ in items), tuple(s for _, s in items))

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def n(self) -> int:
        return sum(self.numels)

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, k in zip(self.names, self.numels):
            out[name] = slice(start, start + k)
            start += k
        return out

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(vec, self.numels)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes)}


def model_vector(model: nn.Module, space: ParamSpace) -> torch.Tensor:
    named = dict(model.named_parameters())
    return space.flatten({n: named[n].detach() for n in space.names}).clone()


@torch.no_grad()
def load_vector(model: nn.Module, space: ParamSpace, vec: torch.Tensor) -> None:
    named = dict(model.named_parameters())
    for name, value in space.unflatten(vec).items():
        named[name].copy_(value)


def buffers_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b for n, b in model.named_buffers()}
