"""What `geopath export` buys: parameters, MACs and CPU latency before and after physical removal.

    python bench/export_sizes.py [--data-root ../shared/data]

Two structured removals: 12 of the 16 layer-1 filters of the shipped CIFAR-10 VGG11 (width 0.25),
the issue's filter removal; and half the stem channels of a torchvision ResNet-18 (32 of 64, which
the residual stream of layer1 shares) plus half of layer2.0.conv1 (64 of 128). Each runs a short
structured sparsify (the units are zeroed on the way; sizes and latency do not depend on how long
the path trained), then `geopath export`, which checks the compact network's outputs against the
zeroed one's. Writes docs/bench_export.{json,md}; prints a one-line summary; exits 3 if a compact
network is not smaller or its outputs differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import ROOT, add_common_args, machine  # noqa: E402 (bench/ is on sys.path when run as a script)
from geopath.config import SparsifyConfig, resolve  # noqa: E402
from geopath.io.archs import build_model  # noqa: E402
from geopath.io.checkpoint import save_checkpoint  # noqa: E402
from geopath.jobs.export import export  # noqa: E402
from geopath.jobs.sparsify import run_sparsify  # noqa: E402

SHORT = {"steps": 2, "max_steps": 2, "settle_steps": 1, "settle": "geodesic", "batch_size": 32, "metric_size": 512,
         "eval_size": 512, "bn_samples": 256, "cg_iters": 2, "train_eval_size": 0, "save_every": 10}


def case(name, checkpoint, structured, work, data_root):
    out = work / name
    cfg = resolve(SparsifyConfig, {}, {"checkpoint": str(checkpoint), "out": str(out), "structured": structured,
                                        "data_root": data_root, **SHORT})
    run_sparsify(cfg, overwrite=True)
    report = export(out, work / f"{name}_small.safetensors", data_root=data_root, overwrite=True)
    return {"case": name, "structured": structured, **report}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, quick=False)
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        resnet = work / "resnet18.safetensors"
        save_checkpoint(resnet, build_model("torchvision:resnet18", {"num_classes": 10}), "torchvision:resnet18",
                        {"num_classes": 10}, extra={"data": "cifar10"})
        results = [case("vgg11_filters", ROOT / "sample_checkpoints" / "vgg11w025_cifar10.safetensors",
                        "features.0:12", work, args.data_root),
                   case("resnet18_stem", resnet, "conv1:32,layer2.0.conv1:64", work, args.data_root)]
    ok = all(r["after"]["parameters"] < r["before"]["parameters"] and r["max_output_difference"] <= 1e-4
             for r in results)
    docs = Path(args.docs)
    (docs / "bench_export.json").write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    lines = ["# geopath export: the compact network", "",
             "`python bench/export_sizes.py` (" + machine() + "). Latency: one batch of 64 test images, one CPU "
             "thread, median of 20; the ratio is measured in the same run.", "",
             "| case | removed | parameters | MACs / sample | CPU latency (ms) | max output difference |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results:
        b, a = r["before"], r["after"]
        removed = ", ".join(f"{k}: {v}" for k, v in r["removed"].items())
        lines.append(f"| {r['case']} | {removed} | {b['parameters']:,} → {a['parameters']:,} "
                     f"({a['parameters'] / b['parameters']:.1%}) | {b['macs'] / 1e6:.1f} M → {a['macs'] / 1e6:.1f} M "
                     f"({a['macs'] / b['macs']:.1%}) | {b['latency_ms']:.1f} → {a['latency_ms']:.1f} "
                     f"({a['latency_ms'] / b['latency_ms']:.2f}×) | {r['max_output_difference']:.1e} |")
    lines += ["", "Removing a ResNet's stem channels removes them from the whole residual stream of layer1 "
              "(every block's last conv and BatchNorm) and from the input channels of layer1's and layer2's "
              "first convs and the downsample branch: the dependency graph finds them (core/coupling.py)."]
    (docs / "bench_export.md").write_text("\n".join(lines) + "\n")
    summary = "; ".join(f"{r['case']}: params {r['ratios']['parameters']:.1%}, MACs {r['ratios']['macs']:.1%}, "
                        f"latency {r['ratios']['latency_ms']:.2f}×" for r in results)
    print(f"export_sizes: {summary}; outputs equal: {ok}")
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
