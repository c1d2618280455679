"""Sparse targets: which coordinates are masked, and what projecting onto them does."""

from __future__ import annotations

import pytest
import torch

from geopath.core.params import ParamSpace, load_vector, model_vector
from geopath.io.archs import VGG11
from geopath.errors import UsageError
from geopath.core.targets import MagnitudeTarget, MaskScope, StructuredTarget, parse_structured, prunable_parameters

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64


def _setup(case):
    model = case.make_model()
    space = ParamSpace.of(model)
    return model, space, model_vector(model, space)


def _prunable_index(space, names):
    sl = space.slices()
    idx = torch.zeros(space.n, dtype=torch.bool)
    for n in names:
        idx[sl[n]] = True
    return idx


def _assert_smallest(values: torch.Tensor, mask: torch.Tensor):
    """Every masked entry is at most as large in magnitude as every unmasked one."""
    if mask.any() and (~mask).any():
        assert float(values[mask].abs().max()) <= float(values[~mask].abs().min())


def test_prunable_parameters_are_linear_and_conv_weights(case):
    model, space, _ = _setup(case)
    names = prunable_parameters(model)
    assert names and all(n.endswith(".weight") for n in names)
    expected = {"mlp": ["layers.0.weight", "layers.1.weight"], "cnn_bn": ["conv.weight", "fc.weight"]}[case.name]
    assert names == expected  # BatchNorm weights are not prunable


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_magnitude_global_masks_smallest_prunable(case, sparsity):
    model, space, w = _setup(case)
    names = prunable_parameters(model)
    target = MagnitudeTarget(space, w, sparsity, names, scope="global")
    prunable = _prunable_index(space, names)
    k = round(sparsity * int(prunable.sum()))
    assert int(target.mask.sum()) == k
    assert not (target.mask & ~prunable).any()  # biases / BN parameters never masked
    _assert_smallest(w[prunable], target.mask[prunable])
    # reference: the k smallest magnitudes among the prunable coordinates
    ref = torch.zeros(space.n, dtype=torch.bool)
    pos = prunable.nonzero().squeeze(1)
    ref[pos[torch.argsort(w[prunable].abs())[:k]]] = True
    assert torch.equal(target.mask, ref)
    assert torch.equal(target.free(), ~ref)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.75])
def test_magnitude_per_layer_same_fraction_each_layer(case, sparsity):
    model, space, w = _setup(case)
    names = prunable_parameters(model)
    target = MagnitudeTarget(space, w, sparsity, names, scope=MaskScope.LAYER)
    sl = space.slices()
    prunable = _prunable_index(space, names)
    assert not (target.mask & ~prunable).any()
    for n in names:
        s = sl[n]
        assert int(target.mask[s].sum()) == round(sparsity * (s.stop - s.start)), n
        _assert_smallest(w[s], target.mask[s])


def test_per_layer_differs_from_global_when_scales_differ(mlp_case):
    model, space, w = _setup(mlp_case)
    names = prunable_parameters(model)
    sl = space.slices()
    w = w.clone()
    s0 = sl[names[0]]
    w[s0] = torch.sign(w[s0]) * (10.0 + w[s0].abs())  # the first layer is much larger: global takes nothing
    # 30% of the 32 prunable weights (10) fit inside the 12 of the second layer
    glob = MagnitudeTarget(space, w, 0.3, names, scope="global")
    layer = MagnitudeTarget(space, w, 0.3, names, scope="layer")
    assert int(glob.mask[sl[names[0]]].sum()) == 0
    assert int(glob.mask[sl[names[1]]].sum()) == 10
    assert int(layer.mask[sl[names[0]]].sum()) == round(0.3 * 20)
    assert int(layer.mask[sl[names[1]]].sum()) == round(0.3 * 12)


def test_magnitude_dynamic_rechooses_fixed_does_not(case, rng):
    model, space, w0 = _setup(case)
    names = prunable_parameters(model)
    w1 = torch.randn(space.n, generator=rng, dtype=D)
    fixed = MagnitudeTarget(space, w0, 0.5, names, dynamic=False)
    dynamic = MagnitudeTarget(space, w0, 0.5, names, dynamic=True)
    assert torch.equal(fixed.mask, dynamic.mask)
    ref1 = MagnitudeTarget(space, w1, 0.5, names).mask
    assert not torch.equal(ref1, fixed.mask)  # the new weights do call for another mask
    m0 = fixed.mask.clone()
    fixed.refresh(w1)
    dynamic.refresh(w1)
    assert torch.equal(fixed.mask, m0)
    assert torch.equal(dynamic.mask, ref1)
    torch.testing.assert_close(dynamic.direction(w1), torch.where(ref1, -w1, torch.zeros_like(w1)), rtol=0, atol=0)


