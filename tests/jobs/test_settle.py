"""The settle's gradual growth of the sparsity (``--settle-prune``), on a tiny network without data."""

from __future__ import annotations

import pytest
import torch

from geopath.core.params import ParamSpace, load_vector, model_vector
from geopath.core.targets import MagnitudeTarget, prunable_parameters
from geopath.io.archs import MLP
from geopath.jobs.settle import _growing
from geopath.peers.pruning import GRADUAL_UPDATES


@pytest.mark.parametrize("until", [0.5, 0.75, 1.0])
def test_growing_masks_are_nested_reach_the_target_by_the_given_point_and_follow_its_ranking(until):
    torch.manual_seed(0)
    model = MLP(in_features=20, hidden=(30,), num_classes=5)
    space = ParamSpace.of(model)
    names = prunable_parameters(model)
    w = model_vector(model, space)
    scores = torch.rand(space.n) + 0.1  # (a saliency ranking: w²·scores, not |w|)
    final = MagnitudeTarget(space, w, 0.9, names, scores=scores)
    start = final.rechosen(w, 0.6)
    load_vector(model, space, start.project(w))
    done = {"done": False}
    steps = 400
    remask = _growing(model, start, final, steps, done, until)
    masks, gen = {}, torch.Generator().manual_seed(1)
    for step in range(steps):
        before = model_vector(model, space)
        mask = remask(step)
        if mask is not None:
            masks[step] = mask.clone()
            assert torch.equal(mask, final.mask)
            k = int(mask.sum()) / sum(model.get_parameter(n).numel() for n in names)
            assert torch.equal(mask, final.rechosen(before, k).mask)  # the ranking's choice (w²·scores, not |w|)
        with torch.no_grad():  # a training step: the kept weights move, the masked ones stay zero
            w = model_vector(model, space) + 0.01 * torch.randn(space.n, generator=gen)
            load_vector(model, space, torch.where(final.mask, torch.zeros_like(w), w))
    at = sorted(masks)
    ramp = int(steps * until)
    every = -(-ramp // GRADUAL_UPDATES)
    assert at[0] == 0 and ramp - every <= at[-1] <= ramp and len(at) <= GRADUAL_UPDATES + 1
    counts = [int(masks[s].sum()) for s in at]
    assert counts == sorted(counts) and counts[0] > int(start.mask.sum())
    assert counts[-1] == int(final.mask.sum()) == round(0.9 * sum(model.get_parameter(n).numel() for n in names))
    assert done["done"]
    for a, b in zip(at, at[1:]):  # nested: a weight once removed stays removed
        assert bool((masks[b] | ~masks[a]).all())
    assert bool((masks[at[0]] | ~start.mask).all())
