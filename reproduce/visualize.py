"""The paper's figures from your own runs: ``python -m reproduce.visualize filters|neighbors|curves``.

    python -m reproduce.visualize filters --checkpoint runs/paper-synthetic/best.pt          # Figure 3
    python -m reproduce.visualize neighbors --checkpoint runs/paper-synthetic/best.pt        # Figure 4
    python -m reproduce.visualize curves --run runs/paper-synthetic                          # or an ablation folder
    python -m reproduce.visualize curves --run runs/a runs/b --out compare.png              # several runs, one chart

Each writes a PNG and prints its path: filters and neighbors by default beside the checkpoint; curves by
default a new file in the current folder, never over the run's own curves.png or a grid's ablation.png.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from paper_alexnet import ArchConfig
from paper_alexnet import checkpoint
from paper_alexnet.atomic import atomic_write
from paper_alexnet.data import BadImageError, PaperTransform
from paper_alexnet.networks import get_network
from paper_alexnet.cli import HelpFormatter
from reproduce.training import run_config
from reproduce.common.args import (
    add_checkpoint_flag,
    named_weights,
    UsageError,
    add_data_flag,
    add_strict_flag,
    exit_code,
    say_skipped,
)
from reproduce.common.figures import drawable, plot_curves, pyplot, runs_figure, save
from reproduce.common.placement import add_device_arguments
from reproduce.common.restore import checkpoint_data, restore


# --- Figure 3: the conv1 kernels ------------------------------------------------------------------------------


def filter_mosaic(
    weight: torch.Tensor,
    towers: int = 2,
    columns: int = 12,
    zoom: int = 4,
    pad: int = 1,
    gap: int = 8,
) -> np.ndarray:
    """Figure 3 (§6.1): conv1's kernels (K x 3 x h x w) as one RGB image, K / towers kernels per tower in rows
    of ``columns``, the first tower's block above the second's. Each kernel is stretched to the full
    0-255 range on its own, then enlarged ``zoom`` times."""
    count, _, h, w = weight.shape
    per_tower = count // towers
    rows = -(-per_tower // columns)
    cell_h, cell_w = h * zoom + pad, w * zoom + pad
    height = towers * rows * cell_h + (towers - 1) * gap + pad
    mosaic = np.full((height, columns * cell_w + pad, 3), 255, dtype=np.uint8)
    for k in range(count):
        kernel = weight[k].detach().float().cpu()
        low, high = kernel.min(), kernel.max()
        kernel = (kernel - low) / (high - low) if high > low else torch.zeros_like(kernel)
        picture = (255 * kernel).round().byte().permute(1, 2, 0).numpy()
        picture = picture.repeat(zoom, axis=0).repeat(zoom, axis=1)
        tower, index = divmod(k, per_tower)
        row, col = divmod(index, columns)
        top = tower * (rows * cell_h + gap) + row * cell_h + pad
        left = col * cell_w + pad
        mosaic[top : top + h * zoom, left : left + w * zoom] = picture
    return mosaic


def kernel_chroma(weight: torch.Tensor) -> torch.Tensor:
    """How coloured each conv1 kernel (K x 3 x h x w) is: stretched to 0-1 on its own as Figure 3 shows it,
    the mean over its pixels of max(R, G, B) - min(R, G, B). 0 for a grey (colour-agnostic) kernel."""
    flat = weight.detach().float().cpu().flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    span = (high - low).clamp_min(1e-12)
    pictures = (weight.detach().float().cpu() - low[:, None, None, None]) / span[
        :, None, None, None
    ]
    return (pictures.max(1).values - pictures.min(1).values).flatten(1).mean(1)


def chroma_report(weight: torch.Tensor, towers: int) -> list:
    """One line per tower: its kernels' mean chroma (§6.1: one GPU's kernels are "largely color-agnostic",
    the other's "largely color-specific")."""
    chroma = kernel_chroma(weight)
    per = len(chroma) // towers
    lines = [
        f"tower {t + 1} (kernels {t * per + 1}-{(t + 1) * per}): mean chroma "
        f"{float(chroma[t * per : (t + 1) * per].mean()):.3f}"
        for t in range(towers)
    ]
    return lines + [
        "chroma: max(R,G,B) - min(R,G,B) of each kernel as drawn, 0 = grey; §6.1 finds one tower's "
        "kernels largely colour-agnostic, the other's colour-specific"
    ]


def filters(args) -> str:
    ckpt = checkpoint.load(args.checkpoint)
    weight = ckpt.model.get("conv1.weight")
    if weight is None:
        raise UsageError(f"{args.checkpoint} has no conv1 layer")
    config = get_network(ckpt.variant)
    towers = (
        config.towers
        if isinstance(config, ArchConfig) and weight.shape[0] % config.towers == 0
        else 1
    )
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "filters.png")
    for line in chroma_report(weight, towers):
        print(line)
    with atomic_write(out, "wb") as handle:
        Image.fromarray(filter_mosaic(weight, towers, args.columns, args.zoom)).save(
            handle, format="PNG"
        )
    return out


