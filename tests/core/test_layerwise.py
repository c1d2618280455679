"""Layerwise metric products (``--jvp layerwise``) against explicit Jacobians (torch.func.jacrev), float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from geopath.core import layerwise
from geopath.core.metric import _LAYERWISE_CHECKED, MetricOperator, metric_mode
from geopath.core.params import ParamSpace, buffers_of, model_vector
from geopath.io.archs import MLP
from tests.conftest import TinyBNNet

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64


class ModuleChain(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(6, 5, bias=False), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 4),
                         nn.GELU(), nn.Linear(4, 3))


class ConvNet(nn.Module):
    """Strides, padding, dilation, groups, pooling modules and functions, a conv without bias."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 4, 2, dilation=2, groups=2, bias=False)
        self.pool = nn.AvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = F.max_pool2d(torch.sigmoid(self.a(x)), 2, stride=1)
        return self.fc(self.pool(F.elu(self.b(h))).flatten(1))


class Residual(nn.Module):
    """Input preprocessing without weights, a skip connection, a layer read twice."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        x = x * 2.0 - 1.0
        h = self.a(x)
        h = h + torch.relu(self.b(h)) * h
        return self.c(h)


class VGGLike(nn.Sequential):
    """BatchNorm (2-D and 1-D, one without affine parameters), pooling modules with overlapping windows."""

    def __init__(self):
        super().__init__(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(3, stride=2),
                         nn.Conv2d(3, 2, 1, bias=False), nn.BatchNorm2d(2, affine=False), nn.Flatten(),
                         nn.BatchNorm1d(8), nn.Linear(8, 3))
        with torch.no_grad():  # running statistics and affine parameters that are not the identity
            for i, m in enumerate(self.modules()):
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.running_mean.uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(i))
                    m.running_var.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(i))
                    if m.affine:
                        m.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(i))
                        m.bias.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(i))


class Torchvision(nn.Module):
    """What torchvision's networks trace to: in-place activations and a ``+=`` skip, a split read by item, shape
    queries, averages, sums and products of branches, a constant offset, a dropout on ``self.training``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.hs, self.gate = nn.Hardswish(), nn.Hardsigmoid()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.se = nn.Linear(2, 2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.act(self.conv(x))
        a, b = h.chunk(2, dim=1)  # (a tuple, read by item)
        a = self.hs(a).relu_()
        s = self.gate(self.se(self.pool(b).flatten(1))).view(b.size(0), -1, 1, 1)  # squeeze-and-excitation
        b = b * s + F.dropout(b, 0.5, self.training) / 2.0
        b += a  # (traced as a sum)
        h = torch.cat([a - b, F.hardswish(b * 3.0 + 1.0) + a * a - s / s], dim=1)  # (``a * a``, ``s / s``: not linear)
        return self.fc(h.mean((2, 3)).reshape(x.shape[0], -1))


class Attention(nn.Module):
    """A parameter the graph reads itself (a position embedding), an attention layer's (outputs, None) read by
    item, LayerNorm: layers with parameters that go through torch.func inside the plan."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.pos = nn.Parameter(torch.randn(1, 2, 4) / 2)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = self.embed(x) + self.pos
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(self.norm(h + a).mean(1))


def _frozen_mlp():
    m = MLP(in_features=6, hidden=(4,), num_classes=3)
    m.layers[0].bias.requires_grad_(False)
    return m


def _frozen_batchnorm():
    """A BatchNorm on the input with only its shift trained (no input tangent) and one with only its scale
    trained: each tangent term of the rule alone."""
    m = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Tanh(),
                      nn.Linear(4, 3))
    with torch.no_grad():
        for bn in (m[1], m[4]):
            bn.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
            bn.bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(3))
            bn.running_mean.uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(4))
    m[1].weight.requires_grad_(False)
    m[4].bias.requires_grad_(False)
    return m


NETS = {  # name: (factory, per-sample input shape)
    "mlp": (lambda: MLP(in_features=6, hidden=(5, 4), num_classes=3), (6,)),
    "modules": (ModuleChain, (2, 3)),
    "conv": (ConvNet, (2, 8, 8)),
    "batchnorm": (TinyBNNet, (1, 4, 4)),
    "vgg-like": (VGGLike, (2, 5, 5)),
    "residual": (Residual, (4,)),
    "frozen": (_frozen_mlp, (6,)),
    "frozen-batchnorm": (_frozen_batchnorm, (2, 3)),
    "torchvision-like": (Torchvision, (2, 4, 4)),
    "inplace-module": (lambda: InPlace("module"), (4,)),
    "inplace-method": (lambda: InPlace("method"), (4,)),
    "attention": (Attention, (2, 3)),
    "weight-outside": (lambda: WeightOutside(), (4,)),  # (defined below, with the graphs a plan cannot follow)
}


def _setup(name):
    factory, shape = NETS[name]
    torch.manual_seed(0)
    model = factory().to(D)
    space = ParamSpace.of(model)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1), dtype=D)
    return model, space, model_vector(model, space), x


@pytest.mark.parametrize("name", sorted(NETS))
def test_products_equal_the_dense_jacobian(name, dense_jacobian, rng):
    """``J u`` and ``Jᵀ c`` of a linearisation, and the operator's ``JᵀJ``, against ``jacrev``."""
    model, space, w, x = _setup(name)
    plan = layerwise.plan(model, space)
    assert plan is not None
    J = dense_jacobian(model, space, w, x).reshape(-1, space.n)
    assert J.abs().max() > 1e-2
    with metric_mode(model, "batch"):  # (products run in the mode of their linearisation, as the operator's do)
        lin = plan.linearise(space.unflatten(w), buffers_of(model), x)
        expected = model(x)
        torch.testing.assert_close(lin.logits, expected, rtol=0, atol=1e-12)
        for _ in range(2):
            u = torch.randn(space.n, generator=rng, dtype=D)
            c = torch.randn(expected.shape, generator=rng, dtype=D)
            torch.testing.assert_close(lin.jvp(space.unflatten(u)).reshape(-1), J @ u, rtol=0, atol=1e-10)
            torch.testing.assert_close(space.flatten(lin.vjp(c)), J.T @ c.reshape(-1), rtol=0, atol=1e-10)
    G = MetricOperator(model, space, w, list(torch.split(x, 3)), jvp_mode="layerwise")
    assert G.jvp_mode.value == "layerwise"
    ref = dense_jacobian(model, space, w, x, chunks=[3, 2]).reshape(-1, space.n)
    torch.testing.assert_close(G.to_dense(), ref.T @ ref / len(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["batchnorm", "vgg-like"])
def test_running_batchnorm_statistics(name, dense_jacobian):
    """``--bn-stats running``: BatchNorm on its stored statistics, a fixed affine map of its input."""
    model, space, w, x = _setup(name)
    G = MetricOperator(model, space, w, list(torch.split(x, 3)), bn_stats="running", jvp_mode="layerwise")
    assert G.jvp_mode.value == "layerwise"
    J = dense_jacobian(model, space, w, x, bn_stats="running").reshape(-1, space.n)
    torch.testing.assert_close(G.to_dense(), J.T @ J / len(x), rtol=0, atol=1e-10)
    batch = MetricOperator(model, space, w, list(torch.split(x, 3)), jvp_mode="layerwise").to_dense()
    assert (batch - G.to_dense()).abs().max() > 1e-3  # (the two statistics give different metrics)


@pytest.mark.parametrize("bn_stats", ["batch", "running"])
def test_float32_outputs_are_the_modules_to_the_bit(bn_stats):
    """In float32 a plan's outputs are the network's own, bit for bit, BatchNorm included: an output rounded
    differently can land on the other side of a ReLU's kink and change ``J u`` by that entry's whole size (a
    full-width VGG11 failed the agreement check that way when BatchNorm's outputs came from its formula)."""
    torch.manual_seed(0)
    model = VGGLike().train()
    space = ParamSpace.of(model)
    x = torch.randn(64, 2, 5, 5, generator=torch.Generator().manual_seed(1)) * 3
    with metric_mode(model, bn_stats):
        lin = layerwise.plan(model, space).linearise(space.unflatten(model_vector(model, space)), buffers_of(model), x)
        assert torch.equal(lin.logits, model(x))
        for n, (rule, _) in lin.rules.items():  # every intermediate too, not just where rounding happened to agree
            if isinstance(rule, layerwise._BatchNormRule):
                module = model.get_submodule(n.target)
                assert torch.equal(rule.out, module(rule.a))


class ValueBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x):
        return self.a(x) if x.sum() > 0 else -self.a(x)


class WeightOutside(nn.Module):
    """Parameters read by the graph, not by their layer: each is a node whose tangent is its entry of ``u``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x):
        return F.linear(x, self.a.weight * 2, self.a.bias)


class WeightTwice(nn.Module):
    """A layer's weight read by the graph as well: not followed (a parameter is read once, by its layer or the
    graph)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x):
        return self.a(x) + F.linear(x, self.a.weight)


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(torch.relu(self.a(x)))


