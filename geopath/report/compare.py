"""``geopath compare``: finished runs side by side, one row each.

A run directory's ``summary.json`` names its job, its method and its ``headline``
figures; the table has the columns every run shares first, then the rest. Only complete runs
(``manifest.json`` written) are compared, each read and checked by :func:`geopath.io.reader.read_run` (a damaged
trace, manifest or record is refused in one line), and where the runs were scored on different test sets
(data set, ``--eval-data``, ``--eval-size``, from each run's ``config.yaml``) a ``test_set`` column
says so: their accuracies are not comparable figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from geopath.errors import UsageError
from geopath.io.reader import read_run

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
    rows, columns, tests = [], list(FIRST), []
    for run in runs:
        s, _ = read_run(run)  # (complete, undamaged runs only)
        tests.append(test_set(run))
        keys = [k for k in s.get("headline", []) if k not in COST] + [k for k in COST if k in s]
        row = {"run": str(run), "job": s["job"], "method": s.get("method", "geodesic")}
        row.update({k: s.get(k) for k in keys})
        for k in keys:
            if k not in columns:
                columns.append(k)
        rows.append(row)
    for row, name in zip(rows, _distinct([row["run"] for row in rows], lambda r: Path(r).name or r)):
        row["run"] = name  # (the folder's name; the path as given where two runs share it)
    if len(set(tests)) > 1:  # scored on different test sets (full names decide): say which, beside the figures
        columns.insert(len(FIRST), "test_set")
        for row, test in zip(rows, _distinct(tests, _short_test_set)):
            row["test_set"] = test
    # cost columns last, in a fixed order
    columns = [c for c in columns if c not in COST] + [c for c in COST if c in columns]
    return Table(columns, rows)


def test_set(run: str | Path) -> str:
    """What a run's test figures were measured on, from its ``config.yaml``: the data set(s) (``--eval-data`` where
    given; a path whole) and the number of test samples (``--eval-size``)."""
    from geopath.config import read_yaml

    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise UsageError(f"{run}: no config.yaml (not a geopath run)")
    cfg = read_yaml(path)  # (one-line errors for a file that is no YAML mapping)
    if not cfg:
        raise UsageError(f"{path}: not a geopath run's config")

    sets = [cfg.get("eval_data") or cfg.get("data")] if "data_a" not in cfg else [cfg.get("data_a"), cfg.get("data_b")]
    size = cfg.get("eval_size")
    return "+".join(str(n) for n in sets) + (f"[:{size}]" if size else "")


def _short_test_set(full: str) -> str:
    """A test set as :func:`test_set` writes it, each path by its last component."""
    head, sep, size = full.partition("[:")
    return "+".join(Path(n).name if "/" in n else n for n in head.split("+")) + sep + size


def _distinct(full: list[str], shorten) -> list[str]:
    """``shorten(f)`` for each label, but ``f`` itself wherever different labels would shorten alike (two test
    files called test.npz in different folders, two runs called run)."""
    short = [shorten(f) for f in full]
    clash = {t for t in short if len({f for f, u in zip(full, short) if u == t}) > 1}
    return [f if t in clash else t for f, t in zip(full, short)]
