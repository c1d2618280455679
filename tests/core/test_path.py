"""The path engine (``geopath.core.path.walk``) and multi-source steps, on tiny float64 models.

Numerics are checked against dense references (several metric sources) or against an
explicit loop of :func:`geopath.core.step.geodesic_step` calls (the engine's glue: which
batches a step sees, landing, milestones, hooks, resume).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

import geopath.core.path as path_mod
from geopath.core.params import ParamSpace, load_vector, model_vector
from geopath.io.archs import MLP
from geopath.io.checkpoint import read_tensors
from geopath.io.data import Dataset
from geopath.core.step import MetricBatch, StepConfig, geodesic_step
from geopath.core.metric import MetricKind
from geopath.core.path import Combine, MetricSource, PathConfig, PathState, WalkResult, metric_batch, walk
from geopath.core.record import Recorder
from geopath.io.rundir import RunWriter
from geopath.core.targets import MagnitudeTarget, NetworkTarget, prunable_parameters

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64
ARCH_KWARGS = {"in_features": 5, "hidden": [4], "num_classes": 3}


# --------------------------------------------------------------------------- helpers


def _model(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(5, (4,), 3).to(D)


def _data(n: int = 24, seed: int = 1, shift: float = 0.0, name: str = "toy") -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=D) + shift
    return Dataset(x, torch.randint(0, 3, (n,), generator=g), name, "train")


def _writer(out) -> RunWriter:
    out.mkdir(parents=True, exist_ok=True)
    w = RunWriter(out, "mlp", ARCH_KWARGS, None, "test", None)
    w.trace.create()
    return w


def _perturbed(model, scale: float, seed: int):
    other = copy.deepcopy(model)
    space = ParamSpace.of(model)
    noise = torch.randn(space.n, generator=torch.Generator().manual_seed(seed), dtype=D)
    load_vector(other, space, model_vector(model, space) + scale * noise)
    return other.eval()


def _logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def _vec(model):
    return model_vector(model, ParamSpace.of(model))


def _no_eval(net) -> dict:
    return {}


def _rel(a, b):
    return float((a - b).norm()) / float(b.norm())


def _magnitude(model, sparsity=0.5):
    space = ParamSpace.of(model)
    return MagnitudeTarget(space, model_vector(model, space), sparsity, prunable_parameters(model))


def _mag_cfg(model, **kw) -> PathConfig:
    """A sparsify-like config: ε from the starting distance, several steps to the hyperplane."""
    d0 = _magnitude(model).distance(_vec(model))
    step = StepConfig(step_size=(4 * d0 / 20) ** 2, cg_iters=20)
    base = dict(step=step, max_steps=40, save_every=1, batch_size=8, tol=0.3, settle_steps=3, seed=5)
    base.update(kw)
    return PathConfig(**base)


# --------------------------------------------------------------------------- geodesic_step with several sources


@pytest.mark.parametrize("kind", [MetricKind.LOGITS, MetricKind.FISHER], ids=lambda k: k.value)
def test_two_source_step_equals_dense_weighted_tr(mlp_case, kind, dense_jacobian, dense_metric, dense_tr):
    model = mlp_case.make_model()
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    target = _magnitude(model)
    x1 = mlp_case.inputs  # 4 samples
    x2 = torch.randn(6, 5, generator=torch.Generator().manual_seed(9), dtype=D)
    a1, a2 = _perturbed(model, 0.05, 77), _perturbed(model, 0.08, 78)  # each source its own reference network
    chunks1, chunks2 = [x1[:2], x1[2:]], [x2[:4], x2[4:]]  # micro-batches
    b1 = MetricBatch(chunks1, [_logits(a1, c) for c in chunks1], weight=1.0)
    b2 = MetricBatch(chunks2, [_logits(a2, c) for c in chunks2], weight=3.0)
    cfg = StepConfig(beta=0.7, step_size=1e-2, cg_iters=4 * space.n, cg_rtol=1e-12, metric=kind,
                     solver="multiplier", anchor="start")
    info = geodesic_step(model, space, w, [b1, b2], target, cfg)

    def dense_parts(x, anchor):
        z, z0 = _logits(model, x), _logits(anchor, x)
        J = dense_jacobian(model, space, w, x)
        if kind is MetricKind.LOGITS:
            r = z - z0
            dist = float(((z - z0) ** 2).sum(-1).mean())
        else:
            p, p0 = torch.softmax(z, -1), torch.softmax(z0, -1)
            r = p - p0
            dist = float(2 * (p0 * (p0.log() - p.log())).sum(-1).mean())
        return dense_metric(J, z, kind.value), torch.einsum("nci,nc->i", J, r) / x.shape[0], dist

    g1, jr1, d1 = dense_parts(x1, a1)
    g2, jr2, d2 = dense_parts(x2, a2)
    o1, o2 = 0.25, 0.75  # weights 1 and 3 normalised to sum 1
    A = 2.0 * (o1 * g1 + o2 * g2)
    b = cfg.beta * target.direction(w) - 2.0 * (o1 * jr1 + o2 * jr2)
    theta_ref, lam = dense_tr(A, b, math.sqrt(cfg.step_size))
    assert lam > 0
    assert _rel(info.theta, theta_ref) <= 1e-6
    assert float(info.theta @ info.theta) <= cfg.step_size * (1 + 1e-8)
    assert info.drift == pytest.approx(o1 * d1 + o2 * d2, rel=1e-10)
    g = o1 * g1 + o2 * g2
    assert info.metric_length == pytest.approx(math.sqrt(float(info.theta @ g @ info.theta)), rel=1e-8)
    # cost: forward + residual VJP per sample of every source, plus 4/3 per sample per metric product
    # + one forward over the probe inputs (step_fault's check)
    assert info.sample_passes == pytest.approx(10 * (1 / 3 + 2 / 3) + (4 / 3) * 10 * info.products
                                               + len(info.probe.inputs) / 3, rel=1e-12)
    # the weights matter: equal weights give a measurably different step
    A_eq = g1 + g2
    b_eq = cfg.beta * target.direction(w) - (jr1 + jr2)
    theta_eq, _ = dense_tr(A_eq, b_eq, math.sqrt(cfg.step_size))
    assert _rel(theta_eq, theta_ref) > 1e-3


def test_single_source_weight_is_normalised_away(mlp_case):
    """One MetricBatch of weight 5 is the same step as weight 1 (ω is normalised to sum 1)."""
    model = mlp_case.make_model()
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    target = _magnitude(model)
    x = mlp_case.inputs
    z0 = [_logits(_perturbed(model, 0.05, 3), x)]
    cfg = StepConfig(step_size=1e-2, cg_iters=4 * space.n, cg_rtol=1e-12, solver="multiplier")
    one = geodesic_step(model, space, w, [MetricBatch([x], z0, weight=1.0)], target, cfg)
    five = geodesic_step(model, space, w, [MetricBatch([x], z0, weight=5.0)], target, cfg)
    torch.testing.assert_close(five.theta, one.theta, rtol=0, atol=1e-12)
    assert five.drift == pytest.approx(one.drift, rel=1e-12)


# --------------------------------------------------------------------------- combine


def test_combine_accepts_plain_strings():
    assert PathConfig(combine="alternate").combine is Combine.ALTERNATE
    assert PathConfig(combine="sum").combine is Combine.SUM
    assert PathConfig().combine is Combine.SUM
    with pytest.raises(ValueError):
        PathConfig(combine="round-robin")


def _three_sources(model):
    # distinct inputs per source (shifted), each with its own reference network and weight
    return [MetricSource(_data(12, seed=10 + i, shift=10.0 * i, name=f"s{i}"), reference=_perturbed(model, 0.05, 40 + i),
                         name=f"s{i}", weight=float(i + 1)) for i in range(3)]


def _spy_steps(monkeypatch):
    calls = []
    real = path_mod.geodesic_step

    def spy(model, space, w, batches, target, cfg, **kw):
        calls.append({"w": w.clone(), "batches": list(batches), "free": kw.get("free")})
        return real(model, space, w, batches, target, cfg, **kw)

    monkeypatch.setattr(path_mod, "geodesic_step", spy)
    return calls


@pytest.mark.parametrize("combine", ["alternate", "sum"])
def test_which_sources_a_step_sees(tmp_path, monkeypatch, combine):
    model = _model()
    sources = _three_sources(model)
    w_b = model_vector(_perturbed(model, 0.5, 2), ParamSpace.of(model))
    cfg = PathConfig(step=StepConfig(step_size=1e-3, cg_iters=10), max_steps=7, save_every=100, batch_size=4,
                     tol=0.0, land=False, combine=combine, seed=3)
    calls = _spy_steps(monkeypatch)
    walk(model, NetworkTarget(w_b), sources, cfg, Recorder(_writer(tmp_path), _no_eval))
    assert len(calls) == 7
    for k, call in enumerate(calls, start=1):
        expect = [(k - 1) % 3] if combine == "alternate" else [0, 1, 2]
        assert len(call["batches"]) == len(expect)
        for bt, i in zip(call["batches"], expect):
            x, y = metric_batch(sources[i].data, k, cfg, "cpu", source=i)  # seeded by (seed, step, source)
            assert torch.equal(torch.cat(bt.inputs), torch.cat(x))
            assert torch.equal(torch.cat(bt.labels), torch.cat(y))
            torch.testing.assert_close(torch.cat(bt.reference_logits), _logits(sources[i].reference, torch.cat(x)),
                                       rtol=0, atol=1e-14)
            assert bt.weight == sources[i].weight
            # the inputs really are source i's (sources are shifted by 10 apart)
            assert abs(float(torch.cat(bt.inputs).mean()) - 10.0 * i) < 3.0


def test_source_without_reference_uses_the_walk_reference(tmp_path, monkeypatch):
    model = _model()
    walk_reference = _perturbed(model, 0.1, 5)
    own = _perturbed(model, 0.1, 6)
    sources = [MetricSource(_data(12, seed=1), name="a"), MetricSource(_data(12, seed=2), reference=own, name="b")]
    w_b = model_vector(_perturbed(model, 0.5, 2), ParamSpace.of(model))
    cfg = PathConfig(step=StepConfig(step_size=1e-3, cg_iters=5), max_steps=2, save_every=100, batch_size=4,
                     tol=0.0, land=False)
    calls = _spy_steps(monkeypatch)
    walk(copy.deepcopy(model), NetworkTarget(w_b), sources, cfg, Recorder(_writer(tmp_path / "a"), _no_eval),
         reference=walk_reference)
    for call in calls:
        a, b = call["batches"]
        torch.testing.assert_close(torch.cat(a.reference_logits), _logits(walk_reference, torch.cat(a.inputs)))
        torch.testing.assert_close(torch.cat(b.reference_logits), _logits(own, torch.cat(b.inputs)))
    # without any reference the starting network is the reference: on step 1 the reference logits are the model's own
    calls.clear()
    walk(copy.deepcopy(model), NetworkTarget(w_b), sources[:1], cfg, Recorder(_writer(tmp_path / "b"), _no_eval))
    first = calls[0]["batches"][0]
    torch.testing.assert_close(torch.cat(first.reference_logits), _logits(model, torch.cat(first.inputs)))
    assert sources[0].reference is None  # the caller's sources are not modified


def _indexed_sources(n=20, count=2):
    """Sources of equal size whose first input feature is the sample's index (to read back draws)."""
    out = []
    for i in range(count):
        ds = _data(n, seed=60 + i, name=f"s{i}")
        ds.x[:, 0] = torch.arange(n, dtype=D)
        out.append(MetricSource(ds, name=f"s{i}"))
    return out


