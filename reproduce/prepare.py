"""Write a data set once into the fast store (§2: 256x256), or sort ImageNet's validation folder.

    python -m reproduce.prepare --data folder:/data/fruit --out stores/fruit
    python -m reproduce.prepare --data imagenet:/data/ilsvrc2012 --out stores/imagenet --workers 8
    python -m reproduce.prepare --sort-imagenet-val /data/ilsvrc2012/val --devkit ILSVRC2012_devkit_t12.tar.gz

Then train from it with ``--data store:DIR``. Interrupted, the same command
continues where it stopped; run on a finished store, it does nothing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from paper_alexnet.data import DataError, prepare_store, synthetic_source
from paper_alexnet.data.imagenet import sort_imagenet_val
from paper_alexnet.data.store import ENCODINGS, JPEG_QUALITY
from paper_alexnet.data.sources import open_dataset, parse_spec
from paper_alexnet.cli import HelpFormatter
from reproduce.common.args import (
    Exit,
    add_data_flag,
    add_reading_flags,
    add_workers_flag,
    check_workers,
    exit_code,
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.prepare",
        formatter_class=HelpFormatter,
        description="Decode every image once, cut it to the paper's 256x256 (§2) and write it with its label "
        "into one memory-mapped store, with the training set's mean image (§2) and RGB PCA (§4.1).",
    )
    add_data_flag(parser)
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="the store folder (new, or one to continue)"
    )
    parser.add_argument(
        "--format",
        choices=ENCODINGS,
        default="raw",
        help="raw: 196,608 bytes an image, read without decoding (small data sets); jpeg: about a "
        "tenth of that, decoded by the loader's workers (ImageNet: 252 GB raw)",
    )
    parser.add_argument(
        "--quality",
        type=int,
        default=JPEG_QUALITY,
        help="with --format jpeg: the JPEG quality, 1-100",
    )
    add_workers_flag(parser)
    add_reading_flags(parser)
    parser.add_argument(
        "--sort-imagenet-val",
        metavar="VAL_DIR",
        default=None,
        help="instead: move ILSVRC-2012's flat validation images into class folders",
    )
    parser.add_argument(
        "--devkit",
        metavar="PATH",
        default=None,
        help="with --sort-imagenet-val: ILSVRC2012_devkit_t12 (folder or .tar.gz) or "
        "LOC_val_solution.csv",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return exit_code(lambda: run(args))
    except KeyboardInterrupt:
        print(
            "\ninterrupted: what was written is kept; run the same command again to continue",
            file=sys.stderr,
        )
        return Exit.SIGINT


def run(args) -> int:
    if args.sort_imagenet_val:
        if not args.devkit:
            raise DataError("--sort-imagenet-val needs --devkit PATH")
        sort_imagenet_val(args.sort_imagenet_val, args.devkit)
        return 0
    if not args.out:
        raise DataError(
            "give --out DIR for the store (and --data SPEC for what goes in it; see --help)"
        )
    check_workers(args.workers)
    if not 1 <= args.quality <= 100:
        raise DataError(f"--quality must be between 1 and 100, not {args.quality}")
    spec = parse_spec(args.data)
    if spec.kind == "store":
        raise DataError(f"{args.data} is already a store")
    dataset = (
        synthetic_source(spec)
        if spec.kind == "synthetic"
        else open_dataset(args.data, download=args.download, progress=not args.quiet)
    )
    for note in dataset.notes:
        print(note, file=sys.stderr)
    print(
        f"{args.data}: {len(dataset.classes)} classes, "
        f"{', '.join(f'{name} {len(split)}' for name, split in dataset.splits.items())} images -> {args.out}",
        file=sys.stderr,
    )
    prepare_store(
        args.data,
        dataset.classes,
        dataset.splits,
        args.out,
        imagenet_pca=dataset.imagenet_pca,
        workers=args.workers,
        strict=args.strict,
        progress=not args.quiet,
        encoding=args.format,
        quality=args.quality,
    )
    print(f"train from it with: python -m reproduce.train --data store:{args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
