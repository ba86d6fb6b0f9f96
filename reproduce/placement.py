"""Where a net runs: one device, or the two towers of §3.2 on two (``--two-gpu``, ``--devices A,B``).

Shared by train and evaluate. Every choice is checked before any work starts
and announced in one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Optional, Tuple

import torch

from paper_alexnet.networks import Network, build_network
from paper_alexnet.two_tower import TwoTowerAlexNet, splits_in_two
from reproduce.args import UsageError, add_device_flag


@dataclasses.dataclass(frozen=True)
class Placement:
    devices: Tuple[torch.device, ...]  # one device, or one per tower
    note: str  # the one line that announces it

    @property
    def two_tower(self) -> bool:
        return len(self.devices) == 2

    @property
    def first(self) -> torch.device:
        """Where the input is prepared and the logits come out."""
        return self.devices[0]


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("devices (§3.2)")
    add_device_flag(group)
    group.add_argument(
        "--two-gpu",
        action="store_true",
        help="the two towers of §3.2 on two devices: cuda:0 and cuda:1 with 2+ GPUs (under "
        "torchrun: the pair of the local rank), both on the one GPU with 1, both on the CPU "
        "with none",
    )
    group.add_argument(
        "--devices",
        default=None,
        metavar="A,B",
        help="the two towers on these devices, e.g. cuda:0,cuda:1 or cpu,cpu (implies --two-gpu)",
    )


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """One device by name; under torchrun, "auto" and "cuda" mean the GPU of the local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"device {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise UsageError(f"device {name!r}: only cpu and cuda devices are supported here")
    if device.type == "cuda" and (
        not torch.cuda.is_available() or device.index >= torch.cuda.device_count()
    ):
        raise UsageError(
            f"device {name}: no such CUDA device here ({torch.cuda.device_count()} visible)"
        )
    return device


def place(
    args: argparse.Namespace, config: Optional[Network] = None, local_rank: int = 0
) -> Placement:
    """The placement the flags ask for, checked: unknown or absent devices are a UsageError."""
    if args.devices is None and not args.two_gpu:
        device = pick_device(args.device, local_rank)
        layout = "; channels-last maps (AVX-512)" if channels_last(device) else ""
        return Placement((device,), f"device: {device}{layout}")
    if config is not None and not splits_in_two(config):
        raise UsageError(
            f"--two-gpu needs a net split in two towers as §3.2 (paper and its switches), "
            f"not {config.name!r}"
        )
    if args.devices is not None:
        names = [n.strip() for n in args.devices.split(",")]
        if len(names) != 2 or not all(names):
            raise UsageError(
                f"--devices takes two devices, one per tower, e.g. cuda:0,cuda:1 (got {args.devices!r})"
            )
        devices = tuple(pick_device(n, local_rank) for n in names)
        return Placement(devices, f"two towers (§3.2) on {devices[0]} and {devices[1]} (--devices)")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus >= 2 * (local_rank + 1):
        devices = (torch.device("cuda", 2 * local_rank), torch.device("cuda", 2 * local_rank + 1))
        return Placement(
            devices, f"two towers (§3.2) on {devices[0]} and {devices[1]}: {gpus} GPUs"
        )
    if gpus >= 1:
        device = torch.device("cuda", local_rank % gpus)
        return Placement(
            (device, device),
            f"two towers (§3.2) both on {device}: not two GPUs for this process "
            f"({gpus} visible); activations still cross only where §3.2 says",
        )
    cpu = torch.device("cpu")
    return Placement((cpu, cpu), "two towers (§3.2) both on the CPU: no GPU here")


def channels_last(device: torch.device) -> bool:
    """Whether a net on one ``device`` runs with channels-last maps: on a CPU with AVX-512 kernels, where the
    paper net trains 1.08x and infers 1.2x as fast so (and on AVX2 0.95x: docs/performance.md).
    ``PAPER_ALEXNET_CHANNELS_LAST=1`` or ``0`` decides instead; ``reproduce.train --channels-last`` too."""
    asked = os.environ.get("PAPER_ALEXNET_CHANNELS_LAST", "auto").strip().lower()
    if asked in ("0", "1"):
        return asked == "1"
    return device.type == "cpu" and torch.backends.cpu.get_cpu_capability() == "AVX512"


def build_placed(config: Network, placement: Placement) -> torch.nn.Module:
    """The net on the one device (channels-last where :func:`channels_last` says), or the two-tower net
    across the two (same weights as the grouped net)."""
    if placement.two_tower:
        return TwoTowerAlexNet(config, placement.devices)
    model = build_network(config).to(placement.first)
    if channels_last(placement.first):  # the weights' layout; the convolutions' outputs follow it
        model.to(memory_format=torch.channels_last)
    return model
