"""The CUDA settings a training run takes (paper_alexnet/backends.py), and the layout it runs in: flags only, so
the CPU shows them (a GPU run confirms their speed: docs/performance.md)."""

import glob
import os

import pytest
import torch

from paper_alexnet import backends
from reproduce.common import placement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def restored():
    """Every flag as it was before the test."""
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
    )
    yield
    (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
    ) = saved


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("tf32", [True, False])
def test_a_cuda_run_autotunes_unless_deterministic_and_takes_tf32_unless_off(
    deterministic, tf32, restored
):
    taken = backends.configure(torch.device("cuda", 0), deterministic=deterministic, tf32=tf32)
    precision = "tf32" if tf32 else "ieee"
    assert taken == {
        "cudnn_benchmark": not deterministic,
        "cudnn_deterministic": deterministic,
        "matmul_fp32_precision": precision,
        "conv_fp32_precision": precision,
    }
    # the new API alone: torch raises where the legacy flag is read after it, so nothing here may read it
    assert torch.backends.cuda.matmul.fp32_precision == precision


def test_a_cpu_run_sets_nothing_and_exact_float32_restores_what_was(restored):
    torch.backends.cudnn.benchmark = False
    assert backends.configure(torch.device("cpu")) == {} and not torch.backends.cudnn.benchmark
    backends.set_tf32(True)
    with backends.exact_float32():
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"


def test_one_tf32_api_in_the_package_and_its_tests():
    """torch's fp32_precision only: the legacy allow-TF32 flags, read after the new one is set, raises (torch 2.14)."""
    legacy = "allow" + "_tf32"
    files = [
        path
        for folder in ("paper_alexnet", "reproduce", "tests")
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True)
    ]
    assert files
    assert [path for path in files if legacy in open(path, encoding="utf-8").read()] == []


@pytest.mark.parametrize("amp", [False, True])
def test_channels_last_is_the_default_on_cuda_with_amp(amp, monkeypatch):
    monkeypatch.delenv("PAPER_ALEXNET_CHANNELS_LAST", raising=False)
    assert placement.channels_last(torch.device("cuda", 0), amp) == amp
    monkeypatch.setenv("PAPER_ALEXNET_CHANNELS_LAST", "0")
    assert placement.channels_last(torch.device("cuda", 0), True) is False
