"""Run options: one frozen dataclass per job, filled from defaults < YAML < flags.

``--config run.yaml`` gives values, flags override them, and the fully resolved
options are written to ``OUT/config.yaml`` (so ``geopath JOB --config
OUT/config.yaml`` repeats a run). Unknown keys and wrong types are usage errors.

Each field carries its help text; :mod:`geopath.cli` builds every command's flags
from these classes, so the config file and the flags cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
import warnings
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from geopath.errors import UsageError
from geopath.io.preprocess import PREPROCESS_HELP, parse_image_size, parse_preprocess
from geopath.peers import registry
from geopath.core.choices import (ARCH_SPECS, Anchor, Augment, BNStats, Combine, ConnectPath, JVPMode, MaskScope,
                                  MetricKind, TRMethod)


def opt(default, help: str, *, arg: bool = False, flag: str | None = None, short: str | None = None,
        default_help: str | None = None, cli: bool = True, envvar: str | None = None, example: str | None = None):
    """A config field with its command-line help (``arg``: a positional argument; ``envvar``: the
    environment variable that gives the flag's value; ``example``: shown when a JSON value is malformed)."""
    meta = {"help": help, "arg": arg, "flag": flag, "short": short, "default_help": default_help, "cli": cli,
            "envvar": envvar, "example": example}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- choices


class Criterion(str, Enum):
    """How the weights that go are ranked (unstructured targets)."""

    MAGNITUDE = "magnitude"
    """Smallest ``|w|`` first."""
    SALIENCY = "saliency"
    """Smallest ``w² · [g]_qq`` first: the function's cost of removing each weight (Optimal Brain Damage's
    saliency with the metric's diagonal, estimated on ``--saliency-samples`` inputs)."""
    AUTO = "auto"
    """Saliency where, applied in one shot, it keeps more of the starting network's top-1 predictions on
    ``--saliency-samples`` other inputs than magnitude does by more than chance (a one-sided sign test on the
    inputs only one of the two keeps, p < 0.05), else magnitude (label-free; the rule and its figures are in the
    summary)."""


class Settle(str, Enum):
    """How the path settles on the hyperplane after landing (``sparsify``)."""

    GEODESIC = "geodesic"
    """``--settle-steps`` geodesic steps restricted to the hyperplane, back toward the start's function."""
    FINETUNE = "finetune"
    """``--settle-epochs`` of masked SGD on the labels (cross-entropy), from the landed network."""
    DISTILL = "distill"
    """``--settle-epochs`` of masked SGD on the start network's outputs alone (no labels; T = 2)."""
    AUTO = "auto"
    """``sparsify``'s default: ``distill`` when the start reproduces its labels on nearly every training input
    (it has fitted them, so its outputs hold the labels and more), else ``finetune``; always ``finetune`` when
    whole units go (``--structured``) (:func:`geopath.jobs.sparsify.choose_settle`)."""


class SettleOptimizer(str, Enum):
    """The optimizer of ``sparsify``'s settle by training."""

    SGD = "sgd"
    """SGD with momentum 0.9 at ``--settle-lr``."""
    ADAM = "adam"
    """Adam (default learning rate 0.001)."""
    AUTO = "auto"
    """``sparsify``'s default: Adam where SGD's learning rate times the start network's sharpness (the largest
    eigenvalue of its softmax Fisher on 256 training inputs) exceeds 2.5 and, settling on the labels, the start's
    cross-entropy on those inputs is below ln(classes)/6; else SGD
    (:func:`geopath.jobs.sparsify.choose_settle_optimizer`)."""


SETTLE_WARMUP_HELP = ("--settle finetune/distill: the fraction of the SGD steps over which the learning rate rises "
                      "linearly to --settle-lr before its cosine decay (0: none).")


SETTLE_AVERAGE_HELP = ("--settle finetune/distill: end on the average of the weights over this last fraction of the "
                       "SGD steps (stochastic weight averaging; 0: the last step's weights).")


SETTLE_AUGMENT_HELP = ("--settle finetune/distill on images: train on random views of every batch (flip: half "
                       "mirrored; crop: shifted by up to an eighth of the side, zero border; crop-flip: both; the "
                       "teacher sees the same view; none: the stored inputs).")


SETTLE_HOLDOUT_HELP = ("--settle finetune/distill: hold this fraction of the metric inputs out of the SGD and end on "
                       "the recorded network with the lowest settle loss on them (early stopping; 0: off).")


class MaskMode(str, Enum):
    """Whether the set of pruned weights may change along the path."""

    FIXED = "fixed"
    """Chosen once from the starting network's magnitudes."""
    DYNAMIC = "dynamic"
    """Re-chosen from the current magnitudes before every step."""


SparsifyMethod = registry.method_enum("sparsify", "SparsifyMethod", "geopath: a geodesic to the sparse hyperplane.")
MergeMethod = registry.method_enum("merge", "MergeMethod",
                                   "geopath: a geodesic from A toward B on the chosen functional manifold(s).")


class Manifold(str, Enum):
    """Whose function a merge path keeps (where its metric batches come from)."""

    A = "a"
    """Task A's inputs, anchored to network A's outputs."""
    B = "b"
    """Task B's inputs, anchored to network B's outputs."""
    BOTH = "both"
    """Both: A's inputs anchored to A, B's inputs anchored to B (see --combine)."""


class Head(str, Enum):
    """How the two tasks of a merge share the output layer."""

    SHARED = "shared"
    """The same outputs serve both tasks (each task's labels index them)."""
    SPLIT = "split"
    """One 2C-way head: task A's classes are 0..C-1, task B's are C..2C-1."""


class SelectRule(str, Enum):
    """Which network of a merge path is reported and saved as ``best.safetensors``."""

    MAX_MIN = "max-min"
    """The largest worse-of-both-tasks accuracy."""
    MEAN = "mean"
    """The largest mean accuracy over both tasks."""
    PARETO = "pareto"
    """The Pareto-optimal network nearest the ideal point (best A, best B)."""


ConnectMethod = registry.method_enum("connect", "ConnectMethod", "geopath: a geodesic that keeps the endpoints' "
                                     "function, landing exactly on B.")


# --------------------------------------------------------------------------- options

ARCH_KWARGS_EXAMPLE = '{"num_classes": 10}'


def with_peers(job: str):
    """Give a job's options class its peers' options (:mod:`geopath.peers.registry`), after its own fields.

    A peer option's help names the peers that take it; its bounds are checked by ``validate``, and
    so is the chosen peer's own check of the options together."""

    def add(cls):
        extra = []
        for o in registry.options_of(job):
            users = ", ".join(registry.users_of(job, o.name))
            extra.append((o.name, o.type, opt(o.default, f"{users}: {o.help[0].lower()}{o.help[1:]}",
                                                 default_help=o.default_help)))

        def validate(self):
            cls.validate(self)
            for o in registry.options_of(job):
                o.check(getattr(self, o.name))
            method = getattr(self.method, "value", self.method)
            if method != registry.GEODESIC:
                peer = registry.get(job, method)
                if peer.check is not None:
                    peer.check(self)
            return self

        return dataclasses.make_dataclass(cls.__name__, extra, bases=(cls,), frozen=True, namespace={
            "validate": validate, "JOB": job, "PEER_OPTIONS": tuple(o.name for o in registry.options_of(job)),
            "__doc__": cls.__doc__, "__module__": cls.__module__, "__qualname__": cls.__qualname__})

    return add


@dataclass(frozen=True)
class CommonOptions:
    out: str = opt("", "Output directory (must be empty unless --overwrite/--resume).", flag="--out", short="-o")
    arch: str | None = opt(None, f"Architecture (if a file does not name one, or to build yours): {ARCH_SPECS} (a "
                                 "class or a function returning the network).")
    arch_kwargs: dict | None = opt(None, "Architecture keyword arguments as a JSON object.",
                                   example=ARCH_KWARGS_EXAMPLE)
    trust_pickle: bool = opt(False, "Allow unpickling a .pt file (only for files you trust).")
    normalize: str | None = opt(None, PREPROCESS_HELP, default_help="the checkpoint's record, else dataset")
    image_size: str | None = opt(None, "Image folders: resize every image to S or H,W pixels.",
                                 default_help="the images' own (all alike)")
    channels: int | None = opt(None, "Image folders: 1 (grayscale) or 3 (RGB) channels.",
                               default_help="the first image's")
    download: bool = opt(False, "Download a named data set that is not found (torchvision's downloader; needs a "
                                "network).")
    trust_code: bool = opt(False, "Build the architecture a checkpoint's metadata names even when it is code outside "
                                  "geopath and torchvision (only for files you trust; --arch names it instead).")
    data_root: str | None = opt(None, "Folder with the data sets (torchvision layout); also $GEOPATH_DATA_ROOT.",
                                default_help="$GEOPATH_DATA_ROOT, ./data, ../shared/data", envvar="GEOPATH_DATA_ROOT")
    eval_size: int | None = opt(None, "Evaluate on the first N test samples.", default_help="all")
    save_every: int = opt(10, "Save a network and a trace row every K steps.")
    seed: int = opt(0, "Random seed.")
    device: str = opt("cpu", "cpu or cuda.")
    min_accuracy: float | None = opt(None, "Exit with code 3 if the run's headline accuracy is below this.")

    def __post_init__(self):  # library callers may pass plain strings for choices
        for name, tp in typing.get_type_hints(type(self)).items():
            value = getattr(self, name)
            if value is not None and type(None) in typing.get_args(tp):  # Choice | None
                tp = next(a for a in typing.get_args(tp) if a is not type(None))
            if isinstance(tp, type) and issubclass(tp, Enum) and not isinstance(value, tp):
                object.__setattr__(self, name, _coerce(name, tp, value))

    def validate(self):
        if not self.out:
            raise UsageError("an output directory is required (-o/--out)")
        for f in fields(self):  # no option takes NaN or an infinity (inf epochs overflowed deep in a run)
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise UsageError(f"--{f.name.replace('_', '-')} must be a finite number, got {v}")
        _positive(self, "save_every")
        _positive_or_none(self, "eval_size")
        check_seed(self.seed)
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:
            raise UsageError(f"--min-accuracy must be in [0, 1], got {self.min_accuracy}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UsageError(f"--device must be cpu or cuda, got {self.device!r}")
        parse_preprocess(self.normalize)
        parse_image_size(self.image_size)
        if self.channels is not None and self.channels not in (1, 3):
            raise UsageError(f"--channels must be 1 or 3, got {self.channels}")
        return self

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.value if isinstance(v, Enum) else v
        return out


@dataclass(frozen=True)
class WalkOptions(CommonOptions):
    """Options of a geodesic walk, shared by every job."""

    metric_size: int | None = opt(None, "Use only the first N metric inputs (train split).", default_help="all")
    beta: float = opt(1.0, "Pull towards the target, β.")
    step_size: float | None = opt(None, "Trust region ε, the bound on θᵀθ per step.",
                                  default_help="set from the starting distance and --steps")
    steps: int = opt(50, "Planned steps (sets the default step size).")
    max_steps: int | None = opt(None, "Approach steps at most.", default_help="a multiple of --steps; sparsify: "
                                "--steps when it settles by training (--settle-epochs > 0) at a constant β")
    tol: float = opt(0.03, "The target is reached when the distance is below tol × the starting distance.")
    beta_growth: float = opt(1.0, "Past --steps approach steps, β is multiplied by this factor per --steps steps "
                                  "(a path that stalls is pulled on harder; 1: constant β).")
    cg_iters: int = opt(5, "CG iterations per step.")
    cg_rtol: float = opt(1e-4, "Relative residual at which CG stops early.")
    damping: float = opt(0.0, "Damping λ: the metric becomes g + λI.")
    metric: MetricKind = opt(MetricKind.LOGITS, "Output metric pulled back: logits (JᵀJ) or fisher.")
    solver: TRMethod = opt(TRMethod.STEIHAUG, "Trust-region solver.")
    anchor: Anchor = opt(Anchor.START, "What functional change is measured against: the start network's outputs, "
                                       "the endpoints' blended outputs (connect), the labels, both the start's "
                                       "outputs and the labels (start+labels), or only locally.")
    label_weight: float = opt(1.0, "λ of --anchor start+labels: r = (z − z_start) + λ (softmax(z) − onehot(y)).")
    batch_size: int = opt(128, "Metric batch size.")
    micro_batch: int | None = opt(None, "Split metric batches into micro-batches of at most this size (near-equal "
                                     "sizes): products are accumulated over them and only one micro-batch's "
                                     "activations are held (one more forward pass per product).")
    bn_stats: BNStats = opt(BNStats.BATCH, "BatchNorm in metric products: the batch's own statistics (the function "
                                           "with fresh running statistics) or the stored running statistics.")
    bn_samples: int = opt(2000, "Samples used to re-estimate BatchNorm statistics at every evaluated network.")
    jvp: JVPMode = opt(JVPMode.AUTO, "How a metric product computes J u: forward-mode AD, reverse: the transpose "
                                     "of the step's cached VJP (checked against forward mode once), layerwise: each "
                                     "layer's own rule on the graph torch.fx traces (checked against torch.func once; "
                                     "a network it cannot follow uses reverse or forward), or auto: layerwise on "
                                     "the CPU; on a GPU reverse for networks without BatchNorm, else forward.")

    ENDPOINTS_ANCHOR = False  # --anchor endpoints needs two endpoint networks (connect)

    def validate(self):
        super().validate()
        if self.anchor is Anchor.ENDPOINTS and not self.ENDPOINTS_ANCHOR:
            raise UsageError("--anchor endpoints is for connect; this job takes start, labels, start+labels or none")
        if self.step_size is not None and not self.step_size > 0:
            raise UsageError(f"--step-size must be > 0, got {self.step_size}")
        for name in ("steps", "cg_iters", "batch_size", "bn_samples"):
            _positive(self, name)
        for name in ("max_steps", "micro_batch", "metric_size"):
            _positive_or_none(self, name)
        if not self.beta > 0:
            raise UsageError(f"--beta must be > 0, got {self.beta}")
        if not self.beta_growth >= 1:
            raise UsageError(f"--beta-growth must be ≥ 1, got {self.beta_growth}")
        if self.damping < 0:
            raise UsageError(f"--damping must be ≥ 0, got {self.damping}")
        if not self.label_weight >= 0:
            raise UsageError(f"--label-weight must be ≥ 0, got {self.label_weight}")
        if not 0 < self.tol < 1:
            raise UsageError(f"--tol must be in (0, 1), got {self.tol}")
        return self


@with_peers("sparsify")
@dataclass(frozen=True)
class SparsifyConfig(WalkOptions):
    COMMAND, RUNNER = "sparsify", "geopath.jobs.sparsify"  # ``geopath sparsify`` runs geopath.jobs.sparsify.JOB
    HELP = "Walk a trained network to a sparse network along a geodesic."

    checkpoint: str = opt("", "Trained network (.safetensors, .pt, .pth).", arg=True)
    method: SparsifyMethod = opt(SparsifyMethod.GEODESIC, "geodesic (geopath) or a peer to compare against.")
    data: str | None = opt(None, "Inputs for the metric: mnist, fashion-mnist, cifar10, PATH.npz or an image folder.",
                           default_help="the checkpoint's")
    eval_data: str | None = opt(None, "Labelled test set for accuracy.", default_help="--data")
    train_eval_size: int = opt(5000, "Train accuracy on the first N metric inputs (0: off).")
    sparsity: float = opt(0.7, "Fraction of weights to zero, in [0, 1).")
    scope: MaskScope = opt(MaskScope.GLOBAL, "Unstructured: global or per-layer magnitude.")
    mask: MaskMode = opt(MaskMode.FIXED, "Unstructured mask fixed at the start or re-chosen each step.")
    criterion: Criterion | None = opt(None, "Unstructured: which weights go first: smallest magnitude, smallest "
                                            "saliency w²·g_qq (g_qq: the metric's diagonal), or auto: saliency when, "
                                            "pruned in one shot, it keeps more of the start's predictions than "
                                            "magnitude does by more than chance (sign test, p < 0.05), else "
                                            "magnitude.",
                                      default_help="magnitude (saliency for obd)")
    saliency_samples: int = opt(1024, "Inputs the metric's diagonal is estimated on (--criterion saliency, auto); "
                                      "auto compares the two rankings on as many others.")
    layers: list | None = opt(None, "Prune only these parameters (repeatable, e.g. layers.0.weight): --sparsity is "
                                    "their share; the run reports the whole network's sparsity and theirs.",
                              flag="--layer")
    structured: str | None = opt(None, "Remove whole units instead: LAYER:COUNT[,LAYER:COUNT] (e.g. features.0:50).")
    settle_steps: int = opt(150, "Steps on the target after landing.")
    settle: Settle = opt(Settle.AUTO, "After landing: geodesic steps on the hyperplane, or masked SGD on the "
                                      "labels (finetune) or on the start's outputs (distill); auto: distill when the "
                                      "start classifies ≥ 99.8 % of 2,048 training inputs right (it has fitted its "
                                      "labels) and no --structured, else finetune.")
    settle_anchor: Anchor | None = opt(None, "The anchor of geodesic settle steps (e.g. labels).",
                                       default_help="--anchor")
    settle_epochs: float = opt(2.5, "Epochs of masked SGD after landing (--settle finetune or distill).")
    budget: float | None = opt(None, "About B epochs of sample passes in all: sets --steps 5·B (rounded, at least "
                                     "5) and --settle-epochs 0.875·B, the rule bench/suite.py measures the geodesic "
                                     "by (4.87 epochs at B = 5 on the MNIST MLPs; the summary's epochs say what a "
                                     "run spent); for a training settle. Below B = 1 the 5-step floor and the rules' "
                                     "fixed cost (about 0.07 epochs of MNIST) spend more (0.32 epochs at B = 0.2).",
                               default_help="--steps and --settle-epochs as given")
    settle_lr: float | None = opt(None, "Learning rate of --settle finetune/distill (cosine decay).",
                                  default_help="SGD's: 0.1; 0.05 with --structured or on the start's outputs "
                                               "(distill). 0.001 with --settle-optimizer adam (where auto chooses "
                                               "Adam, it runs at 0.001)")
    settle_optimizer: SettleOptimizer = opt(SettleOptimizer.AUTO, "Optimizer of --settle finetune/distill: sgd "
                                                                  "(momentum 0.9), adam, or auto: Adam where SGD's "
                                                                  "rate × the start's sharpness (the top eigenvalue "
                                                                  "of its softmax Fisher) exceeds 2.5 and, settling "
                                                                  "on the labels, the start's training loss is below "
                                                                  "ln(classes)/6 (it has finished training); else "
                                                                  "SGD.")
    settle_warmup: float = opt(0.0, SETTLE_WARMUP_HELP)
    settle_average: float = opt(0.0, SETTLE_AVERAGE_HELP)
    settle_prune: float | None = opt(None, "--settle finetune/distill, unstructured: leave this fraction of the "
                                           "weights to remove to the settle, which removes them gradually (sparsity "
                                           "on a cubic schedule over its first --settle-prune-until, the mask "
                                           "re-chosen by the run's ranking 40 times); the walk lands at the rest (0: "
                                           "the walk lands on the whole target).",
                                       default_help="0.2 (0 with --structured, --mask dynamic or --settle geodesic)")
    settle_prune_until: float | None = opt(None, "--settle-prune: the fraction of the settle's steps over which the "
                                                 "sparsity grows; the rest trains on the final mask.",
                                           default_help="0.75 on the labels (finetune), 0.5 on the start's outputs "
                                                        "(distill)")
    settle_holdout: float = opt(0.0, SETTLE_HOLDOUT_HELP)
    settle_augment: Augment = opt(Augment.NONE, SETTLE_AUGMENT_HELP)

    def __post_init__(self):
        super().__post_init__()
        if _budget_valid(self.budget):  # (a bad value is validate's error) fill in what the budget sets
            steps, epochs = budget_rule(self.budget)
            defaults = {f.name: f.default for f in fields(self)}
            if self.steps == defaults["steps"]:
                object.__setattr__(self, "steps", steps)
            if self.settle_epochs == defaults["settle_epochs"]:
                object.__setattr__(self, "settle_epochs", epochs)

    def validate(self):
        super().validate()
        if not self.checkpoint:
            raise UsageError("a checkpoint is required")
        _settle_checks(self)
        _budget_checks(self)
        if self.settle_prune is not None and not 0.0 <= self.settle_prune < 1.0:
            raise UsageError(f"--settle-prune must be in [0, 1), got {self.settle_prune}")
        if self.settle_prune_until is not None and not 0.0 < self.settle_prune_until <= 1.0:
            raise UsageError(f"--settle-prune-until must be in (0, 1], got {self.settle_prune_until}")
        if self.settle_augment is not Augment.NONE and self.method is not SparsifyMethod.GEODESIC:
            raise UsageError(f"--settle-augment is an option of the geodesic's settle; --method {self.method.value} "
                             "does not take it")
        if not 0.0 <= self.sparsity < 1.0:
            raise UsageError(f"--sparsity must be in [0, 1), got {self.sparsity}")
        for name in ("settle_steps", "train_eval_size"):
            _non_negative(self, name)
        if self.saliency_samples < 1:
            raise UsageError(f"--saliency-samples must be ≥ 1, got {self.saliency_samples}")
        if self.structured is not None:  # (an empty one ran as unstructured; a count of 0 removed nothing)
            from geopath.core.targets import parse_structured

            parse_structured(self.structured, required=True)
        if self.layers is not None and (not self.layers or not all(isinstance(n, str) and n.strip()
                                                                     for n in self.layers)):
            raise UsageError("--layer names a parameter to prune (e.g. layers.0.weight); got "
                             f"{'none' if not self.layers else 'an empty name'}")
        return self

    def refuse_unread(self, given: set[str]) -> None:
        """An option this run would not read is an error, not ignored (among those ``given`` away from their
        defaults): a peer reads none of the geodesic's step and settle options, and only its own peer options;
        the geodesic reads no peer option, and only the options of its ``--settle``; the metric's diagonal
        (``--metric`` for a peer, ``--saliency-samples``) only where weights are ranked by saliency."""
        method, criterion = _value(self.method), _value(self.criterion)
        geodesic = method == registry.GEODESIC
        saliency = not self.structured and (method == "obd" or criterion in (Criterion.SALIENCY.value,
                                                                              Criterion.AUTO.value))
        unread = _unread_by_method(self, [name for name in WALK_ONLY if name != "metric"])
        if geodesic:
            unread.update(_unread_settle(self))
            if self.settle is not Settle.GEODESIC and self.settle_epochs == 0:  # (a transition's leg may train)
                unread.update({name: "there is no settle (--settle-epochs 0)" for name in SETTLE_BY_TRAINING
                               if name != "settle_epochs"})
        else:
            unread.update({name: f"--method {method} settles by its own training (--finetune-epochs, --lr)"
                           for name in SETTLE_OPTIONS})
            unread["budget"] = f"--method {method} spends --finetune-epochs; --budget is the geodesic's"
            if not saliency:
                unread["metric"] = f"--method {method} ranks by magnitude (the metric is not built)"
        if not saliency:
            unread["saliency_samples"] = "only --criterion saliency or auto reads it"
        if self.structured:
            unread["criterion"] = "--structured removes whole units; no weight is ranked"
            unread.update({name: "--structured removes whole units (its counts say how many)"
                           for name in ("sparsity", "mask", "scope", "layers")})
        if "settle_prune" not in unread:
            why = (f"--method {method} settles by its own training (--finetune-epochs, --lr)" if not geodesic else
                   "--settle geodesic takes steps, not training options" if self.settle is Settle.GEODESIC else
                   "--structured removes whole units in one landing" if self.structured else
                   "--mask dynamic re-chooses the mask at every step" if _value(self.mask) == MaskMode.DYNAMIC.value
                   else "there is no settle (--settle-epochs 0)" if self.settle_epochs == 0 else None)
            if why:
                unread["settle_prune"] = unread["settle_prune_until"] = why
        if "settle_prune_until" not in unread and self.settle_prune == 0:
            unread["settle_prune_until"] = "--settle-prune 0 leaves the settle nothing to remove"
        _refuse(self, given, unread)


@with_peers("merge")
@dataclass(frozen=True)
class MergeConfig(WalkOptions):
    COMMAND, RUNNER = "merge", "geopath.jobs.merge"  # ``geopath merge`` runs geopath.jobs.merge.JOB
    HELP = "Walk from network A toward network B (another task) and keep the networks that serve both."

    checkpoint: str = opt("", "Network A (first task; the path starts here).", arg=True)
    checkpoint_b: str = opt("", "Network B (second task; the path walks toward it).", arg=True)
    method: MergeMethod = opt(MergeMethod.GEODESIC, "geodesic (geopath) or a peer to compare against.")
    data_a: str | None = opt(None, "Task A's data set.", default_help="the one A records")
    data_b: str | None = opt(None, "Task B's data set.", default_help="the one B records")
    val_size: int = opt(5000, "Hold out the last N training samples of each task to select the best network "
                              "(0: select on the test sets).")
    head: Head = opt(Head.SHARED, "shared outputs, or split: one 2C-way head with B's classes shifted by C.")
    manifold: Manifold = opt(Manifold.BOTH, "Whose function the path keeps: a, b or both.")
    combine: Combine = opt(Combine.SUM, "With --manifold both: sum both metrics each step, or alternate.")
    weight_b: float = opt(2.0, "Weight of task B's metric relative to A's (--manifold both).")
    select: SelectRule = opt(SelectRule.MAX_MIN, "Which network along the path is reported and saved as best.")
    steps: int = opt(600, "Steps of the walk (it does not land on B).")

    def validate(self):
        super().validate()
        if not self.checkpoint or not self.checkpoint_b:
            raise UsageError("two checkpoints are required: geopath merge A B")
        _non_negative(self, "val_size")
        if not self.weight_b > 0:
            raise UsageError(f"--weight-b must be > 0, got {self.weight_b}")
        return self

    def refuse_unread(self, given: set[str]) -> None:
        """A peer option the chosen method does not take, or (with a peer) a geodesic step option, is an error."""
        unread = _unread_by_method(self, [*WALK_ONLY, "manifold", "combine", "weight_b"])
        if _value(self.method) == registry.GEODESIC and self.manifold is not Manifold.BOTH:
            unread.update({name: f"--manifold {self.manifold.value} keeps one task's function (only --manifold both "
                                 "weighs two)" for name in ("combine", "weight_b")})
        elif _value(self.method) == registry.GEODESIC and self.combine is Combine.ALTERNATE:
            unread["weight_b"] = "--combine alternate steps on one task's metric at a time (a weight has no effect)"
        _refuse(self, given, unread)


@with_peers("connect")
@dataclass(frozen=True)
class ConnectConfig(WalkOptions):
    COMMAND, RUNNER = "connect", "geopath.jobs.connect"  # ``geopath connect`` runs geopath.jobs.connect.JOB
    HELP = "Find a low-loss path between two trained networks of the same architecture."

    checkpoint: str = opt("", "Network A (the path starts here).", arg=True)
    checkpoint_b: str = opt("", "Network B, same architecture (the path ends exactly here).", arg=True)
    method: ConnectMethod = opt(ConnectMethod.GEODESIC, "geodesic (geopath) or a peer to compare against.")
    data: str | None = opt(None, "Data set of both networks (metric inputs: train split).",
                           default_help="the one A records")
    eval_data: str | None = opt(None, "Labelled test set for loss and accuracy.", default_help="--data")
    train_eval_size: int = opt(0, "Also report train loss on the first N metric inputs (0: off).")
    anchor: Anchor = opt(Anchor.ENDPOINTS, "What functional change is measured against (see sparsify --help); "
                                           "endpoints: A's and B's outputs blended by the path's progress.")
    beta: float = opt(0.5, "Pull towards B, β.")
    steps: int = opt(300, "Planned steps (sets the default step size).")
    tol: float = opt(0.01, "Land on B (the rest is a straight segment) when the distance is below tol × ‖w_A − w_B‖.")
    beta_growth: float = opt(4.0, "Past --steps approach steps, β is multiplied by this factor per --steps steps, "
                                  "so a path that stalls still reaches B (1: constant β).")
    points: int = opt(11, "Networks saved evenly spaced along the path (in points/), endpoints included.")
    align: bool = opt(False, "First permute B's units to match A (weight matching); B's function is unchanged.")
    path: ConnectPath = opt(ConnectPath.RELAX, "How the geodesic is found: relax (the whole piecewise-linear path "
                                               "fitted at once, label-free, to the endpoints' blended outputs) or walk "
                                               "(greedy metric steps toward B, resumable; it stalls on CIFAR pairs); "
                                               "see docs/method.md.")
    nodes: int = opt(1, "--path relax: free nodes of the path, evenly spaced in t.")
    relax_epochs: float = opt(10.0, "--path relax: epochs of fitting (sample passes over the metric inputs); the "
                                    "endpoints' outputs on those inputs cost 2/3 of an epoch more.")
    relax_lr: float = opt(0.05, "--path relax: learning rate (SGD, momentum 0.9, cosine decay).")

    ENDPOINTS_ANCHOR = True

    def validate(self):
        super().validate()
        if not self.checkpoint or not self.checkpoint_b:
            raise UsageError("two checkpoints are required: geopath connect A B")
        _non_negative(self, "train_eval_size")
        if self.points < 2:
            raise UsageError("--points must be ≥ 2")
        if self.nodes < 1:
            raise UsageError(f"--nodes must be ≥ 1, got {self.nodes}")
        if not self.relax_epochs >= 0 or not self.relax_lr > 0:
            raise UsageError(f"--relax-epochs must be ≥ 0 and --relax-lr > 0, got {self.relax_epochs}, {self.relax_lr}")
        return self

    def refuse_unread(self, given: set[str]) -> None:
        """An option the chosen path does not read is an error, not ignored: among the options the user
        ``given`` (flags, config-file keys), those set away from their defaults that only the other path reads.
        (Not checked on ``--resume``, whose saved config holds every option.)"""
        if self.method is not ConnectMethod.GEODESIC:
            _refuse(self, given, _unread_by_method(self, [*WALK_ONLY, *RELAX_ONLY, "path"]))
            return
        _refuse(self, given, _unread_by_method(self, []))
        relax = self.path is ConnectPath.RELAX
        defaults = {f.name: f.default for f in fields(type(self))}
        unused = [name for name in (WALK_ONLY if relax else RELAX_ONLY)
                  if name in given and getattr(self, name) != defaults[name]]
        if unused:
            flags = ", ".join("--" + name.replace("_", "-") for name in unused)
            raise UsageError(f"{flags}: only --path {'walk' if relax else 'relax'} reads "
                             f"{'them' if len(unused) > 1 else 'it'} (this run: --path {self.path.value})")


# the walk's step options (core/step.py, core/path.py) and the relaxed path's own: each is refused with the other path
WALK_ONLY = ("beta", "step_size", "steps", "max_steps", "tol", "beta_growth", "cg_iters", "cg_rtol", "damping",
             "metric", "solver", "anchor", "label_weight", "micro_batch", "bn_stats", "jvp")
RELAX_ONLY = ("nodes", "relax_epochs", "relax_lr")
# the settle after landing (sparsify, transition): geodesic steps read the first two, training the rest
SETTLE_BY_STEPS = ("settle_steps", "settle_anchor")
SETTLE_BY_TRAINING = ("settle_epochs", "settle_lr", "settle_optimizer", "settle_warmup", "settle_average",
                      "settle_holdout", "settle_augment")
SETTLE_OPTIONS = ("settle",) + SETTLE_BY_STEPS + SETTLE_BY_TRAINING


def _unread_settle(cfg) -> dict[str, str]:
    """The settle options ``cfg``'s ``--settle`` does not read, each with the reason."""
    if cfg.settle is Settle.GEODESIC:
        return {name: "--settle geodesic takes steps, not training options" for name in SETTLE_BY_TRAINING}
    how = "auto trains (finetune or distill)" if cfg.settle is Settle.AUTO else f"{cfg.settle.value} trains"
    return {name: f"--settle {how}; it takes no geodesic settle-step option" for name in SETTLE_BY_STEPS}


def _unread_by_method(cfg, geodesic_only: list[str]) -> dict[str, str]:
    """The options ``cfg``'s ``--method`` does not read, each with the reason: the geodesic reads no peer option;
    a peer reads its own peer options and none of ``geodesic_only``."""
    method = _value(cfg.method)
    if method == registry.GEODESIC:
        return {name: "the geodesic takes no peer option" for name in cfg.PEER_OPTIONS}
    taken = {o.name for o in registry.get(cfg.JOB, method).options}
    unread = {name: f"--method {method} does not take it" for name in cfg.PEER_OPTIONS if name not in taken}
    unread.update({name: f"--method {method} takes no option of the geodesic's" for name in geodesic_only})
    return unread


def _refuse(cfg, given: set[str], unread: dict[str, str]) -> None:
    """One line naming the ``given`` options that ``cfg``'s run would not read (``unread``: name → why), if any is
    set away from its default."""
    defaults = {f.name: f.default for f in fields(type(cfg))}
    anchors = {_value(cfg.anchor), _value(getattr(cfg, "settle_anchor", None))} if hasattr(cfg, "anchor") else set()
    if "label_weight" not in unread and Anchor.START_LABELS.value not in anchors:
        unread = {**unread, "label_weight": "only --anchor start+labels reads it"}
    names = [name for name in unread if name in given and name in defaults and _value(getattr(cfg, name))
             != _value(defaults[name])]
    if names:
        flags = ", ".join("--" + name.replace("_", "-") for name in names)
        raise UsageError(f"{flags}: not read by this run ({unread[names[0]]})")


def _value(v):
    return v.value if isinstance(v, Enum) else v


@dataclass(frozen=True)
class TransitionConfig(WalkOptions):
    COMMAND, RUNNER = "transition", "geopath.jobs.transition"  # ``geopath transition`` runs geopath.jobs.transition.JOB
    HELP = "Walk through a chain of hyperplanes (units off and on again), each leg a geodesic."

    checkpoint: str = opt("", "Trained network the chain starts from.", arg=True)
    plan: Any = opt(None, "YAML file of legs (see docs/transitions.md); a run's config.yaml holds the legs inline.")
    data: str | None = opt(None, "Inputs for the metric.", default_help="the checkpoint's")
    eval_data: str | None = opt(None, "Labelled test set for accuracy.", default_help="--data")
    train_eval_size: int = opt(0, "Train accuracy on the first N metric inputs (0: off).")
    settle_steps: int = opt(100, "Steps on each leg's hyperplane after landing (a leg may override it).")
    settle: Settle = opt(Settle.GEODESIC, "After each landing: geodesic steps on the hyperplane, or masked SGD on the "
                                          "labels (finetune) or on the start's outputs (distill).")
    settle_epochs: float = opt(2.5, "Epochs of masked SGD after each landing (--settle finetune or distill; a leg "
                                    "may override it).")
    settle_lr: float | None = opt(None, "Learning rate of --settle finetune/distill (cosine decay).",
                                  default_help="0.05; 0.001 with --settle-optimizer adam")
    settle_optimizer: registry.Optimizer = opt(registry.Optimizer.SGD, "Optimizer of --settle finetune/distill: sgd "
                                                                       "(momentum 0.9) or adam.")
    settle_warmup: float = opt(0.0, SETTLE_WARMUP_HELP)
    settle_average: float = opt(0.0, SETTLE_AVERAGE_HELP)
    settle_holdout: float = opt(0.0, SETTLE_HOLDOUT_HELP)
    settle_augment: Augment = opt(Augment.NONE, SETTLE_AUGMENT_HELP)

    def validate(self):
        super().validate()
        if not self.checkpoint:
            raise UsageError("a checkpoint is required")
        if self.plan is None:
            raise UsageError("--plan is required (a YAML file of legs)")
        for name in ("settle_steps", "train_eval_size"):
            _non_negative(self, name)
        _settle_checks(self)
        if self.settle is Settle.AUTO:
            raise UsageError("--settle auto is sparsify's rule; transition takes geodesic, finetune or distill")
        return self

    def refuse_unread(self, given: set[str]) -> None:
        """The options of the other kind of settle are an error, not ignored (among those ``given`` away from
        their defaults)."""
        _refuse(self, given, _unread_settle(self))


JOBS = (SparsifyConfig, MergeConfig, ConnectConfig, TransitionConfig)  # the commands, in --help order


# --------------------------------------------------------------------------- checks


def _positive(cfg, name):
    if getattr(cfg, name) < 1:
        raise UsageError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(cfg, name)}")


def _positive_or_none(cfg, name):
    v = getattr(cfg, name)
    if v is not None and v < 1:
        raise UsageError(f"--{name.replace('_', '-')} must be ≥ 1, got {v}")


SEED_LIMIT = 2**32  # every seed a run derives (seed × 1,000,003 + step, …) stays a 64-bit integer below it


def check_seed(seed: int) -> None:
    """A one-line error unless ``seed`` is a whole number in [0, 2³²) (a larger one overflowed deep in a run)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"--seed must be a whole number in [0, 2^32), got {seed}")


def budget_rule(budget: float) -> tuple[int, float]:
    """``--budget B``: the approach's ``--steps`` and the settle's ``--settle-epochs`` for about ``B`` epochs of
    sample passes in all: 5·B steps (at least 5) and 0.875·B epochs. The one rule by which ``bench/suite.py`` gives
    the geodesic its budgets of 1, 2 and 5 epochs (docs/method.md, "A shorter approach and a hotter settle"); the
    approach and the ranking cost about the other eighth (4.87 epochs at B = 5 on the MNIST MLPs, 5.8–5.9 on the
    CIFAR-10 VGG11)."""
    return max(5, math.floor(5 * budget + 0.5)), 0.875 * budget  # (half up: 5·2.5 is 13 steps, as the help says)


def _budget_steps(budget: float) -> set[int]:
    """The ``--steps`` a budget's run may hold: :func:`budget_rule`'s, and the one that rule gave until 2026-12-08
    (it rounded 5·B half to even, 12 steps at B = 2.5): a run recorded then replays and resumes."""
    return {budget_rule(budget)[0], max(5, int(round(5 * budget)))}


def _budget_valid(budget) -> bool:
    return isinstance(budget, (int, float)) and budget > 0 and math.isfinite(5.0 * budget)


def _budget_checks(cfg) -> None:
    """``--budget`` sets ``--steps`` and ``--settle-epochs``: it needs a training settle, and neither may be given
    another value beside it."""
    if cfg.budget is None:
        return
    if not _budget_valid(cfg.budget):
        raise UsageError(f"--budget must be a positive, finite number of epochs, got {cfg.budget}")
    if cfg.settle is Settle.GEODESIC:
        raise UsageError(f"--budget {cfg.budget:g} sets a training settle's epochs; --settle geodesic takes --steps "
                         "and --settle-steps")
    _budget_clash(cfg.budget, cfg.steps, cfg.settle_epochs, former=True)


def _budget_clash(budget: float, steps, settle_epochs, former: bool = False) -> None:
    """A one-line error where ``steps`` or ``settle_epochs`` (``None``: not given) is not what ``budget`` sets
    (``former``: ``steps`` may be what the former rounding set, for a run recorded then)."""
    wanted_steps, wanted_epochs = budget_rule(budget)
    clash = []
    if steps is not None and steps not in (_budget_steps(budget) if former else {wanted_steps}):
        clash.append(f"--steps {steps:g}")
    if settle_epochs is not None and not _close(settle_epochs, wanted_epochs):
        clash.append(f"--settle-epochs {settle_epochs:g}")
    if clash:
        raise UsageError(f"--budget {budget:g} sets --steps {wanted_steps} and --settle-epochs {wanted_epochs:g}: "
                         f"drop {' and '.join(clash)}, or --budget")


def _settle_checks(cfg) -> None:
    if not cfg.settle_epochs >= 0 or (cfg.settle_lr is not None and not cfg.settle_lr > 0):
        raise UsageError("--settle-epochs must be ≥ 0 and --settle-lr > 0")
    if not 0.0 <= cfg.settle_warmup < 1.0:
        raise UsageError(f"--settle-warmup must be in [0, 1), got {cfg.settle_warmup}")
    if not 0.0 <= cfg.settle_average < 1.0:
        raise UsageError(f"--settle-average must be in [0, 1), got {cfg.settle_average}")
    if not 0.0 <= cfg.settle_holdout < 0.5:
        raise UsageError(f"--settle-holdout must be in [0, 0.5), got {cfg.settle_holdout}")
    if cfg.settle_augment is not Augment.NONE and cfg.settle is Settle.GEODESIC:
        raise UsageError("--settle-augment needs --settle finetune or distill (geodesic settle steps take no views)")


def _non_negative(cfg, name):
    if getattr(cfg, name) < 0:
        raise UsageError(f"--{name.replace('_', '-')} must be ≥ 0, got {getattr(cfg, name)}")


# --------------------------------------------------------------------------- reading


def json_object(text: str | None, flag: str, example: str | None = None) -> dict[str, Any]:
    """A flag's JSON object (``{}`` for no text), or a one-line usage error."""
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{flag} is not valid JSON: {e.msg} (at character {e.pos})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object" + (f", e.g. '{example}'" if example else ""))
    return value


def _coerce(name: str, tp, value):
    """Convert a YAML/flag value to the field's type, or raise a one-line usage error."""
    if tp is Any:
        return value
    if value is None:
        if type(None) in typing.get_args(tp):
            return None
        raise UsageError(f"option {name!r}: a value is required (got null)")
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return _coerce(name, args[0], value)
    try:
        if isinstance(tp, type) and issubclass(tp, Enum):
            return tp(value.value if isinstance(value, Enum) else value)
        if tp is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
            if math.isnan(value):
                raise ValueError
            return value
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if tp is dict or origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return value
        if tp is list or origin is list:
            return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    except (ValueError, TypeError):
        pass
    choices = ""
    if isinstance(tp, type) and issubclass(tp, Enum):
        choices = " (one of " + ", ".join(m.value for m in tp) + ")"
    raise UsageError(f"option {name!r}: invalid value {value!r}{choices}")


def load_yaml_file(path: str | Path, what: str) -> Any:
    """The parsed contents of a YAML file, or a one-line usage error naming ``what`` it should be."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such {what} file")
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


DERIVED = "derived"  # a run's config.yaml: the options its command left to the run, which filled them in


def read_yaml(path: str | Path | None, rederive: bool = False) -> dict[str, Any]:
    """A config file's options. A run's ``config.yaml`` records every option, the ones its command left to the
    run (``--step-size``, ``--settle-lr``, the architecture, ...) as the run resolved them, and lists those under
    ``derived``; ``rederive`` (a replay, ``--config``) drops them, so that the replay derives them again from its
    own options: the same values where nothing changed, and the values a changed ``--steps``, ``--sparsity`` or
    ``--settle`` calls for where something did (keeping them replayed another run than the flags say). With
    ``rederive`` the list stays under ``derived`` (it marks a run's record, see :func:`_is_record`)."""
    if path is None:
        return {}
    path = Path(path)
    data = load_yaml_file(path, "config")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a config file must be a mapping of option: value")
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    derived = values.pop(DERIVED, None)
    if derived is not None and not (isinstance(derived, list) and all(isinstance(name, str) for name in derived)):
        raise UsageError(f"{path}: '{DERIVED}' must be a list of option names, got {derived!r}")
    if rederive and derived is not None:
        values = {**{k: v for k, v in values.items() if k not in derived}, DERIVED: derived}
    return values


def derived_options(given, resolved) -> list[str]:
    """The options ``given`` left unset (``None``) and the run filled in: ``config.yaml``'s ``derived``."""
    return [f.name for f in fields(given) if getattr(given, f.name) is None
            and getattr(resolved, f.name, None) is not None]


def _legacy(cls, values: dict[str, Any]) -> dict[str, Any]:
    """Keys changed since 0.1.0: ``method: steihaug|multiplier`` is now ``solver``; ``lr`` is a peers' option
    and a job without peers (transition), whose runs recorded it unused, drops it; a connect run recorded
    before ``path`` existed walked (the default is now ``relax``); a sparsify or merge peer's run recorded the
    geodesic's resolved ``step_size`` and ``max_steps`` unread (now refused), so its config drops them; a sparsify
    run that read no ``settle_lr`` (a peer, or geodesic settle steps) recorded its former default, dropped too, as
    is a peer's recorded ``settle: finetune`` (the default before ``auto``) and a transition run's ``settle_lr`` under
    geodesic settle steps (its former default, 0.05, recorded unread)."""
    if "lr" in values and "lr" not in {f.name for f in fields(cls)}:
        values = {k: v for k, v in values.items() if k != "lr"}
    recorded = _is_record(values)  # a run's config.yaml: every option, resolved (here without its derived list)
    peer = values.get("method") not in (None, registry.GEODESIC, *(m.value for m in TRMethod))
    if recorded and getattr(cls, "JOB", None) in ("sparsify", "merge") and peer:
        values = {k: v for k, v in values.items() if k not in ("step_size", "max_steps")}
    if (recorded and getattr(cls, "JOB", None) == "sparsify" and values.get("settle_lr") is not None
            and (peer or values.get("settle") == Settle.GEODESIC.value or values.get("settle_epochs") == 0)):
        # runs before --settle-lr's default became per target recorded that default (0.05 or 0.1), unread by a
        # peer, by geodesic settle steps and without a settle (--settle-epochs 0; recorded until 2026-12-07)
        values = {k: v for k, v in values.items() if k != "settle_lr"}
    if (recorded and getattr(cls, "COMMAND", None) == "transition" and values.get("settle_lr") is not None
            and values.get("settle", Settle.GEODESIC.value) == Settle.GEODESIC.value):
        # a transition run before --settle-optimizer recorded --settle-lr's former default (0.05), unread by
        # geodesic settle steps
        values = {k: v for k, v in values.items() if k != "settle_lr"}
    if recorded and getattr(cls, "JOB", None) == "sparsify" and peer and values.get("settle") == Settle.FINETUNE.value:
        # a peer's run before --settle auto recorded the former default settle (finetune), unread
        values = {k: v for k, v in values.items() if k != "settle"}
    if "checkpoint_b" in values and "step_size" in values and "path" not in values and "relax_epochs" in {
            f.name for f in fields(cls)}:
        # a connect run recorded before --path existed (its config holds every option): it walked
        values = {**values, "path": "walk"}
    method = values.get("method")
    if isinstance(method, str) and method in {m.value for m in TRMethod} and "solver" not in values:
        warnings.warn("config key 'method' for the trust-region solver is now 'solver'", stacklevel=3)
        values = {**values, "solver": method}
        del values["method"]
    return values


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str):  # the same file named two ways (relative, absolute)
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return False


def changed_options(cls, saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """The flags among ``given`` whose value differs from the run's ``saved`` config (a ``--resume``
    may repeat the run's own options, not change them)."""
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f for f in fields(cls)}
    changed = []
    for name, value in given.items():
        if name not in defaults:
            continue
        new = _coerce(name, hints[name], value)
        if name in saved:
            old = saved[name]
        else:
            f = defaults[name]
            old = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        old = old.value if isinstance(old, Enum) else old
        new = _as_recorded(name, new.value if isinstance(new, Enum) else new, old)
        if not _same(new, old):
            changed.append("--" + name.replace("_", "-"))
    return sorted(changed)


DATA_SET_OPTIONS = ("data", "eval_data", "data_a", "data_b")  # options naming a data set (a named set or a path)


def _as_recorded(name: str, new: Any, old: Any) -> Any:
    """A flag's value in the form a run records it, so that repeating it compares equal: data sets by
    canonical name or absolute path, a plan file as its legs, ``--normalize`` per channel (``dataset``
    names the default the run resolved: taken as the saved value)."""
    if new is None:
        return new
    if name in DATA_SET_OPTIONS and isinstance(new, str):
        from geopath.io.data import recorded_name

        return recorded_name(new)
    if name == "plan" and isinstance(new, str) and not isinstance(old, str):  # a plan file vs its legs inline
        from geopath.jobs.transition import parse_plan

        return [leg.to_dict() for leg in parse_plan(new)]
    if name == "normalize" and isinstance(old, str):
        new = parse_preprocess(new)
        if new == "dataset":
            return old
        if "/" in new and "/" in old:  # one value for every channel, as the run spelled it out
            m, s = (part.split(",") for part in new.split("/"))
            om = old.split("/")[0].split(",")
            if len(m) == 1 and len(om) > 1:
                return ",".join(m * len(om)) + "/" + ",".join(s * len(om))
    return new


def _check_inherited_settle_lr(yaml_values: dict[str, Any], flags: dict[str, Any]) -> None:
    """A config file's ``settle_lr`` belongs to its ``settle_optimizer`` (a run records the learning rate it
    resolved for it: 0.001 for Adam, 0.05 or 0.1 for SGD; a file naming no optimizer means SGD, the default):
    switching the optimizer by flag while keeping the file's learning rate would train at the other optimizer's
    (SGD at 0.001 barely moves, Adam at 0.1 diverges), so it needs ``--settle-lr``."""
    lr, recorded = yaml_values.get("settle_lr"), yaml_values.get("settle_optimizer", registry.Optimizer.SGD)
    wanted = flags.get("settle_optimizer")
    if lr is None or wanted is None or flags.get("settle_lr") is not None:
        return
    sgd_rate = {"sgd", "auto"}  # (auto's learning rate is its SGD's; Adam, where auto chooses it, runs at 0.001)
    if _value(wanted) != _value(recorded) and not {_value(wanted), _value(recorded)} <= sgd_rate:
        raise UsageError(f"--settle-optimizer {_value(wanted)}: the config file's settle_lr {lr} is its "
                         f"{_value(recorded)} settle's; give --settle-lr for {_value(wanted)} too")


def _inherited_budget(cls, yaml_values: dict[str, Any], flags: dict[str, Any], record: bool) -> dict[str, Any]:
    """A config file's ``steps`` and ``settle_epochs`` where its ``budget`` set them (a run records all three) give
    way to a ``--budget`` flag, as do a run's ``record`` of them at their defaults (a run without a budget);
    a run's record (the budget with both values it set) gives its ``budget`` up to a ``--steps`` or
    ``--settle-epochs`` flag (the other keeps the file's value). In a file of the user's own, a ``budget`` beside
    such a flag is the command line's clash."""
    budget = yaml_values.get("budget")
    if not _budget_valid(budget):
        if flags.get("budget") is None or not record:
            return yaml_values
        default = {f.name: f.default for f in fields(cls) if f.name in ("steps", "settle_epochs")}
        return {k: v for k, v in yaml_values.items() if not (k in default and v == default[k])}
    steps, epochs = _budget_steps(budget), budget_rule(budget)[1]
    if flags.get("budget") is not None:
        return {k: v for k, v in yaml_values.items()
                if not (k == "steps" and v in steps or k == "settle_epochs" and _close(v, epochs))}
    recorded = record and yaml_values.get("steps") in steps and _close(yaml_values.get("settle_epochs"), epochs)
    if recorded and (flags.get("steps") is not None or flags.get("settle_epochs") is not None):
        return {k: v for k, v in yaml_values.items() if k != "budget"}
    return yaml_values


def _close(value, wanted: float) -> bool:
    return isinstance(value, (int, float)) and math.isclose(value, wanted, rel_tol=1e-9)


TRUST_FLAGS = ("trust_pickle", "trust_code")  # flags only: never taken from a config file


def known_options(cls, yaml_values: dict[str, Any], source: str = "config file") -> dict[str, Any]:
    """``yaml_values`` with keys renamed since 0.1.0 brought up to date; a one-line error naming any option
    ``cls``'s job does not have. A run's ``derived`` list is no option (values read as a plain mapping, not by
    :func:`read_yaml`, keep the recorded values of the options it names)."""
    yaml_values = _legacy(cls, {k: v for k, v in yaml_values.items() if k != DERIVED})
    unknown = sorted(set(yaml_values) - {f.name for f in fields(cls)})
    if unknown:
        raise UsageError(f"unknown option(s) in {source}: {', '.join(unknown)}")
    return yaml_values


def replayed(cls, yaml_values: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """A config file's options as ``flags`` take them over: known, brought up to date, without the permissions
    (flags only), and a run's record of a budget's values giving way as :func:`_inherited_budget` says."""
    # a permission holds for the command that gives it: a config file (a replayed or resumed run's, or anyone's)
    # cannot unpickle a file or run a checkpoint's code; runs record the flags, which are not read back
    record = _is_record(yaml_values)
    yaml_values = known_options(cls, yaml_values)
    granted = [k for k in TRUST_FLAGS if yaml_values.get(k) not in (None, False)]
    if granted and not record:  # (a run records the flags it was given; a file of the user's own would be ignored)
        raise UsageError(f"{', '.join(granted)} in a config file is not read: a permission holds for the command "
                         f"that gives it (--{granted[0].replace('_', '-')})")
    yaml_values = {k: v for k, v in yaml_values.items() if k not in TRUST_FLAGS}
    return _inherited_budget(cls, yaml_values, flags, record)


def _is_record(yaml_values: dict[str, Any]) -> bool:
    """Whether config values are a run's ``config.yaml`` (its ``derived`` list; before it, every option, among them
    the resolved ``step_size``, ``max_steps`` and ``arch``) rather than a file of the user's own."""
    return DERIVED in yaml_values or {"step_size", "max_steps", "arch"} <= set(yaml_values)


def resolve(cls, yaml_values: dict[str, Any], flags: dict[str, Any], resuming: bool = False):
    """defaults < YAML < flags (flags that are ``None`` were not given; ``--trust-pickle`` and ``--trust-code`` are
    read from flags alone). Outside ``--resume`` (``resuming``), a job may refuse given options its run would not
    read (``refuse_unread``)."""
    record = _is_record(yaml_values)
    yaml_values = replayed(cls, yaml_values, flags)
    hints = typing.get_type_hints(cls)
    _check_inherited_settle_lr(yaml_values, flags)
    merged = {**yaml_values, **{k: v for k, v in flags.items() if v is not None}}
    values = {k: _coerce(k, hints[k], v) for k, v in merged.items()}
    cfg = dataclasses.replace(cls(), **values).validate()
    if _budget_valid(values.get("budget")):  # (the dataclass fills in only the defaults: a given value clashes; a
        # run recorded under the former rounding keeps its steps)
        _budget_clash(values["budget"], values.get("steps"), values.get("settle_epochs"),
                      former=record and flags.get("steps") is None)
    if not resuming and hasattr(cfg, "refuse_unread"):
        cfg.refuse_unread(set(merged))
    return cfg
