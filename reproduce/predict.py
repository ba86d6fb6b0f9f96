"""The top-5 classes of your own photos, from a trained checkpoint: ``python -m reproduce.predict``.

    python -m reproduce.predict cat.jpg dog.png --checkpoint runs/paper-synthetic/best.pt --ten-crop

Each image goes through the paper's test pipeline: shorter side to 256, the
central 256x256 (§2), the mean image subtracted, then the centre crop or the
ten crops whose softmax outputs are averaged (§4.1). The mean image comes from
the checkpoint, so the training data need not be at hand. A file that is not a
readable image is reported and skipped; the command fails (exit 2) only when
none of the files given could be read.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np
import torch

from paper_alexnet import checkpoint
from paper_alexnet.data import BadImageError, PaperTransform, average_softmax, load_rgb
from paper_alexnet.cli import HelpFormatter, pad
from reproduce.common.args import (
    add_checkpoint_flag,
    named_weights,
    UsageError,
    exit_code,
    write_csv,
)
from reproduce.common.placement import add_device_arguments
from reproduce.common.restore import restore


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.predict",
        formatter_class=HelpFormatter,
        description="Top-k classes with probabilities for image files (§4.1 test "
        "crops), from a checkpoint of reproduce.train.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    add_checkpoint_flag(parser)
    parser.add_argument(
        "--ten-crop", action="store_true", help="average the softmax of the ten crops (§4.1)"
    )
    parser.add_argument("--top", type=int, default=5, help="how many classes to show per image")
    parser.add_argument(
        "--csv", default=None, metavar="PATH", help="also write image, rank, class, probability"
    )
    add_device_arguments(parser)
    return parser


def predict(
    model: torch.nn.Module, transform: PaperTransform, images: torch.Tensor, ten_crop: bool
) -> torch.Tensor:
    """Class probabilities (N x classes) of uint8 N x 3 x 256 x 256 images: the centre crop's softmax, or the
    mean of the ten crops' (§4.1)."""
    with torch.no_grad():
        if ten_crop:
            return average_softmax(model, transform.ten_crops(images))
        return torch.softmax(model(transform.center(images)), dim=1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    return exit_code(lambda: run(named_weights(args)))


def run(args) -> int:
    if args.top < 1:
        raise UsageError(f"--top must be at least 1, not {args.top}")
    ckpt = checkpoint.load(args.checkpoint)
    # §2's cut, or Caffe's warp for converted BVLC weights
    resize = ckpt.augment.get("resize", "shorter")
    arrays, paths = [], []
    for path in args.images:  # every file is read before the net is built
        try:
            arrays.append(load_rgb(path, resize=resize))
            paths.append(path)
        except BadImageError as err:
            if len(args.images) == 1:
                raise UsageError(f"{path} is not a readable image: {err.reason}") from None
            print(f"skipped {path}: not a readable image ({err.reason})", file=sys.stderr)
    if not arrays:
        raise UsageError(f"none of the {len(args.images)} files is a readable image")
    net = restore(args.checkpoint, args, ckpt=ckpt)
    model, transform, classes = net.model, net.transform, net.classes
    chunks = [
        torch.from_numpy(np.stack(arrays[i : i + 32])).permute(0, 3, 1, 2).contiguous()
        for i in range(0, len(arrays), 32)
    ]
    probs = torch.cat(
        [predict(model, transform, chunk, args.ten_crop).float().cpu() for chunk in chunks]
    )
    top = min(args.top, len(classes))
    rows = []
    for path, p in zip(paths, probs):
        values, indices = p.topk(top)
        print(f"{path} ({'ten crops' if args.ten_crop else 'centre crop'}):")
        for rank, (value, index) in enumerate(zip(values.tolist(), indices.tolist()), 1):
            print(f"  {rank}. {pad(classes[index], 24)} {100 * value:6.2f}%")
            rows.append(
                {"image": path, "rank": rank, "class": classes[index], "probability": value}
            )
    if args.csv:
        write_csv(rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
