"""Train an AlexNet as the paper did (§5), on any data set: ``python -m reproduce.train``.

With no arguments: the `paper` net on the built-in synthetic data, on the CPU
when there is no GPU, in a few minutes. Everything a run makes goes into
``--out``: config.json, metrics.csv (one row per epoch), checkpoint.pt (latest),
best.pt (lowest validation top-1 error), result.json (best.pt's errors, ten-crop
ones with ``--ten-crop``), curves.png, and TensorBoard events
with ``--tensorboard``. A killed run continues with ``--resume``; SIGTERM or
Ctrl-C stop it after the current step with a checkpoint of that step.

The flags are parsed and settled once into a frozen ``RunConfig`` (training/run_config.py, where each flag
is declared); ``run(config)`` trains in-process (reproduce.ablate calls it for each cell). A run is five
steps, in this order (``_run``): prepare (where it runs, what it resumes, the data, the pipeline), build the
net, record the config, train the epochs, and finish. What it writes, RunWriter writes
(training/run_writer.py); what it says about how it learns, RunWatch says (training/alerts.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import platform
import sys
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

import paper_alexnet
from paper_alexnet import (
    ArchConfig,
    backends,
    checkpoint,
    distributed,
)
from paper_alexnet.checkpoint import Checkpoint, CheckpointError
from paper_alexnet.cli import HelpFormatter, log_to_stderr, percent, plural
from paper_alexnet.data import Augment, DataSet, DataStats, PaperTransform, cache_dir, open_dataset
from paper_alexnet.data.loader import BatchLoader, WorkerPool
from paper_alexnet.data.mixing import Mixing
from paper_alexnet.data.splits import Split
from paper_alexnet.ema import WeightAverage
from paper_alexnet.engine import (
    EpochProgress,
    NonFiniteLoss,
    StepPlace,
    StepTools,
    evaluate,
    train_one_epoch,
)
from paper_alexnet.networks import Network, get_network
from paper_alexnet.optim import build_optimizer, build_schedule, parameter_groups
from paper_alexnet.signals import StopOnSignal
from paper_alexnet.watch import chance_margin
from paper_alexnet.weights import load_pretrained
from reproduce.common import class_report
from reproduce.training import recipes
from reproduce.training import run_config
from reproduce.common import run_lock
from reproduce.common.args import (
    weights_table,
    as_program,
    Exit,
    UsageError,
    exit_code,
    say_skipped,
)
from reproduce.common.placement import Placement, build_placed, place
from reproduce.training.run_config import RunConfig
from reproduce.training.alerts import RunWatch
from reproduce.training.run_writer import MetricsRow, RunWriter


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.train",
        formatter_class=HelpFormatter,
        epilog=recipes.describe() + "\n\n" + weights_table(),
        description="Train an AlexNet with the paper's recipe (§5) and data pipeline (§2, §4.1); "
        "report top-1/top-5 error (§6).",
    )
    run_config.add_flags(parser)  # each flag as declared with its setting (run_config.RunConfig)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)  # the one parse: a bad flag exits 2 here
    return exit_code(lambda: run(run_config.from_args(args, argv)))


def run(config: RunConfig) -> int:
    """Train as ``config`` says, in this process (under torchrun: as this rank); returns the exit status
    (``Exit``). Bad settings raise (UsageError, DataError, ...), before anything is written."""
    if not config.settled:  # built in Python; a parsed or derived config comes settled
        config = run_config.settle(config)
    process = distributed.from_env()
    # one run per folder, from its first moment (the job's rank 0 holds it: run_lock.py)
    with run_lock.hold(config.out) if process.main else contextlib.nullcontext():
        try:
            return _run(config, process)
        finally:
            distributed.stop()


# --- what the steps hand on -------------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
    """The run's settings, where it runs, what it writes, and how it speaks."""

    config: RunConfig
    process: distributed.Process
    placement: Placement
    writer: RunWriter
    say: Callable[[str], None]  # the lines rank 0 prints (--quiet hides progress bars, never these)
    cuda: dict  # the CUDA settings taken (backends.state)