def _drawn(tmp_path, monkeypatch, seed, steps=3):
    model = _model()
    w_b = model_vector(_perturbed(model, 0.5, 2), ParamSpace.of(model))
    cfg = PathConfig(step=StepConfig(step_size=1e-3, cg_iters=5), max_steps=steps, save_every=100, batch_size=6,
                     tol=0.0, land=False, seed=seed)
    calls = _spy_steps(monkeypatch)
    walk(model, NetworkTarget(w_b), _indexed_sources(), cfg, Recorder(_writer(tmp_path), _no_eval))
    return [[torch.cat(bt.inputs)[:, 0].long().tolist() for bt in c["batches"]] for c in calls]


def test_metric_batches_are_seeded_by_seed_step_and_source(tmp_path, monkeypatch):
    a = _drawn(tmp_path / "a", monkeypatch, seed=4)
    b = _drawn(tmp_path / "b", monkeypatch, seed=4)
    c = _drawn(tmp_path / "c", monkeypatch, seed=5)
    assert a == b  # reproducible
    assert a != c  # the seed matters
    for step in a:
        assert len(step) == 2 and all(len(set(ix)) == 6 for ix in step)  # without replacement
        assert step[0] != step[1]  # same step, equal-size sources: different draws
    assert a[0][0] != a[1][0] != a[2][0]  # each step draws afresh


