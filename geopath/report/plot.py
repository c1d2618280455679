"""``geopath plot``: accuracy, distance to the target and metric length along runs.

Reads each run directory's ``trace.jsonl`` and ``summary.json`` (:mod:`geopath.io.reader`) and overlays the
runs (geodesic and peers alike) in one PNG. Merge runs draw both tasks (task A
solid, task B dashed); ``kind="tasks"`` draws task-A against task-B accuracy, the
plane their Pareto fronts live in. Needs matplotlib (``pip install geopath[plot]``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from geopath.io.outfile import check_output_file
from geopath.io.reader import read_run
from geopath.errors import UsageError

X_CHOICES = ("t", "step", "epochs", "sample_passes", "length", "wall_time")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not math.isnan(v)


def _series(rows: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [(r[x], r[y]) for r in rows if _finite(r.get(x)) and _finite(r.get(y))]
    return [p[0] for p in pts], [p[1] for p in pts]


PATH_PANELS = (("distance", "distance to target"), ("length", "metric length"))


def path_panels(traces: Sequence[list[dict]], x: str = "t") -> list[tuple[str | None, str]]:
    """(trace key, axis label) of each panel of a ``kind="path"`` figure: test accuracy always, the distance
    to the target and the metric length where at least one run has them against ``x`` (a peer or a relaxed
    path has no metric length, and a panel with nothing in it says nothing)."""
    return [(None, "test accuracy")] + [(key, name) for key, name in PATH_PANELS
                                        if any(_series(rows, x, key)[0] for rows in traces)]


def _accuracy_keys(rows: list[dict]) -> list[tuple[str, str]]:
    """(key, line style) of the accuracies a run's rows carry."""
    keys = rows[0].keys() if rows else []
    if "test_accuracy_a" in keys:
        return [("test_accuracy_a", "-"), ("test_accuracy_b", "--")]
    return [("test_accuracy", "-")]


FORMATS = (".png", ".pdf", ".svg")  # what --out may end with: the figure's format


def plot_runs(runs: Sequence[str | Path], out: str | Path, x: str = "t", kind: str = "path",
              title: str | None = None, labels: Sequence[str] | None = None, overwrite: bool = False) -> Path:
    """Draw ``runs`` into ``out`` (PNG, PDF or SVG, by its suffix); returns its path. An existing ``out`` is
    replaced only with ``overwrite``; ``labels``, when given, name every run.

    ``kind="path"``: accuracy, distance to the target and metric length against ``x``
    (one of :data:`X_CHOICES`; :func:`path_panels` leaves out a panel no run has data for).
    ``kind="tasks"``: task-A against task-B test accuracy
    of merge runs, the path's order shown by the line.
    """
    if x not in X_CHOICES:
        raise UsageError(f"--x must be one of {', '.join(X_CHOICES)}, got {x!r}")
    if kind not in ("path", "tasks"):
        raise UsageError(f"--kind must be path or tasks, got {kind!r}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install 'geopath[plot]'") from None
    runs = [Path(r) for r in runs]
    if not runs:
        raise UsageError("name at least one run directory")
    if labels and len(labels) != len(runs):
        raise UsageError(f"{len(labels)} --label for {len(runs)} run(s): give one per run, in order, or none")
    out = check_output_file(out, overwrite, FORMATS, inputs=runs)
    data = []
    for i, run in enumerate(runs):
        summary, rows = read_run(run)  # (complete, undamaged runs only: the checks compare makes)
        label = labels[i] if labels else f"{run.name} ({summary.get('method', 'geodesic')})"
        data.append((label, summary, rows))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if kind == "tasks":
        fig, ax = plt.subplots(figsize=(5.5, 5))
        for i, (label, summary, rows) in enumerate(data):
            if summary.get("job") != "merge":
                raise UsageError(f"--kind tasks draws merge runs; {label} is a {summary.get('job')} run")
            xs, ys = _series(rows, "test_accuracy_a", "test_accuracy_b")
            ax.plot(xs, ys, "-o", ms=2.5, lw=1.2, color=colors[i % len(colors)], label=label)
            best = summary.get("best") or {}
            if _finite(best.get("test_accuracy_a")):
                ax.plot([best["test_accuracy_a"]], [best["test_accuracy_b"]], "*", ms=12,
                        color=colors[i % len(colors)], markeredgecolor="black")
        ax.set_xlabel("task A test accuracy")
        ax.set_ylabel("task B test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    else:
        panels = path_panels([rows for _, _, rows in data], x)
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
        axes = axes[0]
        for i, (label, _summary, rows) in enumerate(data):
            c = colors[i % len(colors)]
            for key, style in _accuracy_keys(rows):
                xs, ys = _series(rows, x, key)
                suffix = {"test_accuracy_a": " · task A", "test_accuracy_b": " · task B"}.get(key, "")
                axes[0].plot(xs, ys, style, color=c, lw=1.3, label=label + suffix)
            for ax, (key, _) in zip(axes[1:], panels[1:]):
                xs, ys = _series(rows, x, key)
                if xs:
                    ax.plot(xs, ys, "-", color=c, lw=1.3, label=label)
        for ax, (_, name) in zip(axes, panels):
            ax.set_xlabel(x)
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from geopath.io.atomic import atomic_path

    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format=out.suffix.lower()[1:])
    plt.close(fig)
    return out
