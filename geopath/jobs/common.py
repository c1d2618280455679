"""What every job shares: the skeleton of a run (:class:`Job`), device, checkpoints, data checks,
resuming, the ``--min-accuracy`` gate.

A job (``sparsify``, ``merge``, ``connect``, ``transition``) is a :class:`Job` subclass that says
only what is its own: how it loads its networks and data (:meth:`Job.prepare`), how the geodesic
walks (:meth:`Job.walk`), what it hands a peer (:meth:`Job.peer_task`) and what its summary says
(:meth:`Job.summarise`). :meth:`Job.run` does the rest in the same order for every job: check the
output directory, load, open the run, write the config (or resume), walk or run the peer, summarise,
gate, finish.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, NamedTuple

import torch
from torch import nn

from geopath.core import distributed
from geopath.config import DATA_SET_OPTIONS, DERIVED, derived_options
from geopath.io.checkpoint import (META_PREFIX, SAFETENSORS_EXT, TORCH_EXT, Checkpoint, load_checkpoint, read_tensors,
                                   reading_record)
from geopath.io.data import NAMED, Dataset, canonical_name, load_dataset, one_set, recorded_name, training_classes
from geopath.io.preprocess import parse_image_size
from geopath.errors import CheckpointError, NumericalError, UsageError
from geopath.core.evaluate import evaluate
from geopath.core.path import Interrupted, PathConfig, PathState, in_one_go
from geopath.core.record import PeerRecorder, Recorder
from geopath.peers import registry
from geopath.peers.task import PeerTask
from geopath.core.step import StepConfig
from geopath.io.rundir import RunWriter, check_output, prepare_output


def open_run(cfg, overwrite: bool, resume: bool, resumable: bool = True) -> tuple[Path, torch.device]:
    """Every job's first moves: check the output directory, pick the device, seed torch.

    The directory is only checked here; the job creates it with :func:`open_writer` once its
    inputs have loaded. ``resumable`` (:meth:`Job.resumable`): whether a full directory's error offers --resume.
    """
    out = check_output(cfg.out, overwrite, resume, inputs=input_paths(cfg), resumable=resumable)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    return out, device


INPUT_OPTIONS = ("checkpoint", "checkpoint_b", *DATA_SET_OPTIONS, "plan", "data_root")


def input_paths(cfg) -> tuple[str, ...]:
    """The files and folders a run reads (its options naming paths; a named data set such as ``mnist`` names
    none, whatever folders the working directory holds)."""
    return tuple(v for name in INPUT_OPTIONS if isinstance(v := getattr(cfg, name, None), str) and v
                 and not (name in DATA_SET_OPTIONS and canonical_name(v) in NAMED))


def open_writer(out: Path, overwrite: bool, resume: bool, *args, **kwargs) -> RunWriter:
    """Create (or, with ``overwrite``, empty) the checked output directory and its writer."""
    return RunWriter(prepare_output(out, overwrite, resume), *args, **kwargs)


def resolve_device(name: str) -> torch.device:
    """The run's device. On CUDA, TF32 is switched off: CG and the step checks need float32 products."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device {name}: not a device (cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: geopath runs on cpu or cuda")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available")
    full_float32_on_cuda()
    if distributed.launched():  # torchrun: this rank's GPU, cuda:LOCAL_RANK (set by distributed.setup)
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def full_float32_on_cuda() -> None:
    """Switch TF32 off for CUDA matmuls and cuDNN convolutions (cuDNN's default is on)."""
    b = torch.backends
    if hasattr(b.cudnn, "conv") and hasattr(b.cudnn.conv, "fp32_precision"):  # torch ≥ 2.9: the new API only
        b.cudnn.conv.fp32_precision = "ieee"
        b.cuda.matmul.fp32_precision = "ieee"
    else:
        b.cudnn.allow_tf32 = False
        b.cuda.matmul.allow_tf32 = False


def default_step_size(d0: float, steps: int, scale: float) -> float:
    """The trust region ε when ``--step-size`` is not given: ``(scale · d0 / steps)²``, so ``steps``
    full steps cover ``scale`` times the starting distance ``d0`` (each job states its ``scale``)."""
    return max((scale * d0 / steps) ** 2, 1e-12)


