"""Trained AlexNet weights from elsewhere, as a checkpoint of this package: ``python -m reproduce.convert``.

    python -m reproduce.convert bvlc_alexnet.caffemodel --mean imagenet_mean.binaryproto --out bvlc_alexnet.pt
    python -m reproduce.convert alexnet-owt-7be5be79.pth --out torchvision_alexnet.pt
    python -m reproduce.convert bvlc_alexnet.caffemodel --mean imagenet_mean.binaryproto --out bvlc_alexnet   # a folder

SOURCE is BVLC Caffe's ``bvlc_alexnet.caffemodel`` (either Caffe format; the ``caffe`` variant, the paper's
grouped LRN net as BVLC trained it) or torchvision's AlexNet state dict (the ``torchvision`` variant). The
checkpoint holds the weights, the 1000 ILSVRC-2012 class names, the data statistics and the test-time
preprocessing the weights expect, so that evaluate, predict, visualize and ``train --pretrained`` take it
as they take any other. docs/pretrained.md: where to get the files, and what they should score.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from paper_alexnet import build_model, caffe, checkpoint, shared
from paper_alexnet.checkpoint import Checkpoint, CheckpointError
from paper_alexnet.cli import HelpFormatter
from paper_alexnet.data import Augment, DataStats
from paper_alexnet.data.stats import IMAGENET_EIGVAL, IMAGENET_EIGVEC, IMAGENET_MEAN
from paper_alexnet.weights import is_torchvision_state, load_torchvision_weights
from reproduce.args import UsageError, add_format_flag, exit_code, explain, output_format


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.convert",
        formatter_class=HelpFormatter,
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "source", metavar="SOURCE", help="bvlc_alexnet.caffemodel, or torchvision's alexnet-*.pth"
    )
    parser.add_argument(
        "--out", required=True, metavar="PATH", help="FILE.pt, or a folder (safetensors) to write"
    )
    add_format_flag(parser, CONVERTS_TO)
    parser.add_argument(
        "--mean",
        default=None,
        metavar="BINARYPROTO",
        help="Caffe's imagenet_mean.binaryproto (default for a caffemodel: Caffe's per-channel "
        "BGR mean 104, 117, 123)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    return parser


CONVERTS_TO = ("pt", "safetensors")  # an ONNX file: export the converted net


def imagenet_classes() -> list:
    """The 1000 ILSVRC-2012 class names in sorted-wnid order, the order of both Caffe's synsets.txt and
    torchvision's weights (shipped offline in torchvision's weights metadata)."""
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def _stats(mean_image: np.ndarray) -> dict:
    """The checkpoint's statistics: the mean image the weights expect, and ImageNet's published PCA (§4.1),
    for fine-tuning with lighting."""
    return Checkpoint.stats_entry(
        DataStats(
            mean_image.astype(np.float32),
            IMAGENET_EIGVAL.copy(),
            IMAGENET_EIGVEC.copy(),
            0,
            "ImageNet (published)",
        )
    )


def from_caffe(path: str, mean_path: Optional[str], say) -> Tuple[dict, str, dict, dict]:
    """(state dict, variant, augment, stats) of a caffemodel, converted to this package's conventions."""
    blobs, version = caffe.read_caffemodel(path)
    with torch.device("meta"):
        expected = build_model("caffe").state_dict()
    state = caffe.to_state_dict(blobs, expected, path)
    say(
        f"{path}: Caffe format {'V1 (layers)' if version == 1 else 'V2 (layer)'}, 8 learned layers; conv1 turned "
        f"from BGR to RGB input"
    )
    if mean_path:
        mean = caffe.read_mean(mean_path)
        say(f"mean image from {mean_path} (BGR, turned to RGB)")
    else:
        mean = caffe.bgr_mean_image()
        say(
            "no --mean: Caffe's per-channel mean B 104, G 117, R 123 (give --mean imagenet_mean.binaryproto "
            "for the mean image BVLC trained with)"
        )
    augment = Augment(
        crop=227, mean="image", scale=1.0, resize="warp"
    )  # raw 0-255 pixels, images warped
    return state, "caffe", dataclasses.asdict(augment), _stats(mean)


def from_torchvision(state: dict, path: str, say) -> Tuple[dict, str, dict, dict]:
    model = build_model("torchvision")
    try:
        load_torchvision_weights(model, state)
    except Exception as err:  # noqa: BLE001 - a ConfigError naming the key
        raise CheckpointError(f"{path}: {err}") from None
    say(f"{path}: torchvision's AlexNet state dict")
    augment = Augment(crop=model.config.input_size, mean="torchvision")
    return (
        model.state_dict(),
        "torchvision",
        dataclasses.asdict(augment),
        _stats(np.broadcast_to((255 * IMAGENET_MEAN)[:, None, None], (3, 256, 256))),
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    return exit_code(lambda: run(args))


def run(args) -> int:
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    form = output_format(args.out, args.format, CONVERTS_TO)
    if os.path.exists(args.out) and not args.force:
        raise UsageError(f"{args.out} exists: give --force to replace it, or another --out")
    if not os.path.isfile(args.source):
        raise UsageError(f"{args.source} does not exist")
    if args.mean and not os.path.isfile(args.mean):
        raise UsageError(f"--mean {args.mean} does not exist")
    digest = caffe.sha1(args.source)
    say(f"sha1 {digest}  {args.source}")
    try:
        loaded = torch.load(args.source, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a PyTorch file: a caffemodel, or nothing
        loaded = None
    try:
        if isinstance(loaded, dict) and is_torchvision_state(loaded):
            state, variant, augment, stats = from_torchvision(loaded, args.source, say)
            source = "torchvision"
        elif loaded is not None:
            raise CheckpointError(
                f"{args.source} is a PyTorch file but not torchvision's AlexNet state dict"
            )
        else:
            state, variant, augment, stats = from_caffe(args.source, args.mean, say)
            source = "caffe"
            if digest != caffe.BVLC_SHA1:
                say(
                    f"note: sha1 is not BVLC's bvlc_alexnet.caffemodel ({caffe.BVLC_SHA1}); converted all the same"
                )
    except caffe.CaffeError as err:
        raise CheckpointError(explain(err)) from None
    ckpt = Checkpoint(
        model=state,
        variant=variant,
        classes=imagenet_classes(),
        augment=augment,
        stats=stats,
        origin={
            "source": os.path.abspath(args.source),
            "sha1": digest,
            "format": source,
            "mean": os.path.abspath(args.mean) if args.mean else None,
        },
    )
    if form == "safetensors":
        command = "python -m reproduce.convert " + shlex.join(
            [
                os.path.basename(args.source),
                *(["--mean", os.path.basename(args.mean)] if args.mean else []),
                "--format",
                "safetensors",
                "--out",
                os.path.basename(args.out.rstrip("/")),
            ]  # fmt: skip
        )
        shared.write(ckpt, args.out, command=command)
    else:
        checkpoint.save(args.out, ckpt)
    say(
        f"wrote {args.out}: variant {variant}, 1000 ILSVRC-2012 classes; evaluate it with python -m "
        f"reproduce.evaluate --checkpoint {args.out} --data imagenet:ROOT"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
