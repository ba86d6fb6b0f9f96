"""AlexNet as §3.5 of the paper lays it out: conv1..conv5, fc6..fc8.

The learned layers are attributes named as the paper names them, so that
initialisation, tower splitting, filter pictures (Figure 3) and fc7 features
(Figure 4) address them by name. The two-GPU split of §3.2 is expressed here
as grouped convolutions (conv2, conv4, conv5) and per-tower LRN.
"""

import torch
from torch import nn
import torch.nn.functional as F

from . import paper
from .config import ArchConfig
from .geometry import check_input, is_built_input, layer_map
from . import layers
from .cpu_linear import Linear
from .layers import relu_norm_pool
from .variants import get_config


class AlexNet(nn.Module):
    """The network described by an :class:`ArchConfig` (default: the paper's, §3.5).

    Shapes in the comments are the paper net's at its 227x227 input.
    """

    tap = (
        None  # a features.Taps while features.tapping() reads the stages' outputs; forward calls it
    )

    def __init__(self, config: ArchConfig = ArchConfig()):
        super().__init__()
        self.config = config
        cfg = config
        chans = (cfg.in_channels, *cfg.conv_channels)

        def conv(i):
            return nn.Conv2d(
                chans[i],
                chans[i + 1],
                cfg.conv_kernels[i],
                cfg.conv_strides[i],
                cfg.conv_paddings[i],
                groups=cfg.conv_groups(i),
            )

        self._rows = layer_map(cfg)  # the geometry at the built input size
        fc6_in = self._rows["fc6"].in_shape[0]  # 256*6*6 = 9216
        adaptive = nn.AdaptiveAvgPool2d(cfg.adaptive_pool) if cfg.adaptive_pool else nn.Identity()
        # §3.5's layers, a row each (a table: the formatter leaves it as written)
        # fmt: off
        self.act = layers.activation(cfg.activation)                                        # §3.1
        self.conv1, self.norm1, self.pool1 = conv(0), layers.norm(cfg), layers.pool(cfg)  # 96 x 11x11x3, stride 4
        self.conv2, self.norm2, self.pool2 = conv(1), layers.norm(cfg), layers.pool(cfg)  # 256 x 5x5x48, groups 2
        for i in (1, 2):  # the 2012 code's within-map norm after norm2 (code2012.py); the paper's net has none
            if cfg.map_norm[i - 1]:
                setattr(self, f"mapnorm{i}", layers.map_norm(cfg, i))
        self.conv3 = conv(2)                                                                # 384 x 3x3x256
        self.conv4 = conv(3)                                                                # 384 x 3x3x192, groups 2
        self.conv5, self.pool5 = conv(4), layers.pool(cfg)                                  # 256 x 3x3x192, groups 2
        self.avgpool = adaptive                                                             # torchvision's; else none
        self.drop5 = layers.dropout(cfg, "pool5")                                           # torchvision only
        self.fc6, self.drop6 = Linear(fc6_in, cfg.fc_sizes[0]), layers.dropout(cfg, "fc6")  # 4096, §4.2
        self.fc7, self.drop7 = Linear(cfg.fc_sizes[0], cfg.fc_sizes[1]), layers.dropout(cfg, "fc7")
        self.fc8 = Linear(cfg.fc_sizes[1], cfg.num_classes)                                 # 1000
        # fmt: on
        # the fused ReLU-LRN-pool kernel computes §3.5's order only
        self._fusable = tuple(not (cfg.norm_before_relu[i] or cfg.map_norm[i]) for i in (0, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """§5: weights ~ N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, else 0 (per config)."""
        cfg = self.config
        for i, name in enumerate(paper.LAYER_NAMES):
            layer = getattr(self, name)
            if cfg.init == "he":  # not §5: fan-in scaled weights, zero biases
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
            elif cfg.weight_std is None:
                layer.reset_parameters()  # PyTorch's default init (torchvision's net)
            else:
                nn.init.normal_(layer.weight, 0.0, cfg.weight_std[i])
                nn.init.constant_(layer.bias, cfg.bias_init[i])

    def _edge(self, x: torch.Tensor, pad: int) -> torch.Tensor:
        """cuda-convnet's ceil rounding: zeros on the right and bottom edges."""
        return F.pad(x, (0, pad, 0, pad)) if pad else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        rows = self._rows if is_built_input(self.config, shape) else check_input(self.config, shape)
        tap = self.tap  # None, except while features.tapping() reads the stages' outputs by name
        if tap is not None:
            tap("input", x)
        x = self.conv1(self._edge(x, rows["conv1"].edge_pad))  # 96x55x55
        x = self._relu_norm_pool(x, 1, tap)  # 96x27x27
        x = self.conv2(self._edge(x, rows["conv2"].edge_pad))  # 256x27x27
        x = self._relu_norm_pool(x, 2, tap)  # 256x13x13
        x = self._relu(self.conv3(self._edge(x, rows["conv3"].edge_pad)), 3, tap)  # 384x13x13
        x = self._relu(self.conv4(self._edge(x, rows["conv4"].edge_pad)), 4, tap)  # 384x13x13
        x = self._relu(self.conv5(self._edge(x, rows["conv5"].edge_pad)), 5, tap)  # 256x13x13
        x = self.pool5(x)  # 256x6x6
        if tap is not None:
            tap("pool5", x)
        x = self.avgpool(x)  # torchvision's adaptive average pool; the paper has none (Identity)
        if tap is not None and self.config.adaptive_pool:
            tap("avgpool", x)
        x = self.drop5(torch.flatten(x, 1))  # 9216
        x = self.drop6(self._relu(self.fc6(x), 6, tap))  # 4096
        x = self.drop7(self._relu(self.fc7(x), 7, tap))  # 4096
        x = self.fc8(x)  # 1000 logits (softmax in the loss)
        if tap is not None:
            tap("fc8", x)
            if tap.wants("prob"):
                tap("prob", torch.softmax(x, dim=1))
        return x

    def _relu(self, x: torch.Tensor, i: int, tap) -> torch.Tensor:
        """The activation (§3.1, in place) after layer i; with a tap, the layer's output is read before it."""
        if tap is None:
            return self.act(x)
        tap(paper.LAYER_NAMES[i - 1], x)  # conv3..conv5, fc6, fc7
        x = self.act(x)
        tap(f"{self.config.activation}{i}", x)
        return x

    def _relu_norm_pool(self, x: torch.Tensor, i: int, tap) -> torch.Tensor:
        """ReLU -> LRN -> pool after conv1 and conv2 (§3.5): one fused kernel on the CPU (layers.relu_norm_pool)
        unless a tap reads the ReLU's or the LRN's output, which then runs the three in turn. In the config's
        order: the 2012 code normalises conv1's output before its ReLU, and conv2's LRN output again within
        each map (mapnorm2) before pooling."""
        norm, pool = getattr(self, f"norm{i}"), getattr(self, f"pool{i}")
        act_name, norm_name = f"{self.config.activation}{i}", f"norm{i}"
        if tap is not None:
            tap(f"conv{i}", x)
        if self._fusable[i - 1] and (tap is None or not tap.wants(act_name, norm_name)):
            x = relu_norm_pool(x, self.act, norm, pool)
        else:
            steps = [(act_name, self.act), (norm_name, norm)]
            if self.config.norm_before_relu[i - 1]:
                steps.reverse()
            if self.config.map_norm[i - 1]:
                steps.append((f"mapnorm{i}", getattr(self, f"mapnorm{i}")))
            for name, module in steps:
                x = module(x)
                if tap is not None:
                    tap(name, x)
            x = pool(x)
        if tap is not None:
            tap(f"pool{i}", x)
        return x


def build_model(
    variant: str = "paper", num_classes: int = paper.NUM_CLASSES, **overrides
) -> AlexNet:
    """An AlexNet by variant name (see list_variants), e.g. ``build_model("paper+no-lrn", 10)``.

    ``overrides`` are ArchConfig fields: lrn=False, pool_size=2, pool_stride=2,
    activation="tanh", towers=1, dropout=0.0, input_size=..., and so on.
    """
    return AlexNet(get_config(variant, num_classes=num_classes, **overrides))
