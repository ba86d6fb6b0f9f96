"""Write a data set once into the fast store (§2: 256x256), or sort ImageNet's validation folder.

    python -m reproduce.prepare --data folder:/data/fruit --out stores/fruit
    python -m reproduce.prepare --data imagenet:/data/ilsvrc2012 --out stores/imagenet
    python -m reproduce.prepare --data imagenet:/data/ilsvrc2012 --out /shared/imagenet --shard 2/4
    python -m reproduce.prepare --sort-imagenet-val /data/ilsvrc2012/val --devkit ILSVRC2012_devkit_t12.tar.gz

``imagenet:DIR`` may hold the three archives as downloaded (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar,
ILSVRC2012_devkit_t12.tar.gz): they are read in place. Then train from the store with ``--data store:DIR``.
Interrupted, the same command continues where it stopped; run on a finished store, it does nothing. With
``--shard K/N`` on N processes or machines sharing the store's filesystem, each writes its part, and the
last to finish completes the store and its statistics.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from paper_alexnet.data import DataError, prepare_store, synthetic_source
from paper_alexnet.data.imagenet import sort_imagenet_val
from paper_alexnet.data.store import ENCODINGS, JPEG_QUALITY, parse_shard
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
        help="raw: 196,608 bytes an image, read without decoding; jpeg: about a tenth of that, decoded by "
        "the loader's workers (ILSVRC-2012: 262 GB raw, about 34 GB as JPEG)",
    )
    parser.add_argument(
        "--quality",
        type=int,
        default=JPEG_QUALITY,
        help="with --format jpeg: the JPEG quality, 1-100",
    )
    add_workers_flag(parser)
    parser.add_argument(
        "--shard",
        metavar="K/N",
        default=None,
        help="write only part K of N (1 <= K <= N), e.g. one part a machine or a job of an array; the "
        "last part to finish completes the store (statistics included)",
    )
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
    shard = parse_shard(args.shard)
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
    store = prepare_store(
        args.data,
        dataset.classes,
        dataset.splits,
        args.out,
        workers=args.workers,
        strict=args.strict,
        progress=not args.quiet,
        encoding=args.format,
        quality=args.quality,
        shard=shard,
    )
    if store is None:
        print(
            f"part {shard[0] + 1} of {shard[1]} is written; the last part to finish completes the store",
            file=sys.stderr,
        )
    else:
        print(
            f"train from it with: python -m reproduce.train --data store:{args.out}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
