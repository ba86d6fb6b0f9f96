"""Batches of uint8 §2 patches, in a seeded order, from any :class:`~.splits.Split`.

The order of epoch ``e`` depends only on (seed, e), so a resumed run sees the
same batches as an uninterrupted one. Under data parallelism (``rank`` of
``world`` processes) every process walks the same global batches and reads
only its rows of each (rank, rank + world, ...). Files that cannot be read are left out
of their batch and counted (``BatchLoader.skipped``); with ``strict`` the first
one stops the run with its path and reason.

Given the ``device`` the net is on, the loader hands over batches already
there. On a GPU the next batch is copied on a side stream while the current
step runs, and a JPEG store's batch can travel encoded from the workers and be
decoded on the GPU in one call (nvjpeg; ``decode="device"``), so that the
workers only read bytes.
"""

from __future__ import annotations

import logging
import shutil
import signal
import time
from typing import Iterator, Optional

import numpy as np
import torch

from .images import BadImageError
from .splits import Split
from .store import decode_jpegs

_logger = logging.getLogger(__name__)


def epoch_order(
    count: int,
    batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
) -> list[np.ndarray]:
    """The index batches of one epoch: a permutation seeded by (seed, epoch), cut into batches."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")
    order = np.random.default_rng([seed, epoch]).permutation(count) if shuffle else np.arange(count)
    stop = count - count % batch_size if drop_last else count
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


DECODE_CHOICES = ("auto", "workers", "device")
PREFETCH = 2  # batches each loader process prepares ahead (DataLoader's prefetch_factor)


# Where a loader process's batches wait for the main process: torch shares them through files in /dev/shm. A
# batch of decoded §2 images is 3 x 256 x 256 bytes an image (25 MB at 128); a batch of JPEG bytes for the
# device's decoder well under a quarter of that.
SHARED_MEMORY = "/dev/shm"
IMAGE_BYTES = 3 * 256 * 256
ENCODED_BYTES = IMAGE_BYTES // 4
_said: set = set()


def fit_to_shared_memory(
    workers: int, batch: int, image_bytes: int = IMAGE_BYTES, free: Optional[int] = None
) -> tuple:
    """(processes, batches each prepares ahead, the line that says why or None): ``workers`` loader processes
    ``PREFETCH`` batches ahead, fewer where /dev/shm (``free`` bytes, read there if not given) has no room for
    their batches: a container's default 64 MB holds two 128-image batches, and a worker that finds no room
    is killed by SIGBUS ("DataLoader worker ... killed by signal: Bus error"). First one batch ahead, then
    fewer processes, then none (the main process reads)."""
    if workers == 0:
        return 0, PREFETCH, None
    if free is None:
        try:
            free = shutil.disk_usage(SHARED_MEMORY).free
        except OSError:  # no /dev/shm (not Linux): torch shares another way
            return workers, PREFETCH, None
    per_batch = max(batch, 1) * image_bytes

    # the batches in flight, and the one being handed over
    def need(processes: int, ahead: int) -> int:
        return (processes * ahead + 1) * per_batch

    if need(workers, PREFETCH) <= free:
        return workers, PREFETCH, None
    processes = min(workers, max(0, free // per_batch - 1))  # one batch ahead each
    mb = 2**20
    line = (
        f"{SHARED_MEMORY} has {free / mb:,.0f} MB free, and {workers} loader processes {PREFETCH} batches ahead "
        f"need about {need(workers, PREFETCH) / mb:,.0f} MB there ({per_batch / mb:,.1f} MB a batch): "
        + (
            f"{processes} {'process' if processes == 1 else 'processes'}, 1 batch ahead"
            if processes
            else "the main process reads the batches itself"
        )
        + f"; more room (docker run --shm-size={max(1, -(-need(workers, PREFETCH) * 2 // 2**30))}g; NCCL "
        "needs /dev/shm too) keeps them all"
    )
    return processes, 1, line


def _fitted(workers: int, batch: int, image_bytes: int) -> tuple:
    """fit_to_shared_memory, its line said once a process (logging's warning)."""
    processes, ahead, line = fit_to_shared_memory(workers, batch, image_bytes)
    if line is not None and line not in _said:
        _said.add(line)
        _logger.warning(line)
    return processes, ahead


def decode_where(choice: str, device) -> str:
    """--decode: "workers" (the loader's processes, on the CPU) or "device" (batched on the net's device);
    auto: the device on a GPU (nvjpeg), the workers elsewhere."""
    if choice not in DECODE_CHOICES:
        raise ValueError(f"unknown --decode {choice!r}: choose one of {', '.join(DECODE_CHOICES)}")
    if choice == "auto":
        return "device" if torch.device(device).type == "cuda" else "workers"
    return choice


class _Batches(torch.utils.data.Dataset):
    """dataset[list of indices] -> one whole batch (or, ``encoded``, its undecoded bytes); bad files are
    reported, never raised, in workers."""

    def __init__(self, split: Split, encoded: bool = False):
        self.split, self.encoded = split, encoded

    def __getitem__(self, indices):
        return (
            self.split.encoded(indices) if self.encoded else self.split.batch(indices, strict=False)
        )


class _PoolBatches(torch.utils.data.Dataset):
    """dataset[(split's name, list of indices)] -> that split's batch, as :class:`_Batches` gives it."""

    def __init__(self, batches: dict):
        self.batches = batches

    def __getitem__(self, item):
        name, indices = item
        return self.batches[name][indices]


class _Plan(torch.utils.data.Sampler):
    """The (split's name, indices) a pool's workers read next: set before each pass (an epoch, an evaluation)."""

    def __init__(self):
        self.items: list = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class WorkerPool:
    """One set of loader processes for a whole run: every epoch's and every evaluation's batches of ``splits``
    (name -> Split), read by the same workers (DataLoader's persistent workers). A new DataLoader for each
    pass would start its processes again each time: on a GPU that costs seconds an epoch (and an evaluation)
    while the GPU waits. Close it (or use it in a ``with``) to end the processes."""

    def __init__(
        self, splits: dict, workers: int, device=None, decode: str = "workers", batch: int = 128
    ):
        if workers < 1:
            raise ValueError(f"a worker pool needs at least 1 worker, not {workers}")
        self.workers, self.splits = workers, dict(splits)
        self.device = None if device is None else torch.device(device)
        self.encoded = {
            name: _decodes_on_device(split, decode, self.device) for name, split in splits.items()
        }
        self._plan = _Plan()
        batches = {name: _Batches(split, self.encoded[name]) for name, split in splits.items()}
        self.loader = _data_loader(
            _PoolBatches(batches), self._plan, workers, self.device, persistent=True, batch=batch,
            encoded=all(self.encoded.values()),
        )  # fmt: skip

    def name_of(self, split: Split):
        """The pool's name for ``split`` (the very object), or None."""
        return next((name for name, held in self.splits.items() if held is split), None)

    def pass_over(self, name: str, batches: list) -> "_Pass":
        return _Pass(self, name, batches)

    def close(self) -> None:
        """End the worker processes (the DataLoader's iterator holds them)."""
        self.loader = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Pass:
    """One pass of a pool's workers over these batches of one split: iterable once, as a DataLoader is."""

    def __init__(self, pool: WorkerPool, name: str, batches: list):
        self.pool, self.name, self.batches = pool, name, batches

    def __iter__(self):
        if self.pool.loader is None:
            raise RuntimeError("the worker pool was closed")
        self.pool._plan.items = [(self.name, b) for b in self.batches]
        return iter(self.pool.loader)


def _data_loader(
    dataset, sampler, workers: int, device, persistent: bool = False, batch: int = 0, encoded=False
):
    """The DataLoader of whole batches (``dataset[indices]``, in ``sampler``'s order) read by ``workers``
    processes, pinned on the way to a GPU; ``persistent``: its processes serve every pass (WorkerPool).
    ``batch`` images a batch (``encoded``: JPEG bytes): the processes and how far ahead they read fitted to
    /dev/shm (fit_to_shared_memory)."""
    workers, ahead = _fitted(workers, batch, ENCODED_BYTES if encoded else IMAGE_BYTES)
    return torch.utils.data.DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        collate_fn=_as_is,
        num_workers=workers,
        pin_memory=device is not None and device.type == "cuda",
        persistent_workers=persistent and workers > 0,
        prefetch_factor=ahead if workers else None,
        worker_init_fn=_leave_signals_to_the_main_process if workers else None,
    )