def test_alternate_walk_equals_explicit_loop(tmp_path):
    """The walk's trajectory is w_k = w_{k-1} + step(source (k-1) mod S alone)."""
    model = _model()
    space = ParamSpace.of(model)
    sources = _three_sources(model)
    w_b = model_vector(_perturbed(model, 0.5, 2), space)
    target = NetworkTarget(w_b)
    cfg = PathConfig(step=StepConfig(step_size=1e-3, cg_iters=10), max_steps=6, save_every=100, batch_size=5,
                     tol=0.0, land=False, combine="alternate", seed=3)
    res = walk(copy.deepcopy(model), target, sources, cfg, Recorder(_writer(tmp_path / "alt"), _no_eval))

    w = model_vector(model, space)
    ref_model = copy.deepcopy(model)
    passes = length = 0.0
    for k in range(1, 7):
        i = (k - 1) % 3
        x, y = metric_batch(sources[i].data, k, cfg, "cpu", source=i)
        z0 = [_logits(sources[i].reference, xb) for xb in x]
        info = geodesic_step(ref_model, space, w, [MetricBatch(x, z0, y, sources[i].weight)], target, cfg.step)
        w = w + info.theta
        passes += info.sample_passes + sum(len(xb) for xb in x) / 3  # + the anchor's forward
        length += info.metric_length
    torch.testing.assert_close(_vec(res.model), w, rtol=0, atol=1e-12)
    assert res.state.sample_passes == pytest.approx(passes, rel=1e-12)
    assert res.state.length == pytest.approx(length, rel=1e-12)
    assert res.final["epochs"] == pytest.approx(passes / 36, rel=1e-12)  # over all sources' inputs (3 × 12)

    # and the summed walk is a different path
    summed = walk(copy.deepcopy(model), target, sources, dataclasses.replace(cfg, combine="sum"),
                  Recorder(_writer(tmp_path / "sum"), _no_eval))
    assert float((_vec(summed.model) - w).norm()) > 1e-6


