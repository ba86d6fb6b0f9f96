"""The CUDA library settings a run takes: cuDNN's autotuner, TF32, determinism.

None of them is the paper's (its cuda-convnet had no such choices); each is a
speed setting with a documented effect on the numbers (docs/performance.md).
One TF32 API throughout the package and its tests: torch's ``fp32_precision``
(torch 2.9 on). In torch 2.14, reading the legacy allow-TF32 flags after the new
setting was written raises.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator

import torch


def set_tf32(on: bool) -> None:
    """TF32 tensor cores for float32 matrix multiplies (fc6..fc8) and convolutions, or IEEE float32 for both."""
    precision = "tf32" if on else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision


def state() -> Dict[str, object]:
    """The settings as they stand, for config.json."""
    return {
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "matmul_fp32_precision": torch.backends.cuda.matmul.fp32_precision,
        "conv_fp32_precision": torch.backends.cudnn.conv.fp32_precision,
    }


def configure(
    device: torch.device, deterministic: bool = False, tf32: bool = True
) -> Dict[str, object]:
    """A training run's settings on a CUDA ``device``: cuDNN picks the fastest algorithm for each layer's shapes
    (they are fixed: one crop size, one batch size), unless ``deterministic`` asks for the same result every run;
    float32 matmuls in TF32 as cuDNN's convolutions already are, unless ``tf32`` is off. Returns ``state()``; on
    another device nothing is set and ``{}`` is returned."""
    if device.type != "cuda":
        return {}
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    set_tf32(tf32)
    return state()


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """float32 as float32 inside the block (no TF32), as before it after."""
    saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    set_tf32(False)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved


@contextlib.contextmanager
def sync_allowed() -> Iterator[None]:
    """A host-device synchronisation the code means to make (a step's one readback): not reported by
    ``torch.cuda.set_sync_debug_mode``, which then finds every other one (tests/test_cuda.py)."""
    if not torch.cuda.is_initialized() or torch.cuda.get_sync_debug_mode() == 0:
        yield
        return
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)


def sent(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU numbers on ``device``: to a GPU pinned and non-blocking (a blocking copy waits for every step queued
    before it), elsewhere as ``.to`` moves them."""
    if device.type != "cuda":
        return values.to(device)
    return values.pin_memory().to(device, non_blocking=True)
