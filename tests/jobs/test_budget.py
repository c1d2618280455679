"""``geopath sparsify --budget B``: the suite's budget rule as one option (``--steps 5·B --settle-epochs 0.875·B``),
refused where it would be ignored or contradicted, recorded so that a run replays and resumes."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from geopath.config import SparsifyConfig, budget_rule, resolve
from geopath.errors import UsageError

from .._helpers import FAST_DATA, SAMPLE, cli, geopath, needs_mnist, one_error_line

BASE = {"checkpoint": str(SAMPLE), "out": "unused"}


def _resolve(yaml_values=None, **flags):
    return resolve(SparsifyConfig, yaml_values or {}, {**BASE, **flags})


@pytest.mark.parametrize("budget, steps, epochs", [(5, 25, 4.375), (2, 10, 1.75), (1, 5, 0.875), (0.5, 5, 0.4375),
                                                    (3.3, 17, 2.8875), (2.5, 13, 2.1875)])
def test_the_rule(budget, steps, epochs):
    assert budget_rule(budget) == (steps, pytest.approx(epochs))
    cfg = _resolve(budget=budget)
    assert (cfg.budget, cfg.steps, cfg.settle_epochs) == (budget, steps, pytest.approx(epochs))


def test_a_budget_is_the_run_the_two_options_it_sets_would_make():
    by_budget = _resolve(budget=2).to_dict()
    by_hand = _resolve(steps=10, settle_epochs=1.75).to_dict()
    assert by_budget.pop("budget") == 2 and by_hand.pop("budget") is None
    assert by_budget == by_hand


def test_without_a_budget_the_defaults_stand():
    cfg = _resolve()
    assert (cfg.budget, cfg.steps, cfg.settle_epochs) == (None, 50, 2.5)


@pytest.mark.parametrize("flags, names", [({"steps": 30}, "--steps 30"), ({"settle_epochs": 3.0}, "--settle-epochs 3"),
                                          ({"steps": 7, "settle_epochs": 1.0}, "--steps 7 and --settle-epochs 1")])
def test_a_budget_beside_another_value_of_what_it_sets_is_refused(flags, names):
    with pytest.raises(UsageError, match=f"--budget 5 sets --steps 25 and --settle-epochs 4.375: drop {names}, or"):
        _resolve(budget=5, **flags)


@pytest.mark.parametrize("flags", [{"steps": 50}, {"settle_epochs": 2.5}])
def test_a_budget_beside_a_default_value_given_is_refused_too(flags):
    """``--steps 50`` is the default's value but given: the budget must not drop it in silence."""
    with pytest.raises(UsageError, match="drop --(steps 50|settle-epochs 2.5), or --budget"):
        _resolve(budget=5, **flags)
    with pytest.raises(UsageError, match="drop --(steps 50|settle-epochs 2.5), or --budget"):
        _resolve({"budget": 5, **flags})  # the same pair in a config file of the user's own


def test_the_value_a_budget_sets_is_compared_as_a_number():
    """0.875 × 0.1 is one unit in the last place above 0.0875: the same value, not a clash."""
    assert _resolve(budget=0.1, settle_epochs=0.0875).settle_epochs == pytest.approx(0.0875)


def test_a_budget_in_a_users_file_clashes_with_a_steps_flag():
    """Only a run's record (the budget with the two values it set) gives way to ``--steps``; in a file of the
    user's own, ``budget: 5`` beside ``--steps 30`` is the command line's clash."""
    with pytest.raises(UsageError, match="drop --steps 30, or --budget"):
        _resolve({"budget": 5}, steps=30)


def test_a_budget_beside_the_value_it_sets_is_the_same_run():
    assert _resolve(budget=5, steps=25, settle_epochs=4.375) == _resolve(budget=5)


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, 1e308])
def test_a_budget_must_be_a_positive_number(bad):
    with pytest.raises(UsageError, match="--budget must be|finite|invalid value"):
        _resolve(budget=bad)


def test_a_geodesic_settle_takes_no_budget():
    with pytest.raises(UsageError, match="^--budget 2 sets a training settle's epochs; --settle geodesic takes "
                                         "--steps and --settle-steps"):  # (the value: a replay's may be the file's)
        _resolve(budget=2, settle="geodesic")


def test_a_peer_takes_no_budget():
    with pytest.raises(UsageError, match="--budget: not read by this run .--method gradual spends --finetune-epochs"):
        _resolve(budget=2, method="gradual")


