"""The prepared store: every image once at 256x256 (§2), raw or as JPEG, in one memory-mapped file.

Layout of a store folder::

    store.json     what it holds: the data spec, class names, splits (start, count), image size, encoding
    images.u8      (raw, the default) all images, N x 3 x 256 x 256 uint8 (train, then val, then test)
    images.jpg     (jpeg) the N images' JPEG files end to end, about a tenth of images.u8 at quality 90
    offsets.i8     (jpeg) N + 1 int64: image i is bytes offsets[i]:offsets[i + 1] of images.jpg
    labels.npy     N int64 labels
    progress.json  how many images are written, and the files that could not be read (path, reason)
    stats.npz      the training split's mean image (§2) and RGB PCA (§4.1), written last

Writing goes in chunks; after each chunk the images are flushed and then
progress.json is replaced atomically, so an interrupted ``prepare`` continues
from the last chunk and a finished one does nothing when run again. Reading a
raw store never decodes: a batch is one fancy index into the memory map. A
JPEG store decodes each 256x256 image (torchvision.io.decode_jpeg, in the
loader's workers); an entry that does not decode is skipped and counted like
an unreadable file, never a crash.
"""

from __future__ import annotations

import errno
import io
import json
import mmap
import logging
import os
import shutil
import socket
import time
import warnings
from contextlib import contextmanager, suppress
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..backends import sync_allowed
from PIL import Image

from .. import paper
from ..atomic import (
    NoSpaceError,
    atomic_write,
    free_space,
    is_full_disk,
    make_folder,
    need_space,
    size_text,
)
from .images import BadImageError, DataError
from .passes import chunks, ordered_map
from .splits import Split
from .stats import STATS_BYTES, DataStats, StatsAccumulator

_logger = logging.getLogger(__name__)

FORMAT = "paper_alexnet.store/1"
SPLIT_ORDER = ("train", "val", "test")
ENCODINGS = ("raw", "jpeg")
# torchvision 0.29 marks its JPEG codec as deprecated in favour of TorchCodec; it is the one this package pins
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)
JPEG_QUALITY = 90  # prepare --quality: about a tenth of the raw bytes (docs/data.md)


def _write_json(path: str, payload: dict) -> None:
    with atomic_write(path) as handle:
        json.dump(payload, handle, indent=1)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from None


def is_store(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "store.json"))


class StoreSplit(Split):
    """One split of a raw store; reads whole batches from the memory map (opened lazily in each process)."""

    def __init__(self, name: str, root: str, index: np.ndarray, labels: np.ndarray, total: int):
        super().__init__(name, labels)
        self.root, self.index, self.total = root, np.asarray(index, dtype=np.int64), total
        self._maps: dict = {}

    def __getstate__(self):  # a DataLoader worker re-opens the maps instead of copying them
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def _map(self, name: str, dtype, shape) -> np.memmap:
        if name not in self._maps:
            self._maps[name] = np.memmap(
                os.path.join(self.root, name), dtype=dtype, mode="r", shape=shape
            )
        return self._maps[name]

    @property
    def images(self) -> np.memmap:
        size = paper.IMAGE_SIZE
        return self._map("images.u8", np.uint8, (self.total, 3, size, size))

    def describe(self, i: int) -> str:
        return f"{self.root} image #{int(self.index[i])}"

    def load(self, i: int) -> np.ndarray:
        return np.ascontiguousarray(self.images[self.index[i]].transpose(1, 2, 0))

    def batch(self, indices: Sequence[int], strict: bool = False):
        indices = np.asarray(indices, dtype=np.int64)
        rows = self.index[indices]
        order = np.argsort(rows, kind="stable")  # read the file front to back
        out = np.empty((len(rows), 3, paper.IMAGE_SIZE, paper.IMAGE_SIZE), dtype=np.uint8)
        out[order] = self.images[rows[order]]
        return torch.from_numpy(out), torch.from_numpy(self.labels[indices]), []