# --- Figure 4: nearest neighbours in fc7 space ---------------------------------------------------------------


def fc7_features(
    model: torch.nn.Module,
    split,
    transform: PaperTransform,
    device: torch.device,
    batch_size: int = 64,
    strict: bool = False,
) -> Tuple[torch.Tensor, list, list]:
    """§6.1: "the feature activations induced at the last, 4096-dimensional hidden layer": fc7 after its
    ReLU (the input of drop7), on the centre crop. Returns the N x 4096 features on the CPU, the indices
    into ``split`` they are of (an unreadable image has no row: row k is image ``kept[k]``), and the
    unreadable files (path, reason)."""
    if not hasattr(model, "drop7"):
        raise UsageError("neighbors needs an AlexNet checkpoint (its fc7 layer)")
    captured, kept, skipped = [], [], []
    hook = model.drop7.register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0].float().cpu())
    )
    try:
        with torch.no_grad():
            for start in range(0, len(split), batch_size):
                indices = range(start, min(start + batch_size, len(split)))
                images, _, bad = split.batch(indices, strict=strict)
                if bad:  # which ones: read alone (rare), so that rows and indices stay matched
                    indices = [i for i in indices if _readable(split, i)]
                    skipped += bad
                kept += list(indices)
                if len(images):
                    model(transform.center(images))
    finally:
        hook.remove()
    features = torch.cat(captured) if captured else torch.empty(0, 4096)
    return features, kept, skipped


def _readable(split, i: int) -> bool:
    try:
        split.load(i)
        return True
    except BadImageError:
        return False


def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The k rows of ``bank`` closest to each query by Euclidean distance (Figure 4): (distances, indices),
    both Q x k, nearest first."""
    distances = torch.cdist(queries.double(), bank.double())
    values, indices = distances.topk(min(k, len(bank)), dim=1, largest=False)
    return values, indices


def neighbors(args) -> str:
    if args.queries < 1 or args.k < 1:
        raise UsageError("--queries and -k must be at least 1")
    ckpt = checkpoint.load(args.checkpoint)
    dataset = checkpoint_data(ckpt, args.checkpoint, args.data)
    net = restore(args.checkpoint, args, dataset, ckpt)
    model, transform, placement = net.model, net.transform, net.placement
    rng = np.random.default_rng(args.seed)
    train_split, val_split = dataset.split("train"), dataset.split("val")
    if args.bank and args.bank < len(train_split):
        train_split = train_split.subset(np.sort(rng.permutation(len(train_split))[: args.bank]))
    query_split = val_split.subset(np.sort(rng.permutation(len(val_split))[: args.queries]))
    bank, kept, skipped = fc7_features(
        model, train_split, transform, placement.first, strict=args.strict
    )
    queries, asked, more = fc7_features(
        model, query_split, transform, placement.first, strict=args.strict
    )
    say_skipped(skipped + more, f"{dataset.spec} (left out of the bank and the queries)")
    if not len(bank) or not len(queries):
        raise UsageError(
            f"{dataset.spec}: no readable image {'to search' if not len(bank) else 'to ask'}"
        )
    # rows == indices
    train_split, query_split = (
        train_split.subset(kept),
        query_split.subset(asked),
    )
    distances, indices = nearest(queries, bank, args.k)

    fig = neighbours_figure(query_split, train_split, dataset.classes, distances, indices)
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(args.checkpoint)), "neighbors.png"
    )
    save(fig, out)
    return out


def distance_label(distance: float) -> str:
    """A neighbour's fc7 distance as its title shows it: 3 significant digits, whatever the scale."""
    return f"d = {distance:.3g}"


