"""The fused CPU kernels of the §3.3 LRN (lrn_kernel.cpp): built on first use, loaded with ctypes.

Why: in eager PyTorch the LRN's forward and backward are ~30 passes over a 37 MB activation, a fifth
of the paper net's training step on a CPU (docs/performance.md); the kernel does each in one pass.
``forward``/``backward`` are the LRN alone; ``stage_forward``/``stage_backward`` are conv1's and
conv2's whole ReLU -> LRN -> max-pool (used by ``layers.relu_norm_pool``). They compute the same
equations as the eager path in ``layers.py`` and are used for contiguous float32 / float64 CPU tensors
when a C++ compiler is present; the stage also for channels-last maps (``*_nhwc``: the window runs
along a position's contiguous channels, adding in the same order). Everything else (CUDA, bfloat16,
the LRN alone on channels-last, double backward, torch.compile) takes the eager path.
``PAPER_ALEXNET_LRN=eager`` turns the kernels off.

The shared library is cached in the package's cache folder (``$PAPER_ALEXNET_CACHE``, default
~/.cache/paper_alexnet) under ``kernels/``,
named by a hash of the source, the compiler and its flags, so a changed source is rebuilt.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, Optional

import torch

from .geometry import window_output

SOURCE = Path(__file__).with_name("lrn_kernel.cpp")
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
_CTYPES = {
    torch.float32: ctypes.c_float,
    torch.float64: ctypes.c_double,
    torch.uint8: ctypes.c_uint8,
}
_state: dict = {"library": None, "tried": False, "enabled": None}


def _flags() -> list:
    arch = (
        ["-mavx2", "-mfma"] if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else []
    )
    return [
        "-O3",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-pthread",
        *arch,
    ]


def _cache_dir() -> Path:
    from .data.sources import cache_dir  # the package's one cache folder (data and kernels)

    return Path(cache_dir()) / "kernels"


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise RuntimeError("no C++ compiler (c++ or g++, or $CXX) found")
    flags = _flags()
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *flags]).encode()).hexdigest()[
        :16
    ]
    target = _cache_dir() / f"lrn-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # same file system: atomic rename
        with tempfile.TemporaryDirectory(dir=target.parent) as work:
            built = os.path.join(work, target.name)
            done = subprocess.run(
                [compiler, *flags, str(SOURCE), "-o", built], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
            os.replace(built, target)
    library = ctypes.CDLL(str(target))
    i64, f64, u8 = ctypes.c_int64, ctypes.c_double, ctypes.POINTER(ctypes.c_uint8)
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        t = ctypes.POINTER(real)
        window = [i64, i64, f64, f64, f64]  # before, after, alpha, beta, k
        lrn = [i64, i64, i64, *window, ctypes.c_int]  # blocks, channels, positions
        # ..., height, width, ..., pool
        stage = [
            i64,
            i64,
            i64,
            i64,
            *window,
            i64,
            i64,
            ctypes.c_int,
        ]
        nhwc = [i64, *stage]  # images, groups, channels per group, height, width, ...
        for name, pointers, sizes in (
            ("lrn_forward", [t, t], lrn),
            ("lrn_backward", [t, t, t], lrn),
            ("stage_forward", [t, t, u8], stage),
            ("stage_backward", [t, u8, t, t], stage),
            ("stage_forward_nhwc", [t, t, u8], nhwc),
            ("stage_backward_nhwc", [t, u8, t, t], nhwc),
        ):
            getattr(library, f"{name}_{suffix}").argtypes = pointers + sizes
    return library


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel, building it the first time; None (with one warning) when it cannot be built."""
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _state["library"] = _build()
        except (OSError, RuntimeError) as err:
            warnings.warn(
                f"fused LRN kernel unavailable ({err}); using the eager LRN (slower on CPU)",
                stacklevel=2,
            )
    return _state["library"]


def enabled() -> bool:
    """Whether the kernel is switched on: ``PAPER_ALEXNET_LRN=eager`` or :func:`use_eager` turn it off."""
    if _state["enabled"] is not None:
        return _state["enabled"]
    return os.environ.get("PAPER_ALEXNET_LRN", "fused").lower() != "eager"


@contextlib.contextmanager
def use_eager(eager: bool = True) -> Iterator[None]:
    """Run the block with the eager LRN (``eager=False``: with the kernel where it applies)."""
    before, _state["enabled"] = _state["enabled"], not eager
    try:
        yield
    finally:
        _state["enabled"] = before


