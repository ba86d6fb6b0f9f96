"""Train an AlexNet as the paper did (§5), on any data set: ``python -m reproduce.train``.

With no arguments: the `paper` net on the built-in synthetic data, on the CPU
when there is no GPU, in a few minutes. Everything a run makes goes into
``--out``: config.json, metrics.csv (one row per epoch), checkpoint.pt (latest),
best.pt (lowest validation top-1 error), result.json (best.pt's errors, ten-crop
ones with ``--ten-crop``), curves.png, and TensorBoard events
with ``--tensorboard``. A killed run continues with ``--resume``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import sys
from typing import Optional, Sequence

import numpy as np
import torch

import paper_alexnet
from paper_alexnet import ArchConfig, distributed, list_switches, list_variants, paper
from paper_alexnet.cpu_memory import keep_freed_memory
from paper_alexnet.data import PaperTransform, open_dataset
from paper_alexnet.data.loader import BatchLoader
from paper_alexnet.engine import (CheckpointError, NonFiniteLoss, evaluate, is_stalled, load_checkpoint,
                                  save_checkpoint, share_checkpoint, train_one_epoch)
from paper_alexnet.networks import OTHER_NETS, get_network
from paper_alexnet.optim import build_optimizer, build_schedule
from reproduce.args import UsageError, add_data_arguments, augment_from_args, exit_code
from reproduce.figures import pyplot, save
from reproduce.placement import add_device_arguments, build_placed, place

METRICS = ("epoch", "lr", "train_loss", "train_top1_err", "val_loss", "val_top1_err", "val_top5_err",
           "images_per_s", "seconds", "skipped_files")
# What `--recipe quick` changes from the paper's recipe, and why (measured: docs/training.md).
QUICK = {"init": "he", "scale": "1/pixel std", "optimizer": "adam", "lr": 1e-4}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train an AlexNet with the paper's recipe (§5) and data pipeline (§2, §4.1); "
                    "report top-1/top-5 error (§6).")
    parser.add_argument("--variant", default="paper",
                        help=f"network: {', '.join(list_variants())}, with switches "
                             f"({', '.join(list_switches())}) joined by '+', e.g. paper+no-lrn; or a net to "
                             f"compare with: {', '.join(OTHER_NETS)} (figure1+tanh)")
    parser.add_argument("--recipe", choices=("auto", "paper", "quick"), default="auto",
                        help="paper: §5 exactly (init N(0, 0.01), biases 1, raw pixels, SGD 0.01); "
                             "quick: the measured remedy for the §5 stall on short runs (He init, pixels "
                             "scaled to unit std, Adam 1e-4); auto: quick on the built-in synthetic data, "
                             "paper elsewhere")
    add_data_arguments(parser)
    add_device_arguments(parser)
    opt = parser.add_argument_group("optimisation (§5)")
    opt.add_argument("--epochs", type=int, default=None,
                     help=f"passes over the training set (default: {paper.EPOCHS} for imagenet, 30 for other "
                          f"real data, 4 for synthetic)")
    opt.add_argument("-b", "--batch-size", type=int, default=None,
                     help=f"images per step (default: {paper.BATCH_SIZE}; 16 for synthetic)")
    opt.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=None,
                     help="sgd is the paper's exact rule (PaperSGD) (default: sgd; adam with --recipe quick)")
    opt.add_argument("--lr", type=float, default=None,
                     help=f"learning rate (default: {paper.LEARNING_RATE}; 1e-4 for adam)")
    opt.add_argument("--momentum", type=float, default=paper.MOMENTUM, help="SGD momentum (§5)")
    opt.add_argument("--wd", type=float, default=paper.WEIGHT_DECAY, help="weight decay (§5: inside the velocity)")
    opt.add_argument("--schedule", choices=("plateau", "step", "cosine", "none"), default="plateau",
                     help="plateau: divide by 10 when val error stops improving, at most 3 times (§5)")
    opt.add_argument("--patience", type=int, default=1, help="plateau: epochs without a new best before a drop")
    opt.add_argument("--step-size", type=int, default=30, help="step: epochs between drops by 10")
    run = parser.add_argument_group("run")
    run.add_argument("--out", default=None, metavar="DIR", help="output folder (default: runs/<variant>-<data>)")
    run.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                     help="continue from a checkpoint (default: DIR/checkpoint.pt)")
    run.add_argument("--seed", type=int, default=0, help="seeds init, data order, augmentation and dropout")
    run.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    run.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    run.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events to DIR/tb")
    run.add_argument("--pretrained", default=None, metavar="PATH",
                     help="start from a local weights file: a checkpoint of this package or a torchvision "
                          "AlexNet state dict (with --variant torchvision); fc8 is re-initialised when the "
                          "class count differs")
    run.add_argument("--freeze-features", action="store_true", help="with --pretrained: train fc6..fc8 only")
    run.add_argument("--limit-train", type=int, default=None, metavar="N", help="use N training images (seeded)")
    run.add_argument("--limit-val", type=int, default=None, metavar="N", help="use N validation images (seeded)")
    run.add_argument("--ten-crop", action="store_true", help="also evaluate best.pt with ten crops at the end (§4.1)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on the data and recipe; refuse bad values before any work."""
    kind = args.data.partition(":")[0].partition("?")[0]
    if args.recipe == "auto":
        args.recipe = "quick" if kind == "synthetic" else "paper"
    quick = args.recipe == "quick"
    if args.epochs is None:
        args.epochs = {"imagenet": paper.EPOCHS, "synthetic": 4}.get(kind, 30)
    if args.batch_size is None:
        args.batch_size = 16 if kind == "synthetic" else paper.BATCH_SIZE
    if args.optimizer is None:
        args.optimizer = QUICK["optimizer"] if quick else "sgd"
    if args.lr is None:
        args.lr = QUICK["lr"] if args.optimizer in ("adam", "adamw") else paper.LEARNING_RATE
    checks = [(args.epochs >= 1, f"--epochs must be at least 1, not {args.epochs}"),
              (args.batch_size >= 1, f"--batch-size must be at least 1, not {args.batch_size}"),
              (args.lr > 0, f"--lr must be positive, not {args.lr}"),
              (args.patience >= 1, "--patience must be at least 1"),
              (args.limit_train is None or args.limit_train >= 1, "--limit-train must be at least 1"),
              (args.limit_val is None or args.limit_val >= 1, "--limit-val must be at least 1"),
              (not args.freeze_features or args.pretrained, "--freeze-features needs --pretrained PATH")]
    alexnet = isinstance(get_network(args.variant), ArchConfig)       # an unknown name stops here
    checks.append((alexnet or not args.pretrained, f"--pretrained loads AlexNet weights, not {args.variant}'s"))
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    if args.out is None:
        args.out = os.path.join("runs", f"{args.variant}-{kind}")
    return args


