"""Architectures by name.

* built-in: ``mlp``, ``lenet5``, ``vgg11`` (the CIFAR variant: 3×3 convs, BatchNorm,
  one linear classifier on 512 features), ``resnet20`` (He et al.'s CIFAR ResNet-20, 1×1 conv
  shortcuts where the shape changes), ``vit`` (a small pre-norm vision transformer, MNIST-sized by
  default);
* ``torchvision:NAME`` — any torchvision classification model (weights never downloaded);
* ``package.module:NAME`` — an ``nn.Module`` class, or a function that returns a module, from
  an importable module (the current directory is importable);
* ``path/to/file.py:NAME`` — the same from a Python file.

The last two run the user's code. A checkpoint's metadata may name only the first two by itself
(:func:`trusted`); anything else is built only when the user names it (``--arch``) or allows it
(``--trust-code``), as a pickle is read only with ``--trust-pickle``.

Keyword arguments come as a JSON object (``--arch-kwargs '{"hidden": [300, 100]}'``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from geopath.errors import UsageError


class MLP(nn.Module):
    """Fully connected ReLU network; inputs are flattened."""

    def __init__(self, in_features: int = 784, hidden=(300, 100), num_classes: int = 10):
        super().__init__()
        sizes = [in_features, *hidden, num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class LeNet5(nn.Module):
    """LeNet-5 (ReLU, max-pooling) for 28×28 (padding 2) or 32×32 inputs."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        pad = 2 if image_size == 28 else 0
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=pad)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """VGG11 for 32×32 CIFAR images: ``features.0`` is the first (64-filter) conv.

    ``width`` scales every layer's channels (``width=0.5`` halves them) for CPU runs. The classifier
    is one linear layer on the last conv's features (``classifier``), or with ``hidden`` sizes the
    original VGG's fully connected ReLU layers (``hidden=[4096, 4096]``: ``classifier.0`` and
    ``classifier.2`` are the hidden layers, ``classifier.4`` the output layer; no dropout).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, batch_norm: bool = True, width: float = 1.0,
                 hidden: Sequence[int] = ()):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in VGG11_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = max(1, int(round(v * width)))
            layers.append(nn.Conv2d(c, out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=False))
            c = out
        self.features = nn.Sequential(*layers)
        if not isinstance(hidden, (list, tuple)) or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0
                                                            for h in hidden):
            raise UsageError(f"vgg11: hidden must be a list of positive layer sizes, got {hidden!r}")
        if not hidden:
            self.classifier = nn.Linear(c, num_classes)
        else:
            head: list[nn.Module] = []
            for h in hidden:
                head += [nn.Linear(c, h), nn.ReLU(inplace=False)]
                c = h
            self.classifier = nn.Sequential(*head, nn.Linear(c, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """Two 3×3 conv + BatchNorm layers with an identity shortcut, or a 1×1 conv + BatchNorm one where the
    shape changes (He et al. 2016's option B)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """The CIFAR ResNet of He et al. 2016 (§4.2): a 3×3 conv of 16 filters, three stages of ``blocks`` basic
    blocks (16, 32, 64 filters, times ``width``), global average pooling, one linear classifier.
    ``blocks=3`` is ResNet-20 (0.27 M parameters)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, blocks: int = 3, width: float = 1.0):
        super().__init__()
        widths = [max(1, int(round(c * width))) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(c, w, 2 if (b == 0 and i > 0) else 1))
                c = w
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(out.mean(dim=(2, 3)))


