"""One training run's settings, typed and frozen: what ``reproduce.train`` parses its flags into once, what
``reproduce.ablate`` derives each grid cell from (``change``), and what config.json records.

A field is either given (a flag, a cell's ``@key=value``) or defaulted: filled from the data kind's row or
the recipe (recipes.py). ``defaulted`` names the latter, so that a changed recipe or data set re-derives them
(``settle``) and an argv made from a config (``to_argv``) gives the same config back.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from paper_alexnet import ArchConfig, paper, published
from paper_alexnet.cli import for_file
from paper_alexnet.data import Augment, DataError
from paper_alexnet.data.sources import parse_spec
from paper_alexnet.networks import get_network
from reproduce.training import recipes
from reproduce.common.args import UsageError, check_workers

FORMAT = "paper_alexnet.run/2"  # config.json; /1 (no format field) kept the flags under "args"
# Filled from the data kind's row or the recipe when not given (None on the command line; --recipe auto).
DEFAULTABLE = (
    "variant",  # "paper", or the variant published weights named by --pretrained fit
    "recipe",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "schedule",
    "on_stall",
    "mean",
    "out",
    *recipes.TOOLS,
)
# What makes a run the run it is: --resume refuses to continue a checkpoint with other values.
DEFINING = (
    "variant",
    "data",
    "batch_size",
    "seed",
    "recipe",
    "two_gpu",
    "optimizer",
    *recipes.TOOLS,
)
# What the input of pretrained weights is (a key of ``INPUTS``), and how the run feeds it.
INPUTS = {
    "torchvision": "ImageNet's mean and std (x/255; --mean torchvision)",
    "unit std": "pixels minus the mean, scaled to unit std (--recipe quick)",
    "raw": "raw 0-255 pixels minus the mean (--recipe paper, §2)",
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of a training run; the names are train's flags' (``--batch-size`` -> batch_size)."""

    # the net and how it starts and learns
    variant: str = "paper"
    recipe: Optional[str] = None  # recipes.RECIPES' key once settled
    # data (§2, §4.1)
    data: str = "synthetic"
    crop: Optional[int] = None  # None: the net's input size
    no_translate: bool = False
    no_flip: bool = False
    no_pca: bool = False
    pca_sigma: float = paper.PCA_SIGMA
    crop_scale: Optional[float] = (
        None  # not §4.1: random-resized crops (0 or None: off; the recipe's)
    )
    jitter: Optional[float] = None  # not §4.1: colour jitter (0: off; None: the recipe's)
    mean: Optional[str] = None  # None: the mean image (§2)
    workers: Optional[int] = None  # None: args.loader_processes' (by device and cores)
    decode: str = "auto"
    strict: bool = False
    download: bool = False
    quiet: bool = False
    # devices (§3.2)
    device: str = "auto"
    two_gpu: bool = False
    devices: Optional[str] = None
    # optimisation (§5)
    epochs: Optional[int] = (
        None  # None (and the rest of DEFAULTABLE): the data kind's or the recipe's
    )
    batch_size: Optional[int] = None
    optimizer: Optional[str] = None
    lr: Optional[float] = None
    momentum: float = paper.MOMENTUM
    wd: float = paper.WEIGHT_DECAY
    schedule: Optional[str] = None
    patience: int = 1
    step_size: int = 30
    # not §5 (docs/deviations.md): 0 is off; None: the recipe's
    label_smoothing: Optional[float] = None
    mixup: Optional[float] = None
    cutmix: Optional[float] = None
    ema: Optional[float] = None
    # the run
    out: Optional[str] = None
    resume: Optional[str] = None  # "": DIR/checkpoint.pt
    on_stall: Optional[str] = None
    seed: int = 0
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    no_tf32: bool = False
    tensorboard: bool = False
    pretrained: Optional[str] = None
    freeze_features: bool = False
    limit_train: Optional[int] = None
    limit_val: Optional[int] = None
    ten_crop: bool = False
    # derived, and where values came from
    data_kind: str = ""  # recipes.data_kind: a store counts as the data it was made of
    defaulted: Tuple[str, ...] = DEFAULTABLE  # the fields filled from the data kind or the recipe
    pretrained_input: Optional[str] = (
        None  # what --pretrained weights learned on (INPUTS), once read
    )
    command: Tuple[str, ...] = ()  # the user's words, for the command a stall message suggests

    @property
    def recipe_by_weights(self) -> bool:
        """``--recipe auto`` took another recipe than the data kind's, to feed pretrained weights their input."""
        return (
            "recipe" in self.defaulted
            and self.recipe != recipes.DATA_DEFAULTS[self.data_kind].recipe
        )

    @property
    def recipe_reason(self) -> str:
        """Why this recipe and input: "--recipe quick", or "--recipe auto on folder data, with ..."."""
        if "recipe" not in self.defaulted:
            return f"--recipe {self.recipe}"
        reason = f"--recipe auto on {self.data_kind} data"
        if "mean" in self.defaulted and self.mean == "torchvision":
            return (
                reason
                + f", with --mean torchvision for --pretrained weights trained on {INPUTS['torchvision']}"
            )
        if self.recipe_by_weights:
            return (
                reason + f", with --pretrained weights trained on {INPUTS[self.pretrained_input]}"
            )
        return reason


