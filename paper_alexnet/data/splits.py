"""A split of a data set: labels, and a way to get a batch of §2 patches (uint8, N x 3 x 256 x 256).

Every source (files, CIFAR arrays, the synthetic renderer, the prepared
store) is a :class:`Split`; the loader and the transforms never need to know
which. A file that cannot be read is skipped and reported with its path and
reason, or, with ``strict``, stops everything with them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .. import paper
from .images import BadImageError, fit, load_rgb

Skipped = list  # of (path, reason)


class Split:
    """``labels`` (int64 array) and :meth:`load`; subclasses say where the pixels come from."""

    def __init__(self, name: str, labels: Sequence[int]):
        self.name = name
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, i: int) -> str:
        return f"{self.name} image #{i}"

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` as 256 x 256 x 3 uint8 (§2); raises :class:`BadImageError`."""
        raise NotImplementedError

    def batch(
        self, indices: Sequence[int], strict: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, Skipped]:
        """(uint8 N x 3 x 256 x 256, int64 labels, [(path, reason) of skipped files])."""
        images, labels, skipped = [], [], []
        for i in indices:
            try:
                images.append(self.load(int(i)))
                labels.append(self.labels[int(i)])
            except BadImageError as err:
                if strict:
                    raise
                skipped.append((err.path, err.reason))
        size = paper.IMAGE_SIZE
        stacked = (
            torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
            if images
            else torch.empty(0, 3, size, size, dtype=torch.uint8)
        )
        return stacked, torch.as_tensor(np.asarray(labels, dtype=np.int64)), skipped

    def subset(self, indices: Sequence[int]) -> "Split":
        return SubsetSplit(self, indices)

    defers_decoding = (
        False  # True where a batch can come encoded (encoded()) and be decoded on the device
    )

    resize = (
        "shorter"  # how a file becomes 256x256 (images.fit); only splits that cut images use it
    )

    def use_resize(self, resize: str) -> bool:
        """Cut images this way from now on (images.fit); False where the images are stored already cut (a
        store, the synthetic set), which then stay as they are."""
        return resize == "shorter"


class FileSplit(Split):
    """Image files on disk (JPEG, PNG, ...), decoded and cut to 256x256 on every read."""

    def __init__(self, name: str, paths: Sequence[str], labels: Sequence[int]):
        super().__init__(name, labels)
        self.paths = [str(p) for p in paths]

    def describe(self, i: int) -> str:
        return self.paths[i]

    def load(self, i: int) -> np.ndarray:
        return load_rgb(self.paths[i], resize=self.resize)

    def use_resize(self, resize: str) -> bool:
        self.resize = resize
        return True


class ArraySplit(Split):
    """Images held in memory as N x h x w x 3 uint8 (CIFAR), rescaled to 256x256 as §2 does."""

    def __init__(self, name: str, arrays: np.ndarray, labels: Sequence[int]):
        super().__init__(name, labels)
        self.arrays = arrays

    def load(self, i: int) -> np.ndarray:
        return np.asarray(
            fit(Image.fromarray(self.arrays[i], "RGB"), resize=self.resize), dtype=np.uint8
        )

    def use_resize(self, resize: str) -> bool:
        self.resize = resize
        return True


class RenderSplit(Split):
    """Images made on demand by ``render(label, index)`` (the synthetic set)."""

    def __init__(self, name: str, labels: Sequence[int], render: Callable[[int, int], np.ndarray]):
        super().__init__(name, labels)
        self.render = render

    def load(self, i: int) -> np.ndarray:
        return self.render(int(self.labels[i]), i)


class SubsetSplit(Split):
    """The images ``indices`` of another split (a seeded split of one folder, or --limit)."""

    def __init__(self, parent: Split, indices: Sequence[int], name: str | None = None):
        self.parent, self.indices = parent, np.asarray(indices, dtype=np.int64)
        super().__init__(name or parent.name, parent.labels[self.indices])

    def describe(self, i: int) -> str:
        return self.parent.describe(int(self.indices[i]))

    def load(self, i: int) -> np.ndarray:
        return self.parent.load(int(self.indices[i]))

    def batch(self, indices, strict=False):
        return self.parent.batch(self.indices[np.asarray(indices, dtype=np.int64)], strict)

    @property
    def defers_decoding(self) -> bool:
        return self.parent.defers_decoding

    def encoded(self, indices):
        return self.parent.encoded(self.indices[np.asarray(indices, dtype=np.int64)])

    def use_resize(self, resize: str) -> bool:
        return self.parent.use_resize(resize)


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Indices for each part, taking ``fractions`` of every class (seeded); the last part takes the rest."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for k, fraction in enumerate(fractions):
            stop = (
                len(members)
                if k == len(fractions) - 1
                else start + int(round(fraction * len(members)))
            )
            parts[k].extend(members[start:stop].tolist())
            start = stop
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


class JoinedSplit(Split):
    """Splits end to end, as one: row i is row i - start of the part it falls in (ILSVRC-2012's classes read
    partly from folders and partly from their tar archives, in class order)."""

    def __init__(self, name: str, parts: Sequence[Split]):
        self.parts = list(parts)
        super().__init__(name, np.concatenate([p.labels for p in self.parts]))
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def _at(self, i: int) -> tuple[Split, int]:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[k], int(i - self.starts[k])

    def describe(self, i: int) -> str:
        part, j = self._at(i)
        return part.describe(j)

    def load(self, i: int) -> np.ndarray:
        part, j = self._at(i)
        return part.load(j)

    def use_resize(self, resize: str) -> bool:
        return all([p.use_resize(resize) for p in self.parts])
