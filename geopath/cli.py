"""The ``geopath`` command line: parse, validate, call the library. Nothing else.

Results go to stdout (one JSON object per line with ``--json``); progress,
warnings and errors to stderr. Exit codes: 0 ok, 1 runtime failure, 2 usage
error, 3 the run finished but missed ``--min-accuracy``, 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import sys
import types
import typing
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from geopath import __version__
from geopath.config import JOBS
from geopath.core.choices import ARCH_SPECS
from geopath.errors import EXIT_THRESHOLD, GeopathError, UsageError
from geopath.io.preprocess import PREPROCESS_HELP
from geopath.report.text import fmt

EXIT_INTERRUPTED = 130


def _plain_flags(params) -> None:
    """A flag takes no value: typer's rich help printed its type as if it took one (``--json <bool>``,
    ``--help <bool>``); an empty metavar leaves the type column blank (parsing never reads a metavar)."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""


class _PlainFlags:
    """The flags of a command, its --help included (made when first asked for), shown without a type."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _plain_flags(self.params)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        _plain_flags([option] if option is not None else [])
        return option


class _Command(_PlainFlags, typer.core.TyperCommand):
    pass


class _Group(_PlainFlags, typer.core.TyperGroup):
    pass


app = typer.Typer(
    name="geopath",
    help="Move trained networks along geodesics of weight space: sparsify, merge, connect, transition; "
         "compare with peers; evaluate, inspect, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)


def _err(msg: str) -> None:
    typer.echo(f"Error: {msg}", err=True)


def _emit(obj: dict, as_json: bool) -> None:
    if as_json:
        from geopath.io.jsontext import dumps

        typer.echo(dumps(obj))


def _guard(fn, debug: bool):
    """Run ``fn``; known failures become one line on stderr and an exit code. An interrupted job says what its run
    allows next: ``--resume`` where it stopped between walk steps, ``--overwrite`` where it was training in one go
    (a training settle, a peer, connect's relaxation: :func:`geopath.core.path.in_one_go`)."""
    from geopath.core.path import Interrupted

    try:
        return fn()
    except GeopathError as e:
        if debug:
            raise
        _err(str(e))
        raise typer.Exit(e.exit_code)
    except (Interrupted, KeyboardInterrupt) as e:
        if debug:
            raise
        if not isinstance(e, Interrupted):  # (before a run was open, or a command that opens none)
            _err("interrupted")
        else:  # (its own words: "interrupted after step 74", "interrupted in --method gradual, which ...")
            _err(f"{str(e) or 'interrupted'}; " + ("the run can be continued with --resume" if e.resumable else
                                                    "start it again with --overwrite"))
        raise typer.Exit(EXIT_INTERRUPTED)
    except typer.Exit:
        raise
    except Exception as e:  # an unexpected failure: one line unless --debug
        if debug:
            raise
        _err(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (rerun with --debug for a traceback)")
        raise typer.Exit(1)


def _cell(key: str, v) -> str:
    """A table cell: passes as whole numbers, seconds to 0.1, other floats to 4 places."""
    if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
        if key == "sample_passes":
            return f"{v:,.0f}"
        if key == "wall_time":
            return f"{v:.1f}"
        if key == "epochs":
            return f"{v:.2f}"
    return fmt(v)


def _version(value: bool):
    if value:
        typer.echo(f"geopath {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")):
    pass


JSON_OPT = typer.Option(False, "--json", help="Machine-readable output: one JSON object per line on stdout.")
DEBUG_OPT = typer.Option(False, "--debug", help="Show tracebacks for errors.")


# --------------------------------------------------------------------------- job commands
#
# The flags of sparsify/merge/connect/transition are generated from the fields of
# their config dataclasses (geopath.config), so flags and config files cannot drift.


def _base_type(tp):
    """``X`` of ``X | None``; other types as they are."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp


def _annotation(tp):
    """The flag type typer sees for a config field's type (everything optional: None = not given)."""
    base = _base_type(tp)
    if base is dict or base is typing.Any or typing.get_origin(base) is dict:
        return Optional[str]
    if base is list or typing.get_origin(base) is list:
        return Optional[list[str]]
    return Optional[base]


def _default_text(f: dataclasses.Field) -> str:
    meta = f.metadata
    if meta.get("default_help"):
        return meta["default_help"]
    default = f.default if f.default is not dataclasses.MISSING else None
    if default is None or default is False or default == "":
        return ""
    return str(default.value if isinstance(default, Enum) else default)


def _shared_help(name: str) -> str:
    """The jobs' --help text of one of their common options (``geopath.config.CommonOptions``), for the
    commands that take the same option outside a job (eval, export, inspect, train): one wording for both."""
    from geopath.config import CommonOptions

    f = next(f for f in dataclasses.fields(CommonOptions) if f.name == name)
    text = _default_text(f)
    return f.metadata["help"] + (f" \\[default: {text}]" if text else "")


def _panel(cls, name: str) -> str:
    """The --help panel of a config field, by the class that declares it first: a flag every job shares
    is under the same heading in every job, even where a job changes its default or help."""
    from geopath.config import CommonOptions, WalkOptions

    if name in CommonOptions.__dict__.get("__annotations__", {}):
        return "Run"
    if name in getattr(cls, "PEER_OPTIONS", ()):
        return "Peer methods"
    return "Geodesic step" if name in WalkOptions.__dict__.get("__annotations__", {}) else "Job options"


def _job_parameters(cls) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(cls)
    params = []
    order = {"Job options": 0, "Geodesic step": 1, "Peer methods": 2, "Run": 3}
    for f in sorted(dataclasses.fields(cls), key=lambda f: order[_panel(cls, f.name)]):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        ann = _annotation(hints[f.name])
        if meta.get("arg"):
            default = typer.Argument(None, help=meta["help"], show_default=False)
        else:
            decls = [_flag(f)]
            if meta.get("short"):
                decls.append(meta["short"])
            text = _default_text(f)
            help_text = meta["help"] + (f" \\[default: {text}]" if text else "")
            extra = {"envvar": meta["envvar"]} if meta.get("envvar") else {}
            default = typer.Option(None, *decls, help=help_text, show_default=False,
                                   rich_help_panel=_panel(cls, f.name), **extra)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann))
    panel = {"rich_help_panel": "Run"}
    common = [
        ("config", Optional[Path], typer.Option(None, "--config", help="YAML file of options; flags override it.",
                                                **panel)),
        ("overwrite", bool, typer.Option(False, "--overwrite", help="Replace a non-empty output directory.", **panel)),
        ("resume", bool, typer.Option(False, "--resume", help="Continue the interrupted run in --out with its saved "
                                                              "options.", **panel)),
        ("as_json", bool, typer.Option(False, "--json", help="Machine-readable output: one JSON object per line on "
                                                             "stdout.", **panel)),
        ("debug", bool, typer.Option(False, "--debug", help="Show tracebacks for errors.", **panel)),
        ("progress", bool, typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr (only on a "
                                                                                "terminal).", **panel)),
    ]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, a, d in common]
    return params


