"""One epoch of training (§5) and one evaluation (§4.1 test crops, §6 errors).

The loop is the paper's: minibatches of augmented crops, cross-entropy, one
optimiser step per batch. It works the same on CPU and GPU and under
DistributedDataParallel, where each process takes its rows of the same global
batch (and the same random augmentation draws), so that N processes compute
what one would on the whole batch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .data import BatchLoader, PaperTransform
from .data.transforms import FLIP_CROPS
from .data.mixing import Mixing, mix_images, mix_targets
from .data.splits import Split
from .backends import Readback, sent, sync_allowed
from .distributed import sum_in_place
from .ema import WeightAverage
from .metrics import Predictions, top5_applies, topk_hits


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: training stops, the last good checkpoint stays."""


@dataclasses.dataclass
class EpochProgress:
    """One epoch's training so far: the batches done and the running sums behind its metrics. A run stopped
    mid-epoch saves it in its checkpoint (checkpoint.Checkpoint.progress) and the resumed run continues it,
    so the epoch's row in metrics.csv is the one an uninterrupted run writes."""

    steps: int = 0  # global batches done
    loss_sum: float = 0.0  # summed cross-entropy over the images seen
    correct: int = 0  # top-1 hits
    seen: int = 0  # images
    seconds: float = 0.0  # training time (this process)
    data_seconds: float = 0.0  # of which waiting for the loader's next batch: a loader bottleneck
    skipped: int = 0  # unreadable files left out
    stopped: bool = False  # the epoch ended early because ``stop`` asked for it

    @property
    def loss(self) -> float:
        """The mean training loss over the images seen."""
        return self.loss_sum / max(self.seen, 1)

    @property
    def top1_err(self) -> float:
        return 1 - self.correct / max(self.seen, 1)


@dataclasses.dataclass(frozen=True)
class StepTools:
    """What each training step computes besides §5's cross-entropy step; none of it the paper's, each off by
    default (docs/deviations.md)."""

    mixing: Optional[Mixing] = None  # mixup/CutMix (data/mixing.py)
    label_smoothing: float = 0.0  # eps
    # the weights' moving average, updated after every step (ema.py)
    average: Optional[WeightAverage] = None


@dataclasses.dataclass(frozen=True)
class StepPlace:
    """Where and how each training step runs: the device, its layout and bfloat16 autocast; this process's
    rows of the global batch (``rank`` of ``world``); dropout's seed at each step; the stop vote."""

    device: torch.device
    amp: bool = False
    channels_last: bool = False
    rank: int = 0
    world: int = 1
    seed: Optional[Callable[[int], int]] = None  # step -> torch's seed before it (§4.2's masks)
    stop: Optional[Callable[[], bool]] = None


