"""The tables and chart of an ablation grid: ablation.csv, summary.csv, summary.md, ablation.png.

``collect`` reads the cells a grid has finished (each a reproduce.train run);
``summarize`` turns the tidy rows into mean ± std per variant, the change
against ``paper`` and what the paper reports for the same change.
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Tuple

import pandas as pd

from paper_alexnet import paper
from paper_alexnet.cli import FLOAT_FORMAT
from paper_alexnet.networks import get_network, network_cost
from reproduce.figures import epoch_axis, pyplot, save

# cell: the grid's label (NET[+switch...][@flag=value...]); variant: the net it trains (--variant), switches
# included; data switches (no-pca, no-flip) and @flags are only in the label.
COLUMNS = ("cell", "variant", "switches", "status", "params", "macs", "input_size", "epochs", "batch_size", "lr",
           "seed", "train_loss", "train_top1_err", "val_loss", "val_top1_err", "val_top5_err", "ten_crop_top1_err",
           "ten_crop_top5_err", "best_epoch", "final_val_top1_err", "epochs_to_25", "seconds_to_25",
           "images_per_s", "wall_seconds")
ERRORS = ("val_top1_err", "val_top5_err", "ten_crop_top1_err", "ten_crop_top5_err")
BASELINE = "paper"

# What the paper reports for a switch, as (top-1, top-5) percentage points added by removing the feature.
REPORTED: Dict[str, Tuple[Tuple[Optional[float], Optional[float]], str]] = {
    "no-lrn": (paper.REPORTED_LRN_GAIN, "§3.3"),
    "pool-2x2": (paper.REPORTED_OVERLAP_GAIN, "§3.4"),
    "one-tower": (paper.REPORTED_TWO_GPU_GAIN, "§3.2"),
    "no-pca": (paper.REPORTED_PCA_GAIN, "§4.1: top-1 over 1"),
}


def _reported(label: str):
    parts = label.split("@")[0].split("+")
    hits = [REPORTED[p] for p in parts if p in REPORTED]
    return hits[0] if len(hits) == 1 and len(parts) <= 2 else ((None, None), "")


def epochs_to(metrics: pd.DataFrame, target: float = paper.RELU_TARGET_TRAIN_ERROR) -> Tuple[float, float]:
    """Figure 1's measure: the first epoch whose training error is at most ``target``, and the training
    seconds up to the end of it (NaN, NaN when never reached)."""
    reached = metrics.index[metrics["train_top1_err"] <= target]
    if len(reached) == 0:
        return math.nan, math.nan
    at = reached[0]
    return float(metrics.loc[at, "epoch"]), float(metrics.loc[:at, "seconds"].sum())


def cell_row(folder: str, label: str, seed: int, switches: str) -> Optional[dict]:
    """One tidy row for a finished cell (None while it is not finished)."""
    marker = os.path.join(folder, "cell.json")
    if not os.path.exists(marker):
        return None
    with open(marker, encoding="utf-8") as handle:
        cell = json.load(handle)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    metrics = pd.read_csv(os.path.join(folder, "metrics.csv"))
    result_path = os.path.join(folder, "result.json")
    result = {}
    if os.path.exists(result_path):
        with open(result_path, encoding="utf-8") as handle:
            result = json.load(handle)
    variant = config["args"]["variant"]
    cost = network_cost(get_network(variant, num_classes=len(config["classes"])))
    last = metrics.iloc[-1] if len(metrics) else {}
    epochs25, seconds25 = epochs_to(metrics) if len(metrics) else (math.nan, math.nan)
    row = {"cell": label, "variant": variant, "switches": switches, "status": cell["status"],
           "params": cost["params"], "macs": cost["macs"], "input_size": config["augment"]["crop"],
           "epochs": len(metrics), "batch_size": config["args"]["batch_size"], "lr": config["args"]["lr"],
           "seed": seed, "train_loss": last.get("train_loss", math.nan),
           "train_top1_err": last.get("train_top1_err", math.nan), "val_loss": last.get("val_loss", math.nan),
           "best_epoch": result.get("best_epoch", math.nan),
           "final_val_top1_err": last.get("val_top1_err", math.nan), "epochs_to_25": epochs25,
           "seconds_to_25": seconds25,
           "images_per_s": float(metrics["images_per_s"].mean()) if len(metrics) else math.nan,
           "wall_seconds": cell["wall_seconds"]}
    for key in ERRORS:
        value = result.get(key)
        row[key] = math.nan if value is None else value
    return row


def read_cells(path: str) -> List[Tuple[str, int]]:
    """The (cell label, seed) pairs of an ablation.csv, also one written before the columns were renamed
    (then ``variant`` held the label and ``net`` the variant)."""
    frame = pd.read_csv(path)
    labels = frame["cell"] if "cell" in frame.columns else frame["variant"]
    return [(str(label), int(seed)) for label, seed in zip(labels, frame["seed"])]


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per variant: seeds, mean and std (n - 1) of the errors in %, epochs/seconds to 25% training error,
    images/s; the change of the mean errors against ``paper``; the paper's reported change."""
    done = rows[rows["status"] == "done"]
    out = []
    base = done[done["cell"] == BASELINE]
    for label in dict.fromkeys(rows["cell"]):
        group = done[done["cell"] == label]
        entry = {"cell": label, "seeds": len(group)}
        for key in ERRORS:
            values = 100 * group[key].astype(float)
            entry[f"{key}_pct_mean"] = values.mean()
            entry[f"{key}_pct_std"] = values.std(ddof=1)
        for key in ("epochs_to_25", "seconds_to_25", "images_per_s"):
            entry[f"{key}_mean"] = group[key].astype(float).mean()
        for short, key in (("top1", "val_top1_err"), ("top5", "val_top5_err"),
                           ("ten_crop_top1", "ten_crop_top1_err"), ("ten_crop_top5", "ten_crop_top5_err")):
            entry[f"delta_{short}_pct"] = (100 * (group[key].astype(float).mean() - base[key].astype(float).mean())
                                           if len(base) and label != BASELINE else math.nan)
        (top1, top5), where = _reported(label)
        entry["paper_delta_top1_pct"] = math.nan if top1 is None else top1
        entry["paper_delta_top5_pct"] = math.nan if top5 is None else top5
        entry["paper_source"] = where
        out.append(entry)
    return pd.DataFrame(out)


