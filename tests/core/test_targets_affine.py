"""Affine hyperplane and network targets, unit groups, and the transition plan / switchboard."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from geopath.core.params import ParamSpace, load_vector, model_vector
from geopath.io.archs import MLP
from geopath.io.data import Dataset
from geopath.errors import UsageError
from geopath.core.step import StepConfig
from geopath.core.path import PathConfig, walk
from geopath.core.record import Recorder
from geopath.io.rundir import RunWriter
from geopath.core.targets import HyperplaneTarget, NetworkTarget, Target, group_mask, unit_groups, unit_norms
from geopath.jobs.transition import Leg, Switchboard, leg_target, parse_plan

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64


def _rand(n, seed):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=D)


# --------------------------------------------------------------------------- HyperplaneTarget


def test_hyperplane_zero_values_by_hand():
    w = torch.tensor([1.0, -2.0, 3.0, 4.0], dtype=D)
    t = HyperplaneTarget(torch.tensor([True, False, True, False]))
    assert torch.equal(t.direction(w), torch.tensor([-1.0, 0.0, -3.0, 0.0], dtype=D))
    assert t.distance(w) == pytest.approx(10 ** 0.5, rel=1e-15)
    assert torch.equal(t.project(w), torch.tensor([0.0, -2.0, 0.0, 4.0], dtype=D))
    assert torch.equal(t.free(), torch.tensor([False, True, False, True]))
    assert t.describe() == {"target": "hyperplane", "masked": 2}


def test_hyperplane_affine_values_by_hand():
    w = torch.tensor([1.0, -2.0, 3.0, 4.0], dtype=D)
    values = torch.tensor([0.5, 9.0, -1.0, 7.0], dtype=D)
    t = HyperplaneTarget(torch.tensor([1, 0, 1, 0]), values=values)  # an integer mask is read as bool
    assert t.mask.dtype == torch.bool
    # only masked coordinates are pulled, to their values (not to zero)
    assert torch.equal(t.direction(w), torch.tensor([-0.5, 0.0, -4.0, 0.0], dtype=D))
    assert t.distance(w) == pytest.approx((0.25 + 16.0) ** 0.5, rel=1e-15)
    p = t.project(w)
    assert torch.equal(p, torch.tensor([0.5, -2.0, -1.0, 4.0], dtype=D))
    assert t.distance(p) == 0.0 and torch.equal(t.project(p), p)
    assert torch.equal(w + t.direction(w), p)  # one full step along v lands on the plane
    # values are copied: changing the caller's tensor does not move the target
    values[0] = 100.0
    assert torch.equal(t.project(w), p)


def test_hyperplane_values_follow_the_weights_dtype():
    t = HyperplaneTarget(torch.tensor([True, False]), values=torch.tensor([0.25, 3.0], dtype=torch.float32))
    w = torch.tensor([1.0, 2.0], dtype=D)
    assert t.project(w).dtype == D and t.direction(w).dtype == D
    assert torch.equal(t.project(w), torch.tensor([0.25, 2.0], dtype=D))


def test_hyperplane_free_default_and_given():
    mask = torch.tensor([True, True, False, False])
    assert torch.equal(HyperplaneTarget(mask).free(), ~mask)
    given = torch.tensor([0, 1, 1, 0])
    t = HyperplaneTarget(mask, free=given)
    assert t.free().dtype == torch.bool
    assert torch.equal(t.free(), torch.tensor([False, True, True, False]))
    assert Target().free() is None


def test_network_target():
    w_b = _rand(6, 0)
    t = NetworkTarget(w_b)
    w = _rand(6, 1)
    assert torch.equal(t.direction(w), w_b - w)
    assert t.distance(w) == pytest.approx(float((w - w_b).norm()), rel=1e-15)
    p = t.project(w)
    assert torch.equal(p, w_b)
    p[0] = 42.0  # the projection is a copy, not the target itself
    assert torch.equal(t.project(w), w_b) and t.distance(w_b) == 0.0
    w_b[1] = -42.0  # nor does the target alias the caller's tensor
    assert float(t.project(w)[1]) != -42.0
    assert t.free() is None
    assert t.describe() == {"target": "network", "parameters": 6}


# --------------------------------------------------------------------------- unit_groups


class LinBN(nn.Module):
    """Linear(3→4) → BatchNorm1d(4) → ReLU → Linear(4→4, no bias) → Linear(4→2)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.bn1 = nn.BatchNorm1d(4)
        self.fc2 = nn.Linear(4, 4, bias=False)
        self.fc3 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc3(self.fc2(torch.relu(self.bn1(self.fc1(x)))))


