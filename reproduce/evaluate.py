"""Top-1 / top-5 error (§6) of a checkpoint, on the centre crop and the ten crops (§4.1).

    python -m reproduce.evaluate --checkpoint runs/paper-synthetic/best.pt --ten-crop
    python -m reproduce.evaluate --all runs/finetune --data cifar10:data --csv all.csv
    python -m reproduce.evaluate --checkpoint runs/mine/best.pt --out runs/mine/val   # per class too

It also prints the mean per-class error and the weakest classes; with ``--out DIR`` it writes where the
net fails class by class: per_class.csv, confusion.csv, confusion.png, mistakes.png and result.json
(reproduce/common/class_report.py).

The data spec defaults to the one the checkpoint was trained on; the mean image
is the one the net was trained with (saved in the checkpoint; recomputed from
the data's training split for checkpoints that lack it).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from typing import Optional, Sequence

from paper_alexnet import checkpoint, shared
from paper_alexnet.cli import HelpFormatter, percent, plural
from paper_alexnet.engine import evaluate
from paper_alexnet.metrics import per_class
from reproduce.common.args import (
    add_list_weights_flag,
    weights_table,
    add_checkpoint_flag,
    named_weights,
    as_program,
    UsageError,
    add_data_flag,
    add_decode_flag,
    add_strict_flag,
    add_workers_flag,
    check_workers,
    exit_code,
    reader_processes,
    say_skipped,
    write_csv,
)
from reproduce.common import class_report
from reproduce.common.placement import add_device_arguments
from reproduce.training.run_writer import write_json
from reproduce.common.restore import checkpoint_data, restore, run_record


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.evaluate",
        formatter_class=HelpFormatter,
        description="Evaluate checkpoints: top-1/top-5 error on centre and ten crops.",
        epilog=weights_table(),
    )
    add_checkpoint_flag(parser, required=False)
    add_list_weights_flag(parser)
    parser.add_argument(
        "--all",
        default=None,
        metavar="DIR",
        help="instead: every *.pt in DIR and every shared folder in it (reproduce.export), one CSV row each",
    )
    parser.add_argument(
        "--info",
        action="store_true",
        help="print what the checkpoint (or shared folder) is, as torchvision's weights enums say it: "
        "categories, transforms, parameters, multiply-adds, measured metrics; evaluate nothing",
    )
    add_data_flag(parser, from_checkpoint=True)
    parser.add_argument(
        "--split", default="val", help="which split: val, or test where the data set has one"
    )
    parser.add_argument(
        "--ten-crop",
        action="store_true",
        help="also the ten-crop error (§4.1), and the flip-averaged one (two of the ten crops)",
    )
    parser.add_argument(
        "--flip",
        action="store_true",
        help="also the error of the centre crop's and its reflection's softmax averaged (not §4.1: "
        "twice the centre crop's work, a fifth of ten crops')",
    )
    parser.add_argument("-b", "--batch-size", type=int, default=128, help="images per batch")
    add_workers_flag(parser, inference=True)
    add_decode_flag(parser)
    add_strict_flag(parser)
    parser.add_argument("--csv", default=None, metavar="PATH", help="write the results as CSV")
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="also write per_class.csv, confusion.csv/.png, mistakes.png and result.json here "
        "(with --all: one subfolder per checkpoint)",
    )
    parser.add_argument(
        "--mistakes",
        type=int,
        default=16,
        metavar="N",
        help="with --out: how many of the most confident errors mistakes.png shows",
    )
    add_device_arguments(parser)
    return parser


def evaluate_checkpoint(path: str, args, cache: dict, said: set, out: Optional[str] = None) -> dict:
    """One row of the table: what was scored (checkpoint, data, split, images) and its errors (fractions);
    with ``out``, the per-class files there too, and the row gains their summary."""
    ckpt = checkpoint.load(path)
    dataset = checkpoint_data(ckpt, path, args.data, cache)
    net = restore(path, args, dataset, ckpt)
    if net.placement.note not in said:  # once, when the first net is in place
        said.add(net.placement.note)
        print(net.placement.note, file=sys.stderr)
    device = net.placement.first
    split = dataset.split(args.split)
    row = {
        "checkpoint": path,
        "epoch": ckpt.epoch,
        "variant": ckpt.variant,
        "data": dataset.spec,
        "split": args.split,
        "images": len(split),
    }

    def score(ten_crop: bool, flip: bool = False) -> dict:
        return evaluate(
            net.model,
            split,
            net.transform,
            device=device,
            batch_size=args.batch_size,
            ten_crop=ten_crop,
            flip=flip,
            workers=reader_processes(args.workers, device),
            decode=args.decode,
            strict=args.strict,
            progress=ten_crop or flip,
            per_image=True,  # the per-class summary, always; the files with --out
        )

    # reading, cutting and the net: what the bench's features section times
    started = time.perf_counter()
    centre = score(ten_crop=False)
    seconds = time.perf_counter() - started
    say_skipped(centre["skipped"], f"{dataset.spec} {args.split}")
    row.update(top1_err=centre["top1_err"], top5_err=centre["top5_err"], loss=centre["loss"])
    row["images_per_s"] = round(len(split) / max(seconds, 1e-9), 1)
    if args.ten_crop or args.flip:  # ten crops hold the flip's two
        ten = score(ten_crop=args.ten_crop, flip=not args.ten_crop)
        row.update(flip_top1_err=ten["flip_top1_err"], flip_top5_err=ten["flip_top5_err"])
    if args.ten_crop:
        row.update(ten_crop_top1_err=ten["top1_err"], ten_crop_top5_err=ten["top5_err"])
    if out is not None:
        found = class_report.write(
            out,
            net.classes,
            centre["predictions"],
            ten["predictions"] if args.ten_crop else None,
            split=split,
            crop=net.transform.augment.crop,
            mistakes=args.mistakes,
        )
    else:
        found = class_report.summary(
            per_class(centre["predictions"], len(net.classes)), net.classes
        )
    row.update(
        mean_class_top1_err=found["mean_class_top1_err"],
        mean_class_acc=found["mean_class_acc"],
        weakest=found["weakest"],
    )
    if out is not None:
        write_json(os.path.join(out, "result.json"), row)
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    return exit_code(lambda: run(named_weights(args)))


def run(args) -> int:
    if bool(args.checkpoint) == bool(args.all):
        raise UsageError("give --checkpoint PATH or --all DIR")
    if args.info:
        if not args.checkpoint:
            raise UsageError("--info describes one --checkpoint")
        print(info(args.checkpoint))
        return 0
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {args.batch_size}")
    check_workers(args.workers)
    paths = [args.checkpoint] if args.checkpoint else checkpoints_in(args.all)
    if not paths:
        raise UsageError(f"no *.pt files or shared folders in {args.all}")
    cache: dict = {}
    said: set = set()
    rows = []
    if args.mistakes < 0:
        raise UsageError(f"--mistakes must be 0 or more, not {args.mistakes}")
    for path in paths:
        where = out_folder(args, path)
        row = evaluate_checkpoint(path, args, cache, said, where)
        rows.append(row)
        line = (
            f"{path} on {row['data']} {row['split']} ({plural(row['images'], 'image')}): "
            f"top-1 {percent(row['top1_err'], 2)} top-5 {percent(row['top5_err'], 2)}"
        )
        if args.ten_crop or args.flip:
            line += (
                f" | with its reflection: top-1 {percent(row['flip_top1_err'], 2)} "
                f"top-5 {percent(row['flip_top5_err'], 2)}"
            )
        if args.ten_crop:
            line += (
                f" | ten crops: top-1 {percent(row['ten_crop_top1_err'], 2)} "
                f"top-5 {percent(row['ten_crop_top5_err'], 2)}"
            )
        print(line)
        print(f"  {class_report.line(row)}" + (f"; files in {where}" if where else ""))
        print(f"  centre crops at {row['images_per_s']:,.1f} img/s", file=sys.stderr)
    if args.csv:
        write_csv([{k: v for k, v in row.items() if k != "weakest"} for row in rows], args.csv)
    return 0


def checkpoints_in(folder: str) -> list:
    """--all: the *.pt files of ``folder`` and its shared folders (a subfolder with a shared config.json)."""
    files = glob.glob(os.path.join(folder, "*.pt"))
    shared_folders = [
        path
        for path in glob.glob(os.path.join(folder, "*", ""))
        if os.path.isfile(os.path.join(path, shared.CONFIG))
    ]
    return sorted(files) + sorted(path.rstrip(os.sep) for path in shared_folders)


def info(path: str) -> str:
    """--info: shared.metadata of the checkpoint or folder, with the metrics its run measured."""
    ckpt = checkpoint.load(path)
    measured, command = run_record(path, ckpt.epoch)
    meta = shared.metadata(ckpt, measured)
    classes = meta["categories"]
    lines = [
        f"{path}: {meta['variant']}, {plural(len(classes), 'class', 'classes')}: "
        + ", ".join(map(str, classes[:8]))
        + (", ..." if len(classes) > 8 else ""),
        f"  parameters {meta['num_params']:,}; multiply-adds {meta['multiply_adds']:,} an image",
    ]
    t = meta["transforms"]
    lines.append(
        f"  transforms: {t['resize_means']}; centre {t['crop']}x{t['crop']} crop; {t['mean_means']}"
        + (f"; times {t['scale']:.4g}" if t["scale"] != 1.0 else "")
    )
    lines.append(
        f"  data: {meta['data'] or 'n/a'}"
        + (f"; converted from {meta['origin'].get('source')}" if meta["origin"] else "")
    )
    if meta["metrics"]:
        lines.append(
            "  measured: "
            + ", ".join(
                f"{k} {percent(v, 2)}" if k.endswith("err") else f"{k} {v}"
                for k, v in meta["metrics"].items()
            )
        )
    else:
        lines.append("  measured: nothing recorded beside it (evaluate it)")
    if command:
        lines.append(f"  made by: {command}")
    return "\n".join(lines)


def out_folder(args, path: str) -> Optional[str]:
    """Where --out puts a checkpoint's per-class files: --out itself, or with --all its subfolder named after
    the checkpoint's file."""
    if args.out is None:
        return None
    name = os.path.basename(path)
    return (
        os.path.join(args.out, name[: -len(".pt")] if name.endswith(".pt") else name)
        if args.all
        else args.out
    )


if __name__ == "__main__":
    sys.exit(as_program(main))
