"""How far apart two computations of one function may be, derived from the arithmetic, so that a test holds on
any CPU's kernels: AVX2 and AVX-512 paths, oneDNN, MKL and the fused kernels each sum in an order of their own.

A sum of n products in floating point, in any order, is within n·u of the sum of the products' magnitudes
of the exact sum (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1; u the unit roundoff, half
of ``finfo.eps``). Two orders are within twice that of each other, and the error a layer receives is passed
on scaled by at most its weights' size, so that ``depth`` layers add up (ReLU, max-pooling and the LRN do not
enlarge a difference). The magnitudes' sum is at most sqrt(n) times the largest value for terms of random sign
(what the tests' random weights and inputs are); the bound below takes that and then 10 times more. The tests
compare in float64, where this bound is ~1e-9 of the values for the paper net, while a real difference (a
group read wrong, a term left out, a wrong constant) moves the values by far more than 1e-6 of themselves."""

import math

import torch


def order_tolerance(want: torch.Tensor, terms: int, depth: int = 1) -> float:
    """The absolute tolerance between two computations of ``want`` that differ only in summation order: at most
    ``terms`` products in each sum, ``depth`` layers of such sums."""
    u = torch.finfo(want.dtype).eps / 2
    return 10 * 2 * depth * terms * u * math.sqrt(terms) * float(want.abs().max())


def assert_same_function(got, want, terms: int, depth: int = 1, msg=None):
    """``got`` and ``want`` computed the same function (see the module's docstring); float64 only."""
    assert want.dtype == torch.float64, "compare in float64, where the bound is tight"
    torch.testing.assert_close(got, want, rtol=0, atol=order_tolerance(want, terms, depth), msg=msg)