class JpegStoreSplit(StoreSplit):
    """One split of a JPEG store: each image's bytes found by offsets.i8, decoded at 256x256."""

    defers_decoding = (
        True  # its batches can travel encoded and be decoded where the net is (decode_jpegs)
    )

    def _bytes(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The JPEG files of store rows ``rows``, end to end in one array, and where each begins and ends."""
        offsets = self._map("offsets.i8", np.int64, (self.total + 1,))
        blob = self._map("images.jpg", np.uint8, (int(offsets[-1]),))
        parts = [blob[offsets[row] : offsets[row + 1]] for row in rows]
        return np.concatenate(parts) if parts else np.empty(0, np.uint8), np.cumsum(
            [0] + [len(p) for p in parts]
        )

    def load(self, i: int) -> np.ndarray:
        blob, _ = self._bytes(self.index[[i]])
        return (
            _decode_one(torch.from_numpy(blob), self.describe(i), "cpu")
            .permute(1, 2, 0)
            .contiguous()
            .numpy()
        )

    def batch(self, indices: Sequence[int], strict: bool = False):
        return decode_jpegs(*self.encoded(indices), device="cpu", strict=strict)

    def encoded(self, indices: Sequence[int]):
        """(the images' JPEG files end to end in one uint8 tensor, the N + 1 bounds between them, their labels,
        their names): a batch not yet decoded, for :func:`decode_jpegs` on the training device. One tensor, not
        N: each tensor a loader worker hands over takes a file descriptor of shared memory."""
        indices = np.asarray(indices, dtype=np.int64)
        blob, bounds = self._bytes(self.index[indices])
        return (
            torch.from_numpy(blob),
            torch.from_numpy(bounds),
            torch.as_tensor(self.labels[indices]),
            [self.describe(int(i)) for i in indices],
        )


def _decode_one(data: torch.Tensor, name: str, device) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    size = paper.IMAGE_SIZE
    try:
        image = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except (RuntimeError, ValueError) as err:
        raise BadImageError(name, f"the stored JPEG does not decode ({err})") from None
    if tuple(image.shape) != (3, size, size):
        raise BadImageError(name, f"the stored JPEG is {tuple(image.shape)}, not 3x{size}x{size}")
    return image


def decode_jpegs(
    blob: torch.Tensor,
    bounds: torch.Tensor,
    labels: torch.Tensor,
    names: list,
    device="cpu",
    strict: bool = False,
):
    """A JPEG store's batch (:meth:`JpegStoreSplit.encoded`) decoded on ``device`` (on a GPU: nvjpeg, the batch
    in one call) -> (uint8 N x 3 x 256 x 256 on ``device``, the labels of the images kept, [(name, reason) of
    entries that did not decode]). The one-call decode fails whole on a bad entry; the batch is then decoded
    one by one to find it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    size = paper.IMAGE_SIZE
    at = bounds.tolist()
    datas = [blob[start:end] for start, end in zip(at[:-1], at[1:])]
    if torch.device(device).type == "cuda":
        # nvjpeg writes its outputs from a stream of its own (and its hardware engine ignores stream order),
        # into blocks the caching allocator may just have taken back from this stream while kernels queued
        # here (the last batch's stack) still read them: pytorch/vision#9606, meta-pytorch/torchcodec#1634.
        # So the decode starts once the work queued before it is done.
        with sync_allowed():
            torch.cuda.current_stream(device).synchronize()
    try:
        images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device) if datas else []
        if images and all(tuple(image.shape) == (3, size, size) for image in images):
            return torch.stack(images), labels, []
    except (RuntimeError, ValueError):
        pass
    images, kept, skipped = [], [], []
    for k, (data, name) in enumerate(zip(datas, names)):
        try:
            images.append(_decode_one(data, name, device))
            kept.append(k)
        except BadImageError as err:
            if strict:
                raise
            skipped.append((err.path, err.reason))
    stacked = (
        torch.stack(images)
        if images
        else torch.empty(0, 3, size, size, dtype=torch.uint8, device=device)
    )
    return stacked, labels[kept], skipped