def step_config(cfg, step_size: float) -> StepConfig:
    """One step's options from a job's (``--micro-batch`` turns the metric's cache off)."""
    return StepConfig(beta=cfg.beta, step_size=step_size, cg_iters=cfg.cg_iters, cg_rtol=cfg.cg_rtol,
                      damping=cfg.damping, metric=cfg.metric, solver=cfg.solver, anchor=cfg.anchor,
                      label_weight=cfg.label_weight, bn_stats=cfg.bn_stats, cache=cfg.micro_batch is None,
                      jvp_mode=cfg.jvp)


def path_config(cfg, step_size: float, max_steps: int, **job_specific) -> PathConfig:
    """The path engine's options from a job's: the shared ones here, the job's own (landing, settling,
    milestones, combining sources, a leg's β schedule) as keywords."""
    shared = dict(step=step_config(cfg, step_size), max_steps=max_steps, save_every=cfg.save_every,
                  batch_size=cfg.batch_size, micro_batch=cfg.micro_batch, tol=cfg.tol, beta_growth=cfg.beta_growth,
                  grow_after=cfg.steps, grow_every=cfg.steps, seed=cfg.seed)
    return PathConfig(**{**shared, **job_specific})


def load(cfg, path: str) -> Checkpoint:
    """Load one checkpoint with the run's architecture options."""
    return load_checkpoint(path, cfg.arch, cfg.arch_kwargs, cfg.trust_pickle, cfg.trust_code)


def load_pair(cfg) -> tuple[Checkpoint, Checkpoint]:
    """Networks A and B of a two-network job; they must have the same parameter shapes."""
    a, b = load(cfg, cfg.checkpoint), load(cfg, cfg.checkpoint_b)
    same_arch(a, b)
    return a, b


def same_arch(a: Checkpoint, b: Checkpoint, hint: str = "") -> None:
    """Raise a one-line usage error unless ``a`` and ``b`` are the same architecture built the same way: the same
    name, tensors and shapes, and architecture options that build the same modules (a LeNet-5 for 28 and one for
    32 pixels share every shape but not their padding)."""
    if a.arch != b.arch:
        raise UsageError(f"{a.path} and {b.path} are different architectures ({a.arch} and {b.arch}){hint}")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    if list(sa) != list(sb):
        only_a = [k for k in sa if k not in sb][:3]
        only_b = [k for k in sb if k not in sa][:3]
        raise UsageError(f"{a.path} and {b.path} are different architectures "
                         f"(only in A: {only_a or '-'}; only in B: {only_b or '-'}){hint}")
    for k in sa:
        if sa[k].shape != sb[k].shape:
            raise UsageError(f"{a.path} and {b.path} differ in shape: {k} is {tuple(sa[k].shape)} in A "
                             f"but {tuple(sb[k].shape)} in B{hint}")
    if a.arch_kwargs != b.arch_kwargs and repr(a.model) != repr(b.model):
        raise UsageError(f"{a.path} and {b.path} are {a.arch} built differently (options {a.arch_kwargs} and "
                         f"{b.arch_kwargs}): pass --arch-kwargs to build both one way")


def same_records(cfg, a: Checkpoint, b: Checkpoint, splits: "Splits") -> None:
    """Two networks scored on one data set (connect) must read it the same way: a one-line usage error when they
    record different data sets (without ``--data``) or different preprocessing (without ``--normalize``; ``splits``
    were read with A's), instead of reading B's inputs as A's."""
    if cfg.data is None and a.data and b.data and recorded_name(a.data) != recorded_name(b.data):
        raise UsageError(f"the networks record different data sets ({a.data} and {b.data}): pass --data")
    heads = [_split_head(ck) for ck in (a, b)]
    if heads[0] != heads[1]:  # (B's labels are shifted by A's record: the same split head, or a wrong number)
        raise UsageError("the networks record different merged tasks or heads (A: "
                         f"{_head_text(heads[0])}; B: {_head_text(heads[1])}): connect networks of one kind")
    pb = preprocess_of(cfg, b, splits.name)
    if cfg.normalize is None and pb != preprocess_of(cfg, a, splits.name):
        as_b = load_split(splits.name, "train", cfg, 1, pb).preprocess  # (written differently, or one resolved:
        if as_b != splits.metric.preprocess:  # compare what each reads)
            raise UsageError(f"the networks record different preprocessing ({splits.metric.preprocess} and "
                             f"{as_b}): pass --normalize")


