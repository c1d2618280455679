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
    (SparsifyConfig, {"method": "bezier"}, "invalid value 'bezier'"),
])
def test_peer_options_are_checked_when_the_options_are_read(cls, flags, needle):
    base = {"out": "o", "checkpoint": "a", "checkpoint_b": "b"}
    base = {k: v for k, v in base.items() if k in {f.name for f in dataclasses.fields(cls)}}
    with pytest.raises(UsageError, match=needle.replace("(", r"\(")):
        resolve(cls, {}, {**base, **flags})


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
    assert resolve(ConnectConfig, {}, {**base, "method": "bezier", "steps": 20}).steps == 20
    assert resolve(ConnectConfig, {"path": "walk"}, {**base, "steps": 20}).steps == 20
    # --resume reads the run's saved config, which holds every option as it was resolved: never refused
    saved = {**every, **base, "step_size": 0.25, "max_steps": 1200}
    assert resolve(ConnectConfig, saved, {}, resuming=True).step_size == 0.25


def test_a_connect_run_recorded_before_path_existed_walked():
    base = {"checkpoint": "a.safetensors", "checkpoint_b": "b.safetensors", "out": "o"}
    old = {**base, "step_size": 0.25, "max_steps": 1200, "steps": 300}  # a recorded config: no 'path', no 'nodes'
    assert resolve(ConnectConfig, old, {}, resuming=True).path.value == "walk"
    assert resolve(ConnectConfig, {}, base).path.value == "relax"  # a new run: the default
