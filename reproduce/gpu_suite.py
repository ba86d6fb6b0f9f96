"""``python -m reproduce.gpu_suite --out DIR`` (also ``python -m reproduce.bench --suite gpu --out DIR``): the
one command that proves the GPU path.

It runs, on the first CUDA GPU: the tests marked ``cuda`` (tests/test_cuda.py), the model bench with bf16
autocast and channels-last against a bf16 matrix-multiply peak, ``reproduce.train`` for one epoch from a
JPEG store, the data bench, and the paper and torchvision nets compiled; then writes DIR/report.md (the
figures, and each of the GPU path's targets with its measured value) and DIR/report.csv (every row). Within 8
minutes (``--budget-min``): a section that would start after them is not run, and the report says so.

PAPER_ALEXNET_TEST_DEVICE=cpu runs it on the CPU: a dry run of the suite's own code (the tests do this).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import List

import torch

import paper_alexnet
from paper_alexnet.atomic import atomic_write
from paper_alexnet.cli import HelpFormatter
from reproduce import bench
from reproduce.args import UsageError, as_program, exit_code, write_csv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = (  # the GPU path's: (what, how it is read from the rows, at least, at most)
    (
        "paper net training img/s vs torchvision's, same run (bf16, channels-last)",
        "vs_torchvision",
        0.95,
        None,
    ),
    ("two towers on one GPU vs the grouped net, training img/s", "towers_vs_grouped", 0.95, None),
    (
        "reproduce.train from a JPEG store vs the bench's synthetic-input rate",
        "train_vs_bench",
        0.90,
        None,
    ),
    (
        "paper net training img/s on this GPU (goal on one H100/H200)",
        "paper_train_images_per_s",
        10000.0,
        None,
    ),
    ("minutes the whole suite took, on one GPU", "minutes", None, 8.0),
)


COMPILED = (
    "paper",
    "torchvision",
)  # the nets timed under torch.compile: does compiling pay, and is the ratio kept?
BUDGET_MIN = 8.0  # the whole suite within 8 minutes on one GPU


def suite_device() -> str:
    """The device the suite runs on; a UsageError (one line, exit 2) where there is no GPU."""
    device = os.environ.get("PAPER_ALEXNET_TEST_DEVICE", "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            "the GPU suite needs a CUDA GPU, and none is visible here (torch.cuda.is_available() is "
            "False); on a CPU: python -m reproduce.bench"
        )
    return device


def _tests(device: str, out: str, select: str) -> dict:
    env = dict(os.environ, PAPER_ALEXNET_TEST_DEVICE=device)
    command = (
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            "cuda",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",  # one GPU: the CUDA tests one after another, not in workers (where pytest-xdist is)
            os.path.join(ROOT, "tests", "test_cuda.py"),
        ]
        + (["-k", select] if select else [])
    )
    start = time.perf_counter()
    log = os.path.join(out, "cuda-tests.txt")
    with open(
        log, "w", encoding="utf-8"
    ) as handle:  # as it goes: a run cut short keeps what it printed
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    with open(log, encoding="utf-8") as handle:
        lines = [line for line in handle.read().strip().splitlines() if line.strip()]
    return {
        "section": "tests",
        "what": lines[-1].strip("= ") if lines else "no output",
        "exit_code": done.returncode,
        "seconds": time.perf_counter() - start,
    }


def _train_from_store(args: argparse.Namespace, device: str, tmp: str) -> dict:
    """One epoch of reproduce.train from a JPEG store of the synthetic set: its img/s and data wait."""
    images = max(4 * args.batch_size, 64)
    store, run = os.path.join(tmp, "store"), os.path.join(tmp, "run")
    env = dict(os.environ, PAPER_ALEXNET_CACHE=os.path.join(tmp, "cache"))
    spec = f"synthetic?classes=10&train={images}&val={args.batch_size}"
    for command in (
        [
            "reproduce.prepare",
            "--data",
            spec,
            "--out",
            store,
            "--format",
            "jpeg",
            "--quiet",
            "--workers",
            str(args.workers),
        ],
        [
            "reproduce.train",
            "--data",
            f"store:{store}",
            "--epochs",
            "1",
            "-b",
            str(args.batch_size),
            "--device",
            device,
            "--workers",
            str(args.workers),
            "--quiet",
            "--out",
            run,
            "--on-stall",
            "warn",
        ]
        + (["--amp", "--channels-last"] if device.startswith("cuda") else []),
    ):
        done = subprocess.run(
            [sys.executable, "-m", *command], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if done.returncode:
            return {
                "section": "train",
                "what": f"{command[0]} failed ({done.returncode}): "
                f"{done.stderr.strip().splitlines()[-1:]}",
            }
    with open(os.path.join(run, "metrics.csv"), newline="") as handle:
        row = next(csv.DictReader(handle))
    return {
        "section": "train",
        "what": f"reproduce.train from a JPEG store, 1 epoch of {images} images, "
        f"{args.workers} workers",
        "train_images_per_s": float(row["images_per_s"]),
        "data_wait_s": float(row["data_wait_s"]),
        "seconds": float(row["seconds"]),
    }


def _targets(rows: List[dict], minutes: float) -> List[dict]:
    models = {(r["what"], r.get("compiled")): r for r in rows if r.get("section") == "models"}
    paper, towers = models.get(("paper", False), {}), models.get(("paper two-tower", False), {})
    train = next((r for r in rows if r.get("section") == "train" and "train_images_per_s" in r), {})
    value = {
        "vs_torchvision": paper.get("vs_torchvision"),
        "towers_vs_grouped": (
            towers["train_images_per_s"] / paper["train_images_per_s"] if towers and paper else None
        ),
        "train_vs_bench": (
            train["train_images_per_s"] / paper["train_images_per_s"] if train and paper else None
        ),
        "paper_train_images_per_s": max(
            (r["train_images_per_s"] for (what, _), r in models.items() if what == "paper"),
            default=None,
        ),
        "minutes": minutes,
    }

    def met(measured, low, high):
        if measured is None:
            return None
        return (low is None or measured >= low) and (high is None or measured <= high)

    return [
        {
            "target": what,
            "measured": value[key],
            "at_least": low,
            "at_most": high,
            "met": met(value[key], low, high),
        }
        for what, key, low, high in TARGETS
    ]


def _markdown(rows: List[dict], columns: List[str]) -> List[str]:
    def cell(value):
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return lines


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.gpu_suite",
        formatter_class=HelpFormatter,
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--out", default=None, metavar="DIR", help="the report's folder (required)")
    parser.add_argument(
        "--budget-min",
        type=float,
        default=BUDGET_MIN,
        metavar="MIN",
        help="minutes after which no further section starts (it is listed as not run)",
    )
    parser.add_argument(
        "--tests",
        "--suite-tests",
        default="",
        metavar="EXPR",
        help="only the CUDA tests pytest -k EXPR selects (default: all)",
    )
    bench.add_measure_flags(parser, "128, §5's")
    return parser


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    return exit_code(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    """Check the flags and that there is a GPU, then run the suite (no GPU: one line, exit 2, nothing written)."""
    if args.budget_min < 0:
        raise UsageError(f"--budget-min must be 0 or more minutes, not {args.budget_min:g}")
    args.device = suite_device()
    args.batch_size = 128 if args.batch_size is None else args.batch_size
    bench.check(args)
    return run_suite(args)


def run_suite(args: argparse.Namespace) -> int:
    """The whole suite into ``args.out``, with reproduce.bench's sections."""
    device = args.device
    if not args.out:
        raise UsageError("the GPU suite writes its report into a folder: give --out DIR")
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    rows = [_tests(device, args.out, args.tests)]
    print(f"tests: {rows[0]['what']}", file=sys.stderr)
    cuda = device.startswith("cuda")

    def models(compiled: bool, only=None):
        settings = argparse.Namespace(
            **{
                **vars(args),
                "device": device,
                "amp": cuda,
                "channels_last": True,
                "compile": compiled,
            }
        )
        return [dict(r, compiled=compiled) for r in bench.bench_models(settings, only=only)]

    def train():
        with tempfile.TemporaryDirectory() as tmp:
            return [_train_from_store(args, device, tmp)]

    # the targets' figures first; what costs most and decides least (compiling) last, and skipped with a row
    # that says so once the budget is spent, so that the command ends in about its minutes
    sections = [
        ("models, eager", lambda: models(False)),
        ("train from a store", train),
        ("data", lambda: bench.bench_data(argparse.Namespace(**{**vars(args), "device": device}))),
    ]
    if cuda:  # a CPU dry run: eager only
        sections.append(("models, compiled", lambda: models(True, only=COMPILED)))
    report(
        args, rows, start, final=False
    )  # after every section: a run cut short keeps what finished
    for name, section in sections:
        spent = (time.perf_counter() - start) / 60
        if spent >= args.budget_min:
            rows.append(
                {
                    "section": "skipped",
                    "what": f"{name}: not run, the suite's {args.budget_min:g} minutes "
                    f"were spent ({spent:.1f}); --budget-min raises it",
                }
            )
            print(f"skipped {rows[-1]['what']}", file=sys.stderr)
            continue
        print(f"{name} ...", file=sys.stderr)
        rows += section()
        report(args, rows, start, final=False)
    lines, minutes = report(args, rows, start, final=True)
    print("\n".join(lines))
    print(
        f"wrote {args.out}/report.md, report.csv, targets.json, cuda-tests.txt ({minutes:.1f} minutes)",
        file=sys.stderr,
    )
    return 0 if rows[0]["exit_code"] == 0 else 1


