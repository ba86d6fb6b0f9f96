"""Benchmarks that print figures (never asserted by tests): ``python -m reproduce.bench``.

Sections (``--only``, default: models and data):
  models training images/s (forward + backward + SGD step) and inference images/s of the paper net,
         the two-tower net (§3.2), the paper net with its LRN in torch ops instead of the fused CPU
         kernel (fused_lrn.py), this package's net in torchvision's config, torchvision.models.alexnet
         itself (the peer) and a naive faithful reference (torch's LocalResponseNorm with alpha*n per
         tower, grouped convs), at one batch size and thread count, median of repetitions after
         warm-up; ratios, achieved GFLOP/s against a matrix-multiply peak measured in the same run
         (the faster of torch.mm's and oneDNN's on a CPU), which way each net's LRN ran, and
         training memory. Every repetition times each net once in turn (the order turning by one net
         each time); a ratio is the median of the repetitions' ratios, so that a slow moment of a
         shared machine, which slows neighbours in time alike, cancels, with a 95% interval for that
         median (``*_low``/``*_high``).
  data   the loader's images/s into the training transform (§2/§4.1 crop, flip, mean image, PCA
         lighting), from a raw store, a JPEG store (prepare --format jpeg) and a folder of
         ImageNet-sized JPEGs, made in a temporary folder from the synthetic set; the JPEG store
         decoded in the loader's workers and on the device (--decode); the transform alone, one
         image at a time and one gather per batch; the stores' bytes per image, and the JPEG
         store's speed against the folder's.
  prepare  what prepare costs an image on one core (decode + resize, write, the statistics' moments) on
         500x375 JPEGs of quality 90 (generated, or cut from photographs: --photos), and prepare and the
         statistics pass on one worker and on every core; prepare from ILSVRC-2012's archives against the
         extracted tree of the same images, and whether the two stores are the same bytes.
  features  reproduce.features --layers fc7 and reproduce.evaluate on the paper net, from a raw store, a
         JPEG store and a folder of JPEGs, against the models section's inference images/s of the same
         net and batch.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Optional, Sequence

from PIL import Image

import torch
from torch.autograd import DeviceType

from paper_alexnet import (
    AlexNet,
    TwoTowerAlexNet,
    backends,
    build_model,
    cpu_linear,
    cpu_memory,
    fused_lrn,
    layer_shapes,
)
from paper_alexnet.layers import STAGE_MARK, stage_path
from paper_alexnet.data import (
    Augment,
    PaperTransform,
    loader_throughput,
    open_dataset,
    prepare_store,
)
from paper_alexnet.data.store import JPEG_QUALITY
from paper_alexnet.data.synthetic import render
from paper_alexnet.cli import HelpFormatter, library_quiet
from reproduce.common.args import (
    as_program,
    UsageError,
    add_device_flag,
    add_workers_flag,
    loader_processes,
    check_workers,
    exit_code,
    write_csv,
)
from reproduce.common.placement import channels_last, pick_device, use_gpu


def _jpeg_folder(root: str, count: int, size=(500, 375)) -> None:
    """ImageNet-like files: ``count`` JPEGs of about 500x375 (the ILSVRC average), 10 class folders."""
    for i in range(count):
        label = i % 10
        folder = os.path.join(root, "train", f"class{label}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(render(label, i)).resize(size, Image.BILINEAR).save(
            os.path.join(folder, f"{i:05d}.jpg"), quality=90
        )


def _photo_jpegs(root: str, count: int, photos: str, size=(500, 375)) -> None:
    """``count`` ImageNet-sized JPEGs (500x375, quality 90) cut from the photographs in ``photos``: each a
    random box of a photo (a third to all of its height, 4:3), resized, in 10 class folders under train/."""
    import numpy as np

    files = sorted(
        os.path.join(photos, f)
        for f in os.listdir(photos)
        if f.lower().endswith((".jpg", ".jpeg", ".png"))
    )
    if not files:
        raise UsageError(f"--photos {photos}: no .jpg/.jpeg/.png files there")
    rng = np.random.default_rng(0)
    opened = [Image.open(f).convert("RGB") for f in files]
    for i in range(count):
        photo = opened[i % len(opened)]
        height = int(photo.height * rng.uniform(1 / 3, 1.0))
        width = min(photo.width, height * 4 // 3)
        left, top = (
            int(rng.integers(0, photo.width - width + 1)),
            int(rng.integers(0, photo.height - height + 1)),
        )
        folder = os.path.join(root, "train", f"class{i % 10}")
        os.makedirs(folder, exist_ok=True)
        photo.crop((left, top, left + width, top + height)).resize(size, Image.BILINEAR).save(
            os.path.join(folder, f"{i:05d}.JPEG"), quality=90
        )


def _as_ilsvrc(folder: str, root: str) -> tuple[str, str]:
    """The folder's images as ILSVRC-2012's layouts: ROOT/archives (ILSVRC2012_img_train.tar, a tar of one tar
    a class) and ROOT/tree (train/<class>/), both with the same val/<class>/ (a tenth of each class)."""
    import tarfile

    archives, tree = os.path.join(root, "archives"), os.path.join(root, "tree")
    for base in (archives, tree):
        os.makedirs(base)
    with tarfile.open(os.path.join(archives, "ILSVRC2012_img_train.tar"), "w") as outer:
        for name in sorted(os.listdir(os.path.join(folder, "train"))):
            files = sorted(os.listdir(os.path.join(folder, "train", name)))
            val = files[: max(1, len(files) // 10)]
            for target in (os.path.join(archives, "val", name), os.path.join(tree, "val", name)):
                os.makedirs(target)
                for f in val:
                    shutil.copy(os.path.join(folder, "train", name, f), target)
            os.makedirs(os.path.join(tree, "train", name))
            inner = os.path.join(root, f"{name}.tar")
            with tarfile.open(inner, "w") as archive:
                for f in files[len(val) :]:
                    archive.add(os.path.join(folder, "train", name, f), arcname=f)
                    shutil.copy(
                        os.path.join(folder, "train", name, f), os.path.join(tree, "train", name)
                    )
            outer.add(inner, arcname=f"{name}.tar")
            os.remove(inner)
    return archives, tree


def bench_prepare(args) -> list[dict]:
    """What ``prepare`` costs an image on one core (decode + resize to §2's 256x256; the raw write; the
    statistics' moments), and what ``prepare`` and the statistics pass give on one worker and on every core,
    from a folder and from ILSVRC-2012's archives of the same images."""
    import numpy as np

    from paper_alexnet.data.passes import usable_cores
    from paper_alexnet.data.stats import StatsAccumulator, split_stats
    from reproduce import prepare

    rows, cores = [], usable_cores()

    def row(what, rate=None, **more):
        rows.append({"section": "prepare", "what": what, "images_per_s": rate, **more})

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp, library_quiet():
        folder = os.path.join(tmp, "folder")
        start = time.perf_counter()
        if args.photos:
            _photo_jpegs(folder, args.images, args.photos)
        else:
            _jpeg_folder(folder, args.images)
        data = open_dataset(f"folder:{os.path.join(folder, 'train')}?val=0.1")
        train, total = data.split("train"), sum(len(s) for s in data.splits.values())
        kind = f"photo crops from {args.photos}" if args.photos else "generated shapes"
        print(f"made {args.images} 500x375 JPEGs (quality 90, {kind}) in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)  # fmt: skip
        start = time.perf_counter()
        images = [train.load(i).transpose(2, 0, 1) for i in range(len(train))]
        row("one core: decode + resize to 256x256 (§2)", len(train) / (time.perf_counter() - start))
        start = time.perf_counter()
        fd = os.open(os.path.join(tmp, "rows.u8"), os.O_WRONLY | os.O_CREAT)
        for k, image in enumerate(images):
            os.pwrite(fd, image.tobytes(), k * image.size)
        os.fsync(fd)
        os.close(fd)
        row(
            f"one core: write a raw row and sync ({tmp})",
            len(images) / (time.perf_counter() - start),
        )
        os.remove(os.path.join(tmp, "rows.u8"))
        start = time.perf_counter()
        accumulator = StatsAccumulator()
        for k in range(0, len(images), 64):
            accumulator.update(np.stack(images[k : k + 64]))
        row(
            "one core: the statistics' moments of a decoded image",
            len(images) / (time.perf_counter() - start),
        )
        del images
        speeds: dict = {}
        for rep in range(args.rounds):
            for workers in sorted({1, cores}):
                out = os.path.join(tmp, f"store-{rep}-{workers}")
                start = time.perf_counter()
                argv = ["--data", data.spec, "--out", out, "--workers", str(workers), "--quiet"]
                if prepare.main(argv) != 0:
                    raise UsageError("prepare failed")
                speeds.setdefault(("prepare", workers), []).append(
                    total / (time.perf_counter() - start)
                )
                start = time.perf_counter()
                split_stats(train, workers=workers)
                speeds.setdefault(("statistics", workers), []).append(
                    len(train) / (time.perf_counter() - start)
                )
                shutil.rmtree(out, ignore_errors=True)
        for what in ("prepare", "statistics"):
            for workers in sorted({1, cores}):
                rates = speeds[what, workers]
                row(f"{what} (python -m reproduce.{'prepare' if what == 'prepare' else 'train'}'s), "
                    f"{workers} workers, median of {len(rates)}", float(np.median(rates)))  # fmt: skip
            if cores > 1:
                ratios = [b / a for a, b in zip(speeds[what, 1], speeds[what, cores])]
                rows.append({"section": "prepare", "what": f"{what}: {cores} workers / 1",
                             "ratio": float(np.median(ratios))})  # fmt: skip
        archives, tree = _as_ilsvrc(folder, os.path.join(tmp, "ilsvrc"))
        outs = {}
        for name, root in (("the archives", archives), ("the extracted tree", tree)):
            outs[name] = os.path.join(tmp, f"from {name}")
            start = time.perf_counter()
            argv = [
                "--data",
                f"imagenet:{root}",
                "--out",
                outs[name],
                "--workers",
                str(cores),
                "--quiet",
            ]
            with contextlib.redirect_stderr(
                io.StringIO()
            ):  # the count warning of a miniature ILSVRC
                if prepare.main(argv) != 0:
                    raise UsageError("prepare failed")
            row(f"prepare from {name}, {cores} workers", total / (time.perf_counter() - start))
        same = all(
            open(os.path.join(outs["the archives"], f), "rb").read()
            == open(os.path.join(outs["the extracted tree"], f), "rb").read()
            for f in ("images.u8", "labels.npy", "progress.json")
        )
        rows.append(
            {
                "section": "prepare",
                "what": "the two stores' bytes are the same",
                "ratio": float(same),
            }
        )
    return rows


def bench_data(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, library_quiet():
        start = time.perf_counter()
        _jpeg_folder(tmp, args.images)
        jpeg = open_dataset(f"folder:{tmp}?val=0.1")
        made = time.perf_counter() - start
        print(f"made {args.images} JPEGs of 500x375 in {made:.1f} s", file=sys.stderr)
        stats = jpeg.stats(progress=False)
        total = sum(len(s) for s in jpeg.splits.values())
        stores = {}
        for encoding, name in (("raw", "store"), ("jpeg", f"jpeg store (quality {args.quality})")):
            start = time.perf_counter()
            stores[name] = prepare_store(
                jpeg.spec,
                jpeg.classes,
                jpeg.splits,
                os.path.join(tmp, encoding),
                workers=args.workers,
                progress=False,
                encoding=encoding,
                quality=args.quality,
            )
            rows.append(
                {
                    "section": "data",
                    "what": f"prepare {name} (decode + write), {args.workers} workers",
                    "images_per_s": total / (time.perf_counter() - start),
                }
            )
        raw_bytes = os.path.getsize(os.path.join(tmp, "raw", "images.u8"))
        jpeg_bytes = sum(
            os.path.getsize(os.path.join(tmp, "jpeg", f)) for f in ("images.jpg", "offsets.i8")
        )
        rows.append(
            {
                "section": "data",
                "what": f"store bytes per image: raw {raw_bytes / total:,.0f}, jpeg "
                f"{jpeg_bytes / total:,.0f}",
                "ratio": jpeg_bytes / raw_bytes,
            }
        )
        transform = PaperTransform(stats, Augment(crop=227), device=args.device)
        rows += _transform_ways(stats, args, default=transform.batched)
        speeds = {}
        splits = [(name, store.splits["train"]) for name, store in stores.items()]
        ways = [(name, split, "workers") for name, split in splits] + [
            (f"{splits[1][0]}, decoded on the device", splits[1][1], "device"),
            ("jpeg folder (500x375 files)", jpeg.split("train"), "workers"),
        ]
        for name, split, decode in ways:
            for workers in sorted({0, args.workers}):
                speeds[name, workers] = loader_throughput(
                    split,
                    transform,
                    args.batch_size,
                    args.batches,
                    workers,
                    args.device,
                    decode=decode,
                )
                rows.append(
                    {
                        "section": "data",
                        "what": f"{name} -> train transform, {workers} workers",
                        "images_per_s": speeds[name, workers],
                    }
                )
        for workers in sorted({0, args.workers}):
            rows.append(
                {
                    "section": "data",
                    "what": f"jpeg store / jpeg folder, {workers} workers",
                    "ratio": speeds[splits[1][0], workers]
                    / speeds["jpeg folder (500x375 files)", workers],
                }
            )
    return rows


def _transform_ways(stats, args, default: bool) -> list[dict]:
    """The training transform alone on a batch already on the device: one image at a time (the CPU's way)
    and one gather for the batch (the GPU's), so that each device's default is a measured choice.
    ``default``: whether PaperTransform gathers by default on this device."""
    device = torch.device(args.device)
    images = torch.randint(0, 256, (args.batch_size, 3, 256, 256), dtype=torch.uint8).to(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    rows = []
    for batched, way in ((False, "one image at a time"), (True, "one gather per batch")):
        transform = PaperTransform(stats, Augment(crop=227), device=device, batched=batched)
        generator = torch.Generator().manual_seed(0)
        seconds = _median_seconds(
            lambda: transform.train(images, generator), max(args.batches, 1), 1, sync
        )
        rows.append(
            {
                "section": "data",
                "what": f"train transform alone on {device.type}, {way}"
                + (" (the default)" if batched == default else ""),
                "images_per_s": args.batch_size / seconds,
            }
        )
    return rows


class _NaiveLRN(torch.nn.Module):
    """The straightforward faithful LRN: torch's layer (which divides alpha by n, so alpha*n) per tower."""

    def __init__(self, lrn):
        super().__init__()
        self.groups = lrn.groups
        self.inner = torch.nn.LocalResponseNorm(lrn.size, lrn.alpha * lrn.size, lrn.beta, lrn.k)

    def forward(self, x):
        return torch.cat([self.inner(part) for part in x.chunk(self.groups, dim=1)], dim=1)


def naive_reference(num_classes: int = 1000) -> AlexNet:
    """The paper net with the LRN as most faithful ports write it; a baseline, not for use."""
    model = build_model("paper", num_classes=num_classes)
    model.norm1, model.norm2 = _NaiveLRN(model.norm1), _NaiveLRN(model.norm2)
    return model


def _median(values: list) -> float:
    return sorted(values)[len(values) // 2]


def median_interval(values: list, confidence: float = 0.95) -> tuple:
    """A distribution-free interval for the median of ``values``: the order statistics x(l) and
    x(n + 1 - l), l the largest with P(Binomial(n, 1/2) < l) <= (1 - confidence) / 2; with too few
    values for that, their whole range (which then covers the median with less confidence)."""
    ordered, n = sorted(values), len(values)
    tail, low = 0.0, 0
    while low < n // 2:
        tail += math.comb(n, low) / 2**n  # P(Binomial(n, 1/2) <= low)
        if tail > (1 - confidence) / 2:
            break
        low += 1
    low = max(low, 1)
    return ordered[low - 1], ordered[n - low]


def _median_seconds(work, repeats: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        work()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        sync()
        times.append(time.perf_counter() - start)
    return _median(times)


def matmul_work(device: torch.device, dtype: torch.dtype, size: int = 2048) -> dict:
    """Square matrix multiplies on ``device`` in ``dtype`` (the nets' compute type), by each library torch
    has for it: name -> (a function that times one sample and returns its seconds, the sample's FLOPs). The
    reachable peak is the fastest of them. On a CPU, torch.mm is MKL's sgemm, which runs its AVX2 code on
    CPUs not made by Intel; oneDNN's (which the convolutions use, and fc6..fc8 where cpu_linear chooses it)
    runs AVX-512 there: 165 against 380 GFLOP/s on an AMD Zen 5. On CUDA a sample is 8 multiplies of 8192²
    matrices queued back to back and timed by CUDA events, so that neither a launch nor a synchronisation
    counts (one 2048² multiply lasts about as long as its launch on an H100)."""
    if device.type == "cuda":
        size, count = 8192, 8
        a, b, c = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(3))

        def on_gpu() -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(count):
                torch.mm(a, b, out=c)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000

        return {"torch.mm": (on_gpu, count * 2 * size**3)}
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    work = {"torch.mm": lambda: a @ b}
    if device.type == "cpu" and cpu_linear.has_onednn():
        work["oneDNN"] = lambda: cpu_linear.onednn_mm(a, b)
    return {name: (_timed(run), 2 * size**3) for name, run in work.items()}


def _timed(work):
    """One sample of ``work`` on the CPU, in seconds."""

    def seconds() -> float:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start

    return seconds


def training_step(run, optimizer, x: torch.Tensor, y: torch.Tensor, amp: bool) -> None:
    """One step of the bench's nets: forward (bf16 autocast with ``amp``), cross-entropy, backward, SGD. The
    gradients go as a training loop's do before the next backward, but now, not while other nets take their
    turn: the nets' weights and momentum are held at once, not their gradients too."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = torch.nn.functional.cross_entropy(run(x).float(), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_flops(layers) -> int:
    """FLOPs of one training step per image: forward, input gradient and weight gradient are each a
    multiply-add per connection (2 FLOPs), except that the first layer needs no input gradient."""
    macs = [layer.macs for layer in layers if layer.macs]
    return 2 * (3 * sum(macs) - macs[0])


def _saved_bytes(model, x, y, amp: bool = False) -> int:
    """Bytes autograd keeps for backward in one training forward (the activations' memory).

    The pack hook keeps a key, not the tensor: this graph is never run backward, and a hook that returns an
    output the node saves (ReLU's, the weight's transpose) ties the tensor and its node in a cycle that Python's
    collector cannot see, so every net's weights and maps would stay for the life of the process (4 GB
    after the models section on a CPU, as much of a GPU's memory)."""
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return key

    def unpack(key):
        raise RuntimeError("_saved_bytes' graph only counts; it is not run backward")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            torch.nn.functional.cross_entropy(model(x).float(), y)
    return total


# The peer a user would pick: torchvision's own module (its nn.Sequential of nn.Conv2d, nn.ReLU(inplace),
# nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Linear), trained with torch.optim.SGD as every row is.
# The "torchvision" row is this package's AlexNet class with torchvision's config, so that a speed-up of the
# shared class moves both; this one it cannot move.
PEER = "torchvision.models.alexnet"


def torchvision_own(classes: int) -> torch.nn.Module:
    """torchvision.models.alexnet, untrained; ``.config`` is the torchvision variant's ArchConfig (the same
    layers), for the shape arithmetic of the FLOP count and the input size."""
    import torchvision

    model = torchvision.models.alexnet(weights=None, num_classes=classes)
    model.config = build_model("torchvision", classes).config
    return model


def _stage_path(args, device: torch.device) -> str:
    """How relu_norm_pool runs the stage on the bench's maps: bf16 under --amp, channels-last with the flag."""
    probe = torch.zeros(
        1, 2, 3, 3, device=device, dtype=torch.bfloat16 if args.amp else torch.float32
    )
    if args.channels_last:
        probe = probe.contiguous(memory_format=torch.channels_last)
    return stage_path(probe)


def _model_nets(args, device: torch.device, classes: int, only: Optional[Sequence[str]]) -> dict:
    """The nets bench_models times: name -> (builder, which LRN runs: the paper net's own path, or forced to
    torch ops); ``only``: these names."""
    # the path relu_norm_pool takes is the paper rows' (on CUDA the compiled stage, as train runs it); inside a
    # whole-net compile, the torch ops that compile traces
    kernel = "torch ops, compiled with the net" if args.compile else _stage_path(args, device)
    nets = {
        "paper": (lambda: build_model("paper", classes), kernel),
        "paper two-tower": (
            lambda: TwoTowerAlexNet(build_model("paper", classes).config, (device, device)),
            kernel,
        ),
        "paper, LRN in torch ops": (lambda: build_model("paper", classes), "torch ops"),
        "torchvision": (lambda: build_model("torchvision", classes), ""),
        PEER: (lambda: torchvision_own(classes), ""),
        "naive faithful": (lambda: naive_reference(classes), "torch.nn.LocalResponseNorm"),
        "paper+no-lrn": (lambda: build_model("paper+no-lrn", classes), ""),
    }
    if kernel.startswith("torch ops"):  # the two paper rows would be the same
        del nets["paper, LRN in torch ops"]
    if only is not None:
        nets = {name: nets[name] for name in only}
    return nets


def _model_rows(cases: dict, times: dict, batch_size: int, peak: float) -> list[dict]:
    """bench_models' rows: each net's rates, utilisation and memory, and its speed and memory against
    torchvision's net, its peer and the naive faithful net (medians of paired repetitions, with intervals)."""
    rows = []
    for name, (config, _, _, memory, lrn) in cases.items():
        train_s, infer_s = (_median(t) for t in times[name])
        flops = step_flops(layer_shapes(config)) * batch_size / train_s / 1e9
        rows.append(
            {
                "section": "models",
                "what": name,
                "lrn": lrn,
                "train_images_per_s": batch_size / train_s,
                "infer_images_per_s": batch_size / infer_s,
                "step_ms": 1000 * train_s,
                "train_gflop_per_s": flops,
                "utilisation": flops / peak,
                "peak_gflop_per_s": peak,
                "train_memory_mb": memory / 2**20,
            }
        )
    by = {r["what"]: r for r in rows}

    def ratios(name, other):  # per repetition, step(other) / step(name): the speed of name vs other
        return [b / a for a, b in zip(times[name][0], times[other][0])]

    for row in rows:
        for column, other in (
            ("vs_torchvision", "torchvision"),
            ("vs_peer", PEER),
            ("vs_naive", "naive faithful"),
        ):
            if other not in by:
                continue
            paired = ratios(row["what"], other)
            row[column] = _median(paired)
            # 95% for the median
            row[f"{column}_low"], row[f"{column}_high"] = median_interval(paired)
        if "torchvision" in by:
            row["memory_vs_torchvision"] = (
                row["train_memory_mb"] / by["torchvision"]["train_memory_mb"]
            )
        if PEER in by:
            row["memory_vs_peer"] = row["train_memory_mb"] / by[PEER]["train_memory_mb"]
    return rows


def bench_models(args, only: Optional[Sequence[str]] = None) -> list[dict]:
    """Training and inference img/s of each net on synthetic input (no data loading), timed round robin;
    ``only``: these nets (of the names below) and no others."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    classes = 1000
    nets = _model_nets(args, device, classes, only)
    native_bf16 = cuda or (
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    if args.amp and not native_bf16:
        print(
            "note: this CPU has no native bfloat16 (oneDNN reports none), so --amp runs emulated and far slower "
            "than float32; the peak is float32's",
            file=sys.stderr,
        )
    matmuls = matmul_work(device, torch.bfloat16 if args.amp and native_bf16 else torch.float32)
    # Round robin: each repetition times every net once, so that a slower moment of the machine
    # slows all nets alike instead of one; the order turns by one net per repetition, so that no net
    # always runs after the same one (whose leftovers in caches and in the heap it would inherit).
    # The matrix-multiply peak is measured in every repetition too, so that it shares the nets' moments.
    # That holds every net at once (seven paper-sized nets' weights and momentum: 3-4 GB on the CPU); one
    # repetition is one pass in the same order, so each net is timed on its turn and let go (one net held).
    held = args.repeats > 1
    names = list(nets)
    times, matmul_s = {name: ([], []) for name in nets}, {name: [] for name in matmuls}
    for seconds, _ in matmuls.values():  # warm-up: the library's first call, the clocks up
        seconds(), seconds()

    def take_turn(name, step, infer):
        times[name][0].append(_median_seconds(step, 1, 0, sync))
        times[name][1].append(_median_seconds(infer, 1, 0, sync))

    def time_matmuls():
        for name, (seconds, _) in matmuls.items():
            matmul_s[name].append(_median([seconds() for _ in range(3)]))

    cases, paper_net = {}, None
    for name, (make, lrn) in nets.items():
        # "paper, LRN in torch ops" times the paper row's own net (weights, momentum, input) with the LRN
        # in torch ops: one paper net held, not two
        if name == "paper, LRN in torch ops" and paper_net is not None:
            model, x, y, optimizer, before = paper_net
        else:
            # on CUDA what this net allocates: the peak less what was held before it was built (the nets
            # before it, held for the round robin, are not its memory)
            before = torch.cuda.memory_allocated(device) if cuda else 0
            torch.manual_seed(0)
            model = make().to(device)
            size = model.config.input_size
            x = torch.randn(args.batch_size, 3, size, size, device=device)
            y = torch.randint(0, classes, (args.batch_size,), device=device)
            if args.channels_last:
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, foreach=True)
        paper_net = (model, x, y, optimizer, before) if name == "paper" else None
        run = torch.compile(model) if args.compile else model

        eager = lrn == "torch ops"

        def step(model=model, run=run, optimizer=optimizer, x=x, y=y, eager=eager):
            model.train()
            with fused_lrn.use_eager(eager):  # forward and backward take the same LRN path
                training_step(run, optimizer, x, y, args.amp)

        @torch.no_grad()
        def infer(model=model, run=run, x=x, eager=eager):
            model.eval()
            with (
                fused_lrn.use_eager(eager),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp),
            ):
                run(x)

        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        step(), step(), infer()
        sync()
        if cuda:
            memory = torch.cuda.max_memory_allocated(device) - before
        else:  # weights + grads + momentum + what autograd keeps for backward
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            with fused_lrn.use_eager(eager):
                memory = 3 * weights + _saved_bytes(model, x, y, args.amp)
        if held:
            cases[name] = (model.config, step, infer, memory, lrn)
        else:
            take_turn(name, step, infer)
            cases[name] = (model.config, None, None, memory, lrn)
        del model, run, optimizer, x, y, step, infer
        if cuda and not held and paper_net is None:
            torch.cuda.empty_cache()
    if held:
        for rep in range(args.repeats):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                take_turn(name, *cases[name][1:3])
            time_matmuls()
    else:
        time_matmuls()
    rates = {name: flops / _median(matmul_s[name]) / 1e9 for name, (_, flops) in matmuls.items()}
    peak = max(rates.values())
    rows = _model_rows(cases, times, args.batch_size, peak)
    each = ", ".join(f"{name} {rate:,.1f}" for name, rate in rates.items())
    print(
        f"matrix-multiply peak on {device}: {peak:,.1f} GFLOP/s ({each}; medians over the repetitions); "
        f"fc6..fc8 multiply by {cpu_linear.backend() if device.type == 'cpu' else 'torch'}",
        file=sys.stderr,
    )
    return rows


# What each part of a training step is, by the names the profiler records for an op or any op around it (the
# innermost that matches decides): the kernels a convolution launches sit under aten::cudnn_convolution (or
# ConvolutionBackward0). The ReLU-LRN-pool stages are found by their record_function (layers.STAGE_MARK) and,
# for their backward, by the autograd nodes made inside it (split_step), whatever runs inside: the fused
# kernel, the compiled stage's Triton launches (CPU ops named after fused kernels such as
# triton_poi_fused_max_pool2d_...), or torch ops.
LRN_PART = "LRN: the ReLU-LRN-pool stages of conv1 and conv2"
STEP_PARTS = (
    ("convolutions", ("convolution", "Convolution", "cudnn", "conv2d")),
    ("pooling", ("max_pool", "MaxPool")),
    ("fc6..fc8", ("addmm", "aten::mm", "linear", "Addmm", "MmBackward")),
    ("optimiser step", ("Optimizer",)),
)
OTHER_PART = "other (ReLU of conv3..fc7, dropout, loss, copies)"


def step_part(chain: Sequence[str]) -> str:
    """The part of STEP_PARTS an op belongs to, from its name and its enclosing ops' (innermost first)."""
    # whatever runs inside the stage, pools and Triton kernels named after them too
    if STAGE_MARK in chain:
        return LRN_PART
    for name in chain:
        for part, marks in STEP_PARTS:
            if any(mark in name for mark in marks):
                return part
    return OTHER_PART


def _chain(event) -> list:
    """The event and the ops around it, innermost first."""
    chain, at = [], event
    while at is not None:
        chain.append(at)
        at = at.cpu_parent
    return chain


def split_step(events, on_device: bool) -> dict:
    """A profiled step's time by part (STEP_PARTS), in ms: ``on_device``, each host op's own device time (the
    kernels it launched; the kernel events themselves are left out, their time being in their op's), else each
    op's own CPU time. An op belongs to the stage where the stage's mark encloses it, or where an enclosing op
    is the backward of an autograd node made inside the mark (the profiler gives a backward op its forward
    op's sequence number and thread); otherwise to the part its names say."""
    host = [(e, _chain(e)) for e in events if e.device_type == DeviceType.CPU and not e.is_async]
    staged = {  # (thread, sequence number) of the autograd nodes made inside the stage's mark
        (event.thread, event.sequence_nr)
        for event, chain in host
        if event.sequence_nr >= 0 and any(at.name == STAGE_MARK for at in chain)
    }
    parts: dict = {}
    for event, chain in host:
        own = event.self_device_time_total if on_device else event.self_cpu_time_total
        if own <= 0:
            continue
        backward_of_stage = any(
            "Backward" in at.name and (at.fwd_thread, at.sequence_nr) in staged for at in chain
        )
        part = LRN_PART if backward_of_stage else step_part([at.name for at in chain])
        parts[part] = parts.get(part, 0.0) + own / 1000
    return parts


def bench_step_split(args) -> list[dict]:
    """One training step of the paper net, as the models section runs it (bf16 autocast and channels-last with
    --amp / --channels-last), split by the profiler into its parts (split_step): the share of the step's device
    time (its CPU time on a CPU) each takes. The stage's row is ReLU, LRN and max-pool of conv1 and conv2
    together, forward and backward: the LRN's cost is at most it. No row for the stage (it was not found) is
    a row saying so, not a share of 0."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = build_model("paper", 1000).to(device)
    x = torch.randn(args.batch_size, 3, 227, 227, device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    if args.channels_last:
        model, x = (
            model.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, foreach=True)

    def step():
        training_step(model, optimizer, x, y, args.amp)

    for _ in range(3):  # cuDNN's autotuning, the compiled stage's compiling: before the profile
        step()
    if cuda:
        torch.cuda.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize(device)
    return split_rows(split_step(prof.events(), cuda), _stage_path(args, device))


def split_rows(parts: dict, path: str) -> list[dict]:
    """The profile section's rows from split_step's parts; ``path``: how the stage ran (layers.stage_path)."""
    total = sum(parts.values())
    rows = [
        {"section": "profile", "what": part, "ms_per_step": ms, "share": ms / total}
        for part, ms in sorted(parts.items(), key=lambda item: -item[1])
    ]
    for row in rows:
        if row["what"] == LRN_PART:
            row["what"] += f" ({path})"
    if LRN_PART not in parts:
        rows.append({"section": "profile", "what": f"{LRN_PART}: not found in the profile"})
    return rows


def bench_towers(args) -> list[dict]:
    """§3.2's question on 2+ GPUs: the two towers, a GPU each, against both on one GPU, training img/s (the
    activations cross between the GPUs only where §3.2 says: into conv3, fc6, fc7 and fc8)."""
    rows = {}
    for name, devices in (("one GPU", ("cuda:0", "cuda:0")), ("two GPUs", ("cuda:0", "cuda:1"))):
        devices = tuple(torch.device(d) for d in devices)
        torch.manual_seed(0)
        model = TwoTowerAlexNet(build_model("paper", 1000).config, devices)
        x = torch.randn(args.batch_size, 3, 227, 227, device=devices[0])
        y = torch.randint(0, 1000, (args.batch_size,), device=devices[0])
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, foreach=True)

        def step(model=model, x=x, y=y, optimizer=optimizer):
            training_step(model, optimizer, x, y, args.amp)

        def sync(devices=devices):
            for device in set(devices):
                torch.cuda.synchronize(device)

        seconds = _median_seconds(step, max(args.repeats, 3), 2, sync)
        rows[name] = args.batch_size / seconds
        del model, optimizer, x, y
        torch.cuda.empty_cache()
    return [
        {
            "section": "towers",
            "what": f"paper two-tower, {name}",
            "train_images_per_s": rate,
            "ratio": rate / rows["one GPU"],
        }
        for name, rate in rows.items()
    ]


def bench_features(args) -> list[dict]:
    """reproduce.features --layers fc7 and reproduce.evaluate (centre crops) on the paper net (the §5 init),
    against the models section's inference img/s for the same net and batch, in the same run: the data
    reading and the writing should cost little beside the net. Timed: each command's own loop (layers.json's
    and evaluate's images_per_s), from a raw store, a JPEG store and a folder of ImageNet-sized JPEGs of the
    same images, with the commands' default readers."""
    from paper_alexnet import checkpoint
    from paper_alexnet.checkpoint import Checkpoint
    from reproduce import evaluate, features

    # the net's inference in the layout the commands build it in (placement.channels_last)
    layout = argparse.Namespace(**vars(args))
    layout.channels_last = channels_last(torch.device(args.device), getattr(args, "amp", False))
    net_rate = bench_models(layout, only=["paper"])[0]["infer_images_per_s"]
    rows = [{"section": "features", "what": "paper: inference alone (models section)",
             "images_per_s": net_rate}]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, library_quiet():
        folder = os.path.join(tmp, "folder")
        _jpeg_folder(folder, args.images)
        data = open_dataset(f"folder:{folder}?val=0.5")
        for encoding in ("raw", "jpeg"):
            prepare_store(data.spec, data.classes, data.splits, os.path.join(tmp, encoding),
                          workers=args.workers, progress=False, encoding=encoding, quality=args.quality)  # fmt: skip
        ckpt = Checkpoint(
            model=build_model("paper", 10).state_dict(),
            variant="paper",
            classes=list(data.classes),
            augment=dataclasses.asdict(Augment()),
            stats=Checkpoint.stats_entry(data.stats(progress=False)),
        )
        checkpoint.save(os.path.join(tmp, "net.pt"), ckpt)
        sources = (
            ("raw store", f"store:{os.path.join(tmp, 'raw')}"),
            (f"JPEG store (quality {args.quality})", f"store:{os.path.join(tmp, 'jpeg')}"),
            ("folder of 500x375 JPEGs", data.spec),
        )
        for name, spec in sources:
            out = os.path.join(tmp, "out")
            argv = ["--checkpoint", os.path.join(tmp, "net.pt"), "--data", spec, "--layers", "fc7",
                    "--out", out, "-b", str(args.batch_size), "--quiet", "--device", args.device]  # fmt: skip
            if features.main(argv) != 0:
                raise RuntimeError(f"reproduce.features failed on the {name}")
            with open(os.path.join(out, "layers.json"), encoding="utf-8") as handle:
                record = json.load(handle)
            rate = record["images_per_s"]
            rows.append({"section": "features", "what": f"features --layers fc7, {name}, "
                         f"{record['workers']} workers", "images_per_s": rate, "ratio": rate / net_rate})  # fmt: skip
            table = os.path.join(tmp, "evaluate.csv")
            argv = ["--checkpoint", os.path.join(tmp, "net.pt"), "--data", spec, "--split", "val",
                    "-b", str(args.batch_size), "--device", args.device, "--csv", table]  # fmt: skip
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                if evaluate.main(argv) != 0:
                    raise RuntimeError(f"reproduce.evaluate failed on the {name}")
            with open(table, encoding="utf-8") as handle:
                rate = float(next(csv.DictReader(handle))["images_per_s"])
            rows.append({"section": "features", "what": f"evaluate (centre crops), {name}",
                         "images_per_s": rate, "ratio": rate / net_rate})  # fmt: skip
    return rows


def add_measure_flags(parser: argparse.ArgumentParser, batch: str) -> None:
    """The flags that say how much to measure and where: the bench's, and the GPU suite's (gpu_suite.py)."""
    add_device_flag(parser)
    parser.add_argument(
        "-b", "--batch-size", type=int, default=None, help=f"images per batch (default: {batch})"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="models: timed steps per net (medians reported, with 95%% intervals for the ratios); "
        "single steps on a shared machine vary by up to 20%%, and with 31 the ratios' intervals "
        "were about +-0.06 on a 2-core CPU (docs/performance.md); above 1, every net is held at once for the "
        "round robin, 1 times each net on its turn and lets it go",
    )
    parser.add_argument(
        "--batches", type=int, default=6, help="timed batches per measurement (after 1 warm-up)"
    )
    parser.add_argument(
        "--images", type=int, default=1024, help="data: JPEGs to generate for the folder"
    )
    parser.add_argument(
        "--quality", type=int, default=JPEG_QUALITY, help="data: the JPEG store's quality"
    )
    add_workers_flag(parser, train=True)
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's malloc as it comes (freed blocks over its mmap threshold go back to the "
        "system) instead of keeping freed memory as train and evaluate do",
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce.bench",
        formatter_class=HelpFormatter,
        description="Measure throughput; prints a table, optionally writes CSV.",
    )
    parser.add_argument(
        "--only",
        choices=("models", "data", "features", "prepare"),
        default=None,
        help="one section (default: models and data)",
    )
    parser.add_argument(
        "--photos",
        default=None,
        metavar="DIR",
        help="prepare: cut the 500x375 JPEGs from the photographs in DIR (default: generated shapes)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="prepare: times each configuration is timed, in turn"
    )
    parser.add_argument(
        "--tmp",
        default=None,
        metavar="DIR",
        help="prepare: where its files go (default: the system's)",
    )
    parser.add_argument(
        "--suite",
        choices=("gpu",),
        default=None,
        help="gpu: python -m reproduce.gpu_suite, with the flags given here (--out DIR, "
        "--budget-min MIN, --tests EXPR and the ones below): the CUDA tests, the models, the "
        "data and reproduce.train from a store on the GPU, with the GPU path's targets",
    )
    add_measure_flags(parser, "32")
    parser.add_argument("--amp", action="store_true", help="models: bfloat16 autocast")
    parser.add_argument(
        "--channels-last", action="store_true", help="models: channels-last memory format"
    )
    parser.add_argument(
        "--compile", action="store_true", help="models: torch.compile each net first"
    )
    parser.add_argument("--csv", default=None, metavar="PATH", help="also write the rows as CSV")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = get_args_parser()
    args, rest = parser.parse_known_args(argv)
    if args.suite:  # the suite's own command, with every flag but --suite handed through
        from reproduce import gpu_suite

        return gpu_suite.main(
            [
                w
                for k, w in enumerate(argv)
                if w not in ("--suite", "--suite=gpu")
                and not (w == "gpu" and k and argv[k - 1] == "--suite")
            ]
        )
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return exit_code(lambda: run(args))


def check(args: argparse.Namespace) -> None:
    """Refuse bad flags and a device that is not here before any work (UsageError: one line, exit 2)."""
    if args.batch_size < 1 or args.repeats < 1 or args.batches < 1:
        raise UsageError("--batch-size, --repeats and --batches must be at least 1")
    if not 1 <= args.quality <= 100:
        raise UsageError(f"--quality must be between 1 and 100, not {args.quality}")
    check_workers(args.workers)
    device = pick_device(args.device)
    args.device = str(device)
    # --device cuda:1: what names no GPU (pinned copies, synchronize()) acts there
    if device.type == "cuda":
        use_gpu(device)
    try:
        torch.empty(0, device=args.device)
    except (RuntimeError, AssertionError) as err:
        raise UsageError(
            f"--device {args.device} is not usable here ({str(err).splitlines()[0]})"
        ) from None
    # as reproduce.train runs on CUDA (autotuned, TF32), with its default loader processes
    backends.configure(torch.device(args.device))
    args.workers = loader_processes(args.workers, args.device)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    args.batch_size = 32 if args.batch_size is None else args.batch_size
    check(args)
    threads = torch.get_num_threads()
    rows = []
    if args.only in (None, "models"):
        rows += bench_models(args)
    if args.only in (None, "data"):
        rows += bench_data(args)
    if args.only == "features":
        rows += bench_features(args)
    if args.only == "prepare":
        rows += bench_prepare(args)
    table = pd.DataFrame(rows)
    print(
        f"# torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs, device {args.device}, "
        f"batch {args.batch_size}"
        + (", bf16 autocast" if args.amp else "")
        + (", channels-last" if args.channels_last else "")
        + (", compiled" if args.compile else "")
        + (
            ", freed memory kept (glibc)"
            if cpu_memory.kept()
            else ", freed memory returned to the system"
        )
    )
    print(
        table.to_string(
            index=False,
            na_rep="",
            float_format=lambda v: f"{v:,.2f}" if abs(v) < 10 else f"{v:,.0f}",
        )
    )
    if args.csv:
        write_csv(rows, args.csv)
    return 0


def keeps_memory(parser: argparse.ArgumentParser) -> bool:
    """As train runs (cpu_memory.py), alike for every net, unless --system-malloc asks for glibc's default."""
    return not parser.parse_known_args()[0].system_malloc


if __name__ == "__main__":
    sys.exit(as_program(main, keep_memory=keeps_memory(get_args_parser())))
