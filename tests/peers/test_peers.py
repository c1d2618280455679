"""Peer methods (geopath/peers/) against dense or hand-computed references, on tiny float64 models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

import geopath.peers as baselines
import geopath.peers.pruning as pruning
from geopath.core.params import ParamSpace, model_vector
from geopath.io.archs import MLP
from geopath.core.dataset import Dataset, batches
from geopath.core.targets import MagnitudeTarget, StructuredTarget, prunable_parameters, unit_groups
from geopath.core.train import train

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64


def _mlp(seed=0, inp=5, hidden=(4,), classes=3):
    torch.manual_seed(seed)
    return MLP(inp, hidden, classes).to(D)


def _vec(model):
    return model_vector(model, ParamSpace.of(model))


def _data(n=48, inp=5, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Dataset(torch.randn(n, inp, generator=g, dtype=D), torch.randint(0, classes, (n,), generator=g), "toy",
                   "train")


class Recorder:
    """A stub ``record`` callable: keeps every call's arguments and a copy of the weights."""

    def __init__(self):
        self.calls = []

    def __call__(self, step, model, sample_passes, **kw):
        self.calls.append({"step": step, "passes": sample_passes, "w": _vec(model).clone(), **kw})
        return self.calls[-1]


# --------------------------------------------------------------------------- fisher_diag


