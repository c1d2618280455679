"""Every peer method, declared in one place: its job, its ``--method`` name, its options, its runner.

Torch-free, so the command line builds each job's ``--method`` choices and the peers' flags without
importing torch; a peer's code (``runner``: ``module:function``) is imported only when it runs.

Adding a peer is two changes: a :class:`Peer` entry below, and its runner beside its family's code
in :mod:`geopath.peers` (``runner(task: PeerTask) -> Target | None``, see
:mod:`geopath.peers.task`). Its options become fields of the job's options dataclass, flags under
"Peer methods" in ``geopath JOB --help`` and keys of ``config.yaml``; two peers of one job that take
the same option share one declaration (the same :class:`Option` object).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from geopath.errors import UsageError

GEODESIC = "geodesic"


@dataclass(frozen=True)
class Option:
    """One option of one or more peers: a flag (``--name-with-dashes``) and a config key."""

    name: str
    type: Any  # float, int, float | None
    default: Any
    help: str
    at_least: float | None = None  # the value must be ≥ this
    above: float | None = None  # the value must be > this
    default_help: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value) -> None:
        if value is None:
            return
        if self.at_least is not None and not value >= self.at_least:
            raise UsageError(f"{self.flag} must be ≥ {self.at_least:g}, got {value}")
        if self.above is not None and not value > self.above:
            raise UsageError(f"{self.flag} must be > {self.above:g}, got {value}")


@dataclass(frozen=True)
class Peer:
    """A method a user would otherwise pick, run by a job on the same data and budget as the geodesic."""

    job: str  # sparsify, merge, connect
    name: str  # its --method value
    help: str  # one line: what it does
    reference: str  # where it comes from
    runner: str  # "module:function", imported when the peer runs
    options: tuple[Option, ...] = ()
    check: Callable[[Any], None] | None = field(default=None, compare=False)  # refuse option combinations early

    def run(self, task) -> Any:
        module, _, fn = self.runner.partition(":")
        return getattr(importlib.import_module(module), fn)(task)


# --------------------------------------------------------------------------- options

class Optimizer(str, Enum):
    """The optimizer of a training peer."""

    SGD = "sgd"
    """SGD with momentum 0.9."""
    ADAM = "adam"
    """Adam (pass a smaller --lr, e.g. 0.001)."""


LR = Option("lr", float, 0.05, "Learning rate (cosine decay to zero).", above=0)
OPTIMIZER = Option("optimizer", Optimizer, Optimizer.SGD, "Optimizer: sgd (momentum 0.9) or adam.")
TEMPERATURE = Option("temperature", float, 2.0, "Distillation temperature T of the loss T²·KL(p_T(teacher) ‖ "
                                                 "p_T(student)).", above=0)
PRUNE_UNTIL = Option("prune_until", float, 0.75, "Fraction of the budget over which the sparsity grows (cubic "
                                                 "schedule); the rest fine-tunes at the final sparsity.",
                     above=0)
FINETUNE_EPOCHS = Option("finetune_epochs", float, 5.0, "Epochs of fine-tuning.", at_least=0,
                         default_help="5; the bench gives geopath's passes")
ROUNDS = Option("rounds", int, 5, "Pruning rounds (sparsity grows geometrically).", at_least=1)
ALPHAS = Option("points", int, 21, "α values swept from 0 to 1.", at_least=2)
FISHER_SAMPLES = Option("fisher_samples", int, 2000, "Samples used to estimate each diagonal Fisher.", at_least=1)
EWC_EPOCHS = Option("epochs", float, 5.0, "Epochs of training on task B.", above=0)
EWC_LAMBDA = Option("ewc_lambda", float, 100.0, "Strength of the penalty ½λ Σ F_A (w − w_A)².", at_least=0)
BEZIER_EPOCHS = Option("epochs", float, 5.0, "Epochs of training the curve's middle point.", above=0)


def _magnitude_stages(cfg) -> None:
    """Peers that re-choose their masks as they go rank by magnitude (their stages would not pay for saliency)."""
    _no_dynamic_mask(cfg)
    criterion = getattr(getattr(cfg, "criterion", None), "value", getattr(cfg, "criterion", None))
    if criterion in ("saliency", "auto") and not getattr(cfg, "structured", None):
        method = getattr(cfg.method, "value", cfg.method)
        raise UsageError(f"--method {method} re-chooses its masks by magnitude; it does not take --criterion "
                         f"{criterion} (--method obd prunes by saliency)")


def _no_dynamic_mask(cfg) -> None:
    dynamic = getattr(cfg, "mask", None) is not None and getattr(cfg.mask, "value", cfg.mask) == "dynamic"
    if dynamic and not getattr(cfg, "structured", None):  # (a structured target has no magnitude mask)
        method = getattr(cfg.method, "value", cfg.method)
        raise UsageError(f"--method {method} chooses its own masks; it does not take --mask dynamic")


def _saliency_only(cfg) -> None:
    _no_dynamic_mask(cfg)
    if getattr(cfg, "structured", None):
        raise UsageError("--method obd ranks single weights; it does not take --structured")
    criterion = getattr(getattr(cfg, "criterion", None), "value", getattr(cfg, "criterion", None))
    if criterion in ("magnitude", "auto"):
        raise UsageError(f"--method obd ranks weights by saliency; it does not take --criterion {criterion} "
                         "(--method prune-finetune prunes by magnitude or --criterion auto)")


# --------------------------------------------------------------------------- the peers

PEERS: tuple[Peer, ...] = (
    Peer("sparsify", "prune-finetune", "One-shot magnitude pruning, then masked fine-tuning on the labels.",
         "Han et al. 2015", "geopath.peers.pruning:run_prune_finetune", (FINETUNE_EPOCHS, LR, OPTIMIZER),
         check=_no_dynamic_mask),
    Peer("sparsify", "iterative-prune", "Prune a little, fine-tune, repeat (iterative prune-and-retrain).",
         "Han et al. 2015; Frankle & Carbin 2019", "geopath.peers.pruning:run_iterative_prune",
         (FINETUNE_EPOCHS, ROUNDS, LR, OPTIMIZER), check=_magnitude_stages),
    Peer("sparsify", "gradual", "Gradual magnitude pruning: the sparsity grows on a cubic schedule during training.",
         "Zhu & Gupta 2018", "geopath.peers.pruning:run_gradual", (FINETUNE_EPOCHS, PRUNE_UNTIL, LR, OPTIMIZER),
         check=_magnitude_stages),
    Peer("sparsify", "distill", "One-shot magnitude pruning, then masked distillation from the dense network's "
         "outputs on the inputs alone (no labels).", "Hinton et al. 2015; Sanh et al. 2020",
         "geopath.peers.pruning:run_distill", (FINETUNE_EPOCHS, TEMPERATURE, LR, OPTIMIZER), check=_no_dynamic_mask),
    Peer("sparsify", "obd", "One-shot pruning by the saliency w²·[g]_qq (the metric's diagonal), then masked "
         "fine-tuning on the labels (--finetune-epochs 0: one-shot).", "LeCun et al. 1990; Singh & Alistarh 2020",
         "geopath.peers.pruning:run_prune_finetune", (FINETUNE_EPOCHS, LR, OPTIMIZER), check=_saliency_only),
    Peer("merge", "average", "Weight averaging (1 − α) w_A + α w_B over a sweep of α.",
         "Wortsman et al. 2022", "geopath.peers.averaging:run_average", (ALPHAS,)),
    Peer("merge", "fisher", "Fisher-weighted averaging (diagonal Fisher of each task) over a sweep of α.",
         "Matena & Raffel 2022", "geopath.peers.averaging:run_fisher_merge", (ALPHAS, FISHER_SAMPLES)),
    Peer("merge", "ewc", "Train A on task B with an elastic weight consolidation penalty.",
         "Kirkpatrick et al. 2017", "geopath.peers.consolidation:run_ewc",
         (EWC_EPOCHS, EWC_LAMBDA, FISHER_SAMPLES, LR)),
    Peer("connect", "linear", "The straight line (1 − t) w_A + t w_B.",
         "Goodfellow et al. 2015", "geopath.peers.averaging:run_linear"),
    Peer("connect", "bezier", "A quadratic Bezier curve whose middle point is trained.",
         "Garipov et al. 2018", "geopath.peers.curves:run_bezier", (BEZIER_EPOCHS, LR)),
)


def peers_of(job: str) -> list[Peer]:
    """The peers of ``job``, in declaration order."""
    return [p for p in PEERS if p.job == job]


def get(job: str, name: str) -> Peer:
    for p in peers_of(job):
        if p.name == name:
            return p
    known = ", ".join([GEODESIC] + [p.name for p in peers_of(job)])
    raise UsageError(f"{job}: no method {name!r} (one of {known})")


def options_of(job: str) -> list[Option]:
    """The options of ``job``'s peers, each once, in the order the peers declare them.

    Two peers that take an option of the same name must share its declaration."""
    seen: dict[str, Option] = {}
    for p in peers_of(job):
        for o in p.options:
            if o.name in seen and seen[o.name] is not o:
                raise RuntimeError(f"{job}: peers declare option {o.name!r} twice, differently")
            seen.setdefault(o.name, o)
    return list(seen.values())


def users_of(job: str, option: str) -> list[str]:
    """The names of ``job``'s peers that take ``option``."""
    return [p.name for p in peers_of(job) if any(o.name == option for o in p.options)]


def method_enum(job: str, name: str, geodesic_help: str) -> type[Enum]:
    """``job``'s ``--method`` choices as a ``str`` enum: ``GEODESIC``, then one member per peer
    (``prune-finetune`` → ``PRUNE_FINETUNE``); each member's ``__doc__`` is its help."""
    members = {GEODESIC.upper(): GEODESIC, **{p.name.upper().replace("-", "_"): p.name for p in peers_of(job)}}
    enum = Enum(name, members, type=str, module=__name__)
    enum.GEODESIC.__doc__ = geodesic_help
    for p in peers_of(job):
        enum(p.name).__doc__ = f"Peer: {p.help} ({p.reference})"
    enum.__doc__ = f"How ``{job}`` reaches its goal: the geodesic or a peer method."
    return enum
