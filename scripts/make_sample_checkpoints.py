"""Re-create the networks in sample_checkpoints/ from ../shared/data (CPU, a few minutes).

    python scripts/make_sample_checkpoints.py [--data-root ../shared/data] [--epochs 8]

Each is an MLP 784-300-100-10 trained on the full training split with SGD
(momentum 0.9, cosine decay, batch 128) and saved as self-describing safetensors
with its test accuracy in the metadata. ``mlp_mnist`` and ``mlp_fashion_mnist``
share their initialisation (seed 0); ``mlp_mnist_seed1`` is an independently
initialised second MNIST network (seed 1), for ``geopath connect``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from geopath.io.archs import build_model
from geopath.io.checkpoint import save_checkpoint
from geopath.io.data import load_dataset
from geopath.core.evaluate import evaluate
from geopath.core.train import train

SAMPLES = {"mlp_mnist": ("mnist", 0), "mlp_fashion_mnist": ("fashion-mnist", 0), "mlp_mnist_seed1": ("mnist", 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--epochs", type=float, default=8)
    ap.add_argument("--out", default="sample_checkpoints")
    ap.add_argument("--only", choices=sorted(SAMPLES), default=None)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for stem, (data, seed) in SAMPLES.items():
        if args.only and stem != args.only:
            continue
        torch.manual_seed(seed)
        model = build_model("mlp", {})
        tr = load_dataset(data, "train", args.data_root)
        te = load_dataset(data, "test", args.data_root)
        stats = train(model, tr, epochs=args.epochs, batch_size=128, lr=0.05, seed=seed)
        ev = evaluate(model, te)
        path = Path(args.out) / f"{stem}.safetensors"
        save_checkpoint(path, model, "mlp", {}, step=0, extra={
            "data": data, "test_accuracy": f"{ev.accuracy:.4f}", "train_epochs": str(args.epochs),
            "seed": str(seed)})
        print(json.dumps({"file": str(path), "data": data, "test_accuracy": ev.accuracy,
                          "sample_passes": stats.sample_passes}))


if __name__ == "__main__":
    main()