@dataclasses.dataclass
class Data:
    dataset: DataSet
    stats: DataStats
    train: Split
    val: Split
    # the loader processes: a WorkerPool kept for every epoch and evaluation of the run, or 0 (none)
    workers: Union[int, WorkerPool] = 0


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What a run starts from, prepared once before the process group starts (a refusal or bad data stops
    every rank alike) and passed on, never settled or patched again."""

    config: RunConfig  # settled, with this process's loader processes and --quiet
    placement: Placement
    data: Data
    # the §2/§4.1 pipeline, its scale from the training set's pixel std where the recipe feeds unit std
    augment: Augment
    resumed: Optional[Checkpoint]  # --resume's checkpoint
    pretrained: Optional[dict]  # --pretrained's state dict (a new run)


@dataclasses.dataclass
class Net:
    network: Network
    alexnet: bool  # an AlexNet (takes the recipe's init), not a comparison net
    model: torch.nn.Module  # what is saved and scored
    trained: torch.nn.Module  # what trains: the model, or DDP around it under torchrun
    augment: Augment
    transform: PaperTransform
    optimizer: torch.optim.Optimizer
    schedule: object
    generator: torch.Generator  # the augmentation draws (§4.1; and mixup/CutMix's)
    average: Optional[WeightAverage] = None  # --ema: the weights' moving average

    @property
    def scored(self) -> torch.nn.Module:
        """What is validated, kept as best.pt and scored: the average of the weights with --ema."""
        return self.average.model if self.average is not None else self.model


def prepare(config: RunConfig, process: distributed.Process) -> Prepared:
    """The settled ``config`` made ready to run in this process: its placement and loader processes, what it
    resumes or starts from (checked against the settings), the data and its statistics, and the pipeline."""
    placement = place(config, get_network(config.variant), process.local_rank, process.local_world)
    workers = run_config.FLAGS["workers"].by_device(
        config.workers, placement.first, process.local_world
    )
    config = dataclasses.replace(config, workers=workers, quiet=config.quiet or not process.main)
    resumed = check_resume(config, placement)
    pretrained = None
    if config.pretrained and resumed is None:
        pretrained, _ = run_config.read_pretrained(config)
    if process.world > 1:
        distributed.group_timeout()  # a bad setting stops the job before any work
    log_to_stderr(process.main)
    # no collective waits while the first process opens the data and computes its statistics (hours for
    # ImageNet)
    data = open_data(config, process)
    input_size = get_network(config.variant).input_size
    augment = run_config.augment(config, input_size, data.stats.channel_std)
    return Prepared(config, placement, data, augment, resumed, pretrained)


def _run(config: RunConfig, process: distributed.Process) -> int:
    prepared = prepare(config, process)
    config, placement, data = prepared.config, prepared.placement, prepared.data
    distributed.start(process, placement.first)
    say = (lambda line: print(line, file=sys.stderr)) if process.main else (lambda line: None)
    writer = RunWriter(
        config.out,
        process.main,
        f"{get_network(config.variant).name} on {config.data}",
        tensorboard=config.tensorboard,
    )
    cuda = backends.configure(placement.first, config.deterministic, not config.no_tf32)
    ctx = Context(config, process, placement, writer, say, cuda)
    for note in data.dataset.notes:
        say(note)
    net = build_net(ctx, prepared)
    record_config(ctx, data, net)
    # one set of loader processes for the whole run, not one an epoch and an evaluation
    if config.workers:
        data.workers = WorkerPool(
            {"train": data.train, "val": data.val}, config.workers, placement.first, config.decode,
            batch=-(-config.batch_size // process.world),  # a process's rows (/dev/shm holds them)
        )  # fmt: skip
    with StopOnSignal() as stop:  # SIGTERM / Ctrl-C: a checkpoint at the step, then exit 143 / 130
        try:
            try:
                code, rows, best = train_epochs(ctx, data, net, prepared.resumed, stop)
            finally:
                writer.close()
            return code if code is not None else finish(ctx, data, net, rows, best, stop)
        finally:
            if isinstance(data.workers, WorkerPool):
                data.workers.close()


# --- 1. what is resumed ----------------------------------------------------------------------------------


def check_resume(config: RunConfig, placement: Placement) -> Optional[Checkpoint]:
    """The checkpoint to continue (``--resume``), checked against the settings; or a refusal before anything
    is written: a run already in ``--out`` is never overwritten."""
    resumed = None
    if config.resume is not None:
        path = config.resume or os.path.join(config.out, "checkpoint.pt")
        resumed = checkpoint.load(path)
        variant = get_network(config.variant).name
        if resumed.variant != variant:
            raise CheckpointError(f"{path} is a checkpoint of '{resumed.variant}', not '{variant}'")
        if resumed.two_tower != placement.two_tower:
            raise CheckpointError(
                f"{path} was trained {'with' if resumed.two_tower else 'without'} --two-gpu; "
                f"resume it the same way (its weights load either way: reproduce.evaluate)"
            )
        if resumed.optimizer is None:
            raise CheckpointError(
                f"{path} holds weights only (no optimiser state): start a new run from it with "
                f"--pretrained {path}"
            )
        saved = run_config.read_record(os.path.dirname(os.path.abspath(path)))
        changed = run_config.differences(saved, config) if saved else []
        if changed:
            raise UsageError(
                f"{path} is a run with other settings ({'; '.join(changed)}): resume it with its "
                f"own (what may change: --epochs, --on-stall, --workers, --quiet, --device)"
            )
    elif any(
        os.path.exists(os.path.join(config.out, name)) for name in ("config.json", "checkpoint.pt")
    ):
        raise UsageError(
            f"{config.out} already holds a run: --resume to continue it, or choose another --out"
        )
    return resumed


# --- 2. the data -----------------------------------------------------------------------------------------


def _subset(split: Split, limit: Optional[int], seed: int) -> Split:
    if limit is None or limit >= len(split):
        return split
    return split.subset(np.sort(np.random.default_rng(seed).permutation(len(split))[:limit]))


def open_data(config: RunConfig, process: distributed.Process) -> Data:
    """The data set, its §2 mean image and §4.1 PCA (computed once, cached), and the splits used. The processes
    of a job (and runs started together) take turns: the first builds any cached store and the statistics, the
    others wait for it without a timeout, and then read them."""
    with run_lock.in_turn(
        f"data {config.data} {cache_dir()}",
        f"opens --data {config.data} and computes its statistics (once; then cached)",
        lambda line: print(
            (f"rank {process.rank}: " if process.world > 1 else "") + line, file=sys.stderr
        ),
    ):
        dataset = open_dataset(config.data, download=config.download, progress=not config.quiet)
        train = _subset(dataset.split("train"), config.limit_train, config.seed)
        # §2/§4.1 of the images trained on: a store's own, else those of --limit-train's subset where given
        stats = dataset.stats(progress=not config.quiet, train=train)
    if config.pca == "published":
        stats = stats.with_imagenet_pca()
    return Data(
        dataset, stats, train, _subset(dataset.split("val"), config.limit_val, config.seed + 1)
    )


# --- 3. the net ------------------------------------------------------------------------------------------


def build_net(ctx: Context, prepared: Prepared) -> Net:
    """The net with the recipe's init (or the pretrained or resumed weights), its optimiser, schedule and
    data transform, placed on its devices."""
    config, recipe, data = ctx.config, recipes.RECIPES[ctx.config.recipe], prepared.data
    resumed, pretrained, augment = prepared.resumed, prepared.pretrained, prepared.augment
    torch.manual_seed(config.seed)
    network = get_network(config.variant, num_classes=len(data.dataset.classes))
    alexnet = isinstance(network, ArchConfig)  # the comparison nets keep their own init
    if alexnet:
        network = dataclasses.replace(network, init=recipe.init)
    model = build_placed(network, ctx.placement)
    if pretrained is not None:
        new_head = load_pretrained(model, pretrained, config.pretrained)
        ctx.say(
            f"pretrained weights from {config.pretrained}"
            + (" (fc8 re-initialised for the new classes)" if new_head else "")
        )
    if config.freeze_features:
        for name, weight in model.named_parameters():
            if name.split(".")[-2].startswith("conv"):
                weight.requires_grad_(False)
    trained = distributed.wrap(
        model, ctx.process, None if ctx.placement.two_tower else ctx.placement.first
    )
    if config.compile:  # what trains; the model itself is what is saved and validated
        trained = torch.compile(trained)
    # §5: one rate and decay for all; the 2012 code: the biases at twice the rate, undecayed, and conv1's own
    # rates by hand (HandSchedule)
    groups = parameter_groups(
        model,
        config.lr,
        config.wd,
        config.bias_lr,
        config.bias_wd,
        own=("conv1",) if config.schedule == "code-2012" else (),
    )
    optimizer = build_optimizer(config.optimizer, groups, config.lr, config.momentum, config.wd)
    # §5 divides when the error "stopped improving"; at chance it never started (chance_margin: how far below a
    # guesser's error on this validation set it must be to have left chance)
    classes = len(data.dataset.classes)
    schedule = build_schedule(
        config.schedule,
        optimizer,
        config.epochs,
        config.patience,
        config.step_size,
        chance=1 - 1 / classes,
        margin=chance_margin(classes, len(data.val)),
    )
    generator = torch.Generator().manual_seed(config.seed)
    average = None
    if config.ema:
        average = WeightAverage(model, build_placed(network, ctx.placement), config.ema)
    if resumed is not None:
        model.load_state_dict(resumed.trained if resumed.trained is not None else resumed.model)
        if average is not None:
            average.model.load_state_dict(resumed.model)
        optimizer.load_state_dict(resumed.optimizer)
        schedule.load_state_dict(resumed.schedule)
        generator.set_state(resumed.rng["augment"])
    transform = PaperTransform(data.stats, augment, device=ctx.placement.first)
    return Net(
        network,
        alexnet,
        model,
        trained,
        augment,
        transform,
        optimizer,
        schedule,
        generator,
        average,
    )


# --- 4. the record ---------------------------------------------------------------------------------------

SCHEDULES = {
    "plateau": "÷10 when val error stops improving (§5)",
    "cosine": "cosine decay over the epochs",
    "step": "÷10 every --step-size epochs",
    "none": "a constant rate",
    "code-2012": "the 2012 run's rates by hand (docs/code-2012.md)",
}
MEANS = {
    "image": "the mean image (§2)",
    "image-centre": "the mean image's centre (the 2012 code's)",
    "channel": "the per-channel mean",
    "none": "nothing",
}


def recipe_line(config: RunConfig, net: Net) -> str:
    """The run's first line: the recipe, why it was chosen, and what it does here."""
    recipe = recipes.RECIPES[config.recipe]
    auto_quick = config.recipe == "quick" and "recipe" in config.defaulted
    init = (
        "weights from --pretrained"
        if config.pretrained
        else "the net's own init"
        if not net.alexnet
        else "He init with zero biases"
        if recipe.init == "he"
        else "init N(0, 0.01) with biases 1 in conv2/4/5, fc6/7 (§5)"
        if net.network.weight_std == ArchConfig().weight_std
        else f"the variant's init, N(0, {'/'.join(f'{v:g}' for v in net.network.weight_std)}) in conv1..fc8"
    )
    augment = net.augment
    code = [
        f"biases at {config.bias_lr:g}x the rate" if config.bias_lr != 1 else "",
        ("biases not decayed" if config.bias_wd == 0 else f"biases decayed {config.bias_wd:g}x")
        if config.bias_wd != 1
        else "",
        f"{augment.crop_chunk} images a crop" if augment.crop_chunk > 1 else "",
        "PCA lighting by the components' std, the crop ÷ (1 + sigma)"
        if augment.pca and augment.lighting == "code-2012"
        else "",
    ]
    mean = net.augment.mean
    pixels = (
        "pixels normalised by ImageNet's mean and std (torchvision)"
        if mean == "torchvision"
        else f"pixels minus {MEANS[mean]}, scaled to unit std"
        if net.augment.scale != 1.0
        else f"raw 0-255 pixels minus {MEANS[mean]}"
    )
    return (
        f"recipe: {config.recipe}, chosen by {config.recipe_reason}"
        + (
            " (§5's recipe stalls at ln(classes) on small data sets: docs/training.md)"
            if auto_quick
            else ""
        )
        + f": {init}; {pixels}; {config.optimizer} lr {config.lr:g}, {SCHEDULES[config.schedule]}"
        + "".join(f"; {words}" for words in code if words)
        + "".join(f"; {tool}" for tool in run_config.tools_on(config))
        + (". §5's recipe: --recipe paper" if config.recipe == "quick" else "")
    )


