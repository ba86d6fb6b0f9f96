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
from reproduce.common.args import DEVICE, Flag, UsageError


@dataclasses.dataclass(frozen=True)
class Placement:
    devices: Tuple[torch.device, ...]  # one device, or one per tower
    note: str  # the one line that announces it
    channels_last: bool = False  # the net's maps (and its input) in channels-last layout

    @property
    def two_tower(self) -> bool:
        return len(self.devices) == 2

    @property
    def first(self) -> torch.device:
        """Where the input is prepared and the logits come out."""
        return self.devices[0]


TWO_GPU = Flag(
    "the two towers of §3.2 on two devices: cuda:0 and cuda:1 with 2+ GPUs (under "
    "torchrun: cuda:2r and cuda:2r+1 for local rank r, so two GPUs a process, else refused), "
    "both on the one GPU with 1, both on the CPU with none",
    default=False,
)
DEVICES = Flag(
    "the two towers on these devices, e.g. cuda:0,cuda:1 or cpu,cpu (implies --two-gpu; one "
    "process a node: under torchrun, --two-gpu)",
    metavar="A,B",
)
DEVICE_FLAGS = {"device": DEVICE, "two_gpu": TWO_GPU, "devices": DEVICES}
DEVICE_GROUP = "devices (§3.2)"


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(DEVICE_GROUP)
    for dest, flag in DEVICE_FLAGS.items():
        flag.add(group, dest)


def pick_device(name: str, local_rank: int = 0, local_world: int = 1) -> torch.device:
    """One device by name; under torchrun, "auto" and "cuda" mean the GPU of the local rank. With more than one
    process on this node, each must have a GPU of its own (own_gpus)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"device {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise UsageError(f"device {name!r}: only cpu and cuda devices are supported here")
    if device.type == "cuda" and local_world > 1:
        own_gpus(visible_gpus(), local_world, 1, named=name if device.index is not None else None)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0 if launcher_gave_own(1, local_world) else local_rank)
    if device.type == "cuda" and (
        not torch.cuda.is_available() or device.index >= torch.cuda.device_count()
    ):
        raise UsageError(
            f"device {name}: no such CUDA device here ({torch.cuda.device_count()} visible)"
        )
    return device


def visible_gpus() -> int:
    """The CUDA GPUs this process sees (0 without CUDA): counted, no GPU touched."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launcher_gave_own(each: int, local_world: int) -> bool:
    """Whether the launcher gave each of this node's processes GPUs of its own, through CUDA_VISIBLE_DEVICES
    (SLURM's --gpus-per-task, a wrapper that sets it per rank): set, with exactly ``each`` visible, in a job of
    several processes a node. Such a process takes the GPUs it sees (cuda:0, and cuda:1 for a second tower);
    were the ranks' lists the same GPU, NCCL stops the job ("Duplicate GPU detected")."""
    return (
        local_world > 1
        and bool(os.environ.get("CUDA_VISIBLE_DEVICES", "").strip())
        and visible_gpus() == each
    )


def own_gpus(gpus: int, local_world: int, each: int, named: Optional[str] = None) -> None:
    """With GPUs and more than one process on this node, every process needs GPUs of its own (``each``: 1, or
    2 for --two-gpu's towers); NCCL refuses two processes on one GPU. A UsageError otherwise, with the
    arithmetic and the remedy, raised on every rank alike before any process group starts (train places the
    net first). One process, or no GPU at all, passes."""
    if gpus == 0 or local_world <= 1 or launcher_gave_own(each, local_world):
        return
    if named is not None:
        flag = "--devices" if each == 2 else "--device"
        raise UsageError(
            f"{flag} {named} names the same GPUs for each of the {local_world} processes on this node, and two "
            f"processes cannot share a GPU: under torchrun give "
            + (
                "--two-gpu (process r takes cuda:2r and cuda:2r+1)"
                if each == 2
                else "--device cuda (process r takes cuda:r)"
            )
        )
    if gpus >= each * local_world:
        return
    what = "two GPUs a process (one a tower, §3.2)" if each == 2 else "one GPU a process"
    remedies = [f"run torchrun --nproc-per-node {gpus // each}"] if gpus >= each else []
    if each == 2:
        remedies.append(
            f"leave out --two-gpu (one GPU a process: --nproc-per-node {min(gpus, local_world)})"
        )
    raise UsageError(
        f"{local_world} processes on this node with {what} need {each * local_world} GPUs, and {gpus} "
        f"{'is' if gpus == 1 else 'are'} visible: {', or '.join(remedies)}"
    )


