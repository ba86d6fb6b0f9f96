"""One run per folder: a run holds a lock on its ``--out`` from its first moment to its end. And one process at
a time on a piece of one-time work (``in_turn``): the first builds a data set's caches, the others then read them.

The lock is an advisory ``flock`` on a file named after the folder's absolute path, in the system's temporary
folder (so that a refused run writes nothing into ``--out``). The operating system releases it when its
process ends, however it ends: after ``kill -9`` there is no stale lock, and ``--resume`` just works. It
holds between processes of one machine; two machines writing one shared folder are not stopped. Under
torchrun the job's rank 0 holds it, so the job never refuses its own ranks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import time
from typing import Iterator

from paper_alexnet.atomic import file_lock
from reproduce.common.args import UsageError


def lock_path(out: str) -> str:
    """The lock file of ``out``: one folder per user (another user's could not be written)."""
    return _lock_file(os.path.realpath(out))


def _lock_file(name: str) -> str:
    key = hashlib.sha1(name.encode()).hexdigest()[:20]
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), f"paper_alexnet-locks-{user}", f"{key}.lock")


@contextlib.contextmanager
def in_turn(name: str, what: str, say) -> Iterator[None]:
    """Do the block while no other process of this machine does the block of the same ``name``: the processes of
    a torchrun job (or runs started together) wait here, with no timeout and no collective, while the first
    builds what the others then read from its cache. ``say(line)`` is told once when this process waits, and
    for ``what``. Where no lock can be taken, each process does the work itself."""

    def busy(handle):
        say(f"waiting for {_holder(handle)}, which {what}")

    with file_lock(_lock_file(name), busy, lambda path, err: None):
        yield


@contextlib.contextmanager
def hold(out: str) -> Iterator[None]:
    """Hold ``out`` for this process, or refuse at once (UsageError naming the process that holds it)."""

    def busy(handle):
        raise UsageError(
            f"{out} is in use by another run ({_holder(handle)}): wait for it to end, or choose another --out"
        ) from None

    def unlockable(path, err):  # a read-only temporary folder: run, unlocked, and say so
        print(
            f"warning: {out} is not locked against a second run ({path}: {err.strerror})",
            file=sys.stderr,
        )

    with file_lock(lock_path(out), busy, unlockable):
        yield


def _holder(handle) -> str:
    """Who holds the lock, as it wrote: it writes just after taking the lock, so wait a moment for it."""
    for _ in range(40):
        handle.seek(0)
        holder = handle.read().strip()
        if holder:
            return holder
        time.sleep(0.05)
    return "another process"
