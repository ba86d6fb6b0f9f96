"""§6: errors as the paper reports them, top-1 and top-5 (the fraction of images whose true label
is not among the k highest-scoring classes)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
import torch


def topk_hits(
    scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, torch.Tensor]:
    """{k: number of rows whose label is among the k largest scores, a tensor where the scores are (no
    readback)}; k is capped at the class count."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hit = top == labels.view(-1, 1)
    return {k: hit[:, :k].any(dim=1).sum() for k in ks}


def topk_correct(
    scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, int]:
    """{k: number of rows whose label is among the k largest scores}; k is capped at the class count."""
    return {k: int(hits) for k, hits in topk_hits(scores, labels, ks).items()}


def topk_errors(
    scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """{k: top-k error rate} of one batch of scores (logits or probabilities)."""
    correct = topk_correct(scores, labels, ks)
    return {k: 1.0 - correct[k] / len(labels) for k in ks}


def top5_applies(num_classes: int) -> bool:
    """Top-5 error says something only with more than 5 classes (with 5 or fewer every label is in the top 5:
    the error is 0 by construction); below that it is reported as n/a (None)."""
    return num_classes > 5


# --- per class: which classes fail, and what they are taken for ------------------------------------------


@dataclasses.dataclass
class Predictions:
    """What the net said about each image it scored: its index in the split, its true label, its top classes
    (best first, up to 5) and the probability of the first (the softmax, or the ten crops' mean of it)."""

    index: np.ndarray  # M
    label: np.ndarray  # M
    top: np.ndarray  # M x min(5, classes)
    prob: np.ndarray  # M

    @classmethod
    def gather(
        cls, batches: list, size: int, classes: Optional[int], world: int = 1
    ) -> "Predictions":
        """From each batch's (indices, labels, top classes, probabilities) of this process; with several
        data-parallel processes every process's rows, summed into rows by split index (``size`` of them)."""
        k = min(5, classes or 5)
        if batches:
            index = np.concatenate([np.asarray(b[0], dtype=np.int64) for b in batches])
            label = torch.cat([b[1] for b in batches]).numpy()
            top = torch.cat([b[2] for b in batches]).numpy()
            prob = torch.cat([b[3] for b in batches]).float().numpy()
        else:
            index, label = np.zeros(0, np.int64), np.zeros(0, np.int64)
            top, prob = np.zeros((0, k), np.int64), np.zeros(0, np.float32)
        if world > 1:
            from .distributed import all_sum

            rows = np.zeros((size, 3 + k))  # scored?, label, probability, top classes
            rows[index] = np.column_stack([np.ones(len(index)), label, prob, top])
            rows = np.asarray(all_sum(rows.ravel().tolist())).reshape(size, 3 + k)
            index = np.flatnonzero(rows[:, 0])
            label, prob = rows[index, 1].astype(np.int64), rows[index, 2].astype(np.float32)
            top = rows[index, 3:].astype(np.int64)
        return cls(index, label, top, prob)

    @property
    def predicted(self) -> np.ndarray:
        return self.top[:, 0]


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """C x C counts: row = the true class, column = the class predicted."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(
        counts, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1
    )
    return counts


def per_class(predictions: Predictions, num_classes: int) -> dict:
    """Per class (arrays of C): images, top1_err, top5_err (None with <= 5 classes), the class most often
    predicted instead (-1 where none) and the share of the class's images that went there; with the
    confusion matrix and the mean of the per-class errors (over the classes that have images)."""
    counts = confusion_matrix(
        predictions.label, predicted=predictions.predicted, num_classes=num_classes
    )
    images = counts.sum(axis=1)
    right = np.diag(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        top1 = np.where(images > 0, 1.0 - right / np.maximum(images, 1), np.nan)
        top5 = None
        if top5_applies(num_classes):
            in5 = (predictions.top == predictions.label[:, None]).any(axis=1)
            hits5 = np.bincount(predictions.label[in5], minlength=num_classes)
            top5 = np.where(images > 0, 1.0 - hits5 / np.maximum(images, 1), np.nan)
    wrong = counts.copy()
    np.fill_diagonal(wrong, 0)
    confused = np.where(wrong.max(axis=1) > 0, wrong.argmax(axis=1), -1)
    share = np.where(confused >= 0, wrong.max(axis=1) / np.maximum(images, 1), 0.0)
    scored = images > 0
    return {
        "confusion": counts,
        "images": images,
        "top1_err": top1,
        "top5_err": top5,
        "confused_with": confused,
        "confused_share": share,
        "mean_top1_err": float(top1[scored].mean()) if scored.any() else float("nan"),
    }
