"""One training run's settings, typed and frozen: what ``reproduce.train`` parses its flags into once, what
``reproduce.ablate`` derives each grid cell from (``change``), and what config.json records.

Each setting is declared once, as a field of RunConfig (``setting``): its flag, --help text and group, the
check on its value, whether the data kind or the recipe fills it in, whether it defines a run. train's
parser, its --help, a grid cell's ``@key=value`` (``from_label``), the argv made from a config (``to_argv``),
the resume comparison (DEFINING) and config.json are derived from those declarations.

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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from paper_alexnet import ArchConfig, backends, list_switches, list_variants, paper, published
from paper_alexnet.cli import for_file
from paper_alexnet.data import LIGHTING, MEAN_MODES, Augment, DataError
from paper_alexnet.data.sources import parse_spec
from paper_alexnet.networks import OTHER_NETS, get_network
from reproduce.common import placement
from reproduce.common.args import (
    DATA,
    DECODE,
    DOWNLOAD,
    MISSING,
    QUIET,
    STRICT,
    TRAIN_WORKERS,
    Flag,
    UsageError,
    add_list_weights_flag,
)
from reproduce.common.placement import DEVICE_FLAGS, DEVICE_GROUP
from reproduce.training import recipes

FORMAT = "paper_alexnet.run/2"  # config.json; /1 (no format field) kept the flags under "args"
# What the input of pretrained weights is (a key of ``INPUTS``), and how the run feeds it.
INPUTS = {
    "torchvision": "ImageNet's mean and std (x/255; --mean torchvision)",
    "unit std": "pixels minus the mean, scaled to unit std (--recipe quick)",
    "raw": "raw 0-255 pixels minus the mean (--recipe paper, §2)",
}
# train's --help groups, in order (None: the top of the list, beside --help)
GROUPS = {
    "data": "data (§2, §4.1)",
    "devices": DEVICE_GROUP,
    "optimisation": "optimisation (§5)",
    "tools": "small-data tools (none of them the paper's: docs/deviations.md; with --crop-scale and --jitter "
    "above; 0 turns one off, and each defaults to the recipe's)",
    "run": "run",
}


def setting(
    flag: Flag,
    group: Optional[str],
    *,
    default: Any = MISSING,
    defaultable: bool = False,
    defining: bool = False,
    where: bool = False,
    tool: str = "",
    recipe: bool = False,
    then: Optional[Callable[[Any], None]] = None,
):
    """A field of RunConfig that is one of train's flags, declared once:

    - ``flag``: its name (the field's), help, type, choices, the check on its value, and its default, which is
      the field's too unless ``default`` differs (a value built in Python where the flag's is None or "auto");
    - ``group``: its --help group (GROUPS);
    - ``defaultable``: filled from the data kind's row or the recipe when not given (recipes.py);
    - ``defining``: what makes a run the run it is (--resume refuses to continue with another value);
    - ``where``: where and how it runs, not what it computes (a finished grid cell asked for again may differ);
    - ``tool``: a small-data tool a recipe sets, and its words when on (tools_on);
    - ``recipe``: another value a recipe sets (recipes.Recipe has a field of its name), not a tool;
    - ``then``: what --help lists right after it (``then(group)``)."""
    return dataclasses.field(
        default=flag.default if default is MISSING else default,
        metadata={
            "flag": flag,
            "group": group,
            "defaultable": defaultable,
            "defining": defining,
            "where": where,
            "tool": tool,
            "recipe": recipe or bool(tool),
            "then": then,
        },
    )


_POSITIVE = (lambda value: value >= 1, "{option} must be at least 1, not {}")
_LIMIT = (lambda value: value >= 1, "{option} must be at least 1")
_ALPHA = (lambda value: value >= 0, "{option} must be 0 (off) or a positive alpha, not {:g}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of a training run, each declared once (``setting``): its field, train's flag
    (``--batch-size`` -> batch_size), --help, the check on its value. The last four fields are derived."""

    # fmt: off
    # the net and how it starts and learns
    variant: str = setting(Flag(
        f"network: {', '.join(list_variants())}, with switches ({', '.join(list_switches())}) joined by '+', "
        f"e.g. paper+no-lrn; or a net to compare with: {', '.join(OTHER_NETS)} (figure1+tanh) (default: paper; "
        "with --pretrained NAME, the net those weights fit)"), None, default="paper", defaultable=True, defining=True)
    recipe: Optional[str] = setting(Flag(
        "how the net starts and learns (the tables below); auto: the data kind's (on ImageNet, code-2012 for "
        "--variant code-2012)", default="auto",
        choices=("auto", *recipes.RECIPES)), None, default=None, defaultable=True, defining=True)
    # data (§2, §4.1)
    data: str = setting(DATA, "data", defining=True)
    crop: Optional[int] = setting(Flag(
        "crop side (default: the variant's input, 227; 224 for paper-224) (§4.1)", type=int), "data")
    no_translate: bool = setting(Flag(
        "train on the centre crop: no random crop positions (§4.1's translations)", default=False), "data")
    no_flip: bool = setting(Flag("no random horizontal reflections (§4.1)", default=False), "data")
    no_pca: bool = setting(Flag("no PCA lighting (§4.1)", default=False), "data")
    pca: str = setting(Flag(
        "whose principal components the PCA lighting follows: data is §4.1's, the PCA of every RGB pixel of "
        "the training images; published is fb.resnet.torch's ImageNet values (from a subset of ImageNet)",
        default="data", choices=("data", "published")), "data")
    pca_sigma: float = setting(Flag(
        "std of the PCA lighting a_i (§4.1)", default=paper.PCA_SIGMA, type=float), "data")
    crop_scale: Optional[float] = setting(Flag(
        "not §4.1: random-resized crops instead of the fixed-size crop, each a box of at least LOW of the "
        "256x256 image's area (at most 0.75), aspect 3:4 to 4:3, resampled to the crop; 0: off (default: the "
        "recipe's)", type=float, metavar="LOW"), "data", defaultable=True, defining=True,
        tool="random-resized crops of at least {:g} of the image")
    jitter: Optional[float] = setting(Flag(
        "not §4.1: brightness, contrast and saturation each multiplied by a factor in [1-S, 1+S] per image; "
        "0: off (default: the recipe's)", type=float, metavar="S"), "data", defaultable=True, defining=True,
        tool="colour jitter {:g}")
    mean: Optional[str] = setting(Flag(
        "what to subtract: the training set's mean image (§2), cropped where the image is; its centre whatever "
        "the crop (image-centre: the 2012 code's); its per-channel mean, torchvision's ImageNet mean/std (for "
        "torchvision weights), or nothing (default: the recipe's, image; torchvision when --pretrained weights "
        "were trained that way)", choices=MEAN_MODES), "data", defaultable=True)
    crop_chunk: Optional[int] = setting(Flag(
        "images in a row of a batch that share one crop position and one reflection: 1 is §4.1's (each image "
        "its own), 32 the 2012 code's (default: the recipe's)", type=int, metavar="N", check=_POSITIVE),
        "data", defaultable=True, defining=True, recipe=True)
    lighting: Optional[str] = setting(Flag(
        "how PCA lighting is scaled: paper is §4.1's P(a·λ); code-2012 the 2012 code's P(a·σ), σ the "
        "components' std, after which the crop is divided by 1 + --pca-sigma (default: the recipe's)",
        choices=LIGHTING), "data", defaultable=True, defining=True, recipe=True)
    workers: Optional[int] = setting(TRAIN_WORKERS, "data", where=True)
    decode: str = setting(DECODE, "data", where=True)
    strict: bool = setting(STRICT, "data")
    download: bool = setting(DOWNLOAD, "data", where=True)
    quiet: bool = setting(QUIET, "data", where=True)
    # devices (§3.2)
    device: str = setting(DEVICE_FLAGS["device"], "devices", where=True)
    two_gpu: bool = setting(DEVICE_FLAGS["two_gpu"], "devices", defining=True)
    devices: Optional[str] = setting(DEVICE_FLAGS["devices"], "devices")
    # optimisation (§5)
    epochs: Optional[int] = setting(Flag(
        "passes over the training set (default: the data kind's, below)", type=int, check=_POSITIVE),
        "optimisation", defaultable=True)
    batch_size: Optional[int] = setting(Flag(
        "images per step (default: the data kind's)", type=int, short="-b", check=_POSITIVE),
        "optimisation", defaultable=True, defining=True)
    optimizer: Optional[str] = setting(Flag(
        "sgd is the paper's exact rule (PaperSGD) (default: the recipe's)", choices=tuple(recipes.OPTIMIZER_LR)),
        "optimisation", defaultable=True, defining=True)
    lr: Optional[float] = setting(Flag(
        "learning rate (default: the recipe's; with another --optimizer: "
        + ", ".join(f"{k} {v:g}" for k, v in recipes.OPTIMIZER_LR.items()) + ")",
        type=float, check=(lambda value: value > 0, "{option} must be positive, not {}")),
        "optimisation", defaultable=True)
    momentum: float = setting(Flag(
        "SGD momentum (§5)", default=paper.MOMENTUM, type=float), "optimisation")
    wd: float = setting(Flag(
        "weight decay (§5: inside the velocity)", default=paper.WEIGHT_DECAY, type=float), "optimisation")
    bias_lr: Optional[float] = setting(Flag(
        "the biases' learning rate as a multiple of --lr: 1 is §5's one rate for all, 2 the 2012 code's "
        "(default: the recipe's)", type=float, metavar="X",
        check=(lambda value: value >= 0, "{option} must be 0 or more, not {:g}")),
        "optimisation", defaultable=True, defining=True, recipe=True)
    bias_wd: Optional[float] = setting(Flag(
        "weight decay on the biases as a multiple of --wd: 1 decays every parameter, 0 is the 2012 code's "
        "(default: the recipe's)", type=float, metavar="X",
        check=(lambda value: value >= 0, "{option} must be 0 or more, not {:g}")),
        "optimisation", defaultable=True, defining=True, recipe=True)
    schedule: Optional[str] = setting(Flag(
        "plateau: divide by 10 when val error stops improving, at most 3 times (§5), never while it is still at "
        "chance; cosine: from --lr to zero over the epochs; code-2012: the 2012 run's rates by hand, at its "
        "epochs scaled to --epochs (weights ÷10 at 25, 51, 79 of 91; conv1 to 1e-5 at 67, 0 at 72; the "
        "biases' rate kept; PCA lighting off from 67) (default: the recipe's)",
        choices=("plateau", "step", "cosine", "none", "code-2012")), "optimisation", defaultable=True)
    patience: int = setting(Flag(
        "plateau: epochs without a new best before a drop", default=1, type=int,
        check=(lambda value: value >= 1, "{option} must be at least 1")), "optimisation")
    step_size: int = setting(Flag("step: epochs between drops by 10", default=30, type=int), "optimisation")
    # not §5 (docs/deviations.md): 0 is off; None: the recipe's
    label_smoothing: Optional[float] = setting(Flag(
        "train on (1-EPS) of the label plus EPS spread over all classes", type=float, metavar="EPS",
        check=(lambda value: 0 <= value < 1, "{option} must be at least 0 and below 1, not {:g}")),
        "tools", defaultable=True, defining=True, tool="label smoothing {:g}")
    mixup: Optional[float] = setting(Flag(
        "blend each batch with itself reversed, lam ~ Beta(ALPHA, ALPHA), the targets alike", type=float,
        metavar="ALPHA", check=_ALPHA), "tools", defaultable=True, defining=True, tool="mixup alpha {:g}")
    cutmix: Optional[float] = setting(Flag(
        "paste a box of (1-lam) of the crop from the reversed batch, lam ~ Beta(ALPHA, ALPHA); with --mixup, "
        "each batch takes one of the two", type=float, metavar="ALPHA", check=_ALPHA),
        "tools", defaultable=True, defining=True, tool="CutMix alpha {:g}")
    ema: Optional[float] = setting(Flag(
        "validate, keep and score a moving average of the weights, updated every step with this decay (e.g. "
        "0.99: about the last 100 steps)", type=float, metavar="DECAY",
        check=(lambda value: 0 <= value < 1, "{option} must be 0 (off) or a decay below 1, not {:g}")),
        "tools", defaultable=True, defining=True, tool="weights averaged with decay {:g} a step (EMA)")
    # the run
    out: Optional[str] = setting(Flag(
        "output folder (default: runs/<variant>-<data>)", metavar="DIR"), "run", defaultable=True, where=True)
    resume: Optional[str] = setting(Flag(
        "continue from a checkpoint (default: DIR/checkpoint.pt), at the step it was written", nargs="?",
        const="", metavar="PATH"), "run", where=True)
    on_stall: Optional[str] = setting(Flag(
        "a run whose loss sits at ln(classes) with its batches at chance, by the end of its first epoch or 10%% "
        "of its steps: stop (exit 4, checkpoint kept, the command that avoids it printed) or warn and go on "
        "(default: the data kind's, below)", choices=("stop", "warn")), "run", defaultable=True)
    seed: int = setting(Flag(
        "seeds init, data order, augmentation and dropout", default=0, type=int), "run", defining=True)
    amp: bool = setting(Flag("bfloat16 autocast", default=False), "run")
    channels_last: bool = setting(Flag(
        "channels-last memory format (already the default on a CPU with AVX-512, where the paper net trains "
        "1.08x as fast so, on AVX2 0.95x; and on CUDA with --amp: docs/performance.md)", default=False,
        by_device=placement.channels_last), "run")
    compile: bool = setting(Flag(
        "torch.compile the whole net for training (the first steps compile, for minutes; on a GPU the "
        "ReLU-LRN-pool stages are compiled without it: docs/performance.md)", default=False), "run")
    deterministic: bool = setting(Flag(
        "on CUDA: cuDNN's deterministic algorithms, no autotuning (by default cudnn.benchmark picks each "
        "layer's fastest, which may differ from run to run)", default=False, by_device=backends.configure), "run")
    no_tf32: bool = setting(Flag(
        "on CUDA: IEEE float32 matmuls and convolutions (by default both in TF32 on tensor cores)",
        default=False, by_device=backends.configure), "run")
    tensorboard: bool = setting(Flag(
        "also write TensorBoard events to DIR/tb (the tensorboard extra)", default=False), "run")
    pretrained: Optional[str] = setting(Flag(
        "start from a weights file: a checkpoint or shared folder of this package, a torchvision AlexNet state "
        f"dict (with --variant torchvision); or published weights by name: {', '.join(published.names())} "
        "(downloaded once, checked, converted, cached; the name brings its variant: --list-weights); fc8 is "
        "re-initialised when the class count differs", metavar="PATH"), "run", then=add_list_weights_flag)
    freeze_features: bool = setting(Flag(
        "with --pretrained: train fc6..fc8 only", default=False), "run")
    limit_train: Optional[int] = setting(Flag(
        "use N training images (seeded)", type=int, metavar="N", check=_LIMIT), "run")
    limit_val: Optional[int] = setting(Flag(
        "use N validation images (seeded)", type=int, metavar="N", check=_LIMIT), "run")
    ten_crop: bool = setting(Flag(
        "also evaluate best.pt with ten crops at the end (§4.1)", default=False), "run")
    # fmt: on
    # derived, and where values came from
    data_kind: str = ""  # recipes.data_kind: a store counts as the data it was made of
    # the fields filled from the data kind or the recipe (None: every DEFAULTABLE one, as in RunConfig())
    defaulted: Optional[Tuple[str, ...]] = None
    # what the --pretrained weights learned on (INPUTS): a name's as its entry states, a file's as read
    pretrained_input: Optional[str] = None
    command: Tuple[str, ...] = ()  # the user's words, for the command a stall message suggests

    @property
    def settled(self) -> bool:
        """Whether the defaulted fields are filled (``settle``): a config built in Python is not, yet."""
        return self.data_kind != ""

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


