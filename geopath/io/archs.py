"""Architectures by name.

* built-in: ``mlp``, ``lenet5``, ``vgg11`` (the CIFAR variant: 3×3 convs, BatchNorm,
  one linear classifier on 512 features);
* ``torchvision:NAME`` — any torchvision classification model (weights never downloaded);
* ``package.module:Class`` — any importable ``nn.Module`` class.

Keyword arguments come as a JSON object (``--arch-kwargs '{"hidden": [300, 100]}'``).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch
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

    ``width`` scales every layer's channels (``width=0.5`` halves them) for CPU runs.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, batch_norm: bool = True, width: float = 1.0):
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
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


BUILTIN: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "lenet5": LeNet5, "vgg11": VGG11}


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
        module_name, _, cls_name = arch.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise UsageError(f"cannot import module {module_name!r} for --arch: {e}") from None
        factory = getattr(module, cls_name, None)
        if factory is None or not (isinstance(factory, type) and issubclass(factory, nn.Module)):
            raise UsageError(f"{arch!r} does not name an nn.Module class")
    else:
        known = ", ".join(sorted(BUILTIN))
        raise UsageError(f"unknown architecture {arch!r} (built-in: {known}; or torchvision:NAME, package.module:Class)")
    try:
        return factory(**kwargs)
    except TypeError as e:
        raise UsageError(f"bad keyword arguments for {arch!r}: {e}") from None