def tower_devices(gpus: int, local_rank: int = 0, local_world: int = 1) -> Tuple[torch.device, ...]:
    """--two-gpu's two devices for this process: cuda:2r and cuda:2r+1 for local rank r, both towers on the one
    GPU of a single process, both on the CPU where there is no GPU; a UsageError where the node's processes
    would share GPUs (own_gpus)."""
    own_gpus(gpus, local_world, 2)
    if launcher_gave_own(2, local_world):
        return (torch.device("cuda", 0), torch.device("cuda", 1))
    if gpus >= 2:
        return (torch.device("cuda", 2 * local_rank), torch.device("cuda", 2 * local_rank + 1))
    if gpus == 1:
        return (torch.device("cuda", 0),) * 2
    return (torch.device("cpu"),) * 2


def place(
    args: argparse.Namespace,
    config: Optional[Network] = None,
    local_rank: int = 0,
    local_world: int = 1,
) -> Placement:
    """The placement the flags ask for, checked: unknown or absent devices, and processes of one node that
    would share a GPU, are a UsageError."""
    placement = _place(args, config, local_rank, local_world)
    if placement.first.type == "cuda":  # this process's GPU, also with one process (use_gpu)
        use_gpu(placement.first)
    return placement


def use_gpu(device: torch.device) -> None:
    """Make ``device`` the current GPU, so that what names no GPU (the pin-memory thread, pinned copies, a bare
    torch.cuda.synchronize()) acts on it, not on cuda:0; torchrun's ranks set theirs too (distributed.start)."""
    torch.cuda.set_device(device)


def _place(
    args: argparse.Namespace,
    config: Optional[Network] = None,
    local_rank: int = 0,
    local_world: int = 1,
) -> Placement:
    asked = getattr(args, "channels_last", False)  # train's --channels-last
    if args.devices is None and not args.two_gpu:
        device = pick_device(args.device, local_rank, local_world)
        amp = getattr(args, "amp", False)
        layout = asked or channels_last(device, amp)
        why = (
            "--channels-last"
            if asked
            else "bfloat16 on CUDA"
            if device.type == "cuda"
            else "AVX-512"
        )
        note = f"device: {device}" + (f"; channels-last maps ({why})" if layout else "")
        return Placement((device,), note, layout)
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
        if local_world > 1 and any(n.startswith("cuda") for n in names):
            own_gpus(visible_gpus(), local_world, 2, named=args.devices)
        devices = tuple(pick_device(n, local_rank) for n in names)
        return Placement(
            devices, f"two towers (§3.2) on {devices[0]} and {devices[1]} (--devices)", asked
        )
    gpus = visible_gpus()
    devices = tower_devices(gpus, local_rank, local_world)
    if devices[0] != devices[1]:
        return Placement(
            devices, f"two towers (§3.2) on {devices[0]} and {devices[1]}: {gpus} GPUs", asked
        )
    if gpus:
        return Placement(
            devices,
            f"two towers (§3.2) both on {devices[0]}: one GPU here; activations still cross only where §3.2 "
            "says",
            asked,
        )
    return Placement(devices, "two towers (§3.2) both on the CPU: no GPU here", asked)


def channels_last(device: torch.device, amp: bool = False) -> bool:
    """Whether a net on one ``device`` runs with channels-last maps: on a CPU with AVX-512 kernels, where the
    paper net trains 1.08x and infers 1.2x as fast so (and on AVX2 0.95x: docs/performance.md); on CUDA under
    bfloat16 autocast (``amp``), whose tensor-core convolutions take channels-last maps (in channel planes cuDNN
    transposes around each). ``PAPER_ALEXNET_CHANNELS_LAST=1`` or ``0`` decides instead; ``reproduce.train
    --channels-last`` too."""
    asked = os.environ.get("PAPER_ALEXNET_CHANNELS_LAST", "auto").strip().lower()
    if asked in ("0", "1"):
        return asked == "1"
    if device.type == "cuda":
        return amp
    return device.type == "cpu" and torch.backends.cpu.get_cpu_capability() == "AVX512"


def build_placed(config: Network, placement: Placement) -> torch.nn.Module:
    """The net on the one device (channels-last where the placement says), or the two-tower net across the two
    (same weights as the grouped net)."""
    model = (
        TwoTowerAlexNet(config, placement.devices)
        if placement.two_tower
        else build_network(config).to(placement.first)
    )
    if placement.channels_last:  # the weights' layout; the convolutions' outputs follow it
        model.to(memory_format=torch.channels_last)
    return model
