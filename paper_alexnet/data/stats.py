"""The training set's statistics: the mean image (§2) and the PCA of RGB pixel values (§4.1).

§4.1: "we perform PCA on the set of RGB pixel values throughout the ImageNet training set". Both are
computed in one pass over every pixel of the training images (of ImageNet too) and saved beside the data
(``stats.npz``), so that every later run subtracts the same mean image and draws lighting along the same
principal components. The moments are summed as exact integers, so the pass can be split between processes
or machines, stopped and continued, and give the same numbers. The ImageNet eigenvalues most
reproductions use (fb.resnet.torch's, "from a random subset" of ImageNet) are one flag away
(``train --pca published``: :meth:`DataStats.with_imagenet_pca`).

Units: the mean image is in raw pixel values (0-255), as §2 subtracts it from
the raw RGB input. The PCA is computed on pixel values scaled to [0, 1], the
convention of the published ImageNet eigenvalues below; the lighting adds
``255 * P (a * lambda)`` to raw pixels (see :mod:`.transforms`).
"""

from __future__ import annotations

from dataclasses import dataclass
import os
import time
from typing import Callable, Iterable, Optional

import numpy as np

from ..atomic import atomic_write
from .images import BadImageError, DataError

# The ImageNet PCA that most reproductions use (fb.resnet.torch, MXNet, Caffe2 recipes): eigenvalues
# and eigenvectors (columns, RGB) of the RGB covariance of pixels in [0, 1] of "a random subset" of
# ILSVRC-2012's training images (fb.resnet.torch's datasets/imagenet.lua), not of all of them (§4.1).
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
)
# At most what a statistics file and a pass's saved moments take on disk (int64 sums of a 3x256x256 image)
STATS_BYTES = 2 * 3 * 256 * 256 * 8
# Per-channel mean and std of ImageNet in [0, 1]: what torchvision's pretrained weights expect.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


@dataclass
class DataStats:
    """mean_image: 3 x H x W float32 (0-255); eigval: (3,) descending; eigvec: 3 x 3, column i is p_i."""

    mean_image: np.ndarray
    eigval: np.ndarray
    eigvec: np.ndarray
    count: int = 0  # images that went into the statistics
    pca_source: str = "training set"  # or "ImageNet (published)"

    @property
    def channel_mean(self) -> np.ndarray:
        """Per-channel mean (0-255), for the ``--mean channel`` ablation."""
        return self.mean_image.reshape(3, -1).mean(axis=1)

    @property
    def channel_std(self) -> np.ndarray:
        """Per-channel pixel std (0-255), from the covariance P diag(lambda) P^T that the PCA diagonalised."""
        covariance = self.eigvec @ np.diag(self.eigval) @ self.eigvec.T
        return 255.0 * np.sqrt(np.clip(np.diag(covariance), 1e-12, None))

    def with_imagenet_pca(self) -> "DataStats":
        return DataStats(
            self.mean_image,
            IMAGENET_EIGVAL.copy(),
            IMAGENET_EIGVEC.copy(),
            self.count,
            "ImageNet (published)",
        )

    def save(self, path: str) -> None:
        with atomic_write(path, "wb") as handle:
            np.savez(
                handle,
                mean_image=self.mean_image,
                eigval=self.eigval,
                eigvec=self.eigvec,
                count=np.int64(self.count),
                pca_source=np.array(self.pca_source),
            )

    @classmethod
    def load(cls, path: str) -> "DataStats":
        try:
            with np.load(path) as f:
                return cls(
                    f["mean_image"].astype(np.float32),
                    f["eigval"],
                    f["eigvec"],
                    int(f["count"]),
                    str(f["pca_source"]),
                )
        except (OSError, KeyError, ValueError) as err:
            raise DataError(f"cannot read the data statistics {path}: {err}") from None


