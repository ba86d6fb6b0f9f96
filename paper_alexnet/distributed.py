"""Data parallelism across processes (torchrun): who this process is, and the few collective steps.

§5 trained one net on one machine's two GPUs. Spreading the minibatch over
more processes is not in the paper; here it is made exact instead: every
process walks the same global batches with the same augmentation draws and
takes its rows (see :mod:`paper_alexnet.engine`), so N processes compute what
one would on the whole batch. ``torchrun`` sets RANK, LOCAL_RANK and
WORLD_SIZE; without them this is a single process and every function here is
a no-op.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import sys
import time
from typing import List

import torch
import torch.distributed as dist

from paper_alexnet.config import ConfigError

# How long a collective (a barrier, an all-reduce, DDP's gradient sums) waits for the slowest process before the
# job is stopped. The one-time work that may take hours (opening, downloading, the §2/§4.1 statistics of 1.28M
# images) is done before the group starts, with no collective waiting on it (reproduce.train), so this bounds
# only what every step waits for: rank 0 writing a checkpoint, a slow or hung peer. NCCL's own default is
# 10 minutes, gloo's 30; both get this one.
TIMEOUT_ENV = "PAPER_ALEXNET_GROUP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800


@dataclasses.dataclass(frozen=True)
class Process:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # the job's processes on this node (torchrun's --nproc-per-node)

    @property
    def main(self) -> bool:
        """The process that logs and writes files (rank 0)."""
        return self.rank == 0


def from_env() -> Process:
    """This process's place in a torchrun job (rank 0 of 1 when not started by torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Process(
        int(os.environ.get("RANK", "0")),
        world,
        int(os.environ.get("LOCAL_RANK", "0")),
        int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )


def group_timeout() -> float:
    """The seconds a collective waits (``$PAPER_ALEXNET_GROUP_TIMEOUT_S``, else 30 minutes)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return float(DEFAULT_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise ConfigError(
            f"{TIMEOUT_ENV}={text!r}: give the seconds a collective may wait, e.g. 1800"
        )
    return seconds


def start(process: Process, device: torch.device) -> None:
    """Join the process group: nccl when this process drives a GPU, gloo on the CPU; its collectives wait at
    most ``group_timeout()``."""
    if process.world > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(seconds=group_timeout())
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        _JOINED.append(process.rank)


_JOINED: List[int] = []  # this process joined a process group (start)


def end(code: int) -> None:
    """Leave the program with exit status ``code``. A process that joined a torchrun job's group leaves
    without the interpreter's teardown, its output and logs flushed first: torch 2.14 leaves gloo's
    threads running after destroy_process_group, and a teardown that meets one aborts the process
    ("terminate called without an active exception", SIGABRT), failing a job whose work was done."""
    if not _JOINED:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def stop(timeout_s: float = 10.0) -> None:
    """Leave the process group, once no backend thread holds a tensor of ours (see ``settle``)."""
    if dist.is_available() and dist.is_initialized():
        settle(timeout_s)
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# The tensors all_sum has summed that a backend thread may still hold. gloo's worker thread lets go of a
# collective's tensors just after the collective returns, and that release takes the GIL: a process that
# reaches interpreter shutdown first is aborted ("terminate called without an active exception", SIGABRT),
# in rank 1 of a torchrun job that ends at once while rank 0 writes its files. stop() waits for them.
_SUMMED: List[torch.Tensor] = []


def all_sum(values: list) -> list:
    """Sum numbers over the data-parallel processes (as they are when there is only one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    backend = dist.get_backend()
    device = f"cuda:{torch.cuda.current_device()}" if backend == "nccl" else "cpu"
    return sum_in_place(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def sum_in_place(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the data-parallel processes, in place, where it is (on the GPU NCCL sums on:
    no readback); as it is when there is only one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    dist.all_reduce(tensor)
    _SUMMED.append(tensor)
    _SUMMED[:] = held_elsewhere(_SUMMED)
    return tensor


def each(value: float, process: Process) -> list:
    """Every process's ``value``, in rank order (``[value]`` for one process): one sum of one-hot rows."""
    row = [0.0] * process.world
    row[process.rank] = float(value)
    return all_sum(row)


def held_elsewhere(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """The tensors of the list that something besides the list holds. A reference held in C++ (a
    collective's work) counts in the Python object's reference count; a new tensor, held by the list
    alone, gives the count to compare with."""
    tensors.append(torch.empty(0))
    counts = [sys.getrefcount(tensors[i]) for i in range(len(tensors))]
    tensors.pop()
    return [tensor for tensor, count in zip(tensors, counts) if count > counts[-1]]


def settle(timeout_s: float) -> bool:
    """Wait (the GIL released) until no backend thread holds a tensor all_sum summed; False after
    ``timeout_s`` with some still held."""
    deadline = time.monotonic() + timeout_s
    while _SUMMED and time.monotonic() < deadline:
        time.sleep(0.001)
        _SUMMED[:] = held_elsewhere(_SUMMED)
    settled = not _SUMMED
    _SUMMED.clear()
    return settled


def wrap(model: torch.nn.Module, process: Process, device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` in a multi-process job, the model itself otherwise.
    ``device``: the one device the model is on, or None for a model across devices (two towers)."""
    if process.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device] if device is not None and device.type == "cuda" else None
    )


def dropout_seed(seed: int, epoch: int, rank: int, step: int = 0) -> int:
    """The torch RNG seed of one training step on one process: a run resumed at any step draws the dropout
    (§4.2) masks an uninterrupted one draws, without saving RNG states, and masks differ across ranks."""
    return (seed * 1_000_003 + epoch * 10_007 + rank + step * 7_919_413) % (2**63)
