"""Figure 2 of the paper, drawn from an ArchConfig: ``python -m paper_alexnet.shapes --figure OUT.png``.

As the paper draws it: the towers side by side (one above the other here), each layer's maps as a box with
its side and its depth per tower, the kernel that makes the next layer, the max-pooling between, and the
connections between the towers where §3.2 puts them (conv3, fc6, fc7, fc8 read both towers' maps). Every
number is geometry.layer_shapes' arithmetic for the config, so the figure is right for every variant and
input size: torchvision's net and ``paper+no-groups`` are one tower, ``one-tower`` half as deep.
"""

from __future__ import annotations

import math
from typing import List

from .config import ArchConfig
from .geometry import Layer, layer_shapes

TIMES = "×"


def stages(config: ArchConfig) -> List[dict]:
    """The boxes of the figure, in order: the input, then each conv and fc layer's output per tower, with
    the kernel that made it and the pooling that follows it."""
    rows = layer_shapes(config)
    learned = [r for r in rows if r.learned]
    pools = {r.name: r for r in rows if r.kind == "maxpool"}
    norms = {r.name for r in rows if r.kind == "lrn"}
    out = [
        {
            "name": "input",
            "side": config.input_size,
            "depth": config.in_channels,
            "towers": 1,
            "kernel": "",
        }
    ]
    for row in learned:
        towers = row.towers
        depth = row.out_shape[0] // towers
        kernel = (
            f"{row.kernel}{TIMES}{row.kernel}" + (f" /{row.stride}" if row.stride > 1 else "")
            if row.kind == "conv"
            else "dense"
        )
        pool = pools.get(f"pool{row.name[-1]}") if row.kind == "conv" else None
        out.append(
            {
                "name": row.name,
                "side": row.out_shape[1] if row.kind == "conv" else 1,
                "depth": depth,
                "towers": towers,
                "kernel": kernel,
                "reads_both": _reads_both(row, out[-1]),
                "pool": (
                    ("LRN, " if f"norm{row.name[-1]}" in norms else "")
                    + f"max pool {pool.kernel}/{pool.stride} → {pool.out_shape[1]}{TIMES}{pool.out_shape[1]}"
                )
                if pool
                else "",
                "layer": row,
            }
        )
    return out


def _reads_both(row: Layer, previous: dict) -> bool:
    """Whether each tower of ``row`` reads both towers of the layer before (§3.2): an ungrouped layer after a
    two-tower one."""
    return previous["towers"] == 2 and row.groups == 1


def draw(config: ArchConfig, path: str) -> None:
    """Write the figure to ``path`` (.png, .svg or .pdf; SVG keeps its text as text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, Rectangle

    boxes = stages(config)
    two = max(b["towers"] for b in boxes) == 2
    fig, axis = plt.subplots(figsize=(15, 6.2 if two else 4.2))
    axis.set_xlim(-0.6, len(boxes) - 0.2)
    axis.set_ylim(-1.75 if two else -0.9, 1.45 if two else 1.0)
    axis.axis("off")
    lanes = {1: [0.0], 2: [0.55, -0.55]}
    centres = {}
    for x, box in enumerate(boxes):
        # the side, log scale
        h = 0.16 + 0.5 * math.log(box["side"] + 1) / math.log(config.input_size + 1)
        w = 0.1 + 0.45 * math.log(box["depth"] + 1) / math.log(4097)  # the depth, log scale
        ys = lanes[box["towers"]] if box["towers"] == 2 else [0.0]
        centres[x] = ys
        for y in ys:
            axis.add_patch(
                Rectangle((x - w / 2, y - h / 2), w, h, facecolor="#dbe9f6", edgecolor="#1f4e79")
            )
            label = (
                f"{box['side']}{TIMES}{box['side']}{TIMES}{box['depth']}"
                if box["side"] > 1
                else f"{box['depth']}"
            )
            axis.text(
                x,
                y + h / 2 + 0.03,
                label,
                ha="center",
                va="bottom",
                fontsize=8,
                gid=f"size-{box['name']}",
            )
        axis.text(x, (-1.5 if two else -0.75), box["name"], ha="center", fontsize=9, weight="bold")
        if box["kernel"]:
            axis.text(x, (-1.65 if two else -0.86), box["kernel"], ha="center", fontsize=7, color="#444444",
                      gid=f"kernel-{box['name']}")  # fmt: skip
        if box.get("pool"):
            axis.text(x + 0.5, (1.32 if two else 0.85), box["pool"], ha="center", fontsize=7, color="#7a3b00",
                      gid=f"pool-{box['name']}")  # fmt: skip
    for x in range(1, len(boxes)):
        before, here = centres[x - 1], centres[x]
        both = boxes[x].get("reads_both")
        for i, y1 in enumerate(here):
            sources = before if (both or len(before) != len(here)) else [before[i]]
            for y0 in sources:
                cross = len(before) == 2 and y0 != y1  # from the other tower
                colour, width = ("#c0392b", 1.2) if cross else ("#555555", 0.8)
                axis.add_patch(FancyArrowPatch((x - 1 + 0.3, y0), (x - 0.3, y1), arrowstyle="-|>",
                                               mutation_scale=8, color=colour, lw=width))  # fmt: skip
    crossings = [
        b["name"]
        for x, b in enumerate(boxes)
        if x and len(centres[x - 1]) == 2 and (b.get("reads_both") or b["towers"] == 1)
    ]
    where = f"towers exchange maps into {', '.join(crossings)} (red)" if crossings else "one tower"
    note = ""
    first = boxes[1]["layer"]
    if config.input_size == 227:  # what the paper's stated 224 would give (§3.5)
        side = (224 - first.kernel + 2 * first.padding) / first.stride + 1
        note = (
            f"; the paper states 224, which gives (224 − {first.kernel} + 2·{first.padding}) / "
            f"{first.stride} + 1 = {side:g}"
        )
    axis.set_title(
        f"'{config.name}' at {config.input_size}{TIMES}{config.input_size}: maps as side{TIMES}side{TIMES}depth "
        f"per tower; {where}{note}",
        fontsize=9,
    )
    fig.tight_layout()
    # SVG text as <text>, readable and searchable
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(path, dpi=110)
    plt.close(fig)
