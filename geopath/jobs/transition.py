"""The ``transition`` job: a chain of hyperplanes, each leg a geodesic (dynamic transitions).

A plan is a list of legs; each changes which units or weights are switched off::

    legs:
      - name: C2
        remove: {features.0: 50}       # 50 more filters of features.0 off
      - name: C3
        remove: {classifier: 4}        # 4 neurons of the classifier off (the 50 filters stay off)
      - name: C4
        restore: {features.0: 30}      # 30 of the removed filters back on
        settle_steps: 200              # per-leg overrides: steps, max_steps, settle_steps, settle_epochs,
                                       #   step_size, beta
      - name: C5
        sparsity: 0.5                  # unstructured: 50 % of all Linear/Conv weights off

``remove`` switches off the units with the smallest weight norm among those still on
(at the leg's start); ``restore`` switches back on the most recently removed units
of that layer; ``sparsity`` sets the unstructured magnitude level (0 lifts it).
Every leg walks from where the previous one ended to its hyperplane, keeping the
*starting* network's function, then settles on it. A zeroed unit has a zero
Jacobian (ReLU′(0) = 0), so a restored weight could never move again by itself:
a restore leg pulls restored weights back to their values in the starting network
during its approach, and frees them on the hyperplane ("the path may move them
again").
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geopath.jobs import common as job
from geopath.core.augment import check_images
from geopath.jobs.settle import settle_by_training
from geopath.jobs.sparsify import ADAM_LR
from geopath.report.text import fmt
from geopath.core.params import ParamSpace, model_vector
from geopath.io.checkpoint import read_tensors, sparsity_of
from geopath.config import Settle, TransitionConfig, load_yaml_file
from geopath.peers.registry import Optimizer
from geopath.errors import UsageError
from geopath.core.evaluate import evaluate, has_batchnorm
from geopath.core.path import walk, walk_before
from geopath.core.targets import HyperplaneTarget, MagnitudeTarget, group_mask, prunable_parameters, unit_groups, unit_norms
from geopath.io.trace import columns

COLUMNS = columns("leg", "leg_name", "train_accuracy", "test_accuracy", "test_loss", "sparsity", "units_off")
HEADLINE = ["test_accuracy", "sparsity", "units_off", "epochs", "wall_time"]
STEP_SCALE = 4.0  # default ε of a leg = (STEP_SCALE · d0 / steps)², d0 the leg's starting distance
OVERRIDES = ("steps", "max_steps", "settle_steps", "settle_epochs", "step_size", "beta")
LEG_KEYS = {"name", "remove", "restore", "sparsity", *OVERRIDES}


@dataclass(frozen=True)
class Leg:
    name: str
    remove: dict[str, int] = field(default_factory=dict)
    restore: dict[str, int] = field(default_factory=dict)
    sparsity: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.remove:
            out["remove"] = dict(self.remove)
        if self.restore:
            out["restore"] = dict(self.restore)
        if self.sparsity is not None:
            out["sparsity"] = self.sparsity
        return {**out, **self.overrides}


def _counts(value, where: str) -> dict[str, int]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise UsageError(f"{where}: expected a mapping LAYER: COUNT")
    out = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UsageError(f"{where}: {k}: {v!r} is not a whole number ≥ 0")
        out[k] = v
    return out


def parse_plan(plan: Any) -> list[Leg]:
    """Legs from a plan: a path to a YAML file, or its contents (a list, or ``{legs: [...]}``)."""
    src = "plan"
    if isinstance(plan, (str, Path)):
        path = Path(plan)
        plan = load_yaml_file(path, "plan")
        src = str(path)
    if isinstance(plan, dict):
        unknown = sorted(set(plan) - {"legs"})
        if unknown:
            raise UsageError(f"{src}: unknown key(s) {', '.join(map(str, unknown))} (a plan has 'legs')")
        plan = plan.get("legs")
    if not isinstance(plan, list) or not plan:
        raise UsageError(f"{src}: a plan needs a non-empty list of legs")
    legs = []
    for i, raw in enumerate(plan, 1):
        where = f"{src}: leg {i}"
        if not isinstance(raw, dict):
            raise UsageError(f"{where}: expected a mapping")
        unknown = sorted(set(map(str, raw)) - LEG_KEYS)
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(LEG_KEYS))})")
        sparsity = raw.get("sparsity")
        if sparsity is not None and (isinstance(sparsity, bool) or not isinstance(sparsity, (int, float))
                                     or not 0 <= sparsity < 1):
            raise UsageError(f"{where}: sparsity must be in [0, 1), got {sparsity!r}")
        _check_overrides(raw, where)
        leg = Leg(name=str(raw.get("name", f"leg{i}")), remove=_counts(raw.get("remove", {}), f"{where}: remove"),
                  restore=_counts(raw.get("restore", {}), f"{where}: restore"),
                  sparsity=None if sparsity is None else float(sparsity),
                  overrides={k: raw[k] for k in OVERRIDES if k in raw})
        if not (leg.remove or leg.restore or leg.sparsity is not None):
            raise UsageError(f"{where}: a leg needs remove, restore or sparsity")
        legs.append(leg)
    return legs


def _check_overrides(raw: dict, where: str) -> None:
    """A leg's overrides of the run's options: each given must hold a value (``steps:`` with nothing after it, a
    YAML null, is refused, not read as unset), whole numbers whole, the rest finite."""
    for key, low in (("steps", 1), ("max_steps", 1), ("settle_steps", 0)):
        v = raw.get(key)
        if key in raw and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise UsageError(f"{where}: {key} must be a whole number ≥ {low}, got {v!r}")
    for key in ("step_size", "beta"):
        v = raw.get(key)
        if key in raw and (isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < math.inf)):
            raise UsageError(f"{where}: {key} must be a finite number > 0, got {v!r}")
    v = raw.get("settle_epochs")
    if "settle_epochs" in raw and (isinstance(v, bool) or not isinstance(v, (int, float))
                                   or not (0 <= v < math.inf)):
        raise UsageError(f"{where}: settle_epochs must be a finite number ≥ 0, got {v!r}")


@dataclass
class Switchboard:
    """Which units are off (per layer, in removal order) and the unstructured sparsity level."""

    removed: dict[str, list[int]] = field(default_factory=dict)
    sparsity: float = 0.0

    def apply(self, leg: Leg, model, space: ParamSpace, w: torch.Tensor) -> None:
        """Switch units off and on as ``leg`` says (all or nothing: a bad leg changes nothing)."""
        removed = {k: list(v) for k, v in self.removed.items()}
        restored: dict[str, set[int]] = {}  # (units a leg brings back are not what it removes: still zero in w)
        for layer, k in leg.restore.items():
            have = removed.get(layer, [])
            if k > len(have):
                raise UsageError(f"leg {leg.name!r}: cannot restore {k} units of {layer!r}, only {len(have)} are off")
            removed[layer], restored[layer] = have[: len(have) - k], set(have[len(have) - k:])
        for layer, k in leg.remove.items():
            try:
                groups = unit_groups(model, space, layer, batchnorm=False)
            except UsageError as e:
                raise UsageError(f"leg {leg.name!r}: {e}") from None
            off = set(removed.get(layer, [])) | restored.get(layer, set())
            on = [i for i in range(len(groups)) if i not in off]
            if k > len(on) - 1:
                back = f", not counting the {len(restored[layer])} it restores" if restored.get(layer) else ""
                raise UsageError(f"leg {leg.name!r}: cannot remove {k} more units of {layer!r} ({len(on)} are on"
                                 f"{back}; one must stay)")
            norms = unit_norms(groups[on], w)
            chosen = [on[i] for i in torch.argsort(norms, stable=True)[:k].tolist()]
            removed[layer] = removed.get(layer, []) + chosen
        self.removed = removed
        if leg.sparsity is not None:
            self.sparsity = leg.sparsity

    def unit_mask(self, model, space: ParamSpace, like: torch.Tensor) -> torch.Tensor:
        """The coordinates of the switched-off units' groups."""
        return group_mask([unit_groups(model, space, layer)[units] for layer, units in self.removed.items()], like)

    def mask(self, model, space: ParamSpace, w: torch.Tensor, revive: torch.Tensor | None = None,
             w_start: torch.Tensor | None = None) -> torch.Tensor:
        """The coordinates held at zero: switched-off units, then magnitude sparsity.

        The magnitude part is chosen from ``w`` with switched-off units at zero and the
        ``revive`` coordinates (units just switched back on, still zero in ``w``) at their
        ``w_start`` values, so units coming back on are not picked as the smallest weights.
        """
        mask = self.unit_mask(model, space, w)
        if self.sparsity > 0:
            names = prunable_parameters(model)
            slices = space.slices()
            prunable = torch.zeros_like(mask)
            for name in names:
                prunable[slices[name]] = True
            total, units = int(prunable.sum()), int((mask & prunable).sum())
            more = int(round(self.sparsity * total)) - units  # the switched-off units count toward the level
            if more > 0:
                # the rest among the weights of units still on (their zeros would tie with the units')
                w_eff = torch.where(mask, torch.full_like(w, math.inf), w)
                if revive is not None:
                    w_eff = torch.where(revive, w_start, w_eff)
                mask |= MagnitudeTarget(space, w_eff, more / total, names).mask
        return mask

    def to_dict(self) -> dict[str, Any]:
        return {"removed": {k: list(v) for k, v in self.removed.items()}, "sparsity": self.sparsity}


