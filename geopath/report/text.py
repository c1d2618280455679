"""How numbers read in geopath's text output (torch-free): 4 decimals, ``-`` for a missing value."""

from __future__ import annotations

import math


def fmt(v) -> str:
    """A value for a person: floats to 4 places, ``-`` for None and NaN."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4f}"
    return str(v)
