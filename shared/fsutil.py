"""Atomic file writes and non-destructive moves.

Writes follow the usual POSIX recipe: write a temp file in the same directory,
fsync it, rename(2) it over the target (atomic on one file system), fsync the
directory. Moves never overwrite: an existing name gets a ``.1``, ``.2``... suffix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically (readers see old or new, never half).

    Raises:
        OSError: the directory is not writable, the disk is full...
    """
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def move_aside(src: Path, dest_dir: Path) -> Path:
    """Move ``src`` into ``dest_dir`` without overwriting anything; return the new path.

    Raises:
        FileNotFoundError: ``src`` is gone. OSError: the move failed.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    n = 0
    while dest.exists() or dest.with_name(dest.name + ".error").exists():
        n += 1
        dest = dest_dir / f"{src.name}.{n}"
    os.rename(src, dest)
    _fsync_dir(dest_dir)
    return dest


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