# --- what the declarations give --------------------------------------------------------------------------

DECLARED = tuple(f for f in dataclasses.fields(RunConfig) if "flag" in f.metadata)
FLAGS: Dict[str, Flag] = {f.name: f.metadata["flag"] for f in DECLARED}
# filled from the data kind's row or the recipe when not given (None on the command line; --recipe auto)
DEFAULTABLE = tuple(f.name for f in DECLARED if f.metadata["defaultable"])
# what makes a run the run it is: --resume refuses to continue a checkpoint with other values
DEFINING = tuple(f.name for f in DECLARED if f.metadata["defining"])
# where and how a run runs, not what it computes: a finished grid cell and the same cell asked for again may differ
WHERE = tuple(f.name for f in DECLARED if f.metadata["where"])
# the small-data tools a recipe sets (recipes.Recipe has a field of each name), and their words when on
TOOLS = {f.name: f.metadata["tool"] for f in DECLARED if f.metadata["tool"]}
# every value a recipe sets beyond its init, input, optimiser, rate and schedule: the tools and the 2012 code's
FROM_RECIPE = tuple(f.name for f in DECLARED if f.metadata["recipe"])


def add_flags(parser: argparse.ArgumentParser, default: Any = MISSING) -> None:
    """train's flags, in their --help groups (``default=argparse.SUPPRESS``: a parse gives only what was
    given)."""
    groups: Dict[Optional[str], Any] = {None: parser}
    for f in DECLARED:
        group = f.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(GROUPS[group])
        f.metadata["flag"].add(groups[group], f.name, default)
        if f.metadata["then"] is not None:
            f.metadata["then"](groups[group])


