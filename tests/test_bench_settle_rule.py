"""bench/settle_rule.py's flip chance against torch's binomial distribution."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from settle_rule import flip_chance  # noqa: E402


def _tail(p: float, n: int, most: int) -> float:
    """P(k ≤ most), k ~ Binomial(n, 1 − p), from torch."""
    k = torch.arange(0, most + 1, dtype=torch.float64)
    dist = torch.distributions.Binomial(n, probs=torch.tensor(1.0 - p, dtype=torch.float64))
    return float(dist.log_prob(k).exp().sum())


@pytest.mark.parametrize("p", [0.99952, 0.999, 0.9985, 0.998, 0.997, 0.99])
def test_flip_chance_is_the_binomial_tail(p):
    n, threshold = 2048, 0.998
    most = 4  # 2048 · 0.002 = 4.096: a draw with at most 4 wrong distils
    distils = _tail(p, n, most)
    expected = 1.0 - distils if p >= threshold else distils
    assert flip_chance(p, n, threshold) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_flip_chance_edges():
    assert flip_chance(1.0, 2048, 0.998) == 0.0  # nothing wrong: every draw distils
    assert flip_chance(0.5, 2048, 0.998) < 1e-100  # no draw of a poor fit distils
    assert flip_chance(0.9995, 2048, 0.998) < flip_chance(0.999, 2048, 0.998)  # nearer the threshold: likelier
    # n · (1 − t) an integer: a draw with exactly that many wrong is at the threshold, and distils
    assert flip_chance(0.998, 1000, 0.998) == pytest.approx(1.0 - _tail(0.998, 1000, 2), rel=1e-9)