def _per_sample_sq_grads(model, x, y):
    """Dense reference: squared per-sample gradients of −log p(y|x), by a plain loop with autograd."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for xi, yi in zip(x, y):
        loss = nn.functional.cross_entropy(model(xi.unsqueeze(0)), yi.view(1))
        grads = torch.autograd.grad(loss, params)
        out.append(torch.cat([g.reshape(-1) for g in grads]).pow(2))
    return torch.stack(out)


@pytest.mark.parametrize("samples,chunk", [(7, 3), (100, 4), (10, 64)])
def test_fisher_diag_equals_loop_over_samples(case, samples, chunk):
    """Exact comparison with the same sampled labels.

    The labels are random (y ~ p(y|x), the true Fisher), so the reference reproduces the
    documented sampling: one ``torch.Generator`` seeded with ``seed`` draws the subset
    (``randperm``) and then, chunk by chunk, the labels (``multinomial``). Only the
    gradients are computed differently (autograd per sample instead of vmap(grad)).
    The sampling itself is checked independently by the expectation test below.
    """
    model = case.make_model()
    g = torch.Generator().manual_seed(3)
    ds = Dataset(torch.randn((10, *case.input_shape), generator=g, dtype=D), torch.zeros(10, dtype=torch.long),
                 "toy", "train")
    got = baselines.fisher_diag(copy.deepcopy(model), ds, samples=samples, chunk=chunk, seed=11)

    gen = torch.Generator().manual_seed(11)
    idx = torch.randperm(len(ds), generator=gen)[:samples]
    sq = []
    for i in range(0, len(idx), chunk):
        x = ds.x[idx[i:i + chunk]]
        model.eval()
        with torch.no_grad():
            probs = torch.softmax(model(x), -1)
        y = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        sq.append(_per_sample_sq_grads(model, x, y))
    ref = torch.cat(sq).mean(0)
    assert got.shape == (ParamSpace.of(model).n,) and got.dtype == D
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-14)
    assert float(ref.abs().sum()) > 0


def test_fisher_diag_expectation_over_labels():
    """Sampling-independent check: with each input repeated many times, the estimate is close to
    the exact ``mean_x Σ_y p(y|x) (∂ log p(y|x)/∂w)²``."""
    model = _mlp(seed=4)
    base = torch.randn(4, 5, generator=torch.Generator().manual_seed(8), dtype=D)
    reps = 1500
    ds = Dataset(base.repeat(reps, 1), torch.zeros(4 * reps, dtype=torch.long), "toy", "train")
    est = baselines.fisher_diag(copy.deepcopy(model), ds, samples=len(ds), chunk=1000, seed=0)
    with torch.no_grad():
        p = torch.softmax(model(base), -1)
    exact = torch.zeros_like(est)
    for c in range(3):
        sq = _per_sample_sq_grads(model, base, torch.full((4,), c))
        exact += (p[:, c:c + 1] * sq).mean(0)
    assert float((est - exact).norm() / exact.norm()) < 0.06
    # and it is not the empirical Fisher (labels all 0 here)
    empirical = _per_sample_sq_grads(model, base, torch.zeros(4, dtype=torch.long)).mean(0)
    assert float((empirical - exact).norm() / exact.norm()) > 0.2


def test_fisher_diag_subset_size():
    model = _mlp()
    ds = _data(20)
    # more samples than inputs: every input once (the mean over 20, not over 2000)
    full = baselines.fisher_diag(copy.deepcopy(model), ds, samples=2000, chunk=7, seed=2)
    ref = baselines.fisher_diag(copy.deepcopy(model), ds, samples=20, chunk=7, seed=2)
    torch.testing.assert_close(full, ref, rtol=0, atol=0)


# --------------------------------------------------------------------------- fisher_merge and interpolate


def _pair(seed=0):
    model = _mlp(seed)
    space = ParamSpace.of(model)
    g = torch.Generator().manual_seed(seed + 100)
    w_a = torch.randn(space.n, generator=g, dtype=D)
    w_b = torch.randn(space.n, generator=g, dtype=D)
    return model, space, w_a, w_b, g


def test_fisher_merge_endpoints_and_formula():
    model, space, w_a, w_b, g = _pair()
    f_a = torch.rand(space.n, generator=g, dtype=D) + 0.1
    f_b = torch.rand(space.n, generator=g, dtype=D) + 0.1
    rec = Recorder()
    alphas = [0.0, 0.25, 0.5, 1.0]
    baselines.fisher_merge(model, w_a, w_b, f_a, f_b, alphas, rec, passes=17.0)
    ws = [c["w"] for c in rec.calls]
    assert torch.equal(ws[0], w_a) and torch.equal(ws[-1], w_b)  # exactly
    for a, c in zip(alphas, rec.calls):
        if 0 < a < 1:
            ref = ((1 - a) * f_a * w_a + a * f_b * w_b) / ((1 - a) * f_a + a * f_b)
            # (the documented tiny floor, ~1e-8 of the mean Fisher, moves the result by ~1e-7 relative)
            torch.testing.assert_close(c["w"], ref, rtol=1e-5, atol=1e-8)
        assert c["alpha"] == a and c["t"] == a and c["passes"] == 17.0
        assert c["distance"] == pytest.approx(float((w_b - c["w"]).norm()), rel=1e-12, abs=1e-15)
    assert [c["step"] for c in rec.calls] == [0, 1, 2, 3]
    assert [c["final"] for c in rec.calls] == [False, False, False, True]
    # the merge is not the plain average when the Fishers differ
    assert float((ws[2] - 0.5 * (w_a + w_b)).norm()) > 1e-2


def test_fisher_merge_equal_fishers_is_plain_interpolation():
    model, space, w_a, w_b, g = _pair(1)
    f = torch.rand(space.n, generator=g, dtype=D) + 0.1
    rec = Recorder()
    alphas = [0.1, 0.5, 0.8]
    baselines.fisher_merge(model, w_a, w_b, f, f.clone(), alphas, rec)
    for a, c in zip(alphas, rec.calls):
        torch.testing.assert_close(c["w"], (1 - a) * w_a + a * w_b, rtol=1e-12, atol=1e-12)


def test_fisher_merge_zero_fisher_takes_the_other_network():
    model, space, w_a, w_b, g = _pair(2)
    f_a = torch.rand(space.n, generator=g, dtype=D) + 0.5
    f_b = torch.rand(space.n, generator=g, dtype=D) + 0.5
    only_b, only_a, neither = 0, 1, 2  # coordinates where only B / only A / no task has information
    f_a[only_b] = 0.0
    f_b[only_a] = 0.0
    f_a[neither] = f_b[neither] = 0.0
    rec = Recorder()
    baselines.fisher_merge(model, w_a, w_b, f_a, f_b, [0.3, 0.5], rec)
    for a, c in zip([0.3, 0.5], rec.calls):
        w = c["w"]
        assert float(w[only_b]) == pytest.approx(float(w_b[only_b]), rel=1e-6)
        assert float(w[only_a]) == pytest.approx(float(w_a[only_a]), rel=1e-6)
        assert float(w[neither]) == pytest.approx(float((1 - a) * w_a[neither] + a * w_b[neither]), rel=1e-9)


def test_interpolate_records_linear_path():
    model, space, w_a, w_b, _ = _pair(3)
    rec = Recorder()
    alphas = [0.0, 0.2, 0.5, 1.0]
    baselines.interpolate(model, w_a, w_b, alphas, rec, passes=3.0)
    assert len(rec.calls) == 4
    for a, c in zip(alphas, rec.calls):
        torch.testing.assert_close(c["w"], (1 - a) * w_a + a * w_b, rtol=0, atol=1e-15)
        assert c["alpha"] == a and c["t"] == a and c["passes"] == 3.0
        assert c["distance"] == pytest.approx(float((w_b - c["w"]).norm()), rel=1e-12, abs=1e-15)
    assert torch.equal(rec.calls[0]["w"], w_a)
    assert [c["final"] for c in rec.calls] == [False, False, False, True]


# --------------------------------------------------------------------------- bezier


def test_bezier_point_endpoints_and_midpoint():
    g = torch.Generator().manual_seed(0)
    w_a, theta, w_b = (torch.randn(7, generator=g, dtype=D) for _ in range(3))
    assert torch.equal(baselines.bezier_point(w_a, theta, w_b, 0.0), w_a)
    assert torch.equal(baselines.bezier_point(w_a, theta, w_b, 1.0), w_b)
    torch.testing.assert_close(baselines.bezier_point(w_a, theta, w_b, 0.5), 0.25 * w_a + 0.5 * theta + 0.25 * w_b,
                               rtol=0, atol=1e-15)
    t = 0.3
    torch.testing.assert_close(baselines.bezier_point(w_a, theta, w_b, t),
                               0.49 * w_a + 0.42 * theta + 0.09 * w_b, rtol=0, atol=1e-14)
    # a tensor of t values gives a batch of points
    ts = torch.tensor([[0.0], [0.5], [1.0]], dtype=D)
    pts = baselines.bezier_point(w_a, theta, w_b, ts)
    assert pts.shape == (3, 7) and torch.equal(pts[0], w_a) and torch.equal(pts[2], w_b)


def test_bezier_one_step_is_sgd_on_theta():
    """One step (budget = one batch): θ = midpoint − lr · ∂/∂θ CE(bezier_point(t)) on the first batch."""
    model = _mlp(0)
    space = ParamSpace.of(model)
    w_a = _vec(model)
    w_b = _vec(_mlp(1))
    ds = _data(40)
    lr, bs = 0.1, 16
    theta = baselines.bezier(copy.deepcopy(model), w_a, w_b, ds, sample_passes=bs, batch_size=bs, lr=lr, seed=5)

    gen = torch.Generator().manual_seed(5)
    x, y = next(iter(batches(ds, bs, generator=gen, shuffle=True)))
    t = float(torch.rand((), generator=gen))
    th0 = (0.5 * (w_a + w_b)).requires_grad_(True)
    w = baselines.bezier_point(w_a, th0, w_b, t)
    loss = nn.functional.cross_entropy(functional_call(model, space.unflatten(w), (x,)), y)
    (grad,) = torch.autograd.grad(loss, th0)
    assert 0 < t < 1 and float(grad.norm()) > 1e-3
    torch.testing.assert_close(theta, 0.5 * (w_a + w_b) - lr * grad.detach(), rtol=0, atol=1e-12)


def _curve_loss(model, w_a, theta, w_b, ds, points=11):
    space = ParamSpace.of(model)
    losses = []
    with torch.no_grad():
        for i in range(points):
            w = baselines.bezier_point(w_a, theta, w_b, i / (points - 1))
            losses.append(float(nn.functional.cross_entropy(functional_call(model, space.unflatten(w), (ds.x,)),
                                                            ds.y)))
    return sum(losses) / len(losses)


def test_bezier_training_lowers_the_loss_along_the_curve():
    """Toy problem (inside/outside a circle, separable by the MLP); B is A with its hidden units
    permuted (the same function), so the straight path between them has a loss barrier."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g, dtype=D)
    y = (x.pow(2).sum(1) > 1.2).long()
    ds = Dataset(x, y, "blobs", "train")
    torch.manual_seed(0)
    model = MLP(2, (8,), 2).to(D)
    train(model, ds, epochs=30, batch_size=20, lr=0.1, seed=0)
    w_a = _vec(model)
    perm = torch.randperm(8, generator=g)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["layers.0.weight"], sd["layers.0.bias"] = sd["layers.0.weight"][perm], sd["layers.0.bias"][perm]
    sd["layers.1.weight"] = sd["layers.1.weight"][:, perm]
    model_b = copy.deepcopy(model)
    model_b.load_state_dict(sd)
    w_b = _vec(model_b)
    with torch.no_grad():
        torch.testing.assert_close(model_b(x), model(x))  # the same function
    assert float((w_a - w_b).norm()) > 1.0

    mid = 0.5 * (w_a + w_b)
    before = _curve_loss(model, w_a, mid, w_b, ds)
    theta = baselines.bezier(copy.deepcopy(model), w_a, w_b, ds, sample_passes=200 * 30, batch_size=20, lr=0.2,
                             seed=1)
    after = _curve_loss(model, w_a, theta, w_b, ds)
    end_loss = _curve_loss(model, w_a, w_a, w_a, ds, points=2)  # the curve collapsed onto A
    assert before - end_loss > 0.1  # the straight path has a barrier
    assert after < 0.6 * before
    assert after - end_loss < 0.25 * (before - end_loss)  # training removed most of it
    assert float((theta - mid).norm()) > 1e-2


