"""A trained net as the ecosystem shares it: a folder of safetensors, JSON and a model card.

    DIR/model.safetensors   the weights by the paper's layer names (conv1.weight ... fc8.bias, §3.5)
    DIR/mean.safetensors    the §2 mean image (3 x 256 x 256) and the §4.1 PCA of the training pixels
    DIR/config.json         the variant and its ArchConfig, the class names, the test-time pipeline,
                            what it was trained on and measured to score, and the format's version
    DIR/README.md           the model card

It is the layout timm and Hugging Face's ``PyTorchModelHubMixin`` write, which
``huggingface_hub`` uploads as it is. Reading it runs no code: safetensors
holds tensors only, where a pickled ``.pt`` can run anything. Every command
that takes ``--checkpoint`` takes such a folder (``checkpoint.load`` reads
both), and :func:`from_pretrained` gives the net in a notebook.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional

import torch

from . import paper
from .atomic import atomic_write, make_folder
from .checkpoint import Checkpoint, CheckpointError, format_version

NAME = "paper_alexnet.shared"
VERSION = 1
FORMAT = f"{NAME}/{VERSION}"
WEIGHTS, MEAN, CONFIG, CARD = "model.safetensors", "mean.safetensors", "config.json", "README.md"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:  # an install without it (the package requires it: setup.cfg)
        raise CheckpointError(
            "reading or writing a shared folder needs safetensors: pip install safetensors"
        ) from None
    return safetensors.torch


def is_shared(path: str) -> bool:
    """Whether ``path`` is a folder (a shared net, or something else that :func:`read` will refuse)."""
    return os.path.isdir(path)


# --- what the net is: torchvision-like metadata ------------------------------------------------------------


def metadata(ckpt: Checkpoint, measured: Optional[dict] = None) -> Dict[str, Any]:
    """What torchvision's weights enums say of their nets (``Weights.meta``): the categories, the transforms,
    the parameters and multiply-adds (geometry.py's arithmetic), and the metrics measured (``measured``: a
    run's result.json, or a shared folder's)."""
    from .networks import get_network, network_cost

    network = get_network(ckpt.variant, num_classes=max(len(ckpt.classes), 1), init=ckpt.init)
    cost = network_cost(network)
    return {
        "variant": ckpt.variant,
        "categories": list(ckpt.classes),
        "num_params": int(cost["params"]),
        "multiply_adds": int(cost["macs"]),
        "transforms": transforms(ckpt),
        "metrics": {
            k: v for k, v in (measured or {}).items() if k in METRIC_KEYS and v is not None
        },
        "data": ckpt.data,
        "origin": ckpt.origin,
    }


METRIC_KEYS = (
    "val_top1_err",
    "val_top5_err",
    "ten_crop_top1_err",
    "ten_crop_top5_err",
    "val_mean_class_top1_err",
    "best_epoch",
)


def transforms(ckpt: Checkpoint) -> Dict[str, Any]:
    """The test-time pipeline the weights expect, in words a reader of config.json can follow by hand."""
    augment = dict(ckpt.augment)
    resize = augment.get("resize", "shorter")
    return {
        "image_size": paper.IMAGE_SIZE,
        "resize": resize,
        "resize_means": "the shorter side to 256, then the central 256x256 (§2)"
        if resize == "shorter"
        else "both sides to 256 (Caffe's warp)",
        "crop": augment.get("crop", 227),
        "crop_at": "centre (or the ten crops of §4.1)",
        "mean": augment.get("mean", "image"),
        "mean_means": {
            "image": "the per-pixel mean image is subtracted (§2; mean.safetensors in a shared folder)",
            "channel": "the per-channel mean of mean.safetensors is subtracted",
            "torchvision": "pixels / 255, minus ImageNet's mean, over its std (torchvision's)",
            "none": "nothing is subtracted",
        }.get(augment.get("mean", "image"), ""),
        "scale": augment.get("scale", 1.0),
        "channels": "RGB, 0-255 (BVLC's BGR weights are turned to RGB when converted)",
        "augment": augment,
    }


# --- writing --------------------------------------------------------------------------------------------


def write(
    ckpt: Checkpoint,
    folder: str,
    measured: Optional[dict] = None,
    command: Optional[str] = None,
) -> Dict[str, Any]:
    """Write ``ckpt`` as a shared folder: weights, mean, config.json and README.md (each file whole or not at
    all). ``measured``: its result.json; ``command``: the command that trained it. Returns the config."""
    st = _safetensors()
    make_folder(folder)
    state = {k: v.detach().to("cpu").contiguous() for k, v in ckpt.model.items()}
    with atomic_write(os.path.join(folder, WEIGHTS), "wb") as handle:
        handle.write(st.save(state, metadata={"format": FORMAT, "variant": ckpt.variant}))
    if ckpt.stats is not None:
        stats = {
            k: torch.as_tensor(ckpt.stats[k]).float().contiguous()
            for k in ("mean_image", "eigval", "eigvec")
        }
        with atomic_write(os.path.join(folder, MEAN), "wb") as handle:
            handle.write(st.save(stats))
    from .networks import get_network

    network = get_network(ckpt.variant, num_classes=len(ckpt.classes), init=ckpt.init)
    config = {
        "format": FORMAT,
        "variant": ckpt.variant,
        "init": ckpt.init,
        "num_classes": len(ckpt.classes),
        "classes": list(ckpt.classes),
        "architecture": dataclasses.asdict(network) if dataclasses.is_dataclass(network) else {},
        "augment": dict(ckpt.augment),
        "mean_file": MEAN if ckpt.stats is not None else None,
        "pca_source": ckpt.stats.get("pca_source") if ckpt.stats is not None else None,
        "trained_by": command,
        "epoch": ckpt.epoch,
        "meta": metadata(ckpt, measured),
    }
    with atomic_write(os.path.join(folder, CONFIG)) as handle:
        json.dump(config, handle, indent=1, ensure_ascii=False, default=str)
    from .model_card import card

    with atomic_write(os.path.join(folder, CARD)) as handle:
        handle.write(card(ckpt, config, measured or {}))
    return config


# --- reading --------------------------------------------------------------------------------------------


def read(folder: str) -> Checkpoint:
    """A shared folder as a Checkpoint (inference only), or a CheckpointError in one line: not such a folder,
    of a newer format, a damaged or truncated file, tensors missing, foreign or of other shapes."""
    path = os.path.join(folder, CONFIG)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{folder} is a folder without {CONFIG}: not a shared net (reproduce.export writes one)"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not readable JSON ({err})") from None
    format_version(config.get("format"), path, NAME, VERSION)
    state = _tensors(os.path.join(folder, WEIGHTS))
    stats = None
    if config.get("mean_file"):
        saved = _tensors(os.path.join(folder, config["mean_file"]))
        stats = {**saved, "pca_source": config.get("pca_source") or "training set"}
    ckpt = Checkpoint(
        model=state,
        variant=str(config.get("variant", "")),
        classes=[str(c) for c in config.get("classes", [])],
        augment=dict(config.get("augment", {})),
        init=str(config.get("init", "paper")),
        stats=stats,
        data=(config.get("meta") or {}).get("data"),
        epoch=int(config.get("epoch", 0)),
        origin=(config.get("meta") or {}).get("origin"),
    )
    _check_tensors(ckpt, folder)
    return ckpt


def made(folder: str) -> tuple:
    """(the metrics measured, the command that made it) as a shared folder's config.json records them."""
    with open(os.path.join(folder, CONFIG), encoding="utf-8") as handle:
        config = json.load(handle)
    return dict((config.get("meta") or {}).get("metrics") or {}), config.get("trained_by")


