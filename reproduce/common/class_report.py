"""Where a net fails class by class: the files evaluate --out and every training run write.

- ``per_class.csv``: one row per class (the checkpoint's order): images, top-1 and
  top-5 error (top-5 empty with 5 classes or fewer), the class most often
  predicted instead and the share of the class's images that went there; the
  ten-crop columns beside them when ten crops were scored.
- ``confusion.csv``: the counts, true class down, predicted class across.
- ``confusion.png``: the same matrix, each row divided by its images.
- ``mistakes.png``: the most confident errors, each crop as the net saw it.

The mean of the per-class errors is Caltech-101's measure (every class counts
the same, however many images it has); the overall error weighs each image
the same. Both are said.
"""

from __future__ import annotations

import csv
import math
import os
from typing import List, Optional, Sequence

import numpy as np

from paper_alexnet.atomic import make_folder
from paper_alexnet.cli import percent
from paper_alexnet.metrics import Predictions, per_class
from reproduce.common.args import write_csv
from reproduce.common.figures import drawable, pyplot, save

LABELLED = (
    30  # up to this many classes the figure names every row and column, in the checkpoint's order
)
LISTED = 15  # beyond that, the most confused pairs are listed beside it


def summary(table: dict, classes: Sequence[str], weakest: int = 3) -> dict:
    """The mean per-class error and accuracy, and the ``weakest`` classes (highest top-1 error first)."""
    errors = table["top1_err"]
    order = [
        i for i in np.argsort(-np.nan_to_num(errors, nan=-1.0), kind="stable") if table["images"][i]
    ]
    return {
        "mean_class_top1_err": table["mean_top1_err"],
        "mean_class_acc": 1.0 - table["mean_top1_err"],
        "weakest": [
            {
                "class": classes[i],
                "top1_err": float(errors[i]),
                "confused_with": classes[table["confused_with"][i]]
                if table["confused_with"][i] >= 0
                else None,
                "share": float(table["confused_share"][i]),
            }
            for i in order[:weakest]
        ],
    }


def line(summary_: dict) -> str:
    """The console's words for :func:`summary`."""
    weak = ", ".join(
        f"{w['class']} {percent(w['top1_err'])}"
        + (f" (-> {w['confused_with']} {percent(w['share'], 0)})" if w["confused_with"] else "")
        for w in summary_["weakest"]
    )
    return (
        f"mean per-class top-1 error {percent(summary_['mean_class_top1_err'], 2)} "
        f"(accuracy {percent(summary_['mean_class_acc'], 2)}); weakest: {weak}"
    )


def write(
    folder: str,
    classes: Sequence[str],
    centre: Predictions,
    ten_crop: Optional[Predictions] = None,
    split=None,
    crop: int = 227,
    mistakes: int = 16,
) -> dict:
    """Write the module's four files into ``folder`` (mistakes.png when ``split`` can give the images and
    ``mistakes`` > 0); returns :func:`summary` of the centre crop."""
    make_folder(folder)
    n = len(classes)
    table = per_class(centre, n)
    ten = per_class(ten_crop, n) if ten_crop is not None else None
    _per_class_csv(os.path.join(folder, "per_class.csv"), classes, table, ten)
    _confusion_csv(os.path.join(folder, "confusion.csv"), classes, table["confusion"])
    confusion_figure(os.path.join(folder, "confusion.png"), classes, table["confusion"])
    if split is not None and mistakes > 0:
        mistakes_figure(
            os.path.join(folder, "mistakes.png"), classes, centre, split, crop, mistakes
        )
    return summary(table, classes)


def _per_class_csv(path: str, classes: Sequence[str], table: dict, ten: Optional[dict]) -> None:
    """per_class.csv: a row per class; an error that does not apply (no images, top-5 with <= 5 classes) is
    an empty cell."""

    def value(column, i):
        return None if column is None or np.isnan(column[i]) else float(column[i])

    rows = []
    for i, name in enumerate(classes):
        other = int(table["confused_with"][i])
        row = {
            "class": name,
            "images": int(table["images"][i]),
            "top1_err": value(table["top1_err"], i),
            "top5_err": value(table["top5_err"], i),
            "most_confused_with": classes[other] if other >= 0 else None,
            "confused_share": float(table["confused_share"][i]) if other >= 0 else None,
        }
        if ten is not None:
            row.update(
                ten_crop_top1_err=value(ten["top1_err"], i),
                ten_crop_top5_err=value(ten["top5_err"], i),
            )
        rows.append(row)
    write_csv(rows, path, say=False)


def _confusion_csv(path: str, classes: Sequence[str], counts: np.ndarray) -> None:
    write_csv(
        [
            {"true \\ predicted": name, **dict(zip(classes, row))}
            for name, row in zip(classes, counts.tolist())
        ],
        path,
        say=False,
    )


