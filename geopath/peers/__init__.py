"""Peer methods: what a user would otherwise pick, on the same data and budget as a path.

One module per family: :mod:`~geopath.peers.pruning`, :mod:`~geopath.peers.averaging`,
:mod:`~geopath.peers.consolidation` (EWC), :mod:`~geopath.peers.curves` (Bezier); every function
is also importable from here.

Every peer is declared in :mod:`~geopath.peers.registry` (torch-free: its job, ``--method`` name,
options and runner); the functions below are imported on first use, so reading the registry does
not import torch.

Each peer reports through a ``record(step, model, sample_passes, t=..., ...)``
callable (:class:`geopath.core.record.PeerRecorder`), so its run directory has the same
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

import importlib

_HOME = {"fisher_diag": "averaging", "fisher_merge": "averaging", "interpolate": "averaging", "bezier": "curves",
         "bezier_point": "curves", "ewc": "consolidation", "iterative_prune": "pruning", "prune_finetune": "pruning"}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"geopath.peers.{_HOME[name]}"), name)
    raise AttributeError(f"module 'geopath.peers' has no attribute {name!r}")
