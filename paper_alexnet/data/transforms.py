"""The paper's augmentation and test-time crops, on whole uint8 batches as tensors (§2, §4.1).

Input everywhere: an N x 3 x 256 x 256 uint8 batch (the §2 patches), on the
CPU or on the GPU the net trains on. Output: float32 N x 3 x crop x crop.

- §2: subtract the training set's mean image (``mean="image"``; ``"channel"``
  subtracts the per-channel mean instead, ``"torchvision"`` scales to [0, 1]
  and normalises by ImageNet's mean/std as torchvision's weights expect,
  ``"none"`` does nothing). The mean image is cropped where the image is.
- §4.1: a random crop (227, or 224 for ``paper-224``) and a horizontal
  reflection with probability 1/2; PCA lighting: to every pixel of image n add
  ``P (a_n * lambda)`` with ``a_n ~ N(0, 0.1)``, drawn once per image per use.
- §4.1 test time: the centre crop, or the ten crops (four corners and the
  centre, and their reflections), whose softmax outputs are averaged.

Two small-data tools that are not the paper's (docs/deviations.md), off by
default, both on the same 256x256 image (a folder's files become it first, §2):

- ``crop_scale``: a random-resized crop (Inception's scale augmentation, as
  torchvision's RandomResizedCrop): a box of aspect r (log-uniform in
  ASPECT) and area s (uniform in [crop_scale, min(r, 1/r)] of the image)
  at a random place, resampled bilinearly to crop x crop; the mean image is
  resampled with it. It replaces §4.1's fixed-size crop.
- ``jitter``: brightness, contrast and saturation, each a factor drawn
  uniformly in [1 - jitter, 1 + jitter] per image, applied in that order
  to the 0-255 pixels (clamped to 0-255 after each), before the mean is
  subtracted.

All randomness comes from one CPU ``torch.Generator`` so that a run is the same
on any device and can be resumed from its saved state.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch

from .. import paper
from ..backends import sent
from .images import RESIZE_MODES
from .stats import IMAGENET_MEAN, IMAGENET_STD, DataStats

MEAN_MODES = ("image", "image-centre", "channel", "torchvision", "none")
# how PCA lighting is scaled: "paper": §4.1's P (a * lambda), added to the raw pixels; "code-2012": the 2012 code's
# P (a * sigma), sigma the components' standard deviations, added and then the whole crop divided by 1 + sigma_a
LIGHTING = ("paper", "code-2012")
# A random-resized crop's aspect ratios (width / height), as torchvision's RandomResizedCrop and the Inception
# paper drew them; its area can then reach min(r, 1/r) of the square image, so --crop-scale is at most 3/4.
ASPECT = (3 / 4, 4 / 3)
GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, torchvision's rgb_to_grayscale


def ten_crop_offsets(image_size: int, crop: int) -> list[tuple[int, int, bool]]:
    """§4.1 test time: (top, left, mirrored) of the ten patches, in the order
    top-left, top-right, bottom-left, bottom-right, centre, then the same five mirrored."""
    far, centre = image_size - crop, (image_size - crop) // 2
    five = [(0, 0), (0, far), (far, 0), (far, far), (centre, centre)]
    return [(y, x, mirrored) for mirrored in (False, True) for y, x in five]


FLIP_CROPS = (4, 9)  # the centre crop and its reflection, in ten_crop_offsets' order


def pca_shift(eigval: torch.Tensor, eigvec: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """§4.1: the RGB quantity [p1 p2 p3][a1 λ1, a2 λ2, a3 λ3]^T for each row of ``alphas`` (N x 3) -> N x 3."""
    return (alphas * eigval) @ eigvec.T


@dataclass(frozen=True)
class Augment:
    """Which parts of the pipeline are on. The defaults are the paper's (§2, §4.1)."""

    crop: int = paper.INPUT_SIZE
    flip: bool = True
    pca: bool = True
    pca_sigma: float = paper.PCA_SIGMA
    mean: str = "image"
    scale: float = 1.0  # multiply after the mean is subtracted (1: the paper's raw 0-255 scale, §2)
    # how a file becomes the 256x256 image at test time: "shorter" (§2: shorter side to 256, centre crop) or
    # "warp" (both sides to 256, as Caffe's convert_imageset made BVLC's training data; caffe.py)
    resize: str = "shorter"
    translate: bool = True  # §4.1's random crop position; False: training sees the centre crop too
    # not §4.1 (the module's docstring): a random-resized crop's smallest area (None: off), and the colour
    # jitter's strength (0: off)
    crop_scale: Optional[float] = None
    jitter: float = 0.0
    # the 2012 code's (code2012.py): this many images in a row share one crop position and one reflection
    # (1: §4.1's, each image its own)
    crop_chunk: int = 1
    lighting: str = "paper"  # LIGHTING

    def __post_init__(self):
        if self.crop_chunk < 1:
            raise ValueError(f"--crop-chunk {self.crop_chunk}: must be at least 1")
        if self.lighting not in LIGHTING:
            raise ValueError(
                f"unknown lighting {self.lighting!r}: choose one of {', '.join(LIGHTING)}"
            )
        if self.crop_scale is not None and not 0 < self.crop_scale <= ASPECT[0]:
            raise ValueError(
                f"--crop-scale {self.crop_scale:g}: the smallest area of a random-resized crop must be "
                f"above 0 and at most {ASPECT[0]:g} of the image (the largest box of aspect "
                f"{ASPECT[1]:.3g} fits)"
            )
        if not 0 <= self.jitter < 1:
            raise ValueError(f"--jitter {self.jitter:g}: must be at least 0 and below 1")
        if self.resize not in RESIZE_MODES:
            raise ValueError(
                f"unknown resize {self.resize!r}: choose one of {', '.join(RESIZE_MODES)}"
            )
        if self.mean not in MEAN_MODES:
            raise ValueError(
                f"unknown mean mode {self.mean!r}: choose one of {', '.join(MEAN_MODES)}"
            )
        if not 1 <= self.crop <= paper.IMAGE_SIZE:
            raise ValueError(
                f"--crop {self.crop} is not possible: crops come from {paper.IMAGE_SIZE}x"
                f"{paper.IMAGE_SIZE} images (§2), so it must be between 1 and {paper.IMAGE_SIZE}"
            )