def tools_on(settings) -> list:
    """The small-data tools a recipe or a run has on, in words (none: an empty list)."""
    return [
        words.format(getattr(settings, name))
        for name, words in TOOLS.items()
        if getattr(settings, name)
    ]


def given(words: Sequence[str]) -> Dict[str, Any]:
    """The settings train's flags ``words`` give, and only those (a bad flag or value: UsageError)."""
    parser = argparse.ArgumentParser(prog="python -m reproduce.train", add_help=False)
    add_flags(parser, default=argparse.SUPPRESS)
    try:
        args, unknown = parser.parse_known_args(list(words))
    except SystemExit:  # argparse refused a value, and has said why
        raise UsageError(
            "reproduce.train does not accept these flags (see python -m reproduce.train --help)"
        ) from None
    if unknown:
        raise UsageError(
            f"{' '.join(unknown)}: reproduce.train does not accept these flags "
            f"(see python -m reproduce.train --help)"
        )
    return vars(args)


def from_fields(fields: Dict[str, Any], command: Sequence[str] = ()) -> RunConfig:
    """The settled config of the settings ``fields`` (as flags give them: None or "auto" is not given), the
    rest defaulted."""
    fields = _known(
        {k: v for k, v in fields.items() if not (k in DEFAULTABLE and v in (None, "auto"))}
    )
    defaulted = tuple(name for name in DEFAULTABLE if name not in fields)
    return settle(RunConfig(**fields, defaulted=defaulted, command=tuple(command)))


