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
from paper_alexnet.cli import FLOAT_FORMAT, plural
from paper_alexnet.networks import get_network, network_cost
from reproduce.ablation import intervals
from reproduce.training import run_config
from reproduce.ablation.labels import Label
from reproduce.common.figures import epoch_axis, pyplot, save

# best.pt's errors: the centre crop's, ten crops' (§4.1) and the centre crop's with its reflection (not §4.1)
ERRORS = (
    "val_top1_err",
    "val_top5_err",
    "ten_crop_top1_err",
    "ten_crop_top5_err",
    "flip_top1_err",
    "flip_top5_err",
)
# cell: the grid's label (NET[+switch...][@flag=value...]); variant: the net it trains (--variant), switches
# included; data switches (no-pca, no-flip) and @flags are only in the label.
COLUMNS = (
    "cell",
    "variant",
    "switches",
    "status",
    "params",
    "macs",
    "input_size",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "train_loss",
    "train_top1_err",
    "val_loss",
    *ERRORS,
    "best_epoch",
    "final_val_top1_err",
    "epochs_to_25",
    "seconds_to_25",
    "images_per_s",
    "wall_seconds",
)
# lr_search.csv: one row per searched (cell, learning rate), on the search's seed
SEARCH_COLUMNS = (
    "cell",
    "activation",
    "lr",
    "seed",
    "epochs_to_25",
    "seconds_to_25",
    "epochs",
    "final_train_top1_err",
    "status",
)
NOT_REACHED = "not reached"
BASELINE = "paper"

# What the paper reports for a switch, as (top-1, top-5) percentage points added by removing the feature.
REPORTED: Dict[str, Tuple[Tuple[Optional[float], Optional[float]], str]] = {
    "no-lrn": (paper.REPORTED_LRN_GAIN, "§3.3"),
    "pool-2x2": (paper.REPORTED_OVERLAP_GAIN, "§3.4"),
    "one-tower": (paper.REPORTED_TWO_GPU_GAIN, "§3.2"),
    "no-pca": (paper.REPORTED_PCA_GAIN, "§4.1: top-1 over 1"),
}


def _reported(label: str):
    parsed = Label.parse(label)
    parts = [parsed.net, *parsed.switches]
    hits = [REPORTED[p] for p in parts if p in REPORTED]
    return hits[0] if len(hits) == 1 and len(parts) <= 2 else ((None, None), "")


def epochs_to(
    metrics: pd.DataFrame, target: float = paper.RELU_TARGET_TRAIN_ERROR
) -> Tuple[float, float]:
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
    config = run_config.read_record(folder)
    metrics = pd.read_csv(os.path.join(folder, "metrics.csv"))
    result_path = os.path.join(folder, "result.json")
    result = {}
    if os.path.exists(result_path):
        with open(result_path, encoding="utf-8") as handle:
            result = json.load(handle)
    variant = config["variant"]
    cost = network_cost(get_network(variant, num_classes=len(config["classes"])))
    last = metrics.iloc[-1] if len(metrics) else {}
    epochs25, seconds25 = epochs_to(metrics) if len(metrics) else (math.nan, math.nan)
    row = {
        "cell": label,
        "variant": variant,
        "switches": switches,
        "status": cell["status"],
        "params": cost["params"],
        "macs": cost["macs"],
        "input_size": config["augment"]["crop"],
        "epochs": len(metrics),
        "batch_size": config["batch_size"],
        "lr": config["lr"],
        "seed": seed,
        "train_loss": last.get("train_loss", math.nan),
        "train_top1_err": last.get("train_top1_err", math.nan),
        "val_loss": last.get("val_loss", math.nan),
        "best_epoch": result.get("best_epoch", math.nan),
        "final_val_top1_err": last.get("val_top1_err", math.nan),
        "epochs_to_25": epochs25,
        "seconds_to_25": seconds25,
        "images_per_s": float(metrics["images_per_s"].mean()) if len(metrics) else math.nan,
        "wall_seconds": cell["wall_seconds"],
    }
    for key in ERRORS:
        value = result.get(key)
        row[key] = math.nan if value is None else value
    return row


