"""Which metric product ``--jvp auto`` takes on networks beyond bench/metric_speed.py's four, and whether it is the
fastest.

    python bench/jvp_auto.py [--batch 64] [--repeats 9] [--models resnet18,vit,...]

For each network, on one batch of random inputs of its data set's shape, in the same run: one forward+backward
pass (the baseline), and one cached metric product ``g·u`` with ``J u`` by forward mode, by the transposed VJP
(reverse) and by each layer's own rule (layerwise, where the network has a plan), each a multiple of the
baseline (median of ``--repeats`` after two warm-ups). ``auto`` is the product ``--jvp auto`` resolves to on this
device. Every product is checked against forward mode (the run stops above a relative 1e-4).

Writes docs/jvp_auto.{json,md}; prints a one-line summary; exits 3 when ``auto`` takes a product more than 10 %
slower than the fastest of the three on some network.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from _common import ROOT, docs_dir, machine  # noqa: E402 (bench/ is on sys.path when run as a script)

sys.path.insert(0, str(ROOT))

from geopath.core.metric import MetricOperator, metric_mode  # noqa: E402
from geopath.core.params import ParamSpace, model_vector  # noqa: E402
from geopath.io.archs import build_model  # noqa: E402

MODES = ("forward", "reverse", "layerwise")
SLACK = 1.10  # auto's product may be this much slower than the fastest before the bench calls it a miss
AGREE = 1e-4


class Tokens(nn.Module):
    """Integer tokens → embedding (+ a position parameter) → one ``nn.TransformerEncoderLayer`` → mean → classes."""

    def __init__(self, vocab: int = 64, dim: int = 64, length: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, length, dim) / 8)
        self.encoder = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, 10)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens) + self.pos).mean(1))


def _vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                             num_classes=10)


# name: (factory, per-sample input shape, integer inputs)
MODELS = {
    "mlp": (lambda: build_model("mlp"), (1, 28, 28)),
    "resnet20": (lambda: build_model("resnet20"), (3, 32, 32)),
    "resnet18": (lambda: build_model("torchvision:resnet18", {"num_classes": 10}), (3, 32, 32)),
    "mobilenet_v3_small": (lambda: build_model("torchvision:mobilenet_v3_small", {"num_classes": 10}), (3, 32, 32)),
    "shufflenet_v2_x0_5": (lambda: build_model("torchvision:shufflenet_v2_x0_5", {"num_classes": 10}), (3, 32, 32)),
    "efficientnet_b0": (lambda: build_model("torchvision:efficientnet_b0", {"num_classes": 10}), (3, 32, 32)),
    "densenet121": (lambda: build_model("torchvision:densenet121", {"num_classes": 10}), (3, 32, 32)),
    "vit_tiny": (_vit, (3, 32, 32)),  # torchvision's VisionTransformer, 2 layers of width 64
    "token_transformer": (Tokens, (16,)),
}


def _median_seconds(f, repeats: int) -> float:
    for _ in range(2):
        f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, batch: int, repeats: int) -> dict:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    tokens = len(shape) == 1
    x = torch.randint(0, 64, (batch, *shape)) if tokens else torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    u = torch.randn(space.n, generator=torch.Generator().manual_seed(1))

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    with metric_mode(model, "batch"):  # (the function the products differentiate: BatchNorm on batch statistics)
        base = _median_seconds(fwd_bwd, repeats)
    row = {"model": name, "parameters": space.n, "batch": batch, "fwd+bwd s": base, "ratio": {}, "agreement": {}}
    reference = MetricOperator(model, space, w, x, jvp_mode="forward").matvec(u)
    scale = float(reference.abs().max())
    for mode in MODES:
        G = MetricOperator(model, space, w, x, jvp_mode=mode)
        if G.jvp_mode.value != mode:  # (no plan: layerwise fell back)
            continue
        row["agreement"][mode] = float((G.matvec(u) - reference).abs().max()) / scale
        if not row["agreement"][mode] <= AGREE:
            raise SystemExit(f"jvp_auto: {name}: {mode} disagrees with forward mode ({row['agreement'][mode]:.1e})")
        row["ratio"][mode] = _median_seconds(lambda: G.matvec(u), repeats) / base
    row["auto"] = MetricOperator(model, space, w, x, jvp_mode="auto").jvp_mode.value
    row["fastest"] = min(row["ratio"], key=row["ratio"].get)
    row["ok"] = row["ratio"][row["auto"]] <= SLACK * row["ratio"][row["fastest"]]
    return row


def write_md(path: Path, host: str, rows: list[dict], args, summary: str) -> None:
    lines = ["# Which product `--jvp auto` takes", "",
             f"Produced by `python bench/jvp_auto.py --batch {args.batch} --repeats {args.repeats}` on {host}: one "
             "cached metric product `g·u` per `J u` mode, as a multiple of one forward+backward pass on the same batch "
             f"of random inputs, in the same run (median of {args.repeats} after two warm-ups; the machine is shared, "
             "so differences under ~10 % are noise). *auto* is what `--jvp auto` resolves to here: on the CPU each "
             "layer's own rule where every layer with parameters has one, else torch.func's reverse mode (forward "
             "mode with BatchNorm). The four networks of issue 21 are in [performance.md](performance.md).", "",
             "| network | parameters | fwd+bwd | forward | reverse | layerwise | auto | fastest |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        cells = [f"{r['ratio'][m]:.2f}×" if m in r["ratio"] else "no plan" for m in MODES]
        lines.append(f"| {r['model']} | {r['parameters']:,} | {1000 * r['fwd+bwd s']:.1f} ms | " + " | ".join(cells)
                     + f" | {r['auto']}{'' if r['ok'] else ' (**slower**)'} | {r['fastest']} |")
    lines += ["", summary, ""]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: " + ", ".join(MODELS))
    ap.add_argument("--docs", default=str(ROOT / "docs"), type=docs_dir)
    args = ap.parse_args()
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown models: {', '.join(unknown)}")
    rows = []
    for name in names:
        rows.append(measure(name, args.batch, args.repeats))
        print(json.dumps({k: rows[-1][k] for k in ("model", "auto", "fastest")}
                         | {m: round(r, 2) for m, r in rows[-1]["ratio"].items()}), flush=True)
    misses = [r["model"] for r in rows if not r["ok"]]
    summary = (f"jvp_auto: auto took the fastest product (within {SLACK - 1:.0%}) on {len(rows) - len(misses)} of "
               f"{len(rows)} networks" + (f"; slower on {', '.join(misses)}" if misses else "")
               + f" {'MISS' if misses else 'PASS'}")
    host = machine()
    docs = Path(args.docs)
    (docs / "jvp_auto.json").write_text(json.dumps({"machine": host, "results": rows}, indent=2) + "\n")
    write_md(docs / "jvp_auto.md", host, rows, args, summary)
    print(summary)
    return 3 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
