"""What every training-based peer shares: the recorder's type and how a budget becomes steps and rows."""

from __future__ import annotations

from typing import Callable

Record = Callable[..., dict]


def record_every(total_steps: int, records: int) -> int:
    """How many steps apart to record so that about ``records`` rows are written."""
    return max(1, total_steps // max(records, 1))


def train_steps(passes: int, batch_size: int) -> int:
    """SGD steps :func:`geopath.core.train.train` takes for a budget of ``passes`` samples."""
    return int(passes) // batch_size


def samples_seen(passes: int, n: int, batch_size: int) -> int:
    """The samples :func:`train_steps` steps take over ``n`` samples in epochs of shuffled batches (the last batch
    of an epoch holds the rest): what a budget of ``passes`` really spends, at most ``passes``."""
    steps = train_steps(passes, batch_size)
    per_epoch = -(-n // batch_size)
    epochs, rest = divmod(steps, per_epoch)
    return epochs * n + min(rest * batch_size, n)
