"""paper_alexnet: the 2012 AlexNet paper (Krizhevsky, Sutskever, Hinton), faithfully, in PyTorch.

Public API:
    build_model(variant="paper", num_classes=1000, **overrides) -> AlexNet
    TwoTowerAlexNet.from_grouped(model, devices) (§3.2 across two devices) and .to_grouped()
    list_variants(), list_switches(), get_config(variant, **overrides) -> ArchConfig
    LocalResponseNorm (the §3.3 equation, alpha not divided by n)
    load_torchvision_weights(model, state_dict)
    from_pretrained(path) (a shared folder or a checkpoint: the trained net with .classes and .transform)
    paper (every constant of the paper, with its §)
"""

from . import paper
from .config import ArchConfig, ConfigError
from .geometry import Layer, ShapeError, layer_shapes, totals
from .layers import LocalResponseNorm, local_response_norm
from .model import AlexNet, build_model
from .shared import from_pretrained
from .two_tower import TwoTowerAlexNet
from .variants import get_config, list_switches, list_variants
from .weights import load_torchvision_weights

__version__ = "0.1.0"

__all__ = [
    "AlexNet",
    "ArchConfig",
    "ConfigError",
    "Layer",
    "LocalResponseNorm",
    "ShapeError",
    "build_model",
    "from_pretrained",
    "get_config",
    "layer_shapes",
    "list_switches",
    "list_variants",
    "load_torchvision_weights",
    "local_response_norm",
    "paper",
    "totals",
    "TwoTowerAlexNet",
]
