"""Weights from elsewhere into the paper-named layers: torchvision's AlexNet, BVLC Caffe's caffemodel (``convert``:
either one as a checkpoint of this package), or a checkpoint of this package."""

import dataclasses
import os
from typing import Callable, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch

from . import caffe
from .checkpoint import Checkpoint, CheckpointError
from .config import ConfigError
from .data import Augment, DataStats
from .data.stats import IMAGENET_EIGVAL, IMAGENET_EIGVEC, IMAGENET_MEAN
from .model import AlexNet, build_model

# torchvision.models.alexnet's nn.Sequential indices -> the paper's layer names
TORCHVISION_NAMES = {
    "features.0": "conv1",
    "features.3": "conv2",
    "features.6": "conv3",
    "features.8": "conv4",
    "features.10": "conv5",
    "classifier.1": "fc6",
    "classifier.4": "fc7",
    "classifier.6": "fc8",
}


def is_torchvision_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict is in torchvision's AlexNet key layout (``features.0.weight``, ...)."""
    return any(f"{prefix}.weight" in state for prefix in TORCHVISION_NAMES)


def load_torchvision_weights(
    model: AlexNet, state_dict: Mapping[str, torch.Tensor], skip: Iterable[str] = ()
) -> List[str]:
    """Copy a torchvision AlexNet state dict into ``model`` (built as variant "torchvision").

    ``skip`` names layers to leave as initialised, e.g. ``("fc8",)`` when
    fine-tuning to a different number of classes. Returns the layers loaded.
    A missing key or a shape that does not fit is a ConfigError naming it.
    """
    skip = set(skip)
    state = {
        key[len("module.") :] if key.startswith("module.") else key: value
        for key, value in state_dict.items()
    }
    loaded = []
    with torch.no_grad():
        for prefix, name in TORCHVISION_NAMES.items():
            if name in skip:
                continue
            layer = getattr(model, name)
            for part in ("weight", "bias"):
                key = f"{prefix}.{part}"
                if key not in state:
                    raise ConfigError(
                        f"not a torchvision AlexNet state dict: {key!r} ({name}.{part}) is missing"
                    )
                target = getattr(layer, part)
                if tuple(state[key].shape) != tuple(target.shape):
                    hint = (
                        "build the model with variant 'torchvision'"
                        if model.config.name != "torchvision" or name != "fc8"
                        else "pass skip=('fc8',) to fine-tune to a different number of classes"
                    )
                    raise ConfigError(
                        f"{key} has shape {tuple(state[key].shape)} but {name}.{part} of the "
                        f"'{model.config.name}' net has {tuple(target.shape)}: {hint}"
                    )
                target.copy_(state[key])
            loaded.append(name)
    return loaded