# A GPU's share of a step below this many images is mostly launch overhead (the paper net's kernels on a few
# images each last about as long as their launch on an H100): more GPUs then add little
SMALL_SHARE = 64


def share_note(batch: int, world: int, device: torch.device) -> str:
    """What each process takes of the global batch: §5's 128 stays the global batch under torchrun (faithful:
    the same steps one process takes), so each process takes batch / world rows."""
    low, high = batch // world, -(-batch // world)
    each = f"{low}" if low == high else f"{low}-{high}"
    note = f"rows of each batch shared out: {each} images a process of the global batch {batch}"
    if device.type == "cuda" and high < SMALL_SHARE:
        note += (
            f"; with under {SMALL_SHARE} images a GPU step is mostly kernel launches, so {world} GPUs may train "
            "little faster than one: a larger --batch-size (not §5's; docs/imagenet.md)"
        )
    return note


def record_config(ctx: Context, data: Data, net: Net) -> None:
    """Say what runs in the first lines, and write the same into config.json."""
    config, recipe, say = ctx.config, recipes.RECIPES[ctx.config.recipe], ctx.say
    say(recipe_line(config, net))
    classes = data.dataset.classes
    share = share_note(config.batch_size, ctx.process.world, ctx.placement.first)
    say(
        f"{net.network.name}: {sum(p.numel() for p in net.model.parameters()):,} parameters; data {config.data}: "
        f"{len(classes)} classes, train {len(data.train)}, val {len(data.val)}; {ctx.placement.note}"
        + (
            f" x {ctx.process.world} processes ({share}; "
            f"a collective waits at most {distributed.group_timeout():g} s: ${distributed.TIMEOUT_ENV})"
            if ctx.process.world > 1
            else ""
        )
        + f"; {plural(config.epochs, 'epoch')} of batch {config.batch_size}"
    )
    changes = None
    # what this run used of the four things the recipe changes, as the run uses them
    if config.recipe == "quick":
        changes = {
            "init": net.network.init,
            "scale": net.augment.scale,  # 1/pixel std; 1 where --mean torchvision normalises instead
            "optimizer": config.optimizer,
            "lr": config.lr,
            "schedule": config.schedule,
        }
        if not net.alexnet:
            del changes["init"]
    ctx.writer.config(
        {
            **run_config.as_record(config),
            "quick_changes": changes,
            "recipe_settings": dataclasses.asdict(recipe),
            "model": dataclasses.asdict(net.network),
            "augment": dataclasses.asdict(net.augment),
            "classes": classes,
            "train_images": len(data.train),
            "val_images": len(data.val),
            "pca_source": data.stats.pca_source,
            "devices": [str(d) for d in ctx.placement.devices],
            "channels_last": ctx.placement.channels_last,
            "cuda_settings": ctx.cuda or None,
            "processes": ctx.process.world,
            "versions": {
                "paper_alexnet": paper_alexnet.__version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "checkpoint_format": checkpoint.FORMAT,
            },
        }
    )


