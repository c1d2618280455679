"""``--settle-optimizer auto``: Adam where SGD's rate times the start's sharpness passes the bound; the sharpness
against the top eigenvalue of the dense softmax Fisher (float64, ``jacrev``), and the rule in a whole run."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch import nn

from geopath.config import Settle, SettleOptimizer, SparsifyConfig
from geopath.core.dataset import Dataset
from geopath.core.params import ParamSpace, model_vector
from geopath.core.step import PASS_FORWARD, PASS_MATVEC
from geopath.io.checkpoint import read_tensors
from geopath.jobs import sparsify
from geopath.jobs.sparsify import SHARPNESS_BOUND, choose_settle_optimizer, optimizer_text

from .._helpers import DATA_ROOT, SAMPLE, geopath, needs_mnist, spy_on_training

D = torch.float64


def _tiny(seed: int = 0):
    """Linear 3 → 2 in float64: its Fisher has rank 4 (two classes: one direction per input, of 3 + 1 weights), so
    Lanczos exhausts its Krylov space within the 10 products and its value is exact."""
    torch.manual_seed(seed)
    model = nn.Linear(3, 2).to(D)
    g = torch.Generator().manual_seed(seed)
    data = Dataset(3.0 * torch.randn(400, 3, generator=g, dtype=D), torch.randint(0, 2, (400,), generator=g),
                   "toy", "train")
    return model, data


def _dense_sharpness(model, data, seed: int, dense_jacobian, dense_metric) -> float:
    """The top eigenvalue of mean_i J_iᵀ (diag p − ppᵀ) J_i over the rule's draw of inputs."""
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:sparsify.SHARPNESS_SAMPLES]
    x = data.x[idx]
    with torch.no_grad():
        logits = model(x)
    g = dense_metric(dense_jacobian(model, space, w, x), logits, "fisher")
    return float(torch.linalg.eigvalsh(g)[-1])


def _cfg(**kw) -> SparsifyConfig:
    return SparsifyConfig(checkpoint="x", out="o", sparsity=0.9, settle="finetune", **kw).validate()


def _choose(cfg, model, data):
    space = ParamSpace.of(model)
    return choose_settle_optimizer(cfg, Settle.FINETUNE, model, space, model_vector(model, space), data, "cpu")


@pytest.fixture
def measured(monkeypatch):
    """The sharpness measured whatever the start's loss (the tiny model's labels are noise: it never trains)."""
    monkeypatch.setattr(sparsify, "TRAINED_LOSS", math.inf)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_sharpness_is_the_top_eigenvalue_of_the_starts_softmax_fisher(seed, dense_jacobian, dense_metric,
                                                                            measured):
    model, data = _tiny()
    chosen, record, cost = _choose(_cfg(seed=seed), model, data)
    exact = _dense_sharpness(model, data, seed, dense_jacobian, dense_metric)
    assert record["sharpness"] == pytest.approx(exact, rel=1e-9)
    assert record["inputs"] == sparsify.SHARPNESS_SAMPLES and record["sgd_lr"] == 0.1
    assert record["products"] == 5  # (the Krylov space is exhausted after rank 4, seen at the 5th product)
    assert cost == pytest.approx(256 * (PASS_FORWARD + PASS_MATVEC * 5))
    assert chosen.value == record["chosen"] == ("adam" if 0.1 * exact > SHARPNESS_BOUND else "sgd")
    other = _dense_sharpness(model, data, 1 - seed, dense_jacobian, dense_metric)
    assert abs(other - exact) > 1e-6  # (the draw follows --seed: another seed measures other inputs)


def test_adam_is_chosen_just_past_the_bound_and_sgd_just_below_it(dense_jacobian, dense_metric, measured):
    """The rule compares SGD's learning rate (--settle-lr here) times the sharpness with the bound."""
    model, data = _tiny()
    sharp = _dense_sharpness(model, data, 0, dense_jacobian, dense_metric)
    above, record, _ = _choose(_cfg(settle_lr=1.01 * SHARPNESS_BOUND / sharp), model, data)
    below, _, _ = _choose(_cfg(settle_lr=0.99 * SHARPNESS_BOUND / sharp), model, data)
    assert (above, below) == (SettleOptimizer.ADAM, SettleOptimizer.SGD)
    assert optimizer_text(record) == (f"adam (auto: SGD's rate {record['sgd_lr']:g} × the start's sharpness "
                                      f"{record['sharpness']:.3g} = {record['sgd_lr'] * record['sharpness']:.3g}; "
                                      f"Adam above 2.5)")


