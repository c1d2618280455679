"""Run options: one frozen dataclass per job, filled from defaults < YAML < flags.

``--config run.yaml`` gives values, flags override them, and the fully resolved
options are written to ``OUT/config.yaml`` (so ``geopath sparsify --config
OUT/config.yaml`` repeats a run). Unknown keys and wrong types are usage errors.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError
from .geodesic import Anchor
from .metric import MetricKind
from .targets import MaskScope
from .trust_region import TRMethod


class MaskMode(str, Enum):
    """Whether the set of pruned weights may change along the path."""

    FIXED = "fixed"
    """Chosen once from the starting network's magnitudes."""
    DYNAMIC = "dynamic"
    """Re-chosen from the current magnitudes before every step."""


@dataclass(frozen=True)
class SparsifyConfig:
    checkpoint: str = ""
    out: str = ""
    arch: str | None = None
    arch_kwargs: dict | None = None
    trust_pickle: bool = False
    # data
    data: str | None = None  # metric inputs (train split); default: the checkpoint's data set
    eval_data: str | None = None  # labelled test split for accuracy; default: same data set
    data_root: str | None = None
    metric_size: int | None = None  # use only the first N metric inputs
    eval_size: int | None = None  # evaluate on the first N test samples
    train_eval_size: int = 5000  # train accuracy on the first N metric inputs (0: off)
    # target
    sparsity: float = 0.7
    scope: MaskScope = MaskScope.GLOBAL
    mask: MaskMode = MaskMode.FIXED
    layers: list | None = None  # parameter names to prune (default: all Linear/Conv weights)
    structured: str | None = None  # "LAYER:COUNT,..." removes whole filters/neurons instead
    # step
    beta: float = 1.0
    step_size: float | None = None  # ε bound on θᵀθ; default (4·d0/steps)²
    steps: int = 50  # planned approach steps (sets the default step size)
    max_steps: int | None = None  # approach steps at most (default 3·steps)
    settle_steps: int = 150
    tol: float = 0.03
    cg_iters: int = 5
    cg_rtol: float = 1e-4
    damping: float = 0.0
    metric: MetricKind = MetricKind.LOGITS
    method: TRMethod = TRMethod.STEIHAUG
    anchor: Anchor = Anchor.START
    batch_size: int = 128
    micro_batch: int | None = None
    # run
    save_every: int = 10
    seed: int = 0
    device: str = "cpu"
    min_accuracy: float | None = None

    def validate(self) -> "SparsifyConfig":
        if not self.checkpoint:
            raise UsageError("a checkpoint is required")
        if not self.out:
            raise UsageError("an output directory is required (-o/--out)")
        if not 0.0 <= self.sparsity < 1.0:
            raise UsageError(f"--sparsity must be in [0, 1), got {self.sparsity}")
        if self.step_size is not None and not self.step_size > 0:
            raise UsageError(f"--step-size must be > 0, got {self.step_size}")
        for name in ("steps", "cg_iters", "batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        for name in ("settle_steps", "train_eval_size"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be ≥ 0")
        for name in ("max_steps", "micro_batch", "metric_size", "eval_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be ≥ 1, got {v}")
        if not self.beta > 0:
            raise UsageError(f"--beta must be > 0, got {self.beta}")
        if self.damping < 0 or not 0 < self.tol < 1:
            raise UsageError("--damping must be ≥ 0 and --tol in (0, 1)")
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:
            raise UsageError(f"--min-accuracy must be in [0, 1], got {self.min_accuracy}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UsageError(f"--device must be cpu or cuda, got {self.device!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.value if isinstance(v, Enum) else v
        return out


def _coerce(cls, name: str, tp, value):
    """Convert a YAML/flag value to the field's type, or raise a one-line usage error."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return _coerce(cls, name, args[0], value)
    try:
        if isinstance(tp, type) and issubclass(tp, Enum):
            return tp(value.value if isinstance(value, Enum) else value)
        if tp is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
        if tp is dict or origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return value
        if tp is list or origin is list:
            return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    except ValueError:
        pass
    choices = ""
    if isinstance(tp, type) and issubclass(tp, Enum):
        choices = " (one of " + ", ".join(m.value for m in tp) + ")"
    raise UsageError(f"option {name!r}: invalid value {value!r}{choices}")


def read_yaml(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a config file must be a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve(cls, yaml_values: dict[str, Any], flags: dict[str, Any]):
    """defaults < YAML < flags (flags that are ``None`` were not given)."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(yaml_values) - set(known))
    if unknown:
        raise UsageError(f"unknown option(s) in config file: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    merged = {**yaml_values, **{k: v for k, v in flags.items() if v is not None}}
    values = {k: _coerce(cls, k, hints[k], v) for k, v in merged.items()}
    return dataclasses.replace(cls(), **values).validate()