# --- 5. the epochs ---------------------------------------------------------------------------------------


def snapshot(
    ctx: Context,
    data: Data,
    net: Net,
    epoch: int,
    best: float,
    rows: List[dict],
    progress: Optional[EpochProgress] = None,
) -> Checkpoint:
    """The checkpoint after ``epoch`` epochs, and ``progress.steps`` batches into the next when stopped there."""
    return Checkpoint(
        model=net.scored.state_dict(),
        trained=net.model.state_dict() if net.average is not None else None,
        variant=net.network.name,
        classes=list(data.dataset.classes),
        augment=dataclasses.asdict(net.augment),
        init=net.network.init,
        stats=Checkpoint.stats_entry(
            data.stats
        ),  # §2/§4.1 travel with the weights: predict needs no data
        data=ctx.config.data,
        two_tower=ctx.placement.two_tower,
        epoch=epoch,
        best_val_top1_err=best,
        metrics=[dict(r) for r in rows],
        optimizer=net.optimizer.state_dict(),
        schedule=net.schedule.state_dict(),
        # dropout's RNG is seeded from (seed, epoch, rank, step) at every step: distributed.dropout_seed
        rng={"augment": net.generator.get_state()},
        step=progress.steps if progress else 0,
        progress={k: v for k, v in dataclasses.asdict(progress).items() if k != "stopped"}
        if progress
        else None,
    )