def test_bezier_tiny_budget_stays_near_midpoint():
    model = _mlp(0)
    w_a, w_b = _vec(model), _vec(_mlp(1))
    ds = _data(40)
    mid = 0.5 * (w_a + w_b)
    theta = baselines.bezier(copy.deepcopy(model), w_a, w_b, ds, sample_passes=0, batch_size=16, lr=1e-3, seed=0)
    moved = float((theta - mid).norm())
    assert moved <= 1e-3 * 0.5 * 10  # at most one step of lr · max 2t(1−t) · ‖∇‖ (‖∇‖ < 10 here)
    assert theta.dtype == D and theta.shape == mid.shape and not theta.requires_grad


# --------------------------------------------------------------------------- prune_finetune


def _count_steps(monkeypatch, check=None):
    """Wrap the pruning peers' train()'s on_step to count optimiser steps (it runs after every one)."""
    seen = []
    real = pruning.train

    def wrapped(model, ds, *a, on_step=None, **kw):
        def counting(step, passes):
            seen.append((step, passes))
            if check:
                check(model)
            if on_step:
                on_step(step, passes)

        return real(model, ds, *a, on_step=counting, **kw)

    monkeypatch.setattr(pruning, "train", wrapped)
    return seen


def test_prune_finetune_keeps_pruned_weights_zero(monkeypatch):
    model = _mlp(0)
    space = ParamSpace.of(model)
    w0 = _vec(model)
    target = MagnitudeTarget(space, w0, 0.5, prunable_parameters(model))
    ds = _data(48)
    zero_after_each_step = []
    seen = _count_steps(monkeypatch, check=lambda m: zero_after_each_step.append(bool((_vec(m)[target.mask] == 0)
                                                                                        .all())))
    rec = Recorder()
    stats = baselines.prune_finetune(model, target, ds, sample_passes=60, batch_size=8, lr=0.05, seed=0, record=rec,
                                     records=20)
    assert len(seen) == 60 // 8 == 7  # optimiser steps: passes // batch_size
    assert all(zero_after_each_step)
    w = _vec(model)
    assert bool((w[target.mask] == 0).all())
    assert float((w[~target.mask] - w0[~target.mask]).norm()) > 1e-3  # the free weights were trained
    assert stats.sample_passes == 56
    # rows: dense start, pruned, one per step (records ≥ steps), final
    first, pruned, *mid, final = rec.calls
    assert torch.equal(first["w"], w0) and first["t"] == 0.0 and first["step"] == 0
    assert first["distance"] == pytest.approx(target.distance(w0))
    assert torch.equal(pruned["w"], target.project(w0)) and pruned["name"] == "step_00000_pruned"
    assert [c["step"] for c in mid] == [1, 2, 3, 4, 5, 6]
    assert [c["passes"] for c in mid] == [8, 16, 24, 32, 40, 48]
    assert final["final"] is True and final["step"] == 7 and final["passes"] == 56
    assert torch.equal(final["w"], w)
    for c in [pruned, *mid, final]:
        assert bool((c["w"][target.mask] == 0).all()) and c["t"] == 1.0 and c["distance"] == 0.0


