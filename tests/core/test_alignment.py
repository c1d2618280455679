"""Permutation alignment (weight matching): function kept, planted permutations found, optimality."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from geopath.core.params import ParamSpace, model_vector
from geopath.core.alignment import (_chain_spec, _permute_state, chain_layers, check_permutation_invariance,
                                    permutation_spec, same_function, weight_matching)
from geopath.io.archs import MLP, VGG11, LeNet5, resnet20
from geopath.errors import UsageError

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64


class ConvBNNet(nn.Module):
    """Conv2d(1→4, 3×3) → BatchNorm2d → ReLU → flatten (4×2×2) → Linear(16→3), for 1×4×4 inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class ResidualNet(nn.Module):
    """Linear → (h + relu(Linear(h))) → Linear: not a chain (the skip ties two layers' permutations into one)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 5)
        self.block = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + torch.relu(self.block(h)))


class TwoBranchNet(nn.Module):
    """Two Linear layers reading the same input, concatenated: the second one's inputs (6) are not a multiple of 4."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.b = nn.Linear(6, 4)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.cat([self.a(x), self.b(x)], dim=1))


class DepthwiseNet(nn.Module):
    """Conv2d(1→4, 1×1) → depthwise Conv2d(4→4, groups=4) → flatten → Linear(16→3), for 1×2×2 inputs."""

    def __init__(self):
        super().__init__()
        self.point = nn.Conv2d(1, 4, 1)
        self.depth = nn.Conv2d(4, 4, 1, groups=4)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.depth(torch.relu(self.point(x)))).flatten(1))


class NormNet(nn.Module):
    """Linear → LayerNorm → Linear: LayerNorm mixes the units, which alignment does not follow."""

    def __init__(self):
        super().__init__()
        self.inp, self.norm, self.out = nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3)

    def forward(self, x):
        return self.out(self.norm(self.inp(x)))


class BranchyMLP(MLP):
    """An MLP whose forward branches on the data, so ``torch.fx`` cannot trace it: alignment falls back to
    the registration-order chain."""

    def forward(self, x):
        if x.sum() > 1e9:
            x = x * 0
        return super().forward(x)


# name → (factory, per-sample input shape)
ARCHS = {
    "mlp": (lambda: MLP(in_features=6, hidden=(5, 4), num_classes=3), (6,)),
    "lenet5": (lambda: LeNet5(), (1, 28, 28)),
    "vgg11": (lambda: VGG11(width=0.125), (3, 32, 32)),
    "conv_bn": (ConvBNNet, (1, 4, 4)),
    "residual": (ResidualNet, (6,)),
    "resnet20": (lambda: resnet20(width=0.25), (3, 8, 8)),
    "branchy": (lambda: BranchyMLP(in_features=6, hidden=(5, 4), num_classes=3), (6,)),
}

# Hand-written oracle of what permuting each hidden layer means, independent of the module under test:
# per hidden layer, (tensors whose dim 0 is the layer's units, next layer's weight, inputs per unit there).
ATTACHED = {
    "mlp": [(["layers.0.weight", "layers.0.bias"], "layers.1.weight", 1),
            (["layers.1.weight", "layers.1.bias"], "layers.2.weight", 1)],
    "lenet5": [(["conv1.weight", "conv1.bias"], "conv2.weight", 1),
               (["conv2.weight", "conv2.bias"], "fc1.weight", 25),
               (["fc1.weight", "fc1.bias"], "fc2.weight", 1),
               (["fc2.weight", "fc2.bias"], "fc3.weight", 1)],
    "conv_bn": [(["conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"],
                 "fc.weight", 4)],
}
# hidden unit spaces read by more than one layer or produced by more than one (residual sums):
# per space, (tensors whose dim 0 is the space's units, tensors whose dim 1 is)
TIED = {"residual": [(["inp.weight", "inp.bias", "block.weight", "block.bias"], ["block.weight", "out.weight"])]}