def neighbours_figure(
    query_split, train_split, classes, distances: torch.Tensor, indices: torch.Tensor
):
    """Figure 4: one row per query, the query then its neighbours, each titled with its class; a neighbour's
    title also gives its Euclidean fc7 distance to the query."""
    plt = pyplot()
    drawable(classes)
    columns = indices.shape[1] + 1
    fig, axes = plt.subplots(
        len(query_split), columns, figsize=(1.5 * columns, 1.6 * len(query_split)), squeeze=False
    )
    for q in range(len(query_split)):
        row = [(query_split, q, "query")] + [
            (train_split, int(i), distance_label(float(d)))
            for i, d in zip(indices[q], distances[q])
        ]
        for axis, (split, i, head) in zip(axes[q], row):
            axis.imshow(split.load(i))
            axis.set_title(f"{head}\n{str(classes[split.labels[i]])[:14]}", fontsize=7)
            axis.axis("off")
    fig.suptitle(
        "Figure 4 (§6.1): validation images (left) and the training images nearest in fc7 space;\n"
        "d: Euclidean distance between their 4096-d fc7 feature vectors (after the ReLU)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


# --- curves ----------------------------------------------------------------------------------------------------


def _run_label(folder: str) -> str:
    """A run's folder name with its recipe (from config.json), e.g. "seed1 (quick recipe)"."""
    label = os.path.basename(os.path.abspath(folder))
    try:
        return f"{label} ({run_config.read_record(folder)['recipe']} recipe)"
    except (OSError, ValueError, KeyError, TypeError):
        return label


def _run_title(folder: str) -> str:
    """The title train gives a run's curves ("paper on folder:..."), from its config.json; else its folder name."""
    try:
        config = run_config.read_record(folder)
        return f"{config['model']['name']} on {config['data']}"
    except (OSError, ValueError, KeyError, TypeError):
        return os.path.basename(os.path.abspath(folder))


def curves(args) -> str:
    """Only reads the runs: the chart goes to --out, or to a new file in the current folder, never over a run's
    own curves.png or a grid's ablation.png."""
    import pandas as pd

    from reproduce import ablate

    name = os.path.basename(os.path.abspath(args.run[0]))
    if len(args.run) == 1 and os.path.exists(os.path.join(args.run[0], "ablation.csv")):
        folder = args.run[0]
        cells = [
            ablate.Cell.read(folder, label, seed)
            for label, seed in ablate.tables.read_cells(os.path.join(folder, "ablation.csv"))
        ]
        frame, runs = ablate.gather(cells)
        if frame is None:
            raise UsageError(f"{folder}: no finished cell to chart yet")
        out = args.out or f"ablation-{name}.png"
        return ", ".join(
            ablate.tables.charts(
                ablate.tables.summarize(frame),
                runs,
                out,
                f"{os.path.splitext(out)[0]}-figure1.png",
                f"ablation: {name}",
            )
        )
    runs = {}
    for folder in args.run:
        metrics = os.path.join(folder, "metrics.csv")
        if not os.path.exists(metrics):
            raise UsageError(
                f"{folder} holds no metrics.csv (a reproduce.train run)"
                + (" or ablation.csv (an ablation)" if len(args.run) == 1 else "")
            )
        runs[_run_label(folder)] = pd.read_csv(metrics).to_dict("records")
    if len(runs) < len(args.run):
        raise UsageError(
            "two --run folders have the same name and recipe; their curves could not be told apart"
        )
    if len(args.run) == 1:
        out = args.out or f"curves-{name}.png"
        plot_curves(next(iter(runs.values())), out, _run_title(args.run[0]))
        return out
    out = args.out or "curves-compare.png"
    save(runs_figure(runs), out)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.visualize",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser(
        "filters", help="Figure 3: the conv1 kernels, tower by tower", formatter_class=HelpFormatter
    )
    add_checkpoint_flag(one)
    one.add_argument("--columns", type=int, default=12, help="kernels per row")
    one.add_argument("--zoom", type=int, default=4, help="pixels per kernel weight")
    one.add_argument(
        "--out", default=None, metavar="PNG", help="default: filters.png beside the checkpoint"
    )
    two = commands.add_parser(
        "neighbors",
        formatter_class=HelpFormatter,
        help="Figure 4: validation images and their nearest training images by fc7 features",
    )
    add_checkpoint_flag(two)
    add_data_flag(two, from_checkpoint=True)
    two.add_argument("--queries", type=int, default=5, help="validation images shown")
    two.add_argument("-k", type=int, default=6, help="neighbours per query (the paper shows 6)")
    two.add_argument(
        "--bank", type=int, default=10000, help="training images searched (seeded; 0: all)"
    )
    two.add_argument("--seed", type=int, default=0, help="which queries and bank images")
    two.add_argument(
        "--out", default=None, metavar="PNG", help="default: neighbors.png beside the checkpoint"
    )
    add_device_arguments(two)
    add_strict_flag(two)
    three = commands.add_parser(
        "curves",
        formatter_class=HelpFormatter,
        help="loss and error curves of a run (several runs: on one chart), or the chart of "
        "an ablation",
    )
    three.add_argument(
        "--run",
        required=True,
        nargs="+",
        metavar="DIR",
        help="reproduce.train --out folders, or one reproduce.ablate --out",
    )
    three.add_argument(
        "--out",
        default=None,
        metavar="PNG",
        help="default: a new file in the current folder (curves-RUN.png, ablation-GRID.png, or "
        "curves-compare.png for several runs); a run's own files are never replaced",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    action = {"filters": filters, "neighbors": neighbors, "curves": curves}[args.command]

    def run() -> int:
        print(f"wrote {action(named_weights(args))}")
        return 0

    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
