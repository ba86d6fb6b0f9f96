"""fc6, fc7 and fc8 on the CPU through oneDNN's matrix multiply where torch's BLAS is the slower one.

Why: ``nn.Linear`` on an x86 CPU calls MKL's sgemm, and MKL runs its AVX2 code on CPUs that are not
Intel's. On a 2-core AMD EPYC Zen 5 (AVX-512) a 2048-square float32 multiply ran at 165 GFLOP/s through
MKL and 380 through oneDNN (the library torch's convolutions already use); fc6's forward at batch 32 took
27 ms against 11 (docs/performance.md). The three fully-connected layers are a fifth of the paper net's
training step there, so :class:`Linear` runs their forward and both gradients through oneDNN when
:func:`backend` says so. Same function: ``y = x W^T + b``, ``dx = g W``, ``dW = g^T x``, ``db = sum g``,
in another order of additions (float32 rounding apart; tests/test_cpu_linear.py). Tracing (torch.compile,
torch.export, ONNX export, TorchScript) sees F.linear.

Which library is a fixed rule, not a timing at first use, so that two processes on one machine (a run and
its resume) do the same arithmetic: ``"onednn"`` on a CPU with AVX-512 kernels whose maker is not Intel,
``"torch"`` everywhere else (Intel's CPUs, where MKL is at home; AVX2, where the two measured level;
CUDA; other dtypes; autocast; torch.compile). ``PAPER_ALEXNET_MATMUL=onednn|torch`` overrides the rule
for the CPU float32 case.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch
from torch import nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

CHOICES = ("auto", "onednn", "torch")


@functools.lru_cache(maxsize=1)
def _vendor() -> str:
    """The CPU's maker as /proc/cpuinfo names it ("GenuineIntel", "AuthenticAMD"); "" where unknown."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _onednn_matmul():
    """oneDNN's matrix multiply as torch exposes it (inductor's CPU linear), or None where torch has none."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def has_onednn() -> bool:
    """Whether this torch has oneDNN's matrix multiply (:func:`onednn_mm`)."""
    return _onednn_matmul() is not None


def backend() -> str:
    """The library that multiplies for :class:`Linear` on a CPU float32 tensor: "onednn" or "torch"."""
    asked = os.environ.get("PAPER_ALEXNET_MATMUL", "auto").strip().lower()
    if asked not in CHOICES:
        _warn_once(f"PAPER_ALEXNET_MATMUL={asked!r} is not one of {', '.join(CHOICES)}: using auto")
        asked = "auto"
    if not has_onednn():
        return "torch"
    if asked != "auto":
        return asked
    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    return "onednn" if avx512 and _vendor() not in ("GenuineIntel", "") else "torch"


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def onednn_mm(a: torch.Tensor, b_t: torch.Tensor, bias=None) -> torch.Tensor:
    """a @ b_t^T (+ bias) by oneDNN (CPU); a and b_t may be transposed views."""
    return _onednn_matmul()(a, b_t, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_mm(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        # (N, out) @ (out, in)
        gx = onednn_mm(grad, weight.t()) if ctx.needs_input_grad[0] else None
        gw = onednn_mm(grad.t(), x.t()) if ctx.needs_input_grad[1] else None  # (out, N) @ (N, in)
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def _takes(x: torch.Tensor, weight: torch.Tensor, bias) -> bool:
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        x.dim() == 2
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and x.is_contiguous()
        and weight.is_contiguous()
        and all(
            type(t) in (torch.Tensor, nn.Parameter) for t in tensors
        )  # not a tracer's fake tensor
        and not torch.is_autocast_enabled("cpu")
        and not (
            torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
        )
        and backend() == "onednn"
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN where :func:`backend` chooses it (see the module)."""
    if not _takes(x, weight, bias):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    ):
        return _OneDNNLinear.apply(x, weight, bias)
    return onednn_mm(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state_dict) whose product goes through :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
