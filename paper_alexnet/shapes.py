"""The shape report: §3.5's layer-by-layer arithmetic, to read next to the paper.

    python -m paper_alexnet.shapes                       # the paper's net
    python -m paper_alexnet.shapes --compare torchvision # two nets side by side
    python -m paper_alexnet.shapes --variant paper-224 --format csv

Every number comes from geometry.py and is checked against a forward pass of
the built model on the meta device (no memory, no compute); a disagreement
stops the report. Notes under the table list where the paper's own numbers
disagree with the arithmetic.
"""

import argparse
import csv
import dataclasses
import io
import json
import os
import re
import sys
from typing import Dict, List, Optional, Sequence

import torch

from .cli import HelpFormatter
from . import figure2, paper
from .config import ArchConfig, ConfigError
from .geometry import layer_shapes, totals, window_output
from .model import AlexNet
from .variants import PAPER, get_config, list_switches, list_variants
from .two_tower import crossing_bytes, splits_in_two

COLUMNS = (
    "layer",
    "type",
    "kernel",
    "stride",
    "padding",
    "groups",
    "in_channels",
    "in_height",
    "in_width",
    "out_channels",
    "out_height",
    "out_width",
    "tower_channels",
    "neurons",
    "params",
    "macs",
    "arithmetic",
)


class ReportMismatch(RuntimeError):
    """The arithmetic and the built model disagree: a bug, never a user error."""


def rows(config: ArchConfig) -> List[Dict[str, object]]:
    """One dict per layer with the COLUMNS above (the CSV's rows)."""
    out = []
    for layer in layer_shapes(config):
        tower = layer.tower_shape
        out.append(
            {
                "layer": layer.name,
                "type": layer.kind,
                "kernel": layer.kernel,
                "stride": layer.stride,
                "padding": layer.padding
                if not layer.edge_pad
                else f"{layer.padding}+{layer.edge_pad}",
                "groups": layer.groups,
                "in_channels": layer.in_shape[0],
                "in_height": layer.in_shape[1],
                "in_width": layer.in_shape[2],
                "out_channels": layer.out_shape[0],
                "out_height": layer.out_shape[1],
                "out_width": layer.out_shape[2],
                "tower_channels": tower[0] if tower else "",
                "neurons": layer.neurons,
                "params": layer.params,
                "macs": layer.macs,
                "arithmetic": layer.arithmetic,
            }
        )
    return out


def verify(config: ArchConfig) -> None:
    """Check every layer's arithmetic against a forward pass of the model on the meta device."""
    layers = layer_shapes(config)
    with torch.device("meta"):
        model = AlexNet(config)
    seen = {}
    for layer in layers:
        getattr(model, layer.name).register_forward_hook(
            lambda module, args, output, name=layer.name: seen.__setitem__(
                name, tuple(output.shape[1:])
            )
        )
    with torch.no_grad():
        model(
            torch.empty(1, config.in_channels, config.input_size, config.input_size, device="meta")
        )
    problems = []
    for layer in layers:
        want = layer.out_shape if layer.kind != "fc" else layer.out_shape[:1]
        params = sum(p.numel() for p in getattr(model, layer.name).parameters())
        if seen.get(layer.name) != want:
            problems.append(
                f"{layer.name}: arithmetic {_shape(want)}, forward pass {_shape(seen.get(layer.name))}"
            )
        if params != layer.params:
            problems.append(f"{layer.name}: arithmetic {layer.params} parameters, model {params}")
    total = sum(p.numel() for p in model.parameters())
    if total != totals(layers)["params"]:
        problems.append(f"total: arithmetic {totals(layers)['params']} parameters, model {total}")
    if problems:
        raise ReportMismatch(
            f"the shape report disagrees with the '{config.name}' model: " + "; ".join(problems)
        )


def _shape(shape: Optional[Sequence[int]]) -> str:
    return "×".join(map(str, shape)) if shape else "nothing"


