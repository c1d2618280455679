"""The peer registry: every peer declared once; the job options, choices and flags come from it."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys

import pytest

from geopath import config
from geopath.config import ConnectConfig, MergeConfig, SparsifyConfig, opt, resolve, with_peers
from geopath.errors import UsageError
from geopath.peers import registry
from geopath.peers.registry import Option, Peer

from .._helpers import ROOT

JOB_CLASSES = {"sparsify": SparsifyConfig, "merge": MergeConfig, "connect": ConnectConfig}


@pytest.mark.parametrize("peer", registry.PEERS, ids=lambda p: f"{p.job}-{p.name}")
def test_every_runner_is_a_function_of_its_family(peer):
    module, _, fn = peer.runner.partition(":")
    assert module.startswith("geopath.peers.")
    assert callable(getattr(importlib.import_module(module), fn))


@pytest.mark.parametrize("job", sorted(JOB_CLASSES))
def test_method_choices_are_the_geodesic_then_the_jobs_peers(job):
    cls = JOB_CLASSES[job]
    enum = type(cls().method)
    assert [m.value for m in enum] == ["geodesic"] + [p.name for p in registry.peers_of(job)]
    assert cls().method == "geodesic"
    for p in registry.peers_of(job):
        member = enum(p.name)
        assert member.name == p.name.upper().replace("-", "_")
        assert p.help in member.__doc__


@pytest.mark.parametrize("job", sorted(JOB_CLASSES))
def test_each_peer_option_is_one_field_with_its_declared_default(job):
    cls = JOB_CLASSES[job]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert cls.PEER_OPTIONS == tuple(o.name for o in registry.options_of(job))
    for o in registry.options_of(job):
        assert fields[o.name].default == o.default
        users = registry.users_of(job, o.name)
        assert users and fields[o.name].metadata["help"].startswith(", ".join(users) + ": ")
    # the job's own fields come first, the peers' after them (config.yaml reads in that order)
    names = list(fields)
    assert names[-len(cls.PEER_OPTIONS):] == list(cls.PEER_OPTIONS)


def test_shared_options_are_declared_once():
    assert [o.name for o in registry.options_of("sparsify")] == ["finetune_epochs", "lr", "optimizer", "rounds",
                                                                 "prune_until", "temperature"]
    assert registry.users_of("sparsify", "finetune_epochs") == ["prune-finetune", "iterative-prune", "gradual",
                                                                "distill", "obd"]
    assert registry.users_of("sparsify", "temperature") == ["distill"]
    assert registry.users_of("merge", "fisher_samples") == ["fisher", "ewc"]
    assert registry.options_of("transition") == []


def test_two_different_declarations_of_one_option_are_refused(monkeypatch):
    a = Option("epochs", float, 1.0, "One.")
    b = Option("epochs", float, 2.0, "Two.")
    monkeypatch.setattr(registry, "PEERS", (Peer("toy", "p1", "h", "r", "m:f", (a,)),
                                            Peer("toy", "p2", "h", "r", "m:f", (b,))))
    with pytest.raises(RuntimeError, match="epochs"):
        registry.options_of("toy")


@pytest.mark.parametrize("cls, flags, needle", [
    (MergeConfig, {"points": 1}, "--points must be ≥ 2, got 1"),
    (MergeConfig, {"ewc_lambda": -1.0}, "--ewc-lambda must be ≥ 0"),
    (MergeConfig, {"epochs": 0.0}, "--epochs must be > 0"),
    (MergeConfig, {"fisher_samples": 0}, "--fisher-samples must be ≥ 1"),
    (SparsifyConfig, {"rounds": 0}, "--rounds must be ≥ 1"),
    (SparsifyConfig, {"finetune_epochs": -0.5}, "--finetune-epochs must be ≥ 0"),
    (ConnectConfig, {"lr": 0.0}, "--lr must be > 0"),
    (SparsifyConfig, {"method": "iterative-prune", "mask": "dynamic"}, "does not take --mask dynamic"),
    (SparsifyConfig, {"method": "prune-finetune", "mask": "dynamic"}, "does not take --mask dynamic"),
    (SparsifyConfig, {"method": "distill", "mask": "dynamic"}, "does not take --mask dynamic"),
    (SparsifyConfig, {"method": "obd", "criterion": "saliency", "mask": "dynamic"}, "does not take --mask dynamic"),
    (SparsifyConfig, {"method": "bezier"}, "invalid value 'bezier'"),
])
def test_peer_options_are_checked_when_the_options_are_read(cls, flags, needle):
    base = {"out": "o", "checkpoint": "a", "checkpoint_b": "b"}
    base = {k: v for k, v in base.items() if k in {f.name for f in dataclasses.fields(cls)}}
    with pytest.raises(UsageError, match=needle.replace("(", r"\(")):
        resolve(cls, {}, {**base, **flags})


def test_a_layer_named_twice_in_structured_is_refused():
    """``layers.0:50,layers.0:20`` kept the last count (20 removed, exit 0)."""
    from geopath.core.targets import parse_structured

    with pytest.raises(UsageError, match="--structured names layers.0 twice"):
        parse_structured("layers.0:50,layers.0:20")
    assert parse_structured(["layers.0:5", "layers.1:2"]) == {"layers.0": 5, "layers.1": 2}


def test_a_new_peer_needs_only_its_declaration(monkeypatch):
    """What `with_peers` builds from a declaration: the field, its help, its bounds, the peer's check."""
    steps = Option("inner_steps", int, 3, "Inner steps.", at_least=1)
    seen = []
    toy = Peer("toy", "toy-peer", "A toy.", "nobody", "geopath.peers.pruning:run_prune_finetune", (steps,),
               check=lambda cfg: seen.append(cfg.inner_steps))
    monkeypatch.setattr(registry, "PEERS", registry.PEERS + (toy,))

    @with_peers("toy")
    @dataclasses.dataclass(frozen=True)
    class ToyConfig(config.CommonOptions):
        method: str = opt("geodesic", "geodesic or a peer.")

    field = {f.name: f for f in dataclasses.fields(ToyConfig)}["inner_steps"]
    assert field.default == 3 and field.metadata["help"] == "toy-peer: inner steps."
    assert ToyConfig.PEER_OPTIONS == ("inner_steps",)
    assert resolve(ToyConfig, {"inner_steps": 5}, {"out": "o", "method": "toy-peer"}).inner_steps == 5
    assert seen == [5]
    with pytest.raises(UsageError, match="--inner-steps must be ≥ 1"):
        resolve(ToyConfig, {}, {"out": "o", "inner_steps": 0})
    with pytest.raises(UsageError, match="no method 'nope'"):
        resolve(ToyConfig, {}, {"out": "o", "method": "nope"})


