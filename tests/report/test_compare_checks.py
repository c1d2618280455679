"""``geopath compare`` checks the runs it reads (io/reader.py, ``read_run``): a damaged trace, a missing trace, a
manifest that is no JSON, a record changed after the run are each one ``Error:`` line naming the run, exit code 2
and nothing on stdout (compare printed the damaged run's figures and exited 0)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from geopath.errors import UsageError
from geopath.io.atomic import sha256_file
from geopath.io.reader import read_run

from .._helpers import DATA_ROOT, SAMPLE, cli, geopath, needs_mnist, one_error_line
from .._helpers import one_thread_subprocesses  # noqa: F401 (autouse: one thread per run)

TINY = ["--sparsity", "0.1", "--steps", "1", "--settle-epochs", "0", "--criterion", "magnitude", "--cg-iters", "1",
        "--batch-size", "32", "--metric-size", "64", "--eval-size", "100", "--train-eval-size", "0", "--bn-samples",
        "16", "--data-root", str(DATA_ROOT)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny finished sparsify run (a few seconds)."""
    out = tmp_path_factory.mktemp("checks") / "run"
    proc = geopath("sparsify", SAMPLE, *TINY, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "manifest.json").is_file() and len((out / "trace.jsonl").read_text().splitlines()) >= 2
    return out


def _insert_bad_line(run):
    lines = (run / "trace.jsonl").read_text().splitlines()
    lines.insert(1, '{"step": 1, "t"')
    (run / "trace.jsonl").write_text("\n".join(lines) + "\n")


def _edit(run, name, old, new, tail=""):
    text = (run / name).read_text()
    assert old in text
    (run / name).write_text(text.replace(old, new, 1) + tail)


DAMAGE = {
    # (damage, what the one line says)
    "bad_line": (_insert_bad_line, r"trace.jsonl: line 2 of \d+ is not valid JSON \(the file is damaged"),
    "torn_last_line": (lambda run: _edit(run, "trace.jsonl", "", "", tail='{"step": 9, "t"'),
                       "trace.jsonl has changed since the run finished"),  # (a finished run has no torn line)
    "no_trace": (lambda run: (run / "trace.jsonl").unlink(), "no trace.jsonl"),
    "manifest_not_json": (lambda run: (run / "manifest.json").write_text('{"config.yaml": '),
                          r"manifest.json: not valid JSON"),
    "manifest_lists_nothing": (lambda run: (run / "manifest.json").write_text("{}"), "manifest.json: lists no file"),
    "csv_changed": (lambda run: _edit(run, "trace.csv", "0.1", "0.2"),
                    r"trace.csv has changed since the run finished \(its sha256 is not the one in manifest.json; "
                    r"geopath verify .* lists every difference\)"),
    "csv_missing": (lambda run: (run / "trace.csv").unlink(), r"trace.csv is missing \(the run's manifest.json "
                                                               r"lists it\)"),
    "summary_changed": (lambda run: _edit(run, "summary.json", '"sparsity": 0.1', '"sparsity": 0.9'),
                        "summary.json has changed since the run finished"),
}


@needs_mnist
@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_compare_refuses_a_damaged_run_in_one_line(finished, tmp_path, case):
    damage, message = DAMAGE[case]
    run = tmp_path / f"run_{case}"
    shutil.copytree(finished, run)
    damage(run)
    for args in ([run], [finished, run, "--json"]):  # (alone, and after a good run: no half table either)
        proc = cli("compare", *args)
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout
        line = one_error_line(proc)
        assert line.startswith(f"Error: {run}"), line
        assert re.search(message, line), line


@needs_mnist
def test_a_good_run_compares_as_before(finished, tmp_path):
    """A finished run compares with its summary's figures, also without the step checkpoints (deleted to save
    space: the networks are left to geopath verify) and beside a copy of itself."""
    summary = json.loads((finished / "summary.json").read_text())
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    for step in (copy / "steps").iterdir():
        step.unlink()
    proc = cli("compare", finished, copy, "--json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["run"] for r in rows] == ["run", "copy"]
    for row in rows:
        assert (row["job"], row["method"]) == ("sparsify", "geodesic")
        for k in summary["headline"]:
            assert row[k] == summary[k], k
    table = cli("compare", finished)
    assert table.returncode == 0 and "sparsify" in table.stdout and "geodesic" in table.stdout


def _record_run(run, rows=({"step": 0}, {"step": 1})):
    """A finished run made of records only (no data needed), its manifest as RunWriter.finish writes it."""
    from geopath.io.manifest import run_files

    run.mkdir()
    (run / "config.yaml").write_text("data: mnist\neval_data: null\neval_size: 100\n")
    (run / "trace.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps({"job": "sparsify", "method": "geodesic",
                                                  "headline": ["test_accuracy"], "test_accuracy": 0.5}))
    (run / "manifest.json").write_text(json.dumps({rel: sha256_file(run / rel) for rel in run_files(run)}))
    return run


def test_read_run_checks_the_records_a_manifest_lists(tmp_path):
    run = _record_run(tmp_path / "run")
    summary, rows = read_run(run)
    assert summary["test_accuracy"] == 0.5 and rows == [{"step": 0}, {"step": 1}]
    (run / "notes.txt").write_text("added later")  # (a file the run did not write: verify's business, not compare's)
    assert read_run(run)[1] == rows
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["summary.json"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="manifest.json does not list summary.json"):
        read_run(run)
    (run / "manifest.json").write_text(json.dumps({**manifest, "../other/summary.json": "0" * 64}))
    with pytest.raises(UsageError, match="outside the run"):
        read_run(run)
    (run / "manifest.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="not a geopath manifest"):
        read_run(run)
