"""Pareto front and selection rules over trace rows (geopath/jobs/selection.py)."""

from __future__ import annotations

import math
import random

import pytest

from geopath.config import SelectRule
from geopath.jobs.selection import pareto_front, select

A, B = "acc_a", "acc_b"


def _row(i, a, b, **kw):
    return {"step": i, A: a, B: b, **kw}


def _usable(r):
    a, b = r.get(A), r.get(B)
    return a is not None and b is not None and not (math.isnan(a) or math.isnan(b))


def _brute_front(rows):
    """O(n²) reference: non-dominated usable rows; of equal (a, b) pairs only the earliest."""
    pts = [(i, r) for i, r in enumerate(rows) if _usable(r)]
    out = []
    for i, r in pts:
        dominated = any(s[A] >= r[A] and s[B] >= r[B] and (s[A] > r[A] or s[B] > r[B]) for _, s in pts)
        earlier_twin = any(j < i and s[A] == r[A] and s[B] == r[B] for j, s in pts)
        if not dominated and not earlier_twin:
            out.append(r)
    return sorted(out, key=lambda r: r[A])


def _random_rows(seed, n):
    rnd = random.Random(seed)
    grid = rnd.choice([None, 5, 20])  # coarse grids make ties (equal a, equal b, equal pairs) common
    rows = []
    for i in range(n):
        if grid:
            a, b = rnd.randrange(grid) / grid, rnd.randrange(grid) / grid
        else:
            a, b = rnd.random(), rnd.random()
        roll = rnd.random()
        if roll < 0.08:
            a = math.nan
        elif roll < 0.12:
            b = math.nan
        elif roll < 0.15:
            b = None
        rows.append(_row(i, a, b))
    if rnd.random() < 0.3:
        rows.append({"step": n, A: 0.5})  # a row without the second key
    return rows


@pytest.mark.parametrize("seed", range(300))
def test_pareto_front_matches_brute_force(seed):
    rows = _random_rows(seed, random.Random(seed).randrange(0, 40))
    got = pareto_front(rows, A, B)
    ref = _brute_front(rows)
    assert [id(r) for r in got] == [id(r) for r in ref]  # the same row objects, by increasing a
    # on the front, b strictly decreases as a strictly increases
    for r, s in zip(got, got[1:]):
        assert r[A] < s[A] and r[B] > s[B]


def test_pareto_front_hand_made():
    rows = [_row(0, 0.9, 0.1), _row(1, 0.5, 0.5), _row(2, 0.5, 0.4), _row(3, 0.1, 0.9), _row(4, 0.4, 0.4),
            _row(5, 0.5, 0.5), _row(6, math.nan, 1.0), _row(7, 1.0, math.nan), _row(8, 0.9, 0.1)]
    front = pareto_front(rows, A, B)
    assert [r["step"] for r in front] == [3, 1, 0]  # earliest of the (0.5, 0.5) and (0.9, 0.1) twins
    assert front[1] is rows[1] and front[2] is rows[0]


def test_pareto_front_ties_on_one_key():
    # equal a: only the better b survives; equal b: only the better a survives
    rows = [_row(0, 0.7, 0.2), _row(1, 0.7, 0.3), _row(2, 0.6, 0.3), _row(3, 0.2, 0.8)]
    assert [r["step"] for r in pareto_front(rows, A, B)] == [3, 1]


def test_pareto_front_empty_and_all_nan():
    assert pareto_front([], A, B) == []
    assert pareto_front([_row(0, math.nan, 0.3), _row(1, 0.2, None)], A, B) == []


# --------------------------------------------------------------------------- select


def _pick(rows, rule):
    return select(rows, rule, A, B)["step"]


def test_select_max_min():
    rows = [_row(0, 0.95, 0.40), _row(1, 0.80, 0.66), _row(2, 0.70, 0.72), _row(3, 0.50, 0.99)]
    assert _pick(rows, "max-min") == 2  # mins 0.40, 0.66, 0.70, 0.50
    assert _pick(rows, SelectRule.MAX_MIN) == 2
    rows[1][B] = 0.70  # now rows 1 and 2 both have min 0.70: the larger sum (1.50 > 1.42) wins
    assert _pick(rows, "max-min") == 1


def test_select_max_min_tie_breaks_by_sum_then_earliest():
    rows = [_row(0, 0.6, 0.9), _row(1, 0.9, 0.6), _row(2, 0.6, 0.95), _row(3, 0.95, 0.6)]
    assert _pick(rows, "max-min") == 2  # all mins 0.6; sums 1.5, 1.5, 1.55, 1.55 → earliest of the two best
    twins = [_row(0, 0.6, 0.8), _row(1, 0.8, 0.6)]
    assert _pick(twins, "max-min") == 0


def test_select_mean():
    rows = [_row(0, 0.95, 0.40), _row(1, 0.80, 0.70), _row(2, 0.70, 0.72), _row(3, 0.50, 0.99)]
    assert _pick(rows, "mean") == 1  # sums 1.35, 1.50, 1.42, 1.49
    assert _pick(rows, SelectRule.MEAN) == 1