def load_pretrained(model: AlexNet, state: Mapping[str, torch.Tensor], source: str) -> bool:
    """Start ``model`` from ``state`` (checkpoint.read_weights of ``source``): the weights of a checkpoint of
    this package or a torchvision AlexNet state dict. fc8 is left as initialised when its size differs
    (fine-tuning to other classes); returns whether it was. Weights of another net are a CheckpointError in
    one line."""
    fc8 = tuple(model.fc8.weight.shape)
    if is_torchvision_state(state):
        new_head = tuple(state.get("classifier.6.weight", torch.empty(0)).shape) != fc8
        try:
            load_torchvision_weights(model, state, skip=("fc8",) if new_head else ())
        except ConfigError as err:
            raise CheckpointError(f"--pretrained {source}: {err}") from None
        return new_head
    new_head = tuple(state.get("fc8.weight", torch.empty(0)).shape) != fc8
    state = {k: v for k, v in state.items() if not (new_head and k.startswith("fc8."))}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise CheckpointError(
            f"--pretrained {source} does not fit --variant {model.config.name}: "
            f"{str(err).strip().splitlines()[-1].strip()}"
        ) from None
    if unexpected or [k for k in missing if not k.startswith("fc8.")]:
        raise CheckpointError(
            f"--pretrained {source} does not fit --variant {model.config.name}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return new_head


# --- foreign weights as a checkpoint of this package (reproduce.convert; published.py's names) ---------------


def imagenet_classes() -> list:
    """The 1000 ILSVRC-2012 class names in sorted-wnid order, the order of both Caffe's synsets.txt and
    torchvision's weights (shipped offline in torchvision's weights metadata)."""
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def _stats(mean_image: np.ndarray) -> dict:
    """The checkpoint's statistics: the mean image the weights expect, and ImageNet's published PCA (§4.1),
    for fine-tuning with lighting."""
    return Checkpoint.stats_entry(
        DataStats(
            mean_image.astype(np.float32),
            IMAGENET_EIGVAL.copy(),
            IMAGENET_EIGVEC.copy(),
            0,
            "ImageNet (published)",
        )
    )


def from_caffe(path: str, mean_path: Optional[str], say: Callable) -> Tuple[dict, str, dict, dict]:
    """(state dict, variant, augment, stats) of a caffemodel, converted to this package's conventions."""
    blobs, version = caffe.read_caffemodel(path)
    with torch.device("meta"):
        expected = build_model("caffe").state_dict()
    state = caffe.to_state_dict(blobs, expected, path)
    say(
        f"{path}: Caffe format {'V1 (layers)' if version == 1 else 'V2 (layer)'}, 8 learned layers; conv1 turned "
        f"from BGR to RGB input"
    )
    if mean_path:
        mean = caffe.read_mean(mean_path)
        say(f"mean image from {mean_path} (BGR, turned to RGB)")
    else:
        mean = caffe.bgr_mean_image()
        say(
            "no --mean: Caffe's per-channel mean B 104, G 117, R 123 (give --mean imagenet_mean.binaryproto "
            "for the mean image BVLC trained with)"
        )
    # raw 0-255 pixels, images warped
    augment = Augment(crop=227, mean="image", scale=1.0, resize="warp")
    return state, "caffe", dataclasses.asdict(augment), _stats(mean)


def from_torchvision(state: dict, path: str, say: Callable) -> Tuple[dict, str, dict, dict]:
    model = build_model("torchvision")
    try:
        load_torchvision_weights(model, state)
    except Exception as err:  # noqa: BLE001 - a ConfigError naming the key
        raise CheckpointError(f"{path}: {err}") from None
    say(f"{path}: torchvision's AlexNet state dict")
    augment = Augment(crop=model.config.input_size, mean="torchvision")
    return (
        model.state_dict(),
        "torchvision",
        dataclasses.asdict(augment),
        _stats(np.broadcast_to((255 * IMAGENET_MEAN)[:, None, None], (3, 256, 256))),
    )


def convert(
    source: str, mean: Optional[str] = None, say: Callable[[str], None] = lambda line: None
) -> Checkpoint:
    """The checkpoint of ``source``: BVLC Caffe's caffemodel (``mean``: its imagenet_mean.binaryproto, else
    Caffe's per-channel mean) or torchvision's AlexNet state dict, with the 1000 ILSVRC-2012 class names, the
    statistics and the test-time preprocessing the weights expect. ``say`` hears what was found. A PyTorch file
    of something else is a CheckpointError, any other file a caffe.CaffeError."""
    digest = caffe.sha1(source)
    say(f"sha1 {digest}  {source}")
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a PyTorch file: a caffemodel, or nothing
        loaded = None
    if isinstance(loaded, dict) and is_torchvision_state(loaded):
        state, variant, augment, stats = from_torchvision(loaded, source, say)
        kind = "torchvision"
    elif loaded is not None:
        raise CheckpointError(
            f"{source} is a PyTorch file but not torchvision's AlexNet state dict"
        )
    else:  # a file that is not a caffemodel either: caffe.CaffeError
        state, variant, augment, stats = from_caffe(source, mean, say)
        kind = "caffe"
        if digest != caffe.BVLC_SHA1:
            say(
                f"note: sha1 is not BVLC's bvlc_alexnet.caffemodel ({caffe.BVLC_SHA1}); converted all the same"
            )
    return Checkpoint(
        model=state,
        variant=variant,
        classes=imagenet_classes(),
        augment=augment,
        stats=stats,
        origin={
            "source": os.path.abspath(source),
            "sha1": digest,
            "format": kind,
            "mean": os.path.abspath(mean) if mean else None,
        },
    )