def _flags(cls, given: dict) -> dict:
    """Flag values → config values (JSON objects parsed, paths as strings; None = not given)."""
    from geopath.config import json_object

    hints = typing.get_type_hints(cls)
    flags = {}
    for f in dataclasses.fields(cls):
        v = given.get(f.name)
        if v is None:
            continue
        base = _base_type(hints[f.name])
        if base is dict:
            v = json_object(v, _flag(f), f.metadata.get("example"))
        elif isinstance(v, (list, tuple)):
            v = list(v) or None
        flags[f.name] = v
    return flags


# where the run is, what it runs on, fetching, and the permissions (flags only: a saved config's are not read back)
RESUME_MAY_CHANGE = {"out", "device", "data_root", "download", "trust_pickle", "trust_code"}


def _job_of(saved: dict):
    """The job whose options a run's saved config holds, all of them, if exactly one job's do (else None)."""
    import warnings

    from geopath.config import JOBS, known_options

    fits = []
    for other in JOBS:
        try:
            with warnings.catch_warnings():  # (a key renamed since 0.1.0 is the resuming job's to warn about)
                warnings.simplefilter("ignore")
                known_options(other, saved)
        except UsageError:
            continue
        fits.append(other)
    return fits[0] if len(fits) == 1 else None


def _flag(f: dataclasses.Field) -> str:
    """A config field's command-line flag: its own spelling (``--layer`` for ``layers``), else ``--`` + its name."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _as_typed(cls, flags: list[str]) -> list[str]:
    """``changed_options``' names (``--`` + the field's name) as the user types them: a positional argument
    (``the checkpoint argument``), a flag spelt otherwise (``--layer`` for the field ``layers``)."""
    typed = {"--" + f.name.replace("_", "-"): f"the {f.name} argument" if f.metadata.get("arg") else _flag(f)
             for f in dataclasses.fields(cls)}
    return [typed.get(flag, flag) for flag in flags]


def _make_job_command(cls):
    """``geopath JOB``: its flags from ``cls``'s fields; it runs ``cls.RUNNER``'s ``JOB`` (a
    :class:`geopath.jobs.common.Job`) and prints that job's ``text(summary)``."""

    def command(**kw):
        as_json, debug, progress = kw.pop("as_json"), kw.pop("debug"), kw.pop("progress")
        config, overwrite, resume = kw.pop("config"), kw.pop("overwrite"), kw.pop("resume")

        def go():
            import importlib

            from geopath.config import changed_options, known_options, read_yaml, replayed, resolve

            flags = _flags(cls, kw)
            if resume:
                out = flags.get("out")
                if out is None:
                    raise UsageError("--resume needs --out pointing at the interrupted run")
                if overwrite:
                    raise UsageError("--resume continues the run in --out and --overwrite replaces it: choose one")
                if not (Path(out) / "config.yaml").is_file():
                    raise UsageError(f"{out}: nothing to resume (no config.yaml)")
                saved = read_yaml(Path(out) / "config.yaml")
                try:
                    known_options(cls, saved, f"{Path(out) / 'config.yaml'}")
                except UsageError as e:
                    other = _job_of(saved)  # (a run of another job: merge's checkpoint_b, transition's plan, ...)
                    if other is None or other is cls:
                        raise
                    raise UsageError(f"{out}: a {other.COMMAND} run, not a {cls.COMMAND} run ({e}); resume it with "
                                     f"geopath {other.COMMAND} --resume") from None
                # (repeated, not changed; a --config run record's derived options are the run's, not given)
                given = {**replayed(cls, read_yaml(config, rederive=True), flags), **flags}
                changed = changed_options(cls, saved, {k: v for k, v in given.items() if k not in RESUME_MAY_CHANGE})
                if changed:
                    raise UsageError(f"--resume continues with the run's saved options; drop "
                                     f"{', '.join(_as_typed(cls, changed))} (different from "
                                     f"{Path(out) / 'config.yaml'})")
                cfg = resolve(cls, saved, {k: v for k, v in flags.items() if k in RESUME_MAY_CHANGE},
                              resuming=True)
            else:
                cfg = resolve(cls, read_yaml(config, rederive=True), flags)
            job = importlib.import_module(cls.RUNNER).JOB
            with _ranks(cfg.device):
                summary = _run_with_progress(lambda **k: job.run(cfg, overwrite=overwrite, resume=resume, **k),
                                             as_json, progress)
            return job, summary

        job, summary = _guard(go, debug)
        if as_json:
            _emit({"event": "result", **summary}, True)
        else:
            for line in job.text(summary):
                typer.echo(line)
        if not summary.get("passed", True):
            _err(f"{summary['gated_on']} {summary['gated_value']:.4f} is below --min-accuracy {summary['min_accuracy']}")
            raise typer.Exit(EXIT_THRESHOLD)

    params = _job_parameters(cls)
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = cls.HELP
    command.__name__ = cls.COMMAND
    app.command(cls.COMMAND, cls=_Command)(command)


