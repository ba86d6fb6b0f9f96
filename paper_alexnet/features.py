"""Every stage's output of a trained AlexNet by the paper's names (§3.5): conv1, relu1, norm1, pool1 ... fc8.

    from paper_alexnet import build_model, features
    net = build_model("paper").eval()
    out = features.extract(net, crops, ["relu7", "pool5"])   # {"relu7": N x 4096, "pool5": N x 256 x 6 x 6}

The names follow §3.5's order: ``input`` (the crop as the net takes it, the
§2 mean subtracted), then per layer its output (``conv1``), its ReLU (§3.1,
``relu1``), its response normalisation (§3.3, ``norm1``) and its max-pooling
(§3.4, ``pool1``), up to ``fc8`` (the logits) and ``prob`` (their softmax).
Dropout (§4.2) is the identity at test time and has no name. A net has only
the stages it computes: torchvision's has no ``norm1`` but an ``avgpool``,
the tanh ablation ``tanh1`` where the others have ``relu1``.

The forward itself calls the tap (model.AlexNet.forward), so that conv3's output
is read before its in-place ReLU, and conv1's fused ReLU -> LRN -> pool kernel
stays on unless relu1 or norm1 is asked for.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from . import paper
from .config import ConfigError
from .geometry import layer_map
from .model import AlexNet

# torchvision.models.alexnet's module paths, by the stage they output (its classifier's dropouts are the
# identity at test time: classifier.0 passes avgpool's maps on, flattened; classifier.3 passes relu6 on).
TORCHVISION_PATHS = {
    "features.0": "conv1", "features.1": "relu1", "features.2": "pool1",
    "features.3": "conv2", "features.4": "relu2", "features.5": "pool2",
    "features.6": "conv3", "features.7": "relu3", "features.8": "conv4", "features.9": "relu4",
    "features.10": "conv5", "features.11": "relu5", "features.12": "pool5", "avgpool": "avgpool",
    "classifier.0": "avgpool", "classifier.1": "fc6", "classifier.2": "relu6", "classifier.3": "relu6",
    "classifier.4": "fc7", "classifier.5": "relu7", "classifier.6": "fc8",
}  # fmt: skip


class LayerError(ConfigError):
    """A layer name the net does not have."""


def layer_names(model: torch.nn.Module) -> List[str]:
    """The stages of ``model`` in the order the forward computes them (module docstring)."""
    cfg = _alexnet(model).config
    act = cfg.activation
    names = ["input"]
    for i in (1, 2):
        stage = [f"{act}{i}"] + ([f"norm{i}"] if cfg.lrn else [])
        if cfg.norm_before_relu[i - 1]:  # the 2012 code's layer 1
            stage.reverse()
        stage += [f"mapnorm{i}"] if cfg.map_norm[i - 1] else []
        names += [f"conv{i}", *stage, f"pool{i}"]
    names += ["conv3", f"{act}3", "conv4", f"{act}4", "conv5", f"{act}5", "pool5"]
    names += ["avgpool"] if cfg.adaptive_pool else []
    return names + ["fc6", f"{act}6", "fc7", f"{act}7", "fc8", "prob"]


def module_paths(model: torch.nn.Module) -> Dict[str, str]:
    """torchvision's module paths and the names they stand for, where ``model`` is torchvision's net; else {}."""
    cfg = _alexnet(model).config
    if cfg.name.split("+")[0] != "torchvision" or cfg.activation != "relu":
        return {}
    return dict(TORCHVISION_PATHS)


def resolve(model: torch.nn.Module, asked: Sequence[str]) -> List[str]:
    """The stage names ``asked`` stands for (paper names, or torchvision's paths on its net), in the order
    given, each once; a name the net does not have raises :class:`LayerError`, which lists them."""
    names, paths = layer_names(model), module_paths(model)
    out = []
    for name in asked:
        stage = paths.get(name, name)
        if stage not in names:
            listed = ", ".join(names) + (
                f"; or torchvision's paths {', '.join(paths)}" if paths else ""
            )
            raise LayerError(
                f"the {_alexnet(model).config.name} net has no layer {name!r}; its layers: {listed}"
            )
        if stage not in out:
            out.append(stage)
    return out


class Taps:
    """What the forward calls after each stage (``tap(name, tensor)``); it hands the stages in ``names`` to
    ``sink`` at once, before the next stage can change the tensor in place."""

    def __init__(self, names: Sequence[str], sink: Callable[[str, torch.Tensor], None]):
        self.names, self.sink = frozenset(names), sink

    def wants(self, *names: str) -> bool:
        return any(name in self.names for name in names)

    def __call__(self, name: str, x: torch.Tensor) -> None:
        if name in self.names:
            self.sink(name, x)


@contextlib.contextmanager
def tapping(model: torch.nn.Module, taps: Taps) -> Iterator[None]:
    """Within the block, every forward of ``model`` calls ``taps``."""
    net = _alexnet(model)
    if net.tap is not None:
        raise RuntimeError("the net is already being tapped")
    net.tap = taps
    try:
        yield
    finally:
        net.tap = None


def pooled(x: torch.Tensor, pool: Optional[str]) -> torch.Tensor:
    """A stage's output for keeping: N x C x H x W maps reduced to N x C by ``pool`` ("avg" or "max"), else a
    copy (the next stage may change the tensor in place)."""
    if pool and x.dim() == 4:
        return x.mean(dim=(2, 3)) if pool == "avg" else x.amax(dim=(2, 3))
    return x.detach().clone()


@torch.no_grad()
def extract(
    model: torch.nn.Module,
    images: torch.Tensor,
    layers: Sequence[str],
    pool: Optional[str] = None,
) -> Dict[str, torch.Tensor]:
    """{name: output} of one forward pass of ``images`` (the net's input: N x 3 x crop x crop, the mean
    subtracted, as data.PaperTransform.center gives it) for each of ``layers`` (paper names or, on
    torchvision's net, its module paths: the keys are as asked). The net should be in eval mode."""
    stages = resolve(model, layers)
    out: Dict[str, torch.Tensor] = {}
    with tapping(model, Taps(stages, lambda name, x: out.__setitem__(name, pooled(x, pool)))):
        model(images)
    paths = module_paths(model)
    return {name: out[paths.get(name, name)] for name in layers}


def shapes(model: torch.nn.Module) -> Dict[str, tuple]:
    """Each stage's output shape for one image at the net's input size: the shape arithmetic
    (geometry.layer_map, checked against the built model by shapes.verify), by the names of layer_names."""
    cfg = _alexnet(model).config
    rows = layer_map(cfg)

    def shape(row) -> tuple:
        return (row.out_shape[0],) if row.kind == "fc" else row.out_shape

    found: Dict[str, tuple] = {}
    for name in layer_names(model):
        if name == "input":
            found[name] = (cfg.in_channels, cfg.input_size, cfg.input_size)
        elif name == "prob":
            found[name] = shape(rows["fc8"])
        elif name in rows:  # convN, normN, mapnormN, poolN, avgpool, fcN
            found[name] = shape(rows[name])
        else:  # the activation after layer N: its layer's shape
            i = int(name[len(cfg.activation) :])
            found[name] = shape(rows[paper.LAYER_NAMES[i - 1]])
    return found


def rdm(activations: np.ndarray, block_bytes: int = 256 << 20) -> np.ndarray:
    """The N x N representational dissimilarity matrix of N images' activations (N x ...): 1 - the Pearson
    correlation of each pair's flattened activations, in float64 sums. ``activations`` may be a memory map
    larger than memory: rows are read ``block_bytes`` at a time."""
    n = len(activations)
    flat = activations.reshape(n, -1)
    rows = max(1, int(block_bytes // max(flat.shape[1] * 8, 1)))

    def block(start: int) -> np.ndarray:
        z = np.asarray(flat[start : start + rows], dtype=np.float64)
        z = z - z.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(z, axis=1, keepdims=True)
        # a constant row: no correlation
        return np.divide(z, norm, out=np.zeros_like(z), where=norm > 0)

    out = np.empty((n, n), dtype=np.float64)
    for i in range(0, n, rows):
        zi = block(i)
        for j in range(i, n, rows):
            zj = zi if j == i else block(j)
            corr = zi @ zj.T
            out[i : i + len(zi), j : j + len(zj)] = 1.0 - corr
            out[j : j + len(zj), i : i + len(zi)] = 1.0 - corr.T
    np.fill_diagonal(out, 0.0)
    return out


def _alexnet(model: torch.nn.Module) -> AlexNet:
    """``model`` as an AlexNet (unwrapped from DistributedDataParallel); other nets have no paper names."""
    net = getattr(model, "module", model)
    if not isinstance(net, AlexNet):
        raise LayerError(
            f"layers by the paper's names need an AlexNet on one device, not a {type(net).__name__} "
            "(for the two-tower net, load the checkpoint without --two-gpu)"
        )
    return net
