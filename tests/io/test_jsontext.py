"""Every JSON geopath writes is strict JSON: a missing number is null, never NaN."""

from __future__ import annotations

import json
import math

import pytest

from geopath.io.jsontext import dumps, finite

from .._helpers import FAST, SAMPLE, geopath, needs_mnist


def _strict(text: str):
    """Parse as a strict parser (JavaScript's, Go's) would: NaN and Infinity are errors."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_become_null_at_any_depth():
    obj = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": (2, math.nan), "e": "NaN", "f": 0.5}
    assert finite(obj) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, None], "e": "NaN", "f": 0.5}
    assert _strict(dumps(obj)) == finite(obj)
    assert json.loads(dumps({"path": __import__("pathlib").Path("x/y")})) == {"path": "x/y"}


@needs_mnist
def test_json_output_and_summary_are_strict_json(tmp_path):
    out = tmp_path / "out"
    proc = geopath("sparsify", SAMPLE, "-o", out, "--sparsity", "0.5", *FAST, "--train-eval-size", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [_strict(line) for line in proc.stdout.splitlines()]
    result = lines[-1]
    assert result["event"] == "result" and result["train_accuracy"] is None
    summary = _strict((out / "summary.json").read_text())
    assert summary["train_accuracy"] is None and summary["test_accuracy"] > 0.5
    for line in (out / "trace.jsonl").read_text().splitlines():
        assert _strict(line)["train_accuracy"] is None
    assert all(_strict(l)["event"] == "step" for l in proc.stdout.splitlines()[:-1])
    with pytest.raises(ValueError):
        _strict('{"x": NaN}')
