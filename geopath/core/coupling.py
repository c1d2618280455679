"""Which parameters carry one output channel of a layer through the whole network.

Zeroing a conv filter removes its channel only if every other producer of the same channel is zeroed
too: the BatchNorm that follows it, and, where the channel joins a residual stream (``x + f(x)``),
every block's last conv and BatchNorm that adds into that stream. Torch-Pruning's dependency graph
(``torch-pruning`` on PyPI, Fang et al., CVPR 2023) traces these groups from one forward pass; this
module turns a group into the flat weight indices the geodesic holds at zero.

Only the *producers* of a channel are zeroed (output rows of Linear and Conv layers, and the
channel's entries in BatchNorm, LayerNorm and GroupNorm): a channel that is zero where it is made is
zero downstream, and the following layers' input weights for it are left as they are (they see
only zeros). Physical removal (``geopath export``) drops those too.
"""

from __future__ import annotations

import torch
from torch import nn

from geopath.core.params import ParamSpace, model_vector
from geopath.errors import UsageError

ROW_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # output channels along weight dim 0
CHANNEL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)  # one weight/bias entry per channel


def dependency_graph(model: nn.Module, example: torch.Tensor):
    """Torch-Pruning's dependency graph of ``model`` traced on ``example`` inputs (in eval mode)."""
    import warnings

    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), warnings.catch_warnings():  # the graph is traced through autograd
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as e:
        raise UsageError(f"cannot trace the network's channel dependencies ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        model.train(was_training)


def producers(graph, model: nn.Module, layer: str, unit: int) -> list[tuple[str, nn.Module, int]]:
    """``(name, module, channel)`` of every module that produces output channel ``unit`` of ``layer``
    (the layer itself first)."""
    module = dict(model.named_modules())[layer]
    group = graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels, idxs=[unit])
    names = {m: n for n, m in model.named_modules()}
    out = []
    for dep, idxs in group:
        target = dep.target.module
        if target not in names or getattr(dep.handler, "__name__", "") != "prune_out_channels":
            continue  # an elementwise op (relu, add, pooling) or a consumer's input channels
        if not isinstance(target, ROW_LAYERS + CHANNEL_NORMS):
            raise UsageError(f"channel {unit} of {layer!r} also flows through {names[target]!r} "
                             f"({type(target).__name__}), which geopath cannot zero by channel")
        if isinstance(target, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and getattr(target, "transposed", False):
            raise UsageError(f"{layer!r} feeds the transposed conv {names[target]!r}; not supported")
        for i in idxs:
            out.append((names[target], target, int(i)))
    out.sort(key=lambda t: t[0] != layer)  # the layer itself first
    return out


def coupled_groups(model: nn.Module, space: ParamSpace, layer: str, graph) -> torch.Tensor:
    """Flat indices of each output unit of ``layer`` together with every coupled producer of its channel:
    a ``[units, group size]`` tensor (every unit of a layer has groups of the same size). ``graph``:
    :func:`dependency_graph` of ``model``, traced once for all the layers a caller asks about."""
    module = dict(model.named_modules()).get(layer)
    if not isinstance(module, ROW_LAYERS):
        raise UsageError(f"{layer!r} is not a Linear or Conv layer of this model")
    slices, shapes = space.slices(), {n: p.shape for n, p in model.named_parameters()}
    rows = []
    for unit in range(module.weight.shape[0]):
        idx = []
        for name, target, channel in producers(graph, model, layer, unit):
            for pname in ("weight", "bias"):
                full = f"{name}.{pname}" if name else pname
                if full not in slices:
                    continue
                shape = shapes[full]
                if isinstance(target, nn.LayerNorm) and len(shape) != 1:
                    raise UsageError(f"{name!r}: a LayerNorm over several dimensions is not supported")
                per = int(torch.Size(shape[1:]).numel()) if len(shape) > 1 else 1
                start = slices[full].start + channel * per
                idx.append(torch.arange(start, start + per))
        rows.append(torch.unique(torch.cat(idx)))
    sizes = {len(r) for r in rows}
    if len(sizes) != 1:
        raise UsageError(f"the units of {layer!r} are coupled to different numbers of weights; not supported")
    return torch.stack(rows)


def coupled_layers(model: nn.Module, layer: str, graph) -> list[str]:
    """The names of the modules coupled to ``layer``'s output channels (for messages and reports)."""
    return sorted({name for name, _, _ in producers(graph, model, layer, 0)} - {layer})


# --------------------------------------------------------------------------- physical removal


def output_layer(model: nn.Module, example: torch.Tensor) -> str | None:
    """The Linear or Conv layer whose output is the network's output (its units are the classes)."""
    seen: dict[int, str] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: seen.__setitem__(id(o), name))
             for name, m in model.named_modules() if isinstance(m, ROW_LAYERS)]
    try:
        with torch.no_grad():
            out = model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    if id(out) in seen:
        return seen[id(out)]
    layers = [n for n, m in model.named_modules() if isinstance(m, ROW_LAYERS)]
    return layers[-1] if layers else None


