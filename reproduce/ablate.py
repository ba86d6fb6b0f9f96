"""Re-measure the paper's ablations, side by side with torchvision's net: ``python -m reproduce.ablate``.

Each cell of the grid is a (variant, seed) pair: the grid's run config (reproduce.train's flags, parsed
once) with the cell's settings, trained and evaluated by ``train.run`` in this process (or, with
``--jobs``, by a reproduce.train process each), with the same data and budget, into ``OUT/cells/``.
After every cell the tables are rewritten: ablation.csv (one row per cell),
summary.csv and summary.md (mean ± std per variant, the change against
``paper`` with its 95% interval over the seeds, the paper's reported change
beside it) and ablation.png; with tanh cells also figure1.png (§3.1). At the
end, with ``paper`` and ``torchvision`` in the grid, comparison.md.

A grid with a learning-rate search (``--lrs``; the relu-tanh grid has its
own, as Figure 1 chose each unit's rate) first trains each variant at each
rate on the first seed and writes lr_search.csv, then runs the seeds at each
variant's fastest rate.

Finished cells are skipped on a re-run and keep best.pt (their checkpoint.pt
is removed); a cell killed mid-way resumes from its checkpoint, so a killed
grid continues where it stopped.

A variant is ``NET[+switch...][@flag=value...]``: a net of reproduce.train
(paper, torchvision, one-tower, figure1, resnet18, ...), the net's switches
(no-lrn, pool-2x2, tanh, no-groups, no-dropout), the data switches no-pca,
no-flip and no-translate (§4.1), and reproduce.train flags for that cell alone, e.g.
``paper@lr=0.001@batch-size=64``, or a switch alone, e.g. ``paper@amp``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd
import torch

from paper_alexnet import checkpoint
from paper_alexnet.atomic import atomic_write
from paper_alexnet.cli import HelpFormatter, plural
from paper_alexnet.networks import get_network
from reproduce import train
from reproduce.ablation import tables
from reproduce.ablation.labels import Label
from reproduce.common.args import Exit, UsageError, as_program, exit_code
from reproduce.common.placement import pick_device, place
from reproduce.training import run_config
from reproduce.training.run_config import RunConfig

DATA_SWITCHES = {
    "no-pca": "no_pca",
    "no-flip": "no_flip",  # §4.1's augmentations, as train's settings
    "no-translate": "no_translate",
}


@dataclasses.dataclass(frozen=True)
class Grid:
    cells: Tuple[str, ...]
    # reproduce.train settings every cell of this grid gets (the user's flags win)
    settings: Dict[str, Any]
    what: str
    # a learning-rate search for each cell before its seeds (none: the flags' rate)
    lrs: Tuple[float, ...] = ()


GRIDS: Dict[str, Grid] = {
    "paper": Grid(
        (
            "paper",
            "torchvision",
            "paper+no-lrn",
            "paper+pool-2x2",
            "one-tower",
            "paper+no-pca",
            "paper+no-flip",
        ),
        {},
        "each of the paper's ablations (§3.2-§4.1) and torchvision's net against the paper net",
    ),
    # Figure 1 (§3.1): "no regularization of any kind" (no weight decay, no random crops, flips or lighting;
    # figure1 has no dropout), the paper's SGD at a constant rate, and "the learning rates for each network
    # were chosen independently to make training as fast as possible": a search, factor 2 apart.
    "relu-tanh": Grid(
        ("figure1", "figure1+tanh"),
        {
            "optimizer": "sgd",
            "wd": 0.0,
            "schedule": "none",
            "no_translate": True,
            "no_flip": True,
            "no_pca": True,
        },
        "§3.1, Figure 1: epochs and seconds to 25% training error, ReLU against tanh, each at the "
        "fastest rate of a search",
        lrs=(0.005, 0.01, 0.02, 0.04, 0.08),
    ),
    "baselines": Grid(
        ("paper", "torchvision", "vgg11", "googlenet", "resnet18"),
        {},
        "the paper net against later torchvision nets trained the same way",
    ),
    # each small-data tool alone at one setting, on a user's folder with its defaults (--recipe auto:
    # quick), against the defaults ("paper"); none of them is the paper's (docs/deviations.md)
    "small-data": Grid(
        (
            "paper",
            "paper@crop-scale=0.35",
            "paper@jitter=0.4",
            "paper@label-smoothing=0.1",
            "paper@mixup=0.2",
            "paper@cutmix=1",
            "paper@optimizer=adamw@wd=0.5",
            "paper@ema=0.99",
        ),
        {},
        "each small-data tool alone (random-resized crops, colour jitter, label smoothing, mixup, CutMix, "
        "AdamW, an average of the weights) against the defaults, on the data given",
    ),
    "hparams": Grid(
        ("paper",), {}, "sweeps of epochs, batch size and learning rate around the defaults"
    ),
}
# --smoke: the whole grid in a few minutes on a CPU (checks that everything runs; the numbers mean nothing).
# Two steps and one batch scored (with ten crops) a cell are what shows that it runs: more adds nothing to
# that, and the paper grid's seven cells at 32 and 16 images took twice as long.
SMOKE = {"limit_train": 16, "limit_val": 8, "epochs": 1, "batch_size": 8, "workers": 0}
SMOKE_NOTE = (
    "--smoke: every cell trained 1 epoch on 16 images and was scored on 8: these numbers show that each "
    "cell runs, and say nothing about the variants; their differences from the paper net, and the paper's "
    "deltas beside them, are noise here."
)
# train's flags that ablate sets for each cell
OWNED = (
    "variant",
    "seed",
    "out",
    "resume",
    "ten-crop",
)
# Every cell spends the grid's whole budget: a cell at chance is a result to compare, not a run to stop
# (reproduce.train's --on-stall; a user's own --on-stall comes later and wins).
CELL_SETTINGS = {"on_stall": "warn"}


@dataclasses.dataclass(frozen=True)
class Cell:
    label: str  # the variant as written in the grid
    seed: int
    folder: str  # OUT/cells/LABEL-seedN
    config: Optional[RunConfig] = (
        None  # its run: the grid's settings, the label's, the seed (None: only read)
    )

    @property
    def switches(self) -> str:
        label = Label.parse(self.label)
        return "+".join(label.switches + label.settings)

    @classmethod
    def read(cls, out: str, label: str, seed: int) -> "Cell":
        """A cell of the grid in ``out``, to read its results (visualize)."""
        return cls(label, seed, cell_folder(out, label, seed))


def cell_folder(out: str, label: str, seed: int) -> str:
    return os.path.join(out, "cells", f"{label.replace('/', '_')}-seed{seed}")


def make_cell(base: RunConfig, label: str, seed: int, out: str, ten_crop: bool) -> Cell:
    """``NET[+switch...][@flag=value...]`` on the grid's settings ``base``: one cell's settled run, checked."""
    parsed = Label.parse(label)
    fields = {
        "variant": "+".join([parsed.net] + [s for s in parsed.switches if s not in DATA_SWITCHES]),
        "seed": seed,
        "out": cell_folder(out, label, seed),
        "ten_crop": ten_crop,
        **{DATA_SWITCHES[s]: True for s in parsed.switches if s in DATA_SWITCHES},
    }
    for setting in parsed.settings:
        key, equals, value = setting.partition("=")
        if not key or key in OWNED:
            raise UsageError(
                f"variant {label!r}: "
                + (
                    f"--{key} is set by ablate"
                    if key
                    else "write a flag as @name=value, e.g. paper@lr=0.001"
                )
            )
        try:
            fields.update(run_config.from_label(key, value if equals else None))
        except UsageError as err:
            raise UsageError(f"variant {label!r}: {err}") from None
    config = run_config.change(base, **fields)
    config = dataclasses.replace(config, command=tuple(run_config.to_argv(config)))
    return Cell(label, seed, config.out, config)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.ablate",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
        description="Train and evaluate a grid of variants x seeds with reproduce.train, and tabulate the "
        "errors against the paper's reported deltas. Any other reproduce.train flag (--data, "
        "--epochs, -b, --lr, --recipe, --limit-train, --device, ...) applies to every cell.",
        epilog="grids: "
        + "; ".join(f"{name}: {', '.join(g.cells)} ({g.what})" for name, g in GRIDS.items()),
    )
    parser.add_argument("--grid", choices=tuple(GRIDS), default="paper", help="which built-in grid")
    parser.add_argument(
        "--variants",
        default=None,
        metavar="A,B,...",
        help="instead of the grid's variants (the grid's flags still apply): "
        "NET[+switch...][@flag=value...], e.g. paper,paper+no-lrn,paper@lr=0.001",
    )
    parser.add_argument(
        "--seeds", default="0", metavar="S,S,...", help="seeds; each variant runs once per seed"
    )
    parser.add_argument(
        "--lrs",
        default=None,
        metavar="LR,LR,...",
        help="search these learning rates for each variant first, on the first seed, each judged by "
        "its epochs (then seconds) to 25%% training error (Figure 1's measure); then run the "
        "seeds at each variant's fastest rate. Written to lr_search.csv. 'none': no search "
        "(default: the grid's: "
        + "; ".join(f"{n}: {','.join(f'{x:g}' for x in g.lrs)}" for n, g in GRIDS.items() if g.lrs)
        + ")",
    )
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="output folder (default: runs/ablate-<grid>)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny settings that run the whole grid in minutes on a CPU: "
        + " ".join(run_config.words(SMOKE, short=True)),
    )
    parser.add_argument(
        "--no-ten-crop", action="store_true", help="skip the ten-crop evaluation of each cell"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="cells trained at once, each a process of its own on its own device (one per GPU); 1: "
        "one at a time, in this process",
    )
    parser.add_argument(
        "--job-devices",
        default=None,
        metavar="D,D,...",
        help="with --jobs: each job's device (default: cuda:0 ... cuda:N-1); cpu,cpu runs two on "
        "the CPU. (train's --devices is the two towers' pair of one cell)",
    )
    return parser


def hparam_cells(base: RunConfig) -> Tuple[str, ...]:
    """Sweeps around the settled defaults: epochs and batch size halved and doubled, the learning rate
    divided and multiplied by about 3."""

    def number(x):
        return f"{x:g}"

    sweeps = (
        ("epochs", base.epochs, (max(1, base.epochs // 2), 2 * base.epochs)),
        ("batch-size", base.batch_size, (max(1, base.batch_size // 2), 2 * base.batch_size)),
        ("lr", base.lr, (base.lr * 0.3, base.lr * 3)),
    )
    # a value equal to the default would repeat the "paper" cell (e.g. half of 1 epoch)
    return (
        "paper",
        *(
            f"paper@{flag}={number(value)}"
            for flag, default, values in sweeps
            for value in values
            if value != default
        ),
    )


def grid_config(grid: Grid, words: Sequence[str], smoke: bool = False) -> RunConfig:
    """The settings every cell shares: the grid's (and --smoke's), then the user's reproduce.train flags
    ``words``, which win."""
    given = {
        **CELL_SETTINGS,
        **grid.settings,
        **(SMOKE if smoke else {}),
        **run_config.given(words),
    }
    return run_config.from_fields(given, words)


def finished(cell: Cell) -> bool:
    """Whether the cell has run to its end with these very settings; a cell of another grid or other settings
    in the same folder is an error, never silently reused."""
    marker = os.path.join(cell.folder, "cell.json")
    if not os.path.exists(marker):
        return False
    with open(marker, encoding="utf-8") as handle:
        saved = json.load(handle)
    record = saved.get("config")
    if record is None:  # a cell.json written before configs were kept: its argv
        record = run_config.as_record(run_config.from_words(saved.get("argv") or []))
    record = run_config.flat(record)
    # what may differ between a finished cell and the same cell asked for again: where and how it ran, not what
    compared = [name for name in run_config.FLAGS if name not in run_config.WHERE]
    changed = run_config.differences(record, cell.config, compared)
    if changed:
        raise UsageError(
            f"{cell.folder} was run with other flags ({'; '.join(changed)}); "
            f"give this grid another --out"
        )
    return True


def gather(cells: Sequence[Cell]) -> Tuple[Optional[pd.DataFrame], Dict[str, List[pd.DataFrame]]]:
    """The rows of the cells finished so far (None when there is none) and each cell label's metrics.csv."""
    rows, curves = [], {}
    for cell in cells:
        row = tables.cell_row(cell.folder, cell.label, cell.seed, cell.switches)
        if row is None:
            continue
        rows.append(row)
        metrics = os.path.join(cell.folder, "metrics.csv")
        if os.path.exists(metrics):
            curves.setdefault(cell.label, []).append(pd.read_csv(metrics))
    return (pd.DataFrame(rows, columns=list(tables.COLUMNS)) if rows else None), curves