def _split_head(ck: Checkpoint) -> dict:
    """A split-head merged network's record of its task B ({} for any other network)."""
    offset = ck.metadata.get(META_PREFIX + LABEL_OFFSET_KEY)
    return {"data_b": ck.metadata.get(META_PREFIX + "data_b"), LABEL_OFFSET_KEY: offset} if offset else {}


def _head_text(record: dict) -> str:
    if not record:
        return "no split head"
    return f"task B {record['data_b']} in a split head from class {record[LABEL_OFFSET_KEY]}"


def two_network_provenance(a: Checkpoint, b: Checkpoint) -> dict[str, str]:
    """What every network a two-network run saves records of B (a resumed run checks it: the same file B)."""
    if a.path.resolve() == b.path.resolve() or a.sha256 == b.sha256:
        raise UsageError(f"A and B are the same file ({b.path}): a two-network job needs two networks")
    return {PARENT_B: b.sha256}


PARENT_B = "parent_b_sha256"


def data_name(cfg_value: str | None, ck: Checkpoint, flag: str) -> str:
    """``flag``'s data set, else the one ``ck`` records; a path made absolute (so the run's records
    read from any directory)."""
    name = cfg_value or ck.data
    if not name:
        raise UsageError(f"{ck.path} does not record its data set; pass {flag} (e.g. {flag} mnist)")
    if Path(name).suffix.lower() in SAFETENSORS_EXT | TORCH_EXT:
        raise UsageError(f"{flag} {name}: a checkpoint file, not a data set (a named set, a PATH.npz or an image "
                         "folder)")
    if canonical_name(name) not in NAMED and not Path(name).expanduser().exists():  # (said as typed, not resolved)
        if cfg_value is None:
            raise UsageError(f"{ck.path} records data set {name}, which is not here; pass {flag}")
        raise UsageError(f"{flag} {name}: unknown data set (use one of {', '.join(NAMED)}, a PATH.npz, an image "
                         "folder or a folder laid out by split)")
    return recorded_name(name)


def recorded(name: str | None) -> str | None:
    """A data set as a run records it (:func:`geopath.io.data.recorded_name`); None stays None."""
    return None if name is None else recorded_name(name)


def eval_set(name: str, eval_name: str | None, flag: str = "--eval-data") -> str:
    """The data set to score on: ``eval_name`` if given, else ``name``'s own test split — which a
    ``PATH.npz`` or a plain image folder does not have (its "test" would be the training data)."""
    if eval_name:
        return recorded_name(eval_name)
    if one_set(name):
        raise UsageError(f"{name} is one set of labelled data, with no test split of its own: pass {flag} "
                         "with held-out labelled data (a PATH.npz or an image folder), or use a folder laid out by "
                         "split (train/ and test/, or train.npz and test.npz)")
    return name


def split_train(ds: Dataset, val_size: int) -> tuple[Dataset, Dataset | None]:
    """(metric inputs, held-out validation): the last ``val_size`` samples are held out."""
    if val_size <= 0:
        return ds, None
    if val_size >= len(ds):
        raise UsageError(f"--val-size {val_size} leaves no training samples of {ds.name} ({len(ds)} in all)")
    n = len(ds) - val_size
    return (Dataset(ds.x[:n], ds.y[:n], ds.name, ds.split, ds.preprocess),
            Dataset(ds.x[n:], ds.y[n:], ds.name, "val", ds.preprocess))


