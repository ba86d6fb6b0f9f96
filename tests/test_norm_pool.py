"""The fused ReLU -> LRN -> max-pool of conv1 and conv2 (layers.relu_norm_pool) against §3.1, §3.3 and
§3.4 written out independently: relu, paper_reference.lrn, then torch's max-pooling."""

import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import paper_reference as ref
from paper_alexnet import LocalResponseNorm, build_model, fused_lrn
from paper_alexnet.layers import relu_norm_pool
from tolerance import assert_same_function

pytestmark = pytest.mark.skipif(
    not (shutil.which("c++") or shutil.which("g++")), reason="no C++ compiler"
)


def conv_output(shape, seed=0, scale=40.0, dtype=torch.float64):
    """Conv-like output: about half negative (the ReLU matters), large enough that the LRN's denominator is far
    from k."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def stage(groups=2, pool=(3, 2)):
    return nn.ReLU(inplace=True), LocalResponseNorm(groups=groups), nn.MaxPool2d(*pool)


def written_out(z, groups=2, pool=(3, 2)):
    return F.max_pool2d(ref.lrn(F.relu(z), groups=groups), *pool)


def fused(out):
    return type(out.grad_fn).__name__ == "_ReluLRNPoolFunctionBackward"


@pytest.fixture(params=["planes", "channels_last"])
def layout(request):
    """Lay a map out in channel planes (NCHW) or channels-last (NHWC): the kernel has a pass for each."""
    if request.param == "planes":
        return lambda t: t
    return lambda t: t.contiguous(memory_format=torch.channels_last)


def in_layout(out, z):
    """The stage's output and z's gradient keep z's layout."""
    return out.is_contiguous(memory_format=torch.channels_last) == (
        not z.is_contiguous() and z.is_contiguous(memory_format=torch.channels_last)
    )


