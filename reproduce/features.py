"""Activations of a trained net by the paper's layer names, written as .npy: ``python -m reproduce.features``.

    python -m reproduce.features --checkpoint runs/mine/best.pt --layers fc7,pool5 --out feats
    python -m reproduce.features --checkpoint bvlc.pt --data folder:imgs --split train --layers relu7 --rdm --out f
    python -m reproduce.features --checkpoint runs/mine/best.pt --layers fc7 --out f cat.jpg dog.png
    python -m reproduce.features --checkpoint runs/mine/best.pt --list-layers

Each image goes through the test pipeline the net was trained with: the
256x256 image of §2, its centre crop, the mean image subtracted (§4.1). The
files, in --out:

- ``LAYER.npy``: N x C x H x W (conv maps) or N x D, float32 (--dtype float16
  halves it; --pool avg|max makes conv maps N x C). Written batch by batch
  (reproduce/common/npy_stream.py), never held whole in memory.
- ``index.csv``: row, path, class, label of each image written (an unreadable
  file is skipped and has no row).
- ``layers.json``: each layer's shape, the checkpoint, the transform, the data.
- with --rdm, ``rdm_LAYER.npy`` (1 - Pearson correlation of each pair of
  images' activations) and ``rdm_LAYER.png``, sorted by class.

Layer names: paper_alexnet/features.py; the table is in docs/features.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from typing import List, Optional, Sequence

import numpy as np
import torch

from paper_alexnet import checkpoint, features, shared
from paper_alexnet.atomic import atomic_write, make_folder
from paper_alexnet.cli import HelpFormatter, pad, plural
from paper_alexnet.data.loader import BatchLoader
from paper_alexnet.data.splits import FileSplit
from paper_alexnet.features import LayerError, Taps, pooled, tapping
from reproduce.common import run_lock
from reproduce.common.args import (
    add_checkpoint_flag,
    named_weights,
    as_program,
    Exit,
    UsageError,
    add_data_flag,
    add_decode_flag,
    add_device_flag,
    add_strict_flag,
    add_workers_flag,
    check_workers,
    exit_code,
    reader_processes,
    say_skipped,
)
from reproduce.common.figures import drawable, pyplot, save
from reproduce.common.npy_stream import NpyStream
from reproduce.common.restore import checkpoint_data, resize_as_trained, restore


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.features",
        formatter_class=HelpFormatter,
        description="Write a trained net's activations at named layers (conv1 ... fc8, prob) as .npy, for "
        "a data split or for image files.",
        epilog="Layers of the paper net: input, conv1, relu1, norm1, pool1, conv2, relu2, norm2, pool2, conv3, "
        "relu3, conv4, relu4, conv5, relu5, pool5, fc6, relu6, fc7, relu7, fc8, prob. --list-layers prints a "
        "checkpoint's, with their shapes.",
    )
    parser.add_argument(
        "images", nargs="*", metavar="IMAGE", help="image files (instead of a data split)"
    )
    add_checkpoint_flag(parser)
    parser.add_argument(
        "--layers",
        default="relu7",
        metavar="A,B",
        help="layers by the paper's names (or, on torchvision's net, its module paths like "
        "classifier.4); relu7 is Figure 4's fc7 feature",
    )
    parser.add_argument("--out", default=None, metavar="DIR", help="where the files go")
    parser.add_argument(
        "--list-layers", action="store_true", help="print the net's layers and shapes, and stop"
    )
    add_data_flag(parser, from_checkpoint=True)
    parser.add_argument(
        "--split", default="val", help="which split of the data: train, val, or test"
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="only the split's first N images"
    )
    parser.add_argument(
        "--dtype", choices=("float32", "float16"), default="float32", help="of the arrays written"
    )
    parser.add_argument(
        "--pool",
        choices=("avg", "max"),
        default=None,
        help="reduce each conv map to one value per channel (N x C)",
    )
    parser.add_argument(
        "--rdm",
        action="store_true",
        help="also each layer's N x N dissimilarity matrix (1 - Pearson r) and its picture",
    )
    parser.add_argument("-b", "--batch-size", type=int, default=64, help="images per batch")
    add_workers_flag(parser, inference=True)
    add_decode_flag(parser)
    add_strict_flag(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_flag(parser)
    # restore(): one device (the taps read one net)
    parser.set_defaults(two_gpu=False, devices=None)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return exit_code(lambda: run(named_weights(args)))
    except KeyboardInterrupt:
        print(
            f"stopped: no array of this run was written to {args.out} (an earlier run's files there are "
            "as they were)",
            file=sys.stderr,
        )
        return Exit.SIGINT


def run(args) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, not {args.limit}")
    check_workers(args.workers)
    if args.images and args.data:
        raise UsageError("give image files or --data, not both")
    ckpt = checkpoint.load(args.checkpoint)
    asked = list(dict.fromkeys(name.strip() for name in args.layers.split(",") if name.strip()))
    if args.list_layers:
        net = restore(args.checkpoint, args, ckpt=ckpt)
        print(layer_table(net.model))
        return 0
    if not args.out:
        raise UsageError("give --out DIR (or --list-layers)")
    if args.images:  # files without labels, cut to 256x256 as the net's training images were
        files = FileSplit("the files given", args.images, [-1] * len(args.images))
        files.use_resize(ckpt.augment.get("resize", "shorter"))
        source = SplitSource(files, files.name, classes=[])
        net = restore(args.checkpoint, args, ckpt=ckpt)
    else:
        dataset = checkpoint_data(ckpt, args.checkpoint, args.data)
        if args.split not in dataset.splits:
            raise UsageError(
                f"{dataset.spec} has no split {args.split!r}; its splits: {', '.join(dataset.splits)}"
            )
        # a net that names its classes reads any data (BVLC's ImageNet net on a user's folder): the labels
        # in index.csv are the data's; one that does not takes the data's classes (restore's rule)
        net = restore(args.checkpoint, args, None if ckpt.classes else dataset, ckpt)
        resize_as_trained(dataset, net.transform.augment, args.checkpoint)
        split = dataset.split(args.split)
        if args.limit:
            split = split.subset(range(min(args.limit, len(split))))
        source = SplitSource(split, f"{dataset.spec} {args.split}", dataset.classes)
    try:
        stages = features.resolve(net.model, asked)
    except LayerError as err:
        raise UsageError(f"{err}") from None
    make_folder(args.out)
    with run_lock.hold(args.out):
        return write_features(args, net, source, asked, stages)


# --- where the images come from ------------------------------------------------------------------------


class SplitSource:
    """A data split (or the files given, as a split without labels), read by the loader: (indices, uint8
    images, labels) per batch, and the unreadable files it skipped."""

    def __init__(self, split, name: str, classes: Sequence[str]):
        self.split, self.name, self.classes = split, name, list(classes)
        self.skipped: list = []

    def __len__(self) -> int:
        return len(self.split)

    def batches(self, args, device, workers: int):
        loader = BatchLoader(
            self.split,
            args.batch_size,
            shuffle=False,
            workers=workers,
            strict=args.strict,
            device=device,
            decode=args.decode,
        )
        yield from loader.indexed()
        self.skipped = list(loader.skipped)

    def describe(self, i: int) -> str:
        return self.split.describe(i)

    def label(self, i: int) -> int:
        return int(self.split.labels[i])


# --- the writing ------------------------------------------------------------------------------------------


def write_features(args, net, source, asked: List[str], stages: List[str]) -> int:
    """Every image of ``source`` through the net once, each asked layer appended to its .npy as it comes;
    then index.csv and layers.json (last: a folder with layers.json is whole), and the RDMs when asked."""
    from tqdm.auto import tqdm

    model, device = net.model, net.placement.first
    workers = reader_processes(args.workers, device)  # resolved here; the flags stay as given
    shapes = features.shapes(model)
    dtype = np.dtype(args.dtype)
    files = {name: f"{_safe(name)}.npy" for name in asked}
    streams = {}
    rows: list = []
    stage_of = {name: features.module_paths(model).get(name, name) for name in asked}
    taken: dict = {}
    taps = Taps(stages, lambda name, x: taken.__setitem__(name, pooled(x, args.pool)))
    start, seen = time.perf_counter(), 0
    bar = tqdm(total=len(source), unit="img", desc="features", disable=args.quiet, leave=False)
    try:
        with torch.no_grad(), tapping(model, taps):
            for indices, images, labels in source.batches(args, device, workers):
                taken.clear()
                model(net.transform.center(images))
                for name in asked:
                    array = taken[stage_of[name]].to("cpu", torch.float32).numpy()
                    if name not in streams:
                        streams[name] = NpyStream(
                            os.path.join(args.out, files[name]), array.shape[1:], dtype
                        )
                    streams[name].write(array)
                rows += indices
                seen += len(indices)
                bar.update(len(indices))
        seconds = time.perf_counter() - start
    except BaseException:
        for stream in streams.values():
            stream.discard()
        raise
    finally:
        bar.close()
    say_skipped(source.skipped, source.name)
    if not rows:
        for stream in streams.values():
            stream.discard()
        raise UsageError(
            f"none of the {plural(len(source), 'image')} of {source.name} could be read"
        )
    whole = os.path.join(args.out, "layers.json")
    # an earlier run's: until this run's is written, the folder is not whole
    if os.path.exists(whole):
        os.remove(whole)
    for stream in streams.values():
        stream.close()
    index = [
        {
            "row": r,
            "path": source.describe(i),
            "label": source.label(i),
            "class": _class(source.classes, source.label(i)),
        }
        for r, i in enumerate(rows)
    ]
    with atomic_write(os.path.join(args.out, "index.csv"), newline="", encoding="utf-8") as handle:
        out = csv.DictWriter(handle, fieldnames=["row", "path", "class", "label"])
        out.writeheader()
        out.writerows(index)
    record = {
        "format": "paper_alexnet.features/1",
        "checkpoint": os.path.abspath(args.checkpoint),
        "variant": net.checkpoint.variant,
        "images": len(rows),
        "source": source.name,
        "dtype": args.dtype,
        "pool": args.pool,
        "layers": {
            name: {
                "file": files[name],
                "stage": stage_of[name],
                "shape": [len(rows), *streams[name].row_shape],
                "unpooled": list(shapes[stage_of[name]]),
            }
            for name in asked
        },
        "transform": shared.transforms(net.checkpoint),
        "images_per_s": round(seen / max(seconds, 1e-9), 1),
        "workers": workers,  # the count it read with (the bench reads it)
        "batch_size": args.batch_size,
    }
    with atomic_write(whole, encoding="utf-8") as handle:
        json.dump(record, handle, indent=1, ensure_ascii=False)
    print(
        f"{plural(len(rows), 'image')} of {source.name} -> {args.out}: "
        + ", ".join(
            f"{name} {' x '.join(map(str, record['layers'][name]['shape']))}" for name in asked
        )
        + f" ({args.dtype}); {record['images_per_s']:.1f} img/s"
    )
    if args.rdm:
        labels = np.array([row["label"] for row in index])
        for name in asked:
            path = os.path.join(args.out, files[name])
            matrix = features.rdm(np.load(path, mmap_mode="r"))
            target = os.path.join(args.out, f"rdm_{_safe(name)}.npy")
            with atomic_write(target, "wb") as handle:
                np.save(handle, matrix.astype(np.float32))
            rdm_figure(target[:-4] + ".png", matrix, labels, source.classes, name)
            print(f"rdm of {name}: {target} ({len(matrix)} x {len(matrix)})")
    return 0


def _safe(name: str) -> str:
    return name.replace("/", "_")


def _class(classes: Sequence[str], label: int) -> str:
    return str(classes[label]) if 0 <= label < len(classes) else ""


def layer_table(model: torch.nn.Module) -> str:
    """--list-layers: each stage with its output shape (and torchvision's module paths on its net)."""
    shapes = features.shapes(model)
    paths: dict = {}
    for path, stage in features.module_paths(model).items():
        paths.setdefault(stage, []).append(path)
    lines = [
        f"{pad('layer', 9)} {pad('shape (one image)', 18)}"
        + ("  torchvision path" if paths else "")
    ]
    for name, shape in shapes.items():
        lines.append(
            f"{pad(name, 9)} {pad(' x '.join(map(str, shape)), 18)}"
            + (f"  {', '.join(paths.get(name, []))}" if paths else "")
        )
    return "\n".join(lines)


def rdm_figure(
    path: str, matrix: np.ndarray, labels: np.ndarray, classes: Sequence[str], name: str
) -> None:
    """The RDM with its images sorted by class (a stable sort: the split's order within a class), the class
    blocks marked."""
    plt = pyplot()
    order = np.argsort(labels, kind="stable")
    fig, axis = plt.subplots(figsize=(7, 6), layout="constrained")
    image = axis.imshow(matrix[np.ix_(order, order)], cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=axis, label="1 - Pearson r")
    sorted_labels = labels[order]
    edges = np.flatnonzero(np.diff(sorted_labels)) + 0.5
    for edge in edges:
        axis.axhline(edge, color="white", linewidth=0.5)
        axis.axvline(edge, color="white", linewidth=0.5)
    if 0 < len(set(labels.tolist()) - {-1}) <= 30:
        starts = np.concatenate([[-0.5], edges])
        ends = np.concatenate([edges, [len(labels) - 0.5]])
        names = [_class(classes, int(sorted_labels[int(s + 0.5)])) for s in starts]
        drawable(names)
        axis.set_yticks((starts + ends) / 2, names, fontsize=7)
        axis.set_xticks((starts + ends) / 2, names, fontsize=7, rotation=90)
    axis.set_title(f"{name}: dissimilarity of {len(labels)} images, sorted by class", fontsize=10)
    save(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(as_program(main))