def dead_units(model: nn.Module, example: torch.Tensor) -> dict[str, list[int]]:
    """Units of each Linear/Conv layer (but the output layer) whose whole coupled group is zero: their
    channel is exactly zero everywhere, so removing them changes no output. Frozen parameters count (a
    frozen bias that is not zero keeps its unit alive); a channel normalised by a LayerNorm or GroupNorm
    is never removed, since its zeros enter the statistics of the other channels."""
    space = ParamSpace.of(model, frozen=True)
    w = model_vector(model, space)
    last = output_layer(model, example)
    out, graph = {}, None
    for name, m in model.named_modules():
        if not isinstance(m, ROW_LAYERS) or name == last:
            continue
        if not (m.weight.detach().reshape(m.weight.shape[0], -1) == 0).all(1).any():
            continue  # no unit with a zero row: nothing to trace
        if graph is None:  # traced once, for every candidate layer
            graph = dependency_graph(model, example)
        if any(isinstance(t, (nn.LayerNorm, nn.GroupNorm)) for _, t, _ in producers(graph, model, name, 0)):
            continue  # (removing a channel would change how the others are normalised)
        groups = coupled_groups(model, space, name, graph)
        dead = (w[groups] == 0).all(1).nonzero().reshape(-1).tolist()
        if dead and len(dead) < len(groups):
            out[name] = dead
    return out


def remove_units(model: nn.Module, layer: str, units: list[int], example: torch.Tensor) -> None:
    """Remove output ``units`` of ``layer`` and everything coupled to them from ``model``, in place
    (Torch-Pruning's surgery: the producers' rows, BatchNorm entries and statistics, and the
    following layers' input channels)."""
    graph = dependency_graph(model, example)
    module = dict(model.named_modules())[layer]
    group = graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels, idxs=units)
    if not graph.check_pruning_group(group):
        raise UsageError(f"cannot remove {len(units)} units of {layer!r}: no unit of it would be left")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group.prune()


def compact(model: nn.Module, example: torch.Tensor) -> list[tuple[str, list[int]]]:
    """Remove every dead unit (:func:`dead_units`) physically, a layer at a time; returns the history
    of removals, which :func:`replay` applies to a freshly built network of the same architecture."""
    history: list[tuple[str, list[int]]] = []
    while True:
        dead = dead_units(model, example)
        if not dead:
            return history
        layer, units = next(iter(dead.items()))
        remove_units(model, layer, units, example)
        history.append((layer, units))


def replay(model: nn.Module, history: list, example: torch.Tensor) -> nn.Module:
    """Apply a removal history to ``model`` (a compact checkpoint's recipe; no pickle needed)."""
    for layer, units in history:
        if layer not in dict(model.named_modules()):
            raise UsageError(f"the removal history names {layer!r}, which this architecture does not have")
        remove_units(model, layer, [int(u) for u in units], example)
    return model
