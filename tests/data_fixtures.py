"""Small data sets in the real on-disk formats, written inside the tests (nothing is downloaded)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle

import numpy as np
import pytest
from PIL import Image


def colour_image(seed: int, size=(64, 48)) -> Image.Image:
    """A random RGB image with some structure (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, size=3)
    ramp = np.linspace(0, 60, w)[None, :, None]
    noise = rng.integers(-20, 20, size=(h, w, 3))
    return Image.fromarray(np.clip(base + ramp + noise, 0, 255).astype(np.uint8), "RGB")


def image_tree(
    root: str, classes: dict, ext: str = ".jpg", start_seed: int = 0, size=(64, 48)
) -> list:
    """root/<class>/img<k><ext> for {class: count}; returns the written paths."""
    paths, seed = [], start_seed
    for name, count in classes.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for k in range(count):
            path = os.path.join(root, name, f"img{k:03d}{ext}")
            colour_image(seed, size).save(path)
            paths.append(path)
            seed += 1
    return paths


def cifar_batches(root: str, hundred: bool = False, per_class: int = 3, classes: int = 10) -> tuple:
    """torchvision's CIFAR layout with pickled batches; returns (train arrays, train labels) as written."""
    rng = np.random.default_rng(0)
    folder = os.path.join(root, "cifar-100-python" if hundred else "cifar-10-batches-py")
    os.makedirs(folder)
    key = b"fine_labels" if hundred else b"labels"
    names = [f"class{i}".encode() for i in range(classes)]

    def write(name, n):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(i % classes) for i in range(n)]
        with open(os.path.join(folder, name), "wb") as handle:
            pickle.dump({b"data": data, key: labels, b"batch_label": name.encode()}, handle)
        return data, labels

    if hundred:
        train = [write("train", per_class * classes)]
        write("test", classes)
        meta = {b"fine_label_names": names, b"coarse_label_names": names[:2]}
        meta_name = "meta"
    else:
        train = [write(f"data_batch_{i}", per_class * classes // 5 + 1) for i in range(1, 6)]
        write("test_batch", classes)
        meta = {b"label_names": names, b"num_cases_per_batch": 10}
        meta_name = "batches.meta"
    with open(os.path.join(folder, meta_name), "wb") as handle:
        pickle.dump(meta, handle)
    data = np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return data, sum((labels for _, labels in train), [])


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def write_bad_files(folder: str) -> dict:
    """The unreadable files of the issue: {name: path}."""
    os.makedirs(folder, exist_ok=True)
    files = {}
    data = jpeg_bytes(colour_image(99, (200, 150)), quality=95)
    files["truncated"] = os.path.join(folder, "truncated.jpg")
    with open(files["truncated"], "wb") as handle:
        handle.write(data[: len(data) // 2])
    files["empty"] = os.path.join(folder, "empty.jpg")
    open(files["empty"], "wb").close()
    files["text"] = os.path.join(folder, "notes.jpg")
    with open(files["text"], "w") as handle:
        handle.write("this is not a picture\n")
    return files


def blank_tree(
    root: str, classes: str = "abcd", train: int = 10, val: int = 2, size=(64, 48)
) -> str:
    """``root/{train,val}/<class>/<k>.jpg``: a folder data set no net can learn, every image the same grey
    JPEG. Once §2's mean image is subtracted every input is exactly 0 (and §4.1's crops, flips and lighting
    leave it 0: a constant image has no principal components), so every image gets the same output,
    whatever the weights and on any CPU: a balanced validation set is scored at chance, and a net with zero
    biases (He init, --recipe quick) outputs the uniform distribution, its loss ln(classes)."""
    grey = Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8), "RGB")
    for split, count in (("train", train), ("val", val)):
        for name in classes:
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for k in range(count):
                grey.save(os.path.join(root, split, name, f"{k}.jpg"))
    return root


@contextlib.contextmanager
def log_lines():
    """The lines the library logs (logging.getLogger("paper_alexnet...")) while the block runs."""
    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger, handler = logging.getLogger("paper_alexnet"), Keep()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def train_once(tmp_path_factory, name, argv):
    """A run of reproduce.train that a module's tests share and only read (one training, not one a test), in
    a cache of its own; its folder goes at the module's end (0.5-0.7 GB of checkpoints)."""
    from reproduce import train

    root = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAPER_ALEXNET_CACHE", str(root / "cache"))
        assert train.main(list(argv) + ["--out", str(root / "run")]) == 0
    return root


def folder_contents(folder) -> dict:
    """Each file of ``folder`` by name: its digest, read in pieces (caffe.sha1; a run's checkpoints are
    0.45-0.65 GB: a test that held their bytes to compare held twice that), so that two calls are equal exactly
    when every file is byte for byte the same and none came or went."""
    from paper_alexnet.caffe import sha1

    return {name: sha1(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}
