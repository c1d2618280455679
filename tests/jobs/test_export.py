"""geopath export: zeroed units removed physically, the same outputs, a file that rebuilds without pickle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from geopath.core.coupling import coupled_groups, dependency_graph
from geopath.core.params import ParamSpace, load_vector, model_vector
from geopath.io.archs import build_model
from geopath.io.checkpoint import load_checkpoint, read_tensors, save_checkpoint

from .._helpers import cli

ARCH, KW = "torchvision:resnet18", {"num_classes": 10}


@pytest.fixture(scope="module")
def zeroed(tmp_path_factory):
    """A resnet18 whose stem loses 5 channels (with the residual stream of layer1) and layer2.0.conv1 3."""
    tmp = tmp_path_factory.mktemp("export")
    data = tmp / "data"
    data.mkdir()
    g = np.random.default_rng(0)
    for split in ("train", "test"):
        np.savez(data / f"{split}.npz", x=g.normal(size=(70, 3, 32, 32)).astype(np.float32),
                 y=g.integers(0, 10, 70))
    torch.manual_seed(0)
    model = build_model(ARCH, KW).eval()
    space = ParamSpace.of(model)
    x = torch.randn(2, 3, 32, 32)
    w = model_vector(model, space)
    graph = dependency_graph(model, x)
    w[coupled_groups(model, space, "conv1", graph)[[0, 3, 7, 8, 60]].reshape(-1)] = 0
    w[coupled_groups(model, space, "layer2.0.conv1", graph)[[1, 2, 100]].reshape(-1)] = 0
    load_vector(model, space, w)
    ck = tmp / "zeroed.safetensors"
    save_checkpoint(ck, model, ARCH, KW, extra={"data": str(data)})
    return tmp, ck, data


def test_export_removes_the_units_and_keeps_the_outputs(zeroed):
    tmp, ck, data = zeroed
    out = tmp / "small.safetensors"
    proc = cli("export", ck, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["removed"] == {"conv1": 5, "layer2.0.conv1": 3}
    assert report["after"]["parameters"] < report["before"]["parameters"]
    assert report["after"]["macs"] < report["before"]["macs"]
    assert report["max_output_difference"] <= 1e-4
    small = load_checkpoint(out).model  # rebuilt from the recipe in the metadata: no pickle
    assert small.conv1.out_channels == 59 and small.layer1[0].conv2.out_channels == 59
    assert small.layer2[0].conv1.out_channels == 125 and small.layer2[0].downsample[0].in_channels == 59
    x = torch.from_numpy(np.load(data / "test.npz")["x"][:16])
    with torch.no_grad():
        torch.testing.assert_close(small(x), load_checkpoint(ck).model(x), rtol=1e-4, atol=1e-4)
    _, meta = read_tensors(out)
    assert json.loads(meta["geopath.compact"]) == [["conv1", [0, 3, 7, 8, 60]], ["layer2.0.conv1", [1, 2, 100]]]
    assert json.loads(meta["geopath.input_shape"]) == [3, 32, 32]
    ev = json.loads(cli("eval", out, "--json").stdout)
    ev_zeroed = json.loads(cli("eval", ck, "--json").stdout)
    assert ev["accuracy"] == ev_zeroed["accuracy"] and ev["loss"] == pytest.approx(ev_zeroed["loss"], rel=1e-5)


def test_export_refuses_what_it_cannot_do(zeroed, tmp_path):
    tmp, ck, data = zeroed
    dense = tmp_path / "dense.safetensors"
    torch.manual_seed(1)
    save_checkpoint(dense, build_model(ARCH, KW), ARCH, KW, extra={"data": str(data)})
    proc = cli("export", dense, "-o", tmp_path / "x.safetensors")
    assert proc.returncode == 2 and "nothing to remove" in proc.stderr
    (tmp_path / "taken.safetensors").write_text("x")
    assert "already exists" in cli("export", ck, "-o", tmp_path / "taken.safetensors").stderr
    assert "must be a .safetensors" in cli("export", ck, "-o", tmp_path / "small.pt").stderr
    (tmp_path / "run").mkdir()
    assert "did not finish" in cli("export", tmp_path / "run", "-o", tmp_path / "y.safetensors").stderr
    assert not (tmp_path / "x.safetensors").exists()
    flat = tmp_path / "flat"  # inputs the network cannot take: one line and exit 2, not a shape error (exit 1)
    flat.mkdir()
    g = np.random.default_rng(1)
    for split in ("train", "test"):
        np.savez(flat / f"{split}.npz", x=g.normal(size=(8, 784)).astype(np.float32), y=g.integers(0, 10, 8))
    proc = cli("export", ck, "-o", tmp_path / "z.safetensors", "--data", flat)
    assert proc.returncode == 2 and "the network cannot take inputs of shape (784,)" in proc.stderr, proc.stderr
    assert not (tmp_path / "z.safetensors").exists()


def test_a_job_on_a_compact_network_saves_networks_that_load(zeroed, tmp_path):
    tmp, ck, data = zeroed
    small = tmp_path / "small.safetensors"
    assert cli("export", ck, "-o", small).returncode == 0
    out = tmp_path / "run"
    proc = cli("sparsify", small, "-o", out, "--sparsity", "0.3", "--steps", "1", "--max-steps", "1",
               "--batch-size", "8", "--cg-iters", "1", "--train-eval-size", "0",
               "--bn-samples", "16", "--eval-size", "16", "--metric-size", "16")
    assert proc.returncode == 0, proc.stderr
    final = load_checkpoint(out / "final.safetensors").model  # carries the removal history
    assert final.conv1.out_channels == 59
    _, meta = read_tensors(out / "final.safetensors")
    assert json.loads(meta["geopath.input_shape"]) == [3, 32, 32]


def test_a_compact_network_pruned_again_exports_with_both_removals(zeroed, tmp_path):
    """Prune, export, prune the compact network again (here: zero three more stem channels and two of
    layer2.0.conv1, as a structured run from it would), export again: the history is the first one followed by the
    new removals (indices of the compact network), and the file rebuilds with the outputs of the zeroed one."""
    tmp, ck, data = zeroed
    small = tmp_path / "small.safetensors"
    assert cli("export", ck, "-o", small).returncode == 0
    loaded = load_checkpoint(small)
    model = loaded.model.eval()
    space = ParamSpace.of(model)
    x = torch.randn(2, 3, 32, 32)
    graph = dependency_graph(model, x)
    w = model_vector(model, space)
    w[coupled_groups(model, space, "conv1", graph)[[1, 2, 50]].reshape(-1)] = 0
    w[coupled_groups(model, space, "layer2.0.conv1", graph)[[0, 124]].reshape(-1)] = 0
    load_vector(model, space, w)
    again = tmp_path / "again.safetensors"
    save_checkpoint(again, model, ARCH, KW, extra={"data": str(data), "compact": loaded.metadata["geopath.compact"],
                                                    "input_shape": loaded.metadata["geopath.input_shape"]})
    smaller = tmp_path / "smaller.safetensors"
    proc = cli("export", again, "-o", smaller, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["removed"] == {"conv1": 3, "layer2.0.conv1": 2}
    _, meta = read_tensors(smaller)
    assert json.loads(meta["geopath.compact"]) == [["conv1", [0, 3, 7, 8, 60]], ["layer2.0.conv1", [1, 2, 100]],
                                                   ["conv1", [1, 2, 50]], ["layer2.0.conv1", [0, 124]]]
    rebuilt = load_checkpoint(smaller).model
    assert rebuilt.conv1.out_channels == 56 and rebuilt.layer2[0].conv1.out_channels == 123
    xs = torch.from_numpy(np.load(data / "test.npz")["x"][:16])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(xs), load_checkpoint(again).model(xs), rtol=1e-4, atol=1e-4)
    proc = cli("export", smaller, "-o", tmp_path / "none.safetensors")  # nothing zero is left
    assert proc.returncode == 2 and "nothing to remove" in proc.stderr and "already compact" in proc.stderr


# --------------------------------------------------------------------------- which units are dead


def _mlp_with(norm: nn.Module | None, frozen_bias: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(3, 4)] + ([norm] if norm is not None else []) + [nn.ReLU(), nn.Linear(4, 2)]
    net = nn.Sequential(*layers).double()
    with torch.no_grad():
        net[0].weight[2].zero_()
        net[0].bias[2] = 0.0 if not frozen_bias else 0.5
        if norm is not None:
            norm.weight[2] = 0.0
            norm.bias[2] = 0.0
    if frozen_bias:
        net[0].bias.requires_grad_(False)
    return net


@pytest.mark.parametrize("norm", [None, "layer", "group"])
def test_dead_units_are_those_whose_removal_keeps_the_outputs(norm):
    """A zeroed unit is dead, unless a LayerNorm or GroupNorm normalises its channel: its zeros then enter
    the statistics of the others, and removing it changed the outputs (LayerNorm) or crashed (GroupNorm)."""
    from geopath.core.coupling import compact, dead_units

    made = {None: None, "layer": nn.LayerNorm(4), "group": nn.GroupNorm(2, 4)}[norm]
    net = _mlp_with(made.double() if made is not None else None)
    x = torch.randn(5, 3, dtype=torch.float64)
    before = net(x).detach()
    assert dead_units(net, x) == ({"0": [2]} if norm is None else {})
    compact(net, x)
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-12)
    assert net[0].weight.shape[0] == (3 if norm is None else 4)


def test_a_frozen_bias_keeps_its_unit_alive():
    from geopath.core.coupling import dead_units

    net = _mlp_with(None, frozen_bias=True)  # unit 2: zero weights, a frozen bias of 0.5
    x = torch.randn(5, 3, dtype=torch.float64)
    assert dead_units(net, x) == {}
    with torch.no_grad():
        net[0].bias[2] = 0.0
    assert dead_units(net, x) == {"0": [2]}