# --------------------------------------------------------------------------- landing


def _network_setup():
    model = _model()
    space = ParamSpace.of(model)
    w_b = model_vector(_perturbed(model, 0.5, 2), space)
    return model, space, w_b


def test_land_false_stops_where_the_path_is(tmp_path, monkeypatch):
    model, space, w_b = _network_setup()
    ds = _data()
    cfg = PathConfig(step=StepConfig(step_size=1e-3, cg_iters=10), max_steps=5, save_every=100, batch_size=8,
                     tol=0.01, land=False)
    calls = _spy_steps(monkeypatch)
    writer = _writer(tmp_path)
    res = walk(copy.deepcopy(model), NetworkTarget(w_b), ds, cfg, Recorder(writer, _no_eval))
    assert len(calls) == 5  # max_steps bounds the approach
    # the endpoint is the last step's result, not projected onto the target
    assert not torch.equal(_vec(res.model), w_b)
    assert res.final["step"] == 5 and res.state.step == 5 and res.state.landed_at == 5
    gap = float((_vec(res.model) - w_b).norm())
    assert res.final["distance"] == pytest.approx(gap, rel=1e-12)
    assert gap > cfg.tol * res.d0
    torch.testing.assert_close(res.approach_end, _vec(res.model), rtol=0, atol=0)
    assert res.landing_gap == pytest.approx(gap, rel=1e-12)
    # the saved endpoint is the same network (pending under its real name until the job finishes the run)
    assert not (tmp_path / "final.safetensors").exists()
    tensors, _ = read_tensors(writer.network_file("final.safetensors"))
    torch.testing.assert_close(space.flatten(tensors), _vec(res.model), rtol=0, atol=0)
    # steps of ε: the path moved at most 5·√ε
    assert float((_vec(res.model) - model_vector(model, space)).norm()) <= 5 * math.sqrt(1e-3) * (1 + 1e-9)