def mix(datasets: list[Dataset], total: int) -> Dataset:
    """The first ``total / len(datasets)`` samples of each data set, interleaved (one of each in turn), so that
    every slice of it holds all of them alike: BatchNorm data, which is read in consecutive batches."""
    each = max(1, total // len(datasets))
    parts = [d.head(each) for d in datasets]
    xs = [p.x if isinstance(p.x, torch.Tensor) else p.x.to("cpu") for p in parts]  # streamed images: decoded
    turn = torch.cat([torch.arange(len(p)) * len(parts) + i for i, p in enumerate(parts)])
    order = torch.argsort(turn)
    return Dataset(torch.cat(xs)[order], torch.cat([p.y for p in parts])[order], "+".join(d.name for d in parts),
                   parts[0].split, parts[0].preprocess)


def with_reading(cfg, *cks: Checkpoint):
    """``cfg`` with ``--image-size`` and ``--channels`` as the run reads image folders: each flag if given, else
    what the checkpoints record (``geopath train`` records both; the networks a run saves record them again).
    Checkpoints that record different values need the flag."""
    values = {}
    for i, name in ((1, "image_size"), (2, "channels")):
        if getattr(cfg, name) is not None:
            continue
        recorded = {str(v) for v in (ck.reading()[i] for ck in cks) if v is not None}
        if name == "image_size" and len({parse_image_size(r) for r in recorded}) == 1:
            recorded = {min(recorded)}  # (the same size written two ways: 28 and 28,28)
        if len(recorded) > 1:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"the networks record different {flag} ({' and '.join(sorted(recorded))}): pass {flag}")
        if recorded:
            values[name] = int(recorded.pop()) if name == "channels" else recorded.pop()
    return dataclasses.replace(cfg, **values) if values else cfg


def load_split(name: str, split: str, cfg, size: int | None = None, preprocess: str | None = None,
               classes: list[str] | None = None) -> Dataset:
    return load_dataset(name, split, cfg.data_root, download=cfg.download, preprocess=preprocess,
                        image_size=cfg.image_size, channels=cfg.channels, classes=classes).head(size)


COMPACT_KEYS = ("compact", "input_shape", "input_dtype")  # a compact network's recipe (geopath export)
CLASSES_KEY = "classes"  # the class folders of an image folder the network was trained on (JSON list)
MERGED_TASK_KEYS = ("data_a", "data_b", "preprocess_b")  # a merged network: both tasks' data sets, B's preprocessing
LABEL_OFFSET_KEY = "label_offset_b"  # a split-head merged network: where task B's classes start among its outputs


def carried(ck: Checkpoint) -> dict[str, str]:
    """What the networks a run saves inherit from its start checkpoint: an exported network's removal
    history and input shape, without which they would not load, and the classes its outputs stand for (a merged
    network's task B among them: its data set, how it was read, and where its classes start in a split head)."""
    keys = COMPACT_KEYS + (CLASSES_KEY,) + MERGED_TASK_KEYS + (LABEL_OFFSET_KEY,)
    return {k: ck.metadata[META_PREFIX + k] for k in keys if META_PREFIX + k in ck.metadata}


def classes_record(data: str | None) -> dict[str, str]:
    """``{"classes": JSON}`` where ``data`` is an image folder here (its class folders label the outputs), else {}."""
    names = training_classes(data) if data else None
    return {CLASSES_KEY: json.dumps(names)} if names else {}


def label_offset(ck: Checkpoint, data: str | None) -> int:
    """What to add to the labels of data set ``data`` for ``ck``'s outputs: task B's offset where ``ck`` is a
    split-head merged network and ``data`` is its task B's set (``geopath merge --head split``), else 0."""
    meta = ck.metadata
    text = meta.get(META_PREFIX + LABEL_OFFSET_KEY)
    if not text or not data:
        return 0
    try:
        offset = int(text)
    except ValueError:
        offset = -1
    if offset < 1:
        raise UsageError(f"{ck.path}: its recorded {LABEL_OFFSET_KEY} is not a positive class count ({text[:20]!r})")
    name, data_b = recorded_name(data), meta.get(META_PREFIX + "data_b")
    if name == data_b:
        return offset
    data_a = meta.get(META_PREFIX + "data_a") or ck.data  # (task A's; a later run records its own data as data)
    if data_a and name == recorded_name(data_a):
        return 0
    raise UsageError(f"{ck.path}: a split-head merged network, task A {data_a}, task B {data_b}: {data} is neither "
                     "(its labels would be scored against the wrong head; a task's data set moved since must be "
                     "passed at its recorded path)")