def _make(arch: str, seed: int) -> nn.Module:
    """Model ``arch`` initialised with ``seed``, in float64, with non-trivial BatchNorm running statistics."""
    factory, shape = ARCHS[arch]
    torch.manual_seed(seed)
    model = factory().to(D)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(8, *shape, dtype=D) * 2 + 0.5)
    return model.eval()


def _inputs(arch: str, n: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(99)
    return torch.randn((n, *ARCHS[arch][1]), generator=g, dtype=D)


@torch.no_grad()
def _outputs(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    return m.eval()(x)


def _plant(arch: str, state: dict[str, torch.Tensor], perms: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with hidden layer k's unit i replaced by its unit ``perms[k][i]`` (per :data:`ATTACHED`)."""
    out = {k: v.clone() for k, v in state.items()}
    for (rows, nxt, per_unit), perm in zip(ATTACHED[arch], perms):
        for key in rows:
            out[key] = out[key][perm]
        w = out[nxt]
        out[nxt] = w.unflatten(1, (len(perm), per_unit))[:, perm].flatten(1, 2)
    return out


def _random_perms(arch: str, state: dict[str, torch.Tensor], g: torch.Generator) -> list[torch.Tensor]:
    return [torch.randperm(state[rows[0]].shape[0], generator=g) for rows, _, _ in ATTACHED[arch]]


def _objective(model: nn.Module, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Σ over parameters of <A, B> (buffers such as running statistics excluded)."""
    return sum(float((a[n].to(D) * b[n].to(D)).sum()) for n, _ in model.named_parameters())


# --------------------------------------------------------------------------- function preserved


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_aligned_network_computes_the_same_function(arch):
    model_a, model_b = _make(arch, 0), _make(arch, 1)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    before = {k: v.clone() for k, v in state_b.items()}
    aligned, perms = weight_matching(model_a, state_a, state_b)

    spec = permutation_spec(model_a)
    assert sorted(perms) == sorted(spec.names)
    for name, units in zip(spec.names, spec.units):
        p = perms[name]
        assert p.dtype == torch.long and torch.equal(p.sort().values, torch.arange(units))
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())  # something moved

    x = _inputs(arch)
    assert not torch.allclose(_outputs(model_a, state_a, x), _outputs(model_a, state_b, x), atol=1e-3)
    torch.testing.assert_close(_outputs(model_a, aligned, x), _outputs(model_a, state_b, x), rtol=1e-9, atol=1e-10)
    assert all(torch.equal(state_b[k], before[k]) for k in before)  # B itself untouched
    for key in (k for k in aligned if k.endswith("num_batches_tracked")):
        assert torch.equal(aligned[key], state_b[key])


# --------------------------------------------------------------------------- planted permutations


@pytest.mark.parametrize("arch", sorted(ATTACHED))
def test_planted_permutations_are_undone_exactly(arch):
    model = _make(arch, 0)
    state_a = model.state_dict()
    planted = _random_perms(arch, state_a, torch.Generator().manual_seed(7))
    state_b = _plant(arch, state_a, planted)
    x = _inputs(arch)
    # the oracle really is a symmetry, and B really differs from A
    torch.testing.assert_close(_outputs(model, state_b, x), _outputs(model, state_a, x), rtol=1e-9, atol=1e-10)
    assert not all(torch.equal(state_a[k], state_b[k]) for k in state_a)

    aligned, perms = weight_matching(model, state_a, state_b)
    for key in state_a:
        assert torch.equal(aligned[key], state_a[key]), key
    for layer, q in zip(chain_layers(model)[:-1], planted):
        assert torch.equal(perms[layer.name], torch.argsort(q)), layer.name


def _plant_tied(arch: str, state: dict[str, torch.Tensor], perms: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with tied space k's unit i replaced by its unit ``perms[k][i]`` (per :data:`TIED`)."""
    out = {k: v.clone() for k, v in state.items()}
    for (rows, cols), perm in zip(TIED[arch], perms):
        for key in rows:
            out[key] = out[key][perm]
        for key in cols:
            out[key] = out[key][:, perm]
    return out


def test_a_residual_sum_ties_its_operands_into_one_space():
    model = _make("residual", 0)
    spec = permutation_spec(model)
    assert spec.names == ["inp"] and spec.units == [5]
    assert sorted((a.key, a.dim) for a in spec.axes[0]) == [
        ("block.bias", 0), ("block.weight", 0), ("block.weight", 1), ("inp.bias", 0), ("inp.weight", 0),
        ("out.weight", 1)]

    state_a = model.state_dict()
    planted = torch.tensor([3, 0, 4, 1, 2])
    state_b = _plant_tied("residual", state_a, [planted])
    x = _inputs("residual")
    torch.testing.assert_close(_outputs(model, state_b, x), _outputs(model, state_a, x), rtol=1e-9, atol=1e-10)
    aligned, perms = weight_matching(model, state_a, state_b)
    assert torch.equal(perms["inp"], torch.argsort(planted))
    assert all(torch.equal(aligned[k], state_a[k]) for k in state_a)


def test_resnet20_spaces_one_stream_per_stage_and_one_inside_each_block():
    spec = permutation_spec(resnet20(width=0.25))
    assert spec.units == [4] * 4 + [8] * 4 + [16] * 4
    # stage 1's stream starts at the stem conv; stages 2 and 3 at their first block (whose shortcut projects)
    streams = {"conv1": 0, "layer2.0.conv2": 1, "layer3.0.conv2": 2}
    assert [n for n in spec.names if n in streams] == list(streams)
    stream1 = {(a.key, a.dim) for a in spec.axes[spec.names.index("conv1")]}
    assert {("conv1.weight", 0), ("bn1.weight", 0), ("layer1.2.conv2.weight", 0), ("layer1.2.bn2.running_var", 0),
            ("layer1.0.conv1.weight", 1), ("layer2.0.shortcut.0.weight", 1), ("layer2.0.conv1.weight", 1)} <= stream1
    stream3 = {(a.key, a.dim) for a in spec.axes[spec.names.index("layer3.0.conv2")]}
    assert ("fc.weight", 1) in stream3 and ("layer3.0.shortcut.0.weight", 0) in stream3
    # every parameter that a hidden space touches appears once per dim it has in such a space
    assert sum(len(a) for a in spec.axes) == len({(a.key, a.dim) for axes in spec.axes for a in axes})


@pytest.mark.parametrize("arch", ["resnet20", "residual"])
def test_planted_permutations_of_a_residual_network_are_undone(arch):
    model = _make(arch, 0)
    spec = permutation_spec(model)
    state_a = model.state_dict()
    g = torch.Generator().manual_seed(5)
    planted = {k: torch.randperm(units, generator=g) for k, units in enumerate(spec.units)}
    state_b = _permute_state(spec, state_a, planted)
    x = _inputs(arch)
    torch.testing.assert_close(_outputs(model, state_b, x), _outputs(model, state_a, x), rtol=1e-9, atol=1e-10)
    aligned, perms = weight_matching(model, state_a, state_b)
    for key in state_a:
        assert torch.equal(aligned[key], state_a[key]), key
    for k, name in enumerate(spec.names):
        assert torch.equal(perms[name], torch.argsort(planted[k])), name


@pytest.mark.parametrize("arch", ["mlp", "lenet5", "vgg11", "conv_bn"])
def test_the_traced_spec_of_a_chain_equals_the_chain_spec(arch):
    model = _make(arch, 0)
    assert permutation_spec(model) == _chain_spec(model)


class ShapeViewNet(nn.Module):
    """LeNet-style ``x.view(x.shape[0], -1)`` flattening between a conv and a Linear layer."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


def test_shapes_read_for_a_view_are_followed():
    model = ShapeViewNet()
    spec = permutation_spec(model)
    assert spec.names == ["conv"] and [(a.key, a.dim, a.expand) for a in spec.axes[0]] == [
        ("conv.weight", 0, 1), ("conv.bias", 0, 1), ("fc.weight", 1, 4)]
    check_permutation_invariance(model, torch.randn(3, 1, 4, 4))


class SharedBlockNet(nn.Module):
    """One residual block applied three times: its weights would be permuted once per use."""

    def __init__(self):
        super().__init__()
        self.stem, self.b1, self.b2, self.head = nn.Linear(5, 4), nn.Linear(4, 7), nn.Linear(7, 4), nn.Linear(4, 3)

    def forward(self, x):
        h = self.stem(x)
        for _ in range(3):
            h = h + self.b2(torch.relu(self.b1(h)))
        return self.head(h)


class KeywordNet(nn.Module):
    """Layers called with keyword arguments, and a residual sum written ``torch.add(h, other=...)``."""

    def __init__(self):
        super().__init__()
        self.inp, self.block, self.out = nn.Linear(6, 5), nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = self.inp(input=x)
        return self.out(input=torch.add(h, other=torch.relu(self.block(input=h))))


def test_a_layer_applied_twice_is_refused():
    with pytest.raises(UsageError, match="'b1' is applied more than once"):
        permutation_spec(SharedBlockNet())
    torch.manual_seed(0)
    with pytest.raises(UsageError, match="SharedBlockNet is not one .*applied more than once"):
        check_permutation_invariance(SharedBlockNet(), torch.randn(4, 5))


def test_keyword_arguments_are_followed():
    spec = permutation_spec(KeywordNet())
    assert spec == permutation_spec(ResidualNet())  # the same network written with keywords: one tied space
    model = KeywordNet().to(D)
    state_a = model.state_dict()
    state_b = _plant_tied("residual", state_a, [torch.tensor([2, 4, 0, 1, 3])])
    x = torch.randn(5, 6, dtype=D)
    torch.testing.assert_close(_outputs(model, state_b, x), _outputs(model, state_a, x), rtol=1e-9, atol=1e-10)


def test_same_function_tells_a_permutation_from_a_change():
    model = _make("resnet20", 0)
    spec = permutation_spec(model)
    state = model.state_dict()
    g = torch.Generator().manual_seed(1)
    permuted = _permute_state(spec, state, {k: torch.randperm(u, generator=g) for k, u in enumerate(spec.units)})
    x = _inputs("resnet20")
    assert same_function(model, state, permuted, x)
    broken = dict(permuted)
    broken["layer2.0.conv1.weight"] = broken["layer2.0.conv1.weight"].flip(0)  # one space reordered alone
    assert not same_function(model, state, broken, x)


def test_a_model_fx_cannot_trace_falls_back_to_the_chain():
    model = _make("branchy", 0)
    assert permutation_spec(model) == _chain_spec(model)


# --------------------------------------------------------------------------- objective


@pytest.mark.parametrize("seed", [1, 2])
def test_matching_beats_the_identity_and_random_permutations(seed):
    model = _make("mlp", 0)
    state_a, state_b = model.state_dict(), _make("mlp", seed).state_dict()
    aligned, _ = weight_matching(model, state_a, state_b)

    space = ParamSpace.of(model)
    w = {name: space.flatten(s) for name, s in (("a", state_a), ("b", state_b), ("aligned", aligned))}
    assert torch.linalg.vector_norm(w["a"] - w["aligned"]) < torch.linalg.vector_norm(w["a"] - w["b"])
    best = _objective(model, state_a, aligned)
    g = torch.Generator().manual_seed(seed)
    for _ in range(20):
        shuffled = _plant("mlp", state_b, _random_perms("mlp", state_b, g))
        assert best >= _objective(model, state_a, shuffled) - 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_hidden_layer_matches_brute_force(seed):
    def make(s):
        torch.manual_seed(s)
        return MLP(in_features=5, hidden=(4,), num_classes=3).to(D)

    model = make(seed)
    state_a, state_b = model.state_dict(), make(seed + 10).state_dict()

    def permuted(perm):
        out = dict(state_b)
        for key in ("layers.0.weight", "layers.0.bias"):
            out[key] = state_b[key][perm]
        out["layers.1.weight"] = state_b["layers.1.weight"][:, perm]
        return out

    scores = {p: _objective(model, state_a, permuted(torch.tensor(p))) for p in itertools.permutations(range(4))}
    best = max(scores, key=scores.get)
    aligned, perms = weight_matching(model, state_a, state_b)
    assert perms["layers.0"].tolist() == list(best)
    assert _objective(model, state_a, aligned) == pytest.approx(scores[best], rel=1e-12)


def test_model_vector_of_aligned_state_is_a_permutation_of_b():
    model_a, model_b = _make("lenet5", 0), _make("lenet5", 1)
    aligned, _ = weight_matching(model_a, model_a.state_dict(), model_b.state_dict())
    loaded = copy.deepcopy(model_b)
    loaded.load_state_dict(aligned)
    space = ParamSpace.of(model_b)
    w_b, w_aligned = model_vector(model_b, space), model_vector(loaded, space)
    assert not torch.equal(w_b, w_aligned)
    assert torch.equal(w_b.sort().values, w_aligned.sort().values)


def test_states_that_do_not_fit_the_model_are_refused():
    model = _make("mlp", 0)
    state = model.state_dict()
    broken = {k: v for k, v in state.items() if k != "layers.1.bias"}
    with pytest.raises(UsageError, match="layers.1.bias"):
        weight_matching(model, state, broken)


# --------------------------------------------------------------------------- chain check


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_chain_networks_pass_the_invariance_check(arch):
    model = _make(arch, 3).train()
    check_permutation_invariance(model, _inputs(arch))
    assert model.training and next(model.parameters()).dtype == D  # the caller's model is left as it was


@pytest.mark.parametrize("factory, shape, why", [
    (TwoBranchNet, (6,), "cat"), (DepthwiseNet, (1, 2, 2), "'depth' is a grouped convolution"),
    (NormNet, (6,), "'norm' is a LayerNorm")])
def test_networks_alignment_does_not_follow_are_refused(factory, shape, why):
    torch.manual_seed(0)
    model = factory()
    with pytest.raises(UsageError, match=f"--align supports networks .*; {factory.__name__} is not one .*{why}"):
        check_permutation_invariance(model, torch.randn(4, *shape))


class _Mislabelled(nn.Module):
    """Adds a channel-reversed copy of its hidden layer: traced as a plain sum, but not permutation invariant."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(h + h.flip(1))


def test_the_numerical_check_catches_what_tracing_misses(monkeypatch):
    import geopath.core.alignment as alignment

    monkeypatch.setattr(alignment, "_PASS_METHODS", alignment._PASS_METHODS | {"flip"})
    torch.manual_seed(0)
    with pytest.raises(UsageError, match="_Mislabelled is not one$"):
        check_permutation_invariance(_Mislabelled(), torch.randn(4, 6))


@pytest.mark.parametrize("factory, message", [(TwoBranchNet, "'b' takes 6 inputs, not a whole multiple of the 4"),
                                              (DepthwiseNet, "'depth' is a grouped convolution")])
def test_chain_layers_rejects_layers_it_cannot_pair(factory, message):
    with pytest.raises(UsageError, match=message):
        chain_layers(factory())


def test_chain_layers_lenet5_and_vgg11():
    lenet = chain_layers(LeNet5())
    assert [(c.name, c.out_units, c.expand, c.batchnorm) for c in lenet] == [
        ("conv1", 6, 1, None), ("conv2", 16, 1, None), ("fc1", 120, 25, None), ("fc2", 84, 1, None),
        ("fc3", 10, 1, None)]

    vgg = chain_layers(VGG11(width=0.125))
    assert [c.name for c in vgg] == [f"features.{i}" for i in (0, 4, 8, 11, 15, 18, 22, 25)] + ["classifier"]
    assert [c.batchnorm for c in vgg] == [f"features.{i}" for i in (1, 5, 9, 12, 16, 19, 23, 26)] + [None]
    assert [c.out_units for c in vgg] == [8, 16, 32, 32, 64, 64, 64, 64, 10]
    assert all(c.expand == 1 for c in vgg)
    assert all(c.batchnorm is None for c in chain_layers(VGG11(width=0.125, batch_norm=False)))