def test_project_direction_distance(case):
    model, space, w = _setup(case)
    names = prunable_parameters(model)
    target = MagnitudeTarget(space, w, 0.4, names)
    mask = target.mask
    assert mask.any()
    p = target.project(w)
    assert torch.all(p[mask] == 0)
    assert torch.equal(p[~mask], w[~mask])
    assert torch.equal(target.direction(w), p - w)
    assert target.distance(w) == pytest.approx(float(torch.sqrt((w[mask] ** 2).sum())), rel=1e-14)
    assert target.distance(w) == pytest.approx(float(target.direction(w).norm()), rel=1e-14)
    assert target.distance(p) == 0.0
    # w itself is not modified
    assert torch.equal(w, model_vector(model, space))


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5, float("nan")])
def test_sparsity_outside_unit_interval_raises(mlp_case, sparsity):
    model, space, w = _setup(mlp_case)
    with pytest.raises(UsageError):
        MagnitudeTarget(space, w, sparsity, prunable_parameters(model))


def test_magnitude_bad_parameter_lists(mlp_case):
    model, space, w = _setup(mlp_case)
    with pytest.raises(UsageError):
        MagnitudeTarget(space, w, 0.5, ["layers.0.weight", "nope.weight"])
    with pytest.raises(UsageError):
        MagnitudeTarget(space, w, 0.5, [])


# --------------------------------------------------------------------------- structured


@pytest.fixture
def vgg():
    """A float64 VGG11 at width 1/16 with non-trivial BN running stats and planted small units."""
    torch.manual_seed(5)
    model = VGG11(num_classes=10, width=0.0625).to(D)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(c, dtype=D))
                m.running_var.copy_(0.5 + torch.rand(c, dtype=D))
                m.weight.copy_(0.5 + torch.rand(c, dtype=D))
                m.bias.copy_(0.2 * torch.randn(c, dtype=D))
    return model


PLANTED = {"features.0": [1, 3], "features.4": [0, 5, 6], "classifier": [2, 7, 9]}


def _plant(model):
    """Shrink the planted units (weights *and* bias) so they are the unambiguous smallest."""
    mods = dict(model.named_modules())
    with torch.no_grad():
        for layer, units in PLANTED.items():
            m = mods[layer]
            for j, i in enumerate(units):
                m.weight[i].mul_(1e-2 * (j + 1))
                m.bias[i].mul_(1e-2 * (j + 1))


def _bn_after(layer):
    return {"features.0": "features.1", "features.4": "features.5"}.get(layer)


def test_structured_mask_is_exactly_the_unit_groups(vgg):
    _plant(vgg)
    space = ParamSpace.of(vgg)
    w = model_vector(vgg, space)
    counts = {layer: len(u) for layer, u in PLANTED.items()}
    target = StructuredTarget(vgg, space, w, counts)
    assert target.removed == PLANTED
    sl = space.slices()
    mods = dict(vgg.named_modules())
    expected = torch.zeros(space.n, dtype=torch.bool)
    for layer, units in PLANTED.items():
        W = mods[layer].weight
        row = W[0].numel()
        s = sl[f"{layer}.weight"]
        for i in units:
            expected[s.start + i * row : s.start + (i + 1) * row] = True
            expected[sl[f"{layer}.bias"].start + i] = True
            bn = _bn_after(layer)
            if bn:
                expected[sl[f"{bn}.weight"].start + i] = True
                expected[sl[f"{bn}.bias"].start + i] = True
    assert torch.equal(target.mask, expected)
    # group sizes: conv row + bias + BN weight + BN bias; classifier row + bias
    assert int(target.mask.sum()) == 2 * (27 + 3) + 3 * (36 + 3) + 3 * (32 + 1)


def test_structured_picks_smallest_norm_units(vgg):
    """Without planting: the removed filters are those with the smallest (weight-row) norms.

    The bias is scaled down so that including it or not in the norm cannot change the order.
    """
    with torch.no_grad():
        vgg.features[0].bias.mul_(1e-6)
    space = ParamSpace.of(vgg)
    w = model_vector(vgg, space)
    target = StructuredTarget(vgg, space, w, {"features.0": 2})
    norms = vgg.features[0].weight.detach().flatten(1).norm(dim=1)
    assert target.removed["features.0"] == sorted(torch.argsort(norms)[:2].tolist())