def network_classes(ck: Checkpoint) -> list[str] | None:
    """The classes ``ck``'s outputs stand for: as recorded, else the class folders of the image folder it
    records as its training data, where that folder is here (None: not an image folder, or not known)."""
    return ck.classes or (training_classes(ck.data) if ck.data else None)


def preprocess_of(cfg, ck: Checkpoint, data: str | None = None) -> str | None:
    """How ``ck`` reads data set ``data`` (default: its own): ``--normalize`` if given, else what ``ck`` records
    (None: the data set's default; see :meth:`Checkpoint.reading`)."""
    return ck.reading(cfg.normalize, data=data)[0]


def check_inputs(model: nn.Module, ds: Dataset, device, what: str = "the network") -> None:
    """A one-line usage error when ``model`` cannot take ``ds``'s inputs."""
    try:
        with torch.no_grad():
            out = model.eval()(ds.x[:2].to(device))
    except Exception as e:
        raise UsageError(f"{what} cannot take inputs of shape {tuple(ds.x.shape[1:])} from {ds.name}: "
                         f"{str(e).splitlines()[0]}") from None
    classes = int(ds.y.max()) + 1 if len(ds) else 0
    if out.ndim != 2 or out.shape[1] < classes:
        raise UsageError(f"{what} has {tuple(out.shape[1:])} outputs but {ds.name} has {classes} classes")


class Splits(NamedTuple):
    """The data of a one-task job: data set name, metric inputs, test set, train-accuracy slice."""
    name: str
    metric: Dataset
    test: Dataset
    train_eval: Dataset | None


def single_task_data(cfg, ck: Checkpoint, device, what: str = "the network") -> Splits:
    """``--data`` (default: the checkpoint's) train split for the metric, ``--eval-data`` test split,
    checked against ``ck``'s network."""
    name = data_name(cfg.data, ck, "--data")
    test_name = eval_set(name, cfg.eval_data)
    # plain image folders apart from the one the network trained on are labelled as its training labelled them
    # (task B of a split-head merged network: labelled by its own folders, then shifted past A's classes)
    offset = label_offset(ck, name)
    trained_on = network_classes(ck) if ck.data != name and not offset else None
    metric = load_split(name, "train", cfg, cfg.metric_size, preprocess_of(cfg, ck, name), classes=trained_on)
    metric = metric.shifted(offset)
    check_inputs(ck.model.to(device), metric, device, what)  # (before its preprocessing is applied to the test set)
    test = load_split(test_name, "test", cfg, cfg.eval_size, metric.preprocess,  # exactly what training inputs got
                      classes=trained_on or (training_classes(name) if test_name != name else None))
    test = test.shifted(label_offset(ck, test_name))
    check_inputs(ck.model.to(device), test, device, what)
    return Splits(name, metric, test, metric.head(cfg.train_eval_size) if cfg.train_eval_size else None)


def task_metrics(net: nn.Module, ds: Dataset | None, device, prefix: str, suffix: str = "") -> dict[str, float]:
    """``{prefix}accuracy{suffix}``/``{prefix}loss{suffix}`` on ``ds`` (NaN when absent)."""
    if ds is None:
        return {f"{prefix}accuracy{suffix}": math.nan, f"{prefix}loss{suffix}": math.nan}
    ev = evaluate(net, ds, device=device)
    return {f"{prefix}accuracy{suffix}": ev.accuracy, f"{prefix}loss{suffix}": ev.loss}


def resume_state(writer: RunWriter, parent_sha: str | None, accept=lambda rel: rel.startswith("steps/"),
                 parent_b: str | None = None) -> tuple[PathState, dict[str, torch.Tensor], dict]:
    """The state, weights and trace row of the last complete step of an interrupted run.

    Rows after it are dropped from the trace; ``accept(relative_path)`` says which
    saved networks may be resumed from (default: the path's steps). ``parent_b``: network B's sha256 (a
    two-network job), checked against the step's record where it has one (runs before 2026-12-07 have none).
    """
    rows = writer.trace.rows()
    for i in range(len(rows) - 1, -1, -1):
        r = rows[i]
        rel = str(r.get("checkpoint") or "")
        ck = writer.out / rel
        if not rel or not accept(rel) or not ck.is_file():
            continue
        try:
            tensors, meta = read_tensors(ck)
        except CheckpointError:
            continue
        if parent_sha is not None and meta.get(META_PREFIX + "parent_sha256") != parent_sha:
            raise UsageError(f"{writer.out}: the run was started from a different checkpoint file")
        if parent_b is not None and meta.get(META_PREFIX + PARENT_B, parent_b) != parent_b:
            raise UsageError(f"{writer.out}: the run was started toward a different checkpoint B (the file changed)")
        writer.trace.keep(rows[: i + 1])
        return PathState.from_row(r), tensors, r
    raise UsageError(f"{writer.out}: no complete step to resume from; start again with --overwrite")