def flag_fields() -> Tuple[str, ...]:
    """The fields that are train's flags (the rest are derived)."""
    derived = {"data_kind", "defaulted", "pretrained_input", "command"}
    return tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in derived)


def from_args(args: argparse.Namespace, argv: Sequence[str] = ()) -> RunConfig:
    """The settled config of train's parsed flags (``argv``: the words they came from)."""
    given = {name: getattr(args, name) for name in flag_fields()}
    defaulted = tuple(name for name in DEFAULTABLE if given[name] in (None, "auto"))
    given = {k: v for k, v in given.items() if k not in defaulted}
    return settle(RunConfig(**given, defaulted=defaulted, command=tuple(argv)))


def settle(config: RunConfig) -> RunConfig:
    """Fill the defaulted fields from the data kind and the recipe (and pretrained weights' input), and refuse
    bad values before any work."""
    kind = recipes.data_kind(config.data)  # a bad spec stops here; a store: the data it was made of
    data = recipes.DATA_DEFAULTS[kind]

    def pick(name, default):
        return default if name in config.defaulted else getattr(config, name)

    variant = _variant(config)
    recipe, mean = pick("recipe", data.recipe), pick("mean", None)
    if config.pretrained_input is not None:
        recipe, mean = _match_weights(config, recipe, mean)
    chosen = recipes.RECIPES[recipe]
    optimizer = pick("optimizer", chosen.optimizer)
    config = dataclasses.replace(
        config,
        variant=variant,
        data_kind=kind,
        recipe=recipe,
        mean=mean,
        optimizer=optimizer,
        lr=pick(
            "lr", chosen.lr if optimizer == chosen.optimizer else recipes.OPTIMIZER_LR[optimizer]
        ),
        schedule=pick("schedule", data.schedule or chosen.schedule),
        epochs=pick("epochs", data.epochs),
        batch_size=pick("batch_size", data.batch_size),
        on_stall=pick("on_stall", data.on_stall),
        **{name: pick(name, getattr(chosen, name)) for name in recipes.TOOLS},
        out=pick("out", os.path.join("runs", f"{variant}-{parse_spec(config.data).kind}")),
    )
    _check(config)
    return config


def _variant(config: RunConfig) -> str:
    """The net: as given; else the one published weights named by --pretrained fit (published.py: "bvlc" ->
    caffe), else "paper". A --variant that contradicts the named weights is refused."""
    named = (
        published.lookup(config.pretrained)
        if config.pretrained and not os.path.exists(config.pretrained)
        else None
    )
    if named is None:
        return "paper" if "variant" in config.defaulted else config.variant
    if "variant" not in config.defaulted and config.variant != named.variant:
        raise UsageError(
            f"--pretrained {config.pretrained} holds a '{named.variant}' net, not '{config.variant}': leave "
            f"--variant out (or give --variant {named.variant})"
        )
    return named.variant


