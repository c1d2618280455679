"""Trace rows, made in one place: evaluate a network, save it through the run's writer, append its row.

The path engine (:func:`geopath.core.path.walk`), the peers (through :class:`PeerRecorder`) and
connect's landing segment all record through a :class:`Recorder`, so every row of every run has its
keys in this order (a peer's row has no engine state but ``landed_at``)::

    step, <extra>, t, distance, length, drift, sample_passes, epochs, <the job's evaluate(net)>,
    wall_time, <the engine's state: landed_at, ...>, <tags>, checkpoint

The writer is handed in (:class:`geopath.io.rundir.RunWriter`); nothing here opens a file.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from geopath.core.dataset import Dataset
from geopath.core.evaluate import recompute_batchnorm

if TYPE_CHECKING:
    from geopath.io.rundir import RunWriter


@dataclass(frozen=True)
class Recorder:
    """How a run records a network: ``writer`` saves it, ``evaluate(net) -> dict`` scores it (the job's
    columns), ``bn_data`` re-estimates BatchNorm statistics first (so the trace scores the function with
    fresh statistics), ``epoch_size`` turns sample passes into epochs, ``extra`` goes into every row
    (e.g. a chain's leg), ``on_row`` sees every row (progress, ``--json``)."""

    writer: RunWriter
    evaluate: Callable[[nn.Module], dict]
    epoch_size: int | None = None  # None: the walk sets it to its sources' inputs together
    on_row: Callable[[dict], None] | None = None
    bn_data: Dataset | None = None
    device: Any = "cpu"
    extra: dict = field(default_factory=dict)

    def replace(self, **changes) -> "Recorder":
        return dataclasses.replace(self, **changes)

    def __call__(self, step: int, net: nn.Module, path: Path | str, *, t: float, distance: float,
                 sample_passes: float, clock: Callable[[], float], length: float = math.nan,
                 drift: float = math.nan, state: dict | None = None, **tags) -> dict:
        """Record ``net`` as the network of ``step`` saved at ``path``; returns its trace row.

        ``clock()`` gives the row's wall time, read once the network is evaluated; ``state`` is the
        engine's resumable state (default: ``landed_at: None``, a peer's row); ``tags`` are extra columns of this row only (``alpha``, ``segment``)."""
        if self.bn_data is not None:
            recompute_batchnorm(net, self.bn_data, device=self.device)
        row = {
            "step": step,
            **self.extra,
            "t": t,
            "distance": distance,
            "length": length,
            "drift": drift,
            "sample_passes": float(sample_passes),
            "epochs": sample_passes / max(int(self.epoch_size or 1), 1),
            **self.evaluate(net),
            "wall_time": clock(),
            **(state if state is not None else {"landed_at": None}),
            **tags,
            "checkpoint": self.writer.save_network(Path(path), net, step),
        }
        self.writer.trace.append(row)
        if self.on_row:
            self.on_row(row)
        return row


class PeerRecorder:
    """The ``record`` callable a peer reports through: ``record(step, model, sample_passes, t=...,
    distance=..., final=False, name=None, **tags)``.

    It saves ``steps/step_NNNNN.safetensors`` (``name=``: ``steps/NAME.safetensors``; ``final=True``:
    ``final.safetensors``). Peers have no metric length or drift: both are NaN. Wall time runs from
    the recorder's creation, plus the ``already`` seconds the job spent on the peer's behalf before it.
    """

    def __init__(self, recorder: Recorder, already: float = 0.0):
        self.recorder = recorder
        self._tic = time.perf_counter() - already
        self.rows: list[dict] = []

    def __call__(self, step: int, model: nn.Module, sample_passes: float, t: float = math.nan,
                 distance: float = math.nan, final: bool = False, name: str | None = None, **tags) -> dict:
        writer = self.recorder.writer
        if final:
            path = writer.out / "final.safetensors"
        else:
            path = writer.out / "steps" / f"{name}.safetensors" if name else writer.step_path(step)
        row = self.recorder(step, model, path, t=t, distance=distance, sample_passes=sample_passes,
                            clock=lambda: time.perf_counter() - self._tic, **tags)
        self.rows.append(row)
        return row