class InPlace(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.a, self.b, self.how = nn.Linear(4, 4), nn.Linear(4, 3), how
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.a(x)
        if self.how == "module":
            h = self.act(h)
        elif self.how == "method":
            h = h.relu_()
        elif self.how == "shared":  # the tensor changed in place is read again: the traced graph reads it unchanged
            return self.b(self.act(h) + h)
        elif self.how == "input":
            return self.b(x.relu_())
        else:  # torch.fx records `+=` as `+`: the traced graph reads `b(a(x))`, the network computes `b(a(x) + 1)`
            g = h
            h += 1.0
            return self.b(g)
        return self.b(h)


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x):
        z = self.a(x)
        return z, z.sum()


@pytest.mark.parametrize("make", [ValueBranch, WeightTwice, CalledTwice, lambda: InPlace("shared"),
                                  lambda: InPlace("input"), TwoOutputs],
                         ids=["value-branch", "weight-twice", "called-twice", "inplace-shared", "inplace-input",
                              "two-outputs"])
def test_graphs_it_cannot_follow_have_no_plan(make):
    model = make().to(D)
    space = ParamSpace.of(model)
    assert layerwise.plan(model, space) is None
    if not isinstance(model, TwoOutputs) and getattr(model, "how", "") != "input":  # (the metric needs one output
        # tensor anyway, and torch.func refuses a network that changes its input in place)
        x = torch.randn(3, 4, dtype=D) + 0.5
        G = MetricOperator(model, space, model_vector(model, space), x, jvp_mode="layerwise")
        assert G.jvp_mode.value == "reverse"  # torch.func's products instead
        assert MetricOperator(model, space, model_vector(model, space), x, jvp_mode="auto").jvp_mode.value == "reverse"
        u = torch.randn(space.n, dtype=D)
        torch.testing.assert_close(G.matvec(u), MetricOperator(model, space, model_vector(model, space), x,
                                                               jvp_mode="forward").matvec(u), rtol=0, atol=1e-10)


