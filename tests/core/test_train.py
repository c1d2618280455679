"""The learning-rate schedule of every SGD run in geopath (peers, settle): cosine decay, optional warm-up."""

from __future__ import annotations

import math

import pytest
import torch

from geopath.core.train import _schedule


def _rates(total: int, warmup: float, lr: float = 0.1) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = _schedule(opt, total, warmup)
    rates = []
    for _ in range(total):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def test_no_warmup_is_plain_cosine_decay():
    assert _rates(8, 0.0) == pytest.approx([0.05 * (1 + math.cos(math.pi * s / 8)) for s in range(8)])


def test_warmup_rises_linearly_then_decays_by_cosine_over_the_rest():
    rates = _rates(10, 0.3)  # W = 3 warm-up steps, then 7 of cosine decay
    assert rates[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])
    assert rates[3:] == pytest.approx([0.05 * (1 + math.cos(math.pi * (s - 3) / 7)) for s in range(3, 10)])
    assert max(rates) == pytest.approx(0.1) and rates == sorted(rates[:3]) + sorted(rates[3:], reverse=True)


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_warmup_outside_zero_one_is_refused(bad):
    with pytest.raises(ValueError, match="warmup"):
        _rates(4, bad)
