"""``geopath plot`` over real finished runs: a PNG whose panels follow what the runs recorded, and
one-line refusals of what it cannot draw."""

from __future__ import annotations

import json

import pytest

from geopath.io.reader import read_trace
from geopath.report.plot import path_panels

from .._helpers import DATA_ROOT, ROOT, SAMPLE, cli, geopath, needs_mnist, one_error_line
from .._helpers import one_thread_subprocesses  # noqa: F401 (autouse: one thread per run)

pytestmark = needs_mnist

FASHION = ROOT / "sample_checkpoints" / "mlp_fashion_mnist.safetensors"
PEER_SMALL = ["--data-root", str(DATA_ROOT), "--metric-size", "1000", "--eval-size", "300", "--batch-size", "64"]
SMALL = [*PEER_SMALL, "--cg-iters", "3"]  # (a peer refuses the geodesic's --cg-iters)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A merge geodesic (a walk: distance and metric length per row) and a connect peer (the straight line:
    distance, no metric length)."""
    base = tmp_path_factory.mktemp("plot")
    runs = {"walk": ["merge", SAMPLE, FASHION, *SMALL, "--val-size", "300", "--steps", "4", "--save-every", "2"],
            "line": ["connect", SAMPLE, FASHION, "--data", "mnist", "--normalize", "dataset", *PEER_SMALL, "--method", "linear", "--points", "3"]}
    for name, args in runs.items():
        proc = geopath(*args, "-o", base / name)
        assert proc.returncode == 0, proc.stderr
    return {name: base / name for name in runs}


def test_panels_follow_what_the_runs_recorded(finished):
    walk, line = read_trace(finished["walk"]), read_trace(finished["line"])
    assert any(r.get("length") is not None for r in walk) and all(r.get("length") is None for r in line)
    assert path_panels([walk]) == [(None, "test accuracy"), ("distance", "distance to target"),
                                   ("length", "metric length")]
    assert path_panels([line]) == [(None, "test accuracy"), ("distance", "distance to target")]
    assert path_panels([line, walk]) == path_panels([walk])  # one run with a length is enough
    assert path_panels([walk], x="length") == path_panels([walk])
    assert path_panels([line], x="length") == [(None, "test accuracy")]  # nothing to draw against the length


@pytest.mark.parametrize("which", [["walk"], ["line"], ["walk", "line"]])
def test_plot_writes_a_png(finished, tmp_path, which):
    out = tmp_path / "fig" / "paths.png"
    labels = [a for w in which for a in ("--label", f"run {w}")]
    proc = geopath("plot", *[finished[w] for w in which], "-o", out, "--json", "--title", "t", *labels)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"out": str(out)}
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
    assert [p.name for p in out.parent.iterdir()] == ["paths.png"]  # no temporary file left beside it


def test_plot_tasks_draws_merge_runs_only(finished, tmp_path):
    ok = geopath("plot", finished["walk"], "-o", tmp_path / "tasks.png", "--kind", "tasks")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "tasks.png").read_bytes().startswith(PNG)
    proc = cli("plot", finished["line"], "-o", tmp_path / "no.png", "--kind", "tasks")
    assert proc.returncode == 2 and "draws merge runs" in one_error_line(proc)
    assert not (tmp_path / "no.png").exists()


@pytest.mark.parametrize("args, message", [(["--x", "bogus"], "--x must be one of"),
                                           (["--kind", "bars"], "--kind must be path or tasks")])
def test_plot_refuses_bad_options(finished, tmp_path, args, message):
    proc = cli("plot", finished["walk"], "-o", tmp_path / "x.png", *args)
    assert proc.returncode == 2 and message in one_error_line(proc)
    assert not (tmp_path / "x.png").exists()


def test_plot_refuses_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = cli("plot", tmp_path / "empty", "-o", tmp_path / "x.png")
    assert proc.returncode == 2 and one_error_line(proc)
    assert not (tmp_path / "x.png").exists()


def test_plot_refuses_a_run_that_did_not_complete(finished, tmp_path):
    """A run without its manifest (written last) stopped before it completed: its summary and trace are not its
    result, and ``plot`` refuses it as ``compare`` does."""
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(finished["walk"], cut)
    (cut / "manifest.json").unlink()
    proc = cli("plot", cut, "-o", tmp_path / "x.png")
    assert proc.returncode == 2
    assert "no manifest.json (the run did not complete" in one_error_line(proc)
    assert not (tmp_path / "x.png").exists()
    assert cli("plot", finished["walk"], "-o", tmp_path / "y.png").returncode == 0  # (the complete run draws)


def test_plot_writes_the_format_its_name_says_and_replaces_only_with_overwrite(finished, tmp_path):
    for suffix, magic in ((".pdf", b"%PDF"), (".svg", b"<?xml")):
        out = tmp_path / f"fig{suffix}"
        assert cli("plot", finished["walk"], "-o", out).returncode == 0
        assert out.read_bytes().startswith(magic)  # (was PNG bytes under any name)
    before = (tmp_path / "fig.pdf").read_bytes()
    again = cli("plot", finished["line"], "-o", tmp_path / "fig.pdf")
    assert again.returncode == 2 and "--overwrite" in one_error_line(again)
    assert (tmp_path / "fig.pdf").read_bytes() == before
    assert cli("plot", finished["line"], "-o", tmp_path / "fig.pdf", "--overwrite").returncode == 0
    bad = cli("plot", finished["walk"], "-o", tmp_path / "fig.jpg")
    assert bad.returncode == 2 and ".png or .pdf or .svg" in one_error_line(bad)


def test_plot_refuses_labels_that_do_not_name_every_run_and_a_finished_run_as_the_place(finished, tmp_path):
    proc = cli("plot", finished["walk"], "-o", tmp_path / "x.png", "--label", "a", "--label", "dropped")
    assert proc.returncode == 2 and "2 --label for 1 run" in one_error_line(proc)
    inside = cli("plot", finished["walk"], "-o", finished["walk"] / "fig.png")  # (verify would then fail)
    assert inside.returncode == 2 and "inside the finished run" in one_error_line(inside)
    assert not (finished["walk"] / "fig.png").exists()
    beside = cli("plot", ".", "-o", "../beside.png", cwd=finished["walk"])  # (.. resolved: not inside the run)
    assert beside.returncode == 0, beside.stderr
    (finished["walk"].parent / "beside.png").unlink()
    (tmp_path / "file").write_text("")
    for out, needle in ((tmp_path, "is a directory"), (tmp_path / "file" / "x.png", "is not a directory")):
        proc = cli("plot", finished["walk"], "-o", out)
        assert proc.returncode == 2 and needle in one_error_line(proc)
