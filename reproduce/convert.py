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
import os
import shlex
import sys
from typing import Optional, Sequence


from paper_alexnet import caffe, checkpoint, shared, weights
from paper_alexnet.checkpoint import CheckpointError
from paper_alexnet.cli import HelpFormatter
from reproduce.common.args import UsageError, add_format_flag, exit_code, explain, output_format


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
    try:
        ckpt = weights.convert(args.source, args.mean, say)
    except caffe.CaffeError as err:
        raise CheckpointError(explain(err)) from None
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
        f"wrote {args.out}: variant {ckpt.variant}, 1000 ILSVRC-2012 classes; evaluate it with python -m "
        f"reproduce.evaluate --checkpoint {args.out} --data imagenet:ROOT"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
