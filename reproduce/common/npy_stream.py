"""A .npy file written as the batches come: rows appended, never the whole array in memory.

The header is written first with room for any row count, and rewritten with the true count at the end; until
then the file has a temporary name beside its own (``NAME.npy.partial``), so a run stopped midway leaves
nothing that looks whole, and an earlier run's file of that name stays as it was until the new one is done.
Appending with ``write`` (no memory map) keeps the written pages out of the process's resident memory.
"""

from __future__ import annotations

import contextlib
import os
from typing import Sequence

import numpy as np

from paper_alexnet.atomic import WriteError

MAGIC = b"\x93NUMPY\x01\x00"  # format version 1.0
_ROOM = 10**15  # the header is sized for a row count this long, then padded to it


def _header(dtype: np.dtype, shape: Sequence[int], length: int = 0) -> bytes:
    """The version 1.0 header (magic, length, dict) padded with spaces to ``length`` bytes (or to 64)."""
    text = repr(
        {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": tuple(shape),
        }
    )
    size = length or -(-(len(MAGIC) + 2 + len(text) + 1) // 64) * 64
    text = text.ljust(size - len(MAGIC) - 2 - 1) + "\n"
    if len(MAGIC) + 2 + len(text) != size:
        raise ValueError("the .npy header does not fit its room")
    return MAGIC + len(text).to_bytes(2, "little") + text.encode("latin1")


class NpyStream:
    """``path`` (.npy) of rows shaped ``row_shape`` and ``dtype``, appended with :meth:`write`; :meth:`close`
    makes it whole under its name, :meth:`discard` removes what was written."""

    def __init__(self, path: str, row_shape: Sequence[int], dtype="float32"):
        self.path, self.partial = path, path + ".partial"
        self.row_shape, self.dtype, self.rows = tuple(row_shape), np.dtype(dtype), 0
        self._length = len(_header(self.dtype, (_ROOM, *self.row_shape)))
        self._file = None
        with self._writing():
            self._file = open(self.partial, "wb")
            self._file.write(_header(self.dtype, (0, *self.row_shape), self._length))

    @contextlib.contextmanager
    def _writing(self):
        """An OSError (disk full, no permission) as a WriteError naming the file."""
        try:
            yield
        except OSError as err:
            if isinstance(err, WriteError):
                raise
            raise WriteError(self.path, err.strerror or str(err)) from None

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: rows of shape {rows.shape[1:]}, not {self.row_shape}")
        with self._writing():
            self._file.write(rows.data)
        self.rows += len(rows)

    def close(self) -> None:
        """The true row count into the header, then the file under its name."""
        with self._writing():
            self._file.seek(0)
            self._file.write(_header(self.dtype, (self.rows, *self.row_shape), self._length))
            self._file.close()
            os.replace(self.partial, self.path)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        if os.path.exists(self.partial):
            os.remove(self.partial)
