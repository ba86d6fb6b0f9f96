"""Benchmarks that print figures (never asserted by tests): ``python -m reproduce.bench``.

Sections (``--only``):
  data   the loader's images/s into the training transform (§2/§4.1 crop, flip, mean image, PCA
         lighting), from a prepared store and from a folder of ImageNet-sized JPEGs, made in a
         temporary folder from the synthetic set.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Optional, Sequence

from PIL import Image

import torch

from paper_alexnet.data import Augment, PaperTransform, loader_throughput, open_dataset, prepare_store
from paper_alexnet.data.synthetic import render


def _jpeg_folder(root: str, count: int, size=(500, 375)) -> None:
    """ImageNet-like files: ``count`` JPEGs of about 500x375 (the ILSVRC average), 10 class folders."""
    for i in range(count):
        label = i % 10
        folder = os.path.join(root, "train", f"class{label}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(render(label, i)).resize(size, Image.BILINEAR).save(
            os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def bench_data(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        _jpeg_folder(tmp, args.images)
        jpeg = open_dataset(f"folder:{tmp}?val=0.1")
        made = time.perf_counter() - start
        print(f"made {args.images} JPEGs of 500x375 in {made:.1f} s", file=sys.stderr)
        stats = jpeg.stats(progress=False, report=lambda _: None)
        start = time.perf_counter()
        store = prepare_store(jpeg.spec, jpeg.classes, jpeg.splits, os.path.join(tmp, "store"),
                              workers=args.workers, progress=False, report=lambda _: None)
        prepare_s = time.perf_counter() - start
        total = sum(len(s) for s in jpeg.splits.values())
        rows.append({"section": "data", "what": f"prepare (decode + write store), {args.workers} workers",
                     "images_per_s": total / prepare_s})
        transform = PaperTransform(stats, Augment(crop=227), device=args.device)
        for name, split in (("store", store.splits["train"]), ("jpeg folder", jpeg.split("train"))):
            for workers in sorted({0, args.workers}):
                speed = loader_throughput(split, transform, args.batch_size, args.batches, workers, args.device)
                rows.append({"section": "data", "what": f"{name} -> train transform, {workers} workers",
                             "images_per_s": speed})
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reproduce.bench",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description="Measure throughput; prints a table, optionally writes CSV.")
    parser.add_argument("--only", choices=("data",), default="data", help="which section to run")
    parser.add_argument("--device", default="cpu", help="where the training transform runs")
    parser.add_argument("-b", "--batch-size", type=int, default=128, help="images per batch")
    parser.add_argument("--batches", type=int, default=6, help="timed batches per measurement (after 1 warm-up)")
    parser.add_argument("--images", type=int, default=1024, help="data: JPEGs to generate for the folder")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="loader processes")
    parser.add_argument("--csv", default=None, metavar="PATH", help="also write the rows as CSV")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    import pandas as pd

    threads = torch.get_num_threads()
    rows = bench_data(args)
    table = pd.DataFrame(rows)
    print(f"# torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs, device {args.device}, "
          f"batch {args.batch_size}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.0f}"))
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
