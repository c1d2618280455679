"""``--normalize`` and ``--image-size``: how stored pixels become a network's inputs (torch-free, so options
validate fast).

A run states the preprocessing it applied (``M,M/S,S`` per channel, ``none`` or ``as stored``) in its
``config.yaml`` and in every network it saves (metadata ``geopath.preprocess``); a later command on
that network takes it from there unless ``--normalize`` says otherwise.
"""

from __future__ import annotations

import math

from geopath.errors import DataError

PREPROCESS_HELP = ("How stored pixels become inputs: 'dataset' (x/255, then the named set's mean and std; "
                   "0.5/0.5 for other images), 'none' (x/255 only, like torchvision's ToTensor), or MEAN/STD per "
                   "channel, e.g. 0.1307/0.3081 or 0.49,0.48,0.45/0.25,0.24,0.26. Float and integer .npz arrays "
                   "are used as stored.")


def parse_preprocess(text: str | None) -> str | None:
    """``--normalize``'s value in its canonical form (``dataset``, ``none`` or ``M,M/S,S``), or a usage error."""
    if text is None:
        return None
    t = str(text).strip().lower()
    if t in ("dataset", "none", "as stored"):  # "as stored": recorded for float or integer arrays
        return t
    mean, sep, std = t.partition("/")
    try:
        m = [float(v) for v in mean.split(",")]
        sd = [float(v) for v in std.split(",")]
    except ValueError:
        m, sd = [], []
    if (not sep or not m or len(m) != len(sd) or not all(math.isfinite(v) for v in m + sd)
            or not all(v > 0 for v in sd)):
        raise DataError(f"--normalize {text!r}: expected dataset, none or MEAN/STD per channel "
                        "(e.g. 0.1307/0.3081 or 0.49,0.48,0.45/0.25,0.24,0.26; finite, each std > 0)")
    return ",".join(f"{v:g}" for v in m) + "/" + ",".join(f"{v:g}" for v in sd)


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """``--image-size`` ``S`` or ``H,W`` → (H, W); None stays None."""
    if text is None or str(text).strip() == "":
        return None
    try:
        parts = [int(v) for v in str(text).replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise DataError(f"--image-size {text!r}: expected S or H,W in pixels (e.g. 32 or 28,28)")
    return (parts[0], parts[-1])