def train_epochs(
    ctx: Context, data: Data, net: Net, resumed: Optional[Checkpoint], stop: StopOnSignal
) -> Tuple[Optional[int], List[dict], Optional[tuple]]:
    """The epochs of §5, each trained, validated and written. Returns the exit status, None when every epoch
    ran (Exit.DIVERGED: the loss became NaN/inf; Exit.STALLED; Exit.SIGTERM/SIGINT: stopped), metrics.csv's
    rows, and (epoch, metrics.Predictions) of the best epoch this process validated (None: none yet)."""
    config = ctx.config
    rows, best, start_epoch, progress = [], math.inf, 1, EpochProgress()
    best_predictions = None
    if resumed is not None:
        rows, best = [dict(r) for r in resumed.metrics], resumed.best_val_top1_err
        start_epoch = resumed.epoch + 1
        if resumed.step:
            progress = EpochProgress(**resumed.progress)
        ctx.say(
            f"resuming {config.resume or ctx.writer.path('checkpoint.pt')} after epoch {resumed.epoch}"
            + (f" and {resumed.step} steps of epoch {start_epoch}" if resumed.step else "")
        )
    per_epoch = math.ceil(len(data.train) / config.batch_size)
    watch = RunWatch(config, net.alexnet, len(data.dataset.classes), per_epoch)
    unreadable: dict = {}  # (split, path, reason) -> None, in the order met
    for epoch in range(start_epoch, config.epochs + 1):
        lr = net.optimizer.param_groups[0]["lr"]
        # the 2012 run's schedule turns PCA lighting off for its last epochs (optim.HandSchedule)
        lighting = getattr(net.schedule, "lighting", None)
        net.transform.lighting_on = lighting(epoch) if lighting is not None else True
        try:
            progress, steps, skipped = one_epoch(ctx, data, net, epoch, progress, watch, stop)
        except NonFiniteLoss as err:
            ctx.say(
                f"error: {err}; stopped. The last good checkpoint ({ctx.writer.path('checkpoint.pt')}) is "
                f"kept. Lower --lr, or use --recipe quick."
            )
            return Exit.DIVERGED, rows, best_predictions
        if progress.stopped and progress.steps < steps:  # mid-epoch: save this very step
            ctx.writer.checkpoint(snapshot(ctx, data, net, epoch - 1, best, rows, progress))
            if watch.stopping:
                ctx.say(watch.stopped())
                return Exit.STALLED, rows, best_predictions
            return (
                _stopped(
                    ctx,
                    stop,
                    f"after step {progress.steps} of {steps} of epoch {epoch}"
                    + _every_process_at(ctx.process, progress.steps),
                ),
                rows,
                best_predictions,
            )
        val = score(ctx, data, net, per_image=True)
        row = MetricsRow.of(epoch, lr, progress, val)
        rows.append(row.as_dict())
        progress = EpochProgress()
        name_unreadable(
            ctx,
            unreadable,
            [("train", *s) for s in skipped] + [("val", *s) for s in val["skipped"]],
        )
        dropped = net.schedule.step(val["top1_err"])
        improved = val["top1_err"] < best
        best = min(best, val["top1_err"])
        if improved:
            best_predictions = (epoch, val["predictions"])
        ctx.say(epoch_line(row, net.optimizer.param_groups[0]["lr"] if dropped else None))
        ctx.writer.epoch(rows, snapshot(ctx, data, net, epoch, best, rows), improved)
        if watch.stopping and epoch < config.epochs:  # at the epoch's last step
            ctx.say(watch.stopped())
            return Exit.STALLED, rows, best_predictions
        # a signal during validation
        if distributed.all_sum([float(stop())])[0] and epoch < config.epochs:
            return (
                _stopped(
                    ctx,
                    stop,
                    f"at the end of epoch {epoch}" + _every_process_at(ctx.process, steps),
                ),
                rows,
                best_predictions,
            )
    return None, rows, best_predictions