def _subset(split, limit: Optional[int], seed: int):
    if limit is None or limit >= len(split):
        return split
    return split.subset(np.sort(np.random.default_rng(seed).permutation(len(split))[:limit]))


def _write_metrics(path: str, rows: list) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRICS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _write_json(path: str, value) -> None:
    with open(f"{path}.tmp", "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1, default=str)
    os.replace(f"{path}.tmp", path)


def plot_curves(rows: list, path: str, title: str = "") -> None:
    """Loss and error (top-1/top-5, §6) per epoch, train and validation."""
    plt = pyplot()

    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    left.plot(epochs, [r["val_loss"] for r in rows], "o-", label="validation")
    left.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    for key, label in (("train_top1_err", "train top-1"), ("val_top1_err", "val top-1"), ("val_top5_err", "val top-5")):
        right.plot(epochs, [100 * r[key] for r in rows], "o-", label=label)
    right.set(xlabel="epoch", ylabel="error (%)", title="error", ylim=(0, 100))
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)


def load_pretrained(model: torch.nn.Module, path: str, log) -> None:
    """Weights from a checkpoint of this package or a torchvision AlexNet state dict; fc8 kept when sizes differ."""
    from paper_alexnet.weights import TORCHVISION_NAMES, load_torchvision_weights

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"--pretrained {path} does not exist") from None
    except Exception as err:  # noqa: BLE001
        raise UsageError(f"--pretrained {path} is unreadable ({type(err).__name__})") from None
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    fc8 = model.fc8.weight.shape
    if any(key in state for key in TORCHVISION_NAMES):
        skip = ("fc8",) if tuple(state.get("classifier.6.weight", torch.empty(0)).shape) != tuple(fc8) else ()
        load_torchvision_weights(model, state, skip=skip)
    else:
        skip = ("fc8",) if tuple(state.get("fc8.weight", torch.empty(0)).shape) != tuple(fc8) else ()
        state = {k: v for k, v in state.items() if not (skip and k.startswith("fc8."))}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("fc8.")]:
            raise UsageError(f"--pretrained {path} does not fit --variant {model.config.name}: "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    log(f"pretrained weights from {path}" + (" (fc8 re-initialised for the new classes)" if skip else ""))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    keep_freed_memory()                 # glibc: no page faults on conv1's 37 MB maps every step (cpu_memory.py)
    return exit_code(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    args = resolve(args)
    process = distributed.from_env()
    try:
        return _run(args, process)
    finally:
        distributed.stop()


def _run(args: argparse.Namespace, process: distributed.Process) -> int:
    placement = place(args, get_network(args.variant), process.local_rank)
    device = placement.first                # input, labels and logits live here
    config_path = os.path.join(args.out, "config.json")
    checkpoint_path = os.path.join(args.out, "checkpoint.pt")
    resume_path = None
    if args.resume is not None:
        resume_path = args.resume or checkpoint_path
        resumed = load_checkpoint(resume_path)
    elif os.path.exists(config_path) or os.path.exists(checkpoint_path):
        raise UsageError(f"{args.out} already holds a run: --resume to continue it, or choose another --out")
    distributed.start(process, device)      # after the checks above: bad input stops every rank alike
    args.quiet = args.quiet or not process.main
    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    say = (lambda line: print(line, file=sys.stderr)) if process.main else log  # always shown on rank 0

    with distributed.main_first(process):   # rank 0 builds any cached store and statistics first
        dataset = open_dataset(args.data, download=args.download, progress=not args.quiet, report=log)
        stats = dataset.stats(progress=not args.quiet, report=log)
    for note in dataset.notes:
        log(note)
    train_split = _subset(dataset.split("train"), args.limit_train, args.seed)
    val_split = _subset(dataset.split("val"), args.limit_val, args.seed + 1)
    quick = args.recipe == "quick"
    torch.manual_seed(args.seed)
    model_config = get_network(args.variant, num_classes=len(dataset.classes))
    alexnet = isinstance(model_config, ArchConfig)     # the comparison nets keep their own init
    if quick and alexnet:
        model_config = dataclasses.replace(model_config, init=QUICK["init"])
    augment = augment_from_args(args, model_config.input_size)
    if quick and augment.mean != "torchvision":
        augment.scale = float(1.0 / stats.channel_std.mean())
    model = build_placed(model_config, placement)
    if resume_path is not None and resumed.get("variant") != model_config.name:
        raise CheckpointError(f"{resume_path} is a checkpoint of '{resumed.get('variant')}', not '{model_config.name}'")
    if resume_path is not None and resumed.get("two_tower", False) != placement.two_tower:
        raise CheckpointError(f"{resume_path} was trained {'with' if resumed.get('two_tower') else 'without'} "
                              f"--two-gpu; resume it the same way (its weights load either way: reproduce.evaluate)")
    if args.pretrained and resume_path is None:
        load_pretrained(model, args.pretrained, log)
    if args.freeze_features:
        for name, weight in model.named_parameters():
            if name.split(".")[-2].startswith("conv"):
                weight.requires_grad_(False)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    # `net` is what trains (DDP under torchrun); `model` is what is saved and scored.
    net = distributed.wrap(model, process, None if placement.two_tower else device)
    optimizer = build_optimizer(args.optimizer, [p for p in model.parameters() if p.requires_grad],
                                args.lr, args.momentum, args.wd)
    schedule = build_schedule(args.schedule, optimizer, args.epochs, args.patience, args.step_size)
    transform = PaperTransform(stats, augment, device=device)
    generator = torch.Generator().manual_seed(args.seed)

    rows, start_epoch, best = [], 1, math.inf
    if resume_path is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["schedule"])
        generator.set_state(resumed["rng"]["augment"])
        rows, best = [dict(r) for r in resumed["metrics"]], resumed["best_val_top1_err"]
        start_epoch = resumed["epoch"] + 1
        say(f"resuming {resume_path} after epoch {resumed['epoch']}")
    if process.main:
        os.makedirs(args.out, exist_ok=True)

    # Announce what runs, in the first lines and in config.json.
    if quick:
        say("recipe: quick (not the paper's §5 recipe, which stalls at ln(classes) on short runs; see "
            f"docs/training.md): {'He init with zero biases' if alexnet else 'the net keeps its own init'}, pixels "
            f"scaled to unit std, {args.optimizer} lr {args.lr}. The paper's recipe: --recipe paper")
    elif not alexnet:
        say(f"recipe: paper (§5) optimiser and data for {model_config.name}, which keeps its own init; "
            f"{args.optimizer} lr {args.lr}")
    else:
        mean = {"image": "the mean image (§2)", "channel": "the per-channel mean", "none": "nothing",
                "torchvision": "ImageNet mean/std (torchvision)"}[augment.mean]
        say(f"recipe: paper (§5): init N(0, 0.01) with biases 1 in conv2/4/5, fc6/7; raw pixels minus "
            f"{mean}; {args.optimizer} lr {args.lr}")
    say(f"{model_config.name}: {sum(p.numel() for p in model.parameters()):,} parameters; data {args.data}: "
        f"{len(dataset.classes)} classes, train {len(train_split)}, val {len(val_split)}; {placement.note}"
        + (f" x {process.world} processes (rows of each batch shared out)" if process.world > 1 else "")
        + f"; {args.epochs} epochs of batch {args.batch_size}")
    changes = {k: v for k, v in QUICK.items() if alexnet or k != "init"} if quick else None
    config = {"args": vars(args), "recipe": args.recipe, "quick_changes": changes,
              "model": dataclasses.asdict(model_config), "augment": dataclasses.asdict(augment),
              "classes": dataset.classes,
              "train_images": len(train_split), "val_images": len(val_split), "pca_source": stats.pca_source,
              "devices": [str(d) for d in placement.devices], "processes": process.world,
              "versions": {"paper_alexnet": paper_alexnet.__version__,
                                                  "torch": torch.__version__, "python": platform.python_version()}}
    if process.main:
        _write_json(config_path, config)
    writer = None
    if args.tensorboard and process.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(args.out, "tb"))

    from tqdm.auto import tqdm

    # The §2 mean image and §4.1 PCA travel with the weights, so predict needs no training data.
    stats_payload = {"mean_image": torch.as_tensor(stats.mean_image), "eigval": torch.as_tensor(stats.eigval),
                     "eigvec": torch.as_tensor(stats.eigvec), "pca_source": stats.pca_source}
    losses: list = []
    warned = False
    for epoch in range(start_epoch, args.epochs + 1):
        torch.manual_seed(distributed.dropout_seed(args.seed, epoch, process.rank))
        loader = BatchLoader(train_split, args.batch_size, seed=args.seed, epoch=epoch, workers=args.workers,
                             strict=args.strict, pin_memory=device.type == "cuda", rank=process.rank,
                             world=process.world)
        bar = tqdm(total=len(loader), desc=f"epoch {epoch}/{args.epochs}", unit="batch", disable=args.quiet,
                   leave=False)

        def on_step(step, value):
            nonlocal warned
            losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
            if not warned and is_stalled(losses, len(dataset.classes)):
                warned = True
                bar.write(f"warning: the loss has stayed at ln({len(dataset.classes)}) = "
                          f"{math.log(len(dataset.classes)):.3f} for {len(losses)} steps: the net predicts the "
                          f"uniform distribution. " + (
                              "With He init (or a net's own) this usually means too high a learning rate: "
                              "try a lower --lr." if quick or not alexnet else
                              "The paper's init (§5: N(0, 0.01), biases 1) is known to stall like this "
                              "(BVLC/caffe#401, #2085). Try --recipe quick, or a lower --lr, or wait: the "
                              "paper's own runs left it after many epochs."))

        lr = optimizer.param_groups[0]["lr"]
        try:
            result = train_one_epoch(net, loader, transform, optimizer, generator, device=device, amp=args.amp,
                                     channels_last=args.channels_last, rank=process.rank, world=process.world,
                                     on_step=on_step)
        except NonFiniteLoss as err:
            bar.close()
            say(f"error: {err}; stopped. The last good checkpoint ({checkpoint_path}) is kept. "
                f"Lower --lr, or use --recipe quick.")
            return 3
        bar.close()
        val = evaluate(model, val_split, transform, device=device, batch_size=args.batch_size,
                       workers=args.workers, strict=args.strict, amp=args.amp, rank=process.rank,
                       world=process.world)
        row = {"epoch": epoch, "lr": lr, "train_loss": result["train_loss"],
               "train_top1_err": result["train_top1_err"], "val_loss": val["loss"], "val_top1_err": val["top1_err"],
               "val_top5_err": val["top5_err"], "images_per_s": result["images"] / result["seconds"],
               "seconds": result["seconds"], "skipped_files": len(loader.skipped) + val["skipped_files"]}
        rows.append(row)
        dropped = schedule.step(val["top1_err"])
        improved = val["top1_err"] < best
        best = min(best, val["top1_err"])
        say(f"epoch {epoch}: train loss {row['train_loss']:.3f} top-1 {100 * row['train_top1_err']:.1f}% | "
            f"val loss {row['val_loss']:.3f} top-1 {100 * row['val_top1_err']:.1f}% "
            f"top-5 {100 * row['val_top5_err']:.1f}% | {row['images_per_s']:.1f} img/s, {row['seconds']:.0f} s"
            + (f" | {row['skipped_files']} unreadable files skipped" if row["skipped_files"] else "")
            + (f" | lr -> {optimizer.param_groups[0]['lr']:g}" if dropped else ""))
        if not process.main:
            continue
        # RNG: the augmentation generator's state; dropout's is seeded from (seed, epoch, rank) each epoch.
        rng = {"augment": generator.get_state()}
        payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                   "epoch": epoch, "best_val_top1_err": best, "variant": model_config.name,
                   "classes": list(dataset.classes), "rng": rng, "metrics": [dict(r) for r in rows],
                   "augment": dataclasses.asdict(augment), "init": model_config.init, "data": args.data,
                   "two_tower": placement.two_tower, "stats": stats_payload}
        save_checkpoint(checkpoint_path, payload)
        if improved:                          # the same bytes: a link, not a second 0.65 GB write
            share_checkpoint(checkpoint_path, os.path.join(args.out, "best.pt"))
        _write_metrics(os.path.join(args.out, "metrics.csv"), rows)
        plot_curves(rows, os.path.join(args.out, "curves.png"), f"{model_config.name} on {args.data}")
        if writer is not None:
            for key in METRICS[1:]:
                writer.add_scalar(key, row[key], epoch)
            writer.flush()
    if writer is not None:
        writer.close()
    # result.json: the best epoch's errors (what best.pt holds), and its ten-crop errors when asked
    best_row = min(rows, key=lambda r: r["val_top1_err"])
    result = {"best_epoch": best_row["epoch"], "val_top1_err": best_row["val_top1_err"],
              "val_top5_err": best_row["val_top5_err"], "ten_crop_top1_err": None, "ten_crop_top5_err": None}
    if args.ten_crop:
        distributed.barrier()                # best.pt is written by rank 0
        best_state = load_checkpoint(os.path.join(args.out, "best.pt"))
        model.load_state_dict(best_state["model"])
        val = evaluate(model, val_split, transform, device=device, batch_size=args.batch_size, ten_crop=True,
                       workers=args.workers, amp=args.amp, progress=not args.quiet, rank=process.rank,
                       world=process.world)
        result.update(ten_crop_top1_err=val["top1_err"], ten_crop_top5_err=val["top5_err"])
        say(f"best.pt (epoch {best_state['epoch']}), ten crops: top-1 {100 * val['top1_err']:.1f}% "
            f"top-5 {100 * val['top5_err']:.1f}%")
    if process.main:
        _write_json(os.path.join(args.out, "result.json"), result)
    say(f"done: best val top-1 error {100 * best:.1f}% (chance {100 * (1 - 1 / len(dataset.classes)):.0f}%); "
        f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
