"""Weights from elsewhere into the paper-named layers: torchvision's AlexNet, or a checkpoint of this package."""

from typing import Iterable, List, Mapping

import torch

from .checkpoint import CheckpointError
from .config import ConfigError
from .model import AlexNet

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