def one_epoch(
    ctx: Context,
    data: Data,
    net: Net,
    epoch: int,
    progress: EpochProgress,
    watch: RunWatch,
    stop: StopOnSignal,
) -> Tuple[EpochProgress, int, list]:
    """One epoch's steps (from ``progress.steps`` on), with its progress bar and the watch's warnings; stops
    after the step at which a signal came or a stall ends the run. Returns the progress, the epoch's steps,
    and the unreadable files (path, reason) it left out."""
    from tqdm.auto import tqdm

    config, process = ctx.config, ctx.process
    loader = BatchLoader(
        data.train,
        config.batch_size,
        seed=config.seed,
        epoch=epoch,
        workers=data.workers,
        strict=config.strict,
        rank=process.rank,
        world=process.world,
        start_batch=progress.steps,
        device=ctx.placement.first,
        decode=config.decode,
    )
    steps = progress.steps + len(loader)
    bar = tqdm(
        total=steps,
        initial=progress.steps,
        desc=f"epoch {epoch}/{config.epochs}",
        unit="batch",
        disable=config.quiet,
        leave=False,
    )

    def on_step(step, value, hits, images):
        bar.update(1)
        rate = bar.format_dict.get("rate")  # batches/s, smoothed
        bar.set_postfix(
            {"loss": f"{value:.3f}", **({"img/s": f"{rate * images:.0f}"} if rate else {})}
        )
        warning = watch.step(value, hits, images)
        if warning is not None and process.main:
            bar.write(file=sys.stderr, s=warning)

    try:
        progress = train_one_epoch(
            net.trained,
            loader,
            net.transform,
            net.optimizer,
            net.generator,
            StepPlace(
                ctx.placement.first,
                amp=config.amp,
                channels_last=ctx.placement.channels_last,
                rank=process.rank,
                world=process.world,
                seed=lambda step: distributed.dropout_seed(config.seed, epoch, process.rank, step),
                stop=lambda: stop() or watch.stopping,
            ),
            StepTools(Mixing(config.mixup, config.cutmix), config.label_smoothing, net.average),
            progress=progress,
            on_step=on_step,
        )
    finally:
        bar.close()
    return progress, steps, loader.skipped