class ConvBN(nn.Module):
    """Conv2d(1→3, 2×2) → BatchNorm2d(3) → ReLU → Conv2d(3→2, 2×2) → flatten → Linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 2)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 2)
        self.fc = nn.Linear(2 * 2 * 2, 2)

    def forward(self, x):
        return self.fc(self.conv2(torch.relu(self.bn1(self.conv1(x)))).flatten(1))


def _with_stats(model):
    torch.manual_seed(0)
    model = model.to(D)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _reference_groups(model, layer, bn):
    """Flat indices of each unit: mark unit i's entries in named tensors, flatten, read the non-zeros."""
    space = ParamSpace.of(model)
    named = dict(model.named_parameters())
    units = named[f"{layer}.weight"].shape[0]
    out = []
    for i in range(units):
        marks = {n: torch.zeros_like(p) for n, p in named.items()}
        marks[f"{layer}.weight"][i] = 1
        if f"{layer}.bias" in marks:
            marks[f"{layer}.bias"][i] = 1
        if bn:
            marks[f"{bn}.weight"][i] = 1
            marks[f"{bn}.bias"][i] = 1
        out.append(set(space.flatten(marks).nonzero().squeeze(1).tolist()))
    return out


@pytest.mark.parametrize("factory,layer,bn,fan", [(LinBN, "fc1", "bn1", 3), (ConvBN, "conv1", "bn1", 4)],
                         ids=["linear", "conv"])
def test_unit_groups_cover_weight_row_bias_and_batchnorm(factory, layer, bn, fan):
    model = _with_stats(factory())
    space = ParamSpace.of(model)
    groups = unit_groups(model, space, layer)
    ref = _reference_groups(model, layer, bn)
    assert [set(g.tolist()) for g in groups] == ref
    assert groups.shape == (len(ref), fan + 3) and groups.dtype == torch.long
    # without batchnorm: the weight row and the bias only
    plain = unit_groups(model, space, layer, batchnorm=False)
    assert [set(g.tolist()) for g in plain] == _reference_groups(model, layer, None)
    # groups are disjoint
    all_idx = groups.reshape(-1)
    assert len(set(all_idx.tolist())) == len(all_idx)


@pytest.mark.parametrize("factory,layer,bn_name,shape",
                         [(LinBN, "fc1", "bn1", (5, 3)), (ConvBN, "conv1", "bn1", (5, 1, 4, 4))], ids=["linear", "conv"])
def test_zero_unit_group_silences_the_channel_after_batchnorm(factory, layer, bn_name, shape):
    model = _with_stats(factory())
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    groups = unit_groups(model, space, layer)
    w[groups[1]] = 0.0
    load_vector(model, space, w)
    seen = {}
    getattr(model, bn_name).register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        model(torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=D))
    out = seen["out"]
    assert bool((out[:, 1] == 0).all())  # exactly zero despite BatchNorm's running mean
    assert float(out[:, 0].abs().sum()) > 0 and float(out[:, 2].abs().sum()) > 0


def test_unit_groups_without_bias_and_without_following_batchnorm():
    model = _with_stats(LinBN())
    space = ParamSpace.of(model)
    # fc2 has no bias and the batchnorm comes before it: weight rows only
    g2 = unit_groups(model, space, "fc2")
    assert [set(g.tolist()) for g in g2] == _reference_groups(model, "fc2", None)
    assert all(len(g) == 4 for g in g2)
    # fc3 is last: weight row and bias
    g3 = unit_groups(model, space, "fc3")
    assert [set(g.tolist()) for g in g3] == _reference_groups(model, "fc3", None)