def machine() -> str:
    """The device, its driver, and the versions the figures were measured with."""
    if not torch.cuda.is_available():
        return f"{platform.processor() or 'CPU'} (no GPU: a dry run); torch {torch.__version__}"
    try:
        driver = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            .stdout.split("\n")[0]
            .strip()
        )
    except (OSError, subprocess.SubprocessError):
        driver = ""
    return (
        f"{torch.cuda.get_device_name(0)}, driver {driver or 'unknown'}; torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    )


def report(args: argparse.Namespace, rows: List[dict], start: float, final: bool):
    """report.md, report.csv and targets.json from the rows so far (``final``: the suite has ended)."""
    minutes = (time.perf_counter() - start) / 60
    targets = _targets(rows, minutes if final else None)
    lines = [
        "# The GPU path" + ("" if final else " (still running: the sections so far)"),
        "",
        f"On {machine()}; paper_alexnet {paper_alexnet.__version__}, torchvision "
        f"{_torchvision_version()}, Python {platform.python_version()}.",
        "",
        f"`python -m reproduce.gpu_suite --out {args.out}`, {minutes:.1f} minutes so far"
        if not final
        else f"`python -m reproduce.gpu_suite --out {args.out}`, {minutes:.1f} minutes; batch "
        f"{args.batch_size}, {args.repeats} repetitions.",
        "",
        "## Tests (cuda marker)",
        "",
        f"{rows[0]['what']} (exit code {rows[0]['exit_code']}; cuda-tests.txt has the output)",
        "",
        "## Targets",
        "",
    ] + _markdown(targets, ["target", "measured", "at_least", "at_most", "met"])
    lines += ["", "## Models (bf16 autocast, channels-last)", ""] + _markdown(
        [r for r in rows if r.get("section") == "models"],
        [
            "what",
            "compiled",
            "train_images_per_s",
            "infer_images_per_s",
            "utilisation",
            "vs_torchvision",
            "train_memory_mb",
        ],
    )
    lines += ["", "## Data and training from a store", ""] + _markdown(
        [r for r in rows if r.get("section") in ("data", "train")],
        ["what", "images_per_s", "ratio", "train_images_per_s", "data_wait_s"],
    )
    skipped = [r["what"] for r in rows if r.get("section") == "skipped"]
    if skipped:
        lines += ["", "## Not run", ""] + [f"- {what}" for what in skipped]
    with atomic_write(os.path.join(args.out, "report.md")) as handle:
        handle.write("\n".join(lines) + "\n")
    write_csv(rows, os.path.join(args.out, "report.csv"), say=False)
    with atomic_write(os.path.join(args.out, "targets.json")) as handle:
        json.dump(targets, handle, indent=1)
    return lines, minutes


def _torchvision_version() -> str:
    try:
        import torchvision

        return torchvision.__version__
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(as_program(main, keep_memory=bench.keeps_memory(get_args_parser())))