for _cls in JOBS:
    _make_job_command(_cls)


def _progress_info(row: dict) -> str:
    parts = [f"{k.replace('test_accuracy', 'acc')} {row[k]:.4f}" for k in
             ("test_accuracy", "test_accuracy_a", "test_accuracy_b") if isinstance(row.get(k), float)]
    return "  ".join(parts + [f"dist {row['distance']:.3g}"])


def _run_with_progress(run, as_json: bool, progress: bool):
    """Call ``run(on_row=..., on_start=...)`` with a rich progress bar on stderr when useful."""
    from rich.console import Console

    console = Console(stderr=True)
    show = progress and not as_json and console.is_terminal

    def on_row_json(row):
        _emit({"event": "step", **row}, as_json)

    if not show:
        return run(on_row=on_row_json if as_json else None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]geopath"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("walk", total=None, info="")

        def on_start(cfg, total):
            bar.update(task, total=total or None)

        def on_row(row):
            bar.update(task, completed=row["step"], info=_progress_info(row))

        return run(on_row=on_row, on_start=on_start)


@app.command(cls=_Command)
def compare(
    runs: list[Path] = typer.Argument(..., help="Run directories (each with a summary.json)."),
    as_json: bool = JSON_OPT,
    debug: bool = DEBUG_OPT,
):
    """One table of finished runs (geodesic and peers) side by side."""

    def go():
        from geopath.report.compare import load_runs

        return load_runs(runs)

    table = _guard(go, debug)
    if as_json:
        for row in table.rows:
            _emit(row, True)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # a pipe or a file: never truncate
        console = Console(width=max(200, 12 * len(table.columns) + 20))
    t = Table(*table.columns)
    for row in table.rows:
        t.add_row(*[_cell(c, row.get(c)) for c in table.columns])
    console.print(t)


