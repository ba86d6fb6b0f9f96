"""ArchConfig: one dataclass that describes an AlexNet-shaped network.

The paper's net (§3.5), torchvision's variant, Caffe's release, the one-GPU
comparison net of §3.2 and every ablation are instances of this class
(see variants.py); the model (model.py) and the shape arithmetic
(geometry.py) read nothing else.
"""

from dataclasses import dataclass, field, fields
from typing import Optional, Tuple

from . import code2012, paper


class ConfigError(ValueError):
    """A bad variant name, setting or input size: a message for a person, not a traceback."""


def _paper_weight_std() -> Tuple[float, ...]:
    return (paper.INIT_STD,) * len(paper.LAYER_NAMES)


def _paper_bias_init() -> Tuple[float, ...]:
    return tuple(1.0 if name in paper.BIAS_ONE_LAYERS else 0.0 for name in paper.LAYER_NAMES)


@dataclass(frozen=True)
class ArchConfig:
    """An AlexNet: conv1..conv5 (each with ReLU), LRN after conv1 and conv2,
    max-pooling after the LRNs and conv5, then fc6, fc7, fc8.

    Defaults are the paper's own network (§3.5) at the 227 input its
    arithmetic needs.
    """

    name: str = "paper"
    description: str = "the 2012 paper's network (§3.5), 227x227 input"
    input_size: int = paper.INPUT_SIZE  # side of the square input the fc6 size is built for
    in_channels: int = 3
    # conv1..conv5 (§3.5)
    conv_channels: Tuple[int, ...] = paper.CONV_CHANNELS
    conv_kernels: Tuple[int, ...] = paper.CONV_KERNELS
    conv_strides: Tuple[int, ...] = paper.CONV_STRIDES
    conv_paddings: Tuple[int, ...] = paper.CONV_PADDINGS
    # which convs read only their own tower (§3.2)
    conv_grouped: Tuple[bool, ...] = paper.CONV_GROUPED
    towers: int = paper.TOWERS  # 1 = no groups anywhere ("groups off")
    # "floor" is PyTorch's and Caffe's conv rounding; "ceil" is cuda-convnet's (zero pad right/bottom)
    conv_rounding: str = "floor"
    # local response normalisation (§3.3) after ReLU of conv1 and conv2
    lrn: bool = True
    lrn_size: int = paper.LRN_SIZE
    lrn_alpha: float = paper.LRN_ALPHA  # used as written: NOT divided by lrn_size
    lrn_beta: float = paper.LRN_BETA
    lrn_k: float = paper.LRN_K
    lrn_per_tower: bool = True  # normalise within each tower's maps (§3.2)
    # per stage (conv1, conv2): the LRN reads the conv's output and the ReLU follows it (the 2012 code's layer 1)
    norm_before_relu: Tuple[bool, ...] = (False, False)
    # per stage: the 2012 code's within-map response norm (layers.MapResponseNorm) after the LRN, before pooling
    map_norm: Tuple[bool, ...] = (False, False)
    map_norm_size: int = code2012.MAP_NORM_SIZE
    # as applied to the sum: the configured scale / size^2
    map_norm_alpha: float = code2012.MAP_NORM_SCALE / code2012.MAP_NORM_SIZE**2
    map_norm_beta: float = code2012.MAP_NORM_POW
    map_norm_k: float = code2012.MAP_NORM_K
    # max pooling (§3.4) after norm1, norm2 and conv5
    pool_size: int = paper.POOL_SIZE
    pool_stride: int = paper.POOL_STRIDE
    pool_rounding: str = "floor"  # "ceil": Caffe's and cuda-convnet's pooling
    adaptive_pool: Optional[int] = None  # torchvision: AdaptiveAvgPool2d to this side before fc6
    # fully-connected layers (§3.5) and dropout (§4.2)
    fc_sizes: Tuple[int, ...] = paper.FC_SIZES
    dropout: float = paper.DROPOUT
    # "train": PyTorch's inverted dropout (kept units x 1/(1 - p) in training, nothing at test); "test": §4.2's
    # and the 2012 code's (kept units unscaled in training, every unit x (1 - p) at test)
    dropout_scaling: str = "train"
    # whose outputs are dropped; torchvision: pool5, fc6
    dropout_after: Tuple[str, ...] = (
        "fc6",
        "fc7",
    )
    activation: str = paper.ACTIVATION  # "relu" (§3.1) or "tanh" (Figure 1's comparison)
    num_classes: int = paper.NUM_CLASSES
    # initialisation (§5), one value per learned layer conv1..fc8; None keeps PyTorch's default init
    weight_std: Optional[Tuple[float, ...]] = field(default_factory=_paper_weight_std)
    bias_init: Optional[Tuple[float, ...]] = field(default_factory=_paper_bias_init)
    # "paper": N(0, weight_std) and bias_init above (§5); "he": Kaiming-normal weights, zero biases
    # (not the paper's: the measured remedy for the §5 stall, see docs/training.md)
    init: str = "paper"

    def __post_init__(self):
        for f in fields(self):  # lists given as overrides become tuples, so configs stay hashable
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))

        def need(ok, what):
            if not ok:
                raise ConfigError(f"variant '{self.name}': {what}")

        for name in (
            "conv_channels",
            "conv_kernels",
            "conv_strides",
            "conv_paddings",
            "conv_grouped",
        ):
            need(
                len(getattr(self, name)) == 5,
                f"{name} needs 5 entries (conv1..conv5), got {getattr(self, name)}",
            )
        for name in ("norm_before_relu", "map_norm"):
            need(
                len(getattr(self, name)) == 2,
                f"{name} needs 2 entries (the stages of conv1, conv2), got {getattr(self, name)}",
            )
        need(
            self.dropout_scaling in ("train", "test"),
            f"dropout_scaling must be 'train' or 'test', got {self.dropout_scaling!r}",
        )
        need(len(self.fc_sizes) == 2, f"fc_sizes needs 2 entries (fc6, fc7), got {self.fc_sizes}")
        for name in ("weight_std", "bias_init"):
            value = getattr(self, name)
            need(
                value is None or len(value) == 8,
                f"{name} needs 8 entries (conv1..fc8), got {value}",
            )
        need(self.init in ("paper", "he"), f"init must be 'paper' or 'he', got {self.init!r}")
        need(
            self.activation in ("relu", "tanh"),
            f"activation must be 'relu' or 'tanh', got {self.activation!r}",
        )
        for name in ("conv_rounding", "pool_rounding"):
            need(getattr(self, name) in ("floor", "ceil"), f"{name} must be 'floor' or 'ceil'")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(
            set(self.dropout_after) <= {"pool5", "fc6", "fc7"},
            f"dropout_after may name pool5, fc6, fc7; got {self.dropout_after}",
        )
        for name in (
            "input_size",
            "in_channels",
            "towers",
            "num_classes",
            "pool_size",
            "pool_stride",
            "lrn_size",
            "map_norm_size",
        ):
            need(
                isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                f"{name} must be a positive integer, got {getattr(self, name)!r}",
            )
        need(
            all(c >= 1 for c in self.conv_channels + self.fc_sizes), "layer widths must be positive"
        )
        for i in range(5):
            groups = self.conv_groups(i)
            c_in = self.in_channels if i == 0 else self.conv_channels[i - 1]
            need(
                c_in % groups == 0 and self.conv_channels[i] % groups == 0,
                f"conv{i + 1}: {c_in} -> {self.conv_channels[i]} channels do not split into {groups} towers",
            )
        if self.lrn:
            for i in (0, 1):
                need(
                    self.conv_channels[i] % self.lrn_groups == 0,
                    f"norm{i + 1}: {self.conv_channels[i]} maps do not split into {self.lrn_groups} towers",
                )

    def conv_groups(self, i: int) -> int:
        """Groups of conv(i+1): ``towers`` where the paper keeps a layer inside its GPU, else 1."""
        return self.towers if self.conv_grouped[i] else 1

    @property
    def lrn_groups(self) -> int:
        return self.towers if self.lrn_per_tower else 1


def config_fields() -> Tuple[str, ...]:
    """Names that ``build_model(..., **overrides)`` accepts."""
    return tuple(f.name for f in fields(ArchConfig) if f.name not in ("name", "description"))