def paper_notes() -> List[str]:
    """Where the paper's stated numbers and the arithmetic disagree (computed, not written down)."""
    notes = []
    k, s, p = paper.CONV_KERNELS[0], paper.CONV_STRIDES[0], paper.CONV_PADDINGS[0]
    _, _, stated = window_output(paper.STATED_INPUT_SIZE, k, s, p, "floor", "conv1")
    _, edge, ceil = window_output(paper.STATED_INPUT_SIZE, k, s, p, "ceil", "conv1")
    _, _, arith = window_output(paper.INPUT_SIZE, k, s, p, "floor", "conv1")
    notes.append(
        f"Input: §3.5 states {paper.STATED_INPUT_SIZE}×{paper.STATED_INPUT_SIZE}×3, but {stated}: "
        f"conv1 cannot give 55×55 from it. A {paper.INPUT_SIZE} input gives {arith} exactly "
        f"(variant 'paper'). cuda-convnet, the authors' code, rounds up: {ceil}, i.e. {edge} zero "
        f"rows/columns on the bottom/right edge (variant 'paper-224')."
    )
    layers = [layer for layer in layer_shapes(PAPER) if layer.learned]
    for layer, said in zip(layers, paper.STATED_NEURONS):
        c, h, w = layer.out_shape
        product = f"{h}·{w}·{c}" if layer.kind == "conv" else f"{c}"
        if said != layer.neurons:
            notes.append(
                f"Neurons of {layer.name}: §3.5 states {said:,}; the arithmetic gives "
                f"{product} = {layer.neurons:,}."
            )
    matching = [
        layer.name for layer, said in zip(layers, paper.STATED_NEURONS) if said == layer.neurons
    ]
    notes.append(f"The other stated neuron counts ({', '.join(matching)}) match the arithmetic.")
    total = totals(layers)
    notes.append(
        f"Neurons in all: the paper says {paper.STATED_TOTAL_NEURONS:,}; the sum is {total['neurons']:,} "
        f"({sum(paper.STATED_NEURONS):,} with the stated counts)."
    )
    notes.append(
        f"Parameters: the paper says {paper.STATED_TOTAL_PARAMS // 10**6} million; "
        f"the exact count is {total['params']:,}."
    )
    notes.append(
        "Multiply-adds count the weights of conv and fc layers only (not biases, ReLU, LRN or pooling); "
        "the paper states none."
    )
    return notes


def crossing_notes(config: ArchConfig, batch: int = paper.BATCH_SIZE) -> List[str]:
    """§3.2's budget: what crosses between the two GPUs per image, for a net split in two towers."""
    if not splits_in_two(config):
        return []
    crossing = crossing_bytes(config)
    forward = sum(crossing.values())
    parts = ", ".join(f"into {name} {value:,} B" for name, value in crossing.items())
    return [
        f"Activations cross between the two GPUs only into conv3, fc6, fc7 and fc8 (float32, per image): "
        f"{parts}; {forward:,} B forward and the same again backward (their gradients), "
        f"{2 * forward:,} B per image, {2 * forward * batch / 2**20:.1f} MiB per batch of {batch}. "
        f"Besides, each GPU gets its own copy of the input image "
        f"({4 * config.in_channels * config.input_size**2:,} B)."
    ]