def _known(fields: Dict[str, Any]) -> Dict[str, Any]:
    """``fields``, when each is a setting of train (or the --pretrained input); else a UsageError."""
    unknown = sorted(set(fields) - set(FLAGS) - {"pretrained_input"})
    if unknown:
        raise UsageError(f"not a setting of reproduce.train: {', '.join(unknown)}")
    return fields


def from_words(words: Sequence[str]) -> RunConfig:
    """The settled config of train's flags ``words``."""
    return from_fields(given(words), words)


def from_args(args: argparse.Namespace, argv: Sequence[str] = ()) -> RunConfig:
    """The settled config of train's parsed flags (``argv``: the words they came from)."""
    return from_fields({name: getattr(args, name) for name in FLAGS}, argv)


def settle(config: RunConfig) -> RunConfig:
    """Fill the defaulted fields from the data kind and the recipe (and pretrained weights' input), and refuse
    bad values before any work."""
    if config.defaulted is None:
        config = dataclasses.replace(config, defaulted=DEFAULTABLE)
    kind = recipes.data_kind(config.data)  # a bad spec stops here; a store: the data it was made of
    data = recipes.DATA_DEFAULTS[kind]

    def pick(name, default):
        return default if name in config.defaulted else getattr(config, name)

    variant = _variant(config)
    # the recipe fits the input the --pretrained weights learned on
    if config.pretrained and config.pretrained_input is None:
        config = dataclasses.replace(config, pretrained_input=weights_input(config))
    recipe, mean = pick("recipe", data.recipe), pick("mean", None)
    # on §5's own data (ImageNet), --recipe auto trains the 2012 code's net as that code did
    if "recipe" in config.defaulted and recipe == "paper" and variant.split("+")[0] == "code-2012":
        recipe = "code-2012"
    if config.pretrained_input is not None:
        recipe, mean = _match_weights(config, recipe, mean)
    chosen = recipes.RECIPES[recipe]
    mean = chosen.mean if mean is None and "mean" in config.defaulted else mean
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
        # the data kind's schedule goes with its own recipe
        schedule=pick("schedule", (recipe == data.recipe and data.schedule) or chosen.schedule),
        epochs=pick("epochs", data.epochs),
        batch_size=pick("batch_size", data.batch_size),
        on_stall=pick("on_stall", data.on_stall),
        **{name: pick(name, getattr(chosen, name)) for name in FROM_RECIPE},
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
    _known(fields)
    defaulted = tuple(
        name
        for name in (DEFAULTABLE if config.defaulted is None else config.defaulted)
        if name not in fields
    )
    return settle(dataclasses.replace(config, **fields, defaulted=defaulted))


