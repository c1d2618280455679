"""The ``geopath`` command line: parse, validate, call the library. Nothing else.

Results go to stdout (one JSON object per line with ``--json``); progress,
warnings and errors to stderr. Exit codes: 0 ok, 1 runtime failure, 2 usage
error, 3 the run finished but missed ``--min-accuracy``, 130 interrupted.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .config import MaskMode, SparsifyConfig, read_yaml, resolve
from .errors import EXIT_THRESHOLD, GeopathError, UsageError
from .geodesic import Anchor
from .metric import MetricKind
from .targets import MaskScope
from .trust_region import TRMethod

EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="geopath",
    help="Move trained networks along geodesics of weight space: sparsify, evaluate, inspect, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _err(msg: str) -> None:
    typer.echo(f"Error: {msg}", err=True)


def _emit(obj: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(obj, default=str))


def _guard(fn, debug: bool):
    """Run ``fn``; known failures become one line on stderr and an exit code."""
    from .path import Interrupted

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
        _err(f"interrupted ({e}); the run can be continued with --resume" if str(e) else "interrupted")
        raise typer.Exit(EXIT_INTERRUPTED)
    except typer.Exit:
        raise
    except Exception as e:  # an unexpected failure: one line unless --debug
        if debug:
            raise
        _err(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (rerun with --debug for a traceback)")
        raise typer.Exit(1)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _version(value: bool):
    if value:
        typer.echo(f"geopath {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")):
    pass


JSON_OPT = typer.Option(False, "--json", help="Machine-readable output: one JSON object per line on stdout.")
DEBUG_OPT = typer.Option(False, "--debug", help="Show tracebacks for errors.")


@app.command()
def sparsify(
    checkpoint: Optional[Path] = typer.Argument(None, help="Trained network (.safetensors, .pt, .pth)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (must be empty)."),
    sparsity: Optional[float] = typer.Option(None, help="Fraction of weights to zero, in [0, 1). \\[default: 0.7]"),
    structured: Optional[str] = typer.Option(None, help="Remove whole units instead: LAYER:COUNT[,LAYER:COUNT] (e.g. features.0:50)."),
    scope: Optional[MaskScope] = typer.Option(None, help="Unstructured: global or per-layer magnitude. \\[default: global]"),
    mask: Optional[MaskMode] = typer.Option(None, help="Unstructured mask fixed at the start or re-chosen each step. \\[default: fixed]"),
    layers: Optional[list[str]] = typer.Option(None, "--layer", help="Prune only these parameters (repeatable, e.g. layers.0.weight)."),
    data: Optional[str] = typer.Option(None, help="Inputs for the metric: mnist, fashion-mnist, cifar10, PATH.npz or an image folder. \\[default: the checkpoint's]"),
    eval_data: Optional[str] = typer.Option(None, help="Labelled test set for accuracy. \\[default: --data]"),
    data_root: Optional[str] = typer.Option(None, envvar="GEOPATH_DATA_ROOT", help="Folder with the data sets (torchvision layout)."),
    metric_size: Optional[int] = typer.Option(None, help="Use only the first N metric inputs."),
    eval_size: Optional[int] = typer.Option(None, help="Evaluate on the first N test samples."),
    arch: Optional[str] = typer.Option(None, help="Architecture if the file does not name one: mlp, lenet5, vgg11, torchvision:NAME, module:Class."),
    arch_kwargs: Optional[str] = typer.Option(None, help="Architecture keyword arguments as a JSON object."),
    trust_pickle: Optional[bool] = typer.Option(None, "--trust-pickle", help="Allow unpickling a .pt file (only for files you trust)."),
    beta: Optional[float] = typer.Option(None, help="Pull towards the target, β. \\[default: 1.0]"),
    step_size: Optional[float] = typer.Option(None, help="Trust region ε, the bound on θᵀθ per step. \\[default: (4·d0/steps)², d0 = starting distance]"),
    steps: Optional[int] = typer.Option(None, help="Planned steps to reach the target (sets the default step size). \\[default: 50]"),
    max_steps: Optional[int] = typer.Option(None, help="Approach steps at most before landing. \\[default: 3·steps]"),
    settle_steps: Optional[int] = typer.Option(None, help="Steps on the target after landing. \\[default: 150]"),
    tol: Optional[float] = typer.Option(None, help="Land when the distance is below tol × the starting distance. \\[default: 0.03]"),
    cg_iters: Optional[int] = typer.Option(None, help="CG iterations per step. \\[default: 5]"),
    damping: Optional[float] = typer.Option(None, help="Damping λ: the metric becomes g + λI. \\[default: 0]"),
    metric: Optional[MetricKind] = typer.Option(None, help="Output metric pulled back: logits (JᵀJ) or fisher. \\[default: logits]"),
    method: Optional[TRMethod] = typer.Option(None, help="Trust-region solver. \\[default: steihaug]"),
    anchor: Optional[Anchor] = typer.Option(None, help="Measure functional change against the start network or only locally. \\[default: start]"),
    batch_size: Optional[int] = typer.Option(None, help="Metric batch size. \\[default: 128]"),
    micro_batch: Optional[int] = typer.Option(None, help="Split metric batches into micro-batches of this size."),
    save_every: Optional[int] = typer.Option(None, help="Save a network and a trace row every K steps. \\[default: 10]"),
    seed: Optional[int] = typer.Option(None, help="Random seed. \\[default: 0]"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda. \\[default: cpu]"),
    min_accuracy: Optional[float] = typer.Option(None, help="Exit with code 3 if the final test accuracy is below this."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of options; flags override it."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out with its saved config."),
    as_json: bool = JSON_OPT,
    debug: bool = DEBUG_OPT,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr (only on a terminal)."),
):
    """Walk a trained network to a sparse network along a geodesic."""
    flags = {k: v for k, v in locals().items() if k in SparsifyConfig.__dataclass_fields__}
    flags["checkpoint"] = str(checkpoint) if checkpoint else None
    flags["out"] = str(out) if out else None
    flags["layers"] = list(layers) if layers else None

    def go():
        from .sparsify import run_sparsify

        if resume:
            if out is None:
                raise UsageError("--resume needs --out pointing at the interrupted run")
            if not (Path(out) / "config.yaml").is_file():
                raise UsageError(f"{out}: nothing to resume (no config.yaml)")
            cfg = resolve(SparsifyConfig, read_yaml(Path(out) / "config.yaml"), {})
        else:
            from .archs import parse_arch_kwargs

            if arch_kwargs is not None:
                flags["arch_kwargs"] = parse_arch_kwargs(arch_kwargs)
            cfg = resolve(SparsifyConfig, read_yaml(config), flags)
        return _run_with_progress(lambda **kw: run_sparsify(cfg, overwrite=overwrite, resume=resume, **kw),
                                  as_json, progress)

    summary = _guard(go, debug)
    if as_json:
        _emit({"event": "result", **summary}, True)
    else:
        typer.echo(f"final network:   {Path(summary['out']) / summary['final']}")
        typer.echo(f"test accuracy:   {_fmt(summary['test_accuracy'])} (start {_fmt(summary['dense_test_accuracy'])})")
        typer.echo(f"sparsity:        {_fmt(summary['sparsity'])}")
        typer.echo(f"path length:     {_fmt(summary['length'])}   steps: {summary['step']}   "
                   f"epochs of data: {summary['epochs']:.2f}")
    if not summary["passed"]:
        _err(f"final test accuracy {summary['test_accuracy']:.4f} is below --min-accuracy {summary['min_accuracy']}")
        raise typer.Exit(EXIT_THRESHOLD)


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
            bar.update(task, total=total)

        def on_row(row):
            bar.update(task, completed=row["step"],
                       info=f"acc {row['test_accuracy']:.4f} dist {row['distance']:.3g}")

        return run(on_row=on_row, on_start=on_start)


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="Network to evaluate."),
    data: Optional[str] = typer.Option(None, help="Labelled data set. \\[default: the checkpoint's]"),
    split: str = typer.Option("test", help="train or test."),
    data_root: Optional[str] = typer.Option(None, envvar="GEOPATH_DATA_ROOT"),
    size: Optional[int] = typer.Option(None, help="Only the first N samples."),
    arch: Optional[str] = typer.Option(None),
    arch_kwargs: Optional[str] = typer.Option(None),
    trust_pickle: bool = typer.Option(False, "--trust-pickle"),
    device: str = typer.Option("cpu"),
    as_json: bool = JSON_OPT,
    debug: bool = DEBUG_OPT,
):
    """Accuracy, loss and sparsity of a network."""

    def go():
        from .archs import parse_arch_kwargs
        from .checkpoint import load_checkpoint, sparsity_of
        from .data import load_dataset
        from .evaluate import evaluate
        from .sparsify import resolve_device

        dev = resolve_device(device)
        ck = load_checkpoint(checkpoint, arch, parse_arch_kwargs(arch_kwargs) if arch_kwargs else None, trust_pickle)
        name = data or ck.data
        if not name:
            raise GeopathError("the checkpoint does not record its data set; pass --data")
        ds = load_dataset(name, split, data_root).head(size)
        ev = evaluate(ck.model.to(dev), ds, device=dev)
        return {"checkpoint": str(checkpoint), "data": name, "split": split, "samples": ev.samples,
                "accuracy": ev.accuracy, "loss": ev.loss, "sparsity": sparsity_of(ck.model)}

    res = _guard(go, debug)
    if as_json:
        _emit(res, True)
    else:
        for k, v in res.items():
            typer.echo(f"{k + ':':<11}{_fmt(v)}")


@app.command()
def inspect(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to describe."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle"),
    as_json: bool = JSON_OPT,
    debug: bool = DEBUG_OPT,
):
    """Architecture, tensors and metadata of a checkpoint."""

    def go():
        from .checkpoint import read_tensors

        tensors, meta = read_tensors(checkpoint, trust_pickle)
        rows = [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
                 "zeros": int((v == 0).sum())} for k, v in tensors.items()]
        return {"checkpoint": str(checkpoint), "metadata": meta, "tensors": rows,
                "parameters": sum(v.numel() for v in tensors.values())}

    res = _guard(go, debug)
    if as_json:
        _emit(res, True)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{res['checkpoint']}[/bold]  ({res['parameters']:,} values)")
    for k, v in res["metadata"].items():
        console.print(f"  {k} = {v}")
    table = Table("tensor", "shape", "dtype", "zeros")
    for r in res["tensors"]:
        table.add_row(r["name"], "×".join(map(str, r["shape"])) or "scalar", r["dtype"], str(r["zeros"]))
    console.print(table)


@app.command("train")
def train_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the trained network (.safetensors)."),
    arch: str = typer.Option("mlp", help="mlp, lenet5, vgg11, torchvision:NAME or module:Class."),
    arch_kwargs: Optional[str] = typer.Option(None, help="Architecture keyword arguments as JSON."),
    data: str = typer.Option("mnist", help="Training data set."),
    data_root: Optional[str] = typer.Option(None, envvar="GEOPATH_DATA_ROOT"),
    size: Optional[int] = typer.Option(None, help="Train on the first N samples only."),
    epochs: float = typer.Option(5.0, help="Epochs of training."),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(0.05, help="Learning rate (SGD, momentum 0.9, cosine decay)."),
    weight_decay: float = typer.Option(0.0),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
    as_json: bool = JSON_OPT,
    debug: bool = DEBUG_OPT,
):
    """Train a network from scratch and save it as self-describing safetensors."""

    def go():
        import torch

        from .archs import build_model, parse_arch_kwargs
        from .checkpoint import save_checkpoint
        from .data import load_dataset
        from .errors import UsageError
        from .evaluate import evaluate
        from .sparsify import resolve_device
        from .train import train

        if out.exists() and not overwrite:
            raise UsageError(f"{out}: already exists (pass --overwrite to replace it)")
        if out.suffix != ".safetensors":
            raise UsageError(f"{out}: the output must be a .safetensors file")
        if epochs <= 0 or lr <= 0 or batch_size < 1:
            raise UsageError("--epochs and --lr must be > 0 and --batch-size ≥ 1")
        dev = resolve_device(device)
        torch.manual_seed(seed)
        kwargs = parse_arch_kwargs(arch_kwargs)
        model = build_model(arch, kwargs)
        tr = load_dataset(data, "train", data_root).head(size)
        te = load_dataset(data, "test", data_root)
        stats = train(model, tr, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      seed=seed, device=dev)
        ev = evaluate(model, te, device=dev)
        save_checkpoint(out, model.cpu(), arch, kwargs, step=0,
                        extra={"data": data, "test_accuracy": f"{ev.accuracy:.4f}"})
        return {"out": str(out), "arch": arch, "data": data, "epochs": epochs, "test_accuracy": ev.accuracy,
                "test_loss": ev.loss, "sample_passes": stats.sample_passes}

    res = _guard(go, debug)
    if as_json:
        _emit(res, True)
    else:
        typer.echo(f"wrote {res['out']}: test accuracy {res['test_accuracy']:.4f} on {res['data']}")


def main() -> None:
    """Console-script entry point: typer's usage errors exit with 2, ours as documented."""
    import warnings

    # deprecation notices from inside torch are not actionable for a geopath user
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
    try:
        app(standalone_mode=True)
    except SystemExit as e:
        sys.exit(e.code)


if __name__ == "__main__":
    main()
