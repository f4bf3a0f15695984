"""Opening files that someone else may have replaced with something hostile.

A lockspace or a state_dir is a directory other processes (and, on shared
storage, other hosts) write to. A record replaced by a FIFO would block an
open forever, a symlink could lead the reader (or a writer) out of the
directory, and a huge file would be read whole into memory. Every record
and lock file is therefore opened here: no symlink is followed, no open
blocks, anything but a regular file is refused naming its path, and reads
stop at a size cap.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import CorruptRecordError

__all__ = ["open_regular", "read_capped", "read_regular"]

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _not_regular(path: str, mode: int) -> CorruptRecordError:
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return CorruptRecordError(path, f"is {kind}, not a regular file: refused")


def open_regular(path: str, flags: int, create_mode: int = 0o600) -> int:
    """A descriptor of the regular file ``path``, opened with ``flags``.

    Raises:
        FileNotFoundError: ``path`` is absent (and ``flags`` has no O_CREAT).
        CorruptRecordError: ``path`` is a symlink, a directory, a FIFO or
            any other special file; nothing was opened.
        OSError: any other failure, with ``filename`` set.
    """
    try:
        # O_NONBLOCK: opening a FIFO that has no writer would block forever;
        # it does nothing to regular files.
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, create_mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptRecordError(path, "is a symbolic link: refused (never followed)") from None
        if exc.errno == errno.EISDIR:
            raise _not_regular(path, stat.S_IFDIR) from None
        if exc.filename is None:
            exc.filename = path
        raise
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(path, mode)
    return fd


def read_capped(fd: int, path: str, cap: int) -> bytes:
    """The rest of ``fd``'s file, refused when it is larger than ``cap`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = os.read(fd, min(1 << 16, cap + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            raise CorruptRecordError(path, f"is larger than {cap} bytes: refused")


def read_regular(path: str, cap: int) -> bytes | None:
    """The whole regular file ``path`` (at most ``cap`` bytes), or None when absent."""
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return read_capped(fd, path, cap)
    finally:
        os.close(fd)