def test_peer_flags_sit_under_their_own_help_heading():
    from geopath.cli import _panel

    assert _panel(SparsifyConfig, "rounds") == "Peer methods"
    assert _panel(MergeConfig, "ewc_lambda") == "Peer methods"
    assert _panel(MergeConfig, "weight_b") == "Job options"
    assert _panel(SparsifyConfig, "beta") == "Geodesic step"


def test_transition_drops_the_lr_its_old_runs_recorded():
    from geopath.config import TransitionConfig

    assert "lr" not in {f.name for f in dataclasses.fields(TransitionConfig)}
    cfg = resolve(TransitionConfig, {"lr": 0.05, "plan": "p.yaml"}, {"out": "o", "checkpoint": "c"})
    assert cfg.plan == "p.yaml"
    with pytest.raises(UsageError, match="unknown option"):
        resolve(SparsifyConfig, {"no_such_option": 1}, {"out": "o", "checkpoint": "c"})


def test_the_registry_and_the_options_import_without_torch():
    code = "import sys, geopath.peers.registry, geopath.config, geopath.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- connect: options the path does not read


def test_connect_refuses_given_options_its_path_does_not_read_but_not_on_resume():
    base = {"checkpoint": "a.safetensors", "checkpoint_b": "b.safetensors", "out": "o"}
    with pytest.raises(UsageError, match="--steps: only --path walk reads it"):
        resolve(ConnectConfig, {}, {**base, "steps": 20})
    with pytest.raises(UsageError, match="--nodes: only --path relax reads it"):
        resolve(ConnectConfig, {"path": "walk", "nodes": 3}, base)
    # a replayed config that names every option at its default is fine; so are peers and the walk's own options
    every = {f.name: f.default for f in dataclasses.fields(ConnectConfig) if f.name not in base}
    every = {k: getattr(v, "value", v) for k, v in every.items()}
    assert resolve(ConnectConfig, every, base).path.value == "relax"
    with pytest.raises(UsageError, match="--steps: not read by this run .--method bezier takes no option of the "):
        resolve(ConnectConfig, {}, {**base, "method": "bezier", "steps": 20})
    assert resolve(ConnectConfig, {}, {**base, "method": "bezier", "epochs": 2.0, "points": 5}).points == 5
    assert resolve(ConnectConfig, {"path": "walk"}, {**base, "steps": 20}).steps == 20
    # --resume reads the run's saved config, which holds every option as it was resolved: never refused
    saved = {**every, **base, "step_size": 0.25, "max_steps": 1200}
    assert resolve(ConnectConfig, saved, {}, resuming=True).step_size == 0.25