@pytest.mark.parametrize(
    "groups,pool,shape",
    [
        (2, (3, 2), (2, 8, 11, 9)),
        (1, (3, 2), (2, 6, 13, 13)),
        (2, (2, 2), (3, 4, 8, 7)),
        (3, (3, 3), (1, 9, 10, 10)),
    ],
)
def test_forward_and_gradient_match_the_paper_written_out(groups, pool, shape, layout):
    z = layout(conv_output(shape)).requires_grad_()
    w = conv_output(shape).requires_grad_()
    out = relu_norm_pool(z, *stage(groups, pool))
    want = written_out(w, groups, pool)
    assert fused(out) and in_layout(out, z)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(
        out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    out.backward(upstream)
    want.backward(upstream)
    assert in_layout(z.grad, z)
    torch.testing.assert_close(z.grad, w.grad, rtol=1e-10, atol=1e-12)


def test_gradcheck_and_double_backward_float64():
    z = conv_output((2, 4, 7, 7), scale=30.0).requires_grad_()
    act, norm, pool = stage()
    assert torch.autograd.gradcheck(lambda t: relu_norm_pool(t, act, norm, pool), (z,))
    assert torch.autograd.gradgradcheck(lambda t: relu_norm_pool(t, act, norm, pool), (z,))


def test_conv1_sized_float32(layout):
    """conv1's maps (96 channels of 55x55, two towers) in float32 against the float64 reference."""
    z = layout(conv_output((2, 96, 55, 55), dtype=torch.float32)).requires_grad_()
    w = z.detach().double().contiguous().requires_grad_()
    out = relu_norm_pool(z, *stage())
    assert fused(out)
    want = written_out(w)
    # float32 against float64: each output is a ReLU, a window of 5 squares, a power and a division (under 10
    # roundings of u = 6e-8: 6e-7 of itself; rtol 1e-5 is 16 times that); atol for values near 0
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    out.backward(upstream)
    want.backward(upstream.double())
    # the gradient adds the overlapping pools' and windows' shares (at most 9 x 5 terms, 2 x 45 x u = 5e-6 of
    # their magnitudes, which cancel: rtol 1e-4, atol 1e-6 where they cancel to near 0)
    torch.testing.assert_close(z.grad.double(), w.grad, rtol=1e-4, atol=1e-6)


def test_ties_and_nans_go_where_torch_sends_them(layout):
    """Exact ties in a window: the first in row-major order takes the gradient; a NaN wins (torch's rules)."""
    gen = torch.Generator().manual_seed(4)
    # every channel the same plane of a few values: equal a, equal window sums, so exact ties in the LRN's output
    z = torch.randint(-1, 3, (2, 1, 9, 9), generator=gen).double().expand(2, 6, 9, 9).contiguous()
    z[0, 2, 4, 5] = float("nan")
    w = z.clone().requires_grad_()
    z = layout(z).requires_grad_()
    out = relu_norm_pool(z * 1, *stage())
    with fused_lrn.use_eager():
        want = relu_norm_pool(w * 1, *stage())
    assert fused(out) and not fused(want) and in_layout(out, z)
    windows = F.unfold(ref.lrn(F.relu(w.detach()), groups=2).reshape(-1, 1, 9, 9), 3, stride=2)
    top = windows.max(dim=1, keepdim=True).values
    # windows whose maximum is tied
    assert ((windows == top) & (top > 0)).sum(dim=1).gt(1).sum() > 20
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    upstream = torch.rand(out.shape, dtype=torch.float64, generator=gen) + 1
    out.backward(upstream)
    want.backward(upstream)
    torch.testing.assert_close(z.grad, w.grad, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_bitwise_deterministic_whatever_the_thread_count(layout):
    z = layout(conv_output((4, 96, 27, 27), dtype=torch.float32)).requires_grad_()
    upstream = torch.randn((4, 96, 13, 13), generator=torch.Generator().manual_seed(3))
    threads, results = torch.get_num_threads(), []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            z.grad = None
            out = relu_norm_pool(z, *stage())
            out.backward(upstream)
            results.append((out.detach(), z.grad.clone()))
    finally:
        torch.set_num_threads(threads)
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


def test_both_layouts_compute_the_same_numbers():
    """The channels-last pass adds in the order the planes' pass does (equal to the last bit with this
    project's compiler; float32 rounding is what is asserted, as another compiler may fuse differently)."""
    z = conv_output((3, 96, 27, 27), dtype=torch.float32, seed=5)
    upstream = torch.randn((3, 96, 13, 13), generator=torch.Generator().manual_seed(6))
    results = []
    for t in (z, z.contiguous(memory_format=torch.channels_last)):
        t = t.clone().requires_grad_()
        out = relu_norm_pool(t, *stage())
        out.backward(upstream)
        assert fused(out) and in_layout(out, t) and in_layout(t.grad, t)
        results.append((out.detach(), t.grad))
    for a, b in zip(*results):
        # another compiler may contract a multiply-add (one rounding fewer or more, u = 6e-8 of the value, in
        # the window and the power): a few u; rtol 1e-6 is 16 u
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_keeps_only_z_and_a_byte_per_output():
    """Memory: the saved tensors are z and one uint8 per pooled output, not the ReLU's and the LRN's outputs."""
    z = conv_output((2, 8, 11, 11), dtype=torch.float32).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = relu_norm_pool(z * 1, *stage())
    assert sorted((str(t.dtype), t.numel()) for t in saved) == [
        ("torch.float32", z.numel()),
        ("torch.uint8", out.numel()),
    ]


@pytest.mark.parametrize("case", ["hook", "ceil", "tanh", "eager", "torch_lrn"])
def test_what_the_kernel_does_not_take_runs_the_modules_in_turn(case):
    z = conv_output((2, 8, 11, 11), dtype=torch.float32)
    act, norm, pool = stage()
    want = pool(norm(act(z.clone())))
    eager = case == "eager"
    if case == "hook":
        norm.register_forward_hook(lambda module, inputs, output: None)
    elif case == "ceil":
        pool, want = (
            nn.MaxPool2d(3, 2, ceil_mode=True),
            F.max_pool2d(norm(act(z.clone())), 3, 2, ceil_mode=True),
        )
    elif case == "tanh":
        act, want = nn.Tanh(), pool(norm(torch.tanh(z)))
    elif case == "torch_lrn":
        # alpha * n: the paper's LRN, but not our module
        norm = nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)
        want = pool(norm(act(z.clone())))
    with fused_lrn.use_eager(eager):
        out = relu_norm_pool(z.clone().requires_grad_() * 1, act, norm, pool)
    assert not fused(out)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", ["paper", "paper-two-tower", "paper-channels-last"])
def test_the_paper_net_takes_the_fused_path_and_agrees_with_the_modules(variant):
    torch.manual_seed(0)
    model = build_model("paper", 10, init="he")
    if variant == "paper-two-tower":
        from paper_alexnet import TwoTowerAlexNet

        model = TwoTowerAlexNet(model.config)
    # no dropout: the two passes see the same net; float64, where only the summation order may differ
    model.double().eval()
    x = torch.randn(2, 3, 227, 227, dtype=torch.float64) * 60
    if variant == "paper-channels-last":  # as reproduce.train --channels-last runs it
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    calls = []
    real = fused_lrn.stage_forward
    fused_lrn.stage_forward = lambda *args: calls.append(1) or real(*args)
    try:
        out = model(x)
    finally:
        fused_lrn.stage_forward = real
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with fused_lrn.use_eager():
        want = model(x)
        want.square().sum().backward()
    assert len(calls) == 2 * (2 if variant == "paper-two-tower" else 1)
    assert want.std() > 0.1
    assert_same_function(out, want, 9216, 8)  # tolerance.py
    for got, p in zip(grads, model.parameters()):
        assert_same_function(got, p.grad, 9216, 16)  # the forward and the backward pass


@pytest.fixture
def fresh_stage(monkeypatch):
    """compiled_stage as in a new process (nothing compiled, nothing failed), torch.compile through dynamo and
    AOTAutograd (the traced forward and the backward derived from it) without code generation: inductor's
    C++ for this stage costs 40 s of a CPU core, and the CPU never runs it (the stage compiles on CUDA, where
    tests/test_cuda.py checks Triton's code against §3.3)."""
    from paper_alexnet import compiled_stage

    monkeypatch.setattr(
        compiled_stage, "_state", {"compiled": None, "failed": None, "tried": set()}
    )
    monkeypatch.setattr(compiled_stage, "BACKEND", "aot_eager")
    return compiled_stage


def test_the_compiled_stage_a_gpu_runs_is_the_paper_written_out_forward_and_gradient(fresh_stage):
    """compiled_stage.py: what relu_norm_pool runs on a GPU, traced by torch.compile, against §3.1, §3.3 and
    §3.4 written out, in float64."""
    z = conv_output((2, 8, 9, 9)).requires_grad_()
    w = conv_output((2, 8, 9, 9)).requires_grad_()
    norm = LocalResponseNorm(groups=2)
    out = fresh_stage.run(z, (norm.size, norm.alpha, norm.beta, norm.k), 2, (3, 2))
    assert fresh_stage._state["failed"] is None and len(fresh_stage._state["tried"]) == 1
    want = written_out(w)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(
        out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    out.backward(upstream)
    want.backward(upstream)
    torch.testing.assert_close(z.grad, w.grad, rtol=1e-10, atol=1e-12)


def test_a_stage_that_does_not_compile_runs_in_torch_ops_after_one_warning(
    fresh_stage, monkeypatch
):
    def no_compiler(fn, **kwargs):
        def fails(*args):
            raise RuntimeError("no working Triton here")

        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    z = conv_output((2, 8, 9, 9))
    window = (5, 1e-4, 0.75, 2.0)
    with pytest.warns(UserWarning, match="does not compile here .*no working Triton"):
        out = fresh_stage.run(z, window, 2, (3, 2))
    torch.testing.assert_close(out, written_out(z), rtol=1e-12, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the next call goes straight to torch ops
        torch.testing.assert_close(fresh_stage.run(z, window, 2, (3, 2)), out, rtol=0, atol=0)


def _in_probe() -> bool:
    """Whether compiled_stage's probe is on the calling thread's stack."""
    import sys

    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_probe" and "compiled_stage" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def test_every_graph_of_the_compiled_stage_compiles_once_inside_its_probe_and_a_late_failure_falls_back(
    fresh_stage, monkeypatch
):
    """compiled_stage.run as a run calls it: conv1's and conv2's stages (two shapes), a last short batch, then
    evaluation at three batch sizes: 10 graphs, more than dynamo's own limit of 8 a function. Every forward and
    backward is compiled in the probe, on the main thread, once (a second epoch compiles nothing); the results
    are §3.3's; then a compiler that fails on its second graph gives one warning and torch ops, no crash."""
    import threading

    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    compiles = []

    def compiler(kind):
        def compile_graph(gm, example_inputs):
            compiles.append(
                (kind, _in_probe(), threading.current_thread() is threading.main_thread())
            )
            return make_boxed_func(gm.forward)

        return compile_graph

    monkeypatch.setattr(
        fresh_stage,
        "BACKEND",
        aot_autograd(fw_compiler=compiler("forward"), bw_compiler=compiler("backward")),
    )
    window = (5, 1e-4, 0.75, 2.0)
    shapes = {"conv1": (8, 11, 11), "conv2": (16, 7, 7)}

    def train_epoch(seed):
        for batch in (4, 4, 3):  # the last batch short
            for name, shape in shapes.items():
                z = conv_output((batch, *shape), seed=seed + batch).requires_grad_()
                w = z.detach().clone().requires_grad_()
                out, want = fresh_stage.run(z, window, 2, (3, 2)), written_out(w)
                out.square().sum().backward()
                want.square().sum().backward()
                torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(z.grad, w.grad, rtol=1e-10, atol=1e-10)

    train_epoch(0)
    with torch.no_grad():
        for batch in range(1, 4):
            for name, shape in shapes.items():
                z = conv_output((batch, *shape), seed=batch)
                torch.testing.assert_close(
                    fresh_stage.run(z, window, 2, (3, 2)), written_out(z), rtol=1e-12, atol=1e-12
                )
    train_epoch(1)  # the same graphs again: nothing compiles
    assert fresh_stage._state["failed"] is None and len(fresh_stage._state["tried"]) == 4 + 6
    assert sorted(kind for kind, _, _ in compiles) == ["backward"] * 4 + ["forward"] * 10
    assert all(probed and main for _, probed, main in compiles)

    graphs = []

    def second_fails(gm, example_inputs):
        graphs.append(gm)
        if len(graphs) == 2:
            raise RuntimeError("the second graph does not lower")
        return gm.forward

    torch._dynamo.reset()
    monkeypatch.setattr(fresh_stage, "_state", {"compiled": None, "failed": None, "tried": set()})
    monkeypatch.setattr(fresh_stage, "BACKEND", second_fails)
    with torch.no_grad():
        first = conv_output((2, *shapes["conv1"]))
        torch.testing.assert_close(fresh_stage.run(first, window, 2, (3, 2)), written_out(first))
        second = conv_output((2, *shapes["conv2"]))
        with pytest.warns(UserWarning, match="does not compile here .*second graph does not lower"):
            out = fresh_stage.run(second, window, 2, (3, 2))
        torch.testing.assert_close(out, written_out(second), rtol=1e-12, atol=1e-12)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once; every stage after it in torch ops
            torch.testing.assert_close(
                fresh_stage.run(first, window, 2, (3, 2)), written_out(first)
            )
    assert fresh_stage.status() == {
        "compiled": False,
        "graphs": 1,
        "failed": "BackendCompilerFailed: backend='second_fails' raised: "
        "RuntimeError: the second graph does not lower",
    }