def pick_rates(rows: pd.DataFrame, lrs=()) -> Dict[str, Tuple[float, str]]:
    """Each cell's learning rate from lr_search.csv's rows: the fewest epochs to 25% training error, then the
    fewest seconds; when no rate got there, the lowest final training error. With the searched ``lrs``, a pick
    at the end of the range is said to be (a faster rate may lie beyond it)."""
    chosen = {}
    for cell, group in rows.groupby("cell", sort=False):
        group = group.assign(
            e=pd.to_numeric(group["epochs_to_25"], errors="coerce"),
            s=pd.to_numeric(group["seconds_to_25"], errors="coerce"),
        )
        reached = group[group["e"].notna()]
        if len(reached):
            best = reached.sort_values(["e", "s", "lr"]).iloc[0]
            why = (
                f"the fastest to {100 * paper.RELU_TARGET_TRAIN_ERROR:.0f}% training error: epoch {best['e']:g}, "
                f"{best['s']:.0f} s"
            )
        else:
            best = group.sort_values(["final_train_top1_err", "lr"]).iloc[0]
            why = (
                f"no rate reached {100 * paper.RELU_TARGET_TRAIN_ERROR:.0f}% training error; the lowest final "
                f"training error, {100 * best['final_train_top1_err']:.1f}%"
            )
        if lrs and best["lr"] in (min(lrs), max(lrs)) and len(lrs) > 1:
            why += "; at the end of the searched range, so a faster rate may lie beyond it"
        chosen[cell] = (float(best["lr"]), why)
    return chosen


def read_cells(path: str) -> List[Tuple[str, int]]:
    """The (cell label, seed) pairs of an ablation.csv, also one written before the columns were renamed
    (then ``variant`` held the label and ``net`` the variant)."""
    frame = pd.read_csv(path)
    labels = frame["cell"] if "cell" in frame.columns else frame["variant"]
    return [(str(label), int(seed)) for label, seed in zip(labels, frame["seed"])]


def _pct(group: pd.DataFrame, key: str) -> List[float]:
    return list(100 * group[key].astype(float))


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per variant: seeds, mean and std (n - 1) of the errors in %, epochs/seconds to 25% training error,
    images/s; the change of the mean errors against ``paper`` with Welch's 95% interval over the seeds, and
    whether that interval excludes zero; the paper's reported change."""
    # a table written before a column existed (the flip errors) has it empty
    rows = rows.assign(**{key: math.nan for key in ERRORS if key not in rows})
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
        for short, key in (
            ("top1", "val_top1_err"),
            ("top5", "val_top5_err"),
            ("ten_crop_top1", "ten_crop_top1_err"),
            ("ten_crop_top5", "ten_crop_top5_err"),
        ):
            delta = (
                intervals.difference_interval(_pct(group, key), _pct(base, key))
                if len(base) and len(group) and label != BASELINE
                else intervals.NAN
            )
            entry[f"delta_{short}_pct"] = delta.value
            entry[f"delta_{short}_low"], entry[f"delta_{short}_high"] = delta.low, delta.high
            entry[f"delta_{short}_excludes_zero"] = delta.excludes_zero
        (top1, top5), where = _reported(label)
        entry["paper_delta_top1_pct"] = math.nan if top1 is None else top1
        entry["paper_delta_top5_pct"] = math.nan if top5 is None else top5
        entry["paper_source"] = where
        out.append(entry)
    return pd.DataFrame(out)


def _head(label: str) -> str:
    """A cell's net and switches, without its @flags (figure1+tanh@lr=0.02 -> figure1+tanh)."""
    return Label.parse(label).head