class StatsAccumulator:
    """The moments of uint8 images (N x 3 x H x W) that the mean image (§2) and the PCA (§4.1) come from:
    the pixel-wise sum, and the sum and 3 x 3 sum of products of every pixel's RGB value.

    All of it is integer arithmetic, so it is exact: the result does not depend on the order the images come
    in, on how they were split between processes or machines (:meth:`merge`), or on the CPU. The products are
    formed by a float64 matrix product of integers whose every partial sum stays below 2**53 (at most
    ``MAX_PIXELS_A_BATCH`` pixels of 255 x 255), which float64 holds exactly, and are then kept as int64.
    """

    MAX_PIXELS_A_BATCH = 2**53 // (
        255 * 255
    )  # 1.4e11: about two million 256x256 images in one update

    def __init__(self):
        self.count = 0
        self.pixel_sum = None  # int64, 3 x H x W
        self.rgb_sum = np.zeros(3, dtype=np.int64)
        self.rgb_outer = np.zeros((3, 3), dtype=np.int64)
        self.pixels = 0

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W images, got {batch.shape}")
        if batch.dtype != np.uint8:
            raise ValueError(f"expected uint8 images, got {batch.dtype}")
        if not len(batch):
            return
        summed = np.add.reduce(batch, axis=0, dtype=np.uint32).astype(
            np.int64
        )  # 255 x N fits: N < 2**24
        self.pixel_sum = summed if self.pixel_sum is None else self.pixel_sum + summed
        self.count += batch.shape[0]
        self.rgb_sum += summed.reshape(3, -1).sum(axis=1)
        wide = batch.astype(
            np.uint16
        )  # a product of two values up to 255 is at most 65,025 < 2**16
        for i in range(3):
            for j in range(i, 3):
                product = np.multiply(wide[:, i], wide[:, j])
                self.rgb_outer[i, j] += int(product.sum(dtype=np.uint64))
                if i != j:
                    self.rgb_outer[j, i] = self.rgb_outer[i, j]
        self.pixels += batch.shape[0] * batch.shape[2] * batch.shape[3]

    def merge(self, other: "StatsAccumulator") -> "StatsAccumulator":
        """Add another accumulator's images (another process's or part's share) to this one's."""
        if other.count:
            self.pixel_sum = (
                other.pixel_sum.copy()
                if self.pixel_sum is None
                else self.pixel_sum + other.pixel_sum
            )
            self.count += other.count
            self.rgb_sum += other.rgb_sum
            self.rgb_outer += other.rgb_outer
            self.pixels += other.pixels
        return self

    def state(self) -> dict:
        """The moments as arrays, for np.savez (a pass saved where it stopped, or one part of a store)."""
        return {
            "count": np.int64(self.count),
            "pixels": np.int64(self.pixels),
            "rgb_sum": self.rgb_sum,
            "rgb_outer": self.rgb_outer,
            "pixel_sum": self.pixel_sum if self.pixel_sum is not None else np.zeros(0, np.int64),
        }

    @classmethod
    def from_state(cls, state) -> "StatsAccumulator":
        accumulator = cls()
        accumulator.count, accumulator.pixels = int(state["count"]), int(state["pixels"])
        accumulator.rgb_sum = np.array(state["rgb_sum"], dtype=np.int64)
        accumulator.rgb_outer = np.array(state["rgb_outer"], dtype=np.int64)
        pixel_sum = np.array(state["pixel_sum"], dtype=np.int64)
        accumulator.pixel_sum = pixel_sum if accumulator.count else None
        return accumulator

    def result(self) -> DataStats:
        """§2's mean image, and §4.1's PCA: the eigen-decomposition of the 3 x 3 covariance of every RGB pixel
        of the images (pixel values scaled to [0, 1])."""
        if self.count == 0:
            raise DataError("no training images to compute the mean image and PCA from")
        # P^2 * 255^2 * covariance = P * sum(x x^T) - sum(x) sum(x)^T, exactly, in Python's integers
        n, s, outer = self.pixels, [int(v) for v in self.rgb_sum], self.rgb_outer.tolist()
        scaled = [[n * int(outer[i][j]) - s[i] * s[j] for j in range(3)] for i in range(3)]
        covariance = np.array(scaled, dtype=np.float64) / (float(n) * float(n) * 255.0 * 255.0)
        eigval, eigvec = np.linalg.eigh(covariance)  # ascending
        order = np.argsort(eigval)[::-1]
        eigval, eigvec = np.clip(eigval[order], 0, None), eigvec[:, order]
        mean_image = (self.pixel_sum.astype(np.float64) / self.count).astype(np.float32)
        return DataStats(mean_image, eigval, eigvec, self.count)