def collect(
    cells: Sequence[Cell], out: str, title: str, note: str = "", command: str = ""
) -> Optional[pd.DataFrame]:
    """Rewrite ablation.csv, summary.csv, summary.md and ablation.png (and figure1.png when tanh cells are in the
    grid) from the cells finished so far."""
    frame, curves = gather(cells)
    if frame is None:
        return None
    summary = tables.summarize(frame)
    for name, text in (
        ("ablation.csv", tables.to_csv(frame)),
        ("summary.csv", tables.to_csv(summary)),
        ("summary.md", tables.markdown(summary, title, note, frame, command)),
    ):
        with atomic_write(os.path.join(out, name), newline="") as handle:
            handle.write(text)
    tables.charts(
        summary, curves, os.path.join(out, "ablation.png"), os.path.join(out, "figure1.png"), title
    )
    return frame


def compare(
    frame: pd.DataFrame, base: RunConfig, out: str, title: str, command: str, smoke: bool = False
) -> Optional[str]:
    """comparison.md: the paper net beside torchvision's variant (both cells in the grid): parameters,
    multiply-adds, training img/s from the bench run now (synthetic input, the grid's batch and device) and in
    the grid's cells (with their data), and the errors on the same data and budget. None without both cells.
    Under --smoke the bench times one repetition (its numbers, like the cells', mean nothing there)."""
    from reproduce import bench

    nets = (tables.BASELINE, "torchvision")
    if not all((frame["cell"] == net).any() for net in nets):
        return None
    options = bench.get_args_parser().parse_args(
        ["-b", str(base.batch_size), "--device", str(pick_device(base.device))]
        + (["--repeats", "1"] if smoke else [])
    )
    print(
        f"timing the training step of {' and '.join(nets)} (reproduce.bench, batch {base.batch_size})",
        file=sys.stderr,
    )
    speeds = {row["what"]: row for row in bench.bench_models(options, only=nets)}
    text = tables.comparison(tables.summarize(frame), frame, speeds, options, title, command)
    with atomic_write(os.path.join(out, "comparison.md")) as handle:
        handle.write(text)
    return text


