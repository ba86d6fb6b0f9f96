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


ILSVRC_WNIDS = ("n01440764", "n01443537", "n01484850")


def ilsvrc_images(classes=ILSVRC_WNIDS, per_class: int = 4, val_per_class: int = 2) -> tuple:
    """ILSVRC-2012's files in miniature, with its traps: {wnid: {name: bytes}} of training images (one
    class's first a PNG named .JPEG, then a CMYK JPEG, a grayscale one and a 3456x2304 one among them), and
    [(val name, wnid, bytes)] in the order of their numbers, the classes interleaved."""
    train, seed = {}, 0
    for c, wnid in enumerate(classes):
        train[wnid] = {}
        for k in range(per_class):
            image = colour_image(seed, (90 + 7 * k, 70))
            if c == 0 and k == 0:
                buffer = io.BytesIO()
                image.save(buffer, "PNG")
                data = buffer.getvalue()
            elif c == 0 and k == 1:
                data = jpeg_bytes(image.convert("CMYK"), quality=90)
            elif c == 1 and k == 0:
                data = jpeg_bytes(image.convert("L"), quality=90)
            elif c == 2 and k == 0:
                # made at 96x64 and enlarged (uint8 only: a 3456x2304 colour_image takes 0.6 GB of int64)
                data = jpeg_bytes(colour_image(seed, (96, 64)).resize((3456, 2304)), quality=90)
            else:
                data = jpeg_bytes(image, quality=90)
            train[wnid][f"{wnid}_{1000 + 17 * k}.JPEG"] = data
            seed += 1
    val = []
    for number in range(1, val_per_class * len(classes) + 1):
        wnid = classes[(number * 2) % len(classes)]
        val.append(
            (f"ILSVRC2012_val_{number:08d}.JPEG", wnid, jpeg_bytes(colour_image(500 + number)))
        )
    return train, val


def _add(archive, name: str, data: bytes) -> None:
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _tar_bytes(files: dict) -> bytes:
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            _add(archive, name, data)
    return buffer.getvalue()


def ilsvrc_download(
    root: str, classes=ILSVRC_WNIDS, per_class: int = 4, val_per_class: int = 2
) -> dict:
    """``root`` holding the three files as image-net.org ships them: ILSVRC2012_img_train.tar (a tar of one
    uncompressed tar a class), ILSVRC2012_img_val.tar (flat) and ILSVRC2012_devkit_t12.tar.gz, whose
    meta.mat numbers the classes in an order that is not the sorted WNIDs' (and holds a non-leaf synset).
    Returns {"train": {wnid: {name: bytes}}, "val": [(name, wnid, bytes)]}."""
    import tarfile

    import scipy.io

    train, val = ilsvrc_images(classes, per_class, val_per_class)
    os.makedirs(root, exist_ok=True)
    with tarfile.open(os.path.join(root, "ILSVRC2012_img_train.tar"), "w") as outer:
        for wnid in reversed(classes):  # the archive's order is not the classes' order
            _add(outer, f"{wnid}.tar", _tar_bytes(train[wnid]))
    with tarfile.open(os.path.join(root, "ILSVRC2012_img_val.tar"), "w") as archive:
        for name, _, data in val:
            _add(archive, name, data)
    ids = {
        wnid: k + 1 for k, wnid in enumerate(reversed(classes))
    }  # ILSVRC2012_ID: not sorted-WNID order
    synsets = np.array(
        [(ids[w], w, 0) for w in classes] + [(1001, "n00001740", 2)],
        dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")],
    )
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    truth = "".join(f"{ids[wnid]}\n" for _, wnid, _ in val).encode()
    with tarfile.open(os.path.join(root, "ILSVRC2012_devkit_t12.tar.gz"), "w:gz") as devkit:
        _add(devkit, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        _add(devkit, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)
    return {"train": train, "val": val}


def ilsvrc_extracted(root: str, files: dict) -> str:
    """docs/imagenet.md's layout of the same files: ROOT/train/<wnid>/ and ROOT/val/<wnid>/."""
    for wnid, images in files["train"].items():
        os.makedirs(os.path.join(root, "train", wnid), exist_ok=True)
        for name, data in images.items():
            with open(os.path.join(root, "train", wnid, name), "wb") as handle:
                handle.write(data)
    for name, wnid, data in files["val"]:
        os.makedirs(os.path.join(root, "val", wnid), exist_ok=True)
        with open(os.path.join(root, "val", wnid, name), "wb") as handle:
            handle.write(data)
    return root