@pytest.mark.parametrize("seed", [0, 1])
def test_a_start_that_has_not_finished_training_keeps_sgd_unmeasured(seed, dense_jacobian, dense_metric):
    """Settling on the labels, a start whose cross-entropy on the rule's inputs is not below a sixth of ln C keeps
    SGD at the cost of the forward pass alone, however sharp; on the start's outputs (distill) no label is read
    and the sharpness decides."""
    model, data = _tiny(seed)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:sparsify.SHARPNESS_SAMPLES]
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(model(data.x[idx]), data.y[idx]))
    bound = math.log(2) / 6
    assert loss >= bound  # (labels of noise)
    fast = _cfg(seed=seed, settle_lr=100.0)  # (lr·λ far past the bound: the sharpness alone would choose Adam)
    chosen, record, cost = _choose(fast, model, data)
    assert chosen is SettleOptimizer.SGD and "sharpness" not in record and "products" not in record
    assert record["train_loss"] == pytest.approx(loss, rel=1e-12) and record["loss_bound"] == pytest.approx(bound)
    assert cost == pytest.approx(256 * PASS_FORWARD)
    assert optimizer_text(record) == (f"sgd (auto: the start's training loss {loss:.3g} is not below {bound:.3g}, "
                                      "a sixth of chance's: it has not finished training; on such starts "
                                      "--method gradual or prune-finetune did better at the same passes, "
                                      "docs/method.md)")
    space = ParamSpace.of(model)
    chosen, record, _ = choose_settle_optimizer(fast, Settle.DISTILL, model, space, model_vector(model, space),
                                                data, "cpu")
    assert chosen is SettleOptimizer.ADAM and "train_loss" not in record
    exact = _dense_sharpness(model, data, seed, dense_jacobian, dense_metric)
    assert record["sharpness"] == pytest.approx(exact, rel=1e-9)


def test_a_given_optimizer_or_no_training_settle_measures_nothing():
    model, data = _tiny()
    assert _choose(_cfg(settle_optimizer="adam"), model, data) == (SettleOptimizer.ADAM, None, 0.0)
    assert _choose(_cfg(settle_optimizer="sgd"), model, data) == (SettleOptimizer.SGD, None, 0.0)
    assert _choose(_cfg(settle_epochs=0.0), model, data) == (SettleOptimizer.SGD, None, 0.0)
    peer = SparsifyConfig(checkpoint="x", out="o", sparsity=0.9, method="prune-finetune").validate()
    assert _choose(peer, model, data) == (SettleOptimizer.SGD, None, 0.0)
    space = ParamSpace.of(model)
    assert choose_settle_optimizer(_cfg(), Settle.GEODESIC, model, space, model_vector(model, space), data,
                                   "cpu") == (SettleOptimizer.SGD, None, 0.0)


def _run_cfg(out, **kw):
    return SparsifyConfig(checkpoint=str(SAMPLE), out=str(out), sparsity=0.9, data_root=str(DATA_ROOT),
                          metric_size=2000, eval_size=500, batch_size=64, steps=4, max_steps=4, cg_iters=2,
                          settle="finetune", settle_epochs=0.05, **kw).validate()


@needs_mnist
def test_auto_is_the_default_and_settles_as_the_optimizer_it_chose_would(tmp_path, monkeypatch):
    """On the sample MNIST network the rule chooses SGD: the run ends on exactly the network --settle-optimizer
    sgd gives, its passes higher by the rule's cost from the start; forced to Adam (bound 0), it trains Adam at
    0.001 and ends where --settle-optimizer adam does. The config records auto and SGD's rate, and replays."""
    seen = spy_on_training(monkeypatch)
    auto = sparsify.run_sparsify(_run_cfg(tmp_path / "auto"))
    sgd = sparsify.run_sparsify(_run_cfg(tmp_path / "sgd", settle_optimizer="sgd"))
    record = auto["settle_optimizer"]
    assert record["chosen"] == "sgd" and 0.1 * record["sharpness"] < SHARPNESS_BOUND and "settle_optimizer" not in sgd
    assert seen == [("sgd", 0.1), ("sgd", 0.1)]
    a, _ = read_tensors(tmp_path / "auto" / "final.safetensors")
    b, _ = read_tensors(tmp_path / "sgd" / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    cost = 256 * (PASS_FORWARD + PASS_MATVEC * record["products"])
    assert auto["sample_passes"] - sgd["sample_passes"] == pytest.approx(cost)
    start = json.loads((tmp_path / "auto" / "trace.jsonl").read_text().splitlines()[0])
    assert start["step"] == 0 and start["sample_passes"] == pytest.approx(cost)
    saved = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert saved["settle_optimizer"] == "auto" and saved["settle_lr"] == 0.1

    monkeypatch.setattr(sparsify, "SHARPNESS_BOUND", 0.0)
    forced = sparsify.run_sparsify(_run_cfg(tmp_path / "forced"))
    adam = sparsify.run_sparsify(_run_cfg(tmp_path / "adam", settle_optimizer="adam"))
    assert forced["settle_optimizer"]["chosen"] == "adam" and seen[2:] == [("adam", 0.001), ("adam", 0.001)]
    c, _ = read_tensors(tmp_path / "forced" / "final.safetensors")
    d, _ = read_tensors(tmp_path / "adam" / "final.safetensors")
    assert all(torch.equal(c[k], d[k]) for k in c) and not all(torch.equal(a[k], c[k]) for k in a)
    saved = yaml.safe_load((tmp_path / "forced" / "config.yaml").read_text())
    assert saved["settle_optimizer"] == "auto" and saved["settle_lr"] == 0.1  # (SGD's: the rule's input)

    again = geopath("sparsify", "--config", tmp_path / "auto" / "config.yaml", "--out", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    assert "optimizer:       sgd (auto: SGD's rate 0.1 × the start's sharpness" in again.stdout
    e, _ = read_tensors(tmp_path / "again" / "final.safetensors")
    assert all(torch.equal(a[k], e[k]) for k in a)
