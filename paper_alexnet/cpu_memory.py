"""Keep freed memory in the process (glibc's malloc, Linux): why the paper net trained slower than it computes.

glibc hands a freed block back to the system when it was larger than its mmap threshold (which adapts, but
never past 32 MB on 64-bit), and trims the top of the heap; the next allocation of that size then takes a
page fault on every 4 KB page, which the kernel also zeroes. The paper net's conv1 maps (96 x 55 x 55 floats
per image: 37 MB at batch 32), their gradient and the like are over 32 MB and paid that every training step;
torchvision's (64 maps: 25 MB) mostly are not. Measured on the project's CPU: allocating and filling 37 MB
took 20 ms and 9,473 page faults, and 3 ms with none once freed blocks are kept (docs/performance.md).

The training, evaluation, features, ablation and bench commands call :func:`keep_freed_memory` when they
run as programs (``python -m reproduce.X``: ``reproduce.common.args.as_program``); the library never does, and
neither does a command called in a process that is not its own (a notebook's ``train.run``): a
process-wide setting is the program's choice. The cost: the process keeps what it freed, so its resident
memory stays at its peak, which a training loop reaches again every step anyway, but a process that runs
many things one after another would keep the peak of each, unless it hands the memory back between them
(:func:`return_freed_memory`, as the test suite's processes do after each test).
``PAPER_ALEXNET_KEEP_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
KEEP_BELOW = 1 << 30  # blocks under 1 GiB come from, and go back to, the heap
_kept = False


def keep_freed_memory(limit: int = KEEP_BELOW) -> bool:
    """Ask glibc to serve blocks under ``limit`` bytes from its heap and not to return freed memory to the
    system. True when set; False where there is no glibc or ``PAPER_ALEXNET_KEEP_MEMORY=0``."""
    if os.environ.get("PAPER_ALEXNET_KEEP_MEMORY", "1") == "0":
        return False
    mallopt = _glibc("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is None:
        return False
    global _kept
    _kept = bool(mallopt(M_MMAP_THRESHOLD, limit)) and bool(mallopt(M_TRIM_THRESHOLD, limit))
    return _kept


def return_freed_memory() -> bool:
    """Hand what the process has freed back to the system now (glibc's malloc_trim), the setting kept: for a
    process that keeps freed memory and runs one thing after another (the test suite, between two tests), so
    that the next starts from what is in use, not from the peak of the last. False where there is no glibc."""
    trim = _glibc("malloc_trim", [ctypes.c_size_t])
    if trim is None:
        return False
    trim(0)  # 1 if it gave memory back, 0 if there was none to give
    return True


def kept() -> bool:
    """Whether this process keeps its freed memory (:func:`keep_freed_memory` ran and took)."""
    return _kept


def _glibc(name: str, argtypes: list):
    """glibc's function ``name`` (returning int), or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = getattr(libc, name)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return function