@app.command(cls=_Command)
def plot(
    runs: list[Path] = typer.Argument(..., help="Run directories (each with trace.jsonl and summary.json)."),
    out: Path = typer.Option(..., "--out", "-o", help="Figure to write: .png, .pdf or .svg."),
    x: str = typer.Option("t", "--x", help="Horizontal axis: t, step, epochs, sample_passes, length or wall_time."),
    kind: str = typer.Option("path", "--kind", help="path: accuracy, distance and length along the runs; tasks: "
                                                    "task-A vs task-B accuracy of merge runs."),
    title: Optional[str] = typer.Option(None, "--title", help="Figure title."),
    label: Optional[list[str]] = typer.Option(None, "--label", help="Legend label per run (repeatable, one per run, "
                                                                   "in order)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
    as_json: bool = JSON_OPT,
    debug: bool = DEBUG_OPT,
):
    """Plot accuracy / distance to the target / metric length along one or more runs."""

    def go():
        from geopath.report.plot import plot_runs

        return plot_runs(runs, out, x=x, kind=kind, title=title, labels=label, overwrite=overwrite)

    path = _guard(go, debug)
    if as_json:
        _emit({"out": str(path)}, True)
    else:
        typer.echo(f"wrote {path}")


@app.command(cls=_Command)
def verify(
    run: Path = typer.Argument(..., help="A finished run directory."),
    as_json: bool = JSON_OPT,
    debug: bool = DEBUG_OPT,
):
    """Check a run's files against its manifest.json (exit 3 if any is missing or changed)."""

    def go():
        from geopath.io.manifest import verify_run

        return verify_run(run)

    res = _guard(go, debug)
    if as_json:
        _emit(res, True)
    else:
        typer.echo(f"{res['run']}: {res['files']} files, {len(res['missing'])} missing, {len(res['changed'])} "
                   f"changed, {len(res['unlisted'])} not in the manifest")
        for kind in ("missing", "changed", "unlisted"):
            for name in res[kind]:
                typer.echo(f"  {kind}: {name}")
    if not res["ok"]:
        _err(f"{run}: the run's files do not match its manifest")
        raise typer.Exit(EXIT_THRESHOLD)


@app.command("eval", cls=_Command)
def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="Network to evaluate."),
    data: Optional[str] = typer.Option(None, help="Labelled data set: a named set, a folder laid out by split, or "
                                                  "one set (PATH.npz, an image folder). \\[default: the checkpoint's, "
                                                  "when it has a test split]"),
    split: str = typer.Option("test", help="train or test (of a named set or a folder laid out by split)."),
    normalize: Optional[str] = typer.Option(None, help=PREPROCESS_HELP + " \\[default: the checkpoint's record, "
                                                       "else dataset]"),
    image_size: Optional[str] = typer.Option(None, help="Image folders: resize every image to S or H,W pixels."),
    channels: Optional[int] = typer.Option(None, help="Image folders: 1 (grayscale) or 3 (RGB) channels."),
    download: bool = typer.Option(False, "--download", help="Download a named data set that is not found."),
    data_root: Optional[str] = typer.Option(None, envvar="GEOPATH_DATA_ROOT", help=_shared_help("data_root"),
                                            show_default=False),
    size: Optional[int] = typer.Option(None, help="Only the first N samples."),
    arch: Optional[str] = typer.Option(None, help="Architecture (see geopath sparsify --help). \\[default: the "
                                                     "checkpoint's]"),
    arch_kwargs: Optional[str] = typer.Option(None, help="Architecture keyword arguments as JSON."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=_shared_help("trust_pickle")),
    trust_code: bool = typer.Option(False, "--trust-code", help="Build an architecture the file names outside "
                                                                "geopath and torchvision."),
    device: str = typer.Option("cpu", help=_shared_help("device"), show_default=False),
    as_json: bool = JSON_OPT,
    debug: bool = DEBUG_OPT,
):
    """Accuracy, loss and sparsity of a network."""

    def go():
        from geopath.config import ARCH_KWARGS_EXAMPLE, json_object
        from geopath.jobs.checkpoints import evaluate_checkpoint

        kwargs = json_object(arch_kwargs, "--arch-kwargs", ARCH_KWARGS_EXAMPLE) if arch_kwargs else None
        return evaluate_checkpoint(checkpoint, data, split, normalize, image_size, channels, download, data_root,
                                   size, arch, kwargs, trust_pickle, trust_code, device)

    res = _guard(go, debug)
    if as_json:
        _emit(res, True)
    else:
        for k, v in res.items():
            typer.echo(f"{k + ':':<12}{fmt(v)}")