def relu_speedups(rows: pd.DataFrame) -> List[dict]:
    """§3.1, Figure 1: for each '+tanh' cell with a ReLU twin (the same net and switches, each at its own
    @flags, e.g. its own learning rate), tanh's epochs and seconds to 25% training error over ReLU's, seed by
    seed, as a geometric mean with its 95% interval; ``missing``: seeds where one of them never got there."""
    done = rows[rows["status"] == "done"]
    labels = list(dict.fromkeys(done["cell"]))
    pairs = []
    for tanh in labels:
        if "+tanh" not in _head(tanh):
            continue
        twins = [label for label in labels if _head(label) == _head(tanh).replace("+tanh", "")]
        if len(twins) != 1:
            continue
        a = done[done["cell"] == tanh].set_index("seed")
        b = done[done["cell"] == twins[0]].set_index("seed")
        seeds = sorted(set(a.index) & set(b.index))
        both = [
            s
            for s in seeds
            if not (math.isnan(a.loc[s, "epochs_to_25"]) or math.isnan(b.loc[s, "epochs_to_25"]))
        ]
        pairs.append(
            {
                "relu": twins[0],
                "tanh": tanh,
                "seeds": len(seeds),
                "missing": len(seeds) - len(both),
                "epochs": intervals.ratio_interval(
                    [a.loc[s, "epochs_to_25"] for s in both],
                    [b.loc[s, "epochs_to_25"] for s in both],
                ),
                "seconds": intervals.ratio_interval(
                    [a.loc[s, "seconds_to_25"] for s in both],
                    [b.loc[s, "seconds_to_25"] for s in both],
                ),
            }
        )
    return pairs


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.1f}" + ("" if math.isnan(std) else f" ± {std:.1f}")


def _signed(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.1f}"


def _delta(row, short: str) -> str:
    """'+4.0 [+0.5, +7.5]' and whether the interval excludes zero."""
    value, low, high = (
        row[f"delta_{short}_pct"],
        row[f"delta_{short}_low"],
        row[f"delta_{short}_high"],
    )
    if math.isnan(value):
        return "–"
    if math.isnan(low):
        return f"{value:+.1f}"
    return f"{value:+.1f} [{low:+.1f}, {high:+.1f}]" + (
        " **yes**" if row[f"delta_{short}_excludes_zero"] else " no"
    )


def _to_25(row) -> str:
    return f"{row['epochs_to_25_mean']:.1f} ({row['seconds_to_25_mean']:.0f} s)"


def _times(interval: intervals.Interval) -> str:
    if math.isnan(interval.value):
        return "–"
    bounds = "" if math.isnan(interval.low) else f" [{interval.low:.2f}, {interval.high:.2f}]"
    return f"{interval.value:.2f}×{bounds}"


def to_csv(frame: pd.DataFrame) -> str:
    """A table as CSV text, floats as files hold them (cli.FLOAT_FORMAT)."""
    return frame.to_csv(index=False, float_format=FLOAT_FORMAT)


