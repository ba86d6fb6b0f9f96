"""§3.2 for real: the net split across two devices, which exchange activations only where the paper says.

"The GPUs communicate only in certain layers": conv3 and fc6, fc7 read the
maps of both towers; conv2, conv4, conv5 (and LRN, pooling) read only their
own tower's. Each :class:`Tower` holds half of every layer (conv1 48, conv2
128, conv3 192, conv4 192, conv5 128 kernels; fc6, fc7 2048 neurons) on its
own device; fc8 sits on the first device and reads both towers' fc7.

The one checkpoint format is the grouped net's (:class:`~.model.AlexNet`,
variant ``paper``): :meth:`TwoTowerAlexNet.from_grouped` and
:meth:`TwoTowerAlexNet.to_grouped` convert both ways, and the state dict of a
TwoTowerAlexNet *is* the grouped layout, so either net loads the other's
weights.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import paper
from .config import ArchConfig
from .geometry import check_input, is_built_input, layer_map
from . import layers
from .cpu_linear import Linear
from .layers import relu_norm_pool
from .model import AlexNet

# Where activations cross between the towers (§3.2, Figure 2), and what crosses: the input of these layers.
CROSSINGS = ("conv3", "fc6", "fc7", "fc8")


def splits_in_two(config: ArchConfig) -> bool:
    """Whether ``config`` is a §3.2 two-tower net (the paper's, or one of its ablation switches)."""
    return (
        isinstance(config, ArchConfig)
        and config.towers == 2
        and tuple(config.conv_grouped) == paper.CONV_GROUPED
        and config.lrn_per_tower
        and config.conv_rounding == "floor"
        and not config.adaptive_pool
        # the towers compute §3.5's stage order and PyTorch's dropout only
        and not any(config.norm_before_relu)
        and not any(config.map_norm)
        and config.dropout_scaling == "train"
    )


class Tower(nn.Module):
    """One GPU's half of every layer up to fc7 (§3.2), named as the paper names the layers."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        half = [c // 2 for c in cfg.conv_channels]  # 48, 128, 192, 192, 128
        ins = (cfg.in_channels, half[0], 2 * half[1], half[2], half[3])  # conv3 reads both towers
        self.conv1, self.conv2, self.conv3, self.conv4, self.conv5 = (
            nn.Conv2d(
                ins[i], half[i], cfg.conv_kernels[i], cfg.conv_strides[i], cfg.conv_paddings[i]
            )
            for i in range(5)
        )

        # within the tower
        self.norm1, self.norm2 = (
            layers.norm(cfg, groups=1),
            layers.norm(cfg, groups=1),
        )
        self.pool = layers.pool(cfg)
        self.act = layers.activation(cfg.activation)
        fc6_in = layer_map(cfg)["fc6"].in_shape[0]  # 9216: both towers' pool5
        self.fc6 = Linear(fc6_in, cfg.fc_sizes[0] // 2)  # 2048
        self.fc7 = Linear(cfg.fc_sizes[0], cfg.fc_sizes[1] // 2)  # 2048 from both towers' fc6
        self.drop6, self.drop7 = layers.dropout(cfg, "fc6"), layers.dropout(cfg, "fc7")  # §4.2

    def front(self, x: torch.Tensor) -> torch.Tensor:
        x = relu_norm_pool(self.conv1(x), self.act, self.norm1, self.pool)  # 48x27x27
        return relu_norm_pool(self.conv2(x), self.act, self.norm2, self.pool)  # 128x13x13

    def middle(self, both: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv4(self.act(self.conv3(both))))  # 192x13x13
        return torch.flatten(self.pool(self.act(self.conv5(x))), 1)  # 128x6x6 -> 4608


class TwoTowerAlexNet(nn.Module):
    """The paper net (§3.5) as two towers on ``devices`` (two names; may be the same device)."""

    def __init__(self, config: ArchConfig = ArchConfig(), devices: Sequence = ("cpu", "cpu")):
        super().__init__()
        if not splits_in_two(config):
            raise ValueError(
                f"{config.name!r} is not a two-tower net as §3.2 lays it out (towers 2, conv2/4/5 and "
                f"LRN within a tower, PyTorch's conv rounding, no adaptive pooling)"
            )
        if len(devices) != 2:
            raise ValueError(f"two devices, one per tower, not {list(devices)}")
        self.config = config
        self.devices = tuple(torch.device(d) for d in devices)
        # §5 init drawn as the grouped net draws it (same seed, same net)
        grouped = AlexNet(config).state_dict()
        self.towers = nn.ModuleList(Tower(config).to(d) for d in self.devices)
        self.fc8 = Linear(config.fc_sizes[1], config.num_classes).to(self.devices[0])
        self.load_state_dict(grouped)

    def _across(self, parts: Sequence[torch.Tensor]) -> list:
        """Both towers' activations, concatenated in the grouped order, on each tower's device."""
        return [torch.cat([p.to(d, non_blocking=True) for p in parts], 1) for d in self.devices]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_built_input(self.config, tuple(x.shape)):
            # a ShapeError naming the layer, or the geometry fits
            check_input(self.config, tuple(x.shape))
        # 128x13x13 each
        front = [t.front(x.to(d, non_blocking=True)) for t, d in zip(self.towers, self.devices)]
        pooled = [t.middle(both) for t, both in zip(self.towers, self._across(front))]  # 4608 each
        # 2048 each
        fc6 = [t.drop6(t.act(t.fc6(both))) for t, both in zip(self.towers, self._across(pooled))]
        # 2048 each
        fc7 = [t.drop7(t.act(t.fc7(both))) for t, both in zip(self.towers, self._across(fc6))]
        # logits
        return self.fc8(torch.cat([fc7[0], fc7[1].to(self.devices[0], non_blocking=True)], 1))

    # --- the grouped layout, the one checkpoint format ---------------------------------------------------

    def _halves(self, name: str) -> list:
        """The modules that hold layer ``name``: one per tower, or fc8 alone."""
        return [self.fc8] if name == "fc8" else [getattr(t, name) for t in self.towers]

    def state_dict(self, *args, **kwargs) -> dict:  # noqa: D102 - see the module docstring
        return {
            f"{name}.{kind}": torch.cat(
                [getattr(m, kind).detach().cpu() for m in self._halves(name)]
            )
            for name in paper.LAYER_NAMES
            for kind in ("weight", "bias")
        }

    def load_state_dict(self, state: dict, strict: bool = True, assign: bool = False):
        """Load the grouped layout (a checkpoint of either net); with ``strict=False`` absent layers are kept."""
        missing = []
        with torch.no_grad():
            for name in paper.LAYER_NAMES:
                for kind in ("weight", "bias"):
                    key = f"{name}.{kind}"
                    if key not in state:
                        missing.append(key)
                        continue
                    modules = self._halves(name)
                    for module, part in zip(modules, state[key].chunk(len(modules))):
                        target = getattr(module, kind)
                        if target.shape != part.shape:
                            raise ValueError(
                                f"{key}: {tuple(part.shape)} per tower, not {tuple(target.shape)}"
                            )
                        target.copy_(part)
        unexpected = [k for k in state if k.split(".")[0] not in paper.LAYER_NAMES]
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"TwoTowerAlexNet.load_state_dict: missing {missing}, unexpected {unexpected}"
            )
        return torch.nn.modules.module._IncompatibleKeys(missing, unexpected)

    @classmethod
    def from_grouped(
        cls, model: AlexNet, devices: Sequence = ("cuda:0", "cuda:1")
    ) -> "TwoTowerAlexNet":
        """The same weights, split across ``devices``."""
        net = cls(model.config, devices)
        net.load_state_dict(model.state_dict())
        return net.train(model.training)

    def to_grouped(self) -> AlexNet:
        """The same weights as one grouped net (§3.2 as grouped convolutions), on the CPU."""
        model = AlexNet(self.config)
        model.load_state_dict(self.state_dict())
        return model.train(self.training)


def crossing_bytes(config: ArchConfig, bytes_per_value: int = 4) -> dict:
    """Bytes that cross between the two devices per image, forward, at each crossing (§3.2).

    Into conv3, fc6 and fc7 each tower sends its half to the other; into fc8 only the second tower sends
    (fc8 is on the first device). Backward sends the gradients of the same tensors the other way: the same
    bytes again.
    """
    rows = layer_map(config)
    out = {}
    for name in CROSSINGS:
        values = 1
        for n in rows[name].in_shape:
            values *= n
        half = values // 2
        out[name] = half * bytes_per_value * (1 if name == "fc8" else 2)
    return out
