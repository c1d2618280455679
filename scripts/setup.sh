#!/usr/bin/env bash
# Create .venv and install geopath with its test and plot extras (idempotent, ~1-2 min the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  # torch/torchvision pair known to import together on CPU (a CUDA build that also runs on the CPU)
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
fi
.venv/bin/pip install -q -e ".[test,plot]"
