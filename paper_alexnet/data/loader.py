"""Batches of uint8 §2 patches, in a seeded order, from any :class:`~.splits.Split`.

The order of epoch ``e`` depends only on (seed, e), so a resumed run sees the
same batches as an uninterrupted one. Under data parallelism (``rank`` of
``world`` processes) every process walks the same global batches and reads
only its rows of each (rank, rank + world, ...). Files that cannot be read are left out
of their batch and counted (``BatchLoader.skipped``); with ``strict`` the first
one stops the run with its path and reason.
"""

from __future__ import annotations

import signal
import time
from typing import Iterator

import numpy as np
import torch

from .images import BadImageError
from .splits import Split


def epoch_order(count: int, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                drop_last: bool = False) -> list[np.ndarray]:
    """The index batches of one epoch: a permutation seeded by (seed, epoch), cut into batches."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")
    order = np.random.default_rng([seed, epoch]).permutation(count) if shuffle else np.arange(count)
    stop = count - count % batch_size if drop_last else count
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


class _Batches(torch.utils.data.Dataset):
    """dataset[list of indices] -> one whole batch; bad files are reported, never raised, in workers."""

    def __init__(self, split: Split):
        self.split = split

    def __getitem__(self, indices):
        return self.split.batch(indices, strict=False)


def _as_is(batch):
    return batch


def _leave_signals_to_the_main_process(worker_id: int) -> None:
    """A SIGTERM or Ctrl-C sent to the whole process group (a scheduler's, a terminal's) reaches the workers
    too; the main process answers it with a checkpoint at the step (signals.py), which needs them alive.
    They end with the main process either way (the DataLoader watches its parent)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class BatchLoader:
    """Iterate (uint8 images, labels) over one epoch of ``split``; ``skipped`` lists the files left out."""

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                 drop_last: bool = False, workers: int = 0, strict: bool = False, start_batch: int = 0,
                 pin_memory: bool = False, rank: int = 0, world: int = 1):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not one of {world} processes")
        self.split, self.strict = split, strict
        self.batches = epoch_order(len(split), batch_size, seed, epoch, shuffle, drop_last)[start_batch:]
        self.skipped: list = []
        self.loader = torch.utils.data.DataLoader(
            _Batches(split), sampler=[b[rank::world] for b in self.batches], batch_size=None, collate_fn=_as_is,
            num_workers=workers, pin_memory=pin_memory, persistent_workers=False,
            prefetch_factor=2 if workers else None,
            worker_init_fn=_leave_signals_to_the_main_process if workers else None)

    def __len__(self) -> int:
        return len(self.batches)

    def global_batches(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(size of the global batch, this process's images, labels) for every batch, even an empty share:
        data-parallel processes must all take every step."""
        for indices, (images, labels, skipped) in zip(self.batches, self.loader):
            if skipped and self.strict:
                raise BadImageError(*skipped[0])
            self.skipped += skipped
            yield len(indices), images, labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _, images, labels in self.global_batches():
            if len(labels):
                yield images, labels


def loader_throughput(split: Split, transform, batch_size: int = 128, batches: int = 8, workers: int = 0,
                      device: str = "cpu", warmup: int = 1) -> float:
    """Images per second through loader + training transform (crop, flip, mean, PCA) onto ``device``."""
    generator = torch.Generator().manual_seed(0)
    loader = BatchLoader(split, batch_size, workers=workers, shuffle=True)
    seen, start = 0, None
    for step, (images, _) in enumerate(loader):
        if step == warmup:
            start, seen = time.perf_counter(), 0
        out = transform.train(images.to(device), generator)
        if out.is_cuda:
            torch.cuda.synchronize()
        seen += len(images)
        if step + 1 >= warmup + batches:
            break
    if start is None:
        raise ValueError(f"need more than {warmup} batches of {batch_size} images to time the loader")
    return seen / (time.perf_counter() - start)