def test_prune_finetune_zero_budget_is_one_shot_pruning(monkeypatch):
    model = _mlp(0)
    space = ParamSpace.of(model)
    w0 = _vec(model)
    target = MagnitudeTarget(space, w0, 0.5, prunable_parameters(model))
    seen = _count_steps(monkeypatch)
    rec = Recorder()
    for passes in (0, 7):  # below one batch: no step at all
        model = _mlp(0)
        rec.calls.clear()
        stats = baselines.prune_finetune(model, target, _data(48), sample_passes=passes, batch_size=8, record=rec)
        assert stats.sample_passes == 0
        assert torch.equal(_vec(model), target.project(w0))
        assert len(rec.calls) == 2 and rec.calls[-1]["final"] is True
    assert seen == []


def test_prune_finetune_record_spacing(monkeypatch):
    model = _mlp(0)
    space = ParamSpace.of(model)
    target = MagnitudeTarget(space, _vec(model), 0.5, prunable_parameters(model))
    seen = _count_steps(monkeypatch)
    rec = Recorder()
    baselines.prune_finetune(model, target, _data(48), sample_passes=8 * 20, batch_size=8, record=rec, records=4)
    assert len(seen) == 20
    # every = 20 // 4 = 5: rows at steps 5, 10, 15 (not 20: that is the final row)
    assert [c["step"] for c in rec.calls] == [0, 0, 5, 10, 15, 20]


