"""Choosing networks along a path that serves two tasks: Pareto front and selection rules.

Rows are trace rows; ``key_a``/``key_b`` name the two accuracies to trade off
(the validation accuracies when a validation split exists, else the test ones).
"""

from __future__ import annotations

import math
from typing import Sequence

from geopath.config import SelectRule


def _ok(row: dict, key_a: str, key_b: str) -> bool:
    a, b = row.get(key_a), row.get(key_b)
    return a is not None and b is not None and not (math.isnan(a) or math.isnan(b))


def pareto_front(rows: Sequence[dict], key_a: str, key_b: str) -> list[dict]:
    """Rows not dominated in ``(key_a, key_b)`` (higher is better), by increasing ``key_a``.

    A row is dominated when another is at least as good on both and better on one.
    Of rows with equal accuracies only the earliest is kept.
    """
    pts = [r for r in rows if _ok(r, key_a, key_b)]
    front: list[dict] = []
    best_b = -math.inf
    # by a descending (earliest first among ties): a row is on the front iff its b beats every row before it
    for r in sorted(pts, key=lambda r: (-r[key_a], -r[key_b])):
        if r[key_b] > best_b:
            front.append(r)
            best_b = r[key_b]
    return sorted(front, key=lambda r: (r[key_a], -r[key_b]))


def select(rows: Sequence[dict], rule: SelectRule | str, key_a: str, key_b: str) -> dict:
    """The row a rule picks (ties: the better other score, then the earliest row)."""
    rule = SelectRule(rule)
    pts = [(i, r) for i, r in enumerate(rows) if _ok(r, key_a, key_b)]
    if not pts:
        raise ValueError("no row has both accuracies")
    if rule is SelectRule.MAX_MIN:
        score = lambda r: (min(r[key_a], r[key_b]), r[key_a] + r[key_b])  # noqa: E731
    elif rule is SelectRule.MEAN:
        score = lambda r: (r[key_a] + r[key_b], min(r[key_a], r[key_b]))  # noqa: E731
    else:
        front = pareto_front(rows, key_a, key_b)
        ideal_a = max(r[key_a] for r in front)
        ideal_b = max(r[key_b] for r in front)
        on_front = {id(r) for r in front}
        pts = [(i, r) for i, r in pts if id(r) in on_front]
        score = lambda r: (-math.hypot(ideal_a - r[key_a], ideal_b - r[key_b]), min(r[key_a], r[key_b]))  # noqa: E731
    return max(pts, key=lambda ir: (score(ir[1]), -ir[0]))[1]
