"""What ``reproduce.train`` does when a flag is not given: the recipes, and the defaults per kind of data.

Two tables, printed in ``python -m reproduce.train --help``:

- RECIPES: how a net is started and optimised. ``paper`` is §5 exactly;
  ``quick`` is the measured remedy for §5's stall on short runs
  (docs/training.md).
- DATA_DEFAULTS: per data kind (``parse_spec(...).kind``), the epochs, the batch
  size and the recipe ``--recipe auto`` picks.

A flag given on the command line always wins over both.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

from paper_alexnet import paper
from paper_alexnet.data.sources import KINDS, parse_spec


@dataclasses.dataclass(frozen=True)
class Recipe:
    init: str           # ArchConfig.init for AlexNets: "paper" (§5: N(0, 0.01), biases 1) or "he"
    unit_std: bool      # scale the mean-subtracted pixels to unit std (the paper feeds raw 0-255 values, §2)
    optimizer: str      # "sgd" is the paper's exact rule (optim.PaperSGD)
    lr: float           # learning rate at the start (§5: 0.01 for SGD)
    why: str


RECIPES: Dict[str, Recipe] = {
    "paper": Recipe("paper", False, "sgd", paper.LEARNING_RATE,
                    "§5's init, input and rule: N(0, 0.01) weights, biases 1 in conv2/4/5, fc6/7, raw pixels, SGD "
                    "0.01 with --wd inside the velocity (batch and epochs: the data kind's, below)"),
    "quick": Recipe("he", True, "adam", 1e-4,
                    "the measured remedy for §5's stall at ln(classes) on short runs (docs/training.md); --wd "
                    "(0.0005) goes to Adam as an L2 term added to the gradient"),
}
# The learning rate an optimiser starts from when --optimizer is given without --lr.
OPTIMIZER_LR: Dict[str, float] = {"sgd": paper.LEARNING_RATE, "adam": 1e-4, "adamw": 1e-4}


@dataclasses.dataclass(frozen=True)
class DataDefaults:
    epochs: int
    batch_size: int
    recipe: str         # what --recipe auto picks
    why: str


DATA_DEFAULTS: Dict[str, DataDefaults] = {
    "imagenet": DataDefaults(paper.EPOCHS, paper.BATCH_SIZE, "paper", "§5: about 90 epochs of batch 128"),
    "synthetic": DataDefaults(4, 16, "quick", "the default run: about 5 minutes on 2 CPU cores"),
    **{kind: DataDefaults(30, paper.BATCH_SIZE, "paper", "a smaller real data set")
       for kind in KINDS if kind not in ("imagenet", "synthetic", "store")},
    "store": DataDefaults(30, paper.BATCH_SIZE, "paper", "a store of prepare"),
}


def data_defaults(spec: str) -> DataDefaults:
    """The row of DATA_DEFAULTS for a --data spec (a bad spec is a DataError)."""
    return DATA_DEFAULTS[parse_spec(spec).kind]


def describe() -> str:
    """Both tables as text, for --help."""
    lines = ["recipes (--recipe):"]
    for name, r in RECIPES.items():
        lines.append(f"  {name:<6} init {r.init}, {'pixels scaled to unit std' if r.unit_std else 'raw pixels'}, "
                     f"{r.optimizer} lr {r.lr:g}")
        lines.append(f"         {r.why}")
    lines.append("defaults per data kind (--data):")
    lines.append(f"  {'kind':<11} {'epochs':>6} {'batch':>6}  auto recipe")
    for kind, d in DATA_DEFAULTS.items():
        lines.append(f"  {kind:<11} {d.epochs:>6} {d.batch_size:>6}  {d.recipe:<6} ({d.why})")
    lines.append("A flag given on the command line wins; the chosen values are in the run's config.json.")
    return "\n".join(lines)