class Store:
    """A finished store, opened for reading."""

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise DataError(f"store {root} does not exist", "make-store", out=root)
        if not is_store(root):
            raise DataError(f"{root} is not a store (no store.json)", "make-store", out=root)
        self.root = root
        self.meta = _read_json(os.path.join(root, "store.json"))
        if self.meta.get("format") != FORMAT:
            raise DataError(
                f"{root}: unknown store format {self.meta.get('format')!r} (expected {FORMAT})"
            )
        progress_path = os.path.join(root, "progress.json")
        written = {"done": 0, "bad": []}  # a store being written in parts: progress.json comes last
        progress = _read_json(progress_path) if os.path.exists(progress_path) else written
        total = self.meta["total"]
        if progress["done"] < total or not os.path.isfile(os.path.join(root, "stats.npz")):
            raise DataError(
                f"store {root} is unfinished ({progress['done']} of {total} images)",
                "finish-store",
                data=self.meta["spec"],
                out=root,
            )
        self.classes = list(self.meta["classes"])
        self.encoding = self.meta.get("encoding", "raw")
        kind = JpegStoreSplit if self.encoding == "jpeg" else StoreSplit
        self.bad = progress["bad"]
        labels = np.load(os.path.join(root, "labels.npy"))
        valid = np.ones(total, dtype=bool)
        valid[[row for row, _, _ in self.bad]] = False
        self.splits = {}
        for name, (start, count) in self.meta["splits"].items():
            rows = np.arange(start, start + count)
            rows = rows[valid[rows]]
            self.splits[name] = kind(name, root, rows, labels[rows], total)

    def stats(self) -> DataStats:
        return DataStats.load(os.path.join(self.root, "stats.npz"))


# -- writing --------------------------------------------------------------------------------------
#
# A store is written in parts (one, or --shard's N): part k of N is the rows [k*T//N, (k+1)*T//N), written
# by one process with its workers. A part's state is parts/K-of-N.npz: the rows it has written (a prefix of
# its rows), the files that could not be read, the moments of its training images (stats.StatsAccumulator,
# exact integers, so the parts add up to what one pass gives) and, for a JPEG store, where each of its
# images ends in parts/K-of-N.jpg. Raw rows go straight into images.u8 by os.pwrite in the workers (a full
# disk is then an ENOSPC error, not the SIGBUS of a write into a memory map). The part that finds every part
# done completes the store: images.jpg and offsets.i8 from the parts, stats.npz, progress.json.

_WORKER: dict = {}
_IMAGE_BYTES = 3 * paper.IMAGE_SIZE * paper.IMAGE_SIZE
SAVE_EVERY_S = 5.0  # how often a part's state is saved (and its images synced) while it runs


def _init_worker(splits, layout, out, quality):
    if _WORKER.get("fd") is not None:  # this process wrote another store before (workers=0)
        with suppress(OSError):
            os.close(_WORKER["fd"])
    _WORKER.update(splits=splits, layout=layout, out=out, quality=quality, fd=None)
    _WORKER.pop("direct", None)


def _source(row: int) -> tuple[str, int]:
    """(split name, index in it) of store row ``row``."""
    for name, (start, count) in _WORKER["layout"].items():
        if start <= row < start + count:
            return name, row - start
    raise IndexError(row)


def _write_rows(first: int, count: int, images: list) -> None:
    """Rows [first, first + count) of images.u8 in one pwrite (an unreadable file's row stays zeros),
    with O_DIRECT where the filesystem has it: the bytes go from this buffer to the disk, without the page
    cache's copy and write-back, which cost as much CPU again as the write itself (docs/imagenet.md). Rows are
    196,608 B, a multiple of every block size, and the buffer is page-aligned (an anonymous mmap)."""
    size = count * _IMAGE_BYTES
    if _WORKER.get("buffer") is None or len(_WORKER["buffer"]) < size:
        _WORKER["buffer"] = mmap.mmap(-1, size)
    block = np.frombuffer(_WORKER["buffer"], dtype=np.uint8, count=size).reshape(count, -1)
    block[:] = 0
    for row, image in images:
        block[row - first] = image.reshape(-1)
    path = os.path.join(_WORKER["out"], "images.u8")
    if _WORKER["fd"] is None:
        try:
            _WORKER["fd"] = os.open(path, os.O_WRONLY | getattr(os, "O_DIRECT", 0))
        except OSError:  # a filesystem without O_DIRECT (tmpfs, some network ones)
            _WORKER["fd"] = os.open(path, os.O_WRONLY)
    data, at = memoryview(_WORKER["buffer"])[:size], first * _IMAGE_BYTES
    while len(data):  # pwrite may write less than asked
        try:
            written = os.pwrite(_WORKER["fd"], data, at)
        except OSError as err:
            if err.errno != errno.EINVAL or "direct" in _WORKER:
                raise
            _WORKER["direct"] = False  # O_DIRECT refused for this file: the page cache, then
            os.close(_WORKER["fd"])
            _WORKER["fd"] = os.open(path, os.O_WRONLY)
            continue
        data, at = data[written:], at + written