def train_one_epoch(
    model: torch.nn.Module,
    loader: BatchLoader,
    transform: PaperTransform,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    place: StepPlace,
    tools: StepTools = StepTools(),
    *,
    progress: Optional[EpochProgress] = None,
    on_step: Optional[Callable[[int, float, int, int], None]] = None,
) -> EpochProgress:
    """Train over ``loader`` (global batches, this process's rows), continuing ``progress`` (a fresh epoch by
    default; the loader then starts at its ``steps``); returns it with the loss, top-1 hits and images of the
    whole global batches, and this process's seconds.

    Each process draws the augmentation of the whole global batch (same generator, same draws) and
    applies its rows' share; its loss is its rows' summed loss scaled so that DDP's gradient average
    is the gradient of the mean loss over the global batch. ``place.seed(step)`` seeds torch's RNG (dropout,
    §4.2) before each step, so that a run resumed at any step draws the masks an uninterrupted one draws.
    ``on_step(step, loss, hits, images)`` hears each step's mean loss and top-1 hits of the global batch.
    ``place.stop()`` is asked before each step's sums are shared (and, with one process, again after the step);
    when any process says yes, every process ends the epoch after that same step (``progress.stopped``).

    ``tools`` (StepTools): ``mixing`` blends the batch (the loss is then against the blended targets, the top-1
    hits against the images' own labels); ``label_smoothing`` eps trains on (1 - eps) of the label plus eps
    spread over the classes; ``average`` is updated after every step.
    """
    model.train()
    device, rank, world, stop = place.device, place.rank, place.world, place.stop
    mixing, average = tools.mixing, tools.average
    progress = progress if progress is not None else EpochProgress()
    readback = Readback()
    start = waited = time.perf_counter()
    for count, images, labels in loader.global_batches():
        progress.data_seconds += time.perf_counter() - waited
        step = progress.steps
        if place.seed is not None:
            torch.manual_seed(place.seed(step))
        draw = transform.draw(count, generator, images.shape[-1])
        x = transform.apply(images, draw, slice(rank, None, world))
        y = labels.to(device)
        blend = mixing.draw(generator, x.shape[-1]) if mixing is not None else None
        x = mix_images(x, blend)
        if place.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=place.amp):
            logits = model(x)
        target = mix_targets(y, logits.shape[1], blend)
        local = F.cross_entropy(
            logits.float(), target, reduction="sum", label_smoothing=tools.label_smoothing
        )
        hits = topk_hits(logits.detach().float(), y, (1,))[1]
        # the step's figures, summed over the processes on the device: images, the stop vote, loss, top-1 hits
        asked = torch.tensor([len(y), float(bool(stop and stop()))], dtype=torch.float64)
        sums = sum_in_place(
            torch.cat([sent(asked, device), local.detach().double().view(1), hits.double().view(1)])
        )
        # The step's one readback, queued before the backward: the host waits for the forward and these sums,
        # not for the backward, which the GPU runs while the host checks them and queues the optimiser step and
        # the next batch. The non-finite check still comes before the weights move, and every process stops
        # after the same step (the vote is in the sums).
        readback.start(sums)
        optimizer.zero_grad(set_to_none=True)
        (local * (world / sums[0].clamp_min(1)).to(local.dtype)).backward()
        total, stops, value, hits = readback.values()
        if not math.isfinite(value):
            raise NonFiniteLoss(
                f"the training loss became {value / max(total, 1)} at step {step + 1} of the epoch"
            )
        optimizer.step()
        if average is not None:
            average.update()
        progress.steps += 1
        progress.loss_sum, progress.correct, progress.seen = (
            progress.loss_sum + value,
            progress.correct + int(hits),
            progress.seen + int(total),
        )
        if on_step is not None:
            on_step(step, value / max(total, 1), int(hits), int(total))
        # one process: a signal during this step
        if stops or (world == 1 and stop is not None and stop()):
            progress.stopped = True
            break
        waited = time.perf_counter()
    progress.seconds += time.perf_counter() - start
    progress.skipped += len(loader.skipped)
    return progress


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    split: Split,
    transform: PaperTransform,
    *,
    device: torch.device,
    batch_size: int = 128,
    ten_crop: bool = False,
    flip: bool = False,
    workers: int = 0,
    strict: bool = False,
    amp: bool = False,
    progress: bool = False,
    rank: int = 0,
    world: int = 1,
    decode: str = "workers",
    per_image: bool = False,
) -> dict:
    """§4.1/§6: loss, top-1 and top-5 error on the centre crop, or on the ten crops' averaged softmax (top-5:
    None with 5 classes or fewer, where it is 0 by construction); ``flip`` (not the paper's): on the centre
    crop's and its reflection's. With ten_crop or flip also "flip_top1_err"/"flip_top5_err" (from two of the
    ten crops: no extra pass).
    Under data parallelism each process scores its share of every batch and the sums are combined.
    ``per_image``: also "predictions", a metrics.Predictions of every image scored (every process's)."""
    from tqdm.auto import tqdm

    model.eval()
    loader = BatchLoader(
        split,
        batch_size,
        shuffle=False,
        workers=workers,
        strict=strict,
        rank=rank,
        world=world,
        device=device,
        decode=decode,
    )
    # the sums stay where the scores are, and are read once, after the last batch: loss, top-1 and top-5 hits,
    # and (ten_crop or flip) the centre crop and its reflection's hits
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    seen, classes = 0, None
    kept: list = []  # per_image: (indices, labels, top-5 classes, top-1 probability) of each batch, on the device
    for indices, images, labels in tqdm(
        loader.indexed(),
        desc="ten-crop" if ten_crop else "flip" if flip else "eval",
        unit="batch",
        leave=False,
        disable=not progress,
    ):
        y = labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if ten_crop or flip:
                views = transform.ten_crops(images) if ten_crop else transform.flip_crops(images)
                each = torch.stack([torch.softmax(model(v).float(), dim=1) for v in views])
                probs = each.mean(dim=0)
                flipped = each[list(FLIP_CROPS)].mean(dim=0) if ten_crop else probs
                loss = F.nll_loss(torch.log(probs.clamp_min(1e-12)), y, reduction="sum")
                flip_hits = list(topk_hits(flipped, y, (1, 5)).values())
                scores = probs
            else:
                scores = model(transform.center(images)).float()
                loss = F.cross_entropy(scores, y, reduction="sum")
                flip_hits = []
        classes = scores.shape[1]
        batch_hits = topk_hits(scores, y, (1, 5))
        values = [loss, batch_hits[1], batch_hits[5], *flip_hits]
        sums[: len(values)] += torch.stack([v.double() for v in values])
        seen += len(y)
        if per_image:
            probs = scores if ten_crop or flip else torch.softmax(scores, dim=1)
            top = probs.topk(min(5, classes), dim=1)
            kept.append((indices, y, top.indices, top.values[:, 0]))
    # every process's sums at once (on the GPU NCCL sums on), read back once
    counts = sent(torch.tensor([seen, len(loader.skipped)], dtype=torch.float64), device)
    with sync_allowed():
        loss_sum, hit1, hit5, flip1, flip5, seen, skipped = sum_in_place(
            torch.cat([sums, counts])
        ).tolist()
    if per_image and kept:  # one copy to the host for the whole split, as one batch
        labels, top, prob = (torch.cat([b[k] for b in kept]) for k in (1, 2, 3))
        rows = torch.cat([labels.view(-1, 1).double(), top.double(), prob.view(-1, 1).double()], 1)
        with sync_allowed():
            host = rows.cpu()
        index = [i for b in kept for i in b[0]]
        kept = [(index, host[:, 0].long(), host[:, 1:-1].long(), host[:, -1].float())]
    extra = (
        {"predictions": Predictions.gather(kept, len(split), classes, world)} if per_image else {}
    )
    n = max(seen, 1)
    fives = classes is None or top5_applies(classes)  # top-5 is n/a with <= 5 classes
    top5 = 1 - hit5 / n if fives else None
    if ten_crop or flip:
        extra["flip_top1_err"] = 1 - flip1 / n
        extra["flip_top5_err"] = 1 - flip5 / n if fives else None
    return {
        **extra,
        "loss": loss_sum / n,
        "top1_err": 1 - hit1 / n,
        "top5_err": top5,
        "images": int(seen),
        "skipped_files": int(skipped),
        "skipped": list(loader.skipped),  # (path, reason) of this process's share
    }
