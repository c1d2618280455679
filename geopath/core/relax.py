"""The whole path at once: a piecewise-linear curve from A to B fitted to the endpoints' blended outputs.

The greedy walk (:func:`geopath.core.path.walk`) keeps, step by step, the outputs
``(1 − t)·f_A + t·f_B`` while it moves toward B. ``connect --path relax`` asks the same of
every point of the path together: the curve

    φ(t) = (1 − s)·w_k + s·w_{k+1},   k = ⌊tK⌋, s = tK − k,   w_0 = w_A, w_K = w_B

with ``K − 1`` free nodes (``--nodes``, evenly spaced in ``t``, starting on the straight
line) is fitted by SGD to minimise ``E_t E_x KL(softmax((1 − t) z_A(x) + t z_B(x)) ‖
softmax(z_{φ(t)}(x)))`` with ``t ~ U(0, 1)`` drawn per batch. Label-free: it needs the
endpoints' outputs on the metric inputs, computed once. The blended logits are the straight
line between the endpoints in output space, the geodesic of the flat output metric that
``g = JᵀJ`` pulls back; where a network can realise them, the fitted curve is that geodesic's
pre-image, and sampling ``t`` continuously fits the segments, not only the nodes. It is a
polygonal chain in the sense of Garipov et al. (2018), with a functional target instead of
labels. BatchNorm runs on batch statistics while fitting; evaluate points after
re-estimating them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from geopath.core import distributed
from geopath.core.dataset import Dataset, batches
from geopath.core.params import ParamSpace
from geopath.core.train import sharded_backward


def chain_point(nodes: list[torch.Tensor], t: float) -> torch.Tensor:
    """The point at ``t ∈ [0, 1]`` of the piecewise-linear path through ``nodes`` (evenly spaced in ``t``);
    the ends are returned exactly."""
    if t <= 0.0:
        return nodes[0]
    if t >= 1.0:
        return nodes[-1]
    k_segments = len(nodes) - 1
    k = min(int(t * k_segments), k_segments - 1)
    s = t * k_segments - k
    return (1.0 - s) * nodes[k] + s * nodes[k + 1]


def node_times(free: int) -> list[float]:
    """``t`` of every node, the two ends included."""
    return [k / (free + 1) for k in range(free + 2)]


@torch.no_grad()
def outputs(model: nn.Module, ds: Dataset, device, batch_size: int = 512) -> torch.Tensor:
    """``model``'s logits on every input of ``ds`` (eval mode), on ``device``."""
    model.eval()
    return torch.cat([model(x.to(device)) for x, _ in batches(ds, batch_size)])


def blended_kl(logits: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor, t: float) -> torch.Tensor:
    """``KL(softmax((1 − t) z_A + t z_B) ‖ softmax(logits))``, averaged over the batch."""
    target = ((1.0 - t) * z_a + t * z_b).log_softmax(1)
    return nn.functional.kl_div(logits.log_softmax(1), target, log_target=True, reduction="batchmean")


def relax(model: nn.Module, w_a: torch.Tensor, w_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor,
          ds: Dataset, sample_passes: int, free: int = 1, batch_size: int = 128, lr: float = 0.05,
          seed: int = 0, device="cpu") -> list[torch.Tensor]:
    """Fit the ``free`` interior nodes of the path (see module docstring); returns all nodes, A and B included.

    ``z_a``, ``z_b``: the endpoints' logits on every input of ``ds`` (:func:`outputs`).
    SGD with momentum 0.9 and cosine decay, ``sample_passes // batch_size`` steps, each on
    one batch at one ``t ~ U(0, 1)``. The ends are never changed. Under ``torchrun`` every rank
    draws the same batches and ``t`` and back-propagates its shard of each batch; the gradients
    are all-reduced, so every rank takes the single process's steps (exactly without BatchNorm; with it,
    each shard is normalised by its own statistics, as under DistributedDataParallel).
    """
    if free < 1:
        raise ValueError("relax needs at least one free node")
    space = ParamSpace.of(model)
    w_a, w_b = w_a.to(device), w_b.to(device)
    inner = torch.stack([(1 - s) * w_a + s * w_b for s in node_times(free)[1:-1]]).requires_grad_(True)
    steps = int(sample_passes) // batch_size
    if steps > 0:
        buffers = dict(model.named_buffers())
        opt = torch.optim.SGD([inner], lr=lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        gen = torch.Generator().manual_seed(seed)
        comm = distributed.current()
        model.train()
        done = 0
        while done < steps:
            order = torch.randperm(len(ds), generator=gen)
            for i in range(0, len(ds), batch_size):
                if done >= steps:
                    break
                idx = order[i:i + batch_size]
                t = float(torch.rand((), generator=gen))
                w = chain_point([w_a, *inner.unbind(0), w_b], t)
                x, idx = ds.x[idx].to(device), idx.to(z_a.device)
                opt.zero_grad(set_to_none=True)
                if comm.world == 1:
                    logits = functional_call(model, (space.unflatten(w), buffers), (x,))
                    blended_kl(logits, z_a[idx], z_b[idx], t).backward()
                else:  # data-parallel: this rank's shard of the batch, gradients all-reduced

                    def shard_loss(s, w=w, x=x, idx=idx, t=t):
                        if not len(idx[s]):
                            return None
                        logits = functional_call(model, (space.unflatten(w), buffers), (x[s],))
                        return blended_kl(logits, z_a[idx[s]], z_b[idx[s]], t) * len(idx[s])  # the shard's sum

                    sharded_backward(shard_loss, len(idx), [inner], buffers.values(), comm)
                opt.step()
                sched.step()
                done += 1
        model.eval()
    return [w_a, *[n.detach() for n in inner.unbind(0)], w_b]
