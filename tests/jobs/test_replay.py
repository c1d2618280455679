"""Replaying a run's ``config.yaml`` with changed flags (``geopath JOB --config OUT/config.yaml --sparsity 0.8``)
makes the run the original command with those flags would make: the options the command left to the run (the step
size, the approach's length, the settle's learning rate, ...) are listed under ``derived`` and derived again, not
replayed at the values resolved for the other options."""

from __future__ import annotations

import json

import pytest
import yaml

from geopath.config import SparsifyConfig, derived_options, read_yaml
from geopath.errors import UsageError

from .._helpers import FAST_DATA, SAMPLE, geopath, interrupt_when, needs_mnist

# a short geodesic run with a training settle, everything else left to the run
SHORT = [*FAST_DATA, "--cg-iters", "3", "--train-eval-size", "0", "--json"]
LENGTH = ["--steps", "4", "--settle-epochs", "0.05"]


def test_derived_options_are_those_left_unset_and_filled_in():
    given = SparsifyConfig(checkpoint="c", out="o", settle_lr=0.02)
    resolved = SparsifyConfig(checkpoint="c", out="o", settle_lr=0.02, step_size=0.3, max_steps=4, arch="mlp")
    assert sorted(derived_options(given, resolved)) == ["arch", "max_steps", "step_size"]  # not the given settle_lr


def test_a_replay_drops_the_derived_options_and_a_resume_keeps_them(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"sparsity": 0.7, "step_size": 0.37, "max_steps": 50, "derived":
                                    ["step_size", "max_steps"]}))
    assert read_yaml(path, rederive=True) == {"sparsity": 0.7, "derived": ["step_size", "max_steps"]}  # (marks a run)
    assert read_yaml(path) == {"sparsity": 0.7, "step_size": 0.37, "max_steps": 50}
    path.write_text(yaml.safe_dump({"sparsity": 0.7, "derived": None}))
    assert read_yaml(path, rederive=True) == {"sparsity": 0.7}  # (an empty list)


def test_a_plain_mapping_with_a_derived_list_resolves_with_its_recorded_values():
    """A library caller passing ``yaml.safe_load(config.yaml)`` to ``resolve`` gets the recorded run (the list is
    no option; only ``--config`` derives again)."""
    from geopath.config import resolve

    cfg = resolve(SparsifyConfig, {"checkpoint": "c", "out": "o", "step_size": 0.37, "derived": ["step_size"]}, {})
    assert cfg.step_size == 0.37


@pytest.mark.parametrize("bad", ["step_size", [1, 2], {"a": 1}])
def test_a_derived_entry_that_is_no_list_of_names_is_refused(tmp_path, bad):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"sparsity": 0.7, "derived": bad}))
    with pytest.raises(UsageError, match="'derived' must be a list of option names"):
        read_yaml(path, rederive=True)


def _run(out, *args):
    r = geopath("sparsify", *SHORT, *args, "-o", out)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1]), yaml.safe_load((out / "config.yaml").read_text())


@needs_mnist
@pytest.mark.parametrize("change", [["--sparsity", "0.8"], ["--steps", "6"], ["--settle", "finetune"]])
def test_a_replay_with_a_changed_flag_is_the_run_that_flag_makes(tmp_path, change):
    """The 0.5 run's step size was sized for its own target and steps, its settle rate for its settle (the shipped
    MLP distils at 0.05; fine-tuning takes 0.1): replayed with a change, each follows the change."""
    first_summary, first = _run(tmp_path / "first", SAMPLE, "--sparsity", "0.5", *LENGTH)
    assert {"step_size", "max_steps", "settle_lr", "settle_prune", "arch"} <= set(first["derived"])
    replay_summary, replay = _run(tmp_path / "replay", "--config", tmp_path / "first" / "config.yaml", *change)
    fresh_summary, fresh = _run(tmp_path / "fresh", SAMPLE, "--sparsity", "0.5", *LENGTH, *change)
    for cfg in (first, replay, fresh):
        cfg.pop("out")
    assert replay == fresh and replay != first
    assert replay_summary["test_accuracy"] == fresh_summary["test_accuracy"]
    assert replay_summary["sample_passes"] == fresh_summary["sample_passes"]


@needs_mnist
def test_a_replay_as_it_was_derives_the_same_values(tmp_path):
    first_summary, first = _run(tmp_path / "first", SAMPLE, "--budget", "0.2", "--sparsity", "0.5")
    again_summary, again = _run(tmp_path / "again", "--config", tmp_path / "first" / "config.yaml")
    other_summary, other = _run(tmp_path / "other", "--config", tmp_path / "first" / "config.yaml", "--budget", "1.4")
    fresh_summary, fresh = _run(tmp_path / "fresh", SAMPLE, "--budget", "1.4", "--sparsity", "0.5")
    for cfg in (first, again, other, fresh):
        cfg.pop("out")
    assert again == first and other == fresh and other["step_size"] != first["step_size"]
    assert again_summary["test_accuracy"] == first_summary["test_accuracy"]
    assert other_summary["sample_passes"] == fresh_summary["sample_passes"]


@needs_mnist
@pytest.mark.parametrize("length, change", [(LENGTH, ["--sparsity", "0.6", "--steps", "8"]),
                                            (["--budget", "0.2"], ["--sparsity", "0.6", "--budget", "1.4"])])
def test_an_interrupted_replay_resumes_with_the_same_command_line(tmp_path, length, change):
    """``--resume`` beside the ``--config`` and flags the run was started with: the config's derived step size is
    the original run's, and its steps and settle epochs gave way to the budget, not options the resume changes."""
    _run(tmp_path / "first", SAMPLE, "--sparsity", "0.5", *length)
    again = ["--config", tmp_path / "first" / "config.yaml", *change, "-o", tmp_path / "again"]
    code, err, hit = interrupt_when(["sparsify", *SHORT, *again], lambda row: row["step"] >= 5)
    assert hit is not None and code != 0, err
    resumed = geopath("sparsify", *SHORT, *again, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.splitlines()[-1])["sparsity"] == pytest.approx(0.6, abs=1e-3)