@app.command("export", cls=_Command)
def export_cmd(
    source: Path = typer.Argument(..., help="A finished run (its final.safetensors) or a checkpoint with zeroed "
                                            "units."),
    out: Path = typer.Option(..., "--out", "-o", help="The compact network (.safetensors)."),
    data: Optional[str] = typer.Option(None, help="Data set for the inputs' shape and the checks. \\[default: the "
                                                  "checkpoint's]"),
    data_root: Optional[str] = typer.Option(None, envvar="GEOPATH_DATA_ROOT", help=_shared_help("data_root"),
                                            show_default=False),
    arch: Optional[str] = typer.Option(None, help="Architecture (see geopath sparsify --help). \\[default: the "
                                                  "checkpoint's]"),
    arch_kwargs: Optional[str] = typer.Option(None, help="Architecture keyword arguments as JSON."),
    trust_code: bool = typer.Option(False, "--trust-code", help="Build an architecture the file names outside "
                                                                "geopath and torchvision."),
    normalize: Optional[str] = typer.Option(None, help=PREPROCESS_HELP + " \\[default: the checkpoint's record, "
                                                       "else dataset]"),
    image_size: Optional[str] = typer.Option(None, help="Image folders: resize every image to S or H,W pixels."),
    channels: Optional[int] = typer.Option(None, help="Image folders: 1 (grayscale) or 3 (RGB) channels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
    as_json: bool = JSON_OPT,
    debug: bool = DEBUG_OPT,
):
    """Remove zeroed units physically: the smaller network, its size, MACs and latency before and after."""

    def go():
        from geopath.config import ARCH_KWARGS_EXAMPLE, json_object
        from geopath.jobs.export import export

        kwargs = json_object(arch_kwargs, "--arch-kwargs", ARCH_KWARGS_EXAMPLE) if arch_kwargs else None
        return export(source, out, data, data_root, arch, kwargs, trust_code, overwrite, normalize, image_size,
                      channels)

    res = _guard(go, debug)
    if as_json:
        _emit(res, True)
    else:
        from geopath.jobs.export import text

        for line in text(res):
            typer.echo(line)


@app.command("inspect", cls=_Command)
def inspect_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to describe."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=_shared_help("trust_pickle")),
    as_json: bool = JSON_OPT,
    debug: bool = DEBUG_OPT,
):
    """Architecture, tensors and metadata of a checkpoint (exit 3 where a tensor holds NaN or Inf)."""

    def go():
        from geopath.jobs.checkpoints import inspect_checkpoint

        return inspect_checkpoint(checkpoint, trust_pickle)

    res = _guard(go, debug)
    if as_json:
        _emit(res, True)
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = Console()
        if not console.is_terminal:  # a pipe or a file: long metadata and names are not wrapped
            console = Console(width=max([200, *(len(r["name"]) + 60 for r in res["tensors"])]), soft_wrap=True)
        console.print(f"[bold]{escape(res['checkpoint'])}[/bold]  ({res['values']:,} values)")
        for k, v in res["metadata"].items():  # (text from the file: printed as it is, never read as markup)
            console.print(f"  {escape(k)} = {escape(v)}", soft_wrap=True)
        table = Table("tensor", "shape", "dtype", "zeros", *(["NaN/Inf"] if res["nonfinite"] else []))
        for r in res["tensors"]:
            table.add_row(escape(r["name"]), "×".join(map(str, r["shape"])) or "scalar", r["dtype"], str(r["zeros"]),
                          *([str(r["nonfinite"])] if res["nonfinite"] else []))
        console.print(table)
    if res["nonfinite"]:
        bad = [r["name"] for r in res["tensors"] if r["nonfinite"]]
        _err(f"{checkpoint}: {res['nonfinite']:,} NaN or Inf value(s) in {', '.join(bad[:3])}"
             f"{' …' if len(bad) > 3 else ''}; no job will read it")
        raise typer.Exit(EXIT_THRESHOLD)


