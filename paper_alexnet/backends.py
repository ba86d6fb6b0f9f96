"""The CUDA library settings a run takes: cuDNN's autotuner, TF32, determinism.

None of them is the paper's (its cuda-convnet had no such choices); each is a
speed setting with a documented effect on the numbers (docs/performance.md).
TF32 is set through both of torch's APIs at once, the legacy allow-TF32 flags and
``fp32_precision`` (torch 2.9 on): written through the new one alone, the legacy
state stays "highest", and then every legacy read raises ("you have used mix of the
legacy and new APIs", confirmed on 2.14.1 for ``torch.backends.cuda.matmul.allow_tf32``
and ``torch.get_float32_matmul_precision()``), inductor's lowering of a matmul among
them (pytorch#166387): ``torch.compile`` of a net with a linear layer failed. Written
through both, every getter of either API reads the same setting.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator

import torch


def set_tf32(on: bool) -> None:
    """TF32 tensor cores for float32 matrix multiplies (fc6..fc8) and convolutions, or IEEE float32 for both."""
    _set_tf32(on, on)


def _set_tf32(matmul: bool, conv: bool) -> None:
    """Each backend's TF32 through both APIs: the legacy flag first (it also sets the new API's value for its
    backend), then the new one, so that neither API's getters find the two disagreeing."""
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = conv
    torch.backends.cuda.matmul.fp32_precision = "tf32" if matmul else "ieee"
    torch.backends.cudnn.conv.fp32_precision = "tf32" if conv else "ieee"


def tf32() -> Dict[str, bool]:
    """Whether float32 matmuls and convolutions take TF32 now, read through the legacy getters (the ones that
    raise where only the new API was written)."""
    return {
        "matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "conv": bool(torch.backends.cudnn.allow_tf32),
    }


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
    saved = tf32()
    set_tf32(False)
    try:
        yield
    finally:
        _set_tf32(saved["matmul"], saved["conv"])


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


class Readback:
    """A step's few numbers read back to the host as soon as they are computed, not after the work queued
    behind them: on a GPU a non-blocking copy into pinned memory and an event, so the wait (``values``) ends
    when the forward and its sums are done while the backward queued after them still runs; elsewhere the
    tensor itself. One pinned buffer serves every step: a step's copy is queued only after the last step's
    values were read."""

    def __init__(self) -> None:
        self._host: "torch.Tensor | None" = None
        self._tensor: "torch.Tensor | None" = None
        self._ready = None

    def start(self, tensor: torch.Tensor) -> None:
        """Queue the copy of ``tensor`` (call before queuing more work)."""
        if not tensor.is_cuda:
            self._tensor = tensor
            return
        if (
            self._host is None
            or self._host.shape != tensor.shape
            or self._host.dtype != tensor.dtype
        ):
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        self._host.copy_(tensor, non_blocking=True)
        self._ready = torch.cuda.Event()
        self._ready.record(torch.cuda.current_stream(tensor.device))
        self._tensor = None

    def values(self) -> list:
        """The numbers, once the copy has landed."""
        with sync_allowed():
            if self._tensor is not None:
                return self._tensor.tolist()
            self._ready.synchronize()
            return self._host.tolist()