def test_a_graph_traced_wrong_is_caught_by_the_check(rng):
    """An in-place ``+=`` on an aliased tensor: torch.fx traces another function than the network computes. The
    plan exists, and the operator's once-per-network comparison with torch.func refuses it."""
    model = InPlace("operator").to(D)
    space = ParamSpace.of(model)
    w, x = model_vector(model, space), torch.randn(3, 4, dtype=D)
    assert layerwise.plan(model, space) is not None
    G = MetricOperator(model, space, w, x, jvp_mode="layerwise")
    assert G.jvp_mode.value == "reverse" and _LAYERWISE_CHECKED[model] is False
    u = torch.randn(space.n, generator=rng, dtype=D)
    expected = MetricOperator(model, space, w, x, jvp_mode="forward").matvec(u)
    torch.testing.assert_close(G.matvec(u), expected, rtol=0, atol=1e-10)


def test_a_plan_that_disagrees_with_torch_func_is_not_used(monkeypatch, rng):
    """The once-per-network check can fail: a layer rule that is off by 1 % sends the network to torch.func."""
    model, space, w, x = _setup("mlp")
    jvp = layerwise._LinearRule.jvp
    monkeypatch.setattr(layerwise._LinearRule, "jvp", lambda self, t, u: 1.01 * jvp(self, t, u))
    G = MetricOperator(model, space, w, x, jvp_mode="layerwise")
    assert G.jvp_mode.value == "reverse" and _LAYERWISE_CHECKED[model] is False
    u = torch.randn(space.n, generator=rng, dtype=D)
    expected = MetricOperator(model, space, w, x, jvp_mode="forward").matvec(u)
    torch.testing.assert_close(G.matvec(u), expected, rtol=0, atol=1e-10)
    monkeypatch.undo()  # a network found wrong stays with torch.func for the rest of the process
    assert MetricOperator(model, space, w, x, jvp_mode="layerwise").jvp_mode.value == "reverse"


def test_anchor_products_use_the_plan(rng, dense_jacobian):
    """``rmatvec_outputs`` (the anchor's ``Jᵀ r``) goes through the same linearisation."""
    model, space, w, x = _setup("conv")
    G = MetricOperator(model, space, w, [x[:2], x[2:]], jvp_mode="layerwise")
    c = [torch.randn(len(xb), 3, generator=rng, dtype=D) for xb in (x[:2], x[2:])]
    J = dense_jacobian(model, space, w, x, chunks=[2, 3]).reshape(-1, space.n)
    torch.testing.assert_close(G.rmatvec_outputs(c), J.T @ torch.cat(c).reshape(-1) / len(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name, native", [("torchvision-like", True), ("vgg-like", True), ("attention", False)])
def test_auto_takes_a_plan_only_where_every_layer_has_its_own_rule(name, native):
    """``--jvp auto`` on the CPU: the plan where every layer with parameters has a rule of its own; where one would
    go through torch.func inside the plan (an attention, a LayerNorm: slower than torch.func's whole product),
    torch.func's faster mode. ``--jvp layerwise`` takes the plan either way (exact: the dense test above)."""
    model, space, w, x = _setup(name)
    assert layerwise.plan(model, space).native is native
    auto = MetricOperator(model, space, w, x, jvp_mode="auto")
    assert auto.jvp_mode.value == ("layerwise" if native else "reverse")
    assert MetricOperator(model, space, w, x, jvp_mode="layerwise").jvp_mode.value == "layerwise"