def compute_stats(batches: Iterable[np.ndarray]) -> DataStats:
    """Mean image and RGB PCA of all images in ``batches`` (uint8, N x 3 x H x W), in one pass; an empty
    batch (a batch of unreadable files) adds nothing."""
    accumulator = StatsAccumulator()
    for batch in batches:
        accumulator.update(batch)
    return accumulator.result()


_SPLIT: dict = {}


def _init_split(split) -> None:
    _SPLIT["split"] = split


def _moments(rows: tuple[int, int]):
    """A worker's share: the moments of images [first, end) of the split, and the files it could not read."""
    split, images, skipped = _SPLIT["split"], [], []
    for i in range(
        *rows
    ):  # load(), not batch(): numpy and PIL only, as a forked worker must (store.py)
        try:
            images.append(split.load(i))
        except BadImageError as err:
            skipped.append((err.path, err.reason))
    accumulator = StatsAccumulator()
    if images:
        accumulator.update(np.stack(images).transpose(0, 3, 1, 2))
    return accumulator.state(), skipped


def split_stats(
    split,
    workers: int = 0,
    chunk: int = 64,
    state_path: Optional[str] = None,
    progress: bool = False,
    save_every: float = 5.0,
    on_chunk: Optional[Callable[[int], None]] = None,
) -> DataStats:
    """The mean image and RGB PCA of every image of ``split`` (splits.Split), read by ``workers`` processes
    ``chunk`` images at a time. With ``state_path``, the moments so far are saved there (every ``save_every``
    seconds, and when stopped) and a later call continues from them; the file is removed at the end. The
    moments are exact integers (StatsAccumulator), so the result is the same however the pass was cut up.
    ``on_chunk(done)`` is called after every chunk added."""
    from tqdm.auto import tqdm

    from .passes import chunks, ordered_map

    accumulator, done = StatsAccumulator(), 0
    if state_path is not None and os.path.exists(state_path):
        try:
            with np.load(state_path) as saved:
                if int(saved["total"]) == len(split):
                    accumulator, done = StatsAccumulator.from_state(saved), int(saved["done"])
        except (OSError, KeyError, ValueError):
            pass  # a damaged partial file: start over
    bar = tqdm(total=len(split), initial=done, unit="img", desc="statistics", disable=not progress)

    def save() -> None:
        if state_path is not None and done < len(split):
            with atomic_write(state_path, "wb") as handle:
                np.savez(
                    handle, done=np.int64(done), total=np.int64(len(split)), **accumulator.state()
                )

    saved_at = time.monotonic()
    try:
        jobs = chunks(done, len(split), chunk)
        for (first, end), (state, _) in ordered_map(_moments, jobs, workers, _init_split, (split,)):
            accumulator.merge(StatsAccumulator.from_state(state))
            done = end
            bar.update(end - first)
            if time.monotonic() - saved_at >= save_every:
                save()
                saved_at = time.monotonic()
            if on_chunk is not None:
                on_chunk(done)
    except BaseException:
        save()
        raise
    finally:
        bar.close()
    if state_path is not None and os.path.exists(state_path):
        os.remove(state_path)
    return accumulator.result()