def test_a_connect_run_recorded_before_path_existed_walked():
    base = {"checkpoint": "a.safetensors", "checkpoint_b": "b.safetensors", "out": "o"}
    old = {**base, "step_size": 0.25, "max_steps": 1200, "steps": 300}  # a recorded config: no 'path', no 'nodes'
    assert resolve(ConnectConfig, old, {}, resuming=True).path.value == "walk"
    assert resolve(ConnectConfig, {}, base).path.value == "relax"  # a new run: the default


# --------------------------------------------------------------------------- sparsify, transition: unread options


SPARSIFY = {"checkpoint": "c.safetensors", "out": "o"}


@pytest.mark.parametrize("given, message", [
    ({"method": "gradual", "steps": 20}, "--steps: not read by this run (--method gradual takes no option of "
                                         "the geodesic's)"),
    ({"method": "obd", "cg_iters": 3, "tol": 0.1}, "--tol, --cg-iters: not read by this run"),
    ({"method": "distill", "settle_epochs": 1.0}, "--settle-epochs: not read by this run (--method distill settles "
                                                  "by its own training"),
    ({"method": "prune-finetune", "settle": "geodesic"}, "--settle: not read by this run"),
    ({"method": "prune-finetune", "rounds": 3}, "--rounds: not read by this run (--method prune-finetune does not "
                                                "take it)"),
    ({"method": "gradual", "temperature": 4.0}, "--temperature: not read by this run"),
    ({"method": "prune-finetune", "metric": "fisher"}, "--metric: not read by this run (--method prune-finetune "
                                                       "ranks by magnitude"),
    ({"finetune_epochs": 2.0}, "--finetune-epochs: not read by this run (the geodesic takes no peer option)"),
    ({"lr": 0.01, "optimizer": "adam"}, "--lr, --optimizer: not read by this run"),
    ({"settle_steps": 40}, "--settle-steps: not read by this run (--settle auto trains (finetune or distill); it "
                           "takes no geodesic settle-step option)"),
    ({"settle": "finetune", "settle_steps": 40}, "--settle-steps: not read by this run (--settle finetune trains; "
                                                 "it takes no geodesic settle-step option)"),
    ({"settle": "distill", "settle_anchor": "labels"}, "--settle-anchor: not read by this run"),
    ({"settle": "geodesic", "settle_lr": 0.2}, "--settle-lr: not read by this run (--settle geodesic takes steps"),
    ({"settle": "geodesic", "settle_warmup": 0.1, "settle_holdout": 0.1}, "--settle-warmup, --settle-holdout"),
    ({"criterion": "magnitude", "saliency_samples": 64}, "--saliency-samples: not read by this run (only "
                                                         "--criterion saliency or auto reads it)"),
    ({"saliency_samples": 64}, "--saliency-samples: not read by this run"),  # (the geodesic: magnitude by default)
    ({"structured": "layers.0:10", "saliency_samples": 64}, "--saliency-samples: not read by this run"),
    ({"structured": "layers.0:10", "criterion": "saliency"}, "--criterion: not read by this run (--structured "
                                                             "removes whole units"),
    # (each of these ran and recorded an option it never read)
    ({"structured": "layers.0:10", "sparsity": 0.95}, "--sparsity: not read by this run (--structured removes whole "
                                                      "units"),
    ({"structured": "layers.0:10", "mask": "dynamic", "scope": "layer"}, "--mask, --scope: not read by this run"),
    ({"settle_epochs": 0.0, "settle_lr": 0.3, "settle_optimizer": "adam"}, "--settle-lr, --settle-optimizer: not "
                                                                           "read by this run (there is no settle"),
])
def test_sparsify_refuses_given_options_its_method_and_settle_do_not_read(given, message):
    with pytest.raises(UsageError) as e:
        resolve(SparsifyConfig, {}, {**SPARSIFY, **given})
    assert message in str(e.value)


