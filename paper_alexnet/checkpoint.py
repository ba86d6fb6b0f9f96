"""The checkpoint: what a trained or training net is, on disk, in one versioned format.

This module is the only writer and the only reader of checkpoint files. A file
is a plain dict of tensors, numbers and strings (it loads with
``torch.load(weights_only=True)``, so opening one runs no code), holding the
fields of :class:`Checkpoint` and ``format = "paper_alexnet.checkpoint/N"``.

Format history (``upgrade`` reads every older one):

- 1 (no ``format`` field; written up to 0.1.0 before this module): the same
  fields less ``step``/``progress``; the oldest lack ``stats``, ``init``,
  ``two_tower``.
- 2: ``format``; ``step`` and ``progress``, so that a run stopped by a signal
  mid-epoch resumes at the very next batch; ``origin`` for converted weights;
  ``augment["resize"]`` ("warp" for BVLC's weights).

A file of a newer format, or not a checkpoint at all, is a :class:`CheckpointError`
with one line for the user.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .atomic import atomic_write, temporary_beside
from .data.stats import DataStats

NAME = "paper_alexnet.checkpoint"
VERSION = 2
FORMAT = f"{NAME}/{VERSION}"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, of a newer format, or of another net."""


@dataclasses.dataclass
class Checkpoint:
    """A net's weights and everything needed to use it (inference) or to continue training it (resume)."""

    # --- the net and what it expects (inference) ---
    model: Dict[str, torch.Tensor]  # the grouped layout's state dict (two_tower.py)
    variant: str  # get_network name, switches included, e.g. paper+no-lrn
    classes: List[str]  # fc8's outputs, in order
    augment: Dict[str, Any]  # data.Augment's fields: crop, mean mode, scale, ...
    init: str = "paper"  # ArchConfig.init (§5 or "he"): rebuilds the same net
    stats: Optional[Dict[str, Any]] = None  # §2 mean image and §4.1 PCA (see data_stats)
    data: Optional[str] = None  # the data spec it was trained on
    two_tower: bool = False  # trained with --two-gpu (resume the same way)
    # --- where training stands (resume) ---
    # --ema: ``model`` is the weights' average (what is scored) and this the weights the optimiser steps
    trained: Optional[Dict[str, torch.Tensor]] = None
    epoch: int = 0  # epochs finished
    step: int = 0  # batches of epoch + 1 done: > 0 after a stop mid-epoch
    best_val_top1_err: float = math.inf
    # metrics.csv's rows so far
    metrics: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    optimizer: Optional[Dict[str, Any]] = None
    schedule: Optional[Dict[str, Any]] = None
    rng: Dict[str, Any] = dataclasses.field(default_factory=dict)  # generator states by name
    progress: Optional[Dict[str, Any]] = None  # the unfinished epoch's running sums (step > 0)
    # --- where the weights came from when not trained here (reproduce.convert): source, sha1, format ---
    origin: Optional[Dict[str, Any]] = None

    def data_stats(self) -> Optional[DataStats]:
        """The §2 mean image and §4.1 PCA the net was trained with, or None (the oldest files lack them)."""
        if self.stats is None:
            return None
        saved = self.stats
        return DataStats(
            saved["mean_image"].numpy().astype(np.float32),
            saved["eigval"].numpy(),
            saved["eigvec"].numpy(),
            pca_source=saved.get("pca_source", "training set"),
        )

    @staticmethod
    def stats_entry(stats: DataStats) -> Dict[str, Any]:
        """What ``stats`` holds, as the checkpoint stores it (tensors, so that weights_only loading reads it)."""
        return {
            "mean_image": torch.as_tensor(stats.mean_image),
            "eigval": torch.as_tensor(stats.eigval),
            "eigvec": torch.as_tensor(stats.eigvec),
            "pca_source": stats.pca_source,
        }

    def weights_only(self) -> "Checkpoint":
        """The same net for inference, without what only resuming needs (the optimiser's state: for Adam twice
        the weights' size, 0.45 GB for the paper net)."""
        return dataclasses.replace(
            self, optimizer=None, schedule=None, rng={}, progress=None, step=0, trained=None
        )

    def payload(self) -> Dict[str, Any]:
        """The dict written to disk (fields by reference: no copy of the weights)."""
        return {
            "format": FORMAT,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
        }