def search(cells: Sequence[Cell]) -> pd.DataFrame:
    """lr_search.csv's rows: each searched cell's learning rate and its epochs and seconds to 25% training
    error ("not reached" when it never got there in its epochs)."""
    rows = []
    for cell in cells:
        row = tables.cell_row(cell.folder, cell.label, cell.seed, cell.switches)
        if row is None:
            continue
        reached = row["status"] == "done" and not pd.isna(row["epochs_to_25"])
        label = Label.parse(cell.label)
        rows.append(
            {
                "cell": label.head,
                "activation": "tanh" if "tanh" in label.switches else "relu",
                "lr": row["lr"],
                "seed": cell.seed,
                "epochs_to_25": row["epochs_to_25"] if reached else tables.NOT_REACHED,
                "seconds_to_25": row["seconds_to_25"] if reached else tables.NOT_REACHED,
                "epochs": row["epochs"],
                "final_train_top1_err": row["train_top1_err"],
                "status": row["status"],
            }
        )
    return pd.DataFrame(rows, columns=list(tables.SEARCH_COLUMNS))


def open_cell(cell: Cell) -> bool:
    """Whether the cell resumes a killed run (a cell killed before its first epoch ended is started again)."""
    resume = os.path.exists(os.path.join(cell.folder, "checkpoint.pt"))
    if not resume and os.path.isdir(cell.folder):
        shutil.rmtree(cell.folder)  # killed before its first epoch ended: nothing to keep
    return resume


