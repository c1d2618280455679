"""The core's choices as ``str`` enums (torch-free, so the command line can list them without importing torch).

Each member's docstring is its help text. The modules that act on a choice import it from here.
"""

from __future__ import annotations

from enum import Enum

# the built-in architectures (geopath.io.archs.BUILTIN's names; torch-free for the help texts that list them, and
# a test keeps the two equal), and every way to name one
BUILTIN_ARCHS = ("mlp", "lenet5", "vgg11", "resnet20", "vit")
ARCH_SPECS = ", ".join(BUILTIN_ARCHS) + ", torchvision:NAME, module:NAME or file.py:NAME"


class MetricKind(str, Enum):
    """Which output-space metric is pulled back to weight space."""

    LOGITS = "logits"
    """``JᵀJ`` on the logits (the paper's choice)."""
    FISHER = "fisher"
    """Softmax Fisher / GGN: ``Jᵀ(diag p − ppᵀ)J``."""


class JVPMode(str, Enum):
    """How a cached metric product computes ``J u``."""

    FORWARD = "forward"
    """Forward-mode AD (``torch.func.jvp``): redoes the forward pass alongside the tangent at every product."""
    REVERSE = "reverse"
    """Transpose the cached VJP (the VJP of ``c ↦ Jᵀc``): one extra backward graph per step, no forward pass
    per product; needs twice-differentiable layers (falls back to ``forward`` otherwise)."""
    LAYERWISE = "layerwise"
    """Each layer's own rule on the network's graph traced by torch.fx (:mod:`geopath.core.layerwise`):
    ``nn.Linear`` and ``nn.Conv2d`` by hand, other nodes through torch.func one at a time; no forward pass
    per product. Checked against torch.func once per network; a network it cannot follow uses ``reverse``
    (no BatchNorm) or ``forward``."""
    AUTO = "auto"
    """``layerwise`` on the CPU (torch.func's faster mode where it cannot follow the network); on other devices
    ``reverse`` for networks without BatchNorm, ``forward`` otherwise: the fastest as measured on each
    (docs/performance.md, docs/performance_cuda.md; :func:`geopath.core.metric.resolve_jvp_mode`)."""


class BNStats(str, Enum):
    """Which statistics BatchNorm layers normalise with in metric products and anchors."""

    BATCH = "batch"
    """The micro-batch's own statistics (the function with freshly estimated running statistics)."""
    RUNNING = "running"
    """The stored running statistics, held fixed while the weights move."""


class TRMethod(str, Enum):
    """How the trust-region subproblem is solved."""

    STEIHAUG = "steihaug"
    """Truncated CG stopping at the boundary (one product per iteration)."""
    MULTIPLIER = "multiplier"
    """Exact multiplier search, a damped CG solve per iteration."""


class ConnectPath(str, Enum):
    """How ``connect`` finds its geodesic."""

    WALK = "walk"
    """Greedy metric steps from A toward B, anchored to the endpoints' blended outputs."""
    RELAX = "relax"
    """The whole piecewise-linear path fitted at once to the blended outputs (:mod:`geopath.core.relax`)."""


class Anchor(str, Enum):
    """What the functional change of a step is measured against."""

    START = "start"
    """The starting network's outputs: drift along the path is corrected each step."""
    NONE = "none"
    """Only the local metric at the current point (the paper's step as written)."""
    LABELS = "labels"
    """The metric inputs' labels: the linear term is the cross-entropy gradient ``Jᵀ(p − y)``."""
    ENDPOINTS = "endpoints"
    """Outputs blended from the start and the target network by the path's progress (connect)."""
    START_LABELS = "start+labels"
    """Both: the starting network's outputs and the labels, ``r = r_start + λ (p − y)`` (``--label-weight``)."""

    @property
    def keeps_reference(self) -> bool:
        """Whether steps need the reference network's outputs."""
        return self in (Anchor.START, Anchor.ENDPOINTS, Anchor.START_LABELS)

    @property
    def uses_labels(self) -> bool:
        return self in (Anchor.LABELS, Anchor.START_LABELS)


class Combine(str, Enum):
    """How several metric sources (e.g. two tasks' inputs) enter a step."""

    SUM = "sum"
    """Every step uses the weighted mean of all sources' metrics."""
    ALTERNATE = "alternate"
    """Step ``k`` (numbered from 1) uses source ``(k − 1) mod S`` alone (cheaper steps)."""


class MaskScope(str, Enum):
    """How many weights each layer gives up for unstructured magnitude sparsity."""

    GLOBAL = "global"
    """The smallest-magnitude weights over all prunable layers together."""
    LAYER = "layer"
    """The same fraction of every prunable layer."""


class Augment(str, Enum):
    """Random views of image inputs drawn for every SGD batch (the settle's; teacher and student see the same)."""

    NONE = "none"
    """The stored inputs as they are."""
    FLIP = "flip"
    """Half of the images mirrored left to right."""
    CROP = "crop"
    """Each image shifted by up to an eighth of its side (4 pixels on 32×32), the uncovered border zero."""
    CROP_FLIP = "crop-flip"
    """``crop``, then half of the images mirrored left to right (the usual CIFAR-10 views)."""