def change(config: RunConfig, **fields: Any) -> RunConfig:
    """``config`` with ``fields`` given (as flags would give them), the defaulted rest derived again."""
    unknown = sorted(set(fields) - set(flag_fields()) - {"pretrained_input"})
    if unknown:
        raise UsageError(f"not a setting of reproduce.train: {', '.join(unknown)}")
    defaulted = tuple(name for name in config.defaulted if name not in fields)
    return settle(dataclasses.replace(config, **fields, defaulted=defaulted))


def _check(config: RunConfig) -> None:
    checks = [
        (config.epochs >= 1, f"--epochs must be at least 1, not {config.epochs}"),
        (config.batch_size >= 1, f"--batch-size must be at least 1, not {config.batch_size}"),
        (config.lr > 0, f"--lr must be positive, not {config.lr}"),
        (config.patience >= 1, "--patience must be at least 1"),
        (config.limit_train is None or config.limit_train >= 1, "--limit-train must be at least 1"),
        (config.limit_val is None or config.limit_val >= 1, "--limit-val must be at least 1"),
        (
            0 <= config.label_smoothing < 1,
            f"--label-smoothing must be at least 0 and below 1, not {config.label_smoothing:g}",
        ),
        (config.mixup >= 0, f"--mixup must be 0 (off) or a positive alpha, not {config.mixup:g}"),
        (
            config.cutmix >= 0,
            f"--cutmix must be 0 (off) or a positive alpha, not {config.cutmix:g}",
        ),
        (0 <= config.ema < 1, f"--ema must be 0 (off) or a decay below 1, not {config.ema:g}"),
        (
            not config.freeze_features or config.pretrained,
            "--freeze-features needs --pretrained PATH",
        ),
    ]
    network = get_network(config.variant)  # an unknown name stops here
    check_workers(config.workers)
    augment(config, network.input_size)  # and a crop the images cannot give
    checks.append(
        (
            isinstance(network, ArchConfig) or not config.pretrained,
            f"--pretrained loads AlexNet weights, not {config.variant}'s",
        )
    )
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UsageError(
            '--tensorboard needs the tensorboard package: pip install -e ".[tensorboard]"'
        )


def augment(config: RunConfig, input_size: int) -> Augment:
    """The §2/§4.1 pipeline's switches of ``config`` (the crop defaults to the net's input size); a crop the
    images cannot give is a DataError."""
    crop = config.crop if config.crop is not None else input_size
    try:
        return Augment(
            crop=crop,
            translate=not config.no_translate,
            flip=not config.no_flip,
            pca=not config.no_pca,
            pca_sigma=config.pca_sigma,
            mean=config.mean or "image",
            crop_scale=config.crop_scale or None,
            jitter=config.jitter or 0.0,
        )
    except ValueError as err:
        raise DataError(str(err)) from None


def _match_weights(
    config: RunConfig, recipe: str, mean: Optional[str]
) -> Tuple[str, Optional[str]]:
    """Fine-tuning feeds the weights the input they learned on: ``--recipe auto`` picks the recipe whose input
    that is; a recipe or --mean given that feeds them another is refused, never mixed."""
    expected = config.pretrained_input

    def fed(recipe: str) -> str:
        return (
            "torchvision"
            if mean == "torchvision"
            else ("unit std" if recipes.RECIPES[recipe].unit_std else "raw")
        )

    if expected == "torchvision" and mean is None:  # the input torchvision's weights learned on
        return recipe, "torchvision"
    if fed(recipe) == expected:
        return recipe, mean
    if expected != "torchvision" and mean != "torchvision" and "recipe" in config.defaulted:
        return ("quick" if expected == "unit std" else "paper"), mean
    remedy = (
        "add --mean torchvision"
        if expected == "torchvision"
        else "drop --mean torchvision"
        if mean == "torchvision"
        else f"use --recipe {'quick' if expected == 'unit std' else 'paper'}"
    )
    raise UsageError(
        f"--pretrained {config.pretrained} was trained on {INPUTS[expected]}, but this run would "
        f"feed it {INPUTS[fed(recipe)]}: {remedy}"
    )


