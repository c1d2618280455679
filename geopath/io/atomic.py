"""Atomic file writes: temp name in the same folder, fsync, rename.

A write that fails for lack of space or permission leaves no file behind (the temp
file is removed) and raises :class:`~geopath.errors.StorageError`, one line for the CLI.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from geopath.errors import StorageError

# errors of the storage, not of the program: reported as "cannot write PATH (reason)"
STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def storage_error(path, e: OSError) -> StorageError:
    return StorageError(f"{path}: cannot write ({e.strerror or e})")


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path; on success it is fsynced and renamed onto ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise storage_error(path, e) from None
        raise
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            raise storage_error(path, e) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