def _decodes_on_device(split: Split, decode: str, device) -> bool:
    return decode_where(decode, device or "cpu") == "device" and split.defers_decoding


def _as_is(batch):
    return batch


def _leave_signals_to_the_main_process(worker_id: int) -> None:
    """A SIGTERM or Ctrl-C sent to the whole process group (a scheduler's, a terminal's) reaches the workers
    too; the main process answers it with a checkpoint at the step (signals.py), which needs them alive.
    They end with the main process either way (the DataLoader watches its parent)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class BatchLoader:
    """Iterate (uint8 images, labels) over one epoch of ``split``; ``skipped`` lists the files left out.
    With ``device`` they arrive there (see the module's note; pinned on the way to a GPU); ``decode`` is
    :func:`decode_where`'s answer."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        workers: "int | WorkerPool" = 0,
        strict: bool = False,
        start_batch: int = 0,
        rank: int = 0,
        world: int = 1,
        device=None,
        decode: str = "workers",
    ):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not one of {world} processes")
        self.split, self.strict, self.rank, self.world = split, strict, rank, world
        self.device = None if device is None else torch.device(device)
        self.decode_on_device = _decodes_on_device(split, decode, self.device)
        self.batches = epoch_order(len(split), batch_size, seed, epoch, shuffle, drop_last)[
            start_batch:
        ]
        self.skipped: list = []
        shares = [b[rank::world] for b in self.batches]
        pool = workers if isinstance(workers, WorkerPool) else None
        name = pool.name_of(split) if pool is not None else None
        if name is not None:  # the run's workers, already started (and the pool's way of decoding)
            self.decode_on_device = pool.encoded[name]
            self.loader = pool.pass_over(name, shares)
            return
        workers = pool.workers if pool is not None else workers
        self.loader = _data_loader(
            _Batches(split, encoded=self.decode_on_device), shares, workers, self.device,
            batch=max((len(b) for b in shares), default=0), encoded=self.decode_on_device,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.batches)

    def _stage(self, batch):
        """One batch from the workers -> (images, labels, skipped) on the device: decoded there, or copied."""
        if self.decode_on_device:
            batch = decode_jpegs(*batch, device=self.device or "cpu", strict=False)
        images, labels, skipped = batch
        if self.device is not None:
            images, labels = (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
            )
        return images, labels, skipped

    def _staged(self) -> Iterator[tuple]:
        """The batches, staged; on a GPU each one's copy (or decode) is queued on a side stream before the
        previous one is handed over, so it travels while that one's step runs."""
        if self.device is None or self.device.type != "cuda":
            yield from map(self._stage, self.loader)
            return
        side, pending = torch.cuda.Stream(self.device), None
        for batch in self.loader:
            with torch.cuda.stream(side):
                staged = self._stage(batch)
                ready = torch.cuda.Event()
                ready.record(side)
            if pending is not None:
                yield self._hand_over(*pending)
            pending = staged, ready
        if pending is not None:
            yield self._hand_over(*pending)

    def _hand_over(self, staged: tuple, ready) -> tuple:
        """The compute stream waits for the side stream's work on this batch (and no later one's), and the
        tensors are marked as used there, so their memory is not reused while the step reads them."""
        current = torch.cuda.current_stream(self.device)
        current.wait_event(ready)
        for tensor in staged[:2]:
            tensor.record_stream(current)
        return staged

    def global_batches(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(size of the global batch, this process's images, labels) for every batch, even an empty share:
        data-parallel processes must all take every step."""
        for indices, (images, labels, skipped) in zip(self.batches, self._staged()):
            if skipped and self.strict:
                raise BadImageError(*skipped[0])
            self.skipped += skipped
            yield len(indices), images, labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _, images, labels in self.global_batches():
            if len(labels):
                yield images, labels

    def indexed(self) -> Iterator[tuple[list, torch.Tensor, torch.Tensor]]:
        """(the split's indices of the images, images, labels) of this process's share of every batch: an
        unreadable file has no image, and no index."""
        for indices, (_, images, labels) in zip(self.batches, self.global_batches()):
            share = [int(i) for i in indices[self.rank :: self.world]]
            if len(share) != len(labels):  # files were skipped: which, by the paths they reported
                bad = {path for path, _ in self.skipped}
                share = [i for i in share if self.split.describe(i) not in bad]
            if len(labels):
                yield share, images, labels


def loader_throughput(
    split: Split,
    transform,
    batch_size: int = 128,
    batches: int = 8,
    workers: int = 0,
    device: str = "cpu",
    warmup: int = 1,
    decode: str = "workers",
) -> float:
    """Images per second through loader + training transform (crop, flip, mean, PCA) onto ``device``, as
    training reads them (pinned, staged ahead, ``decode`` where :func:`decode_where` says), in steady state:
    the clock starts once ``warmup`` batches and the ``workers`` x PREFETCH batches the processes prepared
    while the first was awaited are taken, and counts the batches that arrive after it, at least as many as
    were in flight (an epoch of ``split`` repeated where it has fewer images)."""
    in_flight = workers * PREFETCH
    skip, timed = warmup + in_flight, max(batches, in_flight)
    needed = (skip + timed) * batch_size
    if len(split) < needed:
        split = split.subset(np.resize(np.arange(len(split)), needed))
    generator = torch.Generator().manual_seed(0)
    loader = BatchLoader(
        split, batch_size, workers=workers, shuffle=True, device=device, decode=decode
    )
    seen, start = 0, None
    for step, (images, _) in enumerate(loader):
        out = transform.train(images, generator)
        if out.is_cuda:  # the GPU the batch is on, whichever is current
            torch.cuda.synchronize(out.device)
        if start is not None:
            seen += len(images)
        if step == skip - 1:  # the batches prepared before now are taken: the clock starts
            start = time.perf_counter()
        if step + 1 >= skip + timed:
            break
    if start is None or not seen:
        raise ValueError(f"need more than {skip} batches of {batch_size} images to time the loader")
    return seen / (time.perf_counter() - start)
