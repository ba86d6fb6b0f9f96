"""Local response normalisation exactly as §3.3 of the paper writes it.

    b[i] = a[i] / (k + alpha * sum_{j = max(0, i - n/2)}^{min(N - 1, i + n/2)} a[j]^2) ^ beta

The trap: ``torch.nn.LocalResponseNorm`` and Caffe's LRN layer compute
``k + (alpha / n) * sum``; passing the paper's alpha = 1e-4 to them gives an
effective 2e-5. Here alpha is used as written.

``groups`` splits the channels into equal blocks and normalises within each
one (the window is clipped at block edges), which is what each of the two GPUs
of §3.2 did with its own half of the kernel maps.
"""

from typing import TYPE_CHECKING, Optional

import torch
from torch import nn
import torch.nn.functional as F

from . import code2012, compiled_stage, fused_lrn, paper

if TYPE_CHECKING:
    from .config import ArchConfig


def channel_window_sum(
    x: torch.Tensor, size: int, groups: int = 1, transpose: bool = False
) -> torch.Tensor:
    """Sum of ``x`` over a window of ``size`` adjacent channels, per position.

    Channel i sums channels i - size//2 .. i + (size-1)//2 of its own group,
    clipped at the group's edges (zero padding). For odd ``size`` that is the
    paper's symmetric window; even sizes follow torch's convention.
    ``transpose`` sums the mirrored window (the adjoint, for the backward pass).
    A loop over the ``size`` window offsets, never over channels.
    """
    n, c = x.shape[:2]
    below, above = size // 2, (size - 1) // 2
    if transpose:
        below, above = above, below
    grouped = x.reshape(n, groups, c // groups, -1)
    total = grouped.clone()
    for offset in range(1, below + 1):  # channels below: i - offset
        total[:, :, offset:] += grouped[:, :, :-offset]
    for offset in range(1, above + 1):  # channels above: i + offset
        total[:, :, :-offset] += grouped[:, :, offset:]
    return total.reshape(x.shape)


class _LRNFunction(torch.autograd.Function):
    """Forward and analytic backward of the §3.3 equation.

    With s[i] = k + alpha * S(a^2)[i] (S the window sum above):
        db[j]/da[i] = delta_ij s[i]^-beta - 2 alpha beta a[i] a[j] s[j]^(-beta-1)   (i in window of j)
    so grad_a = g * s^-beta - 2 alpha beta a * S'(g * a * s^(-beta-1)), S' the transposed window.
    Only the input is kept for backward; s is rebuilt there (a window sum costs less than the memory).
    Contiguous float CPU tensors go through the fused kernel (fused_lrn.py), the rest through torch ops.
    """

    @staticmethod
    def forward(ctx, a, size, alpha, beta, k, groups):
        # only the input: s is rebuilt in backward (memory, not time, is short)
        ctx.save_for_backward(a)
        ctx.hyper, ctx.k = (size, alpha, beta, groups), k
        if fused_lrn.applies(a):
            return fused_lrn.forward(a, size, alpha, beta, k, groups)
        if a.dtype in HALF:  # §3.3 in float32, whatever autocast handed in: the input's dtype out
            return _lrn(a.float(), size, alpha, beta, k, groups).to(a.dtype)
        return _lrn(a, size, alpha, beta, k, groups)

    @staticmethod
    def backward(ctx, grad_out):
        (a,) = ctx.saved_tensors
        if a.dtype in HALF:  # in float32, as forward; the input's dtype out
            grad = _LRNFunction._backward(ctx, a.float(), grad_out.float())
            return (grad[0].to(a.dtype),) + grad[1:]
        return _LRNFunction._backward(ctx, a, grad_out)

    @staticmethod
    def _backward(ctx, a, grad_out):
        size, alpha, beta, groups = ctx.hyper
        if torch.is_grad_enabled():  # double backward: the same formula, differentiable in a
            scale = channel_window_sum(a * a, size, groups) * alpha + ctx.k
            inv = scale.pow(-beta)
            cross = channel_window_sum(grad_out * a * inv / scale, size, groups, transpose=True)
            return grad_out * inv - (2.0 * alpha * beta) * a * cross, None, None, None, None, None
        if fused_lrn.applies(a, grad_out):
            return (
                fused_lrn.backward(a, grad_out, size, alpha, beta, ctx.k, groups),
                None,
                None,
                None,
                None,
                None,
            )
        scale = channel_window_sum(a * a, size, groups).mul_(alpha).add_(ctx.k)
        inv = _neg_pow(scale, beta)
        cross = channel_window_sum(
            (grad_out * a).mul_(inv).div_(scale), size, groups, transpose=True
        )
        grad_a = (grad_out * inv).addcmul_(a, cross, value=-2.0 * alpha * beta)
        return grad_a, None, None, None, None, None


def _lrn(
    a: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int
) -> torch.Tensor:
    """§3.3 in torch ops: b = a / (k + alpha * S(a^2))^beta."""
    scale = channel_window_sum(a * a, size, groups).mul_(alpha).add_(k)
    return a * _neg_pow(scale, beta)


# Under --amp the LRN's input is bfloat16 (float16 on older GPUs), whose spacing near k = 2 is 1/64: small
# alpha * sum(a^2) terms of §3.3 would round away, and on CUDA autocast runs rsqrt/pow in float32 anyway. The
# equation is formed in float32 and the result rounded once to the input's dtype.
HALF = (torch.bfloat16, torch.float16)


def _neg_pow(scale: torch.Tensor, beta: float) -> torch.Tensor:
    """scale ** -beta; for the paper's beta = 3/4 as rsqrt(s * sqrt(s)), several times faster than pow."""
    if beta == 0.75:
        return torch.rsqrt(scale * torch.sqrt(scale))
    return scale.pow(-beta)


class _ReluLRNPoolFunction(torch.autograd.Function):
    """max_pool(LRN(relu(z))) in one fused kernel pass each way.

    Kept for backward: z and each output's position in its pooling window (one byte), instead of the
    ReLU's output, the LRN's output and int64 pooling indices (about 2.5x the memory of z).
    """

    @staticmethod
    def forward(ctx, z, window, groups, pool):
        out, at = fused_lrn.stage_forward(z, window, groups, pool)
        ctx.save_for_backward(z, at)
        ctx.hyper = (window, groups, pool)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        z, at = ctx.saved_tensors
        window, groups, pool = ctx.hyper
        # the kernel reads z's layout
        grad_out = grad_out.contiguous(memory_format=fused_lrn.layout_of(z))
        # double backward: through torch ops
        if torch.is_grad_enabled() or not fused_lrn.applies(z, grad_out, layouts=True):
            with torch.enable_grad():
                source = z if z.requires_grad else z.detach().requires_grad_()
                out = F.max_pool2d(local_response_norm(F.relu(source), *window, groups), *pool)
                grad = torch.autograd.grad(
                    out, source, grad_out, create_graph=torch.is_grad_enabled()
                )[0]
            return grad, None, None, None
        return fused_lrn.stage_backward(z, at, grad_out, window, groups, pool), None, None, None


def _paper_stage(act: nn.Module, norm: nn.Module, pool: nn.Module, x: torch.Tensor) -> bool:
    """Whether act -> norm -> pool is ReLU -> §3.3 LRN -> plain max-pool, as the fused kernel and the compiled
    stage compute it."""
    modules = (act, norm, pool)
    return (
        type(act) is nn.ReLU
        and type(norm) is LocalResponseNorm
        and type(pool) is nn.MaxPool2d
        and 0 < (_square(pool.kernel_size) or 0) <= 15  # a window position fits in one byte
        and _square(pool.stride)
        and _square(pool.padding) == 0
        and _square(pool.dilation) == 1
        and not pool.ceil_mode
        and not pool.return_indices
        and x.dim() == 4
        and min(x.shape[2:]) >= _square(pool.kernel_size)
        and x.shape[1] % norm.groups == 0
        and not any(m._forward_hooks or m._forward_pre_hooks for m in modules)
    )


def _square(value):
    """An int for an int or an equal pair (a square window); None otherwise."""
    if isinstance(value, int):
        return value
    return value[0] if len(value) == 2 and value[0] == value[1] else None


# The profiler's name for conv1's and conv2's ReLU-LRN-pool stage, whichever way it runs (the fused kernel, the
# compiled stage, torch ops): the bench finds the stage by it, and its backward by the autograd nodes made inside.
STAGE_MARK = "paper_alexnet::relu_lrn_pool"


def relu_norm_pool(
    x: torch.Tensor, act: nn.Module, norm: nn.Module, pool: nn.Module
) -> torch.Tensor:
    """``pool(norm(act(x)))``: §3.5's order after conv1 and conv2 (ReLU §3.1, LRN §3.3, pooling §3.4).

    When these are the paper's ReLU, LRN and max-pooling (no hooks): on a contiguous float CPU tensor one
    fused kernel pass computes all three (docs/performance.md); on a GPU (or inside torch.compile) the stage
    compiled (compiled_stage.py). Otherwise, or with the kernels off, the three modules run in turn. The
    profiler records it as STAGE_MARK.
    """
    with torch.profiler.record_function(STAGE_MARK):
        path = stage_path(x, act, norm, pool)
        if path == "torch ops":
            return pool(norm(act(x)))
        window = (norm.size, norm.alpha, norm.beta, norm.k)
        windows = (_square(pool.kernel_size), _square(pool.stride))
        if path == "fused kernel":  # in channel planes or channels-last
            return _ReluLRNPoolFunction.apply(x, window, norm.groups, windows)
        return compiled_stage.run(x, window, norm.groups, windows)


def stage_path(x: torch.Tensor, act=None, norm=None, pool=None) -> str:
    """How relu_norm_pool runs the stage on ``x``: "fused kernel" (a CPU), "compiled stage" (a GPU, or inside
    torch.compile) or "torch ops" (the kernels off, or not the paper's modules); without the modules, for the
    paper's."""
    if act is not None and not _paper_stage(act, norm, pool, x):
        return "torch ops"
    if fused_lrn.applies(x, layouts=True):
        return "fused kernel"
    if fused_lrn.enabled() and (x.is_cuda or torch.compiler.is_compiling()):
        return "compiled stage"
    return "torch ops"


def local_response_norm(
    x: torch.Tensor,
    size: int = paper.LRN_SIZE,
    alpha: float = paper.LRN_ALPHA,
    beta: float = paper.LRN_BETA,
    k: float = paper.LRN_K,
    groups: int = 1,
) -> torch.Tensor:
    """Functional form of :class:`LocalResponseNorm` (§3.3); x is (N, C, ...)."""
    if x.dim() < 2:
        raise ValueError(
            f"local_response_norm expects (N, C, ...) input, got shape {tuple(x.shape)}"
        )
    if x.shape[1] % groups:
        raise ValueError(
            f"local_response_norm: {x.shape[1]} channels do not split into {groups} equal groups"
        )
    return _LRNFunction.apply(x, size, alpha, beta, k, groups)


class LocalResponseNorm(nn.Module):
    """§3.3 local response normalisation, alpha as the paper writes it (not alpha/n).

    Defaults are the paper's: n = 5, alpha = 1e-4, beta = 0.75, k = 2.
    ``groups=2`` normalises each half of the channels on its own (one GPU each, §3.2).
    """

    def __init__(
        self,
        size: int = paper.LRN_SIZE,
        alpha: float = paper.LRN_ALPHA,
        beta: float = paper.LRN_BETA,
        k: float = paper.LRN_K,
        groups: int = 1,
    ):
        super().__init__()
        if size < 1 or groups < 1:
            raise ValueError(
                f"LocalResponseNorm needs size >= 1 and groups >= 1, got size={size}, groups={groups}"
            )
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.groups)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, groups={self.groups}"