def close_cell(cell: Cell, code: int, resume: bool, seconds: float) -> None:
    """After train ended with ``code``: a finished cell (done, or stopped on a non-finite loss, a result too)
    gets cell.json (its config, and the train command that runs it alone) and keeps best.pt as weights only."""
    if not Exit.ended(code):
        return
    marker = {
        "status": "done" if code == Exit.OK else "diverged",
        "exit_code": int(code),
        "resumed": resume,
        "wall_seconds": seconds,
        "argv": list(cell.config.command),
        "config": run_config.as_record(cell.config),
    }
    with atomic_write(os.path.join(cell.folder, "cell.json")) as handle:
        json.dump(marker, handle, indent=1)
    # a finished cell keeps best.pt's weights and statistics, for evaluate, predict and visualize: not the
    # optimiser's state, nor checkpoint.pt, which only serve to resume (0.65 GB each for the paper net with
    # Adam, against 0.23 GB of weights)
    best = os.path.join(cell.folder, "best.pt")
    if os.path.exists(best):
        checkpoint.save(best, checkpoint.load(best).weights_only())
    if os.path.exists(os.path.join(cell.folder, "checkpoint.pt")):
        os.remove(os.path.join(cell.folder, "checkpoint.pt"))


def run_cell(cell: Cell) -> int:
    """Train one cell in this process (resuming a killed one); write cell.json when it has ended. Returns
    train's exit status."""
    resume = open_cell(cell)
    start = time.perf_counter()
    code = exit_code(
        lambda: train.run(dataclasses.replace(cell.config, resume="" if resume else None))
    )
    close_cell(cell, code, resume, time.perf_counter() - start)
    return code


