"""bench/suite.py's bookkeeping for ``--peers-from``: whose peers a page shows, at whose passes."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from suite import _peers_note, peers_origin  # noqa: E402


def test_the_peers_origin_is_the_run_that_ran_them():
    ran = {"command": "python bench/suite.py --cases x", "machine": "m1", "peers_from": None}
    assert peers_origin(ran) == {"command": ran["command"], "machine": "m1"}
    # a --peers-from page of that page names the first run, and so does one more page built on it
    once = {"command": "python bench/suite.py --cases x --peers-from a.json", "machine": "m2",
            "peers_from": peers_origin(ran)}
    twice = {"command": "python bench/suite.py --cases x --peers-from b.json", "machine": "m3",
             "peers_from": peers_origin(once)}
    assert peers_origin(once) == peers_origin(twice) == {"command": ran["command"], "machine": "m1"}


def test_the_note_compares_with_the_peers_passes_and_names_their_run():
    old = {"command": "python bench/suite.py --peers-from a.json", "machine": "m2",
           "peers_from": {"command": "python bench/suite.py --cases x", "machine": "m1"}}
    rows = [{"methods": {"geodesic": {"epochs": 5.05}}, "peer_epochs": 5.0}]
    note = _peers_note(old, rows, [{"epochs": 9.9, "peer_epochs": 10.0}])
    assert "(`python bench/suite.py --cases x`)" in note and "+1.00% of those at most" in note
    assert "not timed in the same run, so no speed comparison" in note


def test_the_note_names_the_label_free_rows_run_here_in_full():
    old = {"command": "python bench/suite.py --cases vit_90", "machine": "m1"}
    rows = [{"methods": {"geodesic": {"epochs": 5.0}}, "peer_epochs": 5.0}]
    earlier = {"case": "mnist_mlp_90", "inputs": 1000, "epochs": 99.0, "peer_epochs": 99.0}
    assert "run here in full" not in _peers_note(old, rows, [earlier])
    fresh = {"case": "vit_90", "inputs": 10000, "epochs": 10.1, "peer_epochs": 10.1, "ran_here": True}
    note = _peers_note(old, rows, [earlier, fresh])
    assert note.endswith("The label-free rows the earlier run lacks were run here in full, peers included "
                         "(vit_90 with 10,000 inputs).")


def test_the_grid_text_names_the_label_free_grid_where_it_differs():
    from suite import _grid_text

    grid = [("sgd", 0.1), ("adam", 0.001)]
    assert _grid_text(grid, None, None) == "(sgd lr 0.1, adam lr 0.001)."
    assert _grid_text(grid, None, [["sgd", 0.1], ["adam", 0.001]]) == "(sgd lr 0.1, adam lr 0.001)."  # (as JSON)
    assert _grid_text(grid, None, [("sgd", 0.05)]) == "(sgd lr 0.1, adam lr 0.001; the label-free table: sgd lr 0.05)."
    assert _grid_text(grid, {"command": "c"}, [("sgd", 0.05)]) == (
        "(on each case and seed, the grid point that won in `c`, and sgd lr 0.1, adam lr 0.001; the label-free "
        "table: sgd lr 0.05).")


def test_a_run_made_before_the_settle_optimizer_rule_is_not_reused(tmp_path):
    """A finished geodesic run counts as today's only if it resolved today's settle optimizer too: one recorded with
    sgd (before --settle-optimizer auto) runs again; the same run recorded with auto is reused."""
    import json

    import yaml

    from suite import _optimizer, finished

    from geopath.config import SparsifyConfig

    ckpt = tmp_path / "net.safetensors"
    ckpt.write_bytes(b"")
    options = {"sparsity": 0.9, "steps": 25, "settle_epochs": 4.375}
    cfg = SparsifyConfig(checkpoint=str(ckpt), out=str(tmp_path / "run"), **options).validate()
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    rule = {"rule": "auto", "chosen": "sgd", "sharpness": 1.5, "sgd_lr": 0.1, "bound": 2.5}
    (run / "summary.json").write_text(json.dumps({
        "settle": {"rule": "auto", "chosen": "finetune"}, "settle_optimizer": rule}))
    saved = {**options, "checkpoint": str(ckpt.resolve()), "seed": 0, "method": "geodesic", "criterion": "magnitude",
             "settle": "auto", "settle_lr": 0.1, "max_steps": 25, "settle_prune": 0.2, "settle_prune_until": 0.75}
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, "settle_optimizer": "sgd"}))
    assert finished(run, ckpt, cfg, options) is None
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, "settle_optimizer": "auto"}))
    assert finished(run, ckpt, cfg, options)["settle_optimizer"] == rule
    assert _optimizer(rule) == "sgd (0.15)" and _optimizer(None) is None
    assert _optimizer({"rule": "auto", "chosen": "sgd", "train_loss": 1.234, "loss_bound": 0.38}) == "sgd (loss 1.23)"


def test_a_structured_run_records_the_default_sparsity_so_that_its_config_replays(tmp_path, monkeypatch):
    """The filters case has no sparsity (its table row says 0.0); the run must not record that 0.0, which the CLI
    refuses beside --structured ('--sparsity: not read') when the run's config.yaml is replayed."""
    import suite

    from geopath.config import SparsifyConfig

    made = []
    monkeypatch.setattr(suite, "RERUN", True)
    monkeypatch.setattr(suite, "run_sparsify", lambda cfg: made.append(cfg) or {
        "test_accuracy": 0.5, "sample_passes": 1, "epochs": 1.0, "wall_time": 1.0, "dense_test_accuracy": 0.6,
        "target": {}})
    suite.run(tmp_path / "ck.safetensors", tmp_path / "out", "data", sparsity=0.0, structured="features.0:12")
    suite.run(tmp_path / "ck.safetensors", tmp_path / "out", "data", sparsity=0.9)
    assert made[0].sparsity == SparsifyConfig.sparsity and made[0].structured == "features.0:12"
    assert made[1].sparsity == 0.9