class MapResponseNorm(nn.Module):
    """The 2012 code's response normalisation within each map (``cnorm2`` of layers-145.cfg, type ``rnorm``;
    code2012.py), which the paper does not describe: over a size x size neighbourhood of the same map,

        b[c, y, x] = a[c, y, x] / (k + alpha * sum_{y', x'} a[c, y', x']^2) ^ beta,
        y' = y - size//2 .. y - size//2 + size - 1 (x' alike), clipped at the map's edges

    with alpha as applied to the sum (the code's configured ``scale`` / size^2) and k = 1 (its kernel's).
    """

    def __init__(
        self,
        size: int = code2012.MAP_NORM_SIZE,
        alpha: float = code2012.MAP_NORM_SCALE / code2012.MAP_NORM_SIZE**2,
        beta: float = code2012.MAP_NORM_POW,
        k: float = code2012.MAP_NORM_K,
    ):
        super().__init__()
        if size < 1:
            raise ValueError(f"MapResponseNorm needs size >= 1, got {size}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before, after = self.size // 2, self.size - 1 - self.size // 2
        squares = F.pad(
            x * x, (before, after, before, after)
        )  # zeros: the window clipped at the edges
        total = F.avg_pool2d(squares, self.size, stride=1) * (self.size * self.size)
        return x * (total * self.alpha + self.k).pow(-self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha:g}, beta={self.beta}, k={self.k}"


class DropoutScaledAtTest(nn.Dropout):
    """§4.2 as written, and the 2012 code's ``hs`` layers (src/layer.cu 1126-1135): in training each unit is
    zeroed with probability p and the kept ones pass unscaled; at test every unit passes, multiplied by 1 - p.
    (nn.Dropout scales the kept units by 1/(1 - p) in training instead.) The same seed drops the same units."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.dropout(x, self.p, training=True) * (1.0 - self.p)
        return x * (1.0 - self.p)


# --- the one place a layer of the nets is made (AlexNet, the two towers, Figure 1's net) -----------------------


def activation(kind: str) -> nn.Module:
    """§3.1: the ReLU, or tanh for Figure 1's comparison."""
    if kind not in ("relu", "tanh"):
        raise ValueError(f"activation must be 'relu' or 'tanh', not {kind!r}")
    return nn.ReLU(inplace=True) if kind == "relu" else nn.Tanh()


def max_pool(
    size: int = paper.POOL_SIZE, stride: int = paper.POOL_STRIDE, rounding: str = "floor"
) -> nn.MaxPool2d:
    """§3.4: max-pooling, overlapping with the paper's 3/2; ``rounding="ceil"`` is Caffe's and cuda-convnet's."""
    return nn.MaxPool2d(size, stride, ceil_mode=rounding == "ceil")


def norm(cfg: "ArchConfig", groups: Optional[int] = None) -> nn.Module:
    """§3.3's LRN with the config's constants over ``groups`` blocks of maps (default: the config's), or
    nothing when the config has no LRN."""
    if not cfg.lrn:
        return nn.Identity()
    return LocalResponseNorm(
        cfg.lrn_size,
        cfg.lrn_alpha,
        cfg.lrn_beta,
        cfg.lrn_k,
        cfg.lrn_groups if groups is None else groups,
    )


def pool(cfg: "ArchConfig") -> nn.MaxPool2d:
    """The config's max-pooling (§3.4)."""
    return max_pool(cfg.pool_size, cfg.pool_stride, cfg.pool_rounding)


def map_norm(cfg: "ArchConfig", stage: int) -> nn.Module:
    """The 2012 code's within-map response norm after stage ``stage``'s LRN (1: conv1, 2: conv2) where the
    config has one, else nothing."""
    if not cfg.map_norm[stage - 1]:
        return nn.Identity()
    return MapResponseNorm(cfg.map_norm_size, cfg.map_norm_alpha, cfg.map_norm_beta, cfg.map_norm_k)


def dropout(cfg: "ArchConfig", after: str) -> nn.Module:
    """§4.2: dropout on the output of layer ``after`` when the config drops there, else nothing; scaled in
    training (PyTorch's) or at test (§4.2's, ``dropout_scaling="test"``)."""
    if not cfg.dropout or after not in cfg.dropout_after:
        return nn.Identity()
    return (
        DropoutScaledAtTest(cfg.dropout)
        if cfg.dropout_scaling == "test"
        else nn.Dropout(cfg.dropout)
    )
