"""Attention layers inside metric products: nn.MultiheadAttention, F.scaled_dot_product_attention and
nn.TransformerEncoder, each against a dense float64 reference (explicit Jacobians)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jacrev

from geopath.core.metric import MetricOperator, math_attention
from geopath.core.params import ParamSpace, model_vector
from geopath.core.step import MetricBatch, StepConfig, geodesic_step
from geopath.core.targets import MagnitudeTarget, prunable_parameters
from geopath.errors import UsageError
from geopath.io.archs import ViT, build_model
from tests import zoo

D = torch.float64
MODELS = {
    "vit_mha": (lambda: zoo.vit_mha(image_size=8, patch=4, dim=8, num_classes=3),
                lambda g: torch.randn(5, 1, 8, 8, generator=g, dtype=D)),
    "vit_sdpa": (lambda: zoo.vit_sdpa(image_size=8, patch=4, dim=8, num_classes=3),
                 lambda g: torch.randn(5, 1, 8, 8, generator=g, dtype=D)),
    "vit_builtin": (lambda: ViT(image_size=8, patch=4, dim=8, depth=2, heads=2, mlp_dim=12, num_classes=3),
                    lambda g: torch.randn(5, 1, 8, 8, generator=g, dtype=D)),
    "text": (lambda: zoo.text_classifier(vocab=10, dim=8, length=6, num_classes=3),
             lambda g: torch.randint(0, 10, (5, 6), generator=g)),
}


@pytest.fixture(params=sorted(MODELS))
def tiny(request):
    make, inputs = MODELS[request.param]
    torch.manual_seed(0)
    model = make().to(D).eval()
    return model, inputs(torch.Generator().manual_seed(1))


def _dense_metric(model, space, w, x):
    buffers = dict(model.named_buffers())

    def f(params):
        return functional_call(model, (params, buffers), (x,))

    with math_attention():
        jac = jacrev(f)(space.unflatten(w))
    n, c = x.shape[0], 3
    J = torch.cat([jac[name].reshape(n, c, -1) for name in space.names], dim=2).reshape(-1, space.n)
    return J.T @ J / n


def test_metric_products_equal_the_dense_metric(tiny):
    model, x = tiny
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    g = _dense_metric(model, space, w, x)
    assert g.abs().max() > 1e-3
    G = MetricOperator(model, space, w, x)
    rng = torch.Generator().manual_seed(2)
    for _ in range(3):
        u = torch.randn(space.n, generator=rng, dtype=D)
        torch.testing.assert_close(G.matvec(u), g @ u, rtol=0, atol=1e-9)
    uncached = MetricOperator(model, space, w, [x[:2], x[2:]], cache=False)
    torch.testing.assert_close(uncached.matvec(u), g @ u, rtol=0, atol=1e-9)


def test_the_math_kernel_computes_the_same_function(tiny):
    model, x = tiny
    model = model.float()
    xx = x.float() if x.is_floating_point() else x
    with torch.no_grad():
        fast = model(xx)  # the fused kernels where torch picks them
        with math_attention():
            plain = model(xx)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def test_a_geodesic_step_runs_through_attention(tiny):
    model, x = tiny
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    target = MagnitudeTarget(space, w, 0.5, prunable_parameters(model))
    with torch.no_grad():
        z0 = [model(x)]
    info = geodesic_step(model, space, w, [MetricBatch([x], z0)], target, StepConfig(step_size=1e-3, cg_iters=4))
    assert torch.isfinite(info.theta).all() and float(info.theta.norm()) > 0
    assert target.distance(w + info.theta) < target.distance(w)


def test_the_builtin_vit_prunes_every_weight_matrix_and_is_built_by_name():
    model = build_model("vit", {"dim": 8, "depth": 2, "heads": 2, "mlp_dim": 12})
    names = prunable_parameters(model)
    assert names[0] == "embed.weight" and names[-1] == "head.weight"
    assert {n.split(".", 2)[2] for n in names if n.startswith("blocks.")} == {"qkv.weight", "proj.weight",
                                                                            "fc1.weight", "fc2.weight"}
    assert len(names) == 2 + 4 * 2  # embed, head and four matrices a block; no LayerNorm, no position
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    three = build_model("vit", {"image_size": 32, "patch": 4, "channels": 3, "dim": 8, "heads": 2})
    assert three(torch.randn(2, 3, 32, 32)).shape == (2, 10) and three.pos.shape == (1, 64, 8)


@pytest.mark.parametrize("kwargs, message", [
    ({"patch": 5}, r"patch \(5\) must divide image_size \(28\)"),
    ({"dim": 10, "heads": 4}, r"heads \(4\) must divide dim \(10\)"),
    ({"depth": 0}, "depth must be a positive integer"),
    ({"dim": 6.5}, "dim must be a positive integer"),
    ({"heads": True}, "heads must be a positive integer"),
])
def test_the_builtin_vit_refuses_bad_sizes_in_one_line(kwargs, message):
    with pytest.raises(UsageError, match=message) as e:
        build_model("vit", kwargs)
    assert "\n" not in str(e.value)