def _write_chunk(rows: tuple[int, int]):
    """A worker's share: rows [first, end) decoded and cut (§2), written into images.u8 (raw) or encoded
    (JPEG, returned), and the moments of its training images; -> (JPEG bytes or None a row, or None for a raw
    store; [(row, path, reason)] of unreadable files; the moments' state, or None)."""
    first, end = rows
    images, bad = [], []
    for row in range(first, end):
        name, i = _source(row)
        try:
            images.append((row, _WORKER["splits"][name].load(i).transpose(2, 0, 1)))
        except BadImageError as err:
            bad.append([row, err.path, err.reason])
    train = _WORKER["layout"].get("train")
    in_train = [image for row, image in images if train and train[0] <= row < train[0] + train[1]]
    moments = None
    if in_train:
        accumulator = StatsAccumulator()
        accumulator.update(np.stack(in_train))
        moments = accumulator.state()
    if _WORKER["quality"] is None:
        if images:
            _write_rows(first, end - first, images)
        return None, bad, moments
    # PIL, not torch: a worker forked from a process whose torch thread pool has run would hang in a torch op
    encoded: list = [None] * (end - first)
    for row, image in images:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(
            buffer, "JPEG", quality=_WORKER["quality"]
        )
        encoded[row - first] = buffer.getvalue()
    return encoded, bad, moments


def _plan(
    spec: str, classes: Sequence[str], splits: dict[str, Split], encoding: str, quality: int
) -> dict:
    layout, start = {}, 0
    for name in SPLIT_ORDER:
        if name in splits:
            layout[name] = [start, len(splits[name])]
            start += len(splits[name])
    plan = {
        "format": FORMAT,
        "spec": spec,
        "classes": list(classes),
        "image_size": paper.IMAGE_SIZE,
        "splits": layout,
        "total": start,
    }
    if encoding == "jpeg":  # a raw store's store.json stays as before (no encoding: raw)
        plan.update(encoding="jpeg", quality=quality)
    return plan


def parse_shard(text: Optional[str]) -> tuple[int, int]:
    """``"2/4"`` -> (1, 4): the part (counted from 1 on the command line, from 0 here) and how many."""
    if text is None:
        return 0, 1
    try:
        part, parts = (int(v) for v in str(text).split("/"))
        assert 1 <= part <= parts
    except (ValueError, AssertionError):
        raise DataError(
            f"--shard {text}: give PART/PARTS with 1 <= PART <= PARTS, e.g. 1/4"
        ) from None
    return part - 1, parts


def part_rows(part: int, parts: int, total: int) -> tuple[int, int]:
    """The rows [first, end) of part ``part`` (from 0) of ``parts``."""
    return part * total // parts, (part + 1) * total // parts


class _Part:
    """One part's state (parts/K-of-N.npz): rows written (from the part's first), unreadable files, the
    moments of its training images, and (JPEG) where each of its images ends in its .jpg."""

    def __init__(self, out: str, part: int, parts: int, total: int):
        self.path = os.path.join(out, "parts", f"{part + 1}-of-{parts}")
        self.first, self.end = part_rows(part, parts, total)
        self.done, self.bad, self.moments = 0, [], StatsAccumulator()
        self.ends = np.zeros(self.end - self.first + 1, dtype=np.int64)
        if os.path.exists(self.path + ".npz"):
            try:
                with np.load(self.path + ".npz") as saved:
                    if (int(saved["first"]), int(saved["end"])) == (self.first, self.end):
                        self.done = int(saved["done"])
                        self.bad = json.loads(str(saved["bad"]))
                        self.moments = StatsAccumulator.from_state(saved)
                        self.ends = np.array(saved["ends"], dtype=np.int64)
            except (OSError, KeyError, ValueError):
                self.done = 0  # a damaged state file: the part starts over

    @property
    def complete(self) -> bool:
        return self.done == self.end - self.first

    def save(self) -> None:
        with atomic_write(self.path + ".npz", "wb") as handle:
            np.savez(
                handle,
                first=np.int64(self.first),
                end=np.int64(self.end),
                done=np.int64(self.done),
                bad=np.array(json.dumps(self.bad)),
                ends=self.ends,
                **self.moments.state(),
            )


