"""Every file a run writes is written whole or not at all: a temporary file beside it, flushed and
synced to disk, then renamed over it.

A kill, a full disk or a power cut mid-write leaves the previous version of the
file in place (the rename is atomic on POSIX and Windows filesystems), never
half of the new one.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import os
import shutil
import socket
import tempfile
import time
from typing import IO, Iterator, Optional


class WriteError(OSError):
    """A file could not be written (disk full, no permission, ...); what was there before is untouched."""

    def __init__(self, path: str, reason: str, errno: Optional[int] = None):
        super().__init__(f"could not write {path}: {reason}; what was there before is kept")
        self.path, self.reason, self.errno = path, reason, errno


class NoSpaceError(OSError):
    """Not enough free space for what a command is about to write (checked first), or a write that found the
    disk full: one line with what is needed and what is free."""


def is_full_disk(err: BaseException) -> bool:
    """Whether ``err`` is a write that failed for want of space (a full disk, or a quota)."""
    return isinstance(err, OSError) and err.errno in (errno_codes.ENOSPC, errno_codes.EDQUOT)


def size_text(count: float) -> str:
    """1234567890 -> '1.2 GB' (decimal units, as disks are sold and df -H prints)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000.0
    return f"{count:.1f} TB"


def free_space(folder: str) -> int:
    """Bytes free to this user on the filesystem that holds ``folder`` (or its nearest existing parent)."""
    path = os.path.abspath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def need_space(folder: str, needed: int, what: str, hint: str = "") -> None:
    """Raise NoSpaceError before the first byte where ``folder``'s filesystem has less than ``needed`` bytes
    free for ``what``."""
    free = free_space(folder)
    if needed > free:
        raise NoSpaceError(
            f"not enough free space in {folder} for {what}: it needs {size_text(needed)} and "
            f"{size_text(free)} is free{hint}"
        )


def make_folder(path: str) -> None:
    """``path`` as a folder, made with its parents where missing; :class:`WriteError` where it cannot be."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        reason = (
            "a file of that name is in the way"
            if isinstance(err, FileExistsError)
            else err.strerror
        )
        raise WriteError(path, reason or str(err)) from None


def temporary_beside(path: str) -> str:
    """A new, empty file beside ``path`` with a name no other writer has (``.NAME.XXXXXXXX.tmp``): two
    processes writing the same file never write into each other's temporary file."""
    folder, name = os.path.split(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(handle)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # as open() would make it, not mkstemp's owner-only 0600
    return tmp


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; when the block ends, flush, fsync and rename it
    over ``path``. If the block or the write fails, the temporary file is removed and ``path`` keeps its
    old content; an OSError becomes a :class:`WriteError` naming ``path``."""
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    tmp = None
    try:
        tmp = temporary_beside(path)
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(path, err.strerror or str(err), err.errno) from None
        raise


@contextlib.contextmanager
def file_lock(path: str, busy, unlockable) -> Iterator[None]:
    """The block with this process holding the lock file ``path`` (flock), its name written in it. While
    another process holds it, ``busy(handle)`` is called: it raises (a refusal), or returns and the lock is
    waited for. A file that cannot be opened: ``unlockable(path, err)``, and the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the block runs unlocked
        yield
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")
    except OSError as err:
        unlockable(path, err)
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy(handle)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        )
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)  # no name left behind for the next contender to read
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
