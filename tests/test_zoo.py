"""The model zoo, end to end: each network's metric products against an independent reference, and a
short real ``geopath sparsify`` run through the command line.

Tiny configurations are checked against dense float64 metrics (tests/core, tests/core/test_attention.py);
here every zoo member, torchvision's included, is checked against a reference built with
``torch.autograd`` alone (a double-backward JVP, then a VJP): no torch.func, no geopath code.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from geopath.core.metric import MetricOperator, math_attention
from geopath.core.params import ParamSpace, model_vector
from geopath.io.archs import build_model
from geopath.io.checkpoint import save_checkpoint

from ._helpers import DATA_ROOT, cifar10_present, cli, geopath, needs_mnist, one_thread_subprocesses  # noqa: F401

# name: (--arch, arch kwargs, data set, input shape, integer inputs)
ZOO = {
    "sequential_mlp": ("tests/zoo.py:sequential_mlp", {}, "mnist", (1, 28, 28)),
    "lenet5": ("lenet5", {}, "mnist", (1, 28, 28)),
    "vgg11": ("vgg11", {"width": 0.125}, "cifar10", (3, 32, 32)),
    "resnet18": ("torchvision:resnet18", {"num_classes": 10}, "cifar10", (3, 32, 32)),
    "resnet20": ("resnet20", {"width": 0.5}, "cifar10", (3, 32, 32)),
    "mobilenet_v3_small": ("torchvision:mobilenet_v3_small", {"num_classes": 10}, "cifar10", (3, 32, 32)),
    "vit": ("vit", {"dim": 16, "depth": 2, "heads": 2, "mlp_dim": 32}, "mnist", (1, 28, 28)),
    "vit_mha": ("tests/zoo.py:vit_mha", {}, "mnist", (1, 28, 28)),
    "vit_sdpa": ("tests/zoo.py:vit_sdpa", {}, "mnist", (1, 28, 28)),
    "text": ("tests/zoo.py:text_classifier", {"length": 12}, "tokens", (12,)),
}


def _inputs(shape, n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    if len(shape) == 1:
        return torch.randint(0, 32, (n, *shape), generator=g)
    return torch.randn(n, *shape, generator=g, dtype=dtype)


def _autograd_metric_product(model, x, u_params):
    """``mean_i J_iᵀ J_i u`` with torch.autograd only: ``J u`` by the double-backward trick, or (a layer
    without a second derivative, e.g. MobileNet's hardsigmoid) by central differences in float64."""
    params = [p for p in model.parameters()]
    with math_attention():
        out = model(x)
        try:
            dummy = torch.zeros_like(out, requires_grad=True)
            g = torch.autograd.grad(out, params, dummy, create_graph=True)
            ju = torch.autograd.grad(g, dummy, u_params)[0]
        except RuntimeError:
            eps, shifted = 1e-6, copy.deepcopy(model)

            def at(sign):
                with torch.no_grad():
                    for q, p, u in zip(shifted.parameters(), params, u_params):
                        q.copy_(p + sign * eps * u)
                    return shifted(x)

            ju = (at(1) - at(-1)) / (2 * eps)
        jtju = torch.autograd.grad(out, params, ju)
    return torch.cat([t.reshape(-1) for t in jtju]) / x.shape[0]


# the product --jvp auto takes on the CPU: each layer's own rule where every layer with parameters has one
# (torchvision's in-place activations, splits and squeeze-and-excitation included), torch.func's reverse mode for
# the attention networks (through torch.func inside a plan they are slower) and where torch.fx cannot trace
AUTO = {"sequential_mlp": "layerwise", "lenet5": "layerwise", "vgg11": "layerwise", "resnet18": "layerwise",
        "resnet20": "layerwise", "mobilenet_v3_small": "layerwise", "vit": "reverse", "vit_mha": "reverse",
        "vit_sdpa": "reverse", "text": "reverse"}


@pytest.mark.parametrize("jvp", ["forward", "auto"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_metric_product_equals_an_autograd_reference(name, jvp):
    arch, kwargs, _, shape = ZOO[name]
    torch.manual_seed(0)
    model = build_model(arch, kwargs).double().eval()
    for m in model.modules():  # eval-mode BatchNorm: the same function in both computations
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = True
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    x = _inputs(shape, 3)
    G = MetricOperator(model, space, w, x, bn_stats="running", jvp_mode=jvp)
    assert G.jvp_mode.value == (AUTO[name] if jvp == "auto" else jvp)
    u = torch.randn(space.n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = _autograd_metric_product(model, x, [t for t in space.unflatten(u).values()])
    got = G.matvec(u)
    assert float(ref.norm()) > 0
    tol = 1e-6 if name == "mobilenet_v3_small" else 1e-9  # central differences: O(ε²) error
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * float(ref.abs().max()))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """A token data set laid out by split: the class is whether token 0 appears more than token 1."""
    folder = tmp_path_factory.mktemp("tokens")
    g = np.random.default_rng(0)
    for split, n in (("train", 400), ("test", 200)):
        x = g.integers(0, 32, (n, 12))
        np.savez(folder / f"{split}.npz", x=x, y=((x == 0).sum(1) > (x == 1).sum(1)).astype(np.int64))
    return folder


@needs_mnist
@pytest.mark.parametrize("name", sorted(ZOO))
def test_a_short_sparsify_run_through_the_command_line(name, tmp_path, tokens):
    arch, kwargs, data, shape = ZOO[name]
    if data == "cifar10" and not cifar10_present:
        pytest.skip("CIFAR-10 not present")
    data = str(tokens) if data == "tokens" else data
    torch.manual_seed(0)
    model = build_model(arch, kwargs)
    if name == "sequential_mlp":  # a plain state dict, as torch.save writes it
        ck = tmp_path / "plain.pt"
        torch.save(model.state_dict(), ck)
    else:
        ck = tmp_path / "net.safetensors"
        save_checkpoint(ck, model, arch, kwargs)
    out = tmp_path / "out"
    proc = cli("sparsify", ck, "-o", out, "--arch", arch, "--arch-kwargs", json.dumps(kwargs), "--data", data,
                   "--data-root", DATA_ROOT, "--sparsity", "0.5", "--steps", "2", "--max-steps", "2",
                   "--settle-steps", "1", "--settle", "geodesic", "--batch-size", "16", "--metric-size", "64",
                   "--eval-size", "64", "--bn-samples", "64", "--train-eval-size", "0", "--cg-iters", "2",
                   "--save-every", "1", "--criterion", "auto", "--saliency-samples", "32", "--json")  # (the metric's
    # diagonal and the ranking rule on every architecture; the default ranks by magnitude)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["sparsity"] == pytest.approx(0.5, abs=1e-3) and summary["step"] <= 3  # approach ≤ 2, settle 1
    assert 0 <= summary["test_accuracy"] <= 1
    assert (out / "final.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not cifar10_present, reason="CIFAR-10 not present")
def test_structured_removal_on_a_resnet_is_dead_downstream(tmp_path):
    """``--structured conv1:16`` on a ResNet: the stem's channels join the residual stream of layer1, so
    every block's last conv and BatchNorm is zeroed with them and the channel stays zero after each add."""
    from geopath.io.checkpoint import load_checkpoint
    from geopath.io.data import load_dataset

    arch, kwargs = "torchvision:resnet18", {"num_classes": 10}
    torch.manual_seed(0)
    ck = tmp_path / "net.safetensors"
    save_checkpoint(ck, build_model(arch, kwargs), arch, kwargs, extra={"data": "cifar10"})
    out = tmp_path / "out"
    proc = geopath("sparsify", ck, "-o", out, "--structured", "conv1:16", "--data-root", DATA_ROOT, "--steps", "2",
                   "--max-steps", "2", "--batch-size", "16", "--metric-size", "64",
                   "--eval-size", "64", "--bn-samples", "64", "--train-eval-size", "0", "--cg-iters", "2",
                   "--save-every", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    removed = summary["target"]["removed"]["conv1"]
    assert len(removed) == 16
    assert {"bn1", "layer1.0.conv2", "layer1.0.bn2", "layer1.1.conv2", "layer1.1.bn2"} <= set(
        summary["target"]["coupled"]["conv1"])
    net = load_checkpoint(out / "final.safetensors").model.eval()
    outputs = {}
    for name in ("relu", "layer1.0", "layer1"):
        dict(net.named_modules())[name].register_forward_hook(
            lambda m, i, o, name=name: outputs.__setitem__(name, o.detach()))
    with torch.no_grad():
        net(load_dataset("cifar10", "test", DATA_ROOT).x[:32])
    kept = [c for c in range(64) if c not in removed]
    for name, act in outputs.items():
        assert float(act[:, removed].abs().max()) == 0.0, name  # dead after every residual add
        assert float(act[:, kept].abs().amax(dim=(0, 2, 3)).min()) > 0, name
