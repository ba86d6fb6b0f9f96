"""Train an AlexNet as the paper did (§5), on any data set: ``python -m reproduce.train``.

With no arguments: the `paper` net on the built-in synthetic data, on the CPU
when there is no GPU, in a few minutes. Everything a run makes goes into
``--out``: config.json, metrics.csv (one row per epoch), checkpoint.pt (latest),
best.pt (lowest validation top-1 error), result.json (best.pt's errors, ten-crop
ones with ``--ten-crop``), curves.png, and TensorBoard events
with ``--tensorboard``. A killed run continues with ``--resume``; SIGTERM or
Ctrl-C stop it after the current step with a checkpoint of that step.

A run is six steps, in this order (``_run``): check what is resumed, open the
data, build the net, record the config, train the epochs, and finish.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import math
import os
import platform
import sys
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

import paper_alexnet
from paper_alexnet import ArchConfig, checkpoint, distributed, list_switches, list_variants, paper
from paper_alexnet.atomic import atomic_write
from paper_alexnet.checkpoint import Checkpoint, CheckpointError
from paper_alexnet.cli import HelpFormatter, command_line, for_file, percent, plural
from paper_alexnet.cpu_memory import keep_freed_memory
from paper_alexnet.data import Augment, DataSet, DataStats, PaperTransform, open_dataset
from paper_alexnet.data.loader import BatchLoader
from paper_alexnet.data.sources import parse_spec
from paper_alexnet.data.splits import Split
from paper_alexnet.engine import EpochProgress, NonFiniteLoss, evaluate, train_one_epoch
from paper_alexnet.networks import OTHER_NETS, Network, get_network
from paper_alexnet.optim import build_optimizer, build_schedule
from paper_alexnet.signals import StopOnSignal
from paper_alexnet.watch import LearningWatch, chance_margin
from paper_alexnet.weights import is_torchvision_state, load_pretrained
from reproduce import recipes
from reproduce.args import Exit, UsageError, add_data_arguments, add_reading_flags, augment_from_args, exit_code
from reproduce.figures import plot_curves
from reproduce.placement import Placement, add_device_arguments, build_placed, place

METRICS = ("epoch", "lr", "train_loss", "train_top1_err", "val_loss", "val_top1_err", "val_top5_err",
           "images_per_s", "seconds", "data_wait_s", "skipped_files")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.train", formatter_class=HelpFormatter, epilog=recipes.describe(),
        description="Train an AlexNet with the paper's recipe (§5) and data pipeline (§2, §4.1); "
                    "report top-1/top-5 error (§6).")
    parser.add_argument("--variant", default="paper",
                        help=f"network: {', '.join(list_variants())}, with switches "
                             f"({', '.join(list_switches())}) joined by '+', e.g. paper+no-lrn; or a net to "
                             f"compare with: {', '.join(OTHER_NETS)} (figure1+tanh)")
    parser.add_argument("--recipe", choices=("auto", *recipes.RECIPES), default="auto",
                        help="how the net starts and learns (the tables below); auto: the data kind's")
    data = add_data_arguments(parser)
    add_reading_flags(data)
    add_device_arguments(parser)
    opt = parser.add_argument_group("optimisation (§5)")
    opt.add_argument("--epochs", type=int, default=None, help="passes over the training set (default: the data "
                                                              "kind's, below)")
    opt.add_argument("-b", "--batch-size", type=int, default=None, help="images per step (default: the data kind's)")
    opt.add_argument("--optimizer", choices=tuple(recipes.OPTIMIZER_LR), default=None,
                     help="sgd is the paper's exact rule (PaperSGD) (default: the recipe's)")
    opt.add_argument("--lr", type=float, default=None,
                     help="learning rate (default: the recipe's; with another --optimizer: "
                          + ", ".join(f"{k} {v:g}" for k, v in recipes.OPTIMIZER_LR.items()) + ")")
    opt.add_argument("--momentum", type=float, default=paper.MOMENTUM, help="SGD momentum (§5)")
    opt.add_argument("--wd", type=float, default=paper.WEIGHT_DECAY, help="weight decay (§5: inside the velocity)")
    opt.add_argument("--schedule", choices=("plateau", "step", "cosine", "none"), default=None,
                     help="plateau: divide by 10 when val error stops improving, at most 3 times (§5), never while "
                          "it is still at chance; cosine: from --lr to zero over the epochs (default: the recipe's)")
    opt.add_argument("--patience", type=int, default=1, help="plateau: epochs without a new best before a drop")
    opt.add_argument("--step-size", type=int, default=30, help="step: epochs between drops by 10")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--out", default=None, metavar="DIR", help="output folder (default: runs/<variant>-<data>)")
    run_group.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                           help="continue from a checkpoint (default: DIR/checkpoint.pt), at the step it was "
                                "written")
    run_group.add_argument("--on-stall", choices=("stop", "warn"), default=None,
                           help="a run whose loss sits at ln(classes) with its batches at chance, by the end of its "
                                "first epoch or 10%% of its steps: stop (exit 4, checkpoint kept, the command that "
                                "avoids it printed) or warn and go on (default: the data kind's, below)")
    run_group.add_argument("--seed", type=int, default=0, help="seeds init, data order, augmentation and dropout")
    run_group.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    run_group.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    run_group.add_argument("--tensorboard", action="store_true",
                           help="also write TensorBoard events to DIR/tb (the tensorboard extra)")
    run_group.add_argument("--pretrained", default=None, metavar="PATH",
                           help="start from a local weights file: a checkpoint of this package or a torchvision "
                                "AlexNet state dict (with --variant torchvision); fc8 is re-initialised when the "
                                "class count differs")
    run_group.add_argument("--freeze-features", action="store_true", help="with --pretrained: train fc6..fc8 only")
    run_group.add_argument("--limit-train", type=int, default=None, metavar="N", help="use N training images (seeded)")
    run_group.add_argument("--limit-val", type=int, default=None, metavar="N", help="use N validation images (seeded)")
    run_group.add_argument("--ten-crop", action="store_true",
                           help="also evaluate best.pt with ten crops at the end (§4.1)")
    return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on the data and recipe (recipes.py); refuse bad values before any work."""
    kind = recipes.data_kind(args.data)                # a bad spec stops here; a store: the data it was made of
    defaults = recipes.DATA_DEFAULTS[kind]
    args.recipe_reason = f"--recipe auto on {kind} data" if args.recipe == "auto" else f"--recipe {args.recipe}"
    if args.recipe == "auto":
        args.recipe = defaults.recipe
    if args.schedule is None:
        args.schedule = defaults.schedule               # None: the recipe's
    args.from_recipe = [name for name in ("optimizer", "lr", "schedule") if getattr(args, name) is None]
    fill_from_recipe(args)
    args.on_stall = defaults.on_stall if args.on_stall is None else args.on_stall
    args.epochs = defaults.epochs if args.epochs is None else args.epochs
    args.batch_size = defaults.batch_size if args.batch_size is None else args.batch_size
    checks = [(args.epochs >= 1, f"--epochs must be at least 1, not {args.epochs}"),
              (args.batch_size >= 1, f"--batch-size must be at least 1, not {args.batch_size}"),
              (args.lr > 0, f"--lr must be positive, not {args.lr}"),
              (args.patience >= 1, "--patience must be at least 1"),
              (args.limit_train is None or args.limit_train >= 1, "--limit-train must be at least 1"),
              (args.limit_val is None or args.limit_val >= 1, "--limit-val must be at least 1"),
              (not args.freeze_features or args.pretrained, "--freeze-features needs --pretrained PATH")]
    network = get_network(args.variant)                                  # an unknown name stops here
    augment_from_args(args, network.input_size)                         # and a crop the images cannot give
    alexnet = isinstance(network, ArchConfig)
    checks.append((alexnet or not args.pretrained, f"--pretrained loads AlexNet weights, not {args.variant}'s"))
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UsageError('--tensorboard needs the tensorboard package: pip install -e ".[tensorboard]"')
    if args.out is None:
        args.out = os.path.join("runs", f"{args.variant}-{parse_spec(args.data).kind}")
    return args