def _fmt(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _io(row, prefix) -> str:
    return f"{row[prefix + '_channels']}×{row[prefix + '_height']}×{row[prefix + '_width']}"


def _text_table(headers: Sequence[str], body: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    columns = list(zip(*body))
    widths = [max(len(x) for x in (h, *col)) for h, col in zip(headers, columns)]
    numeric = [all(re.fullmatch(r"[+\-]?[\d,]+|—|", cell) for cell in col) for col in columns]

    def text(cells):
        return "  ".join(
            c.rjust(w) if right else c.ljust(w) for c, w, right in zip(cells, widths, numeric)
        ).rstrip()

    return "\n".join(
        [text(headers), text(["-" * w for w in widths])] + [text(cells) for cells in body]
    )


def _single(config: ArchConfig, markdown: bool) -> str:
    headers = [
        "layer",
        "type",
        "k",
        "s",
        "p",
        "g",
        "input",
        "output",
        "per tower",
        "neurons",
        "params",
        "MACs",
        "arithmetic (height)",
    ]
    body = []
    for r in rows(config):
        tower = (
            f"{r['tower_channels']}×{r['out_height']}×{r['out_width']}"
            if r["tower_channels"]
            else "—"
        )

        def dash(key, r=r):
            return str(r[key]) if r[key] else "—"

        windowed = r["type"] in ("conv", "maxpool")
        body.append(
            [
                r["layer"],
                r["type"],
                dash("kernel"),
                dash("stride"),
                str(r["padding"]) if windowed else "—",
                str(r["groups"]) if r["type"] in ("conv", "lrn") else "—",
                _io(r, "in"),
                _io(r, "out"),
                tower,
                _fmt(r["neurons"]) if r["neurons"] else "—",
                _fmt(r["params"]),
                _fmt(r["macs"]),
                r["arithmetic"],
            ]
        )
    total = totals(layer_shapes(config))
    body.append(
        [
            "total",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            _fmt(total["neurons"]),
            _fmt(total["params"]),
            _fmt(total["macs"]),
            "",
        ]
    )
    return _text_table(headers, body, markdown)


def _merged_names(a: Sequence[str], b: Sequence[str]) -> List[str]:
    names = list(a)
    for i, name in enumerate(b):
        if name not in names:
            names.insert(names.index(b[i - 1]) + 1 if i else 0, name)
    return names


def _compare(a: ArchConfig, b: ArchConfig, markdown: bool) -> str:
    ra, rb = ({r["layer"]: r for r in rows(c)} for c in (a, b))
    headers = (
        ["layer"]
        + [f"{c.name}: {what}" for c in (a, b) for what in ("output", "params", "MACs")]
        + ["differs"]
    )
    body = []
    for name in _merged_names(list(ra), list(rb)):
        cells = [name]
        for side in (ra, rb):
            r = side.get(name)
            cells += [_io(r, "out"), _fmt(r["params"]), _fmt(r["macs"])] if r else ["—", "—", "—"]
        body.append(cells + [_differs(ra.get(name), rb.get(name), a, b)])
    ta, tb = totals(layer_shapes(a)), totals(layer_shapes(b))
    changed = [what for what in ("params", "macs") if ta[what] != tb[what]]
    body.append(
        [
            "total",
            "",
            _fmt(ta["params"]),
            _fmt(ta["macs"]),
            "",
            _fmt(tb["params"]),
            _fmt(tb["macs"]),
            ", ".join(WHAT[w] for w in changed),
        ]
    )
    body.append(
        [
            f"{a.name} − {b.name}",
            "",
            f"{ta['params'] - tb['params']:+,}",
            f"{ta['macs'] - tb['macs']:+,}",
            "",
            "",
            "",
            "",
        ]
    )
    return _text_table(headers, body, markdown)


WHAT = {
    "out": "output",
    "params": "params",
    "macs": "MACs",
    "kernel": "window",
    "stride": "stride",
    "padding": "padding",
    "groups": "groups",
}


def _differs(ra: Optional[dict], rb: Optional[dict], a: ArchConfig, b: ArchConfig) -> str:
    """What differs in one layer between the two nets: "only in NAME", or the columns that differ."""
    if ra is None or rb is None:
        return f"only in {(a if rb is None else b).name}"
    keys = ("out", "params", "macs", "kernel", "stride", "padding", "groups")
    got = [
        WHAT[key]
        for key in keys
        if (_io(ra, "out") != _io(rb, "out") if key == "out" else ra[key] != rb[key])
    ]
    return ", ".join(got)


def setting_differences(a: ArchConfig, b: ArchConfig) -> List[str]:
    """The ArchConfig fields whose values differ between the two nets, as "field: a -> b" (what the table's
    shapes cannot show: the order of a stage, the normalisations' constants, init, dropout)."""
    out = []
    for f in dataclasses.fields(ArchConfig):
        if f.name in ("name", "description"):
            continue
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if va != vb:
            out.append(f"{f.name}: {_value(va)} -> {_value(vb)}")
    return out


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_value(v) for v in value) + ")"
    return str(value)


def render(configs: Sequence[ArchConfig], fmt: str = "table") -> str:
    """The report for one config, or two side by side, in table, markdown, csv or json."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=("variant",) + COLUMNS, lineterminator="\n")
        writer.writeheader()
        for config in configs:
            for r in rows(config):
                writer.writerow({"variant": config.name, **r})
        return buffer.getvalue()
    if fmt == "json":
        return (
            json.dumps(
                {
                    "variants": [
                        {
                            "name": c.name,
                            "description": c.description,
                            "input_size": c.input_size,
                            "layers": rows(c),
                            "totals": totals(layer_shapes(c)),
                        }
                        for c in configs
                    ],
                    "crossings_bytes_per_image": {
                        c.name: crossing_bytes(c) for c in configs if splits_in_two(c)
                    },
                    "paper_notes": paper_notes(),
                },
                indent=2,
                ensure_ascii=False,
            )
            + "\n"
        )
    markdown = fmt == "markdown"
    heading = "\n".join(
        f"{'## ' if markdown else ''}{c.name}: {c.description}; "
        f"input {c.in_channels}×{c.input_size}×{c.input_size}"
        for c in configs
    )
    table = _single(configs[0], markdown) if len(configs) == 1 else _compare(*configs, markdown)
    bullet = "- " if markdown else "  * "
    notes = "\n".join(
        [
            ("### " if markdown else "")
            + "Where the paper's own numbers disagree with the arithmetic"
        ]
        + [bullet + note for note in paper_notes()]
    )
    differences = (
        "\n".join(
            [
                ("### " if markdown else "")
                + f"Settings that differ ({configs[0].name} -> {configs[1].name})"
            ]
            + [bullet + d for d in setting_differences(*configs)]
        )
        if len(configs) == 2
        else ""
    )
    crossings = [f"{bullet}{c.name}: {note}" for c in configs for note in crossing_notes(c)]
    between = (
        "\n".join([("### " if markdown else "") + "Between the two GPUs (§3.2)"] + crossings)
        if crossings
        else ""
    )
    return (
        "\n\n".join(part for part in (heading, table, differences, between, notes) if part) + "\n"
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m paper_alexnet.shapes",
        formatter_class=HelpFormatter,
        description="Layer-by-layer shape arithmetic, parameters and multiply-adds of an AlexNet (§3.5), "
        "checked against a forward pass of the built model.",
    )
    parser.add_argument(
        "--variant",
        default="paper",
        help=f"network: {', '.join(list_variants())}; add switches with '+' "
        f"({', '.join(list_switches())}), e.g. paper+no-lrn",
    )
    parser.add_argument(
        "--compare",
        metavar="VARIANT",
        nargs="+",
        default=None,
        help="a second network to show beside --variant's (or two: --compare paper code-2012), each "
        "difference of shape, parameters and multiply-adds flagged, and the settings that differ listed",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="input side in pixels (default: the variant's own; fc6 is sized to match)",
    )
    parser.add_argument("--num-classes", type=int, default=paper.NUM_CLASSES, help="outputs of fc8")
    parser.add_argument(
        "--format",
        choices=("table", "markdown", "csv", "json"),
        default="table",
        help="output format",
    )
    parser.add_argument(
        "-o", "--output", default=None, help="write the report to this file instead of stdout"
    )
    parser.add_argument(
        "--figure",
        default=None,
        metavar="OUT.png",
        help="also draw the net as the paper's Figure 2 does (.png, .svg or .pdf), every number from "
        "the shape arithmetic",
    )
    return parser


def _variants(variant: str, compare: Optional[Sequence[str]]) -> List[str]:
    """The nets to report: --variant alone, --variant beside --compare's one, or --compare's two."""
    if not compare:
        return [variant]
    if len(compare) > 2:
        raise ConfigError(f"--compare takes one or two variants, not {len(compare)}")
    return list(compare) if len(compare) == 2 else [variant, *compare]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    overrides = {"num_classes": args.num_classes}
    if args.input_size is not None:
        overrides["input_size"] = args.input_size
    try:
        configs = [get_config(name, **overrides) for name in _variants(args.variant, args.compare)]
        for config in configs:
            verify(config)
        text = render(configs, args.format)
        for config in configs:
            print(
                f"checked: every layer's output shape and parameter count, and the total, of '{config.name}' at "
                f"{config.input_size}x{config.input_size} against a forward pass of the built model (meta device)",
                file=sys.stderr,
            )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ReportMismatch as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.figure:
        if os.path.splitext(args.figure)[1].lower() not in (".png", ".svg", ".pdf"):
            print(f"error: --figure {args.figure}: give a .png, .svg or .pdf file", file=sys.stderr)
            return 2
        try:
            figure2.draw(configs[0], args.figure)
        except OSError as err:
            print(f"error: could not write {args.figure}: {err.strerror or err}", file=sys.stderr)
            return 1
        print(f"wrote {args.figure}: Figure 2 of '{configs[0].name}'", file=sys.stderr)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