def begin(writer: RunWriter, cfg, model: nn.Module, parent_sha: str | None, resume: bool,
          resumable: bool = True, parent_b: str | None = None, derived: list[str] = ()) -> PathState | None:
    """Start a run's files; or, resuming, load its last complete step into ``model`` and return its state.
    ``derived``: the options the run filled in itself, listed in ``config.yaml`` (a replay derives them again)."""
    if resume:
        if not resumable:
            raise UsageError("--resume continues geodesic runs; re-run a peer method with --overwrite")
        state, tensors, _ = resume_state(writer, parent_sha, parent_b=parent_b)
        model.load_state_dict(tensors)
        return state
    writer.write_config({**cfg.to_dict(), DERIVED: list(derived)})  # (also empty: it marks a run's record)
    writer.trace.create()
    return None


def frozen_copy(model: nn.Module, device) -> nn.Module:
    """A copy of ``model`` in eval mode (a reference network: only ever called under ``no_grad``)."""
    return copy.deepcopy(model).to(device).eval()


def gate(summary: dict[str, Any], value: float, min_accuracy: float | None, what: str) -> dict[str, Any]:
    """Add the ``--min-accuracy`` verdict to a summary (the CLI exits 3 when it failed)."""
    summary["min_accuracy"] = min_accuracy
    summary["gated_value"] = value
    summary["gated_on"] = what
    summary["passed"] = min_accuracy is None or (not math.isnan(value) and value >= min_accuracy)
    return summary


# --------------------------------------------------------------------------- the skeleton of a job


@dataclass
class Setup:
    """A job's networks and data, loaded and checked: what :meth:`Job.run` needs to open the run."""

    cfg: Any  # the resolved options (what config.yaml records)
    model: nn.Module  # the network that moves, on the run's device, at the start of the path
    arch: str  # of the path's networks (what every saved network records)
    arch_kwargs: dict
    parent_sha256: str | None  # of the start checkpoint (a resumed run must start from the same file)
    data: str | None  # the data set saved networks record
    evaluate: Callable[[nn.Module], dict]  # the job's columns of a trace row
    epoch_size: int  # sample passes per epoch
    bn_data: Dataset | None  # BatchNorm statistics are re-estimated on it at every recorded network
    total_steps: int  # for the progress bar
    own: Any = None  # the job's own (target, endpoints, tasks, legs): read by its walk, peer task and summary
    preprocess: str | None = None  # how stored data became inputs (every saved network records it)
    carry: dict | None = None  # metadata every saved network inherits from the start checkpoint (carried())
    derived: list[str] = field(default_factory=list)  # options the command left unset and the run filled in
    # seconds of the work prepare did that the run's sample passes count (sparsify: ranking the weights, the settle
    # rules, the mask): the run's wall time starts with them, the geodesic's and a peer's alike
    spent_seconds: float = 0.0


@dataclass
class Outcome:
    """How the path or the peer ended."""

    final: dict  # the endpoint's trace row
    target: Any = None  # sparsify: the target a peer chose its own masks for
    reached: bool = True  # connect: the approach reached B before landing


def _remove_run(out: Path, keep_directory: bool) -> None:
    """Remove what a failed run wrote: the directory it made, or the contents of one that was there."""
    if not keep_directory:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