# --- argv, made from a config (for --jobs subprocesses and a cell's record) --------------------------------


def _options(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """train's flags by field name (argparse keeps them in ``_actions``)."""
    return {action.dest: action for action in parser._actions if action.option_strings}


def to_argv(config: RunConfig, parser: argparse.ArgumentParser) -> List[str]:
    """The flags that give ``config`` again: every given field that differs from its flag's default."""
    words: List[str] = []
    for name, action in _options(parser).items():
        if name not in flag_fields() or name in config.defaulted:
            continue
        value = getattr(config, name)
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            words.append(flag)
        else:
            words += [
                flag,
                "" if value is None else repr(value) if isinstance(value, float) else str(value),
            ]
    return words


def setting(parser: argparse.ArgumentParser, key: str, value: Optional[str]) -> Dict[str, Any]:
    """One ``@key=value`` (or a bare ``@key`` switch) as the field it sets, converted as the flag would be."""
    action = {a.option_strings[-1]: a for a in _options(parser).values()}.get(f"--{key}")
    if action is None or action.dest not in flag_fields():
        raise UsageError(
            f"--{key} is not a flag of reproduce.train (see python -m reproduce.train --help)"
        )
    if isinstance(action, argparse._StoreTrueAction):
        if value not in (None, "", "true", "1"):
            raise UsageError(f"--{key} is a switch: write @{key} alone")
        return {action.dest: True}
    if value is None:
        raise UsageError(f"--{key} takes a value: write @{key}=VALUE")
    try:
        converted = action.type(value) if action.type else value
    except (TypeError, ValueError):
        raise UsageError(f"--{key} {value!r}: not a valid value") from None
    if action.choices is not None and converted not in action.choices:
        raise UsageError(f"--{key} {value!r}: choose from {', '.join(map(str, action.choices))}")
    return {action.dest: converted}


# --- config.json --------------------------------------------------------------------------------------------


def as_record(config: RunConfig) -> Dict[str, Any]:
    """The config as config.json and a grid's cell.json hold it: its fields under "run", and the recipe and
    why it was chosen beside them (config.json adds what they gave: classes, model, augment, ...)."""
    return {
        "format": FORMAT,
        "run": dataclasses.asdict(config),
        "recipe": config.recipe,
        "recipe_reason": config.recipe_reason,
    }


def read_record(folder: str) -> Optional[Dict[str, Any]]:
    """A run folder's config.json with the run's settings at the top level (over the derived fields of the
    same name), in either format; None when there is none."""
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return flat(json.load(handle))


def flat(record: Dict[str, Any]) -> Dict[str, Any]:
    """A config.json or cell.json record with the settings at the top level: "run" (this format) or "args"
    (format 1, written before the config was typed)."""
    key = "run" if "format" in record else "args"
    settings = record.get(key) if isinstance(record.get(key), dict) else {}
    return {**{k: v for k, v in record.items() if k != key}, **settings}


def differences(
    saved: Dict[str, Any], config: RunConfig, fields: Sequence[str] = DEFINING
) -> List[str]:
    """The ``fields`` where a recorded run and ``config`` differ, as "name: saved -> now" (floats as files keep
    them, to 6 significant digits)."""
    return [
        f"{name}: {saved[name]!r} -> {getattr(config, name)!r}"
        for name in fields
        if name in saved and for_file(saved[name]) != for_file(getattr(config, name))
    ]
