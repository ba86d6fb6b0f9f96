"""The model card (README.md) of a shared folder (shared.py): what the net is, what it learned on and how,
what it was measured to score beside the paper's own figures, what it is for, how to cite it, its licence.

Every number comes from the checkpoint, its config and the run's result.json; nothing is typed in here
but the paper's figures (paper.py) and the words around them.
"""

from __future__ import annotations

from typing import Any, Dict

from . import paper
from .checkpoint import Checkpoint

CITATION = """@inproceedings{krizhevsky2012imagenet,
  title     = {ImageNet Classification with Deep Convolutional Neural Networks},
  author    = {Krizhevsky, Alex and Sutskever, Ilya and Hinton, Geoffrey E.},
  booktitle = {Advances in Neural Information Processing Systems 25},
  pages     = {1097--1105},
  year      = {2012}
}"""

# What the net is, by the family its variant belongs to (the part before any +switch).
WHAT = {
    "paper": "the network of the paper as §3.5 lays it out: 96 kernels of 11x11 at stride 4 on a 227x227 "
    "crop, local response normalisation as §3.3 writes it (alpha not divided by n) after conv1 and conv2, "
    "overlapping 3/2 max-pooling (§3.4), the two-GPU split of §3.2 as grouped convolutions in conv2, conv4 "
    "and conv5 (conv3 and the fully-connected layers read both towers), dropout 0.5 in fc6 and fc7 (§4.2)",
    "paper-224": "the paper's network at the 224 input §3.5 states, with cuda-convnet's rounding up",
    "caffe": "BVLC Caffe's bvlc_alexnet: the paper's layout, with Caffe's LRN (k = 1, alpha / n, across all "
    "96 maps, not per tower) and ceil-rounded pooling",
    "one-tower": "§3.2's one-GPU comparison net: half the kernels in conv1-conv4, no groups",
    "torchvision": "torchvision.models.alexnet, the 2014 'one weird trick' net, not the paper's",
}

# Where torchvision's AlexNet differs from the paper, section by section.
DIFFERENCES = (
    "- §3.5: conv1 has 96 kernels (torchvision's: 64, padded by 2 on a 224 crop), conv2-conv5 have "
    "256-384-384-256 (torchvision's: 192-384-256-256).\n"
    "- §3.3: response normalisation after conv1 and conv2 (torchvision's has none).\n"
    "- §3.2: conv2, conv4 and conv5 read only their own tower's maps (torchvision's: no towers).\n"
    "- §3.4: both pool 3/2; torchvision's adds an adaptive 6x6 average pool before fc6.\n"
    "- §2: the mean image is subtracted from raw 0-255 pixels (torchvision's: ImageNet's per-channel mean "
    "and std on 0-1 pixels)."
)

INITS = {
    "paper": "§5's initialisation (weights from N(0, 0.01), biases 1 in conv2, conv4, conv5, fc6, fc7)",
    "he": "He initialisation with zero biases (the quick recipe, not §5's: docs/training.md)",
    "default": "PyTorch's default initialisation",
}

SOURCES = {"caffe": "BVLC Caffe's bvlc_alexnet", "torchvision": "torchvision's AlexNet"}

LICENCES = {
    "caffe": "BVLC released these weights for unrestricted use (models/bvlc_alexnet, BVLC Caffe); "
    "the conversion is this package's (MIT).",
    "torchvision": "torchvision's weights, under torchvision's licence (BSD 3-Clause).",
}


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * float(value):.2f}%"