def test_land_false_stops_at_tol_before_max_steps(tmp_path):
    model = _model()
    target = _magnitude(model)
    cfg = _mag_cfg(model, land=False, max_steps=40, tol=0.5)
    res = walk(copy.deepcopy(model), target, _data(), cfg, Recorder(_writer(tmp_path), _no_eval))
    assert res.state.step < 40
    assert res.final["distance"] <= 0.5 * res.d0
    assert res.landing_gap == pytest.approx(res.final["distance"], rel=1e-12)
    # not projected: the masked weights are not zero
    assert float(_vec(res.model)[target.mask].abs().min()) > 0


def test_land_true_ends_exactly_on_network_target(tmp_path):
    model, space, w_b = _network_setup()
    ds = _data()
    cfg = PathConfig(step=StepConfig(step_size=1e-3, cg_iters=10), max_steps=5, save_every=100, batch_size=8,
                     tol=0.01, land=True, settle_steps=4)
    land_writer = _writer(tmp_path / "land")
    landed = walk(copy.deepcopy(model), NetworkTarget(w_b), ds, cfg, Recorder(land_writer, _no_eval))
    stopped = walk(copy.deepcopy(model), NetworkTarget(w_b), ds, dataclasses.replace(cfg, land=False),
                   Recorder(_writer(tmp_path / "stop"), _no_eval))
    assert torch.equal(_vec(landed.model), w_b)  # exactly, bit for bit
    assert landed.final["distance"] == 0.0 and landed.final["t"] == 1.0
    # a network target has no free coordinates: no settle steps after landing
    assert landed.state.step == 5 and landed.state.landed_at == 5
    # the approach was the same path; the landing jumped the remaining gap
    torch.testing.assert_close(landed.approach_end, _vec(stopped.model), rtol=0, atol=1e-14)
    gap = float((landed.approach_end - w_b).norm())
    assert landed.landing_gap == pytest.approx(gap, rel=1e-12)
    assert landed.final["landing_gap"] == pytest.approx(gap, rel=1e-12)
    assert gap > 0.5 * landed.d0  # max_steps stopped the approach well short of the target
    land_writer.finish({})  # the endpoint appears under its real name when the run is finished
    tensors, _ = read_tensors(tmp_path / "land" / "final.safetensors")
    assert torch.equal(ParamSpace.of(model).flatten(tensors), w_b)


def test_landing_gap_zero_without_landing_state():
    res = WalkResult(model=_model(), final={}, state=PathState(), d0=1.0)
    assert res.landing_gap == 0.0 and res.approach_end is None