def score(
    ctx: Context, data: Data, net: Net, ten_crop: bool = False, per_image: bool = False
) -> dict:
    """The validation split's loss and errors (§6): on the centre crop, or on ten crops (§4.1, with a bar);
    ``per_image``: with each image's predictions."""
    config = ctx.config
    return evaluate(
        net.scored,
        data.val,
        net.transform,
        device=ctx.placement.first,
        batch_size=config.batch_size,
        ten_crop=ten_crop,
        workers=data.workers,
        strict=config.strict,
        amp=config.amp,
        progress=ten_crop and not config.quiet,
        decode=config.decode,
        rank=ctx.process.rank,
        world=ctx.process.world,
        per_image=per_image,
    )


def epoch_line(row: MetricsRow, dropped_to: Optional[float]) -> str:
    return (
        f"epoch {row.epoch}: train loss {row.train_loss:.3f} top-1 {percent(row.train_top1_err)} | "
        f"val loss {row.val_loss:.3f} top-1 {percent(row.val_top1_err)} "
        f"top-5 {percent(row.val_top5_err)} | {row.images_per_s:.1f} img/s, {row.seconds:.0f} s"
        + (
            f" | {plural(row.skipped_files, 'unreadable file')} skipped"
            if row.skipped_files
            else ""
        )
        + (f" | lr -> {dropped_to:g}" if dropped_to is not None else "")
    )


def name_unreadable(ctx: Context, known: dict, met: List[tuple]) -> None:
    """The unreadable files an epoch met that no earlier one did: named in one line, and every one of them
    in the run's unreadable.csv."""
    new = [item for item in dict.fromkeys(tuple(m) for m in met) if item not in known]
    if not new:
        return
    known.update(dict.fromkeys(new))
    listed = ctx.writer.unreadable(list(known))
    if ctx.process.main:
        say_skipped([(path, reason) for _, path, reason in new], "this run's data", listed)