# --------------------------------------------------------------------------- iterative_prune


@pytest.mark.parametrize("rounds", [1, 3])
def test_iterative_prune_schedule_and_nested_masks(monkeypatch, rounds):
    model = _mlp(0, hidden=(6,))
    space = ParamSpace.of(model)
    names = prunable_parameters(model)
    prunable = torch.zeros(space.n, dtype=torch.bool)
    for n in names:
        prunable[space.slices()[n]] = True
    N = int(prunable.sum())
    s = 0.8
    target = MagnitudeTarget(space, _vec(model), s, names)
    seen = _count_steps(monkeypatch)
    rec = Recorder()
    ds = _data(48)
    final_target = baselines.iterative_prune(model, target, ds, sample_passes=rounds * 32, rounds=rounds,
                                             batch_size=8, lr=0.05, record=rec)
    assert len(seen) == rounds * 4  # passes // rounds // batch_size steps per round
    w = _vec(model)
    assert int((w[prunable] == 0).sum()) == round(s * N)
    assert int(final_target.mask.sum()) == round(s * N)
    assert torch.equal(final_target.mask, (w == 0) & prunable)
    assert final_target.sparsity == s
    pruned_rows = {int(c["name"].rsplit("pruned", 1)[1]): c for c in rec.calls if "pruned" in (c.get("name") or "")}
    assert sorted(pruned_rows) == list(range(1, rounds + 1))
    prev_zero = torch.zeros(space.n, dtype=torch.bool)
    for r in range(1, rounds + 1):
        zero = (pruned_rows[r]["w"] == 0) & prunable
        s_r = 1 - (1 - s) ** (r / rounds)
        assert int(zero.sum()) == round(s_r * N)
        assert not (prev_zero & ~zero).any()  # nested: pruned weights never come back
        prev_zero = zero
    # a weight pruned in round r is zero in every later record
    for c in rec.calls:
        if c["step"] >= pruned_rows[1]["step"] and c is not rec.calls[0]:
            assert bool((c["w"][(pruned_rows[1]["w"] == 0) & prunable] == 0).all())
    assert rec.calls[-1]["final"] is True and rec.calls[-1]["step"] == rounds * 4
    # the weights were trained between rounds (not just pruned)
    if rounds > 1:
        r1, r2 = pruned_rows[1]["w"], pruned_rows[2]["w"]
        keep = ~((r2 == 0) & prunable)
        assert float((r1[keep] - r2[keep]).norm()) > 1e-3


