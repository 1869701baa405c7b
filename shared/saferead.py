"""The one way the daemon reads a file that someone else may have written.

Ticket files (at intake and again at each attempt), CI status files and any
other file from outside go through :func:`read_file`. Whatever is at the path
(a FIFO, ``/dev/zero``, a 100 MB file, a symlink out of the project home) it
returns the bytes of a regular file of bounded size, or raises
:class:`FileRefused` with a one-line reason; it never blocks on the file and
never reads what it refuses. It is blocking I/O: async callers run it in a
worker thread (:func:`read_file_async`), so a slow disk never stalls the
event loop.

Rules (docs/security.md):

* the target (after symlinks) must be a regular file: FIFOs, sockets and
  devices are refused before and after opening (``O_NONBLOCK``, so even a
  FIFO swapped in between never blocks the open);
* with ``inside`` set, the opened file must lie inside that directory (the
  project home): a symlink pointing out of it is refused without reading;
* at most ``max_bytes`` are read; a larger file is refused.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio

from orchestrator.shared.errors import OrchestratorError

__all__ = [
    "MAX_CI_STATUS_BYTES",
    "MAX_FEEDBACK_BYTES",
    "MAX_TICKET_BYTES",
    "FileRefused",
    "read_file",
    "read_file_async",
]

#: Largest ticket file accepted (bytes); docs/config.md.
MAX_TICKET_BYTES = 1 << 20
#: Largest CI status file accepted (bytes).
MAX_CI_STATUS_BYTES = 1 << 20
#: Largest feedback file accepted (bytes).
MAX_FEEDBACK_BYTES = 1 << 20

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class FileRefused(OrchestratorError):
    """A file that must not be read (wrong type, too big, outside the home)."""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def _inside(path: str, root: Path) -> bool:
    root_s = os.path.realpath(root)
    return path == root_s or path.startswith(root_s.rstrip("/") + "/")


def read_file(path: str | os.PathLike[str], max_bytes: int, inside: Path | None = None) -> bytes:
    """Read a whole regular file of at most ``max_bytes`` bytes.

    Args:
        path: the file; symlinks are followed (only to inside ``inside``).
        max_bytes: the size cap; a larger file is refused unread.
        inside: when given, the file's real path must lie under this directory.

    Raises:
        FileNotFoundError: nothing at ``path`` (or a dangling symlink).
        FileRefused: not a regular file, larger than ``max_bytes`` or outside
            ``inside``; the message says which (never the file's content).
        OSError: any other failure to open or read (permissions...).
    """
    name = os.fspath(path)
    st = os.stat(name)  # follows symlinks; refuses devices before open(2) touches them
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(f"{_kind(st.st_mode)}, not a regular file; not read")
    if inside is not None and not _inside(os.path.realpath(name), inside):
        raise FileRefused(f"a symlink to outside the project home ({inside}); not read")
    if st.st_size > max_bytes:
        raise FileRefused(f"{st.st_size} bytes, more than the limit of {max_bytes}; not read")
    fd = os.open(name, _FLAGS)
    try:
        st = os.fstat(fd)  # what we actually opened (it may have been swapped meanwhile)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(f"{_kind(st.st_mode)}, not a regular file; not read")
        if inside is not None:
            real = os.readlink(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self/fd") else name
            if not _inside(os.path.realpath(real), inside):
                raise FileRefused(f"a symlink to outside the project home ({inside}); not read")
        chunks = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise FileRefused(f"more than the limit of {max_bytes} bytes; not read")
    return data


async def read_file_async(
    path: str | os.PathLike[str], max_bytes: int, inside: Path | None = None
) -> bytes:
    """:func:`read_file` in a worker thread (same arguments and errors)."""
    return await anyio.to_thread.run_sync(read_file, path, max_bytes, inside)