def test_batchnorm_after_another_layer_is_not_attached():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(4)  # normalises b's outputs, not a's

    model = M().to(D)
    space = ParamSpace.of(model)
    assert [set(g.tolist()) for g in unit_groups(model, space, "a")] == _reference_groups(model, "a", None)
    assert [set(g.tolist()) for g in unit_groups(model, space, "b")] == _reference_groups(model, "b", "bn")


def test_unit_groups_rejects_non_layers():
    model = _with_stats(LinBN())
    space = ParamSpace.of(model)
    for bad in ("bn1", "nope", ""):
        with pytest.raises(UsageError):
            unit_groups(model, space, bad)


def test_unit_norms_and_group_mask_by_hand():
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=D)
    groups = torch.tensor([[0, 1], [2, 4], [3, 0]])
    assert unit_norms(groups, w).tolist() == [5.0, 34.0, 17.0]
    assert group_mask([groups[[0, 2]]], w).tolist() == [True, True, False, True, False]
    assert group_mask([groups[[0]], groups[[1]][:, :1]], w).tolist() == [True, True, True, False, False]
    assert not group_mask([groups[[]]], w).any() and not group_mask([], w).any()


# --------------------------------------------------------------------------- parse_plan


PLAN = [
    {"name": "C2", "remove": {"layers.0": 2}},
    {"remove": {"layers.0": 1, "layers.1": 1}, "steps": 7, "settle_steps": 3},
    {"name": "C4", "restore": {"layers.0": 2}, "step_size": 1e-3, "beta": 0.5, "max_steps": 9},
    {"sparsity": 0.5},
]


def _check_plan(legs):
    assert [leg.name for leg in legs] == ["C2", "leg2", "C4", "leg4"]
    assert legs[0] == Leg("C2", remove={"layers.0": 2})
    assert legs[1].remove == {"layers.0": 1, "layers.1": 1} and legs[1].overrides == {"steps": 7, "settle_steps": 3}
    assert legs[2].restore == {"layers.0": 2} and legs[2].remove == {}
    assert legs[2].overrides == {"step_size": 1e-3, "beta": 0.5, "max_steps": 9}
    assert legs[3].sparsity == 0.5 and isinstance(legs[3].sparsity, float)


def test_parse_plan_list_dict_and_file(tmp_path):
    import yaml

    _check_plan(parse_plan(copy.deepcopy(PLAN)))
    _check_plan(parse_plan({"legs": copy.deepcopy(PLAN)}))
    f = tmp_path / "plan.yaml"
    f.write_text(yaml.safe_dump({"legs": PLAN}))
    _check_plan(parse_plan(str(f)))
    _check_plan(parse_plan(f))
    g = tmp_path / "list.yml"
    g.write_text(yaml.safe_dump(PLAN))
    _check_plan(parse_plan(g))
    # a leg's to_dict reads back as the same leg
    legs = parse_plan(PLAN)
    assert parse_plan([leg.to_dict() for leg in legs]) == legs


@pytest.mark.parametrize("plan", [
    [],
    {"legs": []},
    {},
    None,
    "",
    {"legs": PLAN, "extra": 1},
    {"legs": [{"name": "x", "remvoe": {"a": 1}}]},
    [{"name": "x", "remove": {"a": 1}, "setle_steps": 3}],  # a typo next to a valid action
    [{"name": "x"}],  # no remove, restore or sparsity
    [{"remove": {"a": -1}}],
    [{"remove": {"a": 1.5}}],
    [{"remove": {"a": True}}],
    [{"remove": {"a": "3"}}],
    [{"remove": ["a", 3]}],
    [{"remove": {1: 3}}],
    [{"restore": {"a": -2}}],
    [{"sparsity": 1.0}],
    [{"sparsity": -0.1}],
    [{"sparsity": True}],
    [{"sparsity": "0.5"}],
    ["remove a"],
    [{"remove": {"a": 1}}, 3],
    {"legs": {"remove": {"a": 1}}},
], ids=lambda p: repr(p)[:40])
def test_parse_plan_rejects_bad_plans(plan):
    with pytest.raises(UsageError):
        parse_plan(plan)


