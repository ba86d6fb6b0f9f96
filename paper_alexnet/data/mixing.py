"""Mixup and CutMix: training batches whose images and labels are blends of two images. Not the paper's
(docs/deviations.md); off by default.

- mixup (Zhang et al. 2018): x = lam x_i + (1 - lam) x_j, target lam y_i + (1 - lam) y_j,
  lam ~ Beta(alpha, alpha).
- CutMix (Yun et al. 2019): a box of x_j pasted into x_i, its area (1 - lam) of the crop at a uniform
  centre (clipped at the edges), the target weighted by the areas kept.

One lam per batch, as timm draws it; with both on, each batch takes one of the two with probability 1/2. Each
image is blended with the image at the mirrored position of its process's rows (row k with row n - 1 - k):
the loader's order is already shuffled, so that is a random pairing that costs no draw and keeps every
process's rows to themselves under data parallelism. Every draw comes from the augmentation generator, so a
resumed run blends as an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class Mixing:
    mixup: float = 0.0  # Beta's alpha for mixup (0: off)
    cutmix: float = 0.0  # Beta's alpha for CutMix (0: off)

    @property
    def on(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def draw(self, generator: Optional[torch.Generator], crop: int) -> Optional[dict]:
        """A batch's choice: which tool, lam, and CutMix's box (top, left, bottom, right) in crop pixels."""
        if not self.on:
            return None
        use_cutmix = self.cutmix > 0 and (
            self.mixup == 0 or float(torch.rand(1, generator=generator)) < 0.5
        )
        alpha = self.cutmix if use_cutmix else self.mixup
        # Beta from the torch generator's stream (numpy's sampler, seeded by one torch draw)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        lam = float(np.random.default_rng(seed).beta(alpha, alpha))
        if not use_cutmix:
            return {"lam": lam, "box": None}
        cy, cx = (float(v) * crop for v in torch.rand(2, generator=generator))
        half = crop * (1 - lam) ** 0.5 / 2
        top, bottom = int(round(max(cy - half, 0))), int(round(min(cy + half, crop)))
        left, right = int(round(max(cx - half, 0))), int(round(min(cx + half, crop)))
        kept = 1 - (bottom - top) * (right - left) / crop**2  # lam as the box was clipped
        return {"lam": kept, "box": (top, left, bottom, right)}


def mix_images(x: torch.Tensor, choice: Optional[dict]) -> torch.Tensor:
    """The blended batch (``choice`` None: x itself)."""
    if choice is None:
        return x
    lam, box = choice["lam"], choice["box"]
    partner = x.flip(0)
    if box is None:
        return x * lam + partner * (1 - lam)
    top, left, bottom, right = box
    x = x.clone()
    x[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
    return x


def mix_targets(y: torch.Tensor, classes: int, choice: Optional[dict]) -> torch.Tensor:
    """The blended batch's targets as class probabilities (``choice`` None: the labels themselves)."""
    if choice is None:
        return y
    one_hot = F.one_hot(y, classes).float()
    return one_hot * choice["lam"] + one_hot.flip(0) * (1 - choice["lam"])
