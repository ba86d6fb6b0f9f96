"""fc6..fc8 through oneDNN (paper_alexnet/cpu_linear.py) compute the fully-connected layer of §3.5.

The layer's function and its gradients are written here from their definitions in float64
(y = x W^T + b, dL/dx = g W, dL/dW = g^T x, dL/db = sum over the batch of g) and both libraries are held
to them, on whichever CPU kind runs the suite.
"""

import pytest
import torch
import torch.nn.functional as F

from paper_alexnet import build_model, cpu_linear
from paper_alexnet.cpu_linear import Linear

ONEDNN = cpu_linear.has_onednn()


@pytest.fixture(params=["onednn", "torch"])
def library(request, monkeypatch):
    if request.param == "onednn" and not ONEDNN:
        pytest.skip("this torch has no oneDNN matrix multiply")
    monkeypatch.setenv("PAPER_ALEXNET_MATMUL", request.param)
    assert cpu_linear.backend() == request.param
    return request.param


def reference(x, w, b, g):
    """The layer and its three gradients in float64, from the definitions."""
    x, w, b, g = (t.double() for t in (x, w, b, g))
    return x @ w.T + b, g @ w, g.T @ x, g.sum(0)


def close(actual, expected, scale):
    """Equal to float32 rounding over a sum of ``scale`` products."""
    bound = 1e-5 * (scale**0.5) * expected.abs().max().item() + 1e-6
    assert (actual.double() - expected).abs().max().item() <= bound


@pytest.mark.parametrize("shape", [(32, 9216, 40), (5, 300, 7), (1, 64, 1000)])
def test_forward_and_gradients_are_the_layers(library, shape):
    n, fan_in, fan_out = shape
    gen = torch.Generator().manual_seed(0)
    layer = Linear(fan_in, fan_out)
    with torch.no_grad():
        layer.weight.normal_(0, 0.01, generator=gen)  # §5's initialisation scale
        layer.bias.normal_(0, 1, generator=gen)
    x = torch.randn(n, fan_in, generator=gen).requires_grad_()
    g = torch.randn(n, fan_out, generator=gen)
    y = layer(x)
    y.backward(g)
    y_ref, gx_ref, gw_ref, gb_ref = reference(
        x.detach(), layer.weight.detach(), layer.bias.detach(), g
    )
    close(y, y_ref, fan_in)
    close(x.grad, gx_ref, fan_out)
    close(layer.weight.grad, gw_ref, n)
    close(layer.bias.grad, gb_ref, n)
    with torch.no_grad():  # inference takes the same product
        close(layer(x), y_ref, fan_in)


def test_frozen_weights_and_no_bias_take_only_what_is_asked(library):
    layer = Linear(50, 20, bias=False).requires_grad_(False)
    x = torch.randn(4, 50, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is None
    close(x.grad, torch.ones(4, 20, dtype=torch.float64) @ layer.weight.double(), 20)


def test_what_onednn_does_not_take_goes_to_torch(monkeypatch):
    """Three dimensions, float64, a transposed input, autocast: F.linear's own answer, unchanged."""
    monkeypatch.setenv("PAPER_ALEXNET_MATMUL", "onednn")
    layer = Linear(16, 8)
    cases = [
        torch.randn(2, 3, 16),
        torch.randn(16, 4).T,
    ]
    for x in cases:
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    double = Linear(16, 8).double()
    x = torch.randn(3, 16, dtype=torch.float64)
    assert torch.equal(double(x), F.linear(x, double.weight, double.bias))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(3, 16)).dtype == torch.bfloat16


def test_the_rule_and_its_override(monkeypatch):
    monkeypatch.setenv("PAPER_ALEXNET_MATMUL", "auto")
    monkeypatch.setattr(cpu_linear, "_vendor", lambda: "GenuineIntel")
    assert cpu_linear.backend() == "torch"  # MKL on Intel's own CPUs
    monkeypatch.setattr(cpu_linear, "_vendor", lambda: "AuthenticAMD")
    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    assert cpu_linear.backend() == ("onednn" if avx512 and ONEDNN else "torch")
    monkeypatch.setenv("PAPER_ALEXNET_MATMUL", "mkl")  # not a choice: said once, and the rule holds
    with pytest.warns(UserWarning, match="PAPER_ALEXNET_MATMUL='mkl'"):
        assert cpu_linear.backend() == ("onednn" if avx512 and ONEDNN else "torch")


def test_the_net_is_the_same_function_and_state_dict_on_either_library(monkeypatch):
    """The paper net's logits and every gradient agree between the two libraries (float32 rounding), and
    its parameters keep nn.Linear's names."""
    if not ONEDNN:
        pytest.skip("this torch has no oneDNN matrix multiply")
    torch.manual_seed(0)
    model = build_model("paper", 10).eval()  # eval: no dropout, the same function both times
    assert isinstance(model.fc6, torch.nn.Linear)
    assert {"fc6.weight", "fc6.bias", "fc8.weight"} <= set(model.state_dict())
    x = torch.randn(2, 3, 227, 227)
    out = {}
    for name in ("torch", "onednn"):
        monkeypatch.setenv("PAPER_ALEXNET_MATMUL", name)
        model.zero_grad()
        logits = model(x)
        logits.square().sum().backward()
        out[name] = [logits.detach()] + [p.grad.clone() for p in model.parameters()]
    for a, b in zip(out["torch"], out["onednn"]):  # each tensor as a whole, to float32 rounding
        assert (a - b).norm() <= 1e-4 * b.norm()
