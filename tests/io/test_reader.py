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
    with pytest.raises(UsageError, match="not a geopath run .no config.yaml or trace.jsonl."):
        read_summary(tmp_path)
    (tmp_path / "config.yaml").write_text("out: x\n")  # (a run's folder: its summary is what is missing)
    with pytest.raises(UsageError, match="no summary.json"):
        read_summary(tmp_path)
    (tmp_path / "summary.json").write_text("{broken")
    with pytest.raises(UsageError, match="not valid JSON"):
        read_summary(tmp_path)
    (tmp_path / "summary.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="not a geopath summary"):
        read_summary(tmp_path)
    (tmp_path / "summary.json").write_text('{"job": "merge"}')
    with pytest.raises(UsageError, match=r"no manifest.json \(the run did not complete"):
        read_summary(tmp_path)  # (the summary is written just before the manifest)
    (tmp_path / "manifest.json").write_text("{}")
    assert read_summary(tmp_path) == {"job": "merge"}
    assert read_run_json(tmp_path, "summary.json", "why") == {"job": "merge"}
    with pytest.raises(UsageError, match="no trace.jsonl"):
        read_trace(tmp_path)


def test_a_damaged_line_before_the_last_is_an_error_not_the_end_of_the_trace(tmp_path):
    """Only the last line may be torn (a crash mid-write); a bad line earlier would drop every row after it."""
    (tmp_path / "trace.jsonl").write_text('{"step": 0}\n{"step": 1, "t"\n{"step": 2}\n')
    with pytest.raises(UsageError, match=r"line 2 of 3 is not valid JSON \(the file is damaged"):
        read_trace(tmp_path)
    (tmp_path / "trace.jsonl").write_text('5\n{"step": 1}\n')
    with pytest.raises(UsageError, match="line 1 is not a JSON object"):
        read_trace(tmp_path)
    (tmp_path / "trace.jsonl").write_text('{"step": 0}\n{"step": 1}\n\n')  # (trailing blank lines are no damage)
    assert read_jsonl(tmp_path / "trace.jsonl") == [{"step": 0}, {"step": 1}]


@pytest.mark.parametrize("headline", ['"test_accuracy"', '[{"a": 1}]', "7"])
def test_a_summary_whose_headline_is_not_a_list_of_names_is_refused(tmp_path, headline):
    (tmp_path / "summary.json").write_text('{"job": "sparsify", "headline": %s}' % headline)
    with pytest.raises(UsageError, match="not a geopath summary"):
        read_summary(tmp_path)


def test_verify_refuses_an_empty_manifest_and_entries_outside_the_run(tmp_path):
    from geopath.io.atomic import sha256_file
    from geopath.io.manifest import verify_run

    run, other = tmp_path / "run", tmp_path / "other"
    for d in (run, other):
        d.mkdir()
        (d / "config.yaml").write_text("x: 1\n")
    (run / "manifest.json").write_text("{}")
    with pytest.raises(UsageError, match="lists no file"):
        verify_run(run)
    digest = sha256_file(other / "config.yaml")
    for key in ("../other/config.yaml", str(other / "config.yaml")):
        (run / "manifest.json").write_text(json.dumps({"config.yaml": digest, key: digest}))
        with pytest.raises(UsageError, match="outside the run"):
            verify_run(run)
    (run / "manifest.json").write_text(json.dumps({"config.yaml": digest}))
    assert verify_run(run)["ok"]
