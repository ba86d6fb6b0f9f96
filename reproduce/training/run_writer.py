"""What a training run writes into its folder, in one place: config.json at the start; after each epoch
checkpoint.pt (and best.pt, a link to the best epoch's), metrics.csv, curves.png and TensorBoard's events;
result.json at the end. Only the main process writes (under torchrun, rank 0); every file is written whole
or not at all (atomic.py).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import List, Optional

from paper_alexnet import checkpoint
from paper_alexnet.atomic import atomic_write
from paper_alexnet.checkpoint import Checkpoint
from paper_alexnet.cli import for_file
from paper_alexnet.engine import EpochProgress
from reproduce.common.figures import plot_curves


@dataclasses.dataclass(frozen=True)
class MetricsRow:
    """One epoch's row of metrics.csv: its fields are the file's columns, in order. Errors are fractions."""

    epoch: int
    lr: float  # the rate the epoch trained at
    train_loss: float
    train_top1_err: float
    val_loss: float
    val_top1_err: float
    val_top5_err: Optional[float]  # None with 5 classes or fewer (metrics.top5_applies)
    images_per_s: float  # training images a second, this process's clock
    seconds: float
    data_wait_s: float  # of which waiting for the loader, to the millisecond: what it means
    skipped_files: int  # unreadable files left out, training and validation

    @classmethod
    def of(cls, epoch: int, lr: float, progress: EpochProgress, val: dict) -> "MetricsRow":
        """The row of an epoch's training ``progress`` and its validation ``val`` (engine.evaluate)."""
        return cls(
            epoch=epoch,
            lr=lr,
            train_loss=progress.loss,
            train_top1_err=progress.top1_err,
            val_loss=val["loss"],
            val_top1_err=val["top1_err"],
            val_top5_err=val["top5_err"],
            images_per_s=progress.seen / max(progress.seconds, 1e-9),
            seconds=progress.seconds,
            data_wait_s=round(progress.data_seconds, 3),
            skipped_files=progress.skipped + val["skipped_files"],
        )

    def as_dict(self) -> dict:
        """The row as checkpoints keep it (and metrics.csv writes it)."""
        return dataclasses.asdict(self)


METRICS = tuple(field.name for field in dataclasses.fields(MetricsRow))  # metrics.csv's header


def write_json(path: str, value: dict) -> None:
    with atomic_write(path) as handle:
        json.dump({k: for_file(v) for k, v in value.items()}, handle, indent=1, default=str)


def write_metrics(path: str, rows: List[dict]) -> None:
    with atomic_write(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRICS)
        writer.writeheader()
        writer.writerows({k: for_file(v) for k, v in row.items()} for row in rows)


class RunWriter:
    """The run folder ``folder``'s files; ``main``: this process writes them (the others only train)."""

    def __init__(self, folder: str, main: bool, title: str, tensorboard: bool = False):
        self.folder, self.main, self.title = folder, main, title
        self.tensorboard = tensorboard
        self._events = None

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def config(self, record: dict) -> None:
        """config.json: the run's settings and what they gave (classes, model, augment, ...)."""
        if self.main:
            os.makedirs(self.folder, exist_ok=True)
            write_json(self.path("config.json"), record)

    def checkpoint(self, ckpt: Checkpoint) -> None:
        """checkpoint.pt (a run stopped mid-epoch: its step)."""
        if self.main:
            checkpoint.save(self.path("checkpoint.pt"), ckpt)

    def epoch(self, rows: List[dict], ckpt: Checkpoint, improved: bool) -> None:
        """After an epoch: its checkpoint (best.pt too when it improved), metrics.csv, curves and events."""
        if not self.main:
            return
        self.checkpoint(ckpt)
        if improved:  # the same bytes: a link, not a second 0.65 GB write
            checkpoint.share(self.path("checkpoint.pt"), self.path("best.pt"))
        write_metrics(self.path("metrics.csv"), rows)
        plot_curves(rows, self.path("curves.png"), self.title)
        if self.tensorboard:
            self._scalars(rows[-1])

    def _scalars(self, row: dict) -> None:
        if self._events is None:
            from torch.utils.tensorboard import SummaryWriter

            self._events = SummaryWriter(self.path("tb"))
        for key in METRICS[1:]:
            if row[key] is not None:
                self._events.add_scalar(key, row[key], row["epoch"])
        self._events.flush()

    def unreadable(self, files: List[tuple]) -> str:
        """unreadable.csv: every file the run left out, with why (rewritten as more are met)."""
        if self.main:
            with atomic_write(self.path("unreadable.csv"), newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(("split", "path", "reason"))
                writer.writerows(files)
        return self.path("unreadable.csv")

    def result(self, result: dict) -> None:
        if self.main:
            write_json(self.path("result.json"), result)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None

    def best(self) -> Optional[Checkpoint]:
        """best.pt, as written (every process reads it: call after a barrier)."""
        return checkpoint.load(self.path("best.pt"))
