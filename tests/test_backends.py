"""The CUDA settings a training run takes (paper_alexnet/backends.py), and the layout it runs in: flags only, so
the CPU shows them (a GPU run confirms their speed: docs/performance.md)."""

import os

import pytest
import torch

from paper_alexnet import backends
from reproduce.common import placement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def restored():
    """Every flag as it was before the test."""
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, backends.tf32()
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
    backends._set_tf32(saved[2]["matmul"], saved[2]["conv"])


def _getters() -> dict:
    """Every TF32 getter of torch's two APIs, by name: its value, or the exception it raises."""
    getters = {
        "legacy matmul flag": lambda: torch.backends.cuda.matmul.allow_tf32,
        "legacy cudnn flag": lambda: torch.backends.cudnn.allow_tf32,
        "matmul precision": torch.get_float32_matmul_precision,
        "new matmul": lambda: torch.backends.cuda.matmul.fp32_precision,
        "new conv": lambda: torch.backends.cudnn.conv.fp32_precision,
    }
    read = {}
    for name, get in getters.items():
        try:
            read[name] = get()
        except RuntimeError as err:  # torch's "mix of the legacy and new APIs"
            read[name] = f"raises: {str(err)[:60]}"
    return read


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
    # both APIs read the setting, every getter: the new one alone leaves the legacy getters raising, and
    # inductor's matmul lowering reads one of them (pytorch#166387)
    assert _getters() == {
        "legacy matmul flag": tf32,
        "legacy cudnn flag": tf32,
        "matmul precision": "high" if tf32 else "highest",
        "new matmul": precision,
        "new conv": precision,
    }


def test_a_cpu_run_sets_nothing_and_exact_float32_restores_what_was(restored):
    torch.backends.cudnn.benchmark = False
    assert backends.configure(torch.device("cpu")) == {} and not torch.backends.cudnn.benchmark
    backends.set_tf32(True)
    with backends.exact_float32():
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"


def test_tf32_written_through_both_apis_reads_alike_in_each(restored):
    """Through the new API alone torch 2.14's legacy getters raise; through both, exact_float32 in and out, every
    getter reads the setting."""
    torch.backends.cuda.matmul.fp32_precision = (
        "tf32"  # as the package wrote it before: the new API alone
    )
    assert _getters()["legacy matmul flag"].startswith("raises")
    for on in (True, False, True):
        backends.set_tf32(on)
        with backends.exact_float32():
            assert _getters()["matmul precision"] == "highest"
        read = _getters()
        assert read["legacy matmul flag"] is on and read["legacy cudnn flag"] is on
        assert read["matmul precision"] == ("high" if on else "highest")


@pytest.mark.parametrize("amp", [False, True])
def test_channels_last_is_the_default_on_cuda_with_amp(amp, monkeypatch):
    monkeypatch.delenv("PAPER_ALEXNET_CHANNELS_LAST", raising=False)
    assert placement.channels_last(torch.device("cuda", 0), amp) == amp
    monkeypatch.setenv("PAPER_ALEXNET_CHANNELS_LAST", "0")
    assert placement.channels_last(torch.device("cuda", 0), True) is False


def _fake_gpus(monkeypatch, count: int) -> list:
    """torch.cuda as on a machine whose process sees ``count`` GPUs; returns the devices set_device was given."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(
        torch.cuda, "set_device", lambda device: chosen.append(torch.device(device))
    )
    return chosen


def _flags(**given):
    import argparse

    return argparse.Namespace(**{"device": "cuda", "devices": None, "two_gpu": False, **given})


def test_the_run_s_gpu_is_made_current_also_in_one_process(monkeypatch):
    """--device cuda:1 without torchrun: torch.cuda.set_device(cuda:1), so that the pin-memory thread, pinned
    copies and a bare synchronize() act there, not on cuda:0."""
    chosen = _fake_gpus(monkeypatch, 2)
    assert placement.place(_flags(device="cuda:1")).first == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)]


def test_a_launcher_that_gives_each_rank_its_own_gpu_is_not_refused(monkeypatch):
    """One GPU a process through CUDA_VISIBLE_DEVICES (SLURM's --gpus-per-task): rank 5 of 8 on the node sees one
    GPU, cuda:0, its own; the two towers with two each. Without the variable, 8 processes and 1 GPU are refused
    as before."""
    chosen = _fake_gpus(monkeypatch, 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert placement.place(_flags(), local_rank=5, local_world=8).first == torch.device("cuda", 0)
    assert chosen == [torch.device("cuda", 0)]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(
        placement.UsageError, match="8 processes on this node with one GPU a process need 8"
    ):
        placement.place(_flags(), local_rank=5, local_world=8)
    _fake_gpus(monkeypatch, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    towers = placement.place(_flags(two_gpu=True), local_rank=2, local_world=4)
    assert towers.devices == (torch.device("cuda", 0), torch.device("cuda", 1))
