"""Every network the package trains, by name: the AlexNets of variants.py and the nets they are compared with.

The comparison nets are not AlexNet and have no ArchConfig:

- ``figure1``: the four-layer convolutional net of Figure 1 (§3.1), on which the
  paper measures ReLU against tanh (``figure1+tanh``) on CIFAR-10;
- ``vgg11``, ``googlenet``, ``resnet18``: torchvision's nets, untrained, for the
  comparison with later nets trained the same way (ablate's ``baselines`` grid).

``get_network(name, **overrides)`` returns an :class:`ArchConfig` or an
:class:`OtherNet`; ``build_network(config)`` the module; ``network_cost`` its
parameters and multiply-adds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Dict, Union

import torch
from torch import nn

from . import layers, paper
from .config import ArchConfig, ConfigError
from .geometry import layer_shapes, totals
from .model import AlexNet
from .cli import closest
from .variants import VARIANTS, get_config


@dataclass(frozen=True)
class OtherNet:
    """A net that is not AlexNet-shaped, by name; it keeps its own initialisation."""

    name: str
    description: str
    input_size: int = 224  # the crop it reads (§4.1 crops from the 256x256 images of §2)
    num_classes: int = paper.NUM_CLASSES
    activation: str = paper.ACTIVATION  # figure1 only: "relu" or "tanh"
    init: str = "default"  # its own (PyTorch's or torchvision's), never the §5 init


class Figure1Net(nn.Module):
    """§3.1, Figure 1: "a four-layer convolutional neural network" for 32x32 CIFAR-10 images.

    The paper does not list its layers. This one has the shape of cuda-convnet's
    CIFAR-10 example nets: three 5x5 conv layers (32, 32, 64 kernels) each
    followed by 3/2 max-pooling, and one fully-connected layer. Every image is
    stored at 256x256 (§2), so it reads the 224 crop averaged 7x7 down to 32x32.
    """

    def __init__(self, num_classes: int = 10, activation: str = "relu"):
        super().__init__()
        self.shrink = nn.AvgPool2d(7)  # 3x224x224 -> 3x32x32
        self.act = layers.activation(activation)
        # 32x32x32 -> 32x15x15
        self.conv1, self.pool1 = (
            nn.Conv2d(3, 32, 5, padding=2),
            layers.max_pool(3, 2),
        )
        # 32x15x15 -> 32x7x7
        self.conv2, self.pool2 = (
            nn.Conv2d(32, 32, 5, padding=2),
            layers.max_pool(3, 2),
        )
        # 64x7x7 -> 64x3x3
        self.conv3, self.pool3 = (
            nn.Conv2d(32, 64, 5, padding=2),
            layers.max_pool(3, 2),
        )
        self.fc4 = nn.Linear(64 * 3 * 3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shrink(x)
        x = self.pool1(self.act(self.conv1(x)))
        x = self.pool2(self.act(self.conv2(x)))
        x = self.pool3(self.act(self.conv3(x)))
        return self.fc4(torch.flatten(x, 1))


OTHER_NETS: Dict[str, OtherNet] = {
    "figure1": OtherNet(
        "figure1", "Figure 1's four-layer conv net (§3.1), 32x32 (the 224 crop averaged 7x7)"
    ),
    "vgg11": OtherNet("vgg11", "torchvision's VGG-11 (2014), untrained, its own init"),
    "googlenet": OtherNet(
        "googlenet", "torchvision's GoogLeNet (2014) without auxiliary heads, untrained"
    ),
    "resnet18": OtherNet("resnet18", "torchvision's ResNet-18 (2015), untrained, its own init"),
}
# The only switch a comparison net takes: Figure 1's tanh (§3.1).
OTHER_SWITCHES = {"figure1": {"tanh": dict(activation="tanh")}}

Network = Union[ArchConfig, OtherNet]


def get_network(name: str, **overrides) -> Network:
    """The AlexNet variant ``name`` (with switches, see get_config) or a comparison net."""
    base, *switches = str(name).split("+")
    if base not in OTHER_NETS and base not in VARIANTS:
        raise ConfigError(
            f"unknown variant {base!r}{closest(base, (*VARIANTS, *OTHER_NETS))}: choose an AlexNet "
            f"({', '.join(VARIANTS)}) or a net to compare with ({', '.join(OTHER_NETS)})"
        )
    if base not in OTHER_NETS:
        return get_config(name, **overrides)
    config = OTHER_NETS[base]
    for switch in switches:
        allowed = OTHER_SWITCHES.get(base, {})
        if switch not in allowed:
            raise ConfigError(
                f"{base!r} takes no switch {switch!r}"
                + (f"; it takes: {', '.join(allowed)}" if allowed else "")
            )
        config = replace(config, name=f"{config.name}+{switch}", **allowed[switch])
    unknown = sorted(set(overrides) - {f.name for f in fields(OtherNet)} - {"name", "description"})
    if unknown or overrides.get("init", "default") != "default":
        raise ConfigError(
            f"{base!r} keeps its own init and takes only num_classes; got {sorted(overrides)}"
        )
    return replace(config, **overrides)


def build_network(config: Network) -> nn.Module:
    """The module of a config from get_network (untrained; AlexNets with their configured init)."""
    if isinstance(config, ArchConfig):
        return AlexNet(config)
    if config.name.startswith("figure1"):
        return Figure1Net(config.num_classes, config.activation)
    import torchvision.models as tvm

    if config.name == "googlenet":
        return tvm.googlenet(
            weights=None, num_classes=config.num_classes, aux_logits=False, init_weights=True
        )
    return getattr(tvm, config.name)(weights=None, num_classes=config.num_classes)


def network_cost(config: Network) -> Dict[str, int]:
    """Parameters and multiply-adds per image of the conv and linear layers (bias, pooling, norms not
    counted): the shape arithmetic for AlexNets, hooks on a shape-only (meta) forward pass otherwise."""
    if isinstance(config, ArchConfig):
        cost = totals(layer_shapes(config))
        return {"params": cost["params"], "macs": cost["macs"]}
    with torch.device("meta"):
        model = build_network(config).eval()
    macs = []

    def count(layer, inputs, output):
        if isinstance(layer, nn.Conv2d):
            per_output = (
                layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
            )
            macs.append(output[0].numel() * per_output)
        elif isinstance(layer, nn.Linear):
            macs.append(layer.in_features * layer.out_features)

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model(torch.empty(1, 3, config.input_size, config.input_size, device="meta"))
    for hook in hooks:
        hook.remove()
    return {"params": sum(p.numel() for p in model.parameters()), "macs": int(sum(macs))}
