"""Shape arithmetic of an ArchConfig, layer by layer, as a student writes it (§3.5).

    out = (in − kernel + 2·padding) / stride + 1

rounded down (PyTorch, Caffe convolutions) or up (cuda-convnet, Caffe pooling).
The model builds fc6 from these numbers and refuses an input whose map
vanishes, naming the layer; the shape report prints them.
"""

import functools
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Dict, Mapping, Optional, Sequence, Tuple

from .config import ArchConfig, ConfigError

Shape = Tuple[int, int, int]  # C, H, W


class ShapeError(ConfigError):
    """An input the net cannot take: the message names the layer and the arithmetic."""


@dataclass(frozen=True)
class Layer:
    """One row of the shape arithmetic: what a layer takes, gives and costs."""

    name: str  # conv1, norm1, pool1, ..., fc8 (the model's attribute of the same name)
    kind: str  # conv, lrn, map-norm, maxpool, avgpool, fc
    in_shape: Shape
    out_shape: Shape  # fc layers: (features, 1, 1)
    kernel: int = 0
    stride: int = 0
    padding: int = 0
    groups: int = 1
    edge_pad: int = 0  # zero padding added on the right/bottom edge by ceil rounding (convs)
    towers: int = 1  # the output is split into this many per-GPU halves (§3.2)
    params: int = 0
    macs: int = 0  # multiply-adds of the weights (bias, ReLU, LRN, pooling not counted)
    arithmetic: str = ""  # the height formula, e.g. "(227 − 11 + 2·0) / 4 + 1 = 55"

    @property
    def learned(self) -> bool:
        return self.kind in ("conv", "fc")

    @property
    def neurons(self) -> int:
        """Output units of a learned layer, as §3.5 counts them (0 for the others)."""
        return math.prod(self.out_shape) if self.learned else 0

    @property
    def tower_shape(self) -> Optional[Shape]:
        if self.towers == 1:
            return None
        c, h, w = self.out_shape
        return (c // self.towers, h, w)


def _fmt(x: float) -> str:
    return f"{x:g}" if x == int(x) else f"{x:.4g}"


def window_output(
    size: int,
    kernel: int,
    stride: int,
    padding: int,
    rounding: str,
    layer: str,
    pooling: bool = False,
) -> Tuple[int, int, str]:
    """Output side, right/bottom edge padding and the formula, for one spatial dimension.

    ``pooling`` with ceil rounding follows PyTorch's rule that the last window
    must start inside the map. Raises ShapeError when the window no longer fits.
    """
    span = size + 2 * padding - kernel
    exact = span / stride + 1
    formula = f"({size} − {kernel} + 2·{padding}) / {stride} + 1 = {_fmt(exact)}"
    if span < 0:
        raise ShapeError(
            f"the map vanishes at {layer}: {formula} "
            f"(a {kernel}×{kernel} window does not fit in {size}×{size} with padding {padding})"
        )
    if rounding == "ceil":
        out = -(-span // stride) + 1
        if pooling and (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = span // stride + 1
    if out != exact:
        formula += f" → {out} ({rounding})"
    edge = 0 if pooling else max(0, (out - 1) * stride + kernel - (size + 2 * padding))
    return out, edge, formula


@functools.lru_cache(maxsize=256)
def layer_shapes(
    config: ArchConfig, height: Optional[int] = None, width: Optional[int] = None
) -> Tuple[Layer, ...]:
    """Every layer of ``config`` for a ``height`` × ``width`` input (default: config.input_size).

    Raises ShapeError, naming the layer, when the input is too small for the net.
    """
    height = config.input_size if height is None else height
    width = height if width is None else width
    try:
        return _layer_shapes(config, height, width)
    except ShapeError as err:
        raise ShapeError(
            f"a {config.in_channels}×{height}×{width} input is too small for the "
            f"'{config.name}' net: {err}"
        ) from None


def _layer_shapes(config: ArchConfig, height: int, width: int) -> Tuple[Layer, ...]:
    c, h, w = config.in_channels, height, width
    towers = config.towers
    rows = []

    def spatial(name, kernel, stride, padding, rounding, pooling):
        oh, eh, formula = window_output(h, kernel, stride, padding, rounding, name, pooling)
        ow, _, formula_w = window_output(w, kernel, stride, padding, rounding, name, pooling)
        if w != h:
            formula = f"H: {formula}; W: {formula_w}"
        return oh, ow, eh, formula

    for i in range(5):
        name = f"conv{i + 1}"
        k, s, p, g = (
            config.conv_kernels[i],
            config.conv_strides[i],
            config.conv_paddings[i],
            config.conv_groups(i),
        )
        out_c = config.conv_channels[i]
        oh, ow, edge, formula = spatial(name, k, s, p, config.conv_rounding, pooling=False)
        weights = out_c * (c // g) * k * k
        rows.append(
            Layer(
                name,
                "conv",
                (c, h, w),
                (out_c, oh, ow),
                k,
                s,
                p,
                g,
                edge,
                towers,
                params=weights + out_c,
                macs=weights * oh * ow,
                arithmetic=formula,
            )
        )
        c, h, w = out_c, oh, ow
        # after conv1 and conv2, the normalisations keep the map's size: the LRN (§3.3), and the 2012 code's
        # within-map norm
        stage_norms = (
            [
                ("norm", "lrn", config.lrn, config.lrn_size, config.lrn_groups),
                ("mapnorm", "map-norm", config.map_norm[i], config.map_norm_size, 1),
            ]
            if i in (0, 1)
            else []
        )
        for prefix, kind, present, size, groups in stage_norms:
            if present:
                rows.append(
                    Layer(
                        f"{prefix}{i + 1}",
                        kind,
                        (c, h, w),
                        (c, h, w),
                        kernel=size,
                        groups=groups,
                        towers=towers,
                        arithmetic="same size",
                    )
                )
        if i in (0, 1, 4):
            name = f"pool{i + 1}"
            oh, ow, _, formula = spatial(
                name, config.pool_size, config.pool_stride, 0, config.pool_rounding, pooling=True
            )
            rows.append(
                Layer(
                    name,
                    "maxpool",
                    (c, h, w),
                    (c, oh, ow),
                    config.pool_size,
                    config.pool_stride,
                    towers=towers,
                    arithmetic=formula,
                )
            )
            h, w = oh, ow
    if config.adaptive_pool:
        a = config.adaptive_pool
        rows.append(
            Layer(
                "avgpool",
                "avgpool",
                (c, h, w),
                (c, a, a),
                arithmetic=f"adaptive average pool: {h}×{w} → {a}×{a}",
            )
        )
        h = w = a
    features = c * h * w
    widths = (*config.fc_sizes, config.num_classes)
    arithmetic = f"{c}·{h}·{w} = {features} inputs"
    for j, out_f in enumerate(widths):
        rows.append(
            Layer(
                f"fc{6 + j}",
                "fc",
                (features, 1, 1),
                (out_f, 1, 1),
                towers=towers if j < 2 else 1,
                params=features * out_f + out_f,
                macs=features * out_f,
                arithmetic=arithmetic,
            )
        )
        features, arithmetic = out_f, f"{out_f} inputs"
    return tuple(rows)


@functools.lru_cache(maxsize=256)
def layer_map(
    config: ArchConfig, height: Optional[int] = None, width: Optional[int] = None
) -> Mapping[str, Layer]:
    """:func:`layer_shapes` by layer name (read-only)."""
    return MappingProxyType({layer.name: layer for layer in layer_shapes(config, height, width)})


def totals(layers: Sequence[Layer]) -> Dict[str, int]:
    """Parameters, multiply-adds and neurons of the learned layers."""
    return {
        "params": sum(layer.params for layer in layers),
        "macs": sum(layer.macs for layer in layers),
        "neurons": sum(layer.neurons for layer in layers),
    }


def is_built_input(config: ArchConfig, shape: Sequence[int]) -> bool:
    """Whether ``shape`` is a batch of the images the net is built for (N, C, input_size, input_size):
    the nets then use the geometry they looked up when built, so that torch.compile traces none of it."""
    return len(shape) == 4 and tuple(shape[1:]) == (
        config.in_channels,
        config.input_size,
        config.input_size,
    )


def check_input(config: ArchConfig, shape: Sequence[int]) -> Mapping[str, Layer]:
    """The layers for an (N, C, H, W) input, or a ShapeError saying why the net cannot take it."""
    label = f"the '{config.name}' net"
    if len(shape) != 4:
        raise ShapeError(
            f"{label} takes a batch of images (N, C, H, W); got a tensor of shape {tuple(shape)}"
        )
    _, c, h, w = shape
    if c != config.in_channels:
        raise ShapeError(
            f"{label} takes {config.in_channels}-channel images; got {c} channels "
            f"(shape {tuple(shape)})"
        )
    here = layer_map(config, h, w)
    if not config.adaptive_pool:
        built = layer_map(config)
        got, want = here["fc6"].in_shape[0], built["fc6"].in_shape[0]
        if got != want:
            pool5, want_pool5 = here["pool5"].out_shape, built["pool5"].out_shape
            raise ShapeError(
                f"{label} is built for {config.in_channels}×{config.input_size}×{config.input_size} input "
                f"(fc6 reads {'×'.join(map(str, want_pool5))} = {want} values); a {c}×{h}×{w} input gives "
                f"{'×'.join(map(str, pool5))} = {got} at pool5. Resize the input, or build the model with "
                f"input_size={h}" + (" (or use variant 'paper-224')" if h == 224 else "")
            )
    return here