def _check(config: RunConfig) -> None:
    """Refuse bad values before any work: each flag's own check (its declaration), then what depends on
    more than one."""
    network = get_network(config.variant)  # an unknown name stops here
    augment(config, network.input_size)  # and a crop the images cannot give
    for name, flag in FLAGS.items():
        flag.checked(name, getattr(config, name))
    checks = [
        (
            not config.freeze_features or config.pretrained,
            "--freeze-features needs --pretrained PATH",
        ),
        (
            isinstance(network, ArchConfig) or not config.pretrained,
            f"--pretrained loads AlexNet weights, not {config.variant}'s",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UsageError(
            '--tensorboard needs the tensorboard package: pip install -e ".[tensorboard]"'
        )


def augment(config: RunConfig, input_size: int, channel_std=None) -> Augment:
    """The §2/§4.1 pipeline of ``config`` (the crop defaults to the net's input size), and with the training
    set's per-channel pixel std (``channel_std``), its scale: 1/std where the recipe feeds unit-std pixels
    (never with --mean torchvision, which normalises by ImageNet's own). A crop the images cannot give is a
    DataError."""
    crop = config.crop if config.crop is not None else input_size
    mean = config.mean or "image"
    unit_std = channel_std is not None and recipes.RECIPES[config.recipe].unit_std
    try:
        return Augment(
            crop=crop,
            translate=not config.no_translate,
            flip=not config.no_flip,
            pca=not config.no_pca,
            pca_sigma=config.pca_sigma,
            mean=mean,
            scale=float(1.0 / channel_std.mean()) if unit_std and mean != "torchvision" else 1.0,
            crop_scale=config.crop_scale or None,
            jitter=config.jitter or 0.0,
            crop_chunk=config.crop_chunk or 1,
            lighting=config.lighting or "paper",
        )
    except ValueError as err:
        raise DataError(str(err)) from None


def read_pretrained(config: RunConfig):
    """The --pretrained weights (a name: its cached shared folder, downloaded and converted first where
    needed): their state dict and the input they were trained on (None for a bare state dict)."""
    from paper_alexnet import checkpoint

    source = published.resolve(config.pretrained, progress=not config.quiet)
    return checkpoint.read_trained(source, "--pretrained")


def weights_input(config: RunConfig) -> str:
    """The input the --pretrained weights expect: a key of INPUTS (published weights by name: as their entry
    states, before any download)."""
    from paper_alexnet.weights import is_torchvision_state

    named = None if os.path.exists(config.pretrained) else published.lookup(config.pretrained)
    if named is not None:
        return named.input
    state, trained_on = read_pretrained(config)
    if trained_on is None:  # a bare state dict: torchvision's, or raw pixels
        return "torchvision" if is_torchvision_state(state) else "raw"
    if trained_on.get("mean") == "torchvision":
        return "torchvision"
    return "unit std" if trained_on.get("scale", 1.0) != 1.0 else "raw"


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


def words(fields: Dict[str, Any], short: bool = False) -> List[str]:
    """The flags that give ``fields`` (``short``: -b where a flag has a short name)."""
    out: List[str] = []
    for name, value in fields.items():
        flag = FLAGS[name]
        option = flag.short if short and flag.short else flag.option(name)
        if flag.switch:
            out += [option] if value else []
        else:
            out += [
                option,
                "" if value is None else repr(value) if isinstance(value, float) else str(value),
            ]
    return out


def to_argv(config: RunConfig) -> List[str]:
    """The flags that give ``config`` again: every given field that differs from its flag's default."""
    return words(
        {
            name: getattr(config, name)
            for name, flag in FLAGS.items()
            if name not in config.defaulted and getattr(config, name) != flag.default
        }
    )


def from_label(key: str, value: Optional[str]) -> Dict[str, Any]:
    """One ``@key=value`` (or a bare ``@key`` switch) as the field it sets, converted as the flag would be."""
    name = key.replace("-", "_")
    flag = FLAGS.get(name)
    if flag is None or flag.option(name) != f"--{key}":
        raise UsageError(
            f"--{key} is not a flag of reproduce.train (see python -m reproduce.train --help)"
        )
    if flag.switch:
        if value not in (None, "", "true", "1"):
            raise UsageError(f"--{key} is a switch: write @{key} alone")
        return {name: True}
    if value is None:
        raise UsageError(f"--{key} takes a value: write @{key}=VALUE")
    try:
        converted = flag.type(value) if flag.type else value
    except (TypeError, ValueError):
        raise UsageError(f"--{key} {value!r}: not a valid value") from None
    if flag.choices is not None and converted not in flag.choices:
        raise UsageError(f"--{key} {value!r}: choose from {', '.join(map(str, flag.choices))}")
    return {name: converted}


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
