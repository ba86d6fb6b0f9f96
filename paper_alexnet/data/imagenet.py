"""ILSVRC-2012 as it is downloaded or unpacked (§2's data): where its images are, how the validation images
are labelled, and whether it is all there.

``imagenet:ROOT`` reads, for the training set, ``ROOT/ILSVRC2012_img_train.tar`` (a tar of one tar a class)
or ``ROOT/train/`` (class folders, class tars not yet unpacked, or both); for the validation set,
``ROOT/ILSVRC2012_img_val.tar`` or ``ROOT/val/`` (class folders, or the 50,000 files flat). The archives are
read in place (archives.py). Flat validation images are labelled by the devkit
(``ILSVRC2012_devkit_t12.tar.gz``, a folder or the archive itself), which gives each file's ILSVRC2012_ID
in ``data/ILSVRC2012_validation_ground_truth.txt`` and the ID -> WordNet id map in ``data/meta.mat`` (read
with scipy); Kaggle's ``LOC_val_solution.csv`` works too. The classes are the WordNet ids, sorted.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import tarfile
from typing import Optional

import numpy as np

from .archives import archive_split, nested_tar_images, tar_images
from .folders import folder_images, tree_split
from .images import DataError, is_image_file
from .splits import FileSplit, JoinedSplit, Split

_logger = logging.getLogger(__name__)

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
_VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d+)")
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
DEVKITS = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_devkit_t12", "LOC_val_solution.csv")
# What ILSVRC-2012 holds (§2: "roughly 1.2 million training images, 50,000 validation images"): its
# classes, its training and validation images, the fewest training images of any class, and 50 a class
# in validation.
CLASSES, TRAIN_IMAGES, VAL_IMAGES, FEWEST_TRAIN, VAL_PER_CLASS = 1000, 1_281_167, 50_000, 732, 50


def _devkit_files(devkit: str) -> tuple[bytes, bytes]:
    """The bytes of meta.mat and of the ground-truth file, from a devkit folder or archive."""
    found: dict = {}
    if os.path.isdir(devkit):
        for folder, _, files in os.walk(devkit):
            for name in (META, GROUND_TRUTH):
                if name in files and name not in found:
                    with open(os.path.join(folder, name), "rb") as handle:
                        found[name] = handle.read()
    elif tarfile.is_tarfile(devkit):
        with tarfile.open(devkit) as archive:
            for member in archive.getmembers():
                name = os.path.basename(member.name)
                if name in (META, GROUND_TRUTH) and name not in found:
                    found[name] = archive.extractfile(member).read()
    else:
        raise DataError(f"devkit {devkit} is neither a folder nor a tar archive")
    missing = [n for n in (META, GROUND_TRUTH) if n not in found]
    if missing:
        raise DataError(f"devkit {devkit} lacks {', '.join(missing)}")
    return found[META], found[GROUND_TRUTH]


def val_labels(devkit: str) -> dict[int, str]:
    """{validation image number (1-based): WordNet id} from the devkit or from LOC_val_solution.csv."""
    if not os.path.exists(devkit):
        raise DataError(f"devkit {devkit} does not exist")
    if devkit.lower().endswith(".csv"):
        with open(devkit, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        try:
            return {
                int(_VAL_NUMBER.search(r["ImageId"]).group(1)): r["PredictionString"].split()[0]
                for r in rows
            }
        except (KeyError, AttributeError, IndexError):
            raise DataError(
                f"{devkit}: LOC_val_solution.csv needs the columns ImageId,PredictionString"
            ) from None
    meta_bytes, truth_bytes = _devkit_files(devkit)
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(
            "reading the devkit's meta.mat needs scipy", "install", package="scipy"
        ) from None
    synsets = loadmat(io.BytesIO(meta_bytes), squeeze_me=True)["synsets"]
    wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    ids = [int(line) for line in truth_bytes.decode().split()]
    return {number: wnid[i] for number, i in enumerate(ids, start=1)}


def sort_imagenet_val(val_dir: str, devkit: str) -> int:
    """Move every ``ILSVRC2012_val_*.JPEG`` in ``val_dir`` into ``val_dir/<wnid>/``; returns how many moved."""
    if not os.path.isdir(val_dir):
        raise DataError(f"validation folder {val_dir} does not exist")
    labels = val_labels(devkit)
    files = sorted(f for f in os.listdir(val_dir) if is_image_file(f) and _VAL_NUMBER.search(f))
    if not files:
        _logger.info(f"{val_dir}: no flat ILSVRC2012_val_* images; nothing to do")
        return 0
    unknown = [f for f in files if int(_VAL_NUMBER.search(f).group(1)) not in labels]
    if unknown:
        raise DataError(f"{len(unknown)} files have no label in {devkit}, e.g. {unknown[0]}")
    for name in files:
        target = os.path.join(val_dir, labels[int(_VAL_NUMBER.search(name).group(1))])
        os.makedirs(target, exist_ok=True)
        os.replace(os.path.join(val_dir, name), os.path.join(target, name))
    _logger.info(
        f"{val_dir}: sorted {len(files)} images into {len(set(labels.values()))} class folders"
    )
    return len(files)


def find_devkit(root: str) -> Optional[str]:
    """The devkit (or Kaggle's LOC_val_solution.csv) in ``root`` or up to three folders above it (Kaggle's
    ILSVRC/Data/CLS-LOC), if there is one."""
    folder, folders = os.path.abspath(root), []
    for _ in range(4):
        folders.append(folder)
        folder = os.path.dirname(folder)
    for folder in folders:
        for name in DEVKITS:
            if os.path.exists(os.path.join(folder, name)):
                return os.path.join(folder, name)
    return None


def _train(root: str, progress: bool) -> tuple[list, Split, list]:
    """(classes, the training split, notes) from ROOT/ILSVRC2012_img_train.tar or ROOT/train/."""
    archive, folder = os.path.join(root, TRAIN_TAR), os.path.join(root, "train")
    if os.path.isfile(archive):
        found = nested_tar_images(archive, progress)
        classes = sorted(found)
        groups = [(archive, found[c], label) for label, c in enumerate(classes)]
        notes = [f"{archive}: {len(classes)} class archives, read in place"]
        if os.path.isdir(folder):
            notes.append(f"{folder} is not read: {TRAIN_TAR} is beside it")
        return classes, archive_split("train", groups), notes
    if not os.path.isdir(folder):
        present = sorted(os.listdir(root))
        raise DataError(
            f"ImageNet folder {root} holds neither {TRAIN_TAR} nor a train/ folder (it holds: "
            f"{', '.join(present[:6]) or 'nothing'}{', ...' if len(present) > 6 else ''})"
        )
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    folders = {e.name for e in entries if e.is_dir() and not e.name.startswith(".")}
    tars = {e.name[:-4] for e in entries if e.is_file() and e.name.lower().endswith(".tar")}
    classes = sorted(folders | tars)
    parts, notes, run = [], [], []

    def close_run():
        if run:
            kind, items = run[0][0], [item for _, item in run]
            if kind == "tar":
                parts.append(archive_split("train", items))
            else:
                paths = [p for ps, _ in items for p in ps]
                parts.append(FileSplit("train", paths, [y for ps, y in items for _ in ps]))
            run.clear()

    both = []
    for label, name in enumerate(classes):
        if name in tars:
            path = os.path.join(folder, name + ".tar")
            item = ("tar", (path, tar_images(path), label))
            both += [name] if name in folders else []
        else:
            item = ("folder", (folder_images(os.path.join(folder, name)), label))
        if run and run[0][0] != item[0]:
            close_run()
        run.append(item)
    close_run()
    if tars:
        notes.append(
            f"{folder}: {len(tars)} classes read from their .tar archives in place, "
            f"{len(classes) - len(tars)} from folders"
        )
    if both:
        notes.append(
            f"{folder}: {len(both)} classes are there both as a folder and as a .tar "
            f"(e.g. {both[0]}): the .tar is read, being whole"
        )
    split = parts[0] if len(parts) == 1 else JoinedSplit("train", parts)
    if not classes or len(split) == 0:
        raise DataError(
            f"no images found under {folder} ({len(folders)} class folders, {len(tars)} .tar "
            f"archives, no .JPEG/.jpg/.png files in them)"
        )
    return classes, split, notes


def _val(root: str, classes: list) -> tuple[Split, list]:
    """(the validation split, notes) from ROOT/ILSVRC2012_img_val.tar or ROOT/val/, labelled by class."""
    archive, folder = os.path.join(root, VAL_TAR), os.path.join(root, "val")
    flat_members = None
    if os.path.isfile(archive):
        flat_members = tar_images(archive)
    elif not os.path.isdir(folder):
        raise DataError(f"ImageNet folder {root} holds neither {VAL_TAR} nor a val/ folder")
    flat = (
        [f for f in sorted(os.listdir(folder)) if is_image_file(f)] if flat_members is None else []
    )
    if flat_members is None and not flat:  # val/<wnid>/: labelled by its folders
        _, split, notes, _ = tree_split("val", folder, classes)
        return split, notes
    devkit = find_devkit(root)
    if devkit is None:
        where = archive if flat_members is not None else folder
        count = len(flat_members) if flat_members is not None else len(flat)
        raise DataError(
            f"{where} holds {count} images not sorted into class folders, and no devkit "
            f"({DEVKITS[0]} or {DEVKITS[2]}) is in {root} to label them",
            "sort-val" if flat_members is None else "",
            val=folder,
        )
    labels = val_labels(devkit)
    index = {c: k for k, c in enumerate(classes)}
    names = [m.name for m in flat_members] if flat_members is not None else flat
    numbers = [_VAL_NUMBER.search(os.path.basename(n)) for n in names]
    unlabelled = [n for n, m in zip(names, numbers) if m is None or int(m.group(1)) not in labels]
    if unlabelled:
        raise DataError(
            f"{len(unlabelled)} validation images have no label in {devkit}, e.g. {unlabelled[0]}"
        )
    wnids = [labels[int(m.group(1))] for m in numbers]
    foreign = sorted(set(wnids) - set(index))
    if foreign:
        raise DataError(
            f"{devkit} labels validation images with classes the training set lacks: "
            f"{', '.join(foreign[:5])}"
        )
    notes = [f"validation images labelled by {devkit}"]
    if flat_members is not None:
        groups = [
            (archive, [m for m, w in zip(flat_members, wnids) if w == c], index[c]) for c in classes
        ]
        return archive_split("val", [g for g in groups if g[1]]), notes
    order = sorted(range(len(flat)), key=lambda k: (index[wnids[k]], flat[k]))
    paths = [os.path.join(folder, flat[k]) for k in order]
    return FileSplit("val", paths, [index[wnids[k]] for k in order]), notes


def open_ilsvrc(root: str, progress: bool = True) -> tuple[list, dict, list]:
    """(classes, {"train": ..., "val": ...}, notes) of ILSVRC-2012 at ``root`` in any of the layouts above."""
    if os.path.isfile(root):
        raise DataError(
            f"{root} is a file, not a folder: give the folder that holds it, "
            f"--data imagenet:{os.path.dirname(os.path.abspath(root))}"
        )
    if not os.path.isdir(root):
        raise DataError(f"ImageNet folder {root} does not exist")
    classes, train, notes = _train(root, progress)
    val, more = _val(root, classes)
    return classes, {"train": train, "val": val}, notes + more


def count_check(spec: str, classes: list, splits: dict, refuse: bool) -> Optional[str]:
    """A warning line where the data set is not the whole of ILSVRC-2012 (its classes, its images, each
    class's share), or, with ``refuse``, a DataError; None where it is."""
    train, val = (
        np.bincount(splits["train"].labels, minlength=len(classes)),
        np.bincount(splits["val"].labels, minlength=len(classes)),
    )
    wrong = []
    for what, found, expected in (
        ("classes", len(classes), CLASSES),
        ("training images", int(train.sum()), TRAIN_IMAGES),
        ("validation images", int(val.sum()), VAL_IMAGES),
    ):
        if found != expected:
            wrong.append(f"{found:,} {what} (ILSVRC-2012: {expected:,})")
    few = [(classes[k], int(n)) for k, n in enumerate(train) if n < FEWEST_TRAIN]
    if few:
        wrong.append(
            f"{len(few)} classes with fewer than {FEWEST_TRAIN} training images, the fewest any class "
            f"has ("
            + ", ".join(f"{c}: {n}" for c, n in few[:3])
            + (", ..." if len(few) > 3 else "")
            + ")"
        )
    odd = [classes[k] for k, n in enumerate(val) if n != VAL_PER_CLASS]
    if odd:
        wrong.append(
            f"{len(odd)} classes without {VAL_PER_CLASS} validation images (e.g. {odd[0]})"
        )
    if not wrong:
        return None
    line = f"{spec} is not the whole of ILSVRC-2012: " + "; ".join(wrong)
    if refuse:
        raise DataError(line + " (?counts=refuse)")
    return f"warning: {line} (an archive that unpacked only partly? ?counts=refuse makes this an error)"
