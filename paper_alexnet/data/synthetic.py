"""The built-in data set: shapes on cluttered backgrounds, generated from a seed, no download.

Each image is 256x256 RGB (§2's size) and shows one large object whose class
is its *shape*; its colour and size, the background (a two-colour gradient
with noise) and the clutter (small lines, dots and bars) are drawn at random.
Colour says nothing about the class, so a net has to learn shape, not one
pixel or one colour. Image ``i`` of a split depends only on (seed, split, i):
the set is the same on every machine and can be generated in any order.

Two levels (``--data "synthetic?level=hard"``):
- ``easy`` (the default): large upright objects near the centre, little clutter. The paper net
  learns it from scratch within the default run's ~5 CPU minutes (docs/training.md).
- ``hard``: objects anywhere, at any rotation and a wider range of sizes, more clutter and noise.
  A net needs many more steps. It was the only level at first; docs/results.md was made on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .. import paper

SHAPES = (
    "disc",
    "ring",
    "square",
    "frame",
    "triangle",
    "cross",
    "star",
    "hexagon",
    "crescent",
    "stripes",
)
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class Level:
    """How hard the set is."""

    radius: tuple  # object radius range, as a fraction of the side
    clutter: tuple  # distractors per image, [low, high)
    noise: tuple  # background noise std range, in 0-255 pixel units
    spread: float  # how far from the centre the object may sit: 1 = anywhere it fits, 0 = centred
    rotate: bool  # random rotation (else upright)


LEVELS = {
    "easy": Level(radius=(0.25, 0.40), clutter=(0, 3), noise=(4, 8), spread=0.2, rotate=False),
    "hard": Level(radius=(0.16, 0.36), clutter=(4, 10), noise=(4, 16), spread=1.0, rotate=True),
}


def _polygon(cx, cy, radius, sides, rotation, inner=None):
    """Vertices of a regular polygon (or a star when ``inner`` radius is given)."""
    points, count = [], sides * (2 if inner else 1)
    for k in range(count):
        r = inner if inner and k % 2 else radius
        angle = rotation + 2 * math.pi * k / count
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def _shape_mask(shape: str, size: int, rng: np.random.Generator, level: Level) -> Image.Image:
    """A binary mask (mode "L") of one object of class ``shape`` at a random place, scale and rotation."""
    radius = rng.uniform(*level.radius) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    if level.spread != 1.0:  # skipped at 1.0, so that the hard level keeps its exact coordinates
        cx, cy = (
            size / 2 + (cx - size / 2) * level.spread,
            size / 2 + (cy - size / 2) * level.spread,
        )
    turn = rng.uniform(0, 2 * math.pi) * level.rotate
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    width = max(3, int(radius * rng.uniform(0.22, 0.35)))
    if shape == "disc":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        draw.ellipse(
            (cx - radius + width, cy - radius + width, cx + radius - width, cy + radius - width),
            fill=0,
        )
    elif shape in ("square", "frame"):
        draw.polygon(_polygon(cx, cy, radius * 1.2, 4, turn), fill=255)
        if shape == "frame":
            draw.polygon(_polygon(cx, cy, radius * 1.2 - width * 1.4, 4, turn), fill=0)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, radius * 1.15, 3, turn), fill=255)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, radius, 6, turn), fill=255)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, radius * 1.15, 5, turn, inner=radius * 0.45), fill=255)
    elif shape == "cross":
        for angle in (turn, turn + math.pi / 2):
            dx, dy = math.cos(angle), math.sin(angle)
            half = width * 0.75
            draw.polygon(
                [
                    (cx - radius * dx - half * dy, cy - radius * dy + half * dx),
                    (cx + radius * dx - half * dy, cy + radius * dy + half * dx),
                    (cx + radius * dx + half * dy, cy + radius * dy - half * dx),
                    (cx - radius * dx + half * dy, cy - radius * dy - half * dx),
                ],
                fill=255,
            )
    elif shape == "crescent":
        draw.ellipse(box, fill=255)
        off = radius * 0.55
        ox, oy = cx + off * math.cos(turn), cy + off * math.sin(turn)
        draw.ellipse(
            (ox - radius * 0.9, oy - radius * 0.9, ox + radius * 0.9, oy + radius * 0.9), fill=0
        )
    elif shape == "stripes":
        bars = Image.new("L", (size, size), 0)
        bar_draw = ImageDraw.Draw(bars)
        period = max(6, int(radius / 2.5))
        for offset in range(-2 * size, 2 * size, period):
            bar_draw.line([(offset, -size), (offset, 2 * size)], fill=255, width=period // 2)
        bars = bars.rotate(math.degrees(turn), center=(cx, cy))
        square = Image.new("L", (size, size), 0)
        ImageDraw.Draw(square).polygon(
            _polygon(cx, cy, radius * 1.2, 4, rng.uniform(0, math.pi) * level.rotate), fill=255
        )
        mask = Image.fromarray(np.minimum(np.asarray(bars), np.asarray(square)))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _background(size: int, rng: np.random.Generator, level: Level) -> np.ndarray:
    """A random two-colour linear gradient with Gaussian noise, float H x W x 3."""
    a, b = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(0.0, 1.0, size)
    t = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    image = a + (b - a) * t[..., None]
    return image + rng.normal(0, rng.uniform(*level.noise), size=(size, size, 3))


def _clutter(image: Image.Image, rng: np.random.Generator, level: Level) -> None:
    """Small distractors (lines, dots, bars) in random colours, too small to pass for the object."""
    draw, size = ImageDraw.Draw(image), image.size[0]
    for _ in range(rng.integers(*level.clutter)):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x, y = rng.uniform(0, size, size=2)
        extent = rng.uniform(0.02, 0.09) * size
        kind = rng.integers(3)
        if kind == 0:
            angle = rng.uniform(0, 2 * math.pi)
            draw.line(
                [(x, y), (x + extent * 2 * math.cos(angle), y + extent * 2 * math.sin(angle))],
                fill=colour,
                width=int(rng.integers(1, 4)),
            )
        elif kind == 1:
            draw.ellipse(
                (x - extent / 2, y - extent / 2, x + extent / 2, y + extent / 2), fill=colour
            )
        else:
            draw.rectangle((x, y, x + extent, y + extent / 3), fill=colour)


def render(
    label: int,
    index: int,
    split: str = "train",
    seed: int = 0,
    size: int = paper.IMAGE_SIZE,
    num_classes: int = len(SHAPES),
    level: str = "easy",
) -> np.ndarray:
    """Image ``index`` of ``split`` (class ``label``) as a size x size x 3 uint8 array."""
    if not 0 <= label < num_classes <= len(SHAPES):
        raise ValueError(
            f"label {label} outside the {num_classes} synthetic classes (at most {len(SHAPES)})"
        )
    if level not in LEVELS:
        raise ValueError(f"unknown synthetic level {level!r}: choose one of {', '.join(LEVELS)}")
    how = LEVELS[level]
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    background = _background(size, rng, how)
    mask = (
        np.asarray(_shape_mask(SHAPES[label], size, rng, how), dtype=np.float64)[..., None] / 255.0
    )
    # An object colour far from the mean background colour, so that the shape is always visible.
    mean_bg = background.mean(axis=(0, 1))
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - mean_bg) > 120:
            break
    shade = 1.0 + rng.normal(0, 0.08, size=(size, size, 1))  # uneven lighting on the object
    image = background * (1 - mask) + np.clip(colour * shade, 0, 255) * mask
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")
    _clutter(picture, rng, how)
    return np.asarray(picture, dtype=np.uint8)


def labels_for(count: int, num_classes: int) -> np.ndarray:
    """Balanced labels: image i is of class i mod num_classes."""
    return np.arange(count, dtype=np.int64) % num_classes
