"""What the bench scripts share: the repository root, the machine line and the usual options."""

from __future__ import annotations

import argparse
import platform
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# torch's own deprecation notices (torch.jit.script, reached through a dependency) are not ours to
# fix and drown the scripts' one-line results; the CLI filters them the same way (geopath/cli.py)
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")


def machine(device: str | None = None) -> str:
    """One line naming the processor, threads and torch (and the device, when one is named)."""
    line = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if device:
        line += f", device {device}"
        if device.startswith("cuda"):
            line += f" ({torch.cuda.get_device_name()})"
    return line


def docs_dir(path: str) -> str:
    """``--docs``: the folder, made when missing (a long run must not fail at its last write)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def add_common_args(ap: argparse.ArgumentParser, work: str | None = None, quick: bool = True) -> None:
    """``--data-root``, ``--docs``, optionally ``--work bench/_work/WORK`` and ``--quick``."""
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--docs", default=str(ROOT / "docs"), type=docs_dir,
                    help="where the tables go (made when missing, before the run: never a result lost at the end)")
    if work:
        ap.add_argument("--work", default=str(ROOT / "bench" / "_work" / work))
    if quick:
        ap.add_argument("--quick", action="store_true", help="slices of the data (a smoke test, not a result)")
