"""Images read straight out of uncompressed tar archives, as image-net.org ships ILSVRC-2012 (§2's data).

``ILSVRC2012_img_train.tar`` holds one tar a class (``n01440764.tar`` ...), each holding that class's JPEGs;
``ILSVRC2012_img_val.tar`` holds the 50,000 validation JPEGs. Neither is compressed, so every image is a
run of bytes at a fixed place in its file: reading the tar headers alone gives an index of (file, offset,
size), and a worker reads one image with one ``pread``. Nothing is unpacked to disk.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .images import BadImageError, DataError, decode_rgb, is_image_file
from .splits import Split


@dataclass(frozen=True)
class Member:
    """One image in an archive: its name inside it, and where its bytes are in the file on disk."""

    name: str
    offset: int
    size: int


def _members(archive: tarfile.TarFile, base: int, prefix: str = "") -> list[Member]:
    return [
        Member(prefix + m.name, base + m.offset_data, m.size)
        for m in archive
        if m.isfile() and is_image_file(m.name)
    ]


def _open_tar(path: str, fileobj=None) -> tarfile.TarFile:
    try:
        return tarfile.open(path if fileobj is None else None, mode="r:", fileobj=fileobj)
    except tarfile.ReadError as err:
        compressed = tarfile.is_tarfile(path) if fileobj is None else False
        why = (
            "it is compressed, so its images cannot be read in place (decompress it: gunzip / xz -d)"
            if compressed
            else f"not an uncompressed tar archive ({err})"
        )
        raise DataError(f"cannot read {path}: {why}") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None


def tar_images(path: str) -> list[Member]:
    """The image files of the tar archive at ``path``, in archive order."""
    with _open_tar(path) as archive:
        return _members(archive, 0)


def nested_tar_images(path: str, progress: bool = False) -> dict[str, list[Member]]:
    """{inner tar's name without .tar: its images} for a tar of tars (ILSVRC2012_img_train.tar); the
    offsets are in the outer file."""
    from tqdm.auto import tqdm

    found: dict[str, list[Member]] = {}
    with _open_tar(path) as outer:
        inner = [m for m in outer.getmembers() if m.isfile() and m.name.lower().endswith(".tar")]
        for member in tqdm(
            inner, unit="class", desc=f"indexing {os.path.basename(path)}", disable=not progress
        ):
            name = f"{path}:{member.name}"
            with _open_tar(name, fileobj=outer.extractfile(member)) as archive:
                found[os.path.basename(member.name)[: -len(".tar")]] = _members(
                    archive, member.offset_data, member.name + "/"
                )
    return found


class ArchiveSplit(Split):
    """Images that are members of tar archives: ``archives[files[i]]``, bytes ``offsets[i]`` to
    ``offsets[i] + sizes[i]``, named ``names[i]`` in messages. Each process opens the files itself."""

    def __init__(
        self,
        name: str,
        archives: Sequence[str],
        files: Sequence[int],
        members: Sequence[Member],
        labels: Sequence[int],
    ):
        super().__init__(name, labels)
        self.archives = [str(a) for a in archives]
        self.files = np.asarray(files, dtype=np.int32)
        self.offsets = np.array([m.offset for m in members], dtype=np.int64)
        self.sizes = np.array([m.size for m in members], dtype=np.int64)
        self.names = [m.name for m in members]
        self._fds: dict = {}

    def __getstate__(
        self,
    ):  # a worker opens the archives again instead of sharing this process's files
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def describe(self, i: int) -> str:
        return f"{self.archives[self.files[i]]}:{self.names[i]}"

    def _fd(self, k: int) -> int:
        if (
            k not in self._fds
        ):  # pread keeps no file position, so a forked worker may share the descriptor
            try:
                self._fds[k] = os.open(self.archives[k], os.O_RDONLY)
            except OSError as err:
                raise BadImageError(self.archives[k], f"cannot open the archive ({err.strerror})")
        return self._fds[k]

    def read(self, i: int) -> bytes:
        """The bytes of image ``i`` as stored in its archive."""
        data = os.pread(self._fd(int(self.files[i])), int(self.sizes[i]), int(self.offsets[i]))
        if len(data) != self.sizes[i]:
            raise BadImageError(self.describe(i), "the archive ends inside this file (truncated)")
        return data

    def load(self, i: int) -> np.ndarray:
        return decode_rgb(self.read(i), self.describe(i), resize=self.resize)

    def use_resize(self, resize: str) -> bool:
        self.resize = resize
        return True


def archive_split(name: str, groups: Sequence[tuple[str, Sequence[Member], int]]) -> ArchiveSplit:
    """An ArchiveSplit of (archive path, its members, label) groups, each group's members sorted by name
    (as a folder's files are listed, splits.FileSplit via sources.scan)."""
    archives = sorted({path for path, _, _ in groups})
    files, members, labels = [], [], []
    for path, found, label in groups:
        ordered = sorted(found, key=lambda m: m.name)
        files += [archives.index(path)] * len(ordered)
        members += ordered
        labels += [label] * len(ordered)
    return ArchiveSplit(name, archives, files, members, labels)