@pytest.mark.parametrize("given", [
    {"method": "gradual", "prune_until": 0.5, "lr": 0.01, "optimizer": "adam", "finetune_epochs": 2.0},
    {"method": "iterative-prune", "rounds": 3},
    {"method": "distill", "temperature": 4.0},
    {"method": "obd", "metric": "fisher", "saliency_samples": 64},  # obd ranks by the metric's diagonal
    {"method": "prune-finetune", "criterion": "saliency", "metric": "fisher"},
    {"method": "gradual", "rounds": 5, "steps": 50},  # at their defaults: nothing is lost
    {"settle": "geodesic", "settle_steps": 40, "settle_anchor": "labels", "steps": 20, "metric": "fisher"},
    {"settle_epochs": 1.0, "settle_lr": 0.2, "settle_warmup": 0.1, "criterion": "auto", "saliency_samples": 64},
])
def test_sparsify_takes_the_options_its_method_and_settle_read(given):
    resolve(SparsifyConfig, {}, {**SPARSIFY, **given})


def test_a_sparsify_config_naming_every_option_replays_and_resume_is_never_refused():
    every = {f.name: getattr(f.default, "value", f.default) for f in dataclasses.fields(SparsifyConfig)
             if f.name not in SPARSIFY}
    for method in ("geodesic", "prune-finetune", "obd"):
        assert resolve(SparsifyConfig, {**every, "method": method}, SPARSIFY).method.value == method
    # a saved config holds what the run resolved; --resume reads it as it is
    saved = {**every, **SPARSIFY, "method": "gradual", "steps": 20, "settle_steps": 3}
    assert resolve(SparsifyConfig, saved, {}, resuming=True).steps == 20


def test_transition_refuses_the_other_settles_options():
    from geopath.config import TransitionConfig

    base = {"checkpoint": "c.safetensors", "out": "o", "plan": "p.yaml"}
    with pytest.raises(UsageError, match="--settle-epochs: not read by this run"):
        resolve(TransitionConfig, {}, {**base, "settle_epochs": 1.0})  # the default settle: geodesic steps
    with pytest.raises(UsageError, match="--settle-steps: not read by this run"):
        resolve(TransitionConfig, {"settle": "finetune"}, {**base, "settle_steps": 5})
    assert resolve(TransitionConfig, {"settle": "finetune"}, {**base, "settle_epochs": 1.0}).settle_epochs == 1.0
    assert resolve(TransitionConfig, {}, {**base, "settle_steps": 5}).settle_steps == 5


