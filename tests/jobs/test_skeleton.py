"""The skeleton every job runs (jobs/common.Job): a run that fails before its first step leaves nothing
behind; one that fails later stays resumable; --resume may repeat the run's own options."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import yaml

import geopath.core.path as path_mod
from geopath.config import SparsifyConfig, changed_options, resolve
from geopath.core.path import Interrupted
from geopath.errors import UsageError
from geopath.io.archs import build_model
from geopath.io.checkpoint import save_checkpoint
from geopath.jobs.sparsify import run_sparsify

KW = {"in_features": 8, "hidden": [6], "num_classes": 2}


@pytest.fixture
def toy(tmp_path):
    """A tiny MLP and a data folder laid out by split (train.npz, test.npz)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 8, generator=g)
    y = (x[:, 0] > 0).long()
    data = tmp_path / "toy"
    data.mkdir()
    np.savez(data / "train.npz", x=x[:120].numpy(), y=y[:120].numpy())
    np.savez(data / "test.npz", x=x[120:].numpy(), y=y[120:].numpy())
    torch.manual_seed(0)
    ck = tmp_path / "net.safetensors"
    save_checkpoint(ck, build_model("mlp", KW), "mlp", KW, extra={"data": str(data)})
    return ck, data


def _cfg(ck, out, **kw):
    flags = {"checkpoint": str(ck), "out": str(out), "sparsity": 0.5, "batch_size": 16, "save_every": 1,
             "train_eval_size": 0}
    if kw.get("method", "geodesic") == "geodesic":  # (a peer refuses the geodesic's step options)
        flags.update(steps=3, max_steps=4, cg_iters=2)
    return resolve(SparsifyConfig, {}, {**flags, **kw})


def test_the_toy_run_completes(toy, tmp_path):
    ck, data = toy
    summary = run_sparsify(_cfg(ck, tmp_path / "ok"))
    assert summary["sparsity"] == pytest.approx(0.5, abs=0.01)
    saved = yaml.safe_load((tmp_path / "ok" / "config.yaml").read_text())
    assert saved["data"] == str(data.resolve())  # recorded absolute: the run reads from any directory
    assert saved["checkpoint"] == str(ck.resolve())


def test_a_run_that_fails_at_its_first_step_leaves_nothing(toy, tmp_path, monkeypatch):
    ck, _ = toy

    def boom(*a, **k):
        raise RuntimeError("forward AD is not implemented for this layer")

    monkeypatch.setattr(path_mod, "geodesic_step", boom)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="forward AD"):
        run_sparsify(_cfg(ck, out))
    assert not out.exists()
    # over an old run with --overwrite: the old run was replaced, and the failed one leaves nothing either
    # (the directory was there before: it stays, empty)
    out.mkdir()
    for name in ("config.yaml", "trace.jsonl", "summary.json"):  # (these stand for the old run)
        (out / name).write_text("{}")
    with pytest.raises(RuntimeError):
        run_sparsify(_cfg(ck, out), overwrite=True)
    assert out.is_dir() and not any(out.iterdir())
    # an empty directory the user made is kept
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(RuntimeError):
        run_sparsify(_cfg(ck, mine))
    assert mine.is_dir() and not any(mine.iterdir())


def test_a_peer_that_fails_before_its_first_step_leaves_nothing(toy, tmp_path, monkeypatch):
    import geopath.peers.pruning as pruning

    ck, _ = toy

    def boom(task):
        raise FloatingPointError("diverged")

    monkeypatch.setattr(pruning, "run_prune_finetune", boom)
    with pytest.raises(FloatingPointError):
        run_sparsify(_cfg(ck, tmp_path / "peer", method="prune-finetune"))
    assert not (tmp_path / "peer").exists()


