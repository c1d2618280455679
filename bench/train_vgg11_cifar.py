"""Train the CIFAR-10 networks the reproduction figures and the suite start from (VGG11, ResNet-20).

    python bench/train_vgg11_cifar.py [--arch vgg11|resnet20] [--width 0.25] [--hidden N N] [--epochs 45] [--seed 0]
                                      [--out PATH]

``--arch resnet20`` trains the built-in ResNet-20 (full width, 0.27 M parameters) the same way,
written to ``bench/_work/nets/resnet20_cifar10[_seedN].safetensors`` (not shipped). ``--hidden 1024 1024``
gives the VGG11 the original VGG's fully connected classifier layers (scaled: 4096 × 0.25), as the
transitions reproduction needs (``bench/transitions_vgg.py``); written to
``bench/_work/nets/vgg11w025fc_cifar10[_seedN].safetensors`` (not shipped).

Runs ``geopath train`` on the 20,000 CIFAR-10 training images of ``../shared/data``
(SGD, momentum 0.9, lr 0.05 with cosine decay, weight decay 5e-4, batch 128, no augmentation)
and scores the network on the full 10,000-image test set. The default width 0.25 (VGG11 with
every layer's channels quartered: 16 filters in layer 1, 0.58 M parameters, 2.3 MB) trains for
45 epochs (about 10 minutes on 2 CPU cores; 15 epochs took 186 s) and is shipped as
``sample_checkpoints/vgg11w025_cifar10.safetensors``; ``--width 1`` is the paper's VGG11 (64
layer-1 filters, 9.2 M parameters, about 16x the time). Prints one JSON line and exits 3 when the
test accuracy is below ``--min-accuracy`` (default 0.70).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def default_out(width: float, seed: int, arch: str = "vgg11", hidden: list[int] | None = None) -> Path:
    suffix = f"_cifar10{'' if seed == 0 else f'_seed{seed}'}.safetensors"
    if arch != "vgg11":
        return ROOT / "bench" / "_work" / "nets" / f"{arch}{suffix}"
    tag = "" if width == 1 else f"w{str(width).replace('0.', '0')}"
    if hidden:
        return ROOT / "bench" / "_work" / "nets" / f"vgg11{tag}fc{suffix}"
    return ROOT / "sample_checkpoints" / f"vgg11{tag}_cifar10{'' if seed == 0 else f'_seed{seed}'}.safetensors"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["vgg11", "resnet20"], default="vgg11")
    ap.add_argument("--width", type=float, default=None, help="default: 0.25 for vgg11, 1 for resnet20")
    ap.add_argument("--hidden", type=int, nargs="+", default=None, help="vgg11: fully connected hidden layers")
    ap.add_argument("--epochs", type=float, default=45.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--min-accuracy", type=float, default=0.70)
    args = ap.parse_args()
    if args.width is None:
        args.width = 0.25 if args.arch == "vgg11" else 1.0
    if args.hidden and args.arch != "vgg11":
        ap.error("--hidden is a vgg11 option")
    out = Path(args.out) if args.out else default_out(args.width, args.seed, args.arch, args.hidden)
    kwargs = {"width": args.width, **({"hidden": args.hidden} if args.hidden else {})}
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "geopath", "train", "-o", str(out), "--arch", args.arch,
           "--arch-kwargs", json.dumps(kwargs), "--data", "cifar10", "--data-root", args.data_root,
           "--epochs", f"{args.epochs:g}", "--lr", "0.05", "--weight-decay", "5e-4", "--batch-size", "128",
           "--seed", str(args.seed), "--device", args.device, "--overwrite", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return proc.returncode
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    acc = result.get("test_accuracy")
    ok = acc is not None and acc >= args.min_accuracy
    print(json.dumps({"bench": "train_vgg11_cifar", "arch": args.arch, "out": str(out), "width": args.width, "hidden": args.hidden, "epochs": args.epochs,
                      "test_accuracy": acc, "seconds": round(time.perf_counter() - t0),
                      "result": "PASS" if ok else f"MISS (< {args.min_accuracy})"}))
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