def markdown(
    summary: pd.DataFrame,
    title: str,
    note: str = "",
    rows: Optional[pd.DataFrame] = None,
    command: str = "",
) -> str:
    """summary.md: the table a person reads, errors in %, deltas in percentage points with their 95% interval;
    ``note`` (a caveat, e.g. of a --smoke grid) under the title; with ``rows`` (ablation.csv) Figure 1's
    tanh/ReLU ratios."""
    lines = [
        f"# {title}",
        "",
        *([f"`{command}`", ""] if command else []),
        *([f"**{note}**", ""] if note else []),
        "Errors in % (mean ± std over seeds; centre crop, the centre crop and its reflection averaged (flip), "
        "and ten crops of best.pt, §4.1). Δ: the change of "
        "the mean against `paper`, in points, with Welch's 95% interval over the seeds, and whether that "
        "interval excludes zero (a change bigger than the noise between seeds). Paper Δ: what the paper "
        "reports for the same change.",
        "",
        "| cell | seeds | top-1 | top-5 | flip top-1 | ten-crop top-1 | ten-crop top-5 | Δ top-1 [95%], "
        "beyond noise? | Δ top-5 [95%], beyond noise? | paper Δ top-1 / top-5 | epochs (seconds) to 25% "
        "train err | img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in summary.iterrows():
        reported = (
            "–"
            if not r["paper_source"]
            else (
                f"{_signed(r['paper_delta_top1_pct'])} / {_signed(r['paper_delta_top5_pct'])} ({r['paper_source']})"
            )
        )
        lines.append(
            f"| {r['cell']} | {r['seeds']} | {_cell(r['val_top1_err_pct_mean'], r['val_top1_err_pct_std'])} | "
            f"{_cell(r['val_top5_err_pct_mean'], r['val_top5_err_pct_std'])} | "
            f"{_cell(r['flip_top1_err_pct_mean'], r['flip_top1_err_pct_std'])} | "
            f"{_cell(r['ten_crop_top1_err_pct_mean'], r['ten_crop_top1_err_pct_std'])} | "
            f"{_cell(r['ten_crop_top5_err_pct_mean'], r['ten_crop_top5_err_pct_std'])} | "
            f"{_delta(r, 'top1')} | {_delta(r, 'top5')} | {reported} | "
            f"{'not reached' if math.isnan(r['epochs_to_25_mean']) else _to_25(r)} | "
            f"{r['images_per_s_mean']:.1f} |"
        )
    speedups = relu_speedups(rows) if rows is not None else []
    if speedups:
        target = f"{100 * paper.RELU_TARGET_TRAIN_ERROR:.0f}%"
        lines += [
            "",
            f"§3.1, Figure 1: tanh's epochs (and seconds) to {target} training error over ReLU's, the "
            f"geometric mean over paired seeds with its 95% interval (the paper: {paper.RELU_SPEEDUP}×):",
            "",
        ]
        for pair in speedups:
            missing = (
                f"; on {pair['missing']} of {pair['seeds']} seeds one of them never got to {target}, and "
                f"those seeds are left out"
                if pair["missing"]
                else ""
            )
            lines.append(
                f"- {pair['tanh']} over {pair['relu']}: "
                + (
                    "not measurable (never both at the target on one seed)"
                    if math.isnan(pair["epochs"].value)
                    else f"{_times(pair['epochs'])} in epochs, {_times(pair['seconds'])} in seconds"
                )
                + missing
            )
    return "\n".join(lines) + "\n"


def comparison(
    summary: pd.DataFrame,
    rows: pd.DataFrame,
    speeds: Dict[str, dict],
    options,
    title: str,
    command: str = "",
) -> str:
    """comparison.md: the paper net and torchvision's variant side by side. ``speeds``: reproduce.bench's rows by
    net name, timed with ``options`` (its parsed flags)."""
    nets = [net for net in (BASELINE, "torchvision") if net in speeds]
    by = summary.set_index("cell")
    lines = [
        f"# The paper net against torchvision's variant: {title}",
        "",
        *([f"`{command}`", ""] if command else []),
        f"Training img/s: reproduce.bench's step on random input (no data loading; batch "
        f"{options.batch_size}, {options.device}, median of {plural(options.repeats, 'round-robin repetition')}), and "
        f"the grid's own cells (with their data loading and evaluation). Errors in % over the grid's seeds "
        f"(mean ± std), on the same data and budget.",
        "",
        "| net | parameters | multiply-adds | input | train img/s (bench) | train img/s (grid) | top-1 | top-5 | "
        "ten-crop top-1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for net in nets:
        cells = rows[rows["cell"] == net]
        r = by.loc[net]
        lines.append(
            f"| {net} | {int(cells['params'].iloc[0]):,} | {int(cells['macs'].iloc[0]) / 1e6:,.0f}M | "
            f"{int(cells['input_size'].iloc[0])} | {speeds[net]['train_images_per_s']:.1f} | "
            f"{r['images_per_s_mean']:.1f} | {_cell(r['val_top1_err_pct_mean'], r['val_top1_err_pct_std'])} | "
            f"{_cell(r['val_top5_err_pct_mean'], r['val_top5_err_pct_std'])} | "
            f"{_cell(r['ten_crop_top1_err_pct_mean'], r['ten_crop_top1_err_pct_std'])} |"
        )
    if len(nets) == 2:
        ratio = speeds[BASELINE]["train_images_per_s"] / speeds["torchvision"]["train_images_per_s"]
        tv = by.loc["torchvision"]
        lines += ["", f"The paper net trains at {ratio:.2f}× torchvision's speed in the bench."]
        if not math.isnan(tv["delta_top1_low"]):
            lines[-1] += (
                f" torchvision's top-1 error minus the paper net's: {tv['delta_top1_pct']:+.1f} points, "
                f"95% interval [{tv['delta_top1_low']:+.1f}, {tv['delta_top1_high']:+.1f}] (Welch): "
                f"{'beyond' if tv['delta_top1_excludes_zero'] else 'within'} the noise between seeds."
            )
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, path: str, title: str) -> None:
    """ablation.png, read at a glance: each variant's top-1 error (mean ± std over seeds) and, beside it, its
    change against the paper net with the 95% interval, the paper's reported change marked."""
    plt = pyplot()
    others = summary[summary["cell"] != BASELINE]
    with_deltas = len(others) and summary["cell"].eq(BASELINE).any()
    fig, axes = plt.subplots(
        1,
        2 if with_deltas else 1,
        figsize=(13 if with_deltas else 7, 0.5 * len(summary) + 2),
        squeeze=False,
    )
    errors = axes[0][0]
    ys = range(len(summary))
    errors.barh(
        ys,
        summary["val_top1_err_pct_mean"].fillna(0),
        xerr=summary["val_top1_err_pct_std"].fillna(0),
        capsize=3,
        color="C0",
    )
    errors.set_yticks(list(ys))
    errors.set_yticklabels(summary["cell"])
    errors.invert_yaxis()
    errors.set(xlabel="validation top-1 error (%), mean ± std over seeds", title="error")
    errors.grid(axis="x", alpha=0.3)
    if with_deltas:
        axis = axes[0][1]
        ys = list(range(len(others)))
        deltas = others["delta_top1_pct"]
        spread = [
            (deltas - others["delta_top1_low"]).fillna(0),
            (others["delta_top1_high"] - deltas).fillna(0),
        ]
        colours = ["C3" if beyond else "C7" for beyond in others["delta_top1_excludes_zero"]]
        axis.barh(
            ys,
            deltas.fillna(0),
            xerr=spread,
            capsize=3,
            color=colours,
            height=0.5,
            label="measured (95% interval over seeds)",
        )
        reported = others["paper_delta_top1_pct"]
        shown = reported.notna()
        axis.scatter(
            reported[shown],
            [y + 0.32 for y, s in zip(ys, shown) if s],
            marker="D",
            color="black",
            zorder=3,
            label="the paper's reported change",
        )
        axis.axvline(0, color="black", lw=0.8)
        axis.set_yticks(ys)
        axis.set_yticklabels(others["cell"])
        axis.invert_yaxis()
        axis.set(
            xlabel="Δ top-1 error against the paper net (points; +: worse)",
            title="change against the paper net (red: the interval excludes 0)",
        )
        axis.grid(axis="x", alpha=0.3)
        axis.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)