@pytest.mark.parametrize("cls, given, message", [
    (MergeConfig, {"method": "average", "epochs": 2.0}, "--epochs: not read by this run (--method average does not "
                                                        "take it)"),
    (MergeConfig, {"method": "ewc", "weight_b": 4.0, "cg_iters": 3}, "--cg-iters, --weight-b: not read by this run "
                                                                     "(--method ewc takes no option of the geodesic's)"),
    (MergeConfig, {"fisher_samples": 100}, "--fisher-samples: not read by this run (the geodesic takes no peer "
                                           "option)"),
    (ConnectConfig, {"method": "linear", "epochs": 2.0}, "--epochs: not read by this run"),
    (ConnectConfig, {"method": "linear", "nodes": 3}, "--nodes: not read by this run"),
    (ConnectConfig, {"lr": 0.1}, "--lr: not read by this run (the geodesic takes no peer option)"),
    (MergeConfig, {"weight_b": 4.0, "manifold": "a"}, "--weight-b: not read by this run (--manifold a keeps one "
                                                      "task's function"),
    (MergeConfig, {"combine": "alternate", "manifold": "b"}, "--combine: not read by this run (--manifold b"),
    (MergeConfig, {"weight_b": 4.0, "combine": "alternate"}, "--weight-b: not read by this run (--combine alternate "
                                                             "steps on one task's metric at a time"),
    (MergeConfig, {"label_weight": 3.0}, "--label-weight: not read by this run (only --anchor start+labels reads it)"),
    (ConnectConfig, {"label_weight": 3.0}, "--label-weight: not read by this run"),
])
def test_merge_and_connect_refuse_the_options_their_method_does_not_read(cls, given, message):
    base = {"checkpoint": "a.safetensors", "checkpoint_b": "b.safetensors", "out": "o"}
    with pytest.raises(UsageError) as e:
        resolve(cls, {}, {**base, **given})
    assert message in str(e.value)


@pytest.mark.parametrize("cls, given", [
    (MergeConfig, {"method": "ewc", "epochs": 2.0, "ewc_lambda": 10.0, "fisher_samples": 100, "lr": 0.01,
                   "batch_size": 32}),
    (MergeConfig, {"method": "fisher", "points": 5, "fisher_samples": 100, "head": "split"}),
    (MergeConfig, {"steps": 100, "weight_b": 4.0, "manifold": "both", "combine": "sum"}),
    (MergeConfig, {"manifold": "a"}),
    (ConnectConfig, {"method": "linear", "points": 5, "align": True}),
])
def test_merge_and_connect_take_the_options_their_method_reads(cls, given):
    base = {"checkpoint": "a.safetensors", "checkpoint_b": "b.safetensors", "out": "o"}
    resolve(cls, {}, {**base, **given})
    every = {f.name: getattr(f.default, "value", f.default) for f in dataclasses.fields(cls) if f.name not in base}
    resolve(cls, {**every, "method": given.get("method", "geodesic")}, base)  # a replayed config: every key


def test_label_weight_is_read_only_under_the_start_plus_labels_anchor():
    """--label-weight (λ of --anchor start+labels) given with another anchor is refused, in every walking job; the
    sparsify settle's own geodesic steps read it under --settle-anchor start+labels."""
    from geopath.config import TransitionConfig

    one = {"checkpoint": "c.safetensors", "out": "o"}
    for cls, extra in ((SparsifyConfig, {"anchor": "labels"}), (TransitionConfig, {"plan": "p.yaml"})):
        with pytest.raises(UsageError, match=r"--label-weight: not read by this run \(only --anchor start\+labels"):
            resolve(cls, {}, {**one, **extra, "label_weight": 3.0})
    assert resolve(SparsifyConfig, {}, {**one, "anchor": "start+labels", "label_weight": 3.0}).label_weight == 3.0
    assert resolve(SparsifyConfig, {}, {**one, "settle": "geodesic", "settle_anchor": "start+labels",
                                        "label_weight": 3.0}).label_weight == 3.0