def channels_last(t: torch.Tensor) -> bool:
    """A 4-D map laid out channels-last (and not also in channel planes, as a map of 1x1 positions is)."""
    return (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    )


def layout_of(t: torch.Tensor) -> torch.memory_format:
    """The memory format the kernels read ``t`` in, and write its results in."""
    return torch.channels_last if channels_last(t) else torch.contiguous_format


def applies(*tensors: torch.Tensor, layouts: bool = False) -> bool:
    """True when the kernel can take these tensors: contiguous, float32/64, on the CPU, it is on, and
    torch.compile is not tracing (it compiles the torch-ops path instead). ``layouts``: channels-last
    maps count as contiguous too (the stage's kernels take both layouts; the LRN's alone does not)."""
    return (
        not torch.compiler.is_compiling()
        and enabled()
        and all(
            t.device.type == "cpu"
            and t.dtype in _DTYPES
            and (t.is_contiguous() or (layouts and channels_last(t)))
            for t in tensors
        )
        and len({t.dtype for t in tensors}) == 1
        and library() is not None
    )


def _call(kind: str, tensors: list, sizes: tuple, window: tuple, pool: tuple = ()) -> None:
    """Run entry ``kind`` on ``tensors`` (input first); ``sizes``: the entry's leading size arguments."""
    size, alpha, beta, k = window
    pointers = [ctypes.cast(t.data_ptr(), ctypes.POINTER(_CTYPES[t.dtype])) for t in tensors]
    getattr(library(), f"{kind}_{_DTYPES[tensors[0].dtype]}")(
        *pointers,
        *sizes,
        size // 2,
        (size - 1) // 2,
        alpha,
        beta,
        k,
        *pool,
        torch.get_num_threads(),
    )


def _blocks(a: torch.Tensor, groups: int) -> tuple:
    """The LRN entries' sizes: (image, group) blocks, channels per group, positions per channel."""
    n, c = a.shape[:2]
    return n * groups, c // groups, a[0, 0].numel() if a.dim() > 2 else 1


def forward(
    a: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int
) -> torch.Tensor:
    """b = a / (k + alpha * window sum of a^2)^beta, per group of channels (§3.3)."""
    out = torch.empty_like(a)
    if a.numel():
        _call("lrn_forward", [a, out], _blocks(a, groups), (size, alpha, beta, k))
    return out


def backward(
    a: torch.Tensor,
    grad_out: torch.Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    groups: int,
) -> torch.Tensor:
    """d loss / d a for the forward above, given d loss / d b."""
    grad = torch.empty_like(a)
    if a.numel():
        _call("lrn_backward", [a, grad_out, grad], _blocks(a, groups), (size, alpha, beta, k))
    return grad


def stage_forward(z: torch.Tensor, window: tuple, groups: int, pool: tuple) -> tuple:
    """max_pool(LRN(relu(z))) for (N, C, H, W) z: window = (size, alpha, beta, k), pool = (size, stride).

    Returns the pooled map and, for the backward, where each output's maximum sits in its window
    (row * size + column, uint8).
    """
    n, c, h, w = z.shape
    # §3.4, floor
    sides = (window_output(side, *pool, 0, "floor", "pool", pooling=True)[0] for side in (h, w))
    layout = layout_of(z)
    out = torch.empty((n, c, *sides), dtype=z.dtype, memory_format=layout)
    at = torch.empty(out.shape, dtype=torch.uint8, memory_format=layout)
    if z.numel():
        _stage("stage_forward", [z, out, at], window, groups, pool)
    return out, at


def stage_backward(
    z: torch.Tensor,
    at: torch.Tensor,
    grad_out: torch.Tensor,
    window: tuple,
    groups: int,
    pool: tuple,
) -> torch.Tensor:
    """d loss / d z for :func:`stage_forward`, given d loss / d out (the pooled map's gradient)."""
    grad = torch.empty_like(z)  # in z's layout
    if z.numel():
        _stage("stage_backward", [z, at, grad_out, grad], window, groups, pool)
    return grad


def _stage(kind: str, tensors: list, window: tuple, groups: int, pool: tuple) -> None:
    """A stage entry on maps in channel planes, or its ``_nhwc`` twin on channels-last maps (all of
    ``tensors`` in the input's layout)."""
    n, c, h, w = tensors[0].shape
    if channels_last(tensors[0]):
        _call(f"{kind}_nhwc", tensors, (n, groups, c // groups, h, w), window, pool)
    else:
        _call(kind, tensors, (n * groups, c // groups, h, w), window, pool)
