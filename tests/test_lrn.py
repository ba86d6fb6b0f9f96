"""LocalResponseNorm against the §3.3 equation written independently (paper_reference.lrn).

The equation tests run twice: through the fused CPU kernel (fused_lrn.py) and through torch ops.
"""

import shutil

import pytest
import torch

import paper_reference as ref
from paper_alexnet import LocalResponseNorm, fused_lrn, local_response_norm

HAS_COMPILER = bool(shutil.which("c++") or shutil.which("g++"))


@pytest.fixture(params=["fused", "eager"])
def path(request):
    """Which implementation computes the LRN in the test; the fused one must be the one that runs."""
    if request.param == "fused" and not HAS_COMPILER:
        pytest.skip("no C++ compiler: the fused kernel cannot be built here")
    with fused_lrn.use_eager(request.param == "eager"):
        assert fused_lrn.applies(torch.zeros(1, 1)) == (request.param == "fused")
        yield request.param


def activations(shape=(2, 12, 5, 4), scale=60.0, seed=0):
    """ReLU-like activations large enough that the denominator is far from k."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen, dtype=torch.float64) * scale


def test_defaults_are_the_papers_constants():
    lrn = LocalResponseNorm()
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.groups) == (5, 1e-4, 0.75, 2.0, 1)


@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("size", [5, 3, 1])
def test_forward_matches_the_equation(groups, size, path):
    a = activations()
    got = LocalResponseNorm(size=size, groups=groups)(a)
    want = ref.lrn(a, n=size, groups=groups)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_towers_normalise_apart(path):
    a = activations()
    # channel 5 (last of the first half) sees channels 6, 7 only without the tower split
    whole, towers = LocalResponseNorm(groups=1)(a), LocalResponseNorm(groups=2)(a)
    assert not torch.allclose(whole[:, 4:8], towers[:, 4:8])
    torch.testing.assert_close(whole[:, :4], towers[:, :4])


def test_gradient_matches_the_equation(path):
    a = activations().requires_grad_()
    b = a.detach().clone().requires_grad_()
    upstream = torch.randn(a.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (LocalResponseNorm(groups=2)(a) * upstream).sum().backward()
    (ref.lrn(b, groups=2) * upstream).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2])
def test_gradcheck_float64(groups, path):
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


def test_float32_and_deterministic_mode(path):
    a = activations().float().requires_grad_()
    torch.use_deterministic_algorithms(True)
    try:
        out = LocalResponseNorm(groups=2)(a)
        out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    torch.testing.assert_close(
        out.double(), ref.lrn(a.detach().double(), groups=2), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("size", [2, 4])
def test_even_windows_have_the_right_gradient(size, path):
    """Even sizes take i - n/2 .. i + n/2 - 1 (torch's convention); backward needs the mirrored window."""
    a = activations(shape=(2, 7, 2, 3), scale=30.0).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: local_response_norm(x, size=size, alpha=1e-3, groups=1), (a,)
    )


def test_paper_sized_float32_layer_matches_the_equation(path):
    """conv1's maps (96 channels of 55x55, two towers) in float32, forward and backward."""
    a = (activations(shape=(2, 96, 55, 55), scale=40.0)).float().requires_grad_()
    b = a.detach().double().requires_grad_()
    upstream = torch.randn(a.shape, generator=torch.Generator().manual_seed(2))
    (LocalResponseNorm(groups=2)(a) * upstream).sum().backward()
    (ref.lrn(b, groups=2) * upstream.double()).sum().backward()
    torch.testing.assert_close(
        LocalResponseNorm(groups=2)(a).double(), ref.lrn(b.detach(), groups=2), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
def test_kernel_is_bitwise_deterministic_and_thread_count_free():
    a = activations(shape=(4, 96, 13, 13)).float().requires_grad_()
    upstream = torch.randn(a.shape, generator=torch.Generator().manual_seed(3))
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 2, 3):
            torch.set_num_threads(count)
            a.grad = None
            out = LocalResponseNorm(groups=2)(a)
            out.backward(upstream)
            results.append((out.detach().clone(), a.grad.clone()))
    finally:
        torch.set_num_threads(threads)
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
def test_layouts_the_kernel_does_not_take_fall_back_to_torch_ops():
    a = activations(shape=(2, 12, 5, 4)).float()
    channels_last = a.contiguous(memory_format=torch.channels_last)
    assert (
        fused_lrn.applies(a)
        and not fused_lrn.applies(channels_last)
        and not fused_lrn.applies(a.half())
    )
    torch.testing.assert_close(
        LocalResponseNorm(groups=2)(channels_last), LocalResponseNorm(groups=2)(a)
    )


def test_a_kernel_that_cannot_be_built_warns_once_and_the_eager_path_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPER_ALEXNET_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(
        fused_lrn, "_state", {"library": None, "tried": False, "error": None, "enabled": None}
    )
    a = activations()
    with pytest.warns(UserWarning, match="fused LRN kernel unavailable") as caught:
        got = LocalResponseNorm(groups=2)(a)
        LocalResponseNorm(groups=2)(a)
    assert len(caught) == 1 and not fused_lrn.applies(a)
    torch.testing.assert_close(got, ref.lrn(a, groups=2), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
def test_kernel_builds_into_an_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPER_ALEXNET_CACHE", str(tmp_path))
    monkeypatch.setattr(
        fused_lrn, "_state", {"library": None, "tried": False, "error": None, "enabled": None}
    )
    assert fused_lrn.library() is not None
    assert [p.suffix for p in (tmp_path / "kernels").iterdir()] == [".so"]


def test_bad_groups_is_a_clear_error():
    with pytest.raises(ValueError, match="do not split into 5"):
        LocalResponseNorm(groups=5)(torch.ones(1, 12, 2, 2))


def test_under_bfloat16_autocast_the_equation_is_formed_in_float32_and_the_input_dtype_returned():
    """--amp hands the LRN bfloat16 maps, whose spacing near k = 2 is 1/64: §3.3's alpha * sum(a^2) terms of
    up to ~0.01 here would round away if the denominator were formed there. Formed in float32, the output
    differs from the equation in float64 (on the same bfloat16 inputs) by its one rounding to bfloat16: at
    most u = 2^-8 of itself (bfloat16 keeps 8 significant bits), float32's own ~20 roundings adding under
    2^-19. The gradient likewise, its two terms each at most |g| k^-beta (1 + 2 beta) in size."""
    a = activations(shape=(2, 12, 5, 4), scale=8.0).to(torch.bfloat16).requires_grad_()
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = LocalResponseNorm(groups=2)(a)
    out.backward(g)
    assert out.dtype == a.grad.dtype == torch.bfloat16  # the input's dtype out, both ways
    exact = a.detach().double().requires_grad_()
    want = ref.lrn(exact, groups=2)
    want.backward(g.double())
    u = 2.0**-8
    assert ((out.double() - want).abs() <= (u + 2.0**-19) * want.abs()).all()
    size = (1 + 2 * 0.75) * g.double().abs().max() * 2.0**-0.75  # |g| k^-beta (1 + 2 beta), k = 2
    assert ((a.grad.double() - exact.grad).abs() <= u * exact.grad.abs() + 2.0**-19 * size).all()
