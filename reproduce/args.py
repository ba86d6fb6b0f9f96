"""Command-line pieces shared by train, evaluate, ablate and bench: the data spec and the §2/§4.1 switches."""

from __future__ import annotations

import argparse
import os

import sys
from typing import Callable

from paper_alexnet import ConfigError, paper
from paper_alexnet.data import MEAN_MODES, Augment, BadImageError, DataError
from paper_alexnet.engine import CheckpointError

class UsageError(ValueError):
    """Bad command-line input: one line, exit code 2, nothing written."""


def exit_code(action: Callable[[], int]) -> int:
    """Run a command; bad input becomes one ``error:`` line and exit 2, an unreadable file under
    --strict exit 1, never a traceback."""
    try:
        return action()
    except BadImageError as err:
        print(f"error: unreadable image {err.path}: {err.reason} (--strict; without it such files are skipped)",
              file=sys.stderr)
        return 1
    except (UsageError, DataError, ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


DATA_HELP = ("synthetic | imagenet:ROOT | cifar10:ROOT | cifar100:ROOT | caltech101:ROOT | folder:ROOT | "
             "store:DIR; options after '?', e.g. synthetic?classes=10&train=1000 or folder:ROOT?val=0.2")


def add_data_arguments(parser: argparse.ArgumentParser, default_data: str = "synthetic") -> None:
    group = parser.add_argument_group("data (§2, §4.1)")
    group.add_argument("--data", default=default_data, metavar="SPEC", help=DATA_HELP)
    group.add_argument("--download", action="store_true", help="download cifar10/cifar100/caltech101 if absent")
    group.add_argument("--crop", type=int, default=None,
                       help="crop side (default: the variant's input, 227; 224 for paper-224) (§4.1)")
    group.add_argument("--no-flip", action="store_true", help="no random horizontal reflections (§4.1)")
    group.add_argument("--no-pca", action="store_true", help="no PCA lighting (§4.1)")
    group.add_argument("--pca-sigma", type=float, default=paper.PCA_SIGMA, help="std of the PCA lighting a_i (§4.1)")
    group.add_argument("--mean", choices=MEAN_MODES, default="image",
                       help="what to subtract: the training set's mean image (§2), its per-channel mean, "
                            "torchvision's ImageNet mean/std (for torchvision weights), or nothing")
    group.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                       help="data loading processes (0: in the main process)")
    group.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")


def augment_from_args(args: argparse.Namespace, input_size: int) -> Augment:
    """The Augment of the parsed flags; the crop defaults to the net's input size."""
    crop = args.crop if args.crop is not None else input_size
    if args.workers < 0:
        raise DataError(f"--workers must be 0 or more, not {args.workers}")
    try:
        return Augment(crop=crop, flip=not args.no_flip, pca=not args.no_pca, pca_sigma=args.pca_sigma,
                       mean=args.mean)
    except ValueError as err:
        raise DataError(str(err)) from None