def test_parse_plan_rejects_missing_and_bad_files(tmp_path):
    with pytest.raises(UsageError, match="no such plan file"):
        parse_plan(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("legs: [ {remove: \n")
    with pytest.raises(UsageError, match="not valid YAML"):
        parse_plan(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(UsageError):
        parse_plan(empty)


@pytest.mark.parametrize("override", [{"steps": 0}, {"steps": "many"}, {"settle_steps": -1}],
                         ids=["steps0", "steps_text", "settle_negative"])
def test_parse_plan_rejects_bad_overrides(override):
    with pytest.raises(UsageError):
        parse_plan([{"remove": {"layers.0": 1}}, {"restore": {"layers.0": 1}, **override}])


# --------------------------------------------------------------------------- Switchboard


def _board_model():
    torch.manual_seed(0)
    model = MLP(3, (6,), 4).to(D)
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    # unit i of layers.0 gets norm ∝ a fixed order: units 4, 1, 5, 0, 3, 2 from smallest to largest
    scale = {4: 0.1, 1: 0.2, 5: 0.3, 0: 0.4, 3: 0.5, 2: 0.6}
    for i, g in enumerate(unit_groups(model, space, "layers.0", batchnorm=False)):
        w[g] = w[g] / w[g].norm() * scale[i]
    load_vector(model, space, w)
    return model, space, w


def test_switchboard_removes_smallest_norm_units_still_on():
    model, space, w = _board_model()
    board = Switchboard()
    board.apply(Leg("a", remove={"layers.0": 2}), model, space, w)
    assert board.removed == {"layers.0": [4, 1]}
    board.apply(Leg("b", remove={"layers.0": 2}), model, space, w)
    assert board.removed == {"layers.0": [4, 1, 5, 0]}  # the next smallest among those still on
    mask = board.mask(model, space, w)
    groups = unit_groups(model, space, "layers.0")
    expect = torch.zeros(space.n, dtype=torch.bool)
    for i in (4, 1, 5, 0):
        expect[groups[i]] = True
    assert torch.equal(mask, expect)


def test_switchboard_restore_is_lifo():
    model, space, w = _board_model()
    board = Switchboard()
    board.apply(Leg("a", remove={"layers.0": 2}), model, space, w)
    board.apply(Leg("b", remove={"layers.0": 1}), model, space, w)
    board.apply(Leg("c", restore={"layers.0": 1}), model, space, w)
    assert board.removed["layers.0"] == [4, 1]  # unit 5, removed last, is back
    board.apply(Leg("d", restore={"layers.0": 2}), model, space, w)
    assert board.removed["layers.0"] == []
    # restore then remove in one leg: a swap; the units it restores are not among those it removes (still zero in a
    # run's weights at the leg's start, they were removed again and the leg did nothing)
    board = Switchboard()
    board.apply(Leg("a", remove={"layers.0": 3}), model, space, w)
    first = list(board.removed["layers.0"])
    board.apply(Leg("b", restore={"layers.0": 3}, remove={"layers.0": 1}), model, space, w)
    assert len(board.removed["layers.0"]) == 1 and board.removed["layers.0"][0] not in first


def test_switchboard_over_restore_and_remove_all_raise():
    model, space, w = _board_model()
    board = Switchboard()
    board.apply(Leg("a", remove={"layers.0": 2}), model, space, w)
    with pytest.raises(UsageError, match="cannot restore 3"):
        board.apply(Leg("b", restore={"layers.0": 3}), model, space, w)
    with pytest.raises(UsageError):
        Switchboard().apply(Leg("c", restore={"layers.0": 1}), model, space, w)
    with pytest.raises(UsageError, match="one must stay"):
        board.apply(Leg("d", remove={"layers.0": 4}), model, space, w)  # 4 of the 4 still on
    with pytest.raises(UsageError):
        Switchboard().apply(Leg("e", remove={"layers.0": 6}), model, space, w)
    with pytest.raises(UsageError):
        Switchboard().apply(Leg("f", remove={"nope": 1}), model, space, w)
    ok = Switchboard()
    ok.apply(Leg("g", remove={"layers.0": 5}), model, space, w)  # all but one is allowed
    assert sorted(ok.removed["layers.0"]) == [0, 1, 3, 4, 5]


def test_switchboard_ranks_by_weights_not_batchnorm():
    model = _with_stats(ConvBN())
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    plain = unit_groups(model, space, "conv1", batchnorm=False)
    full = unit_groups(model, space, "conv1")
    for i, g in enumerate(plain):
        w[g] = w[g] / w[g].norm() * (0.1 * (i + 1))  # unit 0 smallest by its filter and bias
    bn_only = [sorted(set(f.tolist()) - set(p.tolist())) for f, p in zip(full, plain)]
    w[bn_only[0]] = 50.0  # but with a huge BatchNorm channel
    board = Switchboard()
    board.apply(Leg("a", remove={"conv1": 1}), model, space, w)
    assert board.removed["conv1"] == [0]
    # the mask covers the BatchNorm channel too
    assert bool(board.mask(model, space, w)[full[0]].all())


def test_switchboard_mask_adds_magnitude_sparsity():
    model, space, w = _board_model()
    board = Switchboard()
    board.apply(Leg("a", remove={"layers.0": 2}, sparsity=0.5), model, space, w)
    assert board.sparsity == 0.5
    mask = board.mask(model, space, w)
    from geopath.core.targets import prunable_parameters

    prunable = torch.zeros(space.n, dtype=torch.bool)
    for n in prunable_parameters(model):
        prunable[space.slices()[n]] = True
    groups = unit_groups(model, space, "layers.0")
    for i in (4, 1):
        assert bool(mask[groups[i]].all())
    assert int((mask & prunable).sum()) == round(0.5 * int(prunable.sum()))


def test_switchboard_restore_with_sparsity_brings_units_back():
    model, space, w_start = _board_model()
    # make the second layer's weights tiny: at their starting values the restored units (entries ~0.1)
    # are far from the smallest weights, so only their being zero at the leg's start can mask them
    w_start[space.slices()["layers.1.weight"]] *= 0.01
    load_vector(model, space, w_start)
    board = Switchboard()
    board.apply(Leg("off", remove={"layers.0": 3}, sparsity=0.3), model, space, w_start)
    assert board.removed["layers.0"] == [4, 1, 5]
    prev = board.mask(model, space, w_start)
    w_leg = torch.where(prev, torch.zeros_like(w_start), w_start)  # where that leg ended
    prev_units = board.unit_mask(model, space, w_leg)
    board.apply(Leg("back", restore={"layers.0": 2}), model, space, w_leg)
    assert board.removed["layers.0"] == [4]
    revive = prev_units & ~board.unit_mask(model, space, w_leg)  # as run_transition does
    mask = board.mask(model, space, w_leg, revive, w_start)
    groups = unit_groups(model, space, "layers.0")
    assert bool(mask[groups[4]].all())
    # units 1 and 5 are back on: their groups (3 weights + bias each) are no longer held at zero
    for i in (1, 5):
        assert not bool(mask[groups[i]].any()), f"unit {i} still (partly) masked"


# --------------------------------------------------------------------------- leg_target


def test_leg_target_pins_restored_to_start_and_frees_them():
    w_start = _rand(8, 3)
    prev = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool)  # 0, 1, 2 were off
    now = torch.tensor([1, 0, 0, 0, 0, 1, 0, 0], dtype=torch.bool)  # 1, 2 come back; 5 goes off
    t = leg_target(prev, now, w_start)
    restored = prev & ~now
    assert torch.equal(t.mask, now | restored)
    w = _rand(8, 4)
    v = t.direction(w)
    assert torch.equal(v[now], -w[now])  # still-off (and newly off) coordinates are pulled to zero
    assert torch.equal(v[restored], w_start[restored] - w[restored])  # restored: to their starting values
    assert torch.equal(v[~(now | restored)], torch.zeros(4, dtype=D))
    p = t.project(w)
    assert torch.equal(p[now], torch.zeros(2, dtype=D))
    assert torch.equal(p[restored], w_start[restored])
    assert torch.equal(p[~(now | restored)], w[~(now | restored)])
    assert t.distance(w) == pytest.approx(float((w - p).norm()), rel=1e-14)
    # on the hyperplane the restored coordinates may move again; the ones still off may not
    assert torch.equal(t.free(), ~now)
    assert bool(t.free()[restored].all())


def _restore_leg(tmp_path):
    """A transition-like restore leg: 3 units of layers.0 off, then 2 of them back on."""
    torch.manual_seed(0)
    start = MLP(5, (6,), 3).to(D)
    space = ParamSpace.of(start)
    w_start = model_vector(start, space)
    board = Switchboard()
    board.apply(Leg("off", remove={"layers.0": 3}), start, space, w_start)
    prev_mask = board.mask(start, space, w_start)
    w_leg = torch.where(prev_mask, torch.zeros_like(w_start), w_start)  # where the previous leg ended
    board.apply(Leg("back", restore={"layers.0": 2}), start, space, w_leg)
    mask = board.mask(start, space, w_leg)
    target = leg_target(prev_mask, mask, w_start)
    restored = prev_mask & ~mask
    assert int(restored.sum()) == 2 * (5 + 1) and int(mask.sum()) == 5 + 1

    g = torch.Generator().manual_seed(1)
    ds = Dataset(torch.randn(24, 5, generator=g, dtype=D), torch.randint(0, 3, (24,), generator=g), "toy", "train")
    model = copy.deepcopy(start)
    load_vector(model, space, w_leg)
    writer = RunWriter(tmp_path, "mlp", {}, None, "test", None)
    writer.trace.create()
    cfg = PathConfig(step=StepConfig(step_size=1e-2, cg_iters=20), max_steps=3, save_every=1, batch_size=8,
                     tol=0.01, settle_steps=3)
    seen = []
    res = walk(model, target, ds, cfg, Recorder(writer, lambda net: {}), reference=copy.deepcopy(start),
               before_step=lambda w, t: seen.append(w.clone()))
    assert res.state.landed_at == 3 and res.state.step == 6
    return space, w_start, mask, restored, res, seen, writer


def test_restore_leg_walk_pins_restored_weights_on_landing(tmp_path):
    """Through the engine: the landing puts restored weights exactly at their starting values, the
    units still off stay exactly zero, and the settle steps move the restored (freed) weights."""
    space, w_start, mask, restored, res, seen, writer = _restore_leg(tmp_path)
    on_plane = seen[3]  # the first settle step starts from the landing point
    assert torch.equal(on_plane[restored], w_start[restored])
    assert bool((on_plane[mask] == 0).all())
    assert bool((model_vector(res.model, space)[mask] == 0).all())
    # the last settle step (saved as steps/step_00006) moved the restored weights off w_start
    from geopath.io.checkpoint import read_tensors

    last = space.flatten(read_tensors(writer.out / "steps" / "step_00006.safetensors")[0])
    assert float((last[restored] - w_start[restored]).norm()) > 1e-3
    assert bool((last[mask] == 0).all())


def test_restore_leg_endpoint_keeps_the_settle_of_freed_weights(tmp_path):
    space, w_start, mask, restored, res, seen, writer = _restore_leg(tmp_path)
    from geopath.io.checkpoint import read_tensors

    last = space.flatten(read_tensors(writer.out / "steps" / "step_00006.safetensors")[0])
    w_end = model_vector(res.model, space)
    # the endpoint is where the settle ended (that point is already on the hyperplane: mask exactly zero)
    torch.testing.assert_close(w_end, last, rtol=0, atol=0)
    assert float((w_end[restored] - w_start[restored]).norm()) > 1e-3