def read_confusion(path: str) -> tuple:
    """(class names, count matrix) of a confusion.csv."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0][1:], np.array([[int(v) for v in row[1:]] for row in rows[1:]], dtype=np.int64)


def class_order(counts: np.ndarray) -> np.ndarray:
    """An order of the classes that puts classes confused with each other side by side. The classes linked by
    confusions (either way) form groups, the largest first (ties: the checkpoint's order); within a group,
    the order of the Fiedler vector of its graph, whose edge weights are the row-normalised confusions."""
    n = len(counts)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    weights = (rates + rates.T) / 2
    np.fill_diagonal(weights, 0.0)
    groups, seen = [], np.zeros(n, dtype=bool)
    for first in range(n):
        if seen[first]:
            continue
        group, frontier = [first], [first]
        seen[first] = True
        while frontier:
            linked = np.flatnonzero((weights[frontier] > 0).any(axis=0) & ~seen)
            seen[linked] = True
            group += linked.tolist()
            frontier = linked.tolist()
        groups.append(sorted(group))
    order = []
    for group in sorted(groups, key=lambda g: (-len(g), g[0])):
        if len(group) > 2:
            sub = weights[np.ix_(group, group)]
            _, vectors = np.linalg.eigh(np.diag(sub.sum(axis=1)) - sub)
            fiedler = np.round(vectors[:, 1], 9)
            group = [group[i] for i in np.lexsort((np.arange(len(group)), fiedler))]
        order += group
    return np.array(order, dtype=np.int64)


def confusion_figure(path: str, classes: Sequence[str], counts: np.ndarray) -> None:
    """confusion.png: rows divided by their images. Up to LABELLED classes: every name, the checkpoint's
    order, the percentages written in the cells up to 12 classes. More: the classes ordered so that confused
    ones sit together (class_order), about 40 names shown, and the LISTED most confused pairs beside it."""
    plt = pyplot()
    from matplotlib.colors import PowerNorm

    n = len(classes)
    many = n > LABELLED
    order = class_order(counts) if many else np.arange(n)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    shown = rates[np.ix_(order, order)]
    names = [str(classes[i]) for i in order]
    drawable(names)
    side = min(3.5 + 0.3 * n, 10.0)  # inches: 10 classes 6.5, 22 and more 10
    if many:
        fig, (axis, listing) = plt.subplots(
            1,
            2,
            figsize=(side + 5.0, side),
            gridspec_kw={"width_ratios": [side, 4.0]},
            layout="constrained",
        )
        listing.axis("off")
    else:
        fig, axis = plt.subplots(figsize=(side + 1.5, side), layout="constrained")
    image = axis.imshow(
        shown, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest"
    )
    step = max(1, math.ceil(n / 40))
    ticks = np.arange(0, n, step)
    small = 9 if n <= 12 else 7 if n <= LABELLED else 6
    axis.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=small)
    axis.set_yticks(ticks, [names[i] for i in ticks], fontsize=small)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if n <= 12:
        for r in range(n):
            for c in range(n):
                if counts[order[r]].sum():
                    axis.text(c, r, f"{100 * shown[r, c]:.0f}", ha="center", va="center", fontsize=8,
                              color="white" if shown[r, c] > 0.5 else "black")  # fmt: skip
    how = (
        f"{n} classes ordered so that confused classes sit together; one name in {step} shown"
        if many and step > 1
        else f"{n} classes ordered so that confused classes sit together"
        if many
        else f"{n} classes in the checkpoint's order"
    )
    axis.set_title(f"confusion, each row divided by its images\n({how})", fontsize=9)
    bar = fig.colorbar(image, ax=axis, fraction=0.046, pad=0.02)
    bar.set_label("share of the true class's images (square-root scale)", fontsize=8)
    if many:
        pairs = _most_confused(rates, counts, LISTED)
        text = "most confused (true -> predicted: share of true)\n" + "\n".join(
            f"{classes[t]} -> {classes[p]}: {100 * r:.0f}% ({counts[t, p]})" for t, p, r in pairs
        )
        listing.text(0.0, 1.0, text, va="top", ha="left", fontsize=8, transform=listing.transAxes)
    save(fig, path)
    plt.close(fig)


def _most_confused(rates: np.ndarray, counts: np.ndarray, k: int) -> List[tuple]:
    off = rates.copy()
    np.fill_diagonal(off, 0.0)
    flat = np.argsort(-off, axis=None, kind="stable")[:k]
    return [
        (int(t), int(p), float(off[t, p]))
        for t, p in zip(*np.unravel_index(flat, off.shape))
        if counts[t, p] > 0
    ]


def mistakes_figure(
    path: str, classes: Sequence[str], predictions: Predictions, split, crop: int, count: int
) -> int:
    """mistakes.png: the ``count`` errors with the highest probability on the wrong class, each the centre
    crop the net saw (before the mean is subtracted). Returns how many it shows (0: no errors, no file)."""
    wrong = np.flatnonzero(predictions.predicted != predictions.label)
    chosen = wrong[np.argsort(-predictions.prob[wrong], kind="stable")][:count]
    if not len(chosen):
        return 0
    plt = pyplot()
    cols = min(len(chosen), 4 if len(chosen) <= 8 else 6)
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.75 * rows), squeeze=False)
    drawable([str(c) for c in classes])
    for axis in axes.ravel():
        axis.axis("off")
    for axis, k in zip(axes.ravel(), chosen):
        image = split.load(int(predictions.index[k]))  # 256 x 256 x 3 (§2)
        at = (image.shape[0] - crop) // 2
        axis.imshow(image[at : at + crop, at : at + crop])
        axis.set_title(
            f"true: {classes[predictions.label[k]]}\nsaid: {classes[predictions.predicted[k]]} "
            f"({100 * predictions.prob[k]:.0f}%)",
            fontsize=8,
        )
    fig.suptitle(f"the {len(chosen)} most confident errors (centre crops)", fontsize=10)
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)
    return len(chosen)
