"""``geopath compare`` over real finished runs (a merge geodesic, a merge peer, a connect peer)
and over directories that are not finished runs."""

from __future__ import annotations

import json

import pytest

from .._helpers import DATA_ROOT, ROOT, SAMPLE, cli, geopath, needs_mnist, one_error_line
from .._helpers import one_thread_subprocesses  # noqa: F401 (autouse: one thread per run)

FASHION = ROOT / "sample_checkpoints" / "mlp_fashion_mnist.safetensors"
PEER_SMALL = ["--data-root", str(DATA_ROOT), "--metric-size", "1000", "--eval-size", "300", "--batch-size", "64"]
SMALL = [*PEER_SMALL, "--cg-iters", "3"]  # (a peer refuses the geodesic's --cg-iters)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Three small finished runs: merge geodesic (which misses its --min-accuracy: exit 3, but a
    finished run all the same), merge average, connect linear."""
    base = tmp_path_factory.mktemp("compare")
    runs = {
        "geo_run": ["merge", SAMPLE, FASHION, *SMALL, "--val-size", "300", "--steps", "4", "--save-every", "2",
                    "--min-accuracy", "0.99"],
        "avg_run": ["merge", SAMPLE, FASHION, *PEER_SMALL, "--val-size", "300", "--method", "average", "--points", "3"],
        "line_run": ["connect", SAMPLE, FASHION, "--data", "mnist", "--normalize", "dataset", *PEER_SMALL, "--method", "linear", "--points", "3"],
    }
    for name, args in runs.items():
        proc = geopath(*args, "-o", base / name)
        if name == "geo_run":
            assert proc.returncode == 3, proc.stderr
            assert "min_test_accuracy" in one_error_line(proc) and "below --min-accuracy 0.99" in proc.stderr
        else:
            assert proc.returncode == 0, proc.stderr
    return {name: base / name for name in runs}


def _summary(run):
    return json.loads((run / "summary.json").read_text())


@needs_mnist
def test_compare_json_one_object_per_run(finished):
    proc = geopath("compare", finished["geo_run"], finished["avg_run"], finished["line_run"], "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(l) for l in proc.stdout.splitlines()]
    assert [r["run"] for r in rows] == ["geo_run", "avg_run", "line_run"]  # in the order given
    assert [(r["job"], r["method"]) for r in rows] == [("merge", "geodesic"), ("merge", "average"),
                                                       ("connect", "linear")]
    for row in rows:
        s = _summary(finished[row["run"]])
        assert set(s["headline"]) <= set(row)
        for k in s["headline"]:
            assert row[k] == s[k], k
        assert set(row) <= {"run", "job", "method", "test_set", *s["headline"], "sample_passes", "epochs", "wall_time"}
    # merge scores on both tasks' test sets, connect on MNIST's: the table says so
    assert [r["test_set"] for r in rows] == ["mnist+fashion-mnist[:300]"] * 2 + ["mnist[:300]"]
    assert rows[0]["min_test_accuracy"] == min(rows[0]["test_accuracy_a"], rows[0]["test_accuracy_b"])
    gated = _summary(finished["geo_run"])
    assert gated["passed"] is False and gated["min_accuracy"] == 0.99
    assert gated["gated_value"] == rows[0]["min_test_accuracy"] < 0.99
    assert "accuracy_barrier" in rows[2] and "accuracy_barrier" not in rows[0]


@needs_mnist
def test_compare_table_names_runs_and_methods(finished):
    proc = geopath("compare", finished["geo_run"], finished["avg_run"], finished["line_run"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(l for l in lines if "run" in l and "method" in l)
    for col in ("job", "test_accuracy_a", "test_accuracy_b", "min_test_accuracy", "loss_barrier", "wall_time"):
        assert col in header, col
    # the cost columns come last
    assert header.index("wall_time") > header.index("loss_barrier") > header.index("test_accuracy_a")
    for name, method in (("geo_run", "geodesic"), ("avg_run", "average"), ("line_run", "linear")):
        line = next(l for l in lines if name in l)
        assert method in line
        s = _summary(finished[name])
        assert f"{s['min_test_accuracy']:.4f}" in line
    geo = next(l for l in lines if "geo_run" in l)
    assert f"{_summary(finished['geo_run'])['test_accuracy_b']:.4f}" in geo


def _finish(run):
    """Make the records in ``run`` a finished run: a trace and the manifest (compare checks both)."""
    from geopath.io.atomic import sha256_file

    (run / "trace.jsonl").write_text('{"step": 0}\n')
    files = ("config.yaml", "summary.json", "trace.jsonl")
    (run / "manifest.json").write_text(json.dumps({f: sha256_file(run / f) for f in files}))


def test_compare_directory_without_summary(tmp_path):
    run = tmp_path / "unfinished"
    run.mkdir()
    (run / "config.yaml").write_text("method: geodesic\n")
    proc = cli("compare", run)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "no summary.json" in line and "unfinished" in line


@pytest.mark.parametrize("kind", ["file", "missing"])
def test_compare_non_directory(tmp_path, kind):
    path = tmp_path / "summary.json"
    if kind == "file":
        path.write_text(json.dumps({"job": "merge", "method": "geodesic"}))
    proc = cli("compare", path)
    assert proc.returncode == 2
    assert "not a run directory" in one_error_line(proc)


@pytest.mark.parametrize("text, needle", [("{not json", "not valid JSON"),
                                          ('{"method": "x"}', "not a geopath summary")])
def test_compare_bad_summary(tmp_path, text, needle):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(text)
    proc = cli("compare", run, "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert needle in one_error_line(proc)


def test_compare_refuses_an_incomplete_run_and_names_a_different_test_set(tmp_path):
    """A run without manifest.json did not complete; runs scored on different test sets get a test_set column
    (none when they agree)."""
    def run(name, eval_size, manifest=True):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(f"data: mnist\neval_data: null\neval_size: {eval_size}\n")
        (d / "summary.json").write_text(json.dumps({"job": "sparsify", "method": "geodesic",
                                                    "headline": ["test_accuracy"], "test_accuracy": 0.99}))
        if manifest:
            _finish(d)
        return d

    a, b, c = run("a", 200), run("b", 10000), run("c", 200, manifest=False)
    proc = cli("compare", a, c)
    assert proc.returncode == 2 and "c: no manifest.json (the run did not complete" in one_error_line(proc)
    rows = [json.loads(l) for l in cli("compare", a, b, "--json").stdout.splitlines()]
    assert [r["test_set"] for r in rows] == ["mnist[:200]", "mnist[:10000]"]
    same = [json.loads(l) for l in cli("compare", a, a, "--json").stdout.splitlines()]
    assert "test_set" not in same[0]
    table = cli("compare", a, b).stdout
    assert "test_set" in table and "mnist[:10000]" in table



def test_compare_tells_apart_test_files_and_runs_that_share_a_name(tmp_path):
    """Two --eval-data files both called test.npz are two test sets (the column was left out: the table put a
    shuffled-label set's 13 % beside 99 % as if scored alike); two runs both called run are named by their paths."""
    def run(folder, eval_data):
        d = tmp_path / folder / "run"
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(f"data: mnist\neval_data: {eval_data}\neval_size: null\n")
        (d / "summary.json").write_text(json.dumps({"job": "sparsify", "method": "geodesic",
                                                    "headline": ["test_accuracy"], "test_accuracy": 0.5}))
        _finish(d)
        return d

    a, b = run("x", "/data/a/test.npz"), run("y", "/data/b/test.npz")
    rows = [json.loads(l) for l in cli("compare", a, b, "--json").stdout.splitlines()]
    assert [r["test_set"] for r in rows] == ["/data/a/test.npz", "/data/b/test.npz"]
    assert [r["run"] for r in rows] == [str(a), str(b)]
    c = run("z", "/data/c/other.npz")
    rows = [json.loads(l) for l in cli("compare", a, c, "--json").stdout.splitlines()]
    assert [r["test_set"] for r in rows] == ["test.npz", "other.npz"]  # (short where that tells them apart)