@contextmanager
def _writing(out: str, part: int, parts: int):
    """The block with this process registered as the writer of part ``part`` of ``parts``: flock on
    writing.lock, exclusive for a store written whole and shared by the parts of a split one, and
    exclusive on the part's own lock. Another writer in the way: a DataError naming it."""
    import fcntl

    handles = []

    def take(path: str, mode: int, what: str):
        handle = open(path, "a+", encoding="utf-8")
        handles.append((handle, mode))
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another prepare --shard"
            raise DataError(
                f"{out} is being written by {holder} ({what}): wait for it to end, or choose another --out"
            ) from None
        if mode == fcntl.LOCK_EX:
            handle.seek(0)
            handle.truncate()
            handle.write(
                f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
            )
            handle.flush()

    try:
        make_folder(os.path.join(out, "parts"))
        take(
            os.path.join(out, "writing.lock"),
            fcntl.LOCK_EX if parts == 1 else fcntl.LOCK_SH,
            "the whole store" if parts == 1 else "parts of it",
        )
        if parts > 1:
            take(os.path.join(out, "parts", f"{part + 1}-of-{parts}.lock"), fcntl.LOCK_EX,
                 f"part {part + 1} of {parts}")  # fmt: skip
        yield
    finally:
        for handle, mode in reversed(handles):
            with suppress(OSError):
                if mode == fcntl.LOCK_EX:
                    handle.truncate(0)  # no name left behind for the next contender to read
                fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def _other_parts(out: str, parts: int) -> list[str]:
    """State files of parts of another split of this store (parts/K-of-M.npz with M != parts)."""
    folder = os.path.join(out, "parts")
    if not os.path.isdir(folder):
        return []
    return sorted(
        f for f in os.listdir(folder) if f.endswith(".npz") and not f.endswith(f"-of-{parts}.npz")
    )


def _jpeg_estimate(splits: dict, layout: dict, quality: int, total: int) -> int:
    """Bytes an image of a JPEG store, from up to 8 of its images encoded here, with a quarter to spare."""
    sizes = []
    for row in np.linspace(0, total - 1, num=min(8, total)).astype(int):
        name = next(n for n, (start, count) in layout.items() if start <= row < start + count)
        try:
            image = splits[name].load(int(row - layout[name][0]))
        except BadImageError:
            continue
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        sizes.append(len(buffer.getvalue()))
    return int(1.25 * (np.mean(sizes) if sizes else _IMAGE_BYTES))


def prepare_store(
    spec: str,
    classes: Sequence[str],
    splits: dict[str, Split],
    out: str,
    *,
    workers: int = 0,
    strict: bool = False,
    chunk: int = 64,
    progress: bool = True,
    on_chunk: Optional[Callable[[int], None]] = None,
    encoding: str = "raw",
    quality: int = JPEG_QUALITY,
    shard: tuple[int, int] = (0, 1),
    save_every: float = SAVE_EVERY_S,
) -> Optional[Store]:
    """Write ``splits`` into a store at ``out`` (continuing an interrupted one), with the statistics of its
    training images. ``encoding`` "jpeg" keeps each 256x256 image as a JPEG of ``quality`` (1-100) instead of
    raw bytes. ``shard`` (part, parts): write only that part (from 0) of ``parts``; the part that finds
    every part written completes the store. Returns the store, or None where parts remain to be written.

    Unreadable files are logged (a warning) with path and reason and left out; with ``strict``
    the first one raises :class:`BadImageError`. ``on_chunk(done)`` is called after every chunk taken in.
    The free space is checked first (NoSpaceError); a write that finds the disk full later raises it too,
    with what was written kept.
    """
    from tqdm.auto import tqdm

    if encoding not in ENCODINGS:
        raise DataError(f"unknown store encoding {encoding!r}: {' or '.join(ENCODINGS)}")
    if not 1 <= quality <= 100:
        raise DataError(f"JPEG quality must be between 1 and 100, not {quality}")
    part, parts = shard
    plan = _plan(spec, classes, splits, encoding, quality)
    total = plan["total"]
    if total == 0:
        raise DataError(f"{spec}: no images to write")
    if parts > total:
        raise DataError(f"--shard: {parts} parts of {total} images leave some parts empty")
    meta_path, progress_path = os.path.join(out, "store.json"), os.path.join(out, "progress.json")
    if is_store(out):
        old = _read_json(meta_path)
        if {k: old.get(k) for k in plan} != plan:
            raise DataError(
                f"{out} already holds a store of other data ({old.get('spec')}, "
                f"{old.get('total')} images); choose another --out"
            )
    elif os.path.isdir(out) and set(os.listdir(out)) - {"writing.lock", "parts"}:
        raise DataError(
            f"{out} is not empty and is not a store; choose an empty or new folder for --out"
        )
    if _finished(out, total):
        state = _read_json(progress_path)
        _logger.info(
            f"{out}: complete ({total} images, {len(state['bad'])} unreadable); nothing to do"
        )
        return Store(out)
    other = _other_parts(out, parts)
    if other:
        raise DataError(
            f"{out} is being written in other parts ({', '.join(other[:3])} in {out}/parts): run those "
            f"parts' own --shard, or remove {out}/parts to start over"
        )
    make_folder(out)
    with _writing(out, part, parts):
        state = _Part(out, part, parts, total)
        if not state.complete:
            _write_part(plan, splits, out, state, workers=workers, strict=strict, chunk=chunk,
                        progress=progress, on_chunk=on_chunk, quality=quality if encoding == "jpeg" else None,
                        save_every=save_every, tqdm=tqdm)  # fmt: skip
        elif parts > 1:
            _logger.info(f"{out}: part {part + 1} of {parts} is written")
    return _complete(out, plan, parts)


