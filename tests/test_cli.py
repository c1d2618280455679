"""Bad input ends in one line on stderr and the documented exit code; nothing half-written."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from geopath.io.archs import build_model
from geopath.io.checkpoint import read_tensors, save_checkpoint

from ._helpers import FAST, SAMPLE, cli, geopath, needs_mnist, one_error_line


def _no_final(out):
    assert not (out / "final.safetensors").exists()
    assert not (out / "summary.json").exists()


# --------------------------------------------------------------------------- the in-process runner
#
# Usage and config errors run geopath.cli.main() in this process (tests/_helpers.cli); these two
# check that runner, and that it gives what the console program gives in a subprocess.


def _legacy_config(tmp_path):
    """A config file with a renamed key (a UserWarning) and a misspelt one (a usage error)."""
    cfg = tmp_path / "legacy.yaml"
    cfg.write_text("method: steihaug\nspasity: 0.9\n")
    return cfg


def test_cli_runs_the_entry_point_in_process(tmp_path, capsys):
    import os
    import signal
    import sys
    import warnings

    from geopath import __version__

    def state():
        return (dict(os.environ), os.getcwd(), list(sys.argv), signal.getsignal(signal.SIGTERM),
                list(warnings.filters), warnings.showwarning, sys.excepthook, torch.get_num_threads())

    before, rng = state(), torch.get_rng_state()
    missing = cli("sparsify", "missing.safetensors", "-o", tmp_path / "out")
    assert missing.returncode == 2 and missing.stdout == ""
    assert "missing.safetensors: no such checkpoint" in one_error_line(missing)
    assert not (tmp_path / "out").exists()
    version = cli("--version")
    assert (version.returncode, version.stdout, version.stderr) == (0, f"geopath {__version__}\n", "")
    # a rich Console made inside a command prints to the captured stdout
    table = cli("inspect", SAMPLE)
    assert table.returncode == 0 and table.stderr == "", table.stderr
    assert "┃ tensor" in table.stdout and "layers.0.weight" in table.stdout and "300×784" in table.stdout
    # a warning goes to the captured stderr, as in a subprocess (not to pytest's warning summary)
    warned = cli("sparsify", SAMPLE, "-o", tmp_path / "out", "--config", _legacy_config(tmp_path))
    assert warned.returncode == 2
    assert "UserWarning: config key 'method' for the trust-region solver is now 'solver'" in warned.stderr
    assert warned.stderr.splitlines()[-1] == "Error: unknown option(s) in config file: spasity"
    with pytest.raises(AssertionError, match="expected one line on stderr"):
        one_error_line(warned)
    # nothing reached the real streams, and what main() changes in the process is put back
    assert capsys.readouterr() == ("", "")
    assert state() == before
    assert torch.equal(torch.get_rng_state(), rng)  # a job seeds torch before it checks its inputs


def test_cli_matches_the_console_program(tmp_path):
    """The same exit code, stdout and stderr in process as from ``python -m geopath``: an error
    (the end-to-end check of a missing checkpoint) and a warning before an error."""
    cases = [("sparsify", tmp_path / "missing.safetensors", "-o", tmp_path / "out"),
             ("sparsify", SAMPLE, "-o", tmp_path / "out", "--config", _legacy_config(tmp_path))]
    for args in cases:
        sub, here = geopath(*args), cli(*args)
        assert (here.returncode, here.stdout, here.stderr) == (sub.returncode, sub.stdout, sub.stderr), args
        if args is cases[0]:
            assert sub.returncode == 2 and "no such checkpoint" in one_error_line(sub)


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: None, "no such checkpoint"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"), "not a readable safetensors"),
        (lambda p: p.write_bytes(SAMPLE.read_bytes()[:5000]), "not a readable safetensors"),
    ],
    ids=["missing", "empty", "corrupt-header", "truncated"],
)
def test_bad_checkpoint_files(tmp_path, make, needle):
    ck = tmp_path / "model.safetensors"
    make(ck)
    proc = cli("sparsify", ck, "-o", tmp_path / "out", "--data", "mnist")
    assert proc.returncode == 2
    assert needle in one_error_line(proc)
    assert not (tmp_path / "out").exists()  # inputs load before the output directory is made


def test_failed_overwrite_keeps_the_old_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("config.yaml", "trace.jsonl", "summary.json"):  # (these stand for a finished run)
        (out / name).write_text("{}")
    proc = cli("sparsify", tmp_path / "nope.safetensors", "-o", out, "--overwrite")
    assert proc.returncode == 2 and "no such checkpoint" in one_error_line(proc)
    assert (out / "summary.json").read_text() == "{}"
    bad_data = cli("sparsify", SAMPLE, "-o", out, "--overwrite", "--data", "imagenet")
    assert bad_data.returncode == 2
    assert (out / "summary.json").read_text() == "{}"


def test_overwrite_replaces_runs_only_never_another_folder(tmp_path):
    """``-o`` pointed by mistake at a folder that is not a run (here the one holding the input checkpoint):
    --overwrite refuses it in one line and deletes nothing."""
    import shutil

    folder = tmp_path / "models"
    folder.mkdir()
    ck = folder / "net.safetensors"
    shutil.copy(SAMPLE, ck)
    proc = cli("sparsify", ck, "-o", folder, "--overwrite", "--sparsity", "0.5")
    assert proc.returncode == 2 and "not a geopath run's directory" in one_error_line(proc)
    assert ck.read_bytes() == SAMPLE.read_bytes()
    (folder / "config.yaml").write_text("{}")  # a config alone does not make a run
    proc = cli("sparsify", ck, "-o", folder, "--overwrite", "--sparsity", "0.5")
    assert proc.returncode == 2 and ck.read_bytes() == SAMPLE.read_bytes()


def test_overwrite_never_empties_a_run_holding_the_inputs(tmp_path):
    """A run's own saved network as the input and the same run as ``-o --overwrite`` (continue pruning in place):
    emptying the folder would delete the input (and a data file or plan kept there); refused, nothing touched."""
    import shutil

    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.yaml", "trace.jsonl"):  # (a run: --overwrite would replace it)
        (out / name).write_text("{}")
    ck = out / "final.safetensors"
    shutil.copy(SAMPLE, ck)
    proc = cli("sparsify", ck, "-o", out, "--overwrite", "--sparsity", "0.5")
    assert proc.returncode == 2 and "inside" in one_error_line(proc) and str(ck) in one_error_line(proc)
    assert ck.read_bytes() == SAMPLE.read_bytes() and (out / "config.yaml").read_text() == "{}"
    np.savez(out / "data.npz", x=np.zeros((4, 784), np.float32), y=np.zeros(4, np.int64))
    proc = cli("sparsify", SAMPLE, "-o", out, "--overwrite", "--data", out / "data.npz")  # (a data file too)
    assert proc.returncode == 2 and "data.npz is inside" in one_error_line(proc) and ck.exists()
    b = tmp_path / "b.safetensors"
    shutil.copy(SAMPLE, b)
    proc = cli("merge", ck, b, "-o", tmp_path / "run", "--overwrite")
    assert proc.returncode == 2 and "inside" in one_error_line(proc) and ck.exists()


def test_a_named_data_set_is_no_input_path_whatever_the_folders_are_called(tmp_path, monkeypatch):
    """``--data mnist -o mnist --overwrite``: the run directory called mnist holds no input (mnist is a named set)."""
    from geopath.config import SparsifyConfig
    from geopath.jobs.common import input_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist").mkdir()
    cfg = SparsifyConfig(checkpoint=str(SAMPLE), data="mnist", eval_data="FMNIST", out="mnist")
    assert input_paths(cfg) == (str(SAMPLE),)
    assert input_paths(SparsifyConfig(checkpoint="a.pt", data="x.npz")) == ("a.pt", "x.npz")


def test_inspect_of_a_file_without_tensors(tmp_path):
    from safetensors.torch import save_file as save_raw

    save_raw({}, str(tmp_path / "empty.safetensors"), metadata={"geopath.arch": "mlp"})
    proc = cli("inspect", tmp_path / "empty.safetensors")  # (piped: the width rule saw no tensor)
    assert proc.returncode == 0 and "(0 values)" in proc.stdout, proc.stderr


def test_pickle_only_pt_is_refused(tmp_path):
    import argparse
    import collections

    ck = tmp_path / "model.pt"
    # an arbitrary object beside the weights: loading it needs full pickle
    torch.save({"state_dict": build_model("mlp").state_dict(), "args": argparse.Namespace(lr=0.1)}, ck)
    proc = cli("inspect", ck)
    assert proc.returncode == 2
    assert "refused to unpickle arbitrary objects (it holds argparse.Namespace); re-save it" in \
        one_error_line(proc)  # (torch's own refusal, cut at 120 characters, ended mid-word)
    assert "--trust-pickle" in one_error_line(proc)
    # a plain state dict loads with weights_only=True
    plain = tmp_path / "plain.pt"
    torch.save(collections.OrderedDict(build_model("mlp").state_dict()), plain)
    ok = cli("inspect", plain, "--json")
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)["tensors"]) == 6


def test_a_config_file_cannot_grant_trust(tmp_path):
    """``trust_pickle: true`` in a config file (a replayed run's config.yaml records the flag) does not unpickle:
    the permission is a flag of the command that gives it."""
    import argparse

    ck = tmp_path / "model.pt"
    torch.save({"state_dict": build_model("mlp").state_dict(), "args": argparse.Namespace(lr=0.1)}, ck)
    conf = tmp_path / "c.yaml"
    conf.write_text("trust_pickle: true\ntrust_code: true\n")
    proc = cli("sparsify", ck, "--arch", "mlp", "--config", conf, "-o", tmp_path / "out")
    assert proc.returncode == 2 and one_error_line(proc) == (
        "Error: trust_pickle, trust_code in a config file is not read: a permission holds for the command that "
        "gives it (--trust-pickle)")
    assert not (tmp_path / "out").exists()
    # a run's own config.yaml records the flags it was given; replayed, it grants nothing either
    conf.write_text("trust_pickle: true\ntrust_code: true\nderived: []\n")
    proc = cli("sparsify", ck, "--arch", "mlp", "--config", conf, "-o", tmp_path / "out")
    assert proc.returncode == 2 and "pass --trust-pickle" in one_error_line(proc)
    assert not (tmp_path / "out").exists()


def test_pt_without_arch_needs_arch(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(build_model("mlp").state_dict(), plain)
    proc = cli("eval", plain, "--data", "mnist")
    assert proc.returncode == 2
    assert "--arch" in one_error_line(proc)


def test_architecture_mismatch(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(build_model("mlp", {"hidden": [200, 100]}).state_dict(), plain)
    proc = cli("eval", plain, "--arch", "mlp", "--data", "mnist")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "does not fit architecture" in line and "layers.0.weight" in line


def test_unknown_keys(tmp_path):
    sd = build_model("mlp").state_dict()
    sd["extra.weight"] = torch.zeros(3)
    ck = tmp_path / "x.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(ck), metadata={"geopath.arch": "mlp"})
    proc = cli("eval", ck, "--data", "mnist")
    assert proc.returncode == 2
    assert "unexpected keys: extra.weight" in one_error_line(proc)


def test_unknown_architecture(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(build_model("mlp").state_dict(), plain)
    proc = cli("eval", plain, "--arch", "resnet9000", "--data", "mnist")
    assert proc.returncode == 2
    assert "unknown architecture" in one_error_line(proc)


def test_nan_weights(tmp_path):
    model = build_model("mlp")
    sd = model.state_dict()
    ck = tmp_path / "nan.safetensors"
    sd["layers.0.weight"][0, 0] = math.nan
    save_file({k: v.contiguous() for k, v in sd.items()}, str(ck),
              metadata={"geopath.arch": "mlp", "geopath.data": "mnist"})
    proc = cli("sparsify", ck, "-o", tmp_path / "out")
    assert proc.returncode == 2
    assert "NaN" in one_error_line(proc)
    _no_final(tmp_path / "out")


@needs_mnist
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--data", "imagenet-42"], "unknown data set"),
        (["--data", "mnist", "--data-root", "EMPTY"], "not found offline"),
        (["--sparsity", "1.0"], "--sparsity must be in [0, 1)"),
        (["--sparsity", "-0.1"], "--sparsity must be in [0, 1)"),
        (["--step-size", "0"], "--step-size must be > 0"),
        (["--step-size", "-1"], "--step-size must be > 0"),
        (["--step-size", "inf"], "--step-size must be a finite number, got inf"),
        (["--beta", "inf"], "--beta must be a finite number, got inf"),
        (["--settle", "finetune", "--settle-epochs", "inf"], "--settle-epochs must be a finite number"),
        (["--structured", "layers.9:3"], "not a Linear or Conv layer"),
        (["--structured", "layers.0:999"], "cannot remove 999"),
    ],
)
def test_bad_options(tmp_path, args, needle):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    proc = cli("sparsify", SAMPLE, "-o", tmp_path / "out", *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in one_error_line(proc)
    assert not (tmp_path / "out").exists()  # inputs load before the output directory is made


def test_empty_data_root_names_roots(tmp_path, monkeypatch):
    from geopath.io.data import load_dataset
    from geopath.errors import DataError

    monkeypatch.setenv("GEOPATH_DATA_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=str(tmp_path)):
        load_dataset("fashion-mnist", "train", data_root=tmp_path)


def test_usage_error_from_typer_is_2(tmp_path):
    proc = cli("sparsify", SAMPLE, "-o", tmp_path / "o", "--sparsity", "lots")
    assert proc.returncode == 2


def test_config_unknown_key(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("sparsity: 0.5\nspasity: 0.9\n")
    proc = cli("sparsify", SAMPLE, "-o", tmp_path / "out", "--config", cfg)
    assert proc.returncode == 2
    assert "unknown option(s) in config file: spasity" in one_error_line(proc)


def test_config_bad_value(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("metric: euclid\n")
    proc = cli("sparsify", SAMPLE, "-o", tmp_path / "out", "--config", cfg)
    assert proc.returncode == 2
    assert "one of logits, fisher" in one_error_line(proc)


def test_non_empty_output_dir(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    proc = cli("sparsify", SAMPLE, "-o", out)
    assert proc.returncode == 2
    assert "--overwrite" in one_error_line(proc)
    assert (out / "keep.txt").read_text() == "precious"


def test_output_dir_not_writable(tmp_path):
    import os

    if os.geteuid() == 0:
        # root ignores permissions; use a path under a regular file instead
        blocker = tmp_path / "file"
        blocker.write_text("")
        out = blocker / "out"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "out"
    proc = cli("sparsify", SAMPLE, "-o", out)
    assert proc.returncode == 2
    one_error_line(proc)


def test_resume_without_run(tmp_path):
    proc = cli("sparsify", "-o", tmp_path / "nothing", "--resume")
    assert proc.returncode == 2
    assert "nothing to resume" in one_error_line(proc)


@needs_mnist
def test_min_accuracy_gate_exit_3(tmp_path):
    out = tmp_path / "out"
    proc = geopath("sparsify", SAMPLE, "-o", out, "--sparsity", "0.5", *FAST, "--min-accuracy", "0.9999", "--json")
    assert proc.returncode == 3, proc.stderr
    assert "below --min-accuracy" in one_error_line(proc)
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["event"] == "result" and result["passed"] is False
    # the run itself completed: the files are there
    assert (out / "final.safetensors").exists()


@needs_mnist
def test_eval_and_inspect_json(tmp_path):
    proc = geopath("eval", SAMPLE, "--size", "1000", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["samples"] == 1000 and 0.9 < res["accuracy"] <= 1.0 and res["sparsity"] == 0.0
    info = json.loads(geopath("inspect", SAMPLE, "--json").stdout)
    assert info["metadata"]["geopath.arch"] == "mlp"
    assert info["values"] == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 and info["nonfinite"] == 0


def test_inspect_prints_what_the_file_holds_and_flags_nan(tmp_path):
    """Metadata is text from the file: rich markup in it is printed, not interpreted (it crashed on a stray
    ``[/x]``); piped output does not wrap; NaN or Inf in a tensor is shown and exits 3 with one line."""
    from safetensors.torch import save_file as save_raw

    state = {k: v.clone() for k, v in build_model("mlp", {"hidden": [4]}).state_dict().items()}
    meta = {"geopath.arch": "mlp", "note": "[/bold] closes nothing [red]x[/red] " + "long " * 60}
    save_raw(state, str(tmp_path / "ok.safetensors"), metadata=meta)
    ok = cli("inspect", tmp_path / "ok.safetensors")
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    line = next(l for l in ok.stdout.splitlines() if l.startswith("  note = "))
    assert line == "  note = " + meta["note"]  # whole, on one line, markup as written
    state["layers.0.weight"][0, :3] = float("nan")
    save_raw(state, str(tmp_path / "nan.safetensors"), metadata=meta)
    bad = cli("inspect", tmp_path / "nan.safetensors")
    assert bad.returncode == 3 and "NaN/Inf" in bad.stdout
    assert "3 NaN or Inf value(s) in layers.0.weight" in one_error_line(bad)
    js = cli("inspect", tmp_path / "nan.safetensors", "--json")
    assert js.returncode == 3 and json.loads(js.stdout)["nonfinite"] == 3


def test_save_refuses_nan(tmp_path):
    from geopath.errors import CheckpointError

    model = build_model("mlp")
    with torch.no_grad():
        model.layers[0].weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError):
        save_checkpoint(tmp_path / "x.safetensors", model, "mlp")
    assert not list(tmp_path.iterdir())  # no temp file left behind


@needs_mnist
def test_train_then_eval_lenet(tmp_path):
    out = tmp_path / "lenet.safetensors"
    proc = geopath("train", "--arch", "lenet5", "--data", "mnist", "--size", "1024", "--epochs", "1", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    ev = json.loads(geopath("eval", out, "--json").stdout)  # data set and arch come from the file
    assert ev["data"] == "mnist" and ev["accuracy"] == pytest.approx(res["test_accuracy"], abs=1e-12)
    again = cli("train", "--arch", "lenet5", "--size", "64", "-o", out)
    assert again.returncode == 2 and "--overwrite" in one_error_line(again)
    assert res["test_data"] == "mnist" and res["epochs"] == pytest.approx(1.0)
    assert read_tensors(out)[1]["geopath.test_data"] == "mnist"


@needs_mnist
def test_train_names_the_set_it_scored_and_the_epochs_it_trained(tmp_path):
    """--eval-data fashion-mnist scores on Fashion-MNIST: the text, the JSON and the file say so (all said
    "mnist"); --epochs 1.5 on 100 samples at batch 64 trains whole steps, round(2.3) = 2: one pass over the 100
    samples (64 + 36), 1 epoch, which is what is reported (was 1.5)."""
    out = tmp_path / "m.safetensors"
    proc = cli("train", "--arch", "mlp", "--arch-kwargs", '{"hidden": [8]}', "--size", "100", "--batch-size", "64",
               "--epochs", "1.5", "--eval-data", "fashion-mnist", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["data"] == "mnist" and res["test_data"] == "fashion-mnist"
    assert res["epochs"] == pytest.approx(1.0) and res["sample_passes"] == 100
    meta = read_tensors(out)[1]
    assert meta["geopath.test_data"] == "fashion-mnist" and meta["geopath.data"] == "mnist"
    text = cli("train", "--arch", "mlp", "--arch-kwargs", '{"hidden": [8]}', "--size", "100", "--eval-data",
               "fashion-mnist", "-o", tmp_path / "t.safetensors")
    assert text.returncode == 0 and text.stdout.strip().endswith("on fashion-mnist"), text.stdout


@pytest.mark.parametrize("args, needle", [
    (["--weight-decay", "-1"], "--weight-decay must be finite and ≥ 0"),
    (["--epochs", "nan"], "--epochs and --lr must be finite"),
    (["--epochs", "inf"], "--epochs and --lr must be finite"),
    (["--lr", "nan"], "--epochs and --lr must be finite"),
    (["--device", "gpu"], "--device gpu: not a device"),
    (["--image-size", "32"], "--image-size and --channels resize and convert image folders; mnist is not one"),
    (["--arch", "lenet5", "--arch-kwargs", '{"image_size": 32, "in_channels": 3}'], "cannot take inputs of shape"),
    (["--arch-kwargs", '{"num_classes": 5}'], "has (5,) outputs but mnist has 10 classes"),
])
@needs_mnist
def test_train_refuses_what_it_cannot_do_in_one_line(tmp_path, args, needle):
    out = tmp_path / "m.safetensors"
    proc = cli("train", "--size", "64", "--epochs", "1", "-o", out, *args)
    assert proc.returncode == 2 and needle in one_error_line(proc), proc.stderr
    assert not out.exists()


def test_file_outputs_must_be_files_in_folders(tmp_path):
    """train and export write one file: a directory, a path under a file, or their own input are refused before
    anything is read."""
    (tmp_path / "f").write_text("")
    for out, needle in ((tmp_path, "is a directory"), (tmp_path / "f" / "m.safetensors", "is not a directory")):
        proc = cli("train", "--size", "64", "-o", out)
        assert proc.returncode == 2 and needle in one_error_line(proc)
        proc = cli("export", SAMPLE, "-o", out)
        assert proc.returncode == 2 and needle in one_error_line(proc)
    same = cli("export", SAMPLE, "-o", SAMPLE, "--overwrite")
    assert same.returncode == 2 and "is the input" in one_error_line(same)


def test_torchvision_and_entry_point_architectures():
    from geopath.io.archs import build_model

    net = build_model("torchvision:resnet18", {"num_classes": 7})
    assert net.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    mlp = build_model("geopath.io.archs:MLP", {"hidden": [8]})
    assert mlp(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_no_arguments_prints_the_help_and_no_empty_error():
    proc = cli()
    assert proc.returncode == 2 and "Usage" in proc.stdout
    assert proc.stderr.strip() == ""


def test_inspect_lists_metadata_in_a_stable_order():
    meta = json.loads(cli("inspect", SAMPLE, "--json").stdout)["metadata"]
    assert list(meta) == sorted(meta) and "geopath.arch" in meta


# --------------------------------------------------------------------------- train's epochs, --help, messages


@needs_mnist
def test_train_says_and_records_the_epochs_it_trained(tmp_path):
    """--epochs 0.001 on 100 samples trains one whole step, a whole epoch (1000 times the request): the text
    said only "test accuracy ... on mnist" and the file recorded no epochs (the shipped checkpoints carry
    geopath.train_epochs). Now both name the epoch trained, and the text says it is more than asked."""
    out = tmp_path / "x.safetensors"
    proc = cli("train", "--arch-kwargs", '{"hidden": [8]}', "--epochs", "0.001", "--size", "100", "-o", out)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(f"wrote {out}: 1 epoch (more than the 0.001 asked: training takes whole steps), "
                           "test accuracy "), line
    assert line.endswith(" on mnist")
    assert read_tensors(out)[1]["geopath.train_epochs"] == "1"
    js = cli("train", "--arch-kwargs", '{"hidden": [8]}', "--epochs", "0.001", "--size", "100", "-o",
             tmp_path / "y.safetensors", "--json")
    res = json.loads(js.stdout)
    assert res["epochs"] == pytest.approx(1.0) and res["epochs_asked"] == pytest.approx(0.001)
    # as asked (2 epochs of 1,000 samples at 128 are 16 whole steps): the epochs, nothing more
    even = cli("train", "--arch-kwargs", '{"hidden": [8]}', "--epochs", "2", "--size", "1000", "-o",
               tmp_path / "z.safetensors")
    assert even.stdout.startswith(f"wrote {tmp_path / 'z.safetensors'}: 2 epochs, test accuracy "), even.stdout
    assert read_tensors(tmp_path / "z.safetensors")[1]["geopath.train_epochs"] == "2"


def test_epochs_trained_text():
    from geopath.cli import _epochs_trained

    assert _epochs_trained(1.0, 0.001) == "1 epoch (more than the 0.001 asked: training takes whole steps)"
    assert _epochs_trained(1.0, 1.5) == "1 epoch (fewer than the 1.5 asked: training takes whole steps)"
    assert _epochs_trained(4.9984, 5.0) == "5 epochs"  # (60,000 MNIST samples at 128: 2,344 steps)


@pytest.mark.parametrize("command", [[], ["sparsify"], ["merge"], ["eval"], ["inspect"], ["train"], ["export"],
                                     ["verify"], ["compare"], ["plot"]])
def test_help_shows_flags_without_a_type(command):
    """typer's help printed every flag as if it took a value: `--help <bool>`, `--version <bool>`,
    `--json <bool>`."""
    proc = cli(*command, "--help")
    assert proc.returncode == 0 and "--help" in proc.stdout
    assert "<bool>" not in proc.stdout, proc.stdout


def test_flags_take_no_value():
    from geopath import __version__

    assert cli("--version").stdout == f"geopath {__version__}\n"
    proc = cli("inspect", SAMPLE, "--json=true")
    assert proc.returncode == 2 and "does not take a value" in one_error_line(proc)


def test_every_option_has_help():
    """eval's --data-root and --device, inspect's --trust-pickle, train's --batch-size, --weight-decay, --seed,
    --device and --data-root had none; the ones the jobs share are worded as the jobs word them."""
    import typer

    from geopath.cli import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            if isinstance(param, typer.core.TyperOption):
                assert param.help, (name, param.opts)
    sparsify = {p.name: p.help for p in group.commands["sparsify"].params}
    for name in ("eval", "train", "inspect", "export"):
        for param in group.commands[name].params:
            if param.name in ("data_root", "device", "seed", "trust_pickle"):
                assert param.help == sparsify[param.name], (name, param.name)


def test_resume_names_the_positional_argument_and_flags_as_typed(tmp_path):
    """A different checkpoint on --resume said "drop --checkpoint" (a positional argument, no such flag), and
    a different --layer said "drop --layers"."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("checkpoint: x\n")
    proc = cli("sparsify", SAMPLE, "-o", out, "--resume", "--layer", "layers.0.weight")
    assert proc.returncode == 2
    assert "saved options; drop the checkpoint argument, --layer (different from" in one_error_line(proc)


def _interrupted(capsys, exc):
    import typer

    from geopath.cli import _guard

    def fn():
        raise exc

    with pytest.raises(typer.Exit) as e:
        _guard(fn, False)
    err = capsys.readouterr().err
    assert e.value.exit_code == 130 and len(err.splitlines()) == 1, err
    return err.strip()


def test_an_interrupt_says_once_what_the_run_allows_next(capsys):
    """`Error: interrupted (interrupted after step 74)` repeated itself, and an interrupted training settle or peer
    said nothing of what next (--resume then refused it)."""
    from geopath.core.path import Interrupted, in_one_go

    assert _interrupted(capsys, Interrupted("interrupted after step 74")) == \
        "Error: interrupted after step 74; the run can be continued with --resume"
    assert _interrupted(capsys, KeyboardInterrupt()) == "Error: interrupted"  # (no run open: eval, train, ...)
    with pytest.raises(Interrupted) as e:
        with in_one_go("--method gradual"):
            raise KeyboardInterrupt
    assert not e.value.resumable
    assert _interrupted(capsys, e.value) == ("Error: interrupted in --method gradual, which --resume cannot "
                                             "continue; start it again with --overwrite")
    # a signal in the walk's last step: the walk lands and ends; a training settle after it cannot be resumed
    from geopath.core.path import walk_before

    for trains, resumable in ((True, False), (False, True)):
        with pytest.raises(Interrupted) as e:
            with walk_before("the --settle finetune training", trains):
                raise Interrupted("interrupted as the walk ended", ended=True)
        assert e.value.resumable is resumable
    assert _interrupted(capsys, e.value) == \
        "Error: interrupted as the walk ended; the run can be continued with --resume"
    with pytest.raises(Interrupted) as e:
        with walk_before("the --settle finetune training"):
            raise Interrupted("interrupted after step 3")  # (mid-walk: resumable, a training settle or not)
    assert e.value.resumable


@needs_mnist
def test_sigterm_in_the_training_settle_says_start_again_with_overwrite(tmp_path):
    """SIGTERM during a default sparsify's training settle exited 130 with a bare `Error: interrupted`, and
    --resume then refused (the settle's optimizer state is not saved)."""
    import os
    import signal
    import subprocess
    import sys

    from ._helpers import DATA_ROOT, ROOT

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "geopath", "sparsify", str(SAMPLE), "-o", str(out), *FAST, "--settle-epochs", "100",
           "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "GEOPATH_DATA_ROOT": str(DATA_ROOT)})
    sent = False
    for line in proc.stdout:
        row = json.loads(line)
        if row.get("landed_at") is not None and row["step"] > row["landed_at"]:  # a settle row
            proc.send_signal(signal.SIGTERM)
            sent = True
            break
    _, err = proc.communicate(timeout=180)
    assert sent and proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last == ("Error: interrupted in the --settle distill training (its optimizer's state is not saved), "
                    "which --resume cannot continue; start it again with --overwrite"), err
    resumed = cli("sparsify", "-o", out, "--resume")
    assert resumed.returncode == 2 and "start it again with --overwrite" in one_error_line(resumed)