def test_an_interrupted_first_step_and_a_later_failure_stay_resumable(toy, tmp_path, monkeypatch):
    ck, _ = toy
    real, calls = path_mod.geodesic_step, []

    def stop_first(*a, **k):
        raise Interrupted("interrupted after step 0")

    monkeypatch.setattr(path_mod, "geodesic_step", stop_first)
    with pytest.raises(Interrupted):
        run_sparsify(_cfg(ck, tmp_path / "int"))
    assert (tmp_path / "int" / "config.yaml").is_file()

    def fail_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("late failure")
        return real(*a, **k)

    monkeypatch.setattr(path_mod, "geodesic_step", fail_third)
    out = tmp_path / "late"
    with pytest.raises(RuntimeError, match="late"):
        run_sparsify(_cfg(ck, out))
    assert (out / "steps" / "step_00002.safetensors").is_file() and not (out / "manifest.json").exists()
    monkeypatch.setattr(path_mod, "geodesic_step", real)
    resumed = run_sparsify(_cfg(ck, out), resume=True)
    fresh = run_sparsify(_cfg(ck, tmp_path / "fresh"))
    assert resumed["test_accuracy"] == fresh["test_accuracy"] and resumed["step"] == fresh["step"]


def test_resume_accepts_the_runs_own_options_and_refuses_changes(toy, tmp_path):
    ck, data = toy
    saved = {**_cfg(ck, tmp_path / "o", steps=7).to_dict(), "method": "prune-finetune", "data": str(data.resolve())}
    same = {"steps": "7", "checkpoint": str(ck.resolve()), "method": "prune-finetune", "sparsity": 0.5,
            "data": str(data)}
    assert changed_options(SparsifyConfig, saved, same) == []
    assert changed_options(SparsifyConfig, saved, {"steps": 8, "lr": 0.05, "beta": 2.0}) == ["--beta", "--steps"]
    # an option the saved config does not list is compared with its default
    assert changed_options(SparsifyConfig, {"checkpoint": "x"}, {"rounds": 5}) == []
    assert changed_options(SparsifyConfig, {"checkpoint": "x"}, {"rounds": 6}) == ["--rounds"]
    # repeated the way a user types them: a data set's alias, one value for every channel, the default
    recorded = {"data": "fashion-mnist", "normalize": "0.5,0.5,0.5/0.5,0.5,0.5", "checkpoint": "x"}
    assert changed_options(SparsifyConfig, recorded, {"data": "fmnist", "normalize": "0.5/0.5"}) == []
    assert changed_options(SparsifyConfig, recorded, {"normalize": "dataset"}) == []
    assert changed_options(SparsifyConfig, recorded, {"data": "mnist", "normalize": "none"}) == ["--data",
                                                                                               "--normalize"]


def test_resume_accepts_the_plan_file_the_run_started_from(tmp_path):
    from geopath.config import TransitionConfig

    plan = tmp_path / "plan.yaml"
    plan.write_text("legs:\n  - sparsity: 0.5\n  - name: back\n    sparsity: 0.0\n")
    saved = {"checkpoint": "x", "plan": [{"name": "leg1", "sparsity": 0.5}, {"name": "back", "sparsity": 0.0}]}
    assert changed_options(TransitionConfig, saved, {"plan": str(plan)}) == []
    plan.write_text("legs:\n  - sparsity: 0.6\n")
    assert changed_options(TransitionConfig, saved, {"plan": str(plan)}) == ["--plan"]


def test_a_single_set_needs_its_test_data_named(toy, tmp_path):
    ck, data = toy
    out = tmp_path / "one"
    with pytest.raises(UsageError, match="no test split of its own: pass --eval-data"):
        run_sparsify(_cfg(ck, out, data=str(data / "train.npz")))
    assert not out.exists()
    summary = run_sparsify(_cfg(ck, out, data=str(data / "train.npz"), eval_data=str(data / "test.npz")))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"] == str((data / "train.npz").resolve())
    assert saved["eval_data"] == str((data / "test.npz").resolve())
    assert summary["test_accuracy"] == run_sparsify(_cfg(ck, tmp_path / "split"))["test_accuracy"]