def resnet20(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNetCifar:
    return ResNetCifar(num_classes, in_channels, blocks=3, width=width)


class EncoderBlock(nn.Module):
    """One pre-norm transformer encoder block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    The attention projects q, k and v with one ``nn.Linear`` (``qkv``) and calls
    ``F.scaled_dot_product_attention``, so every weight matrix is a Linear layer's (prunable, and the
    metric's products run the attention on its differentiable math kernel)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = (z.reshape(n, t, self.heads, d // self.heads).transpose(1, 2)
                   for z in self.qkv(self.norm1(x)).chunk(3, dim=-1))
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """A small vision transformer (Dosovitskiy et al. 2021, pre-norm, no class token): the image cut into
    ``patch``×``patch`` patches, each embedded by one linear layer (``embed``) plus a learned position
    (``pos``), ``depth`` encoder blocks (:class:`EncoderBlock`, ``blocks.i``), a final LayerNorm, the mean
    over tokens and one linear classifier (``head``). The defaults fit MNIST: 16 tokens of 7×7 pixels,
    width 64, 4 blocks of 4 heads, MLP width 128 (0.14 M parameters)."""

    def __init__(self, image_size: int = 28, patch: int = 7, channels: int = 1, dim: int = 64, depth: int = 4,
                 heads: int = 4, mlp_dim: int = 128, num_classes: int = 10):
        super().__init__()
        for key, value in (("image_size", image_size), ("patch", patch), ("channels", channels), ("dim", dim),
                           ("depth", depth), ("heads", heads), ("mlp_dim", mlp_dim), ("num_classes", num_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"vit: {key} must be a positive integer, got {value!r}")
        if image_size % patch:
            raise UsageError(f"vit: patch ({patch}) must divide image_size ({image_size})")
        if dim % heads:
            raise UsageError(f"vit: heads ({heads}) must divide dim ({dim})")
        self.patch = patch
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, mlp_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        tokens = F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)  # (N, tokens, C·p·p)
        h = self.blocks(self.embed(tokens) + self.pos)
        return self.head(self.norm(h).mean(dim=1))


BUILTIN: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "lenet5": LeNet5, "vgg11": VGG11, "resnet20": resnet20,
                                                "vit": ViT}


def trusted(arch: str) -> bool:
    """Whether ``arch`` names geopath's or torchvision's code only (safe to build from a file's metadata)."""
    return arch in BUILTIN or arch.startswith("torchvision:")


def _import_module(name: str):
    """Import ``name`` as ``import`` would from the current directory (the console script has no
    current directory on ``sys.path``; ``python -m`` has)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    finally:
        if added:
            sys.path.remove(cwd)


def _load_file(path: Path):
    """Load a Python file as a module, once per file (keyed by its resolved path)."""
    path = path.expanduser().resolve()
    name = f"geopath_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: cannot be loaded as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise UsageError(f"{path}: failed to run ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                         ) from None
    return module


def _user_factory(arch: str) -> Callable[..., nn.Module]:
    where, _, attr = arch.rpartition(":")
    if not where or not attr:
        raise UsageError(f"--arch {arch!r}: expected MODULE:NAME or FILE.py:NAME")
    if where.endswith(".py"):
        path = Path(where)
        if not path.expanduser().is_file():
            raise UsageError(f"--arch {arch!r}: no such file {where}")
        module = _load_file(path)
    else:
        try:
            module = _import_module(where)
        except Exception as e:
            raise UsageError(f"cannot import module {where!r} for --arch ({e}); pass a module importable from "
                             f"the current directory, or a file: --arch path/to/{where.split('.')[-1]}.py:{attr}"
                             ) from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UsageError(f"--arch {arch!r}: {where} has no class or function {attr!r}")
    if isinstance(factory, type) and not issubclass(factory, nn.Module):
        raise UsageError(f"--arch {arch!r} does not name an nn.Module class")
    return factory


def build_model(arch: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate an architecture by name (see module docstring)."""
    kwargs = dict(kwargs or {})
    if arch in BUILTIN:
        factory: Callable[..., nn.Module] = BUILTIN[arch]
    elif arch.startswith("torchvision:"):
        import torchvision.models as tvm

        name = arch.split(":", 1)[1]
        if name not in tvm.list_models(module=tvm):
            raise UsageError(f"unknown torchvision model {name!r}")
        kwargs.setdefault("weights", None)
        if kwargs["weights"] is not None:
            raise UsageError("torchvision weights are not downloaded by geopath; pass a checkpoint instead")
        factory = lambda **kw: tvm.get_model(name, **kw)  # noqa: E731
    elif ":" in arch:
        factory = _user_factory(arch)
    else:
        known = ", ".join(sorted(BUILTIN))
        raise UsageError(f"unknown architecture {arch!r} (built-in: {known}; or torchvision:NAME, "
                         "package.module:NAME, path/to/file.py:NAME)")
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise UsageError(f"bad keyword arguments for {arch!r}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"--arch {arch!r} returned {type(model).__name__}, not an nn.Module")
    return model
