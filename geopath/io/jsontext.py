"""JSON text every strict parser reads (torch-free): a missing number (NaN, ±Inf) is ``null``.

Python's ``json`` writes ``NaN``, which JavaScript's, Go's and most other parsers reject; every JSON
file and every ``--json`` line geopath writes goes through :func:`dumps`.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (in dicts, lists and tuples, at any depth) as None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kw) -> str:
    """``json.dumps`` of :func:`finite` ``(obj)``; anything else not JSON (a Path, an enum) as its ``str``."""
    return json.dumps(finite(obj), allow_nan=False, default=str, **kw)