def test_a_peer_config_recorded_with_the_geodesics_resolved_steps_still_replays():
    """Peer runs used to record the geodesic's resolved --step-size and --max-steps (unread); such a config.yaml
    replays, while the same options given by hand to a peer are refused."""
    every = {f.name: getattr(f.default, "value", f.default) for f in dataclasses.fields(SparsifyConfig)}
    old = {**every, **SPARSIFY, "method": "prune-finetune", "arch": "mlp", "step_size": 0.02, "max_steps": 150}
    cfg = resolve(SparsifyConfig, old, {})
    assert cfg.step_size is None and cfg.max_steps is None
    with pytest.raises(UsageError, match="--step-size: not read by this run"):
        resolve(SparsifyConfig, {}, {**SPARSIFY, "method": "prune-finetune", "step_size": 0.02})


@pytest.mark.parametrize("method, settle", [("prune-finetune", "finetune"), ("distill", "finetune"),
                                            ("geodesic", "geodesic")])
def test_a_config_recorded_with_the_former_settle_lr_default_still_replays(method, settle):
    """Runs recorded --settle-lr's former default (0.1, and 0.05 before it) also where they did not read it (a
    peer; geodesic settle steps): such a config.yaml replays, while the same option given by hand is refused."""
    every = {f.name: getattr(f.default, "value", f.default) for f in dataclasses.fields(SparsifyConfig)}
    for old_default in (0.1, 0.05):
        old = {**every, **SPARSIFY, "method": method, "settle": settle, "arch": "mlp", "settle_lr": old_default,
               "step_size": None if method != "geodesic" else 0.02, "max_steps": None if method != "geodesic" else 150}
        if settle == "geodesic":
            old["criterion"] = "magnitude"
        assert resolve(SparsifyConfig, old, {}).settle_lr is None
    with pytest.raises(UsageError, match="--settle-lr: not read by this run"):
        resolve(SparsifyConfig, {}, {**SPARSIFY, "method": method, "settle": settle, "settle_lr": 0.1})
    # a geodesic run that settled by training read it: its value replays as recorded
    kept = {**every, **SPARSIFY, "arch": "mlp", "settle_lr": 0.1, "step_size": 0.02, "max_steps": 150,
            "criterion": "magnitude"}
    assert resolve(SparsifyConfig, kept, {}).settle_lr == 0.1


def test_a_transition_config_recorded_with_settle_lr_under_geodesic_settle_steps_still_replays():
    """Transition runs before --settle-optimizer recorded --settle-lr's default (0.05) under geodesic settle steps,
    which do not read it: such a config.yaml replays (the value dropped); given by hand it is refused; a run that
    settled by training replays the value it read."""
    from geopath.config import TransitionConfig

    every = {f.name: getattr(f.default, "value", f.default) for f in dataclasses.fields(TransitionConfig)}
    old = {**every, "checkpoint": "c.safetensors", "out": "o", "plan": [{"remove": {"layers.0": 5}}], "arch": "mlp",
           "step_size": 0.02, "max_steps": 150, "settle_lr": 0.05}
    for recorded in (old, {k: v for k, v in old.items() if k != "settle"}):
        assert resolve(TransitionConfig, recorded, {}).settle_lr is None
    with pytest.raises(UsageError, match="--settle-lr: not read by this run"):
        resolve(TransitionConfig, {}, {"checkpoint": "c", "out": "o", "plan": "p.yaml", "settle_lr": 0.05})
    trained = resolve(TransitionConfig, {**old, "settle": "finetune"}, {})
    assert trained.settle_lr == 0.05 and trained.settle_optimizer.value == "sgd"