def test_iterative_prune_structured_removes_nested_units_by_current_norm(monkeypatch):
    """Structured rounds: round(r/R × k) units per layer, smallest current norm, never restored."""
    model = _mlp(0, hidden=(6,))
    space = ParamSpace.of(model)
    groups = unit_groups(model, space, "layers.0")
    target = StructuredTarget(model, space, _vec(model), {"layers.0": 4})
    seen = _count_steps(monkeypatch)
    rec = Recorder()
    final_target = baselines.iterative_prune(model, target, _data(48), sample_passes=2 * 32, rounds=2,
                                             batch_size=8, lr=0.05, record=rec)
    assert len(seen) == 8
    off = lambda w: {i for i, g in enumerate(groups) if bool((w[g] == 0).all())}  # noqa: E731
    pruned = {int(c["name"].rsplit("pruned", 1)[1]): c["w"] for c in rec.calls if "pruned" in (c.get("name") or "")}
    assert len(off(pruned[1])) == 2 and len(off(pruned[2])) == 4
    assert off(pruned[1]) <= off(pruned[2])
    w = _vec(model)
    assert off(w) == off(pruned[2]) == set(final_target.removed["layers.0"])
    assert final_target.counts == {"layers.0": 4}
    # the kept units were trained between the rounds
    kept = torch.cat([groups[i] for i in range(6) if i not in off(w)])
    assert float((pruned[1][kept] - w[kept]).norm()) > 1e-3


def test_structured_stage_picks_the_smallest_current_units():
    model = _mlp(0, hidden=(6,))
    space = ParamSpace.of(model)
    target = StructuredTarget(model, space, _vec(model), {"layers.0": 4})
    w = _vec(model).clone()
    ranked = unit_groups(model, space, "layers.0", batchnorm=False)
    for i, g in enumerate(ranked):  # unit i gets norm growing with (i * 5) % 6: order 0, 5, 4, 3, 2, 1
        w[g] = float((i * 5) % 6 + 1)
    half = target.stage(w, 0.5)
    assert half.counts == {"layers.0": 2} and half.removed["layers.0"] == [0, 5]
    assert target.counts == {"layers.0": 4}  # the original is untouched
    full = target.stage(w, 1.0)
    assert full.removed["layers.0"] == [0, 3, 4, 5]
    assert int(full.mask.sum()) == sum(len(g) for i, g in enumerate(unit_groups(model, space, "layers.0"))
                                       if i in (0, 3, 4, 5))


# --------------------------------------------------------------------------- ewc


