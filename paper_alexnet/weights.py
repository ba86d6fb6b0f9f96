"""Loading weights saved by other implementations into the paper-named layers."""

from typing import Iterable, List, Mapping

import torch

from .config import ConfigError
from .model import AlexNet

# torchvision.models.alexnet's nn.Sequential indices -> the paper's layer names
TORCHVISION_NAMES = {
    "features.0": "conv1", "features.3": "conv2", "features.6": "conv3", "features.8": "conv4",
    "features.10": "conv5", "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8",
}


def load_torchvision_weights(model: AlexNet, state_dict: Mapping[str, torch.Tensor],
                             skip: Iterable[str] = ()) -> List[str]:
    """Copy a torchvision AlexNet state dict into ``model`` (built as variant "torchvision").

    ``skip`` names layers to leave as initialised, e.g. ``("fc8",)`` when
    fine-tuning to a different number of classes. Returns the layers loaded.
    A missing key or a shape that does not fit is a ConfigError naming it.
    """
    skip = set(skip)
    state = {key[len("module."):] if key.startswith("module.") else key: value
             for key, value in state_dict.items()}
    loaded = []
    with torch.no_grad():
        for prefix, name in TORCHVISION_NAMES.items():
            if name in skip:
                continue
            layer = getattr(model, name)
            for part in ("weight", "bias"):
                key = f"{prefix}.{part}"
                if key not in state:
                    raise ConfigError(f"not a torchvision AlexNet state dict: {key!r} ({name}.{part}) is missing")
                target = getattr(layer, part)
                if tuple(state[key].shape) != tuple(target.shape):
                    hint = ("build the model with variant 'torchvision'"
                            if model.config.name != "torchvision" or name != "fc8"
                            else "pass skip=('fc8',) to fine-tune to a different number of classes")
                    raise ConfigError(f"{key} has shape {tuple(state[key].shape)} but {name}.{part} of the "
                                      f"'{model.config.name}' net has {tuple(target.shape)}: {hint}")
                target.copy_(state[key])
            loaded.append(name)
    return loaded
