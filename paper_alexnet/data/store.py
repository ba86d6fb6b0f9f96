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

import io
import json
import logging
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..backends import sync_allowed
from PIL import Image

from .. import paper
from ..atomic import atomic_write
from .images import BadImageError, DataError
from .splits import Split
from .stats import DataStats, split_stats

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
        progress = _read_json(os.path.join(root, "progress.json"))
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

_WORKER: dict = {"splits": {}, "quality": None}


def _init_worker(splits, quality=None):
    _WORKER["splits"].update(splits)
    _WORKER["quality"] = quality


def _load_one(job):
    """(image, None): 3x256x256 uint8, or its JPEG bytes for a JPEG store (encoded here, in the worker); or
    (None, (path, reason)) for a file that cannot be read."""
    name, i = job
    split = _WORKER["splits"][name]
    try:
        image = split.load(i).transpose(2, 0, 1)
    except BadImageError as err:
        return None, (err.path, err.reason)
    if _WORKER["quality"] is None:
        return image, None
    # PIL, not torch: a worker forked from a process whose torch thread pool has run would hang in a torch op
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(
        buffer, "JPEG", quality=_WORKER["quality"]
    )
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8), None


class _RawWriter:
    """images.u8: row i at its place in the memory map."""

    def __init__(self, out: str, total: int, done: int):
        size = paper.IMAGE_SIZE
        path = os.path.join(out, "images.u8")
        self.images = np.memmap(
            path,
            dtype=np.uint8,
            mode="r+" if os.path.exists(path) else "w+",
            shape=(total, 3, size, size),
        )

    def put(self, row: int, image: Optional[np.ndarray]) -> None:
        if image is not None:
            self.images[row] = image

    def flush(self) -> None:
        self.images.flush()

    def close(self) -> None:
        del self.images


class _JpegWriter:
    """images.jpg appended in row order, offsets.i8 marking each row's end; a restart cuts images.jpg back to
    the end of the last saved chunk (offsets[done])."""

    def __init__(self, out: str, total: int, done: int):
        path = os.path.join(out, "offsets.i8")
        self.offsets = np.memmap(
            path, dtype=np.int64, mode="r+" if os.path.exists(path) else "w+", shape=(total + 1,)
        )
        if done == 0:
            self.offsets[0] = 0
        self.handle = open(os.path.join(out, "images.jpg"), "r+b" if done else "wb")
        self.handle.truncate(int(self.offsets[done]))
        self.handle.seek(int(self.offsets[done]))

    def put(self, row: int, data: Optional[np.ndarray]) -> None:
        if data is not None:
            self.handle.write(data.tobytes())
        self.offsets[row + 1] = self.offsets[row] + (0 if data is None else len(data))

    def flush(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.offsets.flush()

    def close(self) -> None:
        self.handle.close()
        del self.offsets


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


def prepare_store(
    spec: str,
    classes: Sequence[str],
    splits: dict[str, Split],
    out: str,
    *,
    imagenet_pca: bool = False,
    workers: int = 0,
    strict: bool = False,
    chunk: int = 64,
    progress: bool = True,
    on_chunk: Optional[Callable[[int], None]] = None,
    encoding: str = "raw",
    quality: int = JPEG_QUALITY,
) -> Store:
    """Write ``splits`` into a store at ``out`` (continuing an interrupted one), then its statistics.
    ``encoding`` "jpeg" keeps each 256x256 image as a JPEG of ``quality`` (1-100) instead of raw bytes.

    Unreadable files are logged (a warning) with path and reason and left out; with ``strict``
    the first one raises :class:`BadImageError`. ``on_chunk(done)`` is called after every saved chunk.
    """
    from tqdm.auto import tqdm

    if encoding not in ENCODINGS:
        raise DataError(f"unknown store encoding {encoding!r}: {' or '.join(ENCODINGS)}")
    if not 1 <= quality <= 100:
        raise DataError(f"JPEG quality must be between 1 and 100, not {quality}")
    plan = _plan(spec, classes, splits, encoding, quality)
    if plan["total"] == 0:
        raise DataError(f"{spec}: no images to write")
    meta_path, progress_path = os.path.join(out, "store.json"), os.path.join(out, "progress.json")
    if is_store(out):
        old = _read_json(meta_path)
        if {k: old.get(k) for k in plan} != plan:
            raise DataError(
                f"{out} already holds a store of other data ({old.get('spec')}, "
                f"{old.get('total')} images); choose another --out"
            )
    elif os.path.isdir(out) and os.listdir(out):
        raise DataError(
            f"{out} is not empty and is not a store; choose an empty or new folder for --out"
        )
    os.makedirs(out, exist_ok=True)
    state = _read_json(progress_path) if os.path.exists(progress_path) else {"done": 0, "bad": []}
    total = plan["total"]
    if state["done"] >= total and os.path.isfile(os.path.join(out, "stats.npz")):
        _logger.info(
            f"{out}: complete ({total} images, {len(state['bad'])} unreadable); nothing to do"
        )
        return Store(out)

    _write_json(meta_path, plan)
    labels = np.concatenate([splits[name].labels for name in plan["splits"]])
    np.save(os.path.join(out, "labels.npy"), labels)
    writer = (_JpegWriter if encoding == "jpeg" else _RawWriter)(out, total, state["done"])
    jobs = [(name, i) for name in plan["splits"] for i in range(len(splits[name]))]
    if state["done"]:
        _logger.info(f"{out}: continuing at image {state['done']} of {total}")
    bar = tqdm(total=total, initial=state["done"], unit="img", desc="prepare", disable=not progress)
    quality = quality if encoding == "jpeg" else None
    pool = (
        ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(splits, quality))
        if workers > 0
        else None
    )
    if pool is None:
        _init_worker(splits, quality)
    try:
        for start in range(state["done"], total, chunk):
            todo = jobs[start : start + chunk]
            results = pool.map(_load_one, todo, chunksize=4) if pool else map(_load_one, todo)
            for row, (array, bad) in enumerate(results, start):
                writer.put(row, array)
                if bad is None:
                    continue
                if strict:
                    raise BadImageError(*bad)
                state["bad"].append([row, bad[0], bad[1]])
                (bar.write if progress else _logger.warning)(f"skipped {bad[0]}: {bad[1]}")
            writer.flush()
            state["done"] = min(start + chunk, total)
            _write_json(progress_path, state)
            bar.update(len(todo))
            if on_chunk is not None:
                on_chunk(state["done"])
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        writer.close()

    train = _train_rows(out, plan, state["bad"])
    reader = (JpegStoreSplit if encoding == "jpeg" else StoreSplit)(
        "train", out, train, labels[train], total
    )
    stats = split_stats(reader, 32)
    if imagenet_pca:
        stats = stats.with_imagenet_pca()
    stats.save(os.path.join(out, "stats.npz"))
    _logger.info(
        f"{out}: {total - len(state['bad'])} images written, {len(state['bad'])} unreadable; "
        f"mean image and PCA of {stats.count} training images saved"
    )
    return Store(out)


def _train_rows(out: str, meta: dict, bad: list) -> np.ndarray:
    if "train" not in meta["splits"]:
        raise DataError(f"{out}: the data set has no training split to compute the mean image from")
    start, count = meta["splits"]["train"]
    skip = {row for row, _, _ in bad}
    return np.array([row for row in range(start, start + count) if row not in skip], dtype=np.int64)