@app.command("train", cls=_Command)
def train_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the trained network (.safetensors)."),
    arch: str = typer.Option("mlp", help=f"{ARCH_SPECS}."),
    arch_kwargs: Optional[str] = typer.Option(None, help="Architecture keyword arguments as JSON."),
    data: str = typer.Option("mnist", help="Training data set (the train split of a named set or a folder laid out "
                                           "by split; or one set: PATH.npz, an image folder)."),
    eval_data: Optional[str] = typer.Option(None, help="Labelled test set for the reported accuracy. \\[default: "
                                                       "--data's test split]"),
    normalize: Optional[str] = typer.Option(None, help=PREPROCESS_HELP + " \\[default: dataset]"),
    image_size: Optional[str] = typer.Option(None, help="Image folders: resize every image to S or H,W pixels."),
    channels: Optional[int] = typer.Option(None, help="Image folders: 1 (grayscale) or 3 (RGB) channels."),
    download: bool = typer.Option(False, "--download", help="Download a named data set that is not found."),
    data_root: Optional[str] = typer.Option(None, envvar="GEOPATH_DATA_ROOT", help=_shared_help("data_root"),
                                            show_default=False),
    size: Optional[int] = typer.Option(None, help="Train on the first N samples only."),
    epochs: float = typer.Option(5.0, help="Epochs of training, in whole steps (at least one batch); the output "
                                           "and the file say how many it trained."),
    batch_size: int = typer.Option(128, help="Training batch size (samples per SGD step)."),
    lr: float = typer.Option(0.05, help="Learning rate (SGD, momentum 0.9, cosine decay)."),
    weight_decay: float = typer.Option(0.0, help="Weight decay of SGD (an L2 penalty on every parameter)."),
    seed: int = typer.Option(0, help=_shared_help("seed"), show_default=False),
    device: str = typer.Option("cpu", help=_shared_help("device"), show_default=False),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
    as_json: bool = JSON_OPT,
    debug: bool = DEBUG_OPT,
):
    """Train a network from scratch and save it as self-describing safetensors."""

    def go():
        from geopath.config import ARCH_KWARGS_EXAMPLE, json_object
        from geopath.jobs.checkpoints import train_checkpoint

        kwargs = json_object(arch_kwargs, "--arch-kwargs", ARCH_KWARGS_EXAMPLE)
        return train_checkpoint(out, arch, kwargs, data, eval_data, normalize, image_size, channels, download,
                                data_root, size, epochs, batch_size, lr, weight_decay, seed, device, overwrite)

    res = _guard(go, debug)
    if as_json:
        _emit(res, True)
    else:
        typer.echo(f"wrote {res['out']}: {_epochs_trained(res['epochs'], res['epochs_asked'])}, test accuracy "
                   f"{res['test_accuracy']:.4f} on {res['test_data']}")