def _finished(out: str, total: int) -> bool:
    path = os.path.join(out, "progress.json")
    return (
        os.path.isfile(path)
        and _read_json(path).get("done", 0) >= total
        and os.path.isfile(os.path.join(out, "stats.npz"))
    )


def _space_needed(plan: dict, splits: dict, out: str, quality: Optional[int]) -> tuple[int, str]:
    """(bytes still to be written by every part, how it was reckoned)."""
    total, parts_dir = plan["total"], os.path.join(out, "parts")
    written = 0
    for name in os.listdir(parts_dir) if os.path.isdir(parts_dir) else []:
        if name.endswith(".npz"):
            with (
                suppress(OSError, KeyError, ValueError),
                np.load(os.path.join(parts_dir, name)) as saved,
            ):
                written += int(saved["done"])
    left = total - written
    if quality is None:
        return left * _IMAGE_BYTES + STATS_BYTES, f"{left:,} images of {_IMAGE_BYTES:,} B, raw"
    each = _jpeg_estimate(splits, plan["splits"], quality, total)
    return 2 * left * each + STATS_BYTES, (
        f"{left:,} images of about {each:,} B as JPEG (quality {quality}), twice: the parts, then the "
        f"store they are joined into"
    )


def _write_part(plan, splits, out, state: _Part, *, workers, strict, chunk, progress, on_chunk, quality,
                save_every, tqdm) -> None:  # fmt: skip
    total = plan["total"]
    needed, reckoning = _space_needed(plan, splits, out, quality)
    hint = f" ({reckoning}); free some, or choose another --out" + (
        "; --format jpeg needs about a tenth" if quality is None else ""
    )
    need_space(out, needed, "the store", hint)
    _write_json(os.path.join(out, "store.json"), plan)
    labels = np.concatenate([splits[name].labels for name in plan["splits"]])
    with atomic_write(os.path.join(out, "labels.npy"), "wb") as handle:
        np.save(handle, labels)
    if quality is None:  # images.u8 at its full size (sparse until written): readers map it whole
        fd = os.open(os.path.join(out, "images.u8"), os.O_RDWR | os.O_CREAT, 0o666)
        if os.fstat(fd).st_size < total * _IMAGE_BYTES:
            os.ftruncate(fd, total * _IMAGE_BYTES)
        sync = lambda: os.fsync(fd)  # noqa: E731 (the workers' writes, through their own descriptors)
    else:
        jpg = open(state.path + ".jpg", "r+b" if state.done else "wb")
        jpg.truncate(int(state.ends[state.done]))
        jpg.seek(int(state.ends[state.done]))

        def sync():
            jpg.flush()
            os.fsync(jpg.fileno())

    def save():
        sync()
        state.save()
        if (
            plan["total"] == state.end - state.first
        ):  # a store written whole: its progress as before
            _write_json(
                os.path.join(out, "progress.json"),
                {"done": state.first + state.done, "bad": state.bad},
            )

    first = state.first + state.done
    if state.done:
        _logger.info(f"{out}: continuing at image {first} of {total}")
    bar = tqdm(total=state.end - state.first, initial=state.done, unit="img", disable=not progress,
               desc="prepare" if state.end - state.first == total else f"prepare {state.path[-8:]}")  # fmt: skip
    jobs = chunks(first, state.end, chunk)
    saved_at = time.monotonic()
    try:
        for (start, end), (encoded, bad, moments) in ordered_map(
            _write_chunk, jobs, workers, _init_worker, (splits, plan["splits"], out, quality)
        ):
            if bad and strict:
                raise BadImageError(*bad[0][1:])
            if encoded is not None:
                at = state.ends[start - state.first]
                for k, data in enumerate(encoded):
                    if data is not None:
                        jpg.write(data)
                        at += len(data)
                    state.ends[start - state.first + k + 1] = at
            if moments is not None:
                state.moments.merge(StatsAccumulator.from_state(moments))
            for row, path, reason in bad:
                state.bad.append([row, path, reason])
                (bar.write if progress else _logger.warning)(f"skipped {path}: {reason}")
            state.done = end - state.first
            bar.update(end - start)
            if time.monotonic() - saved_at >= save_every or state.complete:
                save()
                saved_at = time.monotonic()
            if on_chunk is not None:
                on_chunk(state.first + state.done)
    except BaseException as err:
        with suppress(OSError):
            save()  # what was taken in is kept (a full disk may refuse even that: the last save stands)
        if is_full_disk(err):
            left = (state.end - state.first - state.done) * (
                _IMAGE_BYTES
                if quality is None
                else max(1, int(state.ends[state.done]) // max(1, state.done))
            )
            raise NoSpaceError(
                f"the disk of {out} filled up at image {state.first + state.done:,} of {total:,}: the rest "
                f"needs about {size_text(left)} and {size_text(free_space(out))} is free; what was written "
                f"is kept: free some space and run the same command to continue"
            ) from None
        raise
    finally:
        bar.close()
        if quality is None:
            os.close(fd)
        else:
            jpg.close()


def _complete(out: str, plan: dict, parts: int) -> Optional[Store]:
    """Where every part of ``parts`` is written: join them into the finished store (once: the first to
    take the merge lock), and return it; else None."""
    import fcntl

    if _finished(out, plan["total"]):
        return Store(out)
    states = [_Part(out, k, parts, plan["total"]) for k in range(parts)]
    left = [k + 1 for k, s in enumerate(states) if not s.complete]
    if left:
        _logger.info(
            f"{out}: {len(left)} of {parts} parts still to write ({', '.join(map(str, left[:8]))}): the "
            f"last to finish completes the store"
        )
        return None
    with open(os.path.join(out, "parts", "complete.lock"), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _logger.info(f"{out}: another part is completing the store")
            return None
        if _finished(out, plan["total"]):
            return Store(out)
        moments, bad = StatsAccumulator(), []
        for state in states:
            moments.merge(state.moments)
            bad += state.bad
        if plan.get("encoding") == "jpeg":
            _join_jpeg(out, states)
        stats = moments.result()
        stats.save(os.path.join(out, "stats.npz"))
        _write_json(os.path.join(out, "progress.json"), {"done": plan["total"], "bad": bad})
    shutil.rmtree(os.path.join(out, "parts"), ignore_errors=True)
    _logger.info(
        f"{out}: {plan['total'] - len(bad)} images written, {len(bad)} unreadable; "
        f"mean image and PCA of {stats.count} training images saved"
    )
    return Store(out)


def _join_jpeg(out: str, states: list) -> None:
    """images.jpg and offsets.i8 from the parts' .jpg files and their images' ends: one part's file is
    renamed into place, several are copied end to end."""
    offsets, at = [np.zeros(1, dtype=np.int64)], 0
    for state in states:
        offsets.append(state.ends[1:] + at)
        at += int(state.ends[-1])
    target = os.path.join(out, "images.jpg")
    if len(states) == 1:
        if os.path.exists(states[0].path + ".jpg"):
            os.replace(states[0].path + ".jpg", target)
    else:
        with atomic_write(target, "wb") as joined:
            for state in states:
                with open(state.path + ".jpg", "rb") as part:
                    shutil.copyfileobj(part, joined, 16 << 20)
    with atomic_write(os.path.join(out, "offsets.i8"), "wb") as handle:
        handle.write(np.concatenate(offsets).astype(np.int64).tobytes())
