"""Peer methods: what a user would otherwise pick, on the same data and budget as a path.

One module per family: :mod:`~geopath.peers.pruning`, :mod:`~geopath.peers.averaging`,
:mod:`~geopath.peers.ewc`, :mod:`~geopath.peers.bezier`; every function is also importable from here.

Each peer reports through a ``record(step, model, sample_passes, t=..., ...)``
callable (:class:`geopath.jobs.common.Recorder`), so its run directory has the same
checkpoints and trace format as a geodesic run and the two compare row for row.
Budgets are forward+backward *sample passes* (docs/method.md).

sparsify
    :func:`prune_finetune` — one-shot magnitude pruning, then masked SGD;
    :func:`iterative_prune` — prune a little, fine-tune, repeat (iterative prune-and-retrain).
merge
    :func:`interpolate` (weight averaging over α); :func:`fisher_merge` — Fisher-weighted
    averaging (Matena & Raffel, 2022); :func:`ewc` — elastic weight consolidation
    (Kirkpatrick et al., 2017): train A on task B with ``½λ Σ F_A (w − w_A)²``.
connect
    :func:`interpolate` (linear path); :func:`bezier` — a quadratic Bezier curve
    whose middle point is trained (Garipov et al., 2018).
"""

from geopath.peers.averaging import fisher_diag, fisher_merge, interpolate
from geopath.peers.bezier import bezier, bezier_point
from geopath.peers.ewc import ewc
from geopath.peers.pruning import iterative_prune, prune_finetune

__all__ = ["bezier", "bezier_point", "ewc", "fisher_diag", "fisher_merge", "interpolate", "iterative_prune",
           "prune_finetune"]
