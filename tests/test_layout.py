"""The layout a command's net runs in (reproduce.common.placement.channels_last): channels-last on a CPU with
AVX-512 kernels, channel planes elsewhere, the environment deciding when it says; the same numbers either
way, and files that do not depend on it."""

import argparse

import pytest
import torch

from paper_alexnet.networks import get_network
from reproduce.common import placement


def net_on_cpu():
    args = argparse.Namespace(device="cpu", devices=None, two_gpu=False)
    place = placement.place(args)
    return place, placement.build_placed(get_network("paper", num_classes=10), place)


def is_channels_last(model) -> bool:
    weight = model.conv2.weight
    return not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("asked", [None, "0", "1"])
def test_the_rule_the_override_and_the_device_line(asked, monkeypatch):
    if asked is None:
        monkeypatch.delenv("PAPER_ALEXNET_CHANNELS_LAST", raising=False)
        want = torch.backends.cpu.get_cpu_capability() == "AVX512"
    else:
        monkeypatch.setenv("PAPER_ALEXNET_CHANNELS_LAST", asked)
        want = asked == "1"
    place, model = net_on_cpu()
    assert placement.channels_last(torch.device("cpu")) == want
    assert is_channels_last(model) == want
    assert ("channels-last" in place.note) == want


def test_both_layouts_are_the_same_net_and_save_the_same_checkpoint(monkeypatch, tmp_path):
    """Logits agree to float32 rounding (other convolution kernels), gradients as closely as rounding lets
    them down the net; the saved weights are the same numbers whichever layout holds them."""
    nets = {}
    for asked in ("0", "1"):
        monkeypatch.setenv("PAPER_ALEXNET_CHANNELS_LAST", asked)
        torch.manual_seed(0)
        nets[asked] = net_on_cpu()[1].eval()
    assert is_channels_last(nets["1"]) and not is_channels_last(nets["0"])
    x = torch.randn(2, 3, 227, 227)
    out = {}
    for asked, model in nets.items():
        logits = model(x)
        logits.square().sum().backward()
        out[asked] = [logits.detach()] + [p.grad for p in model.parameters()]
    assert (out["0"][0] - out["1"][0]).norm() <= 1e-5 * out["1"][0].norm()  # the logits
    for a, b in zip(out["0"][1:], out["1"][1:]):  # rounding flips ReLUs and window maxima: more
        cosine = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cosine >= 0.999 and (a - b).norm() <= 0.1 * b.norm()  # 0.9997 and 0.024 for conv1
    path = tmp_path / "cl.pt"
    torch.save(nets["1"].state_dict(), path)
    saved = torch.load(path, weights_only=True)
    for name, tensor in nets["0"].state_dict().items():
        assert torch.equal(saved[name].contiguous(), tensor)
