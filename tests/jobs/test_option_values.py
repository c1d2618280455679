"""Values that used to run as something else or fail deep in a run: each is one ``Error:`` line, exit code 2, and
nothing written."""

from __future__ import annotations

import pytest
import yaml

from .._helpers import DATA_ROOT, SAMPLE, cli, one_error_line


@pytest.mark.parametrize("args, message", [
    (["--seed", "99999999999999999999"], "--seed must be a whole number in [0, 2^32), got 99999999999999999999"),
    (["--seed", str(2**32)], "--seed must be a whole number in [0, 2^32)"),  # (seed × 1,000,003 + step overflowed)
    (["--seed", "-1"], "--seed must be a whole number in [0, 2^32), got -1"),
    (["--structured", ""], "--structured names no layer"),  # (it ran as an unstructured 70 % sparsify)
    (["--structured", " , "], "--structured names no layer"),
    (["--structured", "layers.0:0"], "--structured layers.0:0: remove at least one unit"),  # (it removed none)
    (["--structured", "layers.0:-3"], "remove at least one unit"),
    (["--layer", ""], "--layer names a parameter to prune (e.g. layers.0.weight); got an empty name"),
])
def test_a_value_that_ran_as_something_else_is_refused(tmp_path, args, message):
    out = tmp_path / "out"
    proc = cli("sparsify", SAMPLE, "-o", out, "--data-root", DATA_ROOT, *args)
    assert proc.returncode == 2 and message in one_error_line(proc)
    assert not out.exists()


def test_an_empty_layer_list_in_a_config_file_is_refused(tmp_path):
    """``layers: []`` pruned every layer, as if the key were absent."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"layers": []}))
    proc = cli("sparsify", SAMPLE, "--config", cfg, "-o", tmp_path / "out", "--data-root", DATA_ROOT)
    assert proc.returncode == 2 and "--layer names a parameter to prune" in one_error_line(proc)


def test_the_largest_seed_is_valid_and_every_seed_a_run_derives_from_it_fits():
    import torch

    from geopath.config import SEED_LIMIT, SparsifyConfig
    from geopath.core.path import metric_batch
    from geopath.core.dataset import Dataset
    from geopath.core.path import PathConfig

    SparsifyConfig(checkpoint="x", out="o", seed=SEED_LIMIT - 1).validate()
    data = Dataset(torch.zeros(10, 3), torch.zeros(10, dtype=torch.long), "d", "train")
    x, _ = metric_batch(data, 10**7, PathConfig(seed=SEED_LIMIT - 1, batch_size=4), "cpu", source=3)
    assert sum(len(b) for b in x) == 4


@pytest.mark.parametrize("key", ["trust_pickle", "trust_code"])
def test_a_permission_in_a_file_of_the_users_own_is_refused_not_ignored(tmp_path, key):
    """A permission holds for the command that gives it; ``trust_pickle: true`` in a user's file ran without it,
    silently. A run's own record of the flag (it was given on that run's command line) still replays."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({key: True, "sparsity": 0.5}))
    proc = cli("sparsify", SAMPLE, "--config", cfg, "-o", tmp_path / "out", "--data-root", DATA_ROOT)
    assert proc.returncode == 2
    assert one_error_line(proc) == (f"Error: {key} in a config file is not read: a permission holds for the command "
                                    f"that gives it (--{key.replace('_', '-')})")
    from geopath.config import SparsifyConfig, replayed

    record = {key: True, "sparsity": 0.5, "derived": []}
    assert key not in replayed(SparsifyConfig, record, {})


@pytest.mark.parametrize("method, hint", [("geodesic", ", or --resume)"), ("gradual", ")")])
def test_a_full_output_directory_offers_resume_only_to_a_run_that_can_resume(tmp_path, method, hint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("checkpoint: x\n")
    (out / "trace.jsonl").write_text("")
    proc = cli("sparsify", SAMPLE, "-o", out, "--method", method, "--data-root", DATA_ROOT)
    assert proc.returncode == 2
    assert one_error_line(proc).endswith(f"output directory is not empty (pass --overwrite to replace it{hint}")


def test_verify_and_compare_of_a_folder_that_is_no_run_say_so(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    for command in ("verify", "compare"):
        proc = cli(command, tmp_path)
        assert proc.returncode == 2
        assert one_error_line(proc) == f"Error: {tmp_path}: not a geopath run (no config.yaml or trace.jsonl)"


def test_train_refuses_a_seed_out_of_range(tmp_path):
    proc = cli("train", "-o", tmp_path / "n.safetensors", "--seed", str(2**64), "--data-root", DATA_ROOT)
    assert proc.returncode == 2 and "--seed must be a whole number in [0, 2^32)" in one_error_line(proc)


def test_an_unknown_data_set_is_named_as_typed(tmp_path):
    proc = cli("sparsify", SAMPLE, "--data", "nosuch", "-o", tmp_path / "out", "--data-root", DATA_ROOT)
    assert proc.returncode == 2 and one_error_line(proc).startswith("Error: --data nosuch: unknown data set (use")


def test_connect_refuses_networks_whose_merged_heads_differ():
    """B's labels are shifted by A's record: two networks with different records would score B wrongly."""
    from types import SimpleNamespace

    from geopath.errors import UsageError
    from geopath.io.checkpoint import load_checkpoint
    from geopath.jobs.common import same_records

    a, b = load_checkpoint(SAMPLE), load_checkpoint(SAMPLE)
    a.metadata.update({"geopath.data_b": "fashion-mnist", "geopath.label_offset_b": "10"})
    with pytest.raises(UsageError, match=r"different merged tasks or heads \(A: task B fashion-mnist in a split "
                                         r"head from class 10; B: no split head\)"):
        same_records(SimpleNamespace(data="mnist", normalize=None), a, b, None)
    b.metadata.update({"geopath.data_b": "fashion-mnist"})  # (a shared head: its labels are not shifted)
    with pytest.raises(UsageError, match="no split head"):
        same_records(SimpleNamespace(data="mnist", normalize=None), a, b, None)