def test_structured_project_zeroes_post_bn_activations(vgg):
    _plant(vgg)
    space = ParamSpace.of(vgg)
    w = model_vector(vgg, space)
    target = StructuredTarget(vgg, space, w, {layer: len(u) for layer, u in PLANTED.items()})
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9), dtype=D)
    acts = {}
    hooks = [vgg.features[i].register_forward_hook(lambda m, a, out, i=i: acts.__setitem__(i, out)) for i in (1, 5)]
    try:
        vgg.eval()
        # the running stats are non-trivial: zeroing only the conv rows leaves the BN output non-zero
        conv_only = target.mask.clone()
        sl = space.slices()
        for bn in ("features.1", "features.5"):
            conv_only[sl[f"{bn}.weight"]] = False
            conv_only[sl[f"{bn}.bias"]] = False
        load_vector(vgg, space, torch.where(conv_only, torch.zeros_like(w), w))
        with torch.no_grad():
            vgg(x)
        assert (acts[1][:, PLANTED["features.0"]] != 0).any()

        load_vector(vgg, space, target.project(w))
        with torch.no_grad():
            logits = vgg(x)
        for i, layer in ((1, "features.0"), (5, "features.4")):
            a = acts[i]
            removed = PLANTED[layer]
            kept = [c for c in range(a.shape[1]) if c not in removed]
            assert torch.all(a[:, removed] == 0), layer
            assert all(bool((a[:, c] != 0).any()) for c in kept), layer
        assert torch.all(logits[:, PLANTED["classifier"]] == 0)
        assert (logits[:, [0, 1, 3]] != 0).all()
    finally:
        for h in hooks:
            h.remove()


def test_structured_rejects_bad_layers(vgg):
    space = ParamSpace.of(vgg)
    w = model_vector(vgg, space)
    with pytest.raises(UsageError):
        StructuredTarget(vgg, space, w, {"features.1": 1})  # a BatchNorm, not a conv
    with pytest.raises(UsageError):
        StructuredTarget(vgg, space, w, {"nope": 1})
    with pytest.raises(UsageError):
        StructuredTarget(vgg, space, w, {"features.0": 4})  # all 4 units
    with pytest.raises(UsageError):
        StructuredTarget(vgg, space, w, {"features.0": -1})


def test_structured_zero_count_masks_nothing(vgg):
    space = ParamSpace.of(vgg)
    w = model_vector(vgg, space)
    target = StructuredTarget(vgg, space, w, {"features.0": 0})
    assert int(target.mask.sum()) == 0 and target.removed == {"features.0": []}


def test_parse_structured():
    assert parse_structured("a.0:5,b:3") == {"a.0": 5, "b": 3}
    assert parse_structured(" a.0:5 , b:3 ,") == {"a.0": 5, "b": 3}
    assert parse_structured(["features.0:50", "layers.1:200"]) == {"features.0": 50, "layers.1": 200}
    assert parse_structured(None) == {}
    assert parse_structured("") == {}


@pytest.mark.parametrize("bad", ["a", "a:x", ":5", "a:", "a:1.5", "a.0:5,b"])
def test_parse_structured_rejects_bad_strings(bad):
    with pytest.raises(UsageError):
        parse_structured(bad)


def test_targets_and_restriction_follow_the_vectors_device(bn_case):
    """Masks chosen on the CPU work on weights that live elsewhere (``meta`` stands in for CUDA:
    it refuses to mix devices in elementwise ops exactly as CUDA does)."""
    from geopath.core.operators import Identity, RestrictedOperator
    from geopath.core.targets import HyperplaneTarget

    model = bn_case.make_model()
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    targets = [MagnitudeTarget(space, w, 0.5, prunable_parameters(model)),
               StructuredTarget(model, space, w, {"conv": 1}),
               HyperplaneTarget(w.abs() > w.abs().median(), values=w)]
    keep = ~targets[0].mask  # on the CPU
    w_dev = w.to("meta")
    for target in targets:
        assert target.direction(w_dev).device.type == "meta"
        assert target.project(w_dev).device.type == "meta"
    A = RestrictedOperator(Identity(space.n, w.dtype, "meta"), keep)
    assert A.matvec(w_dev).device.type == "meta"


def test_vgg11_hidden_classifier_units_are_removable():
    """``hidden`` gives VGG11 the original fully connected layers; removing hidden neurons of
    ``classifier.0`` kills exactly those neurons (the transitions' C3 leg), and without ``hidden`` the
    parameter names of shipped checkpoints are unchanged."""
    assert [n for n, _ in VGG11(width=0.0625).named_parameters()][-2:] == ["classifier.weight", "classifier.bias"]
    torch.manual_seed(3)
    model = VGG11(num_classes=10, width=0.0625, hidden=[12, 8]).to(D).eval()
    names = [n for n, _ in model.named_parameters()]
    assert names[-6:] == ["classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias",
                          "classifier.4.weight", "classifier.4.bias"]
    assert model.classifier[0].in_features == 32 and model.classifier[4].out_features == 10
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    target = StructuredTarget(model, space, w, {"classifier.0": 5})
    load_vector(model, space, target.project(w))
    acts = {}
    hook = model.classifier[1].register_forward_hook(lambda m, a, out: acts.__setitem__("h", out))
    try:
        with torch.no_grad():
            model(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=D))
    finally:
        hook.remove()
    removed = target.removed["classifier.0"]
    assert len(removed) == 5
    assert torch.all(acts["h"][:, removed] == 0)
    assert int((acts["h"].abs().sum(0) > 0).sum()) >= 12 - 5 - 2  # the others mostly alive (ReLU may zero a few)
    with pytest.raises(UsageError):
        VGG11(hidden=[0])