class PaperTransform:
    """uint8 batches -> the net's float input, for training (random) or evaluation (centre / ten crops)."""

    def __init__(
        self,
        stats: Optional[DataStats],
        augment: Augment = Augment(),
        device="cpu",
        batched: Optional[bool] = None,
    ):
        if stats is None and (augment.mean in ("image", "image-centre", "channel") or augment.pca):
            raise ValueError(
                "the mean image / PCA lighting need the training set's statistics (stats=None)"
            )
        self.augment, self.device = augment, torch.device(device)
        # one gather for the whole batch on a GPU (a handful of kernels, where the loop launches ~2 per image);
        # the loop on the CPU, where it is 3-4x faster (docs/data.md). The same numbers either way.
        self.batched = self.device.type != "cpu" if batched is None else batched
        self.mean_image = self.mean_image_mirrored = self.centre_mean = None
        # "image-centre", the 2012 code's: the mean image's centre, whatever the crop
        if augment.mean == "image-centre":
            mean = torch.as_tensor(stats.mean_image, dtype=torch.float32, device=self.device)
            at = (mean.shape[-1] - augment.crop) // 2
            self.centre_mean = mean[:, at : at + augment.crop, at : at + augment.crop].contiguous()
            self.offset = torch.zeros(3, 1, 1, device=self.device)
        elif augment.mean == "image":
            self.mean_image = torch.as_tensor(
                stats.mean_image, dtype=torch.float32, device=self.device
            )
            self.mean_image_mirrored = self.mean_image.flip(-1).contiguous()
            self.offset = None
        elif augment.mean == "channel":
            self.offset = torch.as_tensor(
                stats.channel_mean, dtype=torch.float32, device=self.device
            ).view(3, 1, 1)
        elif augment.mean == "torchvision":
            self.offset = torch.as_tensor(
                255.0 * IMAGENET_MEAN, dtype=torch.float32, device=self.device
            ).view(3, 1, 1)
        else:
            self.offset = torch.zeros(3, 1, 1, device=self.device)
        if augment.mean == "torchvision":
            self.scale = torch.as_tensor(
                1.0 / (255.0 * IMAGENET_STD), dtype=torch.float32, device=self.device
            ).view(3, 1, 1)
        else:
            self.scale = (
                None if augment.scale == 1.0 else torch.tensor(augment.scale, device=self.device)
            )
        # PCA lighting in training while on (the 2012 run turned it off for its last epochs: optim.HandSchedule)
        self.lighting_on = True
        # on the CPU, where the draws are made: no copy back from a GPU each step
        if stats is not None:
            self.eigval = torch.as_tensor(stats.eigval, dtype=torch.float32)
            self.eigvec = torch.as_tensor(stats.eigvec, dtype=torch.float32)

    def _finish(self, images: torch.Tensor, ys, xs, mirror, shift, boxes=None, colour=None):
        """Crop at (ys, xs) (or resample ``boxes``), mirror, subtract the mean, add the lighting, scale;
        ``colour``: the jitter factors, applied to the pixels first."""
        images = images.to(self.device, non_blocking=True)
        if boxes is not None or colour is not None or self.batched:
            ys, xs, mirror, shift, boxes, colour = self._sent(ys, xs, mirror, shift, boxes, colour)
            full = images.float() if colour is None else jittered(images, colour.to(self.device))
            full = full.sub_(self.offset if self.mean_image is None else self.mean_image)
            out = (
                self._gather(full, ys, xs, mirror)
                if boxes is None
                else resized_crops(full, boxes.to(self.device), mirror, self.augment.crop)
            )
        else:
            out = self._loop(images, ys, xs, mirror)
        if self.centre_mean is not None:
            out.sub_(self.centre_mean)
        if shift is not None:  # §4.1: one colour shift per image, the same for all its pixels
            out.add_(255.0 * shift.to(self.device).view(-1, 3, 1, 1))
            if self.augment.lighting == "code-2012":  # convdata_jpeg.py 177-179
                out.div_(1.0 + self.augment.pca_sigma)
        if self.scale is not None:
            out.mul_(self.scale)
        return out

    def _sent(self, *draws):
        """The draws (CPU tensors of one row an image, or None) on a GPU in one copy (backends.sent), not one
        blocking copy each. Packed as float64,
        which holds each one's values exactly (offsets, flags, float32 and float64 numbers)."""
        present = [d for d in draws if d is not None]
        if self.device.type != "cuda" or not present or len(present[0]) == 0:
            return draws
        n = len(present[0])
        packed = torch.cat([d.reshape(n, -1).to(torch.float64) for d in present], dim=1)
        there = sent(packed, self.device)
        out, at = [], 0
        for d in draws:
            if d is None:
                out.append(None)
                continue
            width = d[0].numel()
            out.append(there[:, at : at + width].reshape(d.shape).to(d.dtype))
            at += width
        return out

    def _gather(self, full: torch.Tensor, ys, xs, mirror) -> torch.Tensor:
        """The whole batch at once from the mean-subtracted full images: one gather takes each crop
        (mirrored by reading its columns right to left), so the mean is cropped exactly as its image is."""
        size, n, width = self.augment.crop, full.shape[0], full.shape[-1]
        step = torch.arange(size, device=self.device)
        ys, xs = ys.to(self.device), xs.to(self.device)
        cols = xs[:, None] + step
        if mirror is not None:
            cols = torch.where(
                mirror.to(self.device)[:, None], xs[:, None] + (size - 1) - step, cols
            )
        at = ((ys[:, None] + step)[:, :, None] * width + cols[:, None, :]).view(n, 1, size * size)
        return full.view(n, 3, -1).gather(2, at.expand(n, 3, size * size)).view(n, 3, size, size)

    def _loop(self, images: torch.Tensor, ys, xs, mirror) -> torch.Tensor:
        """One image at a time, straight from the uint8 pixels: no full-size float copy of the batch."""
        size, n, width = self.augment.crop, len(ys), images.shape[-1]
        out = torch.empty(n, 3, size, size, dtype=torch.float32, device=self.device)
        mirrored = [False] * n if mirror is None else mirror.tolist()
        for k, (y, x) in enumerate(zip(ys.tolist(), xs.tolist())):
            patch = images[k, :, y : y + size, x : x + size]
            if mirrored[k]:
                patch = patch.flip(-1)
            # §2: the mean image is cropped (and mirrored) exactly as this image is
            if self.mean_image is None:
                mean = self.offset
            elif mirrored[k]:
                mean = self.mean_image_mirrored[:, y : y + size, width - x - size : width - x]
            else:
                mean = self.mean_image[:, y : y + size, x : x + size]
            torch.sub(patch, mean, out=out[k])
        return out

    def draw(
        self,
        n: int,
        generator: Optional[torch.Generator] = None,
        image_size: int = paper.IMAGE_SIZE,
    ) -> dict:
        """§4.1's random choices for n images: crop offsets, reflections and the PCA coefficients a_i."""
        room = image_size - self.augment.crop + 1
        chunk = self.augment.crop_chunk
        # one position and one reflection per chunk of images (per image: §4.1's; 32: the 2012 code's)
        chunks = -(-n // chunk)
        if self.augment.translate:
            ys = torch.randint(room, (chunks,), generator=generator)
            xs = torch.randint(room, (chunks,), generator=generator)
        else:
            ys = xs = torch.full((chunks,), (image_size - self.augment.crop) // 2, dtype=torch.long)
        mirror = torch.rand(chunks, generator=generator) < 0.5 if self.augment.flip else None
        if chunk > 1:
            ys, xs = (v.repeat_interleave(chunk)[:n] for v in (ys, xs))
            mirror = None if mirror is None else mirror.repeat_interleave(chunk)[:n]
        shift = None
        if self.augment.pca and self.lighting_on:
            alphas = torch.randn(n, 3, generator=generator) * self.augment.pca_sigma
            # the 2012 code scales by the components' standard deviations (its color_stdevs)
            scale = (
                self.eigval if self.augment.lighting == "paper" else self.eigval.clamp(min=0).sqrt()
            )
            shift = pca_shift(scale, self.eigvec, alphas)
        # the tools that are not the paper's draw after §4.1's draws, and only when on: the paper's run
        # draws what it always drew
        boxes = colour = None
        if self.augment.crop_scale is not None:
            boxes = draw_boxes(n, image_size, self.augment.crop_scale, generator)
        if self.augment.jitter:
            colour = 1 + self.augment.jitter * (2 * torch.rand(n, 3, generator=generator) - 1)
        return {
            "ys": ys,
            "xs": xs,
            "mirror": mirror,
            "shift": shift,
            "boxes": boxes,
            "colour": colour,
        }

    def apply(self, images: torch.Tensor, draw: dict, take: Optional[slice] = None) -> torch.Tensor:
        """Apply drawn choices; ``take`` selects this batch's share of them (a data-parallel rank's rows).
        When files were skipped there are fewer images than choices: the first ones are used."""
        take = slice(None) if take is None else take
        draw = {k: None if v is None else v[take][: len(images)] for k, v in draw.items()}
        return self._finish(images, **draw)

    def train(
        self, images: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """§4.1: a random crop, a random reflection and PCA lighting, each drawn per image (those switched on)."""
        return self.apply(images, self.draw(images.shape[0], generator, images.shape[-1]))

    def center(self, images: torch.Tensor) -> torch.Tensor:
        """The central crop, no reflection, no lighting."""
        n, size = images.shape[0], images.shape[-1]
        at = torch.full((n,), (size - self.augment.crop) // 2, dtype=torch.long)
        return self._finish(images, at, at, None, None)

    def flip_crops(self, images: torch.Tensor) -> torch.Tensor:
        """Flip averaging at test time (not §4.1's ten): 2 x N x 3 x crop x crop, the centre crop and its
        reflection (the fifth and tenth of the ten crops)."""
        crops = ten_crop_offsets(images.shape[-1], self.augment.crop)
        return torch.stack([self._crop_at(images, *crops[k]) for k in FLIP_CROPS])

    def _crop_at(self, images: torch.Tensor, y: int, x: int, mirrored: bool) -> torch.Tensor:
        n = images.shape[0]
        mirror = torch.full((n,), mirrored) if mirrored else None
        return self._finish(images, torch.full((n,), y), torch.full((n,), x), mirror, None)

    def ten_crops(self, images: torch.Tensor) -> torch.Tensor:
        """§4.1: 10 x N x 3 x crop x crop, in the order of :func:`ten_crop_offsets`."""
        offsets = ten_crop_offsets(images.shape[-1], self.augment.crop)
        return torch.stack([self._crop_at(images, *at) for at in offsets])


def draw_boxes(
    n: int, image_size: int, low: float, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """n random-resized-crop boxes (top, left, height, width) in pixels of an image_size square: aspect r
    log-uniform in ASPECT, area uniform in [low, min(r, 1/r)] of the image (the most a box of that aspect
    holds), placed uniformly where it fits."""
    log_r = math.log(ASPECT[0]) + (math.log(ASPECT[1]) - math.log(ASPECT[0])) * torch.rand(
        n, generator=generator, dtype=torch.float64
    )
    r = log_r.exp()
    most = torch.minimum(r, 1 / r)
    area = low + (most - low) * torch.rand(n, generator=generator, dtype=torch.float64)
    width = (area * r).sqrt().clamp(max=1.0) * image_size
    height = (area / r).sqrt().clamp(max=1.0) * image_size
    top = (image_size - height) * torch.rand(n, generator=generator, dtype=torch.float64)
    left = (image_size - width) * torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.stack([top, left, height, width], dim=1)


def resized_crops(full: torch.Tensor, boxes: torch.Tensor, mirror, size: int) -> torch.Tensor:
    """Each image's box resampled bilinearly to size x size (pixel centres mapped onto the box's, mirrored
    where ``mirror`` says), all in one grid sample."""
    n, side = full.shape[0], full.shape[-1]
    top, left, height, width = boxes.to(full.dtype).unbind(1)
    flip = (
        torch.ones(n, dtype=full.dtype, device=full.device)
        if mirror is None
        else 1 - 2 * mirror.to(full.device, full.dtype)
    )
    theta = torch.zeros(n, 2, 3, dtype=full.dtype, device=full.device)
    # an output coordinate u in [-1, 1] (align_corners=False) samples the box's point (2 left + w (u+1)) / side - 1
    theta[:, 0, 0] = flip * width / side
    theta[:, 0, 2] = (2 * left + width) / side - 1
    theta[:, 1, 1] = height / side
    theta[:, 1, 2] = (2 * top + height) / side - 1
    grid = torch.nn.functional.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(
        full, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


@functools.lru_cache(maxsize=None)
def _gray_weights(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """GRAY as a 1 x 3 x 1 x 1 tensor on ``device``: copied there once, not at every step."""
    return torch.tensor(GRAY, dtype=dtype, device=device).view(1, 3, 1, 1)


def jittered(images: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W -> float pixels with brightness, contrast and saturation multiplied by the factors
    ``colour`` (N x 3, in that order), each step clamped to 0-255: x b; its grayscale mean + (x - mean) c;
    its grayscale + (x - gray) s."""
    x = images.float()
    weights = _gray_weights(x.dtype, x.device)
    b, c, s = (colour[:, k].to(x.dtype).view(-1, 1, 1, 1) for k in range(3))
    x = (x * b).clamp_(0, 255)
    mean = (x * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (mean + (x - mean) * c).clamp_(0, 255)
    gray = (x * weights).sum(1, keepdim=True)
    return (gray + (x - gray) * s).clamp_(0, 255)


def average_softmax(model: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """§4.1: the mean of the softmax outputs over the crops (K x N x 3 x h x w) -> N x classes."""
    return torch.stack([torch.softmax(model(view), dim=1) for view in crops]).mean(dim=0)
