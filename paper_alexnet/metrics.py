"""§6: errors as the paper reports them, top-1 and top-5 (the fraction of images whose true label
is not among the k highest-scoring classes)."""

from __future__ import annotations

from typing import Sequence

import torch


def topk_correct(
    scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, int]:
    """{k: number of rows whose label is among the k largest scores}; k is capped at the class count."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hit = top == labels.view(-1, 1)
    return {k: int(hit[:, :k].any(dim=1).sum()) for k in ks}


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