def test_a_recorded_budget_gives_way_to_a_flag():
    """A run's config.yaml holds the budget and the two values it set: replayed with another ``--budget`` both
    follow the flag; with ``--steps`` the recorded budget is dropped and the recorded settle epochs stay."""
    recorded = _resolve(budget=5).to_dict()
    assert (recorded["steps"], recorded["settle_epochs"]) == (25, 4.375)
    again = _resolve(recorded, budget=2)
    assert (again.budget, again.steps, again.settle_epochs) == (2, 10, 1.75)
    steps = _resolve(recorded, steps=30)
    assert (steps.budget, steps.steps, steps.settle_epochs) == (None, 30, 4.375)
    assert _resolve(recorded) == _resolve(budget=5)  # replayed as it was
    own = {**BASE, "steps": 30}  # a file of the user's own, not a run's record: its steps stand, and clash
    with pytest.raises(UsageError, match="drop --steps 30"):
        _resolve(own, budget=5)


def test_a_run_recorded_without_a_budget_replays_with_one():
    """A run's record holds ``steps`` and ``settle_epochs`` at their defaults; replayed with ``--budget`` they are
    what the budget sets (a value the run was given, or a file of the user's own, still clashes)."""
    recorded = _resolve().to_dict()
    assert (recorded["steps"], recorded["settle_epochs"], recorded["budget"]) == (50, 2.5, None)
    again = _resolve(recorded, budget=2)
    assert (again.budget, again.steps, again.settle_epochs) == (2, 10, 1.75)
    with pytest.raises(UsageError, match="drop --steps 30"):
        _resolve(_resolve(steps=30).to_dict(), budget=2)
    with pytest.raises(UsageError, match="drop --steps 50"):
        _resolve({"steps": 50}, budget=2)


def test_a_users_file_with_a_budget_and_its_values_clashes_with_a_steps_flag():
    """Only a run's record gives its budget up to ``--steps``; a file of the user's own naming the budget and the
    two values it sets does not look like one."""
    with pytest.raises(UsageError, match="drop --steps 30, or --budget"):
        _resolve({"budget": 2, "steps": 10, "settle_epochs": 1.75}, steps=30)


def test_the_former_rounding_is_for_records_only():
    with pytest.raises(UsageError, match="--budget 2.5 sets --steps 13 .*drop --steps 12"):
        _resolve(budget=2.5, steps=12)
    with pytest.raises(UsageError, match="drop --steps 12"):
        _resolve({"budget": 2.5, "steps": 12, "settle_epochs": 2.1875})  # (a file of the user's own)


def test_a_geodesic_settle_is_the_first_complaint():
    with pytest.raises(UsageError, match="--settle geodesic takes --steps and --settle-steps"):
        _resolve(budget=2, settle="geodesic", steps=30)


def test_a_run_recorded_under_the_former_rounding_replays_and_resumes():
    """Until 2026-12-08 ``--budget 3.3`` made 16 steps (5·B rounded half to even); such a record still resolves."""
    recorded = {**_resolve(budget=3.3).to_dict(), "steps": 16}
    assert _resolve(recorded).steps == 16
    assert resolve(SparsifyConfig, recorded, {}, resuming=True).steps == 16


def test_the_command_line_refuses_in_one_line(tmp_path):
    r = cli("sparsify", SAMPLE, "--budget", "5", "--steps", "30", "-o", tmp_path / "o")
    assert r.returncode == 2
    assert "--budget 5 sets --steps 25" in one_error_line(r)
    assert not (tmp_path / "o").exists()


@needs_mnist
def test_a_run_records_its_budget_and_replays(tmp_path):
    args = ["sparsify", SAMPLE, "--sparsity", "0.5", *FAST_DATA, "--cg-iters", "3", "--settle-prune", "0",
            "--train-eval-size", "0", "--json"]
    r = geopath(*args, "--budget", "0.2", "-o", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert (saved["budget"], saved["steps"], saved["settle_epochs"]) == (0.2, 5, pytest.approx(0.175))
    replay = geopath("sparsify", "--config", tmp_path / "a" / "config.yaml", "--json", "-o", tmp_path / "b")
    assert replay.returncode == 0, replay.stderr
    first, second = (json.loads(p.stdout.splitlines()[-1]) for p in (r, replay))
    assert first["test_accuracy"] == second["test_accuracy"]
    assert first["sample_passes"] == second["sample_passes"]


def test_a_resume_beside_the_budget_replay_it_continues_sees_no_change():
    """``geopath sparsify --config RUN/config.yaml --budget 2 -o OUT --resume`` (the command the interrupted
    replay was started with): the file's default steps and settle epochs gave way to the budget then, and do
    again, so they are no option the resume would change."""
    from geopath.config import changed_options, known_options, replayed

    record = {**_resolve().to_dict(), "derived": []}  # a run's record without a budget
    saved = _resolve(record, budget=2).to_dict()  # what the replay recorded
    given = {**replayed(SparsifyConfig, record, {**BASE, "budget": 2}), **BASE, "budget": 2}
    assert changed_options(SparsifyConfig, saved, given) == []
    plain = {**known_options(SparsifyConfig, record), **BASE, "budget": 2}  # (before: the file's values as given)
    assert changed_options(SparsifyConfig, saved, plain) == ["--settle-epochs", "--steps"]
