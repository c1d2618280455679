"""bench/time_to_accuracy.py: the seconds a ladder of budgets needs to reach an accuracy."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from time_to_accuracy import seconds_to_reach  # noqa: E402

LADDER = [{"seconds": 1.0, "accuracy": 0.9800}, {"seconds": 2.0, "accuracy": 0.9820},
          {"seconds": 4.0, "accuracy": 0.9810}, {"seconds": 6.0, "accuracy": 0.9840}]


def test_linear_between_the_first_budget_that_reaches_it_and_the_one_before():
    assert seconds_to_reach(LADDER, 0.9810) == pytest.approx(1.5)
    # 0.9830: the third budget falls back below; the fourth is the first to reach it, from the third
    assert seconds_to_reach(LADDER, 0.9830) == pytest.approx(4.0 + 2.0 * 2 / 3)


def test_the_first_budget_itself_or_never():
    assert seconds_to_reach(LADDER, 0.9700) == 1.0
    assert seconds_to_reach(LADDER, 0.9800) == 1.0
    assert seconds_to_reach(LADDER, 0.9850) is None


def test_epochs_are_read_off_the_same_way():
    ladder = [dict(q, epochs=e) for q, e in zip(LADDER, (0.5, 1.0, 2.0, 3.0))]
    assert seconds_to_reach(ladder, 0.9810, "epochs") == pytest.approx(0.75)
    assert seconds_to_reach(ladder, 0.9850, "epochs") is None
