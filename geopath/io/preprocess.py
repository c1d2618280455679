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
                   "0.5/0.5 for other images; 'dataset:mnist': MNIST's for them), 'none' (x/255 only, like "
                   "torchvision's ToTensor), or MEAN/STD per "
                   "channel, e.g. 0.1307/0.3081 or 0.49,0.48,0.45/0.25,0.24,0.26. Float and integer .npz arrays "
                   "are used as stored.")


DATASET_OF = "dataset:"  # dataset:NAME


def parse_preprocess(text: str | None) -> str | None:
    """``--normalize``'s value in its canonical form (``dataset``, ``dataset:NAME``, ``none`` or ``M,M/S,S``), or a
    usage error. ``dataset:NAME`` is ``dataset`` for a set with statistics of its own (a named set) and NAME's
    statistics for uint8 images without any (an ``.npz`` file, an image folder): how a network trained on named set
    NAME reads other data."""
    if text is None:
        return None
    t = str(text).strip().lower()
    if t in ("dataset", "none", "as stored"):  # "as stored": recorded for float or integer arrays
        return t
    if t.startswith(DATASET_OF):  # the data set's own default; data without one read as NAME was
        if not t[len(DATASET_OF):].replace("-", "").replace("_", "").isalnum():
            raise DataError(f"--normalize {text!r}: expected dataset:NAME with a named data set (e.g. dataset:mnist)")
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
