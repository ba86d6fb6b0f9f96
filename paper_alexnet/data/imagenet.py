"""ILSVRC-2012 housekeeping: sort the flat validation folder into class folders (§2's val set).

The validation archive unpacks to 50,000 files ``ILSVRC2012_val_00000001.JPEG``...
in one folder. The devkit (``ILSVRC2012_devkit_t12.tar.gz``, a folder or the
archive itself) gives each file's ILSVRC2012_ID in
``data/ILSVRC2012_validation_ground_truth.txt`` and the ID -> WordNet id map in
``data/meta.mat`` (read with scipy). Kaggle's ``LOC_val_solution.csv`` works too.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import tarfile
from .images import DataError, is_image_file

_logger = logging.getLogger(__name__)

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
_VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d+)")


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
