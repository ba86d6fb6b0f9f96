"""The training set's statistics: the mean image (§2) and the PCA of RGB pixel values (§4.1).

Both are computed in one pass over the training images and saved beside the
data (``stats.npz``), so that every later run subtracts the same mean image
and draws lighting along the same principal components.

Units: the mean image is in raw pixel values (0-255), as §2 subtracts it from
the raw RGB input. The PCA is computed on pixel values scaled to [0, 1], the
convention of the widely used ImageNet eigenvalues below; the lighting adds
``255 * P (a * lambda)`` to raw pixels (see :mod:`.transforms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from ..atomic import atomic_write
from .images import DataError

# The ImageNet PCA that most reproductions use (fb.resnet.torch, MXNet, Caffe2 recipes): eigenvalues
# and eigenvectors (columns, RGB) of the RGB covariance of ILSVRC-2012 training pixels in [0, 1].
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
)
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
    """One pass over uint8 batches (N x 3 x H x W): pixel-wise sum for the mean image, RGB moments for PCA."""

    def __init__(self):
        self.count = 0
        self.pixel_sum = None
        self.rgb_sum = np.zeros(3)
        self.rgb_outer = np.zeros((3, 3))
        self.pixels = 0

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W images, got {batch.shape}")
        summed = batch.sum(axis=0, dtype=np.float64)
        self.pixel_sum = summed if self.pixel_sum is None else self.pixel_sum + summed
        self.count += batch.shape[0]
        rgb = batch.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64) / 255.0
        self.rgb_sum += rgb.sum(axis=1)
        self.rgb_outer += rgb @ rgb.T
        self.pixels += rgb.shape[1]

    def result(self) -> DataStats:
        if self.count == 0:
            raise DataError("no training images to compute the mean image and PCA from")
        mean_rgb = self.rgb_sum / self.pixels
        covariance = self.rgb_outer / self.pixels - np.outer(mean_rgb, mean_rgb)
        eigval, eigvec = np.linalg.eigh(covariance)  # ascending
        order = np.argsort(eigval)[::-1]
        eigval, eigvec = np.clip(eigval[order], 0, None), eigvec[:, order]
        return DataStats(
            (self.pixel_sum / self.count).astype(np.float32), eigval, eigvec, self.count
        )


def compute_stats(batches: Iterable[np.ndarray]) -> DataStats:
    """Mean image and RGB PCA of all images in ``batches`` (uint8, N x 3 x H x W), in one pass; an empty
    batch (a batch of unreadable files) adds nothing."""
    accumulator = StatsAccumulator()
    for batch in batches:
        if len(batch):
            accumulator.update(batch)
    return accumulator.result()


def split_stats(split, batch_size: int, starts: Optional[Iterable[int]] = None) -> DataStats:
    """compute_stats over a split's images (splits.Split), ``batch_size`` at a time; ``starts``: the batches'
    first indices, e.g. wrapped in a progress bar (default: every ``batch_size``-th)."""
    starts = range(0, len(split), batch_size) if starts is None else starts
    return compute_stats(
        split.batch(range(s, min(s + batch_size, len(split))))[0].numpy() for s in starts
    )