def _epochs_trained(trained: float, asked: float) -> str:
    """``train``'s epochs, as trained: whole steps (at least one), so more or fewer than asked where the steps
    round (``--epochs 0.001`` trains a whole batch); the default's 4.998 of 5 on MNIST is not worth a word."""
    said = f"{trained:.3g}"
    text = f"{said} epoch{'' if said == '1' else 's'}"
    if abs(trained - asked) > 0.01 * asked:
        text += f" ({'more' if trained > asked else 'fewer'} than the {asked:g} asked: training takes whole steps)"
    return text


@contextmanager
def _ranks(device: str):
    """Under ``torchrun``: join the process group for the job; ranks > 0 print nothing on stdout."""
    from geopath.core import distributed

    if not distributed.launched():
        yield
        return
    comm = distributed.setup(device)
    if not comm.is_main:  # for the rest of the process: rank 0 reports
        sys.stdout = open(os.devnull, "w")
    try:
        yield
    finally:
        distributed.teardown()


def _sigterm_interrupts() -> None:
    """SIGTERM stops the program like Ctrl-C: temp files are removed, the exit code is 130.

    (A geodesic walk catches both itself, finishes its step and leaves a resumable run.)
    """
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def main() -> None:
    """Console-script entry point: every usage error is one ``Error:`` line and exit code 2."""
    import warnings

    # deprecation notices from inside torch are not actionable for a geopath user
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
    _sigterm_interrupts()
    try:
        code = app(standalone_mode=False)
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        _err("interrupted")
        code = EXIT_INTERRUPTED
    except Exception as e:
        # the parser's own errors (bad option, bad choice, missing argument) carry exit_code 2 and a
        # format_message(); they come from typer's bundled click, matched by shape, not by a private import
        if not (hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int)):
            raise
        ctx = getattr(e, "ctx", None)
        hint = f" (see geopath {ctx.info_name} --help)" if ctx is not None and ctx.parent is not None else ""
        message = " ".join(e.format_message().split())
        if message:  # (no arguments at all: the help was the answer)
            _err(message + hint)
        code = e.exit_code
    code = code if isinstance(code, int) else 0
    # a torchrun rank that ran a job leaves without the interpreter's shutdown; a command that never
    # imported the process-group code (--help, compare, verify) has nothing to tear down and stays torch-free
    distributed = sys.modules.get("geopath.core.distributed")
    if distributed is not None and distributed.launched():
        distributed.exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