def job_devices(jobs: int, given: Optional[str]) -> List[str]:
    """One device per job: ``given`` (D,D,...), or cuda:0..cuda:jobs-1; more jobs than GPUs is a UsageError."""
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    devices = (
        [d.strip() for d in given.split(",") if d.strip()]
        if given
        else [f"cuda:{k}" for k in range(jobs)]
    )
    if len(devices) != jobs:
        raise UsageError(
            f"--job-devices names {plural(len(devices), 'device')} for --jobs {jobs}: give one per job"
        )
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = sum(1 for d in devices if d.startswith("cuda"))
    if not given and wanted > visible:
        raise UsageError(
            f"--jobs {jobs} runs one cell per GPU and {plural(visible, 'GPU')} "
            f"{'is' if visible == 1 else 'are'} visible here: lower --jobs, or give --job-devices "
            f"(cpu,cpu runs two cells on the CPU)"
        )
    for device in devices:
        pick_device(device)  # a device that is not here: one line, before any work
    return devices


def run_jobs(
    todo: List[Tuple[int, Cell]], total: int, devices: List[str], after_each: Callable[[], None]
) -> int:
    """Train the cells ``todo`` (numbered of ``total``) as processes of their own, one per device at a time;
    each one's output goes to its folder's train.log. A SIGINT/SIGTERM reaches every running cell, which
    checkpoints at its step (reproduce.train); the grid then stops with that exit code."""
    pending, running, failed, stopped, devices = list(todo), {}, 0, 0, list(devices)
    # cells on the CPU share its cores: each gets its share of threads, or every one spins on all the cores and
    # they run many times slower together than one after another (a user's OMP_NUM_THREADS is kept)
    on_cpu = sum(1 for device in devices if device == "cpu")
    threads = str(max(1, (os.cpu_count() or 1) // max(1, on_cpu)))

    def forward(signum, frame):
        nonlocal stopped
        stopped = stopped or 128 + signum
        for process in list(running):
            if process.poll() is None:
                process.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while running or (pending and not failed and not stopped):
            while pending and devices and not failed and not stopped:
                k, cell = pending.pop(0)
                device = devices.pop(0)
                resume = open_cell(cell)
                os.makedirs(cell.folder, exist_ok=True)
                log = open(os.path.join(cell.folder, "train.log"), "a", encoding="utf-8")
                env = (
                    os.environ
                    if device != "cpu" or "OMP_NUM_THREADS" in os.environ
                    else dict(os.environ, OMP_NUM_THREADS=threads)
                )
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "reproduce.train",
                        *cell.config.command,
                        "--device",
                        device,
                        *(["--resume"] if resume else []),
                    ],
                    stdout=log,
                    stderr=log,
                    env=env,
                )
                running[process] = (k, cell, device, resume, time.perf_counter(), log)
                print(
                    f"[{k}/{total}] {cell.label}, seed {cell.seed}: started on {device} "
                    f"(log: {os.path.join(cell.folder, 'train.log')})",
                    file=sys.stderr,
                )
            time.sleep(0.2)
            for process in [p for p in running if p.poll() is not None]:
                k, cell, device, resume, start, log = running.pop(process)
                log.close()
                devices.append(device)
                code = process.returncode
                close_cell(cell, code, resume, time.perf_counter() - start)
                print(
                    f"[{k}/{total}] {cell.label}, seed {cell.seed}: ended on {device} with exit code {code}",
                    file=sys.stderr,
                )
                if Exit.ended(code):
                    after_each()
                elif not Exit.interrupted(code):
                    failed = failed or code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return _ended(
        stopped or failed,
        "the running ones resume at their step" if stopped else "its train.log says why",
    )


