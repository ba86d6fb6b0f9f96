"""How far apart two computations of one function may be, derived from the arithmetic, so that a test holds on
any CPU's kernels: AVX2 and AVX-512 paths, oneDNN, MKL, the fused kernels and another batch size each sum in an
order of their own.

A sum of n products in floating point, in any order, is within n·u of the sum of the products' magnitudes
of the exact sum (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1; u the unit roundoff, half of
``finfo.eps``), and with probability at least 1 - 2n·exp(-λ²/2) within λ·sqrt(n)·u of it (Higham and Mary,
*A new approach to probabilistic rounding error analysis*, 2019). Two orders are within twice that of each
other, and the error a layer receives is passed on scaled by about its weights' size, so that ``depth`` layers
add up (ReLU and max-pooling do not enlarge a difference, nor does the LRN, whose denominator is at least k).
The magnitudes' sum is about sqrt(n) times the largest value for terms of random sign (the tests' random
weights).

- float64: the worst case, n·u, times 10: ~2e-8 of the largest value for the paper net (9,216 terms, 8 layers);
- float32: the probable case with λ = 10 (a chance under 1e-17 to be exceeded): ~9e-3 of the largest value.

A real difference (a group read wrong, a term left out, a wrong constant, another image's row) moves the
values by a large part of themselves, far beyond either."""

import math

import torch

LAMBDA = 10.0


def order_tolerance(want: torch.Tensor, terms: int, depth: int = 1) -> float:
    """The absolute tolerance between two computations of ``want`` that differ only in summation order: at most
    ``terms`` products in each sum, ``depth`` layers of such sums."""
    u = torch.finfo(want.dtype).eps / 2
    per_sum = 10 * terms * u if want.dtype == torch.float64 else LAMBDA * math.sqrt(terms) * u
    # |want|'s largest, no copy made
    largest = max(float(want.detach().max()), -float(want.detach().min()))
    return 2 * depth * per_sum * math.sqrt(terms) * largest


def assert_same_function(got, want, terms: int, depth: int = 1, msg=None):
    """``got`` and ``want`` computed the same function (see the module's docstring). Compared in pieces of 4M
    values: fc6's float64 gradient is 0.3 GB, and a whole-tensor comparison makes several temporaries its size."""
    got, want = torch.as_tensor(got).detach(), torch.as_tensor(want).detach()
    assert got.shape == want.shape, (got.shape, want.shape, msg)
    tolerance = order_tolerance(want, terms, depth)
    worst = 0.0
    for a, b in zip(got.reshape(-1).split(1 << 22), want.reshape(-1).split(1 << 22)):
        difference = float((a.to(b.dtype) - b).abs_().max())
        if math.isnan(difference):  # a NaN on either side: not the same function
            worst = difference
            break
        worst = max(worst, difference)
    assert worst <= tolerance, (
        f"{msg or 'values'}: differ by up to {worst:.3g}, beyond {tolerance:.3g}"
    )
