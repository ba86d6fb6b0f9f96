"""A trained net back from its checkpoint, ready to score images: the one path of evaluate, predict and
visualize.

``restore(path, args, dataset)`` gives the net (its variant, init and weights, in eval mode, placed on the
devices ``args`` ask for), its test-time transform (the §2 mean image and §4.1 settings it was trained
with), its placement and its classes. One rule for the classes: the checkpoint's list is the truth; data
given alongside must have the same classes in the same order (converted ImageNet weights, which name their
classes, match ImageNet's wnid folders by their sorted order); a checkpoint old enough to list none takes the
data's, and without data it cannot name what it predicts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shlex
import sys
from typing import List, Optional

import torch

from paper_alexnet import checkpoint, shared
from paper_alexnet.checkpoint import Checkpoint, CheckpointError
from paper_alexnet.data import Augment, DataSet, DataStats, PaperTransform, open_dataset
from paper_alexnet.networks import get_network
from reproduce.common.args import UsageError
from reproduce.common.placement import Placement, build_placed, place


@dataclasses.dataclass
class Restored:
    checkpoint: Checkpoint
    model: torch.nn.Module  # in eval mode, on placement's devices
    transform: PaperTransform  # the test-time crops of §4.1 with the net's own mean image and scale
    placement: Placement
    classes: List[str]  # fc8's outputs, in order


def checkpoint_data(
    ckpt: Checkpoint, path: str, spec: Optional[str], cache: Optional[dict] = None
) -> DataSet:
    """The data set ``spec`` names, else the one the checkpoint was trained on (opened once per ``cache``)."""
    spec = spec or ckpt.data
    if not spec:
        raise UsageError(f"{path} does not name its data: give --data SPEC")
    cache = {} if cache is None else cache
    if spec not in cache:
        cache[spec] = open_dataset(spec)
    return cache[spec]


def classes_for(ckpt: Checkpoint, path: str, dataset: Optional[DataSet] = None) -> List[str]:
    """The module docstring's one rule for classes."""
    if ckpt.classes:
        if (
            dataset is not None
            and ckpt.origin
            and len(ckpt.classes) == len(dataset.classes)
            and all(re.fullmatch(r"n\d{8}", str(c)) for c in dataset.classes)
        ):
            # converted ImageNet weights: names in the sorted-wnid order of the folders
            return list(ckpt.classes)
        if dataset is not None and list(ckpt.classes) != list(dataset.classes):
            raise UsageError(
                f"{path} was trained on {len(ckpt.classes)} classes ({', '.join(ckpt.classes[:3])}, "
                f"...) that are not the {len(dataset.classes)} of {dataset.spec} "
                f"({', '.join(dataset.classes[:3])}, ...) in the same order"
            )
        return list(ckpt.classes)
    if dataset is None:
        raise UsageError(
            f"{path} does not list its classes (an old checkpoint): give the data it was trained on"
        )
    return list(dataset.classes)


def stats_for(ckpt: Checkpoint, dataset: Optional[DataSet] = None) -> DataStats:
    """The §2 mean image and §4.1 PCA the net was trained with: saved in the checkpoint, or (the oldest
    files) recomputed from the training split of ``dataset`` or of the data the checkpoint names."""
    saved = ckpt.data_stats()
    if saved is not None:
        return saved
    if dataset is None:
        if not ckpt.data:
            raise UsageError(
                "the checkpoint holds no data statistics and names no data: give --data SPEC"
            )
        dataset = open_dataset(ckpt.data)
    return dataset.stats()


def restore(
    path: str,
    args: argparse.Namespace,
    dataset: Optional[DataSet] = None,
    ckpt: Optional[Checkpoint] = None,
) -> Restored:
    """The net in ``path`` (or the already loaded ``ckpt``) for inference, placed as ``args`` (--device,
    --two-gpu, --devices) say."""
    ckpt = ckpt if ckpt is not None else checkpoint.load(path)
    classes = classes_for(ckpt, path, dataset)
    placement = place(args, get_network(ckpt.variant))
    config = get_network(ckpt.variant, num_classes=len(classes), init=ckpt.init)
    # either layout loads the one (grouped) checkpoint format
    model = build_placed(config, placement)
    try:
        model.load_state_dict(ckpt.model)
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: its weights do not fit a '{ckpt.variant}' net with {len(classes)} "
            f"classes ({str(err).strip().splitlines()[-1].strip()})"
        ) from None
    augment = Augment(**ckpt.augment)
    transform = PaperTransform(stats_for(ckpt, dataset), augment, device=placement.first)
    if dataset is not None:
        resize_as_trained(dataset, augment, path)
    return Restored(ckpt, model.eval(), transform, placement, classes)


def resize_as_trained(dataset: DataSet, augment: Augment, path: str) -> None:
    """Cut the data's images to 256x256 as the net's were (§2's shorter side, or Caffe's warp for converted
    BVLC weights); a warning where the data holds images already cut."""
    if augment.resize == "shorter":
        return
    if not all([split.use_resize(augment.resize) for split in dataset.splits.values()]):
        print(
            f"warning: {path} expects images resized by {augment.resize!r} (as its weights were trained), "
            f"but {dataset.spec} holds images already cut as §2 does; its errors will be somewhat off: "
            f"evaluate it on the image folder instead",
            file=sys.stderr,
        )


def run_record(path: str, epoch: int) -> tuple:
    """(result.json, the training command) of the run a checkpoint came from: a shared folder's own record,
    or the files of the run folder that holds the checkpoint: its result.json where it is of this checkpoint's
    epoch (best.pt's; a later checkpoint.pt has not been measured), its config.json's command."""
    if shared.is_shared(path):
        return shared.made(path)
    folder = os.path.dirname(os.path.abspath(path))
    measured, command = {}, None
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(folder, "result.json"), encoding="utf-8") as handle:
            measured = json.load(handle)
    if measured.get("best_epoch") != epoch:
        measured = {}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
            argv = json.load(handle)["run"]["command"]
        command = "python -m reproduce.train " + shlex.join(argv)
    return measured, command