def charts(
    summary: pd.DataFrame,
    curves: Dict[str, List[pd.DataFrame]],
    path: str,
    figure1_path: str,
    title: str,
) -> List[str]:
    """ablation.png at ``path``; with tanh cells also Figure 1's curves at ``figure1_path``. Returns the paths."""
    plot(summary, path, title)
    if not any("+tanh" in _head(label) for label in curves):
        return [path]
    plot_figure1(curves, figure1_path, f"Figure 1 (§3.1): {title}")
    return [path, figure1_path]


def plot_figure1(curves: Dict[str, List[pd.DataFrame]], path: str, title: str) -> None:
    """figure1.png, Figure 1 of §3.1: training error against epochs and against seconds, each cell one colour
    (tanh dashed), each seed a thin line, the mean over seeds bold; the 25% target drawn."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for k, (label, runs) in enumerate(curves.items()):
        colour, style = f"C{k}", "--" if "+tanh" in _head(label) else "-"
        for run in runs:
            for axis, x in ((axes[0], run["epoch"]), (axes[1], run["seconds"].cumsum())):
                axis.plot(x, 100 * run["train_top1_err"], style, color=colour, lw=0.7, alpha=0.5)
        together = pd.concat(runs)
        together = together.assign(clock=pd.concat([run["seconds"].cumsum() for run in runs]))
        mean = together.groupby("epoch")[["train_top1_err", "clock"]].mean()
        seeds = f"{len(runs)} seed{'s' if len(runs) != 1 else ''}"
        axes[0].plot(
            mean.index,
            100 * mean["train_top1_err"],
            style,
            color=colour,
            lw=2.2,
            label=f"{label} (mean of {seeds})",
        )
        axes[1].plot(mean["clock"], 100 * mean["train_top1_err"], style, color=colour, lw=2.2)
    epoch_axis(axes[0], [e for runs in curves.values() for run in runs for e in run["epoch"]])
    for axis, xlabel in ((axes[0], "epochs"), (axes[1], "training seconds")):
        axis.axhline(100 * paper.RELU_TARGET_TRAIN_ERROR, color="grey", lw=0.8)
        axis.set(xlabel=xlabel, ylabel="training error (%)", ylim=(0, 100))
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)
