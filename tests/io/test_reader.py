"""One reader of a run's files (io/reader.py) for compare, plot, verify and --resume."""

from __future__ import annotations

import json

import pytest

from geopath.errors import UsageError
from geopath.io.reader import read_jsonl, read_run_json, read_summary, read_trace
from geopath.io.trace import Trace


def _rows(run, rows, tail=""):
    run.mkdir(parents=True, exist_ok=True)
    (run / "trace.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_a_torn_last_line_ends_the_rows(tmp_path):
    _rows(tmp_path, [{"step": 0}, {"step": 1}], tail='{"step": 2, "t"')
    assert read_jsonl(tmp_path / "trace.jsonl") == [{"step": 0}, {"step": 1}]
    assert Trace(tmp_path).rows() == [{"step": 0}, {"step": 1}]  # --resume reads through the same reader
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_the_landing_segment_is_read_where_it_lies_on_the_path(tmp_path):
    rows = [{"step": 0, "t": 0.0}, {"step": 4, "t": 0.5}, {"step": 4, "t": 1.0},
            {"step": 4, "t": 0.6, "segment": "jump"}, {"step": 4, "t": 0.8, "segment": "jump"}]
    _rows(tmp_path, rows)
    assert [r["t"] for r in read_trace(tmp_path)] == [0.0, 0.5, 0.6, 0.8, 1.0]
    _rows(tmp_path / "plain", rows[:3])
    assert read_trace(tmp_path / "plain") == rows[:3]


def test_problems_are_one_line_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="not a run directory"):
        read_summary(tmp_path / "nope")
    with pytest.raises(UsageError, match="no summary.json"):
        read_summary(tmp_path)
    (tmp_path / "summary.json").write_text("{broken")
    with pytest.raises(UsageError, match="not valid JSON"):
        read_summary(tmp_path)
    (tmp_path / "summary.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="not a geopath summary"):
        read_summary(tmp_path)
    (tmp_path / "summary.json").write_text('{"job": "merge"}')
    assert read_summary(tmp_path) == {"job": "merge"}
    assert read_run_json(tmp_path, "summary.json", "why") == {"job": "merge"}
    with pytest.raises(UsageError, match="no trace.jsonl"):
        read_trace(tmp_path)