def _every_process_at(process: distributed.Process, steps: int) -> str:
    """The words " on all N processes", once every process has said it stopped after ``steps`` steps too (the
    vote in engine.train_one_epoch makes them stop together; rank 0's checkpoint is then every rank's state)."""
    if process.world == 1:
        return ""
    each = [int(n) for n in distributed.each(steps, process)]
    if len(set(each)) > 1:
        raise RuntimeError(
            f"the processes stopped after different steps ({each}): the checkpoint is rank 0's"
        )
    return f" on all {process.world} processes"


def _stopped(ctx: Context, stop: StopOnSignal, where: str) -> int:
    ctx.say(
        f"stopped by {stop.name or 'a signal on another process'} {where}: checkpoint written to "
        f"{ctx.writer.path('checkpoint.pt')}; continue with the same command and --resume"
    )
    return stop.exit_code if stop.received else Exit.SIGTERM


# --- 6. the end ------------------------------------------------------------------------------------------


def finish(
    ctx: Context,
    data: Data,
    net: Net,
    rows: List[dict],
    best_predictions: Optional[tuple],
    stop: StopOnSignal,
) -> int:
    """result.json: the best epoch's errors (what best.pt holds), and its ten-crop errors when asked (skipped
    when a signal came: ``--resume`` then does only this)."""
    config = ctx.config
    best_row = min(rows, key=lambda r: r["val_top1_err"])
    result = {
        "best_epoch": best_row["epoch"],
        "val_top1_err": best_row["val_top1_err"],
        "val_top5_err": best_row["val_top5_err"],
        "ten_crop_top1_err": None,
        "ten_crop_top5_err": None,
        "flip_top1_err": None,
        "flip_top5_err": None,
    }
    stopped = distributed.all_sum([float(stop())])[0] > 0
    centre, ten = best_predictions, None
    if centre is not None and centre[0] != best_row["epoch"]:
        centre = None  # of a later epoch than best.pt's (a resumed run's)
    per_class = not stopped  # after a signal, --resume does the rest
    if centre is None and not config.ten_crop and not os.path.exists(ctx.writer.path("best.pt")):
        ctx.say(
            f"note: no per-class files: best.pt (epoch {best_row['epoch']}) is not in {config.out}"
        )
        per_class = False
    if (config.ten_crop or centre is None) and per_class:
        distributed.barrier()  # best.pt is written by rank 0
        best = ctx.writer.best()
        net.scored.load_state_dict(best.model)
        if centre is None:  # resumed after the best epoch
            centre = (best.epoch, score(ctx, data, net, per_image=True)["predictions"])
        if config.ten_crop:
            val = score(ctx, data, net, ten_crop=True, per_image=True)
            ten = val["predictions"]
            result.update(
                ten_crop_top1_err=val["top1_err"],
                ten_crop_top5_err=val["top5_err"],
                flip_top1_err=val["flip_top1_err"],
                flip_top5_err=val["flip_top5_err"],
            )
            ctx.say(
                f"best.pt (epoch {best.epoch}), test-time averaging: top-1 "
                f"{percent(best_row['val_top1_err'])} on the centre crop, "
                f"{percent(val['flip_top1_err'])} with its reflection, "
                f"{percent(val['top1_err'])} on ten crops (§4.1); top-5 {percent(val['top5_err'])} "
                "on ten crops"
            )
    if per_class and ctx.process.main:
        found = class_report.write(
            config.out,
            data.dataset.classes,
            centre[1],
            ten,
            split=data.val,
            crop=net.transform.augment.crop,
        )
        result.update(
            val_mean_class_top1_err=found["mean_class_top1_err"],
            val_mean_class_acc=found["mean_class_acc"],
            val_weakest=found["weakest"],
        )
        ctx.say(f"best.pt (epoch {centre[0]}): {class_report.line(found)}")
    ctx.writer.result(result)
    # a signal during the last epoch's validation: the status says so, --resume does the rest
    if stopped:
        skipped = "the per-class files" + (
            " and the ten-crop evaluation" if config.ten_crop else ""
        )
        return _stopped(ctx, stop, f"before {skipped}")
    ctx.say(
        f"done: best val top-1 error {percent(best_row['val_top1_err'])} (chance "
        f"{100 * (1 - 1 / len(data.dataset.classes)):.0f}%); results in {config.out}"
    )
    return Exit.OK


if __name__ == "__main__":
    # sys.exit, but a torchrun rank skips the teardown (distributed.end)
    distributed.end(as_program(main))