def test_select_mean_tie_breaks_by_min_then_earliest():
    rows = [_row(0, 1.0, 0.5), _row(1, 0.75, 0.75), _row(2, 0.5, 1.0), _row(3, 0.75, 0.75)]
    assert _pick(rows, "mean") == 1  # equal sums; the best min is 0.75 (rows 1 and 3) → earliest
    rows2 = [_row(0, 1.0, 0.5), _row(1, 0.5, 1.0)]
    assert _pick(rows2, "mean") == 0


def test_select_pareto_nearest_ideal_point():
    # front: (0.2, 0.95), (0.6, 0.8), (0.9, 0.3); ideal (0.9, 0.95)
    rows = [_row(0, 0.9, 0.3), _row(1, 0.6, 0.8), _row(2, 0.2, 0.95), _row(3, 0.5, 0.5)]
    # distances: 0.65, sqrt(0.09 + 0.0225) = 0.335, 0.7 → row 1
    assert _pick(rows, "pareto") == 1
    # a dominated row is never chosen, even if it is close to the ideal point
    rows.append(_row(4, 0.59, 0.79))
    assert _pick(rows, "pareto") == 1


def test_select_pareto_only_considers_front_rows():
    # row 1 is dominated by row 0 (equal a, worse b)
    rows = [_row(0, 0.8, 0.8), _row(1, 0.8, 0.7), _row(2, 0.1, 0.9)]
    assert _pick(rows, "pareto") == 0
    # twins: the later copy of the chosen row is not on the front, so the earlier one is picked
    rows = [_row(0, 0.1, 0.9), _row(1, 0.7, 0.7), _row(2, 0.7, 0.7), _row(3, 0.9, 0.1)]
    assert select(rows, "pareto", A, B) is rows[1]


def test_select_pareto_tie_breaks_by_min_then_earliest():
    # ideal (1.0, 1.0); rows 0 and 1 are symmetric → equal distance and equal min → the earlier
    rows = [_row(0, 1.0, 0.5), _row(1, 0.5, 1.0)]
    assert _pick(rows, "pareto") == 0
    rows = [_row(0, 0.5, 1.0), _row(1, 1.0, 0.5)]
    assert _pick(rows, "pareto") == 0
    # ideal (1, 1) from rows 2 and 3; rows 0 (0.7, 0.6) and 1 (0.6, 0.7) both at distance 0.5 (3-4-5),
    # both with min 0.6 → the earlier
    rows = [_row(0, 0.7, 0.6), _row(1, 0.6, 0.7), _row(2, 1.0, 0.0), _row(3, 0.0, 1.0)]
    assert _pick(rows, "pareto") == 0
    # equal distance 0.5 from (1, 1), different mins: (0.5, 1.0) has min 0.5, (0.7, 0.6) has min 0.6
    rows = [_row(0, 0.5, 1.0), _row(1, 0.7, 0.6), _row(2, 1.0, 0.0)]
    assert {r["step"] for r in pareto_front(rows, A, B)} == {0, 1, 2}
    assert math.hypot(1 - 0.5, 1 - 1.0) == math.hypot(1 - 0.7, 1 - 0.6)  # (exact in floating point here)
    assert _pick(rows, "pareto") == 1


def test_select_ignores_nan_rows_and_returns_the_row_object():
    rows = [_row(0, math.nan, 1.0), _row(1, 0.6, 0.6), _row(2, 1.0, None), _row(3, 0.5, 0.55)]
    for rule in SelectRule:
        got = select(rows, rule, A, B)
        assert got is rows[1]


def test_select_without_usable_rows_raises():
    with pytest.raises(ValueError):
        select([_row(0, math.nan, 0.5)], "max-min", A, B)
    with pytest.raises(ValueError):
        select([], "pareto", A, B)


def test_select_unknown_rule_raises():
    with pytest.raises(ValueError):
        select([_row(0, 0.5, 0.5)], "median", A, B)


@pytest.mark.parametrize("seed", range(100))
def test_select_rules_against_brute_force(seed):
    rows = _random_rows(seed, random.Random(seed).randrange(1, 30))
    usable = [(i, r) for i, r in enumerate(rows) if _usable(r)]
    if not usable:
        with pytest.raises(ValueError):
            select(rows, "mean", A, B)
        return

    def best(cands, key):
        # largest key, then earliest index
        top = max(key(r) for _, r in cands)
        return min(i for i, r in cands if key(r) == top)

    assert select(rows, "max-min", A, B) is rows[best(usable, lambda r: (min(r[A], r[B]), r[A] + r[B]))]
    assert select(rows, "mean", A, B) is rows[best(usable, lambda r: (r[A] + r[B], min(r[A], r[B])))]
    front = _brute_front(rows)
    ia, ib = max(r[A] for r in front), max(r[B] for r in front)
    ids = {id(r) for r in front}
    on = [(i, r) for i, r in usable if id(r) in ids]
    assert select(rows, "pareto", A, B) is rows[best(on, lambda r: (-math.hypot(ia - r[A], ib - r[B]),
                                                                      min(r[A], r[B])))]
