"""Local response normalisation exactly as §3.3 of the paper writes it.

    b[i] = a[i] / (k + alpha * sum_{j = max(0, i - n/2)}^{min(N - 1, i + n/2)} a[j]^2) ^ beta

The trap: ``torch.nn.LocalResponseNorm`` and Caffe's LRN layer compute
``k + (alpha / n) * sum``; passing the paper's alpha = 1e-4 to them gives an
effective 2e-5. Here alpha is used as written.

``groups`` splits the channels into equal blocks and normalises within each
one (the window is clipped at block edges), which is what each of the two GPUs
of §3.2 did with its own half of the kernel maps.
"""

import torch
from torch import nn

from . import fused_lrn, paper


def channel_window_sum(x: torch.Tensor, size: int, groups: int = 1, transpose: bool = False) -> torch.Tensor:
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
    for offset in range(1, below + 1):                # channels below: i - offset
        total[:, :, offset:] += grouped[:, :, :-offset]
    for offset in range(1, above + 1):                # channels above: i + offset
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
        ctx.save_for_backward(a)          # only the input: s is rebuilt in backward (memory, not time, is short)
        ctx.hyper, ctx.k = (size, alpha, beta, groups), k
        if fused_lrn.applies(a):
            return fused_lrn.forward(a, size, alpha, beta, k, groups)
        scale = channel_window_sum(a * a, size, groups).mul_(alpha).add_(k)
        return a * _neg_pow(scale, beta)

    @staticmethod
    def backward(ctx, grad_out):
        (a,) = ctx.saved_tensors
        size, alpha, beta, groups = ctx.hyper
        if torch.is_grad_enabled():  # double backward: the same formula, differentiable in a
            scale = channel_window_sum(a * a, size, groups) * alpha + ctx.k
            inv = scale.pow(-beta)
            cross = channel_window_sum(grad_out * a * inv / scale, size, groups, transpose=True)
            return grad_out * inv - (2.0 * alpha * beta) * a * cross, None, None, None, None, None
        if fused_lrn.applies(a, grad_out):
            return fused_lrn.backward(a, grad_out, size, alpha, beta, ctx.k, groups), None, None, None, None, None
        scale = channel_window_sum(a * a, size, groups).mul_(alpha).add_(ctx.k)
        inv = _neg_pow(scale, beta)
        cross = channel_window_sum((grad_out * a).mul_(inv).div_(scale), size, groups, transpose=True)
        grad_a = (grad_out * inv).addcmul_(a, cross, value=-2.0 * alpha * beta)
        return grad_a, None, None, None, None, None


def _neg_pow(scale: torch.Tensor, beta: float) -> torch.Tensor:
    """scale ** -beta; for the paper's beta = 3/4 as rsqrt(s * sqrt(s)), several times faster than pow."""
    if beta == 0.75:
        return torch.rsqrt(scale * torch.sqrt(scale))
    return scale.pow(-beta)


def local_response_norm(x: torch.Tensor, size: int = paper.LRN_SIZE, alpha: float = paper.LRN_ALPHA,
                        beta: float = paper.LRN_BETA, k: float = paper.LRN_K, groups: int = 1) -> torch.Tensor:
    """Functional form of :class:`LocalResponseNorm` (§3.3); x is (N, C, ...)."""
    if x.dim() < 2:
        raise ValueError(f"local_response_norm expects (N, C, ...) input, got shape {tuple(x.shape)}")
    if x.shape[1] % groups:
        raise ValueError(f"local_response_norm: {x.shape[1]} channels do not split into {groups} equal groups")
    return _LRNFunction.apply(x, size, alpha, beta, k, groups)


class LocalResponseNorm(nn.Module):
    """§3.3 local response normalisation, alpha as the paper writes it (not alpha/n).

    Defaults are the paper's: n = 5, alpha = 1e-4, beta = 0.75, k = 2.
    ``groups=2`` normalises each half of the channels on its own (one GPU each, §3.2).
    """

    def __init__(self, size: int = paper.LRN_SIZE, alpha: float = paper.LRN_ALPHA,
                 beta: float = paper.LRN_BETA, k: float = paper.LRN_K, groups: int = 1):
        super().__init__()
        if size < 1 or groups < 1:
            raise ValueError(f"LocalResponseNorm needs size >= 1 and groups >= 1, got size={size}, groups={groups}")
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.groups)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, groups={self.groups}"