def test_land_on_hyperplane_then_settle_keeps_masked_zero(tmp_path, monkeypatch):
    model = _model()
    target = _magnitude(model)
    cfg = _mag_cfg(model, settle_steps=3)
    calls = _spy_steps(monkeypatch)
    res = walk(copy.deepcopy(model), target, _data(), cfg, Recorder(_writer(tmp_path), _no_eval))
    landed = res.state.landed_at
    assert landed is not None and res.state.step == landed + 3
    # the approach reached tol, so the gap is at most tol·d0, and the approach end is off the hyperplane
    assert res.landing_gap <= cfg.tol * res.d0
    assert target.distance(res.approach_end) == pytest.approx(res.landing_gap, rel=1e-12)
    assert res.landing_gap > 0
    w = _vec(res.model)
    assert bool((w[target.mask] == 0).all())
    # settle steps are restricted to the free coordinates and start from the projected point
    settle = calls[landed:]
    assert len(settle) == 3
    assert torch.equal(settle[0]["w"], target.project(res.approach_end))
    for c in settle:
        assert torch.equal(c["free"], ~target.mask)
    for c in calls[:landed]:
        assert c["free"] is None
    # the free weights did move during the settle
    assert float((w - settle[0]["w"]).norm()) > 0


def test_coordinates_not_free_stay_put_until_landing(tmp_path):
    model = _model()
    space = ParamSpace.of(model)
    target = _magnitude(model)
    w0 = model_vector(model, space)
    hold = torch.zeros(space.n, dtype=torch.bool)
    hold[space.slices()["layers.1.bias"]] = True  # not masked by the target
    assert not (hold & target.mask).any()
    cfg = _mag_cfg(model, land=False, max_steps=6)
    res = walk(copy.deepcopy(model), target, _data(), cfg, Recorder(_writer(tmp_path), _no_eval), free=~hold)
    w = _vec(res.model)
    assert torch.equal(w[hold], w0[hold])
    assert float((w[~hold] - w0[~hold]).norm()) > 1e-3


# --------------------------------------------------------------------------- milestones and hooks


def test_milestone_rows(tmp_path):
    model = _model()
    target = _magnitude(model)
    M = 4
    cfg = _mag_cfg(model, save_every=1000, milestones=M, tol=0.2)
    ts = []
    writer = _writer(tmp_path)
    res = walk(copy.deepcopy(model), target, _data(), cfg, Recorder(writer, _no_eval), before_step=lambda w, t: ts.append(t))
    rows = writer.trace.rows()
    landed = res.state.landed_at
    # t after step s (s = 1..landed) is what before_step saw at step s + 1
    t_after = {s: ts[s] for s in range(1, landed)}
    t_after[landed] = 1.0 - res.landing_gap / res.d0
    assert max(t_after.values()) >= (M - 1) / M  # the path passes every milestone
    # expected: a row at the first step where floor(t·M) exceeds every earlier value, while below M
    expected, best = [], 0
    for s in range(1, landed + 1):
        k = int(t_after[s] * M + 1e-9)
        if best < k < M:
            expected.append((s, k))
            best = k
    step_rows = [r for r in rows if r["checkpoint"].startswith("steps/")]
    assert step_rows[0]["step"] == 0 and step_rows[0]["milestone"] == 0
    got = [(r["step"], r["milestone"]) for r in step_rows[1:]]  # save_every is never due: milestone rows only
    assert got == expected
    for k in range(1, M):  # a row for every milestone passed, recorded when it was first reached
        first = min(s for s in t_after if t_after[s] >= k / M)
        assert any(s == first and m >= k for s, m in got)
    prev = 0
    for r in rows:
        if r["milestone"] > prev:
            assert r["t"] >= r["milestone"] / M - 1e-12
        prev = r["milestone"]
    assert rows[-1]["milestone"] == M and res.state.milestone == M
    assert rows[-1]["checkpoint"] == "final.safetensors"


def test_before_step_sees_pre_step_weights_and_progress(tmp_path, monkeypatch):
    model = _model()
    target = _magnitude(model)
    w0 = _vec(model)
    d0 = target.distance(w0)
    cfg = _mag_cfg(model, settle_steps=2)
    seen = []
    calls = _spy_steps(monkeypatch)
    res = walk(copy.deepcopy(model), target, _data(), cfg, Recorder(_writer(tmp_path), _no_eval),
               before_step=lambda w, t: seen.append((w.clone(), t)))
    assert len(seen) == len(calls) == res.state.step  # once per step, approach and settle
    assert torch.equal(seen[0][0], w0)
    for (w, t), call in zip(seen, calls):
        assert torch.equal(w, call["w"])  # the weights the step starts from
        expect = max(0.0, 1.0 - float(w[target.mask].norm()) / d0)
        assert t == pytest.approx(expect, rel=1e-12, abs=1e-15)
    assert seen[-1][1] == 1.0  # settle steps start on the hyperplane
    assert 0.0 < seen[1][1] < 1.0


