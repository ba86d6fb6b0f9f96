"""What ``reproduce.train`` does when a flag is not given: the recipes, and the defaults per kind of data.

Two tables, printed in ``python -m reproduce.train --help``:

- RECIPES: how a net is started and optimised. ``paper`` is §5's init, input,
  rule and schedule; ``quick`` is what learns on small real data sets, where
  §5's init stalls (docs/training.md).
- DATA_DEFAULTS: per data kind (``data_kind``), the epochs, the batch
  size, the recipe ``--recipe auto`` picks (§5's on ImageNet, ``quick`` on every
  other data set, as measured in docs/training.md) and what a stalled run does.

A flag given on the command line always wins over both.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Optional

from paper_alexnet import code2012, paper
from paper_alexnet.data.sources import KINDS, DataError, parse_spec


@dataclasses.dataclass(frozen=True)
class Recipe:
    init: str  # ArchConfig.init for AlexNets: "paper" (§5: N(0, 0.01), biases 1) or "he"
    unit_std: (
        bool  # scale the mean-subtracted pixels to unit std (the paper feeds raw 0-255 values, §2)
    )
    optimizer: str  # "sgd" is the paper's exact rule (optim.PaperSGD)
    lr: float  # learning rate at the start (§5: 0.01 for SGD)
    schedule: str  # optim.build_schedule's name: "plateau" is §5's rule
    why: str
    # the small-data tools, none of them the paper's (docs/deviations.md; run_config.TOOLS); 0 / None: off
    crop_scale: Optional[float] = None  # a random-resized crop's smallest area (data/transforms.py)
    jitter: float = 0.0  # brightness/contrast/saturation factors in [1 - jitter, 1 + jitter]
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta's alpha (data/mixing.py)
    cutmix: float = 0.0
    ema: float = 0.0  # the decay of the weights' moving average a step (ema.py)
    # what the 2012 code did beside §5 and §4.1 (code2012.py; run_config's flags of the same names)
    mean: Optional[str] = None  # what --mean defaults to (None: the mean image, §2)
    crop_chunk: int = 1  # images that share one crop and reflection (1: §4.1's, each its own)
    lighting: str = "paper"  # how PCA lighting is scaled (data/transforms.py, LIGHTING)
    bias_lr: float = 1.0  # the biases' rate, a multiple of lr (1: §5's one rate for all)
    bias_wd: float = 1.0  # the biases' weight decay, a multiple of --wd (1: every parameter decays)


RECIPES: Dict[str, Recipe] = {
    "paper": Recipe(
        "paper",
        False,
        "sgd",
        paper.LEARNING_RATE,
        "plateau",
        "§5's init, input, rule and schedule: N(0, 0.01) weights, biases 1 in conv2/4/5, fc6/7, raw "
        "pixels, SGD 0.01 with --wd inside the velocity, ÷10 when val error stops improving (batch and "
        "epochs: the data kind's, below; §5's 128 and 90 on ImageNet)",
    ),
    "quick": Recipe(
        "he",
        True,
        "adam",
        1e-4,
        "cosine",
        "what learns on small real data sets (measured in docs/training.md): §5's stall at "
        "ln(classes) never starts; --wd (0.0005) goes to Adam as an L2 term added to the gradient; "
        "the rate falls along a cosine over the epochs, never cut on a small validation set's noise",
    ),
    "code-2012": Recipe(
        "paper",
        False,
        "sgd",
        code2012.LEARNING_RATE,
        "code-2012",
        "what the authors' 2012 code ran for Table 2 (run #145, docs/code-2012.md): the variant's init "
        "(code-2012's: 0.03 in conv3-conv5), raw pixels minus the mean image's centre, SGD 0.01 with "
        "momentum 0.9, the biases at twice the rate and without decay, the rates lowered by hand as the run "
        "was, 32 images a crop, PCA lighting by the components' std and the crop divided by 1.1",
        mean="image-centre",
        crop_chunk=code2012.CROP_CHUNK,
        lighting="code-2012",
        bias_lr=code2012.BIAS_LEARNING_RATE / code2012.LEARNING_RATE,
        bias_wd=0.0,
    ),
}
# The learning rate an optimiser starts from when --optimizer is given without --lr.
OPTIMIZER_LR: Dict[str, float] = {"sgd": paper.LEARNING_RATE, "adam": 1e-4, "adamw": 1e-4}


# Small real data sets: the epochs and batch measured in docs/training.md (about 10 minutes for 1,500 images on
# 2 CPU cores; batch 32 takes four times the steps of §5's 128 from the same images)
SMALL_EPOCHS, SMALL_BATCH = 12, 32


@dataclasses.dataclass(frozen=True)
class DataDefaults:
    epochs: int
    batch_size: int
    recipe: str  # what --recipe auto picks
    on_stall: str  # what a run at chance does (watch.py): "stop" (exit 4) or "warn" and go on
    why: str
    schedule: Optional[str] = None  # instead of the recipe's (optim.build_schedule's name)


DATA_DEFAULTS: Dict[str, DataDefaults] = {
    # §5 on its own data; its stall there can lift after many of ImageNet's 10,000 steps an epoch
    "imagenet": DataDefaults(
        paper.EPOCHS, paper.BATCH_SIZE, "paper", "warn", "§5: about 90 epochs of batch 128"
    ),
    # 4 epochs end far from converged: a cosine would spend the last ones at a fraction of the rate (measured:
    # 28.5% against 21.0% val top-1 error, docs/training.md); the plateau rule does not cut while the error falls
    "synthetic": DataDefaults(
        4,
        16,
        "quick",
        "stop",
        "the default run: under 2 minutes on 2 CPU cores",
        schedule="plateau",
    ),
    # a small real data set (a user's folder, CIFAR, Caltech-101, or a store of one): what measured best
    **{
        kind: DataDefaults(SMALL_EPOCHS, SMALL_BATCH, "quick", "stop", "a smaller real data set")
        for kind in KINDS
        if kind not in ("imagenet", "synthetic", "store")
    },
    # a store takes the row of the data it was made from (data_kind); this row is for one that cannot be read
    "store": DataDefaults(
        SMALL_EPOCHS, SMALL_BATCH, "quick", "stop", "a store: the row of the data it was made from"
    ),
}


def data_kind(spec: str) -> str:
    """The kind of data a --data spec holds: a store (``prepare``'s) counts as the data it was made from, so that
    a store of ImageNet gets ImageNet's defaults. A bad spec is a DataError."""
    parsed = parse_spec(spec)
    if parsed.kind != "store":
        return parsed.kind
    try:
        with open(os.path.join(parsed.root, "store.json"), encoding="utf-8") as handle:
            return parse_spec(json.load(handle)["spec"]).kind
    except (OSError, ValueError, KeyError, TypeError, DataError):
        return "store"  # not a store yet: opening it says why


def describe() -> str:
    """Both tables as text, for --help."""
    # the tools are declared with the run's settings
    from reproduce.training.run_config import tools_on

    lines = ["recipes (--recipe):"]
    width = max(map(len, RECIPES))
    for name, r in RECIPES.items():
        lines.append(
            f"  {name:<{width}} init {r.init}, {'pixels scaled to unit std' if r.unit_std else 'raw pixels'}, "
            f"{r.optimizer} lr {r.lr:g}, {r.schedule} schedule"
        )
        lines.append(f"  {'':<{width}} {r.why}")
        tools = tools_on(r)
        lines.append(f"  {'':<{width}} small-data tools: {'; '.join(tools) if tools else 'none'}")
    lines.append("defaults per data kind (--data):")
    lines.append(f"  {'kind':<11} {'epochs':>6} {'batch':>6}  {'recipe':<6}  {'on stall':<8}")
    for kind, d in DATA_DEFAULTS.items():
        lines.append(
            f"  {kind:<11} {d.epochs:>6} {d.batch_size:>6}  {d.recipe:<6}  {d.on_stall:<8}  ({d.why}"
            + (f"; {d.schedule} schedule" if d.schedule else "")
            + ")"
        )
    lines.append(
        "A flag given on the command line wins; the chosen values are in the run's config.json."
    )
    return "\n".join(lines)