def relu_speedups(summary: pd.DataFrame) -> List[Tuple[str, float]]:
    """§3.1: for each '+tanh' variant with its ReLU twin, (twin, tanh epochs / ReLU epochs to 25%)."""
    epochs = dict(zip(summary["cell"], summary["epochs_to_25_mean"]))
    pairs = []
    for label, value in epochs.items():
        twin = label.replace("+tanh", "")
        if "+tanh" in label and twin in epochs:
            pairs.append((twin, value / epochs[twin] if epochs[twin] else math.nan))
    return pairs


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.1f}" + ("" if math.isnan(std) else f" ± {std:.1f}")


def _signed(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.1f}"


def to_csv(frame: pd.DataFrame) -> str:
    """A table as CSV text, floats as files hold them (cli.FLOAT_FORMAT)."""
    return frame.to_csv(index=False, float_format=FLOAT_FORMAT)


def markdown(summary: pd.DataFrame, title: str, note: str = "") -> str:
    """summary.md: the table a person reads, errors in %, deltas in percentage points; ``note`` (a caveat,
    e.g. of a --smoke grid) under the title."""
    lines = [f"# {title}", "", *([f"**{note}**", ""] if note else []),
             "Errors in % (mean ± std over seeds; centre crop, and ten crops of best.pt, §4.1); Δ: change of "
             "the mean against `paper`, in points; paper Δ: what the paper reports for the same change.", "",
             "| cell | seeds | top-1 | top-5 | ten-crop top-1 | ten-crop top-5 | Δ top-1 | Δ top-5 | "
             "paper Δ top-1 / top-5 | epochs to 25% train err | img/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        reported = "–" if not r["paper_source"] else (
            f"{_signed(r['paper_delta_top1_pct'])} / {_signed(r['paper_delta_top5_pct'])} ({r['paper_source']})")
        lines.append(
            f"| {r['cell']} | {r['seeds']} | {_cell(r['val_top1_err_pct_mean'], r['val_top1_err_pct_std'])} | "
            f"{_cell(r['val_top5_err_pct_mean'], r['val_top5_err_pct_std'])} | "
            f"{_cell(r['ten_crop_top1_err_pct_mean'], r['ten_crop_top1_err_pct_std'])} | "
            f"{_cell(r['ten_crop_top5_err_pct_mean'], r['ten_crop_top5_err_pct_std'])} | "
            f"{_signed(r['delta_top1_pct'])} | {_signed(r['delta_top5_pct'])} | {reported} | "
            f"{'not reached' if math.isnan(r['epochs_to_25_mean']) else format(r['epochs_to_25_mean'], '.1f')} | "
            f"{r['images_per_s_mean']:.1f} |")
    speedups = relu_speedups(summary)
    if speedups:
        lines += ["", f"§3.1, Figure 1: epochs to {100 * paper.RELU_TARGET_TRAIN_ERROR:.0f}% training error, tanh "
                      f"over ReLU (the paper: {paper.RELU_SPEEDUP}×):"]
        lines += [f"- {twin}: {'not measurable (one of them never got there)' if math.isnan(x) else f'{x:.1f}×'}"
                  for twin, x in speedups]
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, curves: Dict[str, List[pd.DataFrame]], path: str,
         title: str) -> None:
    """ablation.png: error bars per variant (mean ± std over seeds); with '+tanh' variants also Figure 1's
    training-error curves against epochs and seconds."""
    plt = pyplot()

    show_curves = any("+tanh" in label for label in curves)
    fig, axes = plt.subplots(1, 3 if show_curves else 1, figsize=(16 if show_curves else 9, 4.5), squeeze=False)
    bars = axes[0][0]
    labels = list(summary["cell"])
    width = 0.2
    for k, (key, name) in enumerate((("val_top1_err", "top-1"), ("val_top5_err", "top-5"),
                                     ("ten_crop_top1_err", "ten-crop top-1"), ("ten_crop_top5_err", "ten-crop top-5"))):
        means, stds = summary[f"{key}_pct_mean"].fillna(0), summary[f"{key}_pct_std"].fillna(0)
        bars.bar([i + (k - 1.5) * width for i in range(len(labels))], means, width, yerr=stds, capsize=3, label=name)
    bars.set_xticks(range(len(labels)))
    bars.set_xticklabels(labels, rotation=30, ha="right")
    bars.set(ylabel="validation error (%)", ylim=(0, 115), title="errors (mean ± std over seeds)")
    bars.legend(fontsize=8, ncol=4, loc="upper center")
    bars.grid(axis="y", alpha=0.3)
    if show_curves:
        colours = {}
        for label, runs in curves.items():
            for run in runs:
                seconds = run["seconds"].cumsum()
                colour = colours.setdefault(label, f"C{len(colours)}")
                style = "--" if "+tanh" in label else "-"
                for axis, x in ((axes[0][1], run["epoch"]), (axes[0][2], seconds)):
                    axis.plot(x, 100 * run["train_top1_err"], style, color=colour, marker="o", markersize=3,
                              label=label if run is runs[0] else None)
        epoch_axis(axes[0][1], [e for runs in curves.values() for run in runs for e in run["epoch"]])
        for axis, xlabel in ((axes[0][1], "epoch"), (axes[0][2], "training seconds")):
            axis.axhline(100 * paper.RELU_TARGET_TRAIN_ERROR, color="grey", lw=0.8)
            axis.set(xlabel=xlabel, ylabel="training error (%)", ylim=(0, 100),
                     title="Figure 1 (§3.1): ReLU (solid) vs tanh (dashed)")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)