@pytest.mark.parametrize("cls", ["SparsifyConfig", "TransitionConfig"])
def test_switching_the_settle_optimizer_of_a_config_file_needs_its_own_settle_lr(cls):
    """A config file records the settle learning rate resolved for its optimizer (Adam 0.001): replaying it with
    --settle-optimizer sgd alone would run SGD at 0.001, so that is refused until --settle-lr is given too."""
    cls = getattr(config, cls)
    base = {"checkpoint": "c.safetensors", "out": "o", "settle": "finetune"}
    if cls is config.TransitionConfig:
        base["plan"] = [{"remove": {"layers.0": 5}}]
    recorded = {**base, "settle_optimizer": "adam", "settle_lr": 0.001}
    with pytest.raises(UsageError, match="--settle-optimizer sgd: the config file's settle_lr 0.001 is its adam "
                                         "settle's; give --settle-lr for sgd too"):
        resolve(cls, recorded, {"settle_optimizer": "sgd"})
    assert resolve(cls, recorded, {"settle_optimizer": "sgd", "settle_lr": 0.1}).settle_lr == 0.1
    assert resolve(cls, recorded, {"settle_optimizer": "adam"}).settle_lr == 0.001  # the same optimizer: kept
    with pytest.raises(UsageError, match="--settle-optimizer adam: the config file's settle_lr 0.1 is its sgd"):
        resolve(cls, {**base, "settle_lr": 0.1}, {"settle_optimizer": "adam"})  # a file naming no optimizer: SGD's
    assert resolve(cls, base, {"settle_optimizer": "adam"}).settle_lr is None  # resolved by the run: Adam's 0.001


def test_a_config_files_auto_settle_optimizer_records_sgds_rate():
    """sparsify's --settle-optimizer auto records SGD's rate (the rule's input; Adam, where chosen, runs at its
    own): switching such a file to sgd keeps the rate, to adam needs --settle-lr."""
    recorded = {"checkpoint": "c.safetensors", "out": "o", "settle_optimizer": "auto", "settle_lr": 0.1}
    assert resolve(SparsifyConfig, recorded, {"settle_optimizer": "sgd"}).settle_lr == 0.1
    sgd_file = {**recorded, "settle_optimizer": "sgd"}
    assert resolve(SparsifyConfig, sgd_file, {"settle_optimizer": "auto"}).settle_lr == 0.1
    with pytest.raises(UsageError, match="--settle-optimizer adam: the config file's settle_lr 0.1 is its auto"):
        resolve(SparsifyConfig, recorded, {"settle_optimizer": "adam"})
    with pytest.raises(UsageError, match="--settle-optimizer auto: the config file's settle_lr 0.001 is its adam"):
        resolve(SparsifyConfig, {**recorded, "settle_optimizer": "adam", "settle_lr": 0.001},
                {"settle_optimizer": "auto"})
    assert SparsifyConfig(checkpoint="c", out="o").settle_optimizer.value == "auto"
    with pytest.raises(UsageError, match="auto"):  # transition has no rule: sgd or adam
        resolve(config.TransitionConfig, {"checkpoint": "c.safetensors", "out": "o",
                                          "plan": [{"remove": {"layers.0": 5}}]}, {"settle_optimizer": "auto"})


def test_criterion_auto_is_for_one_shot_rankings():
    """--criterion auto chooses between two one-shot rankings: the geodesic's default, open to the one-shot
    magnitude peers; refused by the peers that re-rank by magnitude as they go and by obd (saliency by definition)."""
    assert resolve(SparsifyConfig, {}, {**SPARSIFY, "criterion": "auto", "saliency_samples": 64}).saliency_samples == 64
    assert resolve(SparsifyConfig, {}, {**SPARSIFY, "method": "prune-finetune", "criterion": "auto"})
    for method, message in (("gradual", "--method gradual re-chooses its masks by magnitude; it does not take "
                                        "--criterion auto"),
                            ("obd", "--method obd ranks weights by saliency; it does not take --criterion auto")):
        with pytest.raises(UsageError, match=message):
            resolve(SparsifyConfig, {}, {**SPARSIFY, "method": method, "criterion": "auto"})
