"""One epoch of training (§5) and one evaluation (§4.1 test crops, §6 errors), and checkpoints.

The loop is the paper's: minibatches of augmented crops, cross-entropy, one
optimiser step per batch. It works the same on CPU and GPU and under
DistributedDataParallel, where each process takes its rows of the same global
batch (and the same random augmentation draws), so that N processes compute
what one would on the whole batch.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .data import BatchLoader, PaperTransform, average_softmax
from .data.splits import Split
from .distributed import all_sum
from .metrics import topk_correct


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: training stops, the last good checkpoint stays."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or of another net."""


def train_one_epoch(model: torch.nn.Module, loader: BatchLoader, transform: PaperTransform,
                    optimizer: torch.optim.Optimizer, generator: torch.Generator, *, device: torch.device,
                    amp: bool = False, channels_last: bool = False, rank: int = 0, world: int = 1,
                    on_step: Optional[Callable[[int, float], None]] = None) -> dict:
    """Train over ``loader`` (global batches, this process's rows); returns the loss, top-1 error and
    images of the whole global batches, and this process's seconds.

    Each process draws the augmentation of the whole global batch (same generator, same draws) and
    applies its rows' share; its loss is its rows' summed loss scaled so that DDP's gradient average
    is the gradient of the mean loss over the global batch.
    """
    model.train()
    loss_sum, correct, seen, start = 0.0, 0, 0, time.perf_counter()
    for step, (count, images, labels) in enumerate(loader.global_batches()):
        draw = transform.draw(count, generator, images.shape[-1])
        x = transform.apply(images, draw, slice(rank, None, world))
        y = labels.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        local = F.cross_entropy(logits.float(), y, reduction="sum")
        hits = topk_correct(logits.detach().float(), y, (1,))[1]
        total, value, hits = all_sum([len(y), float(local.detach()), hits])
        if not math.isfinite(value):
            raise NonFiniteLoss(f"the training loss became {value / max(total, 1)} at step {step + 1} of the epoch")
        optimizer.zero_grad(set_to_none=True)
        (local * (world / max(total, 1))).backward()
        optimizer.step()
        loss_sum, correct, seen = loss_sum + value, correct + hits, seen + int(total)
        if on_step is not None:
            on_step(step, value / max(total, 1))
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum / max(seen, 1), "train_top1_err": 1 - correct / max(seen, 1),
            "images": seen, "seconds": seconds}


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: Split, transform: PaperTransform, *, device: torch.device,
             batch_size: int = 128, ten_crop: bool = False, workers: int = 0, strict: bool = False,
             amp: bool = False, progress: bool = False, rank: int = 0, world: int = 1) -> dict:
    """§4.1/§6: loss, top-1 and top-5 error on the centre crop, or on the ten crops' averaged softmax.
    Under data parallelism each process scores its share of every batch and the sums are combined."""
    from tqdm.auto import tqdm

    model.eval()
    loader = BatchLoader(split, batch_size, shuffle=False, workers=workers, strict=strict, rank=rank, world=world)
    loss_sum, hits, seen = 0.0, {1: 0, 5: 0}, 0
    for images, labels in tqdm(loader, desc="ten-crop" if ten_crop else "eval", unit="batch", leave=False,
                               disable=not progress):
        y = labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if ten_crop:
                probs = average_softmax(model, transform.ten_crops(images)).float()
                loss_sum += float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), y, reduction="sum"))
                scores = probs
            else:
                scores = model(transform.center(images)).float()
                loss_sum += float(F.cross_entropy(scores, y, reduction="sum"))
        for k, v in topk_correct(scores, y, (1, 5)).items():
            hits[k] += v
        seen += len(y)
    loss_sum, hit1, hit5, seen, skipped = all_sum([loss_sum, hits[1], hits[5], seen, len(loader.skipped)])
    n = max(seen, 1)
    return {"loss": loss_sum / n, "top1_err": 1 - hit1 / n, "top5_err": 1 - hit5 / n, "images": int(seen),
            "skipped_files": int(skipped)}


def save_checkpoint(path: str, payload: dict) -> None:
    """Write atomically: a temporary file, then a rename, so a kill never leaves half a checkpoint."""
    tmp = f"{path}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def share_checkpoint(source: str, path: str) -> None:
    """Make ``path`` hold what ``source`` holds now, atomically: a hard link (no second write of the file),
    or a copy where links are impossible. ``source`` is later replaced by a rename, never rewritten in
    place, so ``path`` keeps this version."""
    tmp = f"{path}.tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """A checkpoint as plain tensors and dicts (``weights_only=True``), or a clear CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{path} is not a paper_alexnet checkpoint (no 'model' entry)")
    return payload


def is_stalled(losses: list, num_classes: int, window: int = 20, tolerance: float = 0.05) -> bool:
    """§5's known stall: the last ``window`` losses all within ``tolerance`` (relative) of ln(classes),
    the loss of a net that outputs the uniform distribution."""
    if len(losses) < window:
        return False
    chance = math.log(num_classes)
    return all(abs(value - chance) <= tolerance * chance for value in losses[-window:])