def test_ewc_lambda_zero_is_plain_training():
    model = _mlp(0)
    w_a = _vec(model)
    f_a = torch.rand(w_a.numel(), generator=torch.Generator().manual_seed(0), dtype=D)
    ds = _data(48)
    plain = copy.deepcopy(model)
    ewc_model = copy.deepcopy(model)
    baselines.ewc(ewc_model, w_a + 0.3, f_a, ds, sample_passes=80, lam=0.0, batch_size=8, lr=0.05, seed=3)
    train(plain, ds, epochs=80 / len(ds), batch_size=8, lr=0.05, seed=3, max_passes=80)
    torch.testing.assert_close(_vec(ewc_model), _vec(plain), rtol=0, atol=1e-13)
    assert float((_vec(plain) - w_a).norm()) > 1e-2


def test_ewc_one_step_adds_the_penalty_gradient():
    """After one SGD step the EWC weights differ from plain training by −lr·λ·F⊙(w0 − w_A) exactly."""
    model = _mlp(0)
    w0 = _vec(model)
    g = torch.Generator().manual_seed(1)
    w_a = w0 + 0.1 * torch.randn(w0.numel(), generator=g, dtype=D)
    f_a = torch.rand(w0.numel(), generator=g, dtype=D)
    lam, lr = 3.0, 0.05
    ds = _data(48)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    baselines.ewc(a, w_a, f_a, ds, sample_passes=8, lam=lam, batch_size=8, lr=lr, seed=2)
    train(b, ds, epochs=8 / len(ds), batch_size=8, lr=lr, seed=2, max_passes=8)
    torch.testing.assert_close(_vec(a) - _vec(b), -lr * lam * f_a * (w0 - w_a), rtol=1e-9, atol=1e-14)


def test_ewc_stiff_penalty_pins_high_fisher_coordinates():
    model = _mlp(0)
    space = ParamSpace.of(model)
    w_a = _vec(model)
    pinned = torch.zeros(space.n, dtype=torch.bool)
    pinned[space.slices()["layers.0.weight"]] = True
    f_a = torch.where(pinned, torch.full_like(w_a, 1.0), torch.zeros_like(w_a))
    ds_b = _data(48, seed=9)  # another task
    rec = Recorder()
    free_run = copy.deepcopy(model)
    stiff_run = copy.deepcopy(model)
    baselines.ewc(free_run, w_a, f_a, ds_b, sample_passes=48 * 20, lam=0.0, batch_size=8, lr=0.05, seed=0)
    baselines.ewc(stiff_run, w_a, f_a, ds_b, sample_passes=48 * 20, lam=40.0, batch_size=8, lr=0.05, seed=0,
                  record=rec, w_b=_vec(free_run), records=5)
    d_free, d_stiff = _vec(free_run) - w_a, _vec(stiff_run) - w_a
    assert float(d_stiff[pinned].norm()) < 0.1 * float(d_free[pinned].norm())
    assert float(d_stiff[~pinned].norm()) > 0.3 * float(d_free[~pinned].norm())  # the rest still learns task B
    # records: start at t=0, final at t=1, distances to w_b
    assert rec.calls[0]["t"] == 0.0 and torch.equal(rec.calls[0]["w"], w_a)
    assert rec.calls[-1]["final"] is True and rec.calls[-1]["t"] == 1.0 and rec.calls[-1]["step"] == 120
    for c in rec.calls:
        assert c["distance"] == pytest.approx(float((c["w"] - _vec(free_run)).norm()), rel=1e-12)


def test_ewc_distance_is_nan_without_w_b():
    model = _mlp(0)
    rec = Recorder()
    w_a = _vec(model)
    baselines.ewc(model, w_a, torch.ones_like(w_a), _data(16), sample_passes=16, lam=1.0, batch_size=8, record=rec)
    assert all(math.isnan(c["distance"]) for c in rec.calls)
    assert rec.calls[0]["passes"] == 0.0 and rec.calls[-1]["passes"] == 16


# --------------------------------------------------------------------------- gradual, distill (issue 19)