def fill_from_recipe(args: argparse.Namespace) -> None:
    """The optimiser, learning rate and schedule not given as flags (``args.from_recipe``): the recipe's."""
    recipe = recipes.RECIPES[args.recipe]
    if "optimizer" in args.from_recipe:
        args.optimizer = recipe.optimizer
    if "lr" in args.from_recipe:
        args.lr = recipe.lr if args.optimizer == recipe.optimizer else recipes.OPTIMIZER_LR[args.optimizer]
    if "schedule" in args.from_recipe:
        args.schedule = recipe.schedule


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    args.command = argv                 # the user's words, for the command a stall message suggests
    keep_freed_memory()                 # glibc: no page faults on conv1's 37 MB maps every step (cpu_memory.py)
    return exit_code(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    args = resolve(args)
    process = distributed.from_env()
    try:
        return _run(args, process)
    finally:
        distributed.stop()


# --- what the steps hand on -------------------------------------------------------------------------------

@dataclasses.dataclass
class Context:
    """The run's settings, where it runs, and how it speaks."""

    args: argparse.Namespace
    process: distributed.Process
    placement: Placement
    say: Callable[[str], None]          # the lines rank 0 prints (--quiet hides progress bars, never these)

    def path(self, name: str) -> str:
        return os.path.join(self.args.out, name)


@dataclasses.dataclass
class Data:
    dataset: DataSet
    stats: DataStats
    train: Split
    val: Split


@dataclasses.dataclass
class Net:
    config: Network
    alexnet: bool                       # an AlexNet (takes the recipe's init), not a comparison net
    model: torch.nn.Module              # what is saved and scored
    trained: torch.nn.Module            # what trains: the model, or DDP around it under torchrun
    augment: Augment
    transform: PaperTransform
    optimizer: torch.optim.Optimizer
    schedule: object
    generator: torch.Generator          # the augmentation draws (§4.1)


def _run(args: argparse.Namespace, process: distributed.Process) -> int:
    placement = place(args, get_network(args.variant), process.local_rank)
    resumed, pretrained = check_resume(args, placement)
    distributed.start(process, placement.first)     # after the checks: bad input stops every rank alike
    args.quiet = args.quiet or not process.main
    say = (lambda line: print(line, file=sys.stderr)) if process.main else (lambda line: None)
    ctx = Context(args, process, placement, say)
    data = open_data(ctx)
    net = build_net(ctx, data, resumed, pretrained)
    record_config(ctx, data, net)
    with StopOnSignal() as stop:            # SIGTERM / Ctrl-C: a checkpoint at the step, then exit 143 / 130
        code, rows = train_epochs(ctx, data, net, resumed, stop)
        return code if code is not None else finish(ctx, data, net, rows, stop)


# --- 1. what is resumed ----------------------------------------------------------------------------------

def check_resume(args: argparse.Namespace, placement: Placement):
    """The checkpoint to continue (``--resume``), checked against the flags, and the ``--pretrained``
    weights, read; or a refusal before anything is written: a run already in ``--out`` is never overwritten."""
    resumed = None
    if args.resume is not None:
        path = args.resume or os.path.join(args.out, "checkpoint.pt")
        resumed = checkpoint.load(path)
        variant = get_network(args.variant).name
        if resumed.variant != variant:
            raise CheckpointError(f"{path} is a checkpoint of '{resumed.variant}', not '{variant}'")
        if resumed.two_tower != placement.two_tower:
            raise CheckpointError(f"{path} was trained {'with' if resumed.two_tower else 'without'} --two-gpu; "
                                  f"resume it the same way (its weights load either way: reproduce.evaluate)")
        if resumed.optimizer is None:
            raise CheckpointError(f"{path} holds weights only (no optimiser state): start a new run from it with "
                                  f"--pretrained {path}")
    elif any(os.path.exists(os.path.join(args.out, name)) for name in ("config.json", "checkpoint.pt")):
        raise UsageError(f"{args.out} already holds a run: --resume to continue it, or choose another --out")
    pretrained = None
    if args.pretrained and resumed is None:
        pretrained, trained_on = checkpoint.read_trained(args.pretrained, "--pretrained")
        match_recipe_to_weights(args, weights_input(pretrained, trained_on))
    return resumed, pretrained


INPUTS = {"torchvision": "ImageNet's mean and std (x/255; --mean torchvision)",
          "unit std": "pixels minus the mean, scaled to unit std (--recipe quick)",
          "raw": "raw 0-255 pixels minus the mean (--recipe paper, §2)"}


def weights_input(state, trained_on: Optional[dict]) -> str:
    """The input pretrained weights expect: a key of INPUTS."""
    if trained_on is None:                             # a bare state dict: torchvision's, or raw pixels
        return "torchvision" if is_torchvision_state(state) else "raw"
    if trained_on.get("mean") == "torchvision":
        return "torchvision"
    return "unit std" if trained_on.get("scale", 1.0) != 1.0 else "raw"


def match_recipe_to_weights(args: argparse.Namespace, expected: str) -> None:
    """Fine-tuning feeds the weights the input they learned on: ``--recipe auto`` picks the recipe whose input
    that is (and says why); a recipe or --mean given that feeds them another is refused, never mixed."""
    def run_input(recipe: str) -> str:
        return "torchvision" if args.mean == "torchvision" else (
            "unit std" if recipes.RECIPES[recipe].unit_std else "raw")

    if expected == "torchvision" and args.mean is None:            # the input torchvision's weights learned on
        args.mean = "torchvision"
        args.recipe_reason += f", with --mean torchvision for --pretrained weights trained on {INPUTS[expected]}"
        return
    if run_input(args.recipe) == expected:
        return
    if expected != "torchvision" and args.mean != "torchvision" and args.recipe_reason.startswith("--recipe auto"):
        args.recipe = "quick" if expected == "unit std" else "paper"
        args.recipe_reason += f", with --pretrained weights trained on {INPUTS[expected]}"
        fill_from_recipe(args)
        return
    remedy = ("add --mean torchvision" if expected == "torchvision" else
              "drop --mean torchvision" if args.mean == "torchvision" else
              f"use --recipe {'quick' if expected == 'unit std' else 'paper'}")
    raise UsageError(f"--pretrained {args.pretrained} was trained on {INPUTS[expected]}, but this run would feed "
                     f"it {INPUTS[run_input(args.recipe)]}: {remedy}")


# --- 2. the data -----------------------------------------------------------------------------------------

def _subset(split: Split, limit: Optional[int], seed: int) -> Split:
    if limit is None or limit >= len(split):
        return split
    return split.subset(np.sort(np.random.default_rng(seed).permutation(len(split))[:limit]))


def open_data(ctx: Context) -> Data:
    """The data set, its §2 mean image and §4.1 PCA (computed once, cached), and the splits used."""
    args = ctx.args
    with distributed.main_first(ctx.process):   # rank 0 builds any cached store and statistics first
        dataset = open_dataset(args.data, download=args.download, progress=not args.quiet, report=ctx.say)
        stats = dataset.stats(progress=not args.quiet, report=ctx.say)
    for note in dataset.notes:
        ctx.say(note)
    return Data(dataset, stats, _subset(dataset.split("train"), args.limit_train, args.seed),
                _subset(dataset.split("val"), args.limit_val, args.seed + 1))


# --- 3. the net ------------------------------------------------------------------------------------------

def build_net(ctx: Context, data: Data, resumed: Optional[Checkpoint], pretrained) -> Net:
    """The net with the recipe's init (or the pretrained or resumed weights), its optimiser, schedule and
    data transform, placed on its devices."""
    args, recipe = ctx.args, recipes.RECIPES[ctx.args.recipe]
    torch.manual_seed(args.seed)
    config = get_network(args.variant, num_classes=len(data.dataset.classes))
    alexnet = isinstance(config, ArchConfig)           # the comparison nets keep their own init
    if alexnet:
        config = dataclasses.replace(config, init=recipe.init)
    augment = augment_from_args(args, config.input_size)
    if recipe.unit_std and augment.mean != "torchvision":
        augment.scale = float(1.0 / data.stats.channel_std.mean())
    model = build_placed(config, ctx.placement)
    if pretrained is not None:
        new_head = load_pretrained(model, pretrained, args.pretrained)
        ctx.say(f"pretrained weights from {args.pretrained}" + (" (fc8 re-initialised for the new classes)"
                                                                if new_head else ""))
    if args.freeze_features:
        for name, weight in model.named_parameters():
            if name.split(".")[-2].startswith("conv"):
                weight.requires_grad_(False)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    trained = distributed.wrap(model, ctx.process, None if ctx.placement.two_tower else ctx.placement.first)
    optimizer = build_optimizer(args.optimizer, [p for p in model.parameters() if p.requires_grad],
                                args.lr, args.momentum, args.wd)
    # §5 divides when the error "stopped improving"; at chance it never started (chance_margin: how far below a
    # guesser's error on this validation set it must be to have left chance)
    classes = len(data.dataset.classes)
    schedule = build_schedule(args.schedule, optimizer, args.epochs, args.patience, args.step_size,
                              chance=1 - 1 / classes, margin=chance_margin(classes, len(data.val)))
    generator = torch.Generator().manual_seed(args.seed)
    if resumed is not None:
        model.load_state_dict(resumed.model)
        optimizer.load_state_dict(resumed.optimizer)
        schedule.load_state_dict(resumed.schedule)
        generator.set_state(resumed.rng["augment"])
    transform = PaperTransform(data.stats, augment, device=ctx.placement.first)
    return Net(config, alexnet, model, trained, augment, transform, optimizer, schedule, generator)


# --- 4. the record ---------------------------------------------------------------------------------------

def write_json(path: str, value: dict) -> None:
    with atomic_write(path) as handle:
        json.dump({k: for_file(v) for k, v in value.items()}, handle, indent=1, default=str)


SCHEDULES = {"plateau": "÷10 when val error stops improving (§5)", "cosine": "cosine decay over the epochs",
             "step": "÷10 every --step-size epochs", "none": "a constant rate"}
MEANS = {"image": "the mean image (§2)", "channel": "the per-channel mean", "none": "nothing"}


def recipe_line(args: argparse.Namespace, net: Net) -> str:
    """The run's first line: the recipe, why it was chosen, and what it does here."""
    recipe = recipes.RECIPES[args.recipe]
    auto_quick = args.recipe == "quick" and args.recipe_reason.startswith("--recipe auto on")
    init = ("weights from --pretrained" if args.pretrained else "the net's own init" if not net.alexnet else
            "He init with zero biases" if recipe.init == "he" else
            "init N(0, 0.01) with biases 1 in conv2/4/5, fc6/7 (§5)")
    pixels = ("pixels normalised by ImageNet's mean and std (torchvision)" if net.augment.mean == "torchvision"
              else f"pixels minus {MEANS[net.augment.mean]}, scaled to unit std" if net.augment.scale != 1.0
              else f"raw 0-255 pixels minus {MEANS[net.augment.mean]}")
    return (f"recipe: {args.recipe}, chosen by {args.recipe_reason}"
            + (" (§5's recipe stalls at ln(classes) on small data sets: docs/training.md)" if auto_quick else "")
            + f": {init}; {pixels}; {args.optimizer} lr {args.lr:g}, {SCHEDULES[args.schedule]}"
            + (". §5's recipe: --recipe paper" if args.recipe == "quick" else ""))


def record_config(ctx: Context, data: Data, net: Net) -> None:
    """Say what runs in the first lines, and write the same into config.json."""
    args, recipe, say = ctx.args, recipes.RECIPES[ctx.args.recipe], ctx.say
    say(recipe_line(args, net))
    classes = data.dataset.classes
    say(f"{net.config.name}: {sum(p.numel() for p in net.model.parameters()):,} parameters; data {args.data}: "
        f"{len(classes)} classes, train {len(data.train)}, val {len(data.val)}; {ctx.placement.note}"
        + (f" x {ctx.process.world} processes (rows of each batch shared out)" if ctx.process.world > 1 else "")
        + f"; {plural(args.epochs, 'epoch')} of batch {args.batch_size}")
    changes = None
    if args.recipe == "quick":
        changes = {"init": recipe.init, "scale": "1/pixel std", "optimizer": recipe.optimizer, "lr": recipe.lr,
                   "schedule": recipe.schedule}
        if not net.alexnet:
            del changes["init"]
    config = {"args": vars(args), "recipe": args.recipe, "recipe_reason": args.recipe_reason,
              "quick_changes": changes,
              "recipe_settings": dataclasses.asdict(recipe),
              "model": dataclasses.asdict(net.config), "augment": dataclasses.asdict(net.augment),
              "classes": classes, "train_images": len(data.train), "val_images": len(data.val),
              "pca_source": data.stats.pca_source, "devices": [str(d) for d in ctx.placement.devices],
              "processes": ctx.process.world,
              "versions": {"paper_alexnet": paper_alexnet.__version__, "torch": torch.__version__,
                           "python": platform.python_version(), "checkpoint_format": checkpoint.FORMAT}}
    if ctx.process.main:
        os.makedirs(args.out, exist_ok=True)
        write_json(ctx.path("config.json"), config)


# --- 5. the epochs ---------------------------------------------------------------------------------------

def write_metrics(path: str, rows: List[dict]) -> None:
    with atomic_write(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRICS)
        writer.writeheader()
        writer.writerows({k: for_file(v) for k, v in row.items()} for row in rows)


def _save(ctx: Context, data: Data, net: Net, epoch: int, best: float, rows: List[dict],
          progress: Optional[EpochProgress] = None) -> None:
    """checkpoint.pt after ``epoch`` epochs, and ``progress.steps`` batches into the next when stopped there."""
    ckpt = Checkpoint(
        model=net.model.state_dict(), variant=net.config.name, classes=list(data.dataset.classes),
        augment=dataclasses.asdict(net.augment), init=net.config.init,
        stats=Checkpoint.stats_entry(data.stats),   # §2/§4.1 travel with the weights: predict needs no data
        data=ctx.args.data, two_tower=ctx.placement.two_tower, epoch=epoch, best_val_top1_err=best,
        metrics=[dict(r) for r in rows], optimizer=net.optimizer.state_dict(), schedule=net.schedule.state_dict(),
        # dropout's RNG is seeded from (seed, epoch, rank, step) at every step: distributed.dropout_seed
        rng={"augment": net.generator.get_state()},
        step=progress.steps if progress else 0,
        progress={k: v for k, v in dataclasses.asdict(progress).items() if k != "stopped"} if progress else None)
    checkpoint.save(ctx.path("checkpoint.pt"), ckpt)


def papers_init(args: argparse.Namespace, net: Net) -> bool:
    """An AlexNet started with §5's init, the one that stalls on small data sets."""
    return args.recipe == "paper" and net.alexnet and not args.pretrained


def avoiding_command(ctx: Context, net: Net) -> str:
    """The command that avoids the stall this run met: the user's own, with the recipe (or, for a run that
    does not start from §5's init, the learning rate) changed, into a new --out."""
    args = ctx.args
    if papers_init(args, net):
        change, suffix = ["--recipe", "quick"], "quick"
    else:
        change, suffix = ["--lr", f"{args.lr / 10:g}"], "lower-lr"
    return command_line("reproduce.train", args.command, drop=("--recipe", "--lr", "--out", "--resume",
                                                              "--on-stall"),
                        add=[*change, "--out", f"{args.out.rstrip(os.sep)}-{suffix}"])


def train_epochs(ctx: Context, data: Data, net: Net, resumed: Optional[Checkpoint],
                 stop: StopOnSignal) -> Tuple[Optional[int], List[dict]]:
    """The epochs of §5, each with its validation, checkpoint, metrics.csv row and curves. Returns the exit
    status, None when every epoch ran (Exit.DIVERGED: the loss became NaN/inf; Exit.SIGTERM/SIGINT: stopped),
    and metrics.csv's rows."""
    from tqdm.auto import tqdm

    args, process = ctx.args, ctx.process
    rows, best, start_epoch, progress = [], math.inf, 1, EpochProgress()
    if resumed is not None:
        rows, best = [dict(r) for r in resumed.metrics], resumed.best_val_top1_err
        start_epoch = resumed.epoch + 1
        if resumed.step:
            progress = EpochProgress(**resumed.progress)
        ctx.say(f"resuming {args.resume or ctx.path('checkpoint.pt')} after epoch {resumed.epoch}"
                + (f" and {resumed.step} steps of epoch {start_epoch}" if resumed.step else ""))
    writer = None
    if args.tensorboard and process.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(ctx.path("tb"))
    classes = len(data.dataset.classes)
    per_epoch = math.ceil(len(data.train) / args.batch_size)
    watch = LearningWatch(classes, per_epoch, per_epoch * args.epochs)

    def stalled() -> bool:                      # a stall that --on-stall stop ends: _stalled
        return args.on_stall == "stop" and watch.stall is not None

    def halt() -> bool:                         # the step ends, is saved, and the run stops
        return stop() or stalled()

    for epoch in range(start_epoch, args.epochs + 1):
        loader = BatchLoader(data.train, args.batch_size, seed=args.seed, epoch=epoch, workers=args.workers,
                             strict=args.strict, rank=process.rank, world=process.world, start_batch=progress.steps,
                             device=ctx.placement.first, decode=args.decode)
        steps = progress.steps + len(loader)
        bar = tqdm(total=steps, initial=progress.steps, desc=f"epoch {epoch}/{args.epochs}", unit="batch",
                   disable=args.quiet, leave=False)

        def on_step(step, value, hits, images):
            bar.update(1)
            rate = bar.format_dict.get("rate")                # batches/s, smoothed
            bar.set_postfix({"loss": f"{value:.3f}", **({"img/s": f"{rate * images:.0f}"} if rate else {})})
            verdict = watch.step(value, hits, images)
            if verdict is not None and not stalled() and process.main:
                bar.write(file=sys.stderr, s=f"warning: at step {verdict.step}: {verdict.text}" + (
                    f". It may recover, or sink to chance. Avoid it with: {avoiding_command(ctx, net)}"
                    if verdict.kind == "blow-up" else
                    f". Going on (--on-stall warn); what avoids it: {avoiding_command(ctx, net)}"))

        lr = net.optimizer.param_groups[0]["lr"]
        try:
            progress = train_one_epoch(
                net.trained, loader, net.transform, net.optimizer, net.generator,
                device=ctx.placement.first, amp=args.amp, channels_last=args.channels_last, rank=process.rank,
                world=process.world, on_step=on_step, progress=progress, stop=halt,
                step_seed=lambda step: distributed.dropout_seed(args.seed, epoch, process.rank, step))
        except NonFiniteLoss as err:
            bar.close()
            ctx.say(f"error: {err}; stopped. The last good checkpoint ({ctx.path('checkpoint.pt')}) is kept. "
                    f"Lower --lr, or use --recipe quick.")
            return Exit.DIVERGED, rows
        bar.close()
        if progress.stopped and progress.steps < steps:            # mid-epoch: save this very step
            if process.main:
                _save(ctx, data, net, epoch - 1, best, rows, progress)
            if stalled():
                return _stalled(ctx, net, watch), rows
            return _stopped(ctx, stop, f"after step {progress.steps} of {steps} of epoch {epoch}"
                            + _every_process_at(ctx.process, progress.steps)), rows
        val = evaluate(net.model, data.val, net.transform, device=ctx.placement.first,
                       batch_size=args.batch_size, workers=args.workers, strict=args.strict, amp=args.amp,
                       decode=args.decode, rank=process.rank, world=process.world)
        result = progress.result()
        row = {"epoch": epoch, "lr": lr, "train_loss": result["train_loss"],
               "train_top1_err": result["train_top1_err"], "val_loss": val["loss"],
               "val_top1_err": val["top1_err"], "val_top5_err": val["top5_err"],
               "images_per_s": result["images"] / max(result["seconds"], 1e-9), "seconds": result["seconds"],
               "data_wait_s": round(result["data_seconds"], 3),          # to the millisecond: what it means
               "skipped_files": progress.skipped + val["skipped_files"]}
        rows.append(row)
        progress = EpochProgress()
        dropped = net.schedule.step(val["top1_err"])
        improved = val["top1_err"] < best
        best = min(best, val["top1_err"])
        ctx.say(f"epoch {epoch}: train loss {row['train_loss']:.3f} top-1 {percent(row['train_top1_err'])} | "
                f"val loss {row['val_loss']:.3f} top-1 {percent(row['val_top1_err'])} "
                f"top-5 {percent(row['val_top5_err'])} | {row['images_per_s']:.1f} img/s, "
                f"{row['seconds']:.0f} s"
                + (f" | {row['skipped_files']} unreadable files skipped" if row["skipped_files"] else "")
                + (f" | lr -> {net.optimizer.param_groups[0]['lr']:g}" if dropped else ""))
        if process.main:
            _save(ctx, data, net, epoch, best, rows)
            if improved:                          # the same bytes: a link, not a second 0.65 GB write
                checkpoint.share(ctx.path("checkpoint.pt"), ctx.path("best.pt"))
            write_metrics(ctx.path("metrics.csv"), rows)
            plot_curves(rows, ctx.path("curves.png"), f"{net.config.name} on {args.data}")
            if writer is not None:
                for key in METRICS[1:]:
                    if row[key] is not None:
                        writer.add_scalar(key, row[key], epoch)
                writer.flush()
        if stalled() and epoch < args.epochs:                           # at the epoch's last step
            return _stalled(ctx, net, watch), rows
        if distributed.all_sum([float(stop())])[0] and epoch < args.epochs:   # a signal during validation
            return _stopped(ctx, stop, f"at the end of epoch {epoch}" + _every_process_at(ctx.process, steps)), rows
    if writer is not None:
        writer.close()
    return None, rows


STALLED = Exit.STALLED     # the exit status of a run that --on-stall stop ended


def _every_process_at(process: distributed.Process, steps: int) -> str:
    """The words " on all N processes", once every process has said it stopped after ``steps`` steps too (the
    vote in engine.train_one_epoch makes them stop together; rank 0's checkpoint is then every rank's state)."""
    if process.world == 1:
        return ""
    each = [int(n) for n in distributed.each(steps, process)]
    if len(set(each)) > 1:
        raise RuntimeError(f"the processes stopped after different steps ({each}): the checkpoint is rank 0's")
    return f" on all {process.world} processes"


def _stalled(ctx: Context, net: Net, watch: LearningWatch) -> int:
    why = ("§5's init stalls like this on small data sets (BVLC/caffe#401, docs/training.md)"
           if papers_init(ctx.args, net) else "the learning rate is too high or too low here")
    ctx.say(f"stopped at step {watch.stall.step} of the run: {watch.stall.text}; {why}. Run instead: "
            f"{avoiding_command(ctx, net)}   (this run's checkpoint is in {ctx.args.out}; to go on watching it: "
            f"the same command with --resume --on-stall warn)")
    return STALLED


def _stopped(ctx: Context, stop: StopOnSignal, where: str) -> int:
    ctx.say(f"stopped by {stop.name or 'a signal on another process'} {where}: checkpoint written to "
            f"{ctx.path('checkpoint.pt')}; continue with the same command and --resume")
    return stop.exit_code if stop.received else Exit.SIGTERM


# --- 6. the end ------------------------------------------------------------------------------------------

def finish(ctx: Context, data: Data, net: Net, rows: List[dict], stop: StopOnSignal) -> int:
    """result.json: the best epoch's errors (what best.pt holds), and its ten-crop errors when asked (skipped
    when a signal came: ``--resume`` then does only this)."""
    args = ctx.args
    best_row = min(rows, key=lambda r: r["val_top1_err"])
    result = {"best_epoch": best_row["epoch"], "val_top1_err": best_row["val_top1_err"],
              "val_top5_err": best_row["val_top5_err"], "ten_crop_top1_err": None, "ten_crop_top5_err": None}
    stopped = distributed.all_sum([float(stop())])[0] > 0
    if args.ten_crop and not stopped:
        distributed.barrier()                # best.pt is written by rank 0
        best = checkpoint.load(ctx.path("best.pt"))
        net.model.load_state_dict(best.model)
        val = evaluate(net.model, data.val, net.transform, device=ctx.placement.first, batch_size=args.batch_size,
                       ten_crop=True, workers=args.workers, amp=args.amp, progress=not args.quiet,
                       decode=args.decode, rank=ctx.process.rank, world=ctx.process.world)
        result.update(ten_crop_top1_err=val["top1_err"], ten_crop_top5_err=val["top5_err"])
        ctx.say(f"best.pt (epoch {best.epoch}), ten crops: top-1 {percent(val['top1_err'])} "
                f"top-5 {percent(val['top5_err'])}")
    if ctx.process.main:
        write_json(ctx.path("result.json"), result)
    if stopped and args.ten_crop:
        return _stopped(ctx, stop, "before the ten-crop evaluation")
    ctx.say(f"done: best val top-1 error {percent(best_row['val_top1_err'])} (chance "
            f"{100 * (1 - 1 / len(data.dataset.classes)):.0f}%); results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