def card(ckpt: Checkpoint, config: Dict[str, Any], measured: Dict[str, Any]) -> str:
    """README.md for ``ckpt``, whose shared config.json is ``config`` and whose run measured ``measured``."""
    meta = config["meta"]
    family = ckpt.variant.split("+")[0]
    switches = ckpt.variant.split("+")[1:]
    origin = ckpt.origin or {}
    source = str(origin.get("format", ""))
    what = WHAT.get(family, f"the '{family}' net of this package")
    lines = [
        "---",
        "library_name: paper_alexnet",
        "tags: [image-classification, alexnet, safetensors]",
        "---",
        "",
        f"# AlexNet ({ckpt.variant}), {len(ckpt.classes)} classes",
        "",
        "## What it is",
        "",
        f"The `{ckpt.variant}` net of paper_alexnet, a reproduction of Krizhevsky, Sutskever and Hinton "
        f"(2012): {what}." + (f" Ablation switches: {', '.join(switches)}." if switches else ""),
        "",
        f"{meta['num_params']:,} parameters, {meta['multiply_adds']:,} multiply-adds an image "
        f"(conv and fc layers; paper_alexnet.geometry's arithmetic).",
        "",
    ]
    if family != "torchvision":
        lines += ["How it differs from torchvision's AlexNet:", "", DIFFERENCES, ""]
    lines += ["## Data and training", ""]
    if source:
        lines += [
            f"Converted from {SOURCES.get(source, source)} weights (`{origin.get('source', '')}`, "
            f"sha1 `{origin.get('sha1', '')}`) "
            "by `python -m reproduce.convert`; trained on ILSVRC-2012 by their authors, not here.",
            "",
        ]
    else:
        lines += [
            f"Trained by paper_alexnet on `{ckpt.data}` ({len(ckpt.classes)} classes: "
            f"{', '.join(map(str, ckpt.classes[:10]))}{', ...' if len(ckpt.classes) > 10 else ''}), "
            f"{ckpt.epoch} epochs, from {INITS.get(ckpt.init, ckpt.init)}"
            + (
                f"; pixels minus the mean, times {float(ckpt.augment['scale']):.4g}"
                if float(ckpt.augment.get("scale", 1.0)) != 1.0
                else ""
            )
            + ".",
            "",
        ]
    if config.get("trained_by"):
        made = "converted it into this folder" if source else "trained it"
        lines += [f"The command that {made}:", "", f"    {config['trained_by']}", ""]
    lines += ["## Results", ""]
    if measured:
        lines += [
            "Measured on the validation split of its data (the run's result.json, best epoch "
            f"{measured.get('best_epoch', 'n/a')}):",
            "",
            "| | top-1 error | top-5 error |",
            "|---|---:|---:|",
            f"| centre crop | {_percent(measured.get('val_top1_err'))} | {_percent(measured.get('val_top5_err'))} |",
        ]
        if measured.get("ten_crop_top1_err") is not None:
            lines.append(
                f"| ten crops (§4.1) | {_percent(measured['ten_crop_top1_err'])} | "
                f"{_percent(measured.get('ten_crop_top5_err'))} |"
            )
        if measured.get("val_mean_class_top1_err") is not None:
            lines += [
                "",
                f"Mean per-class top-1 error: {_percent(measured['val_mean_class_top1_err'])}.",
            ]
    else:
        lines += [
            "Not measured here: `python -m reproduce.evaluate --checkpoint THIS_FOLDER --data SPEC` scores it."
        ]
    top1_2010, top5_2010 = paper.REPORTED_ILSVRC2010_TEST
    top1_2012, top5_2012 = paper.REPORTED_ILSVRC2012_VAL
    lines += [
        "",
        "The paper's own figures for one CNN (§6), on ImageNet, not comparable with other data: "
        f"ILSVRC-2010 test {_percent(top1_2010)} top-1, {_percent(top5_2010)} top-5; ILSVRC-2012 validation "
        f"{_percent(top1_2012)} top-1, {_percent(top5_2012)} top-5.",
        "",
        "## Use",
        "",
        "```python",
        "import paper_alexnet.shared as shared",
        "net = shared.from_pretrained('THIS_FOLDER')      # .classes, .transform, .meta",
        "# or: torch.hub.load('PATH/TO/paper_alexnet', 'alexnet', source='local', weights='THIS_FOLDER')",
        "```",
        "",
        "Every paper_alexnet command that takes `--checkpoint` takes this folder: evaluate, predict, "
        "visualize, features, export, `train --pretrained`.",
        "",
        "Input: RGB images, cut to 256x256 as `config.json`'s `meta.transforms` says, the centre "
        f"{meta['transforms']['crop']}x{meta['transforms']['crop']} crop, the mean of `mean.safetensors` "
        "subtracted.",
        "",
        "## Intended use and limits",
        "",
        "For research and teaching: reproducing and studying the 2012 paper, reading its layers, "
        "fine-tuning. Not for decisions about people. It knows only its classes and the kind of images it "
        "learned from; it says one of its classes for any image, with no measure of doubt it can be trusted "
        "on; its errors on other data may be far from those above.",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
        "## Licence",
        "",
        LICENCES.get(
            source,
            "Trained with paper_alexnet (MIT licence); the weights follow the terms of the data they learned from.",
        ),
        "",
    ]
    return "\n".join(lines)
