"""The same network and metadata give the same checkpoint bytes in every process (io/checkpoint.py).

safetensors writes its JSON header from a Rust ``HashMap``, in an order that changes from process to process: two
identical runs wrote files with equal tensors and different sha256 (in ``manifest.json`` and every child's
``geopath.parent_sha256``). ``save_checkpoint`` rewrites the header with its keys sorted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from torch import nn

from geopath import __version__
from geopath.io.checkpoint import _canonical_header, read_tensors, save_checkpoint

from .._helpers import ROOT

# metadata with many keys, as a run's networks carry (13 with save_checkpoint's own): without the rewrite, two processes
# wrote them in the same order about once in 13! ≈ 6e9; a non-ASCII key and value check the escaping
EXTRA = {"data": "mnist", "preprocess": "dataset:mnist", "input_shape": [1, 28, 28], "input_dtype": "float32",
         "classes": ["zero", "one"], "sparsity": "0.5", "note_é": "ü"}
WRITE = """
import sys, torch
from torch import nn
from geopath.io.checkpoint import save_checkpoint
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
save_checkpoint(sys.argv[1], net, "mlp", {"hidden": [4], "width": 6}, step=3, parent_sha256="ab" * 32,
                extra=%r)
""" % (EXTRA,)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _header(path) -> tuple[int, bytes]:
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return size, data[8:8 + size]


def test_separate_processes_write_the_same_bytes(tmp_path):
    paths = [tmp_path / f"net{seed}.safetensors" for seed in range(3)]
    for seed, path in enumerate(paths):
        env = {**os.environ, "PYTHONHASHSEED": str(seed), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", WRITE, str(path)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    first = paths[0].read_bytes()
    for path in paths[1:]:
        assert path.read_bytes() == first, (_header(paths[0])[1], _header(path)[1])


def test_the_file_reads_back_as_written(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = tmp_path / "net.safetensors"
    net = _net()
    save_checkpoint(path, net, "mlp", {"width": 6}, step=3, parent_sha256="ab" * 32, extra=EXTRA)
    size, header = _header(path)
    assert size % 8 == 0 and header.rstrip(b" ").endswith(b"}")  # (padded with spaces to a multiple of 8)
    parsed = json.loads(header)
    assert list(parsed) == sorted(parsed) and list(parsed["__metadata__"]) == sorted(parsed["__metadata__"])

    expected = {k: v.detach() for k, v in net.state_dict().items()}
    meta = {"geopath.arch": "mlp", "geopath.arch_kwargs": '{"width": 6}', "geopath.step": "3",
            "geopath.parent_sha256": "ab" * 32, "geopath.format": "1", "geopath.version": __version__,
            **{"geopath." + k: v if isinstance(v, str) else json.dumps(v) for k, v in EXTRA.items()}}
    with safe_open(str(path), framework="pt") as f:
        got_meta = dict(f.metadata())
        got = {k: f.get_tensor(k) for k in f.keys()}
    tensors, geopath_meta = read_tensors(path)  # geopath's own reader
    for loaded in (got, load_file(str(path)), tensors):
        assert set(loaded) == set(expected)
        for k, v in expected.items():
            assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    for m in (got_meta, geopath_meta):
        assert m == meta


def test_a_header_in_any_order_or_spacing_is_rewritten_alike(tmp_path):
    """Whatever order (or spacing) the header came in, the bytes after the rewrite are the same; a header of
    another length moves the data section behind it, unchanged."""
    path = tmp_path / "net.safetensors"
    save_checkpoint(path, _net(), "mlp", {}, extra=EXTRA)
    canonical = path.read_bytes()
    size, header = _header(path)
    parsed = json.loads(header)
    shuffled = {k: ({m: parsed[k][m] for m in reversed(parsed[k])}) for k in reversed(parsed)}
    for text in (json.dumps(shuffled, separators=(",", ":"), ensure_ascii=False),  # (the same length)
                 json.dumps(shuffled, indent=1)):  # (longer)
        raw = text.encode()
        raw += b" " * (-len(raw) % 8)
        other = tmp_path / "other.safetensors"
        other.write_bytes(len(raw).to_bytes(8, "little") + raw + canonical[8 + size:])
        assert read_tensors(other)[1] == read_tensors(path)[1]  # (a valid file to begin with)
        assert other.read_bytes() != canonical
        _canonical_header(other)
        assert other.read_bytes() == canonical