# --------------------------------------------------------------------------- resume and chains


def _slow_eval(net) -> dict:
    import time

    time.sleep(0.03)  # make wall time measurable against the steps' own cost
    return {}


def test_result_state_carries_wall_time_into_the_next_leg(tmp_path):
    model = _model()
    space = ParamSpace.of(model)
    w_b = model_vector(_perturbed(model, 0.5, 2), space)
    cfg = PathConfig(step=StepConfig(step_size=1e-3, cg_iters=5), max_steps=4, save_every=1, batch_size=8,
                     tol=0.0, land=False)
    writer = _writer(tmp_path)
    first = walk(model, NetworkTarget(w_b), _data(), cfg, Recorder(writer, _slow_eval))
    assert first.final["wall_time"] >= 0.1
    # the state handed back is the state of the endpoint row (as PathState.from_row would read it)
    assert first.state.wall_time == pytest.approx(first.final["wall_time"], abs=0.02)
    # a chained leg (as transition.run_transition does) continues step, length, passes and wall time
    second = walk(first.model, NetworkTarget(model_vector(_perturbed(model, 0.5, 3), space)), _data(),
                  dataclasses.replace(cfg, max_steps=6), Recorder(writer, _slow_eval), reference=copy.deepcopy(model),
                  state=dataclasses.replace(first.state, landed_at=None, milestone=0, landing_gap=None))
    rows = writer.trace.rows()[len(writer.trace.rows()) - 3:]
    assert [r["step"] for r in rows] == [5, 6, 6]
    assert all(r["sample_passes"] > first.final["sample_passes"] for r in rows)
    assert all(r["wall_time"] > first.final["wall_time"] for r in rows)
    assert second.state.step == 6


@pytest.mark.parametrize("how", ["max_steps", "crash", "crash_in_settle"])
def test_resume_repeats_the_uninterrupted_path(tmp_path, how):
    start = _model()
    ds = _data()
    # save_every=3 with milestones: rows at multiples of 3 and where t first reaches k/4
    d0 = _magnitude(start).distance(_vec(start))
    cfg = _mag_cfg(start, settle_steps=3, milestones=4, save_every=3,
                   step=StepConfig(step_size=(4 * d0 / 40) ** 2, cg_iters=20))
    full_writer = _writer(tmp_path / "full")
    full = walk(copy.deepcopy(start), _magnitude(start), ds, cfg, Recorder(full_writer, _no_eval))
    n_full, landed = full.state.step, full.state.landed_at
    assert n_full == landed + 3 and landed > 7
    cut = 7 if how != "crash_in_settle" else n_full - 1  # steps done before the interruption

    writer = _writer(tmp_path / "cut")
    if how == "max_steps":
        walk(copy.deepcopy(start), _magnitude(start), ds, dataclasses.replace(cfg, max_steps=cut, land=False),
             Recorder(writer, _no_eval))
    else:
        def crash(w, t, count=[0]):
            count[0] += 1
            if count[0] > cut:
                raise RuntimeError("power cut")

        with pytest.raises(RuntimeError, match="power cut"):
            walk(copy.deepcopy(start), _magnitude(start), ds, cfg, Recorder(writer, _no_eval), before_step=crash)
    rows = [r for r in writer.trace.rows() if r["checkpoint"].startswith("steps/")]
    last = rows[-1]  # the last saved network before the cut
    if how == "crash_in_settle":
        assert landed < last["step"] <= cut and last["landed_at"] == landed and last["landing_gap"] > 0
    else:
        assert 0 < last["step"] <= cut and last["landed_at"] is None and last["milestone"] > 0
    writer.trace.keep(writer.trace.rows()[: writer.trace.rows().index(last) + 1])
    tensors, _ = read_tensors(writer.out / last["checkpoint"])
    resumed_model = copy.deepcopy(start)
    resumed_model.load_state_dict(tensors)
    res = walk(resumed_model, _magnitude(start), ds, cfg, Recorder(writer, _no_eval), reference=copy.deepcopy(start),
               state=PathState.from_row(last))
    assert res.state.step == n_full and res.state.landed_at == landed
    torch.testing.assert_close(_vec(res.model), _vec(full.model), rtol=0, atol=1e-12)
    assert res.state.length == pytest.approx(full.state.length, rel=1e-12)
    assert res.state.sample_passes == pytest.approx(full.state.sample_passes, rel=1e-12)
    assert res.landing_gap == pytest.approx(full.landing_gap, rel=1e-10)
    # the resumed trace repeats the uninterrupted one row for row
    a, b = full_writer.trace.rows(), writer.trace.rows()
    assert [(r["step"], r["milestone"], r["landed_at"]) for r in a] == [(r["step"], r["milestone"], r["landed_at"])
                                                                          for r in b]
    for ra, rb in zip(a, b):
        assert rb["distance"] == pytest.approx(ra["distance"], rel=1e-9, abs=1e-12)
        assert rb["length"] == pytest.approx(ra["length"], rel=1e-12)
        assert rb["epochs"] == pytest.approx(ra["epochs"], rel=1e-12)