class Job:
    """The skeleton every job runs; a subclass supplies what is its own.

    ``run(cfg, overwrite, resume, on_row, on_start)`` is the whole job: it returns the summary also
    written to ``summary.json``. ``on_row(row)`` sees every trace row; ``on_start(cfg, total_steps)``
    is called once the run is open (``total_steps`` 0: a peer, no step count).
    """

    name: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]  # trace.csv's columns
    headline: ClassVar[list[str]]  # the summary's figures compare shows
    gate_on: ClassVar[str]  # the summary figure --min-accuracy checks

    def prepare(self, cfg, device) -> Setup:
        raise NotImplementedError

    def walk(self, setup: Setup, recorder: Recorder, state: PathState | None, device) -> Outcome:
        raise NotImplementedError

    def peer_task(self, setup: Setup, record: PeerRecorder, device) -> PeerTask:
        raise NotImplementedError(f"{self.name} has no peer methods")

    def summarise(self, setup: Setup, writer: RunWriter, outcome: Outcome) -> dict[str, Any]:
        raise NotImplementedError

    def resumable(self, cfg) -> bool:
        """Whether an interrupted run of ``cfg`` can be taken up with --resume: the geodesic's walk (a peer trains in
        one go)."""
        return getattr(getattr(cfg, "method", None), "value", registry.GEODESIC) == registry.GEODESIC

    def begin(self, setup: Setup, writer: RunWriter, resume: bool, geodesic: bool) -> PathState | None:
        """Write the config and an empty trace, or (``--resume``) load the last complete step."""
        return begin(writer, setup.cfg, setup.model, setup.parent_sha256, resume, resumable=geodesic,
                     parent_b=(setup.carry or {}).get(PARENT_B), derived=setup.derived)

    def run(self, cfg, overwrite: bool = False, resume: bool = False, on_row: Callable[[dict], None] | None = None,
            on_start: Callable[[Any, int], None] | None = None) -> dict[str, Any]:
        out, device = open_run(cfg, overwrite, resume, self.resumable(cfg))
        setup = self.prepare(cfg, device)
        setup.derived = derived_options(cfg, setup.cfg)
        existed = out.exists()  # (an empty directory the user made is theirs to keep)
        carry = {**classes_record(setup.data), **(setup.carry or {}),
                 **reading_record(setup.cfg.image_size, setup.cfg.channels)}
        writer = open_writer(out, overwrite, resume, setup.arch, setup.arch_kwargs, setup.parent_sha256, self.name,
                             setup.data, self.columns, preprocess=setup.preprocess, carry=carry)
        try:
            return self._run(setup, writer, resume, on_row, on_start, device)
        except (Interrupted, KeyboardInterrupt):
            raise  # (what it allows next, --resume or --overwrite, the Interrupted says)
        except BaseException as e:
            if not resume and writer.writes and len(writer.trace.rows()) <= 1:
                # it failed before its first step: a corrected re-run needs no --overwrite, and nothing is left
                # that looks like a run
                _remove_run(writer.out, keep_directory=existed)
            elif isinstance(e, NumericalError) and writer.writes:  # (its steps so far are left: say how to start anew)
                raise NumericalError(f"{e}; --overwrite replaces what the run wrote") from None
            raise

    def _run(self, setup: Setup, writer: RunWriter, resume: bool, on_row, on_start, device) -> dict[str, Any]:
        recorder = Recorder(writer, setup.evaluate, setup.epoch_size, on_row, setup.bn_data, device)
        method = getattr(getattr(setup.cfg, "method", None), "value", registry.GEODESIC)
        geodesic = method == registry.GEODESIC
        state = self.begin(setup, writer, resume, geodesic)
        if on_start:
            on_start(setup.cfg, setup.total_steps if geodesic else 0)
        if geodesic:
            outcome = self.walk(setup, recorder, state, device)
        else:
            record = PeerRecorder(recorder, already=setup.spent_seconds)
            with in_one_go(f"--method {method}"):
                returned = registry.get(self.name, method).run(self.peer_task(setup, record, device))
            outcome = Outcome(record.rows[-1], target=returned)
        summary = {"job": self.name, "method": method, "out": str(writer.out), "final": "final.safetensors",
                   "headline": self.headline, **self.summarise(setup, writer, outcome)}
        gate(summary, summary[self.gate_on], setup.cfg.min_accuracy, self.gate_on)
        writer.finish(summary)
        return summary