def _tensors(path: str) -> Dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} does not exist: the folder is incomplete")
    st = _safetensors()
    try:
        return dict(st.load_file(path, device="cpu"))
    except Exception as err:  # noqa: BLE001 - safetensors' errors for a damaged file vary by version
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise CheckpointError(
            f"{path} is damaged or truncated: not a safetensors file ({reason})"
        ) from None


def _check_tensors(ckpt: Checkpoint, folder: str) -> None:
    """The folder's tensors are exactly the named net's, shape for shape."""
    from .networks import build_network, get_network

    try:
        network = get_network(ckpt.variant, num_classes=len(ckpt.classes), init=ckpt.init)
    except Exception as err:  # noqa: BLE001 - an unknown variant, a bad class count: one line
        raise CheckpointError(
            f"{folder}: its config.json names no net this package builds ({err})"
        ) from None
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in build_network(network).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ckpt.model.items()}
    missing = [k for k in want if k not in got]
    foreign = [k for k in got if k not in want]
    shaped = [
        f"{k} {'x'.join(map(str, got[k]))} (not {'x'.join(map(str, want[k]))})"
        for k in want
        if k in got and got[k] != want[k]
    ]
    if missing or foreign or shaped:
        parts = [
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"foreign {', '.join(foreign[:3])}" if foreign else "",
            f"of other shapes: {', '.join(shaped[:3])}" if shaped else "",
        ]
        raise CheckpointError(
            f"{os.path.join(folder, WEIGHTS)} is not a '{ckpt.variant}' net with {len(ckpt.classes)} classes: "
            + "; ".join(p for p in parts if p)
        )


# --- the net in a notebook ------------------------------------------------------------------------------


def from_pretrained(path: str, device: str = "cpu") -> torch.nn.Module:
    """The trained net in ``path`` (a shared folder or a checkpoint file of this package, or published weights
    by name: "bvlc", "torchvision"; published.py), in eval mode on ``device``, with ``.classes`` (fc8's
    outputs, in order), ``.transform`` (its test-time pipeline: ``net.transform.center(uint8 N x 3 x 256 x
    256)`` is its input) and ``.meta`` (:func:`metadata`)."""
    from . import checkpoint, published
    from .data import Augment, PaperTransform
    from .networks import build_network, get_network

    path = published.resolve(path)
    ckpt = checkpoint.load(path)
    net = build_network(get_network(ckpt.variant, num_classes=len(ckpt.classes), init=ckpt.init))
    net.load_state_dict(ckpt.model)
    net = net.to(device).eval()
    stats = ckpt.data_stats()
    net.classes = list(ckpt.classes)
    net.transform = (
        PaperTransform(stats, Augment(**ckpt.augment), device=device) if stats is not None else None
    )
    net.meta = metadata(ckpt, made(path)[0] if is_shared(path) else None)
    return net