def _ended(code: int, what: str) -> int:
    """How a grid that stopped early says so; ``what``: about the cell(s) that stopped it."""
    if Exit.interrupted(code):
        print(
            f"interrupted: finished cells are kept, and {what}; the same command continues the grid",
            file=sys.stderr,
        )
    elif code:
        print(
            f"error: a cell stopped with exit code {code} ({what}); the finished cells are kept, the same "
            f"command continues",
            file=sys.stderr,
        )
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = get_args_parser().parse_known_args(argv)
    args.command = shlex.join(["python", "-m", "reproduce.ablate", *argv])
    try:
        return exit_code(lambda: run(args, rest))
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished cells are kept in {args.out}; the same command continues the grid",
            file=sys.stderr,
        )
        return Exit.SIGINT


def train_cells(
    cells: Sequence[Cell], devices: Optional[List[str]], after_each: Callable[[], None]
) -> int:
    """Train the cells not finished yet, one at a time in this process or as jobs on ``devices``; call
    ``after_each`` when a cell has ended. Returns 0, or the exit code that stopped the grid."""
    done = [finished(cell) for cell in cells]
    for k, (cell, skip) in enumerate(zip(cells, done), 1):
        if skip:
            print(
                f"[{k}/{len(cells)}] {cell.label}, seed {cell.seed}: finished earlier, skipped",
                file=sys.stderr,
            )
    todo = [(k, cell) for k, (cell, skip) in enumerate(zip(cells, done), 1) if not skip]
    if devices:
        return run_jobs(todo, len(cells), devices, after_each)
    for k, cell in todo:
        print(f"[{k}/{len(cells)}] {cell.label}, seed {cell.seed}", file=sys.stderr)
        code = run_cell(cell)
        if Exit.interrupted(code):  # the cell wrote a checkpoint at its step
            return _ended(code, "this one resumes at its step")
        if not Exit.ended(code):  # bad data or a bad flag would stop every other cell alike
            return _ended(code, f"cell {cell.label}, seed {cell.seed}")
        after_each()
    return 0


def parse_lrs(text: Optional[str], grid: Grid) -> Tuple[float, ...]:
    if text is None:
        return grid.lrs
    if text.strip() == "none":
        return ()
    try:
        lrs = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(
            f"--lrs takes learning rates separated by commas (or 'none'), not {text!r}"
        ) from None
    if len(lrs) < 2 or any(not lr > 0 for lr in lrs):
        raise UsageError(f"--lrs needs two or more positive learning rates to search, not {text!r}")
    return lrs


def describe(name: str, data: str, seeds: Sequence[int]) -> str:
    """The charts' and tables' title: the grid, the data and the seeds; the flags go under it in summary.md."""
    kind, _, where = data.partition(":")
    where = where.split("?")[0].rstrip("/")
    shown = f"{kind}:{os.path.basename(where)}" if where else kind
    return f"{name} grid on {shown}, {plural(len(seeds), 'seed')}"


