"""A trained net and its data statistics, back from a checkpoint: for evaluate, predict and visualize."""

from __future__ import annotations

import sys
from typing import Optional

import numpy as np
import torch

from paper_alexnet.data import DataSet, DataStats, open_dataset
from paper_alexnet.networks import get_network
from reproduce.args import UsageError
from reproduce.placement import Placement, build_placed


def restore_model(payload: dict, num_classes: int, placement: Placement) -> torch.nn.Module:
    """The checkpoint's net (its variant and init) with its weights, in eval mode, placed as asked."""
    config = get_network(payload["variant"], num_classes=num_classes, init=payload.get("init", "paper"))
    model = build_placed(config, placement)       # either layout loads the one (grouped) checkpoint format
    model.load_state_dict(payload["model"])
    return model.eval()


def restore_stats(payload: dict, dataset: Optional[DataSet] = None) -> DataStats:
    """The §2 mean image and §4.1 PCA the net was trained with: saved in the checkpoint, or (older
    checkpoints) recomputed from the training split of ``dataset`` or of the data the checkpoint names."""
    if "stats" in payload:
        saved = payload["stats"]
        return DataStats(saved["mean_image"].numpy().astype(np.float32), saved["eigval"].numpy(),
                         saved["eigvec"].numpy(), pca_source=saved.get("pca_source", "training set"))
    report = lambda line: print(line, file=sys.stderr)  # noqa: E731
    if dataset is None:
        if not payload.get("data"):
            raise UsageError("the checkpoint holds no data statistics and names no data: give --data SPEC")
        dataset = open_dataset(payload["data"], report=report)
    return dataset.stats(report=report)
