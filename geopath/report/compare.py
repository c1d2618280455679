"""``geopath compare``: finished runs side by side, one row each.

A run directory's ``summary.json`` names its job, its method and its ``headline``
figures; the table has the columns every run shares first, then the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from geopath.errors import UsageError
from geopath.io.reader import read_summary

FIRST = ("run", "job", "method")
COST = ("sample_passes", "epochs", "wall_time")


@dataclass
class Table:
    columns: list[str]
    rows: list[dict]


def load_runs(runs: list[str | Path]) -> Table:
    """The comparison table of ``runs`` (in the order given)."""
    if not runs:
        raise UsageError("name at least one run directory")
    rows, columns = [], list(FIRST)
    for run in runs:
        s = read_summary(run)
        keys = [k for k in s.get("headline", []) if k not in COST] + [k for k in COST if k in s]
        row = {"run": Path(run).name or str(run), "job": s["job"], "method": s.get("method", "geodesic")}
        row.update({k: s.get(k) for k in keys})
        for k in keys:
            if k not in columns:
                columns.append(k)
        rows.append(row)
    # cost columns last, in a fixed order
    columns = [c for c in columns if c not in COST] + [c for c in COST if c in columns]
    return Table(columns, rows)
