"""§3.5's stage after conv1 and conv2, ReLU (§3.1) -> LRN (§3.3) -> overlapping max-pool (§3.4), compiled for a
GPU by torch.compile.

In torch ops the LRN is about 12 elementwise passes over the maps forward and 20 backward, each a kernel that
reads and writes the whole map; compiled, the stage becomes a few fused kernels (the fused kernel of
fused_lrn.py does this on the CPU). Where it does not compile (no Triton, a GPU too old for it, a compiler
error), the stage runs in torch ops, after one warning. ``PAPER_ALEXNET_LRN=eager`` (or
``fused_lrn.use_eager``) runs torch ops without compiling.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F


def stage(z: torch.Tensor, window: tuple, groups: int, pool: tuple) -> torch.Tensor:
    """max_pool(LRN(relu(z))) in torch ops: the LRN in float32 whatever autocast hands in (layers.HALF), the
    input's dtype out; ``window`` (size, alpha, beta, k), ``pool`` (kernel, stride)."""
    from .layers import HALF, _lrn  # the §3.3 equation, written once

    a = F.relu(z)
    b = (
        _lrn(a.float(), *window, groups).to(z.dtype)
        if z.dtype in HALF
        else _lrn(a, *window, groups)
    )
    return F.max_pool2d(b, *pool)


# the compiled stage, the compiler's failure, and which calls (forward alone, with backward) were tried
_state: dict = {"compiled": None, "failed": None, "tried": set()}


def compiled() -> Optional[Callable]:
    """The compiled stage, or None where compiling failed here."""
    if _state["failed"] is None and _state["compiled"] is None:
        _state["compiled"] = torch.compile(stage)
    return None if _state["failed"] is not None else _state["compiled"]


def run(z: torch.Tensor, window: tuple, groups: int, pool: tuple) -> torch.Tensor:
    """The stage, compiled where it compiles. Inside a model torch.compile traces (train --compile), the torch
    ops, which that compile fuses."""
    if torch.compiler.is_compiling():
        return stage(z, window, groups, pool)
    run_compiled = compiled()
    if run_compiled is None:
        return stage(z, window, groups, pool)
    tried = _state["tried"]  # forward alone (evaluation: False), and with backward (training: True)
    if z.requires_grad in tried:
        return run_compiled(z, window, groups, pool)
    try:  # the first call compiles forward and, for training, backward: a failure shows here, not mid-step
        probe = z.detach().requires_grad_(z.requires_grad)
        out = run_compiled(probe, window, groups, pool)
        if probe.requires_grad:
            torch.autograd.grad(out, probe, torch.ones_like(out))
        tried.add(z.requires_grad)
    except Exception as err:  # noqa: BLE001 - any compiler failure: the stage still runs, in torch ops
        _state["failed"] = err
        warnings.warn(
            f"the ReLU-LRN-pool stage does not compile here ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}); it runs in torch ops",
            stacklevel=2,
        )
        return stage(z, window, groups, pool)
    return run_compiled(z, window, groups, pool)