# --settle-lr's default by --settle-optimizer (the settle by training; geodesic settle steps read none)
DEFAULT_SETTLE_LR = {Optimizer.SGD: 0.05, Optimizer.ADAM: ADAM_LR}  # (Adam's: sparsify's settle rate)


def settle_lr_of(cfg: TransitionConfig) -> float | None:
    """The settle learning rate a run uses and records: ``--settle-lr``, else :data:`DEFAULT_SETTLE_LR` of
    ``--settle-optimizer``; ``None`` with ``--settle geodesic`` (nothing reads it)."""
    if cfg.settle is Settle.GEODESIC:
        return cfg.settle_lr
    return cfg.settle_lr if cfg.settle_lr is not None else DEFAULT_SETTLE_LR[cfg.settle_optimizer]


def leg_target(prev_mask: torch.Tensor, mask: torch.Tensor, w_start: torch.Tensor) -> HyperplaneTarget:
    """The leg's hyperplane: ``mask`` at zero; weights coming back on pulled to ``w_start``, then freed."""
    restored = prev_mask & ~mask
    values = torch.where(restored, w_start, torch.zeros_like(w_start))
    return HyperplaneTarget(mask | restored, values=values, free=~mask)


class Transition(job.Job):
    name, columns, headline, gate_on = "transition", COLUMNS, HEADLINE, "test_accuracy"

    @staticmethod
    def text(s: dict) -> list[str]:
        return [f"start:           test accuracy {fmt(s['start_test_accuracy'])}",
                *[f"leg {leg['leg']} {leg['name']:<10} test accuracy {fmt(leg['test_accuracy'])}   units off "
                  f"{leg['units_off']}   sparsity {fmt(leg['sparsity'])}   step {leg['step']}   "
                  f"-> {Path(s['out']) / leg['file']}" for leg in s["legs"]],
                f"final network:   {Path(s['out']) / s['final']}   epochs of data: {s['epochs']:.2f}"]

    def prepare(self, cfg: TransitionConfig, device) -> job.Setup:
        legs = parse_plan(cfg.plan)
        unread = "settle_epochs" if cfg.settle is Settle.GEODESIC else "settle_steps"  # (as the flags are refused)
        for i, leg in enumerate(legs, 1):
            if unread in leg.overrides:
                raise UsageError(f"leg {i} ({leg.name}): {unread} is not read with --settle {cfg.settle.value} "
                                 f"({'settle_steps' if unread == 'settle_epochs' else 'settle_epochs'} is)")
        ck = job.load(cfg, cfg.checkpoint)
        cfg = job.with_reading(cfg, ck)
        data_name, metric, test, train_eval = job.single_task_data(cfg, ck, device)
        check_images(cfg.settle_augment, tuple(metric.x.shape[1:]))
        reference = job.frozen_copy(ck.model, device)
        model = ck.model.to(device)
        space = ParamSpace.of(model)
        w_start = model_vector(model, space)
        # validate the whole plan against the model before walking (a typo fails now, not hours later)
        dry = Switchboard()
        for leg in legs:
            dry.apply(leg, model, space, w_start)
        cfg = dataclasses.replace(cfg, plan=[leg.to_dict() for leg in legs], data=data_name,
                                  eval_data=job.recorded(cfg.eval_data), normalize=metric.preprocess, arch=ck.arch,
                                  arch_kwargs=ck.arch_kwargs, checkpoint=str(ck.path.resolve()),
                                  settle_lr=settle_lr_of(cfg))
        layers = sorted({layer for leg in legs for layer in (*leg.remove, *leg.restore)})

        def evaluate_row(net) -> dict:
            ev = evaluate(net, test, device=device)
            return {"test_accuracy": ev.accuracy, "test_loss": ev.loss, "sparsity": sparsity_of(net),
                    "train_accuracy": evaluate(net, train_eval, device=device).accuracy if train_eval else math.nan,
                    "units_off": units_off(net, layers)}

        bn_data = metric.head(cfg.bn_samples) if has_batchnorm(model) else None
        total = sum(sum(_leg_budget(cfg, leg)) for leg in legs)
        return job.Setup(cfg, model, ck.arch, ck.arch_kwargs, ck.sha256, data_name, evaluate_row, len(metric),
                         bn_data, total, own={"legs": legs, "metric": metric, "reference": reference, "space": space,
                                              "w_start": w_start, "board": Switchboard(), "done": []},
                         preprocess=metric.preprocess, carry=job.carried(ck))

    def begin(self, setup: job.Setup, writer, resume: bool, geodesic: bool):
        """A resumed chain continues in the leg it stopped in, or after the last leg it completed."""
        if not resume:
            return super().begin(setup, writer, resume, geodesic)
        own = setup.own
        done = json.loads((writer.out / "legs.json").read_text()) if (writer.out / "legs.json").is_file() else []
        listed = {d["file"] for d in done}
        state, tensors, row = job.resume_state(writer, setup.parent_sha256,
                                               accept=lambda rel: rel.startswith("steps/") or rel in listed)
        setup.model.load_state_dict(tensors)
        if row["checkpoint"] in listed:  # a completed leg: the next one starts from its endpoint
            done = done[: int(row["leg"])]
            state = dataclasses.replace(state, landed_at=None, milestone=0, landing_gap=None)
        else:
            done = done[: int(row.get("leg", 1)) - 1]
            if state.landed_at is not None and setup.cfg.settle is not Settle.GEODESIC:
                raise UsageError(f"{writer.out}: the run stopped after landing in leg {row.get('leg', 1)}, during "
                                 f"--settle {setup.cfg.settle.value} (the optimizer's state is not saved); start it "
                                 "again with --overwrite")
        if done:
            own["board"] = Switchboard({k: list(v) for k, v in done[-1]["switchboard"]["removed"].items()},
                                       done[-1]["switchboard"]["sparsity"])
        own["done"] = done
        return state

    def walk(self, setup: job.Setup, recorder, state, device) -> job.Outcome:
        cfg, own, model = setup.cfg, setup.own, setup.model
        legs, space, w_start, board, done = own["legs"], own["space"], own["w_start"], own["board"], own["done"]
        writer = recorder.writer
        w_end = None
        for i in range(len(done), len(legs)):
            leg = legs[i]
            if i == 0:
                w_leg = w_start
            elif w_end is not None:  # the previous leg's endpoint, as saved
                w_leg = w_end
            else:  # resuming: read it back
                w_leg = space.flatten(read_tensors(writer.out / done[-1]["file"])[0]).to(device)
            prev_mask, prev_units = board.mask(model, space, w_leg), board.unit_mask(model, space, w_leg)
            board.apply(leg, model, space, w_leg)
            revive = prev_units & ~board.unit_mask(model, space, w_leg)
            target = leg_target(prev_mask, board.mask(model, space, w_leg, revive, w_start), w_start)
            max_steps, settle = _leg_budget(cfg, leg)
            by_training = cfg.settle is not Settle.GEODESIC
            final_path = f"legs/leg_{i + 1:02d}_{_safe(leg.name)}.safetensors"
            step_size = leg.overrides.get("step_size", cfg.step_size)
            steps = int(leg.overrides.get("steps", cfg.steps))
            if step_size is None:
                step_size = job.default_step_size(target.distance(w_leg), steps, STEP_SCALE)
            leg_start = done[-1]["step"] if done else 0
            pcfg = job.path_config(dataclasses.replace(cfg, beta=float(leg.overrides.get("beta", cfg.beta))),
                                   float(step_size), leg_start + max_steps, settle_steps=0 if by_training else settle,
                                   grow_after=leg_start + steps, grow_every=steps)
            leg_recorder = recorder.replace(extra={"leg": i + 1, "leg_name": leg.name})
            with walk_before(f"leg {i + 1}'s --settle {cfg.settle.value} training", by_training):
                result = walk(model, target, own["metric"], pcfg, leg_recorder,
                              reference=own["reference"], state=state, device=device,
                              record_start=(i == 0 and state is None), origin=w_leg,
                              final_path=f"steps/leg_{i + 1:02d}_landed.safetensors" if by_training else final_path)
            final = result.final
            if by_training:  # masked SGD on the leg's hyperplane: its zeros stay, restored weights train
                leg_cfg = dataclasses.replace(cfg, settle_epochs=float(leg.overrides.get("settle_epochs",
                                                                                         cfg.settle_epochs)))
                final = settle_by_training(leg_cfg, model, target, own["metric"], own["reference"], result,
                                           leg_recorder, device, final_path=final_path, held=~target.free())
            done.append({"leg": i + 1, "name": leg.name, "file": final["checkpoint"], **leg.to_dict(),
                         "switchboard": board.to_dict(), **{k: final[k] for k in
                         ("step", "test_accuracy", "test_loss", "sparsity", "units_off", "epochs")},
                         # (epochs: the chain's so far; leg_epochs: this leg's own)
                         "leg_epochs": final["epochs"] - (done[-1]["epochs"] if done else 0.0)})
            writer.write_json("legs.json", done)
            w_end = model_vector(result.model, space)
            state = dataclasses.replace(result.state, landed_at=None, milestone=0, landing_gap=None)
        writer.copy_network(done[-1]["file"], "final.safetensors")
        return job.Outcome(writer.trace.rows()[-1])

    def summarise(self, setup: job.Setup, writer, outcome: job.Outcome) -> dict[str, Any]:
        final = outcome.final
        return {
            "legs": [{k: d.get(k) for k in ("leg", "name", "step", "test_accuracy", "sparsity", "units_off", "epochs",
                                            "leg_epochs", "file")} for d in setup.own["done"]],
            "start_test_accuracy": writer.trace.rows()[0]["test_accuracy"],
            **{k: final[k] for k in ("step", "test_accuracy", "test_loss", "sparsity", "units_off", "length",
                                      "sample_passes", "epochs", "wall_time")},
        }


JOB = Transition()
run_transition = JOB.run


def _leg_budget(cfg: TransitionConfig, leg: Leg) -> tuple[int, int]:
    """(approach steps at most, settle steps) of a leg."""
    steps = int(leg.overrides.get("steps", cfg.steps))
    return int(leg.overrides.get("max_steps", cfg.max_steps or 3 * steps)), int(leg.overrides.get("settle_steps",
                                                                                                   cfg.settle_steps))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40] or "leg"


def units_off(model, layers: list[str]) -> int:
    """Units of ``layers`` whose whole group (weights, bias, BatchNorm channel) is exactly zero."""
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    return sum(int((w[unit_groups(model, space, layer)] == 0).all(1).sum()) for layer in layers)