def test_settle_anchor_applies_on_the_target_only(tmp_path, monkeypatch):
    """``settle_anchor``: approach steps use the step's anchor (with the reference's outputs), settle steps the
    settle anchor (labels: no reference outputs are computed or paid for)."""
    seen = []
    real = path_mod.geodesic_step

    def spy(model, space, w, batches, target, cfg, **kw):
        seen.append((cfg.anchor.value, batches[0].reference_logits is not None, kw.get("free") is not None))
        return real(model, space, w, batches, target, cfg, **kw)

    monkeypatch.setattr(path_mod, "geodesic_step", spy)
    model = _model()
    result = walk(model, _magnitude(model), _data(), _mag_cfg(model, settle_anchor="labels"),
                  Recorder(_writer(tmp_path), _no_eval))
    landed = result.state.landed_at
    assert 0 < landed < len(seen) and len(seen) - landed == 3
    assert all(s[:2] == ("start", True) for s in seen[:landed])
    assert all(s[:2] == ("labels", False) and s[2] for s in seen[landed:])  # restricted to the hyperplane too


@pytest.mark.parametrize("batch, micro, sizes", [(128, None, [128]), (128, 64, [64, 64]), (129, 64, [43, 43, 43]),
                                                 (65, 64, [33, 32]), (10, 3, [3, 3, 2, 2])])
def test_micro_batches_have_near_equal_sizes(batch, micro, sizes):
    """⌈n / micro-batch⌉ micro-batches of near-equal size: 129 in 64s was 64 + 64 + 1, and one input alone
    cannot be normalised by BatchNorm's batch statistics (BatchNorm1d refused it)."""
    g = torch.Generator().manual_seed(0)
    ds = Dataset(torch.randn(200, 3, generator=g), torch.arange(200), "toy", "train", None)
    cfg = PathConfig(step=StepConfig(step_size=1e-3), batch_size=batch, micro_batch=micro, seed=1)
    x, y = metric_batch(ds, 0, cfg, "cpu")
    assert [len(c) for c in x] == sizes and [len(c) for c in y] == sizes
    # the same inputs as one batch, in the same order, labels with them
    whole = PathConfig(step=StepConfig(step_size=1e-3), batch_size=batch, seed=1)
    xw, yw = metric_batch(ds, 0, whole, "cpu")
    assert torch.equal(torch.cat(x), xw[0]) and torch.equal(torch.cat(y), yw[0])
