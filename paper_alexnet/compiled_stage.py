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


# torch.compile's backend for the stage (the tests trace it with "aot_eager": dynamo and AOTAutograd without
# code generation)
BACKEND = "inductor"
# Graphs the stage may hold: conv1's and conv2's stage x training and evaluation x a last short batch x each
# device (the two towers on two GPUs: 16), a net of another width beside it (the bench's rows); dynamo's own
# limit, 8 a function, would run the ninth eagerly.
GRAPHS = 64

# the compiled stage, the compiler's failure, and the graphs already compiled (their keys)
_state: dict = {"compiled": None, "failed": None, "tried": set()}


def compiled() -> Optional[Callable]:
    """The compiled stage, or None where compiling failed here. Static shapes: each input shape gets its own
    graph, compiled once (in ``run``'s probe), rather than a symbolic-shape graph recompiled mid-step."""
    if _state["failed"] is None and _state["compiled"] is None:
        _state["compiled"] = torch.compile(stage, dynamic=False, backend=BACKEND)
    return None if _state["failed"] is not None else _state["compiled"]


def _graph_limit():
    """Dynamo's limit of graphs a function, raised to GRAPHS while the stage runs (its name before torch 2.6:
    cache_size_limit). torch._dynamo is imported here, at the stage's first use, not with the package."""
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    return config.patch(**{name: GRAPHS})


def graph_key(z: torch.Tensor) -> tuple:
    """What makes torch.compile trace a new graph of the stage: the input's shape, strides (its layout),
    dtype and device, and whether it runs with its backward (grad mode, requires_grad) and under autocast."""
    return (
        tuple(z.shape),
        z.stride(),
        z.dtype,
        z.device,
        z.requires_grad,
        torch.is_grad_enabled(),
        torch.is_autocast_enabled(z.device.type),
    )


def status() -> dict:
    """For a report: whether the stage compiled, how many graphs, and the compiler's failure if it failed."""
    failed = _state["failed"]
    return {
        "compiled": failed is None and bool(_state["tried"]),
        "graphs": len(_state["tried"]),
        "failed": None if failed is None else _first_line(failed),
    }


def _first_line(err: BaseException) -> str:
    """The error's type and first line, and its cause's (torch.compile wraps a compiler's own error)."""
    text = str(err).strip()
    line = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
    cause = getattr(err, "inner_exception", None) or err.__cause__
    return f"{line} {_first_line(cause)}" if cause is not None and cause is not err else line


def _probe(run_compiled: Callable, z: torch.Tensor, args: tuple) -> None:
    """Compile the graph of ``z``'s kind, and its backward where it trains, here on the calling (main) thread:
    AOTAutograd compiles a backward on its first call, which would otherwise come inside loss.backward(), in an
    autograd device thread (two of them at once for the towers on two GPUs; PT2's compiling is not
    thread-safe: pytorch#105943), where a compiler failure is a crash mid-step."""
    probe = z.detach().requires_grad_(z.requires_grad)
    out = run_compiled(probe, *args)
    if probe.requires_grad and torch.is_grad_enabled():
        torch.autograd.grad(out, probe, torch.ones_like(out))


def run(z: torch.Tensor, window: tuple, groups: int, pool: tuple) -> torch.Tensor:
    """The stage, compiled where it compiles: every graph inside a try, once. Inside a model torch.compile
    traces (train --compile), the torch ops, which that compile fuses."""
    if torch.compiler.is_compiling():
        return stage(z, window, groups, pool)
    run_compiled = compiled()
    if run_compiled is None:
        return stage(z, window, groups, pool)
    args = (window, groups, pool)
    key = (graph_key(z), args)
    with _graph_limit():
        if key not in _state["tried"]:
            try:
                _probe(run_compiled, z, args)
            except Exception as err:  # noqa: BLE001 - any compiler failure: the stage still runs, in torch ops
                _state["failed"] = err
                warnings.warn(
                    f"the ReLU-LRN-pool stage does not compile here ({_first_line(err)}); it runs in torch ops",
                    stacklevel=2,
                )
                return stage(z, window, groups, pool)
            _state["tried"].add(key)
        return run_compiled(z, window, groups, pool)
