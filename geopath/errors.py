"""Errors that the command line turns into one line on stderr and an exit code.

Exit codes (documented in README): 0 ok, 1 runtime failure, 2 usage error,
3 ran to completion but missed a requested threshold (``--min-accuracy``).
"""

from __future__ import annotations

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_THRESHOLD = 3


class GeopathError(Exception):
    """A known failure with a one-line message; ``exit_code`` tells the CLI how to exit."""

    exit_code = EXIT_RUNTIME


class UsageError(GeopathError):
    """Bad input from the user: options, files, data sets, architectures."""

    exit_code = EXIT_USAGE


class CheckpointError(UsageError):
    """A checkpoint that is missing, corrupt, or does not fit the architecture."""


class DataError(UsageError):
    """A data set that is unknown or cannot be found offline."""


class StorageError(GeopathError):
    """A file could not be written (disk full, file too large, read-only or no permission)."""


class NumericalError(GeopathError):
    """NaN/Inf weights or a solver breakdown that could not be recovered."""