def _version(payload: dict, path: str) -> int:
    """The format version of a loaded dict; CheckpointError when it is not a checkpoint or is too new."""
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{path} is not a paper_alexnet checkpoint (it holds a {type(payload).__name__})"
        )
    tag = payload.get("format")
    if tag is None:
        if "model" in payload and "variant" in payload:
            return 1
        raise CheckpointError(
            f"{path} is not a paper_alexnet checkpoint (no 'format' or 'model' entry)"
            + (
                ": it looks like a bare state dict"
                if all(isinstance(v, torch.Tensor) for v in payload.values())
                else ""
            )
        )
    return format_version(tag, path)


def format_version(tag, path: str, name: str = NAME, version: int = VERSION) -> int:
    """N of a format tag "name/N" that this package reads (1..version), else a CheckpointError: a file of
    another format, or of a newer one."""
    found, _, number = str(tag).rpartition("/")
    if found != name or not number.isdigit():
        raise CheckpointError(
            f"{path} has an unknown format {tag!r} (this version reads {name}/1..{version})"
        )
    if int(number) > version:
        raise CheckpointError(
            f"{path} is of format {tag}, newer than this paper_alexnet reads ({name}/{version}): "
            f"upgrade paper_alexnet to use it"
        )
    return int(number)


def upgrade(payload: dict, version: int) -> dict:
    """The one compatibility function: the fields of an older format as the current format has them."""
    fields = {f.name for f in dataclasses.fields(Checkpoint)}
    payload = {k: v for k, v in payload.items() if k in fields}
    if version < 2:
        # the oldest files: classes, augment and rng not yet saved
        payload.setdefault("classes", [])
        payload.setdefault("augment", {})
        payload["step"], payload["progress"] = 0, None
    return payload


def _read(path: str, what: str) -> Any:
    """The file's payload. Mapped, not read, where it can be (POSIX, torch.save's zip format): a 0.45-0.65 GB
    paper-net file then loads into a net in 0.07 s against 0.35-0.42 s read into fresh memory (measured on the
    project's CPU), and only the pages used are ever read. The mapping is private, so a tensor written to is
    copied, never the file; a run replaces its files by renaming a new one into place (atomic.py), so a
    mapped file stays whole. Windows cannot rename over a mapped file, and the pre-1.6 format is not a zip:
    those are read as before."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        mapped = os.name == "posix" and zipfile.is_zipfile(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        reason = (str(err).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(
            f"{what} {path} is unreadable or corrupt: not a PyTorch file, or truncated "
            f"({type(err).__name__}: {reason})"
        ) from None


def _from_payload(payload: Any, path: str) -> Checkpoint:
    try:
        return Checkpoint(**upgrade(payload, _version(payload, path)))
    except TypeError as err:
        raise CheckpointError(f"{path} is a damaged checkpoint ({err})") from None


def load(path: str) -> Checkpoint:
    """A checkpoint file of any format up to this one, or a shared folder (shared.py: safetensors, no
    pickle), or a CheckpointError in one line."""
    if os.path.isdir(path):
        from . import shared

        return shared.read(path)
    return _from_payload(_read(path, "checkpoint"), path)


def save(path: str, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` whole or not at all (atomic.py): a failure leaves the previous file as it was
    and raises atomic.WriteError naming ``path``."""
    with atomic_write(path, "wb") as handle:
        torch.save(checkpoint.payload(), handle)


def share(source: str, path: str) -> None:
    """Make ``path`` hold what ``source`` holds now, atomically: a hard link (no second write of a 0.65 GB
    file), or a copy where links are impossible. ``source`` is later replaced by a rename, never rewritten
    in place, so ``path`` keeps this version."""
    tmp = temporary_beside(path)
    os.remove(tmp)  # the name is ours; the link takes it
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, path)


def read_weights(path: str, what: str = "weights file") -> Dict[str, torch.Tensor]:
    """The state dict in ``path``: a checkpoint's weights, or a bare state dict (torchvision's file)."""
    return read_trained(path, what)[0]


def read_trained(
    path: str, what: str = "weights file"
) -> Tuple[Dict[str, torch.Tensor], Optional[dict]]:
    """The state dict in ``path`` and the input it was trained on (the checkpoint's ``augment``; None for a bare
    state dict)."""
    if os.path.isdir(path):  # a shared folder (shared.py)
        trained = load(path)
        return trained.model, trained.augment
    payload = _read(path, what)
    if (
        isinstance(payload, dict)
        and payload
        and all(isinstance(v, torch.Tensor) for v in payload.values())
    ):
        return payload, None
    trained = _from_payload(payload, path)
    return trained.model, trained.augment
