"""Fuzzing the readers of untrusted input: checkpoints, config files, plans.

Property: whatever the bytes or values, a reader returns a result or raises the
documented one-line error type (:class:`~geopath.errors.UsageError` and its
subclasses) — never another exception, never a hang. The example counts here keep
CI short; ``python bench/fuzz_readers.py`` runs many more and writes the counts to
docs/fuzz.md.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geopath.io.archs import MLP
from geopath.io.checkpoint import load_checkpoint, read_tensors, save_checkpoint
from geopath.config import ConnectConfig, MergeConfig, SparsifyConfig, TransitionConfig, read_yaml, resolve
from geopath.errors import UsageError
from geopath.jobs.transition import parse_plan

EXAMPLES = int(os.environ.get("GEOPATH_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                             HealthCheck.too_slow])
TRIED: Counter = Counter()  # inputs tried per reader (written to $GEOPATH_FUZZ_REPORT if set)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("GEOPATH_FUZZ_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(dict(TRIED), f, indent=2)


def tiny_checkpoint_bytes() -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.safetensors"
        torch.manual_seed(0)
        save_checkpoint(path, MLP(in_features=4, hidden=(3,), num_classes=2), "mlp",
                        {"in_features": 4, "hidden": [3], "num_classes": 2}, step=0)
        return path.read_bytes()


VALID = tiny_checkpoint_bytes()
HEADER_LEN = struct.unpack("<Q", VALID[:8])[0]


@st.composite
def mutated_safetensors(draw) -> bytes:
    """A valid small checkpoint, broken in one of the ways files break."""
    data = bytearray(VALID)
    kind = draw(st.sampled_from(["flip", "truncate", "header", "length", "splice"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "header":  # a different JSON header, keeping the data
        header = draw(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                   lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                       max_size=4), max_leaves=12))
        raw = json.dumps(header).encode()
        data = bytearray(struct.pack("<Q", len(raw)) + raw + bytes(data[8 + HEADER_LEN:]))
    elif kind == "length":  # a lying header length
        data[:8] = struct.pack("<Q", draw(st.integers(0, 2 ** 63 - 1)))
    else:  # random bytes inside the header
        i = draw(st.integers(8, 8 + HEADER_LEN - 1))
        data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def _read(path):
    TRIED["safetensors checkpoints"] += 1
    try:
        read_tensors(path)
        load_checkpoint(path)
    except UsageError:
        pass


@FUZZ
@given(data=mutated_safetensors())
def test_safetensors_reader_never_crashes(tmp_path, data):
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    _read(path)


@FUZZ
@given(data=st.binary(max_size=2048))
def test_safetensors_reader_random_bytes(tmp_path, data):
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    _read(path)


def _torch_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save(MLP(in_features=4, hidden=(3,), num_classes=2).state_dict(), buf)
    return buf.getvalue()


TORCH_VALID = _torch_bytes()


@FUZZ
@given(cut=st.integers(0, len(TORCH_VALID) - 1), flips=st.lists(st.integers(0, len(TORCH_VALID) - 1), max_size=6),
       junk=st.binary(max_size=64))
def test_torch_reader_never_crashes(tmp_path, cut, flips, junk):
    data = bytearray(TORCH_VALID)
    for i in flips:
        data[i] ^= 0x5A
    path = tmp_path / "x.pt"
    path.write_bytes(bytes(data[:cut]) + junk if cut % 2 else bytes(data))
    TRIED[".pt checkpoints"] += 1
    try:
        read_tensors(path)
    except UsageError:
        pass


VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10 ** 6, 10 ** 20)
                      | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
                      lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=6)


@pytest.mark.parametrize("cls", [SparsifyConfig, MergeConfig, ConnectConfig, TransitionConfig],
                         ids=lambda c: c.__name__)
def test_config_resolution_never_crashes(cls):
    names = [f.name for f in __import__("dataclasses").fields(cls)]

    @FUZZ
    @given(values=st.dictionaries(st.sampled_from(names) | st.text(max_size=8), VALUES, max_size=8),
           complete=st.booleans())
    def check(values, complete):
        if complete:  # reach the checks behind the required options
            values = {"checkpoint": "a.safetensors", "checkpoint_b": "b.safetensors", "out": "o", "plan": [],
                      **values}
            values = {k: v for k, v in values.items() if k in names or not complete}
        TRIED["config values"] += 1
        try:
            resolve(cls, values, {})
        except UsageError:
            pass

    check()


@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_yaml_reader_never_crashes(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    TRIED["YAML config files"] += 1
    try:
        values = read_yaml(path)
        resolve(SparsifyConfig, values, {})
    except UsageError:
        pass


@FUZZ
@given(plan=VALUES | st.lists(st.dictionaries(st.sampled_from(["name", "remove", "restore", "sparsity", "steps",
                                                                "settle_steps", "beta", "bogus"]), VALUES, max_size=4),
                               max_size=4))
def test_plan_parser_never_crashes(plan):
    TRIED["transition plans"] += 1
    try:
        legs = parse_plan(plan)
    except UsageError:
        return
    assert legs and all(leg.remove or leg.restore or leg.sparsity is not None for leg in legs)