def test_cubic_schedule_is_zhu_and_gupta():
    assert pruning.cubic_sparsity(0.9, 0.0) == 0.0
    assert pruning.cubic_sparsity(0.9, 1.0) == pytest.approx(0.9)
    assert pruning.cubic_sparsity(0.9, 0.5) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    assert pruning.cubic_sparsity(0.9, 2.0) == pytest.approx(0.9)  # held at the end


def test_gradual_prune_grows_nested_masks_to_the_target():
    model, ds = _mlp(hidden=(16,)), _data(n=256)
    space = ParamSpace.of(model)
    target = MagnitudeTarget(space, _vec(model), 0.8, prunable_parameters(model))
    rec = Recorder()
    masks = []
    original = pruning.train

    def spy(*args, remask=None, **kw):
        def watching(step):
            m = remask(step)
            if m is not None:
                masks.append(m.clone())
            return m
        return original(*args, remask=watching, **kw)

    pruning.train = spy
    try:
        final = pruning.gradual_prune(model, target, ds, 256 * 8, batch_size=32, lr=0.05, record=rec)
    finally:
        pruning.train = original
    w = _vec(model)
    sizes = [int(m.sum()) for m in masks]
    assert sizes[0] == 0 and sizes == sorted(sizes) and len(sizes) > 5  # a schedule, growing
    assert sizes[-1] == int(final.mask.sum()) == int(target.mask.sum())  # ends at the target's sparsity
    for a, b in zip(masks, masks[1:]):
        assert bool((a <= b).all())  # nested: a pruned weight stays pruned
    assert bool((w[final.mask] == 0).all())
    assert rec.calls[-1]["final"] and rec.calls[-1]["passes"] == 256 * 8


def test_distillation_ignores_labels_and_is_zero_at_the_teacher():
    teacher, ds = _mlp(), _data()
    loss = pruning.distillation_loss(teacher, 2.0)
    with torch.no_grad():
        z = teacher(ds.x)
    assert float(loss(z, ds.x, ds.y)) == pytest.approx(0.0, abs=1e-12)
    assert float(loss(z + torch.randn_like(z), ds.x, ds.y)) > 0
    # the peer never reads the labels: shuffled labels give the same network
    results = []
    for labels in (ds.y, ds.y[torch.randperm(len(ds.y), generator=torch.Generator().manual_seed(0))]):
        model = _mlp()
        space = ParamSpace.of(model)
        target = MagnitudeTarget(space, _vec(model), 0.5, prunable_parameters(model))
        pruning.prune_finetune(model, target, Dataset(ds.x, labels, "toy", "train"), 200, batch_size=16,
                               temperature=2.0)
        results.append(_vec(model))
    torch.testing.assert_close(results[0], results[1])


def test_distillation_pays_the_teacher_forward_pass():
    model, ds = _mlp(), _data(n=64)
    space = ParamSpace.of(model)
    target = MagnitudeTarget(space, _vec(model), 0.5, prunable_parameters(model))
    rec = Recorder()
    stats = pruning.prune_finetune(model, target, ds, 640, batch_size=16, temperature=2.0, record=rec)
    assert stats.sample_passes == 480  # 640 / (1 + 1/3) sample passes of training
    assert rec.calls[-1]["passes"] == pytest.approx(640)


def test_adam_and_a_custom_loss_reach_train():
    model, ds = _mlp(), _data()
    before = _vec(model).clone()
    with pytest.raises(ValueError, match="optimizer"):
        train(model, ds, epochs=1, optimizer="lbfgs")
    train(model, ds, epochs=1, batch_size=16, lr=1e-3, optimizer="adam", loss_fn=lambda z, x, y: z.pow(2).mean())
    after = _vec(model)
    assert not torch.equal(before, after)
    with torch.no_grad():  # the custom loss (outputs toward zero) was the one minimised
        assert float(model(ds.x).pow(2).mean()) < float(_mlp()(ds.x).pow(2).mean())