def run(args: argparse.Namespace, rest: Sequence[str]) -> int:
    owned = [word for word in rest if word.startswith("--") and word[2:].split("=")[0] in OWNED]
    if owned:
        raise UsageError(
            f"{', '.join(owned)}: set by ablate for each cell (use --out DIR for the grid's folder)"
        )
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(
            f"--seeds takes integers separated by commas, not {args.seeds!r}"
        ) from None
    if not seeds:
        raise UsageError("--seeds needs at least one seed")
    grid = GRIDS[args.grid]
    lrs = parse_lrs(args.lrs, grid)
    base = grid_config(grid, rest, args.smoke)
    name = "custom" if args.variants else args.grid
    out = args.out = args.out or os.path.join("runs", f"ablate-{name}")
    if args.variants:
        labels = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    else:
        labels = hparam_cells(base) if args.grid == "hparams" else grid.cells
    if not labels:
        raise UsageError("--variants names no variant")
    if lrs and any(s.startswith("lr=") for label in labels for s in Label.parse(label).settings):
        raise UsageError(
            "a variant with its own @lr= cannot take part in a learning-rate search: drop the @lr, or "
            "give --lrs none"
        )
    if lrs and "lr" not in base.defaulted:
        raise UsageError(
            "--lr is what the search chooses: give the rates to try with --lrs, or --lrs none"
        )
    ten_crop = not args.no_ten_crop
    # every cell is made, and so checked, before the first one trains
    searched = [
        make_cell(base, f"{label}@lr={lr:g}", seeds[0], out, ten_crop)
        for label in labels
        for lr in lrs
    ]
    cells = [make_cell(base, label, seed, out, ten_crop) for label in labels for seed in seeds]
    devices = (
        job_devices(args.jobs, args.job_devices) if args.jobs != 1 or args.job_devices else None
    )
    if devices and base.device != "auto":
        raise UsageError("with --jobs, each job's device comes from --job-devices, not --device")
    for cell in searched or cells:
        place(cell.config, get_network(cell.config.variant))
    os.makedirs(out, exist_ok=True)
    title = describe(name, base.data, seeds)
    note = SMOKE_NOTE if args.smoke else ""
    if searched:
        print(
            f"learning-rate search: {plural(len(searched), 'cell')} ({plural(len(labels), 'variant')} x "
            f"{plural(len(lrs), 'rate')}: {', '.join(f'{lr:g}' for lr in lrs)}; seed {seeds[0]}) into {out}",
            file=sys.stderr,
        )
        path = os.path.join(out, "lr_search.csv")

        def write_search():
            with atomic_write(path, newline="") as handle:
                handle.write(tables.to_csv(search(searched)))

        code = train_cells(searched, devices, write_search)
        if code:
            return code
        write_search()
        chosen = tables.pick_rates(pd.read_csv(path), lrs)
        for label in labels:
            lr, why = chosen[Label.parse(label).head]
            print(f"{label}: lr {lr:g} ({why})", file=sys.stderr)
        cells = [
            make_cell(
                base, f"{label}@lr={chosen[Label.parse(label).head][0]:g}", seed, out, ten_crop
            )
            for label in labels
            for seed in seeds
        ]
    print(
        f"{plural(len(cells), 'cell')} ({plural(len(labels), 'variant')} x {plural(len(seeds), 'seed')}) "
        f"into {out}",
        file=sys.stderr,
    )
    code = train_cells(cells, devices, lambda: collect(cells, out, title, note, args.command))
    if code:
        return code
    frame = collect(cells, out, title, note, args.command)
    if frame is not None:
        print(tables.markdown(tables.summarize(frame), title, note, frame, args.command))
        compared = compare(frame, base, out, title, args.command, smoke=args.smoke)
        if compared:
            print(compared)
    print(
        f"wrote {os.path.join(out, 'ablation.csv')}, summary.csv, summary.md, ablation.png"
        + (", lr_search.csv" if searched else ""),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(as_program(main))  # the cells train in this process, as train runs
