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


def test_masked_weights_stay_zero_and_a_new_mask_reaches_parameters_the_old_one_spared():
    """``train`` keeps every masked weight at exactly zero; a ``remask`` that masks weights of a parameter
    the first mask left whole takes effect there too (the per-parameter factors are rebuilt per mask)."""
    from geopath.core.dataset import Dataset
    from geopath.core.params import ParamSpace, model_vector
    from geopath.core.train import train

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    space = ParamSpace.of(model)
    ds = Dataset(torch.randn(64, 4), torch.randint(0, 3, (64,)), "toy", "train")
    first = torch.zeros(space.n, dtype=torch.bool)
    first[:10] = True  # some weights of the first layer only
    second = first.clone()
    second[-5:] = True  # and the last layer's bias
    start = model_vector(model, space)
    seen = []

    def remask(step):
        return second if step == 3 else None

    def on_step(step, passes):
        w = model_vector(model, space)
        seen.append((step, bool((w[first] == 0).all()), bool((w[second] == 0).all())))

    train(model, ds, epochs=1.0, batch_size=8, lr=0.1, mask=first, remask=remask, on_step=on_step)
    assert all(ok_first for _, ok_first, _ in seen)
    assert [ok for step, _, ok in seen if step > 3] and all(ok for step, _, ok in seen if step > 3)
    assert not all(ok for step, _, ok in seen if step <= 3)  # the last bias was live before the new mask
    w = model_vector(model, space)
    assert bool((w[~second] != start[~second]).any())  # the free weights trained


def test_a_budget_under_one_batch_takes_no_step():
    """``max_passes`` below one batch: no step, no pass (it took one step of a whole batch, spending passes a peer
    did not have: gradual at --finetune-epochs 0 trained once); the mask is still applied."""
    from geopath.core.dataset import Dataset
    from geopath.core.params import ParamSpace, model_vector
    from geopath.core.train import train

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    space = ParamSpace.of(model)
    ds = Dataset(torch.randn(64, 4), torch.randint(0, 3, (64,)), "toy", "train")
    mask = torch.zeros(space.n, dtype=torch.bool)
    mask[:2] = True
    start = model_vector(model, space)
    stats = train(model, ds, epochs=1.0, batch_size=32, max_passes=31, mask=mask)
    assert stats.sample_passes == 0 and stats.epochs == 0.0
    assert torch.equal(model_vector(model, space), torch.where(mask, 0.0, start))
    assert train(model, ds, epochs=1.0, batch_size=32, max_passes=32).sample_passes == 32


def test_iterative_pruning_spends_its_whole_budget_in_whole_steps():
    """1,000 passes at batch 128 over 5 rounds: 7 steps (896 passes), split 1-1-1-2-2; flooring each round's 200
    passes to one batch spent 640."""
    from geopath.core.dataset import Dataset
    from geopath.core.params import ParamSpace, model_vector
    from geopath.core.targets import MagnitudeTarget
    from geopath.peers.pruning import iterative_prune

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    space = ParamSpace.of(model)
    ds = Dataset(torch.randn(1024, 4), torch.randint(0, 3, (1024,)), "toy", "train")
    target = MagnitudeTarget(space, model_vector(model, space), 0.5, ["0.weight", "2.weight"])
    rows = []
    iterative_prune(model, target, ds, 1000, rounds=5, batch_size=128,
                    record=lambda step, net, passes, **kw: rows.append((step, passes)) or {})
    assert rows[-1] == (7, 896)


def test_samples_seen_counts_whole_steps_and_short_last_batches():
    from geopath.peers._budget import samples_seen

    assert samples_seen(1000, 2000, 64) == 960  # 15 steps of 64
    assert samples_seen(2100, 100, 64) == 1600  # 32 steps: 16 epochs of 64 + 36 (not 32 × 64 = 2048)
    assert samples_seen(2250, 100, 64) == 1764  # 35 steps: 17 epochs, then one batch of 64
    assert samples_seen(63, 100, 64) == 0 and samples_seen(100, 100, 64) == 64
