"""LocalResponseNorm against the §3.3 equation written independently (paper_reference.lrn)."""

import pytest
import torch

import paper_reference as ref
from paper_alexnet import LocalResponseNorm, local_response_norm


def activations(shape=(2, 12, 5, 4), scale=60.0, seed=0):
    """ReLU-like activations large enough that the denominator is far from k."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen, dtype=torch.float64) * scale


def test_defaults_are_the_papers_constants():
    lrn = LocalResponseNorm()
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.groups) == (5, 1e-4, 0.75, 2.0, 1)


@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("size", [5, 3, 1])
def test_forward_matches_the_equation(groups, size):
    a = activations()
    got = LocalResponseNorm(size=size, groups=groups)(a)
    want = ref.lrn(a, n=size, groups=groups)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_towers_normalise_apart():
    a = activations()
    # channel 5 (last of the first half) sees channels 6, 7 only without the tower split
    whole, towers = LocalResponseNorm(groups=1)(a), LocalResponseNorm(groups=2)(a)
    assert not torch.allclose(whole[:, 4:8], towers[:, 4:8])
    torch.testing.assert_close(whole[:, :4], towers[:, :4])


def test_gradient_matches_the_equation():
    a = activations().requires_grad_()
    b = a.detach().clone().requires_grad_()
    upstream = torch.randn(a.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (LocalResponseNorm(groups=2)(a) * upstream).sum().backward()
    (ref.lrn(b, groups=2) * upstream).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2])
def test_gradcheck_float64(groups):
    a = activations(shape=(2, 8, 3, 3), scale=30.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: local_response_norm(x, groups=groups), (a,))
    assert torch.autograd.gradgradcheck(lambda x: local_response_norm(x, groups=groups), (a,))


def test_differs_from_torch_with_the_same_constants():
    """The trap of PAPER.md §3.3: torch divides alpha by n."""
    a = activations()
    ours = LocalResponseNorm(5, 1e-4, 0.75, 2.0)(a)
    torchs = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(a)
    assert (ours - torchs).abs().max() > 1e-3 * ours.abs().max()
    # ... and agrees once torch is handed alpha * n
    torch.testing.assert_close(ours, torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(a))


def test_float32_and_deterministic_mode():
    a = activations().float().requires_grad_()
    torch.use_deterministic_algorithms(True)
    try:
        out = LocalResponseNorm(groups=2)(a)
        out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    torch.testing.assert_close(out.double(), ref.lrn(a.detach().double(), groups=2), rtol=1e-5, atol=1e-5)


def test_bad_groups_is_a_clear_error():
    with pytest.raises(ValueError, match="do not split into 5"):
        LocalResponseNorm(groups=5)(torch.ones(1, 12, 2, 2))
