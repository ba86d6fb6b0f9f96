"""The prepared store: every image once at 256x256 uint8 (§2) in one memory-mapped file.

Layout of a store folder::

    store.json     what it holds: the data spec, class names, splits (start, count), image size
    images.u8      all images, N x 3 x 256 x 256 uint8, one memory-mapped file (train, then val, then test)
    labels.npy     N int64 labels
    progress.json  how many images are written, and the files that could not be read (path, reason)
    stats.npz      the training split's mean image (§2) and RGB PCA (§4.1), written last

Writing goes in chunks; after each chunk the images are flushed and then
progress.json is replaced atomically, so an interrupted ``prepare`` continues
from the last chunk and a finished one does nothing when run again. Reading
never decodes a JPEG: a batch is one fancy index into the memory map.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .. import paper
from ..atomic import atomic_write
from .images import BadImageError, DataError
from .splits import Split
from .stats import DataStats, StatsAccumulator

FORMAT = "paper_alexnet.store/1"
SPLIT_ORDER = ("train", "val", "test")


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
    """One split of a store; reads whole batches from the memory map (opened lazily in each process)."""

    def __init__(self, name: str, root: str, index: np.ndarray, labels: np.ndarray, total: int):
        super().__init__(name, labels)
        self.root, self.index, self.total = root, np.asarray(index, dtype=np.int64), total
        self._images = None

    def __getstate__(self):           # a DataLoader worker re-opens the map instead of copying it
        state = dict(self.__dict__)
        state["_images"] = None
        return state

    @property
    def images(self) -> np.memmap:
        if self._images is None:
            size = paper.IMAGE_SIZE
            self._images = np.memmap(os.path.join(self.root, "images.u8"), dtype=np.uint8, mode="r",
                                     shape=(self.total, 3, size, size))
        return self._images

    def describe(self, i: int) -> str:
        return f"{self.root} image #{int(self.index[i])}"

    def load(self, i: int) -> np.ndarray:
        return np.ascontiguousarray(self.images[self.index[i]].transpose(1, 2, 0))

    def batch(self, indices: Sequence[int], strict: bool = False):
        indices = np.asarray(indices, dtype=np.int64)
        rows = self.index[indices]
        order = np.argsort(rows, kind="stable")          # read the file front to back
        out = np.empty((len(rows), 3, paper.IMAGE_SIZE, paper.IMAGE_SIZE), dtype=np.uint8)
        out[order] = self.images[rows[order]]
        return torch.from_numpy(out), torch.from_numpy(self.labels[indices]), []


class Store:
    """A finished store, opened for reading."""

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise DataError(f"store {root} does not exist: make it with python -m reproduce.prepare --out {root}")
        if not is_store(root):
            raise DataError(f"{root} is not a store (no store.json): make one with python -m reproduce.prepare")
        self.root = root
        self.meta = _read_json(os.path.join(root, "store.json"))
        if self.meta.get("format") != FORMAT:
            raise DataError(f"{root}: unknown store format {self.meta.get('format')!r} (expected {FORMAT})")
        progress = _read_json(os.path.join(root, "progress.json"))
        total = self.meta["total"]
        if progress["done"] < total or not os.path.isfile(os.path.join(root, "stats.npz")):
            raise DataError(f"store {root} is unfinished ({progress['done']} of {total} images): run "
                            f"python -m reproduce.prepare --data {self.meta['spec']} --out {root} to finish it")
        self.classes = list(self.meta["classes"])
        self.bad = progress["bad"]
        labels = np.load(os.path.join(root, "labels.npy"))
        valid = np.ones(total, dtype=bool)
        valid[[row for row, _, _ in self.bad]] = False
        self.splits = {}
        for name, (start, count) in self.meta["splits"].items():
            rows = np.arange(start, start + count)
            rows = rows[valid[rows]]
            self.splits[name] = StoreSplit(name, root, rows, labels[rows], total)

    def stats(self) -> DataStats:
        return DataStats.load(os.path.join(self.root, "stats.npz"))


# -- writing --------------------------------------------------------------------------------------

_WORKER_SPLITS: dict = {}


def _init_worker(splits):
    _WORKER_SPLITS.update(splits)


def _load_one(job):
    name, i = job
    split = _WORKER_SPLITS[name]
    try:
        return split.load(i).transpose(2, 0, 1), None
    except BadImageError as err:
        return None, (err.path, err.reason)


def _plan(spec: str, classes: Sequence[str], splits: dict[str, Split]) -> dict:
    layout, start = {}, 0
    for name in SPLIT_ORDER:
        if name in splits:
            layout[name] = [start, len(splits[name])]
            start += len(splits[name])
    return {"format": FORMAT, "spec": spec, "classes": list(classes), "image_size": paper.IMAGE_SIZE,
            "splits": layout, "total": start}


def prepare_store(spec: str, classes: Sequence[str], splits: dict[str, Split], out: str, *,
                  imagenet_pca: bool = False, workers: int = 0, strict: bool = False, chunk: int = 64,
                  progress: bool = True, report: Callable[[str], None] = print,
                  on_chunk: Optional[Callable[[int], None]] = None) -> Store:
    """Write ``splits`` into a store at ``out`` (continuing an interrupted one), then its statistics.

    Unreadable files are reported through ``report`` with path and reason and left out; with ``strict``
    the first one raises :class:`BadImageError`. ``on_chunk(done)`` is called after every saved chunk.
    """
    from tqdm.auto import tqdm

    plan = _plan(spec, classes, splits)
    if plan["total"] == 0:
        raise DataError(f"{spec}: no images to write")
    meta_path, progress_path = os.path.join(out, "store.json"), os.path.join(out, "progress.json")
    if is_store(out):
        old = _read_json(meta_path)
        if {k: old.get(k) for k in plan} != plan:
            raise DataError(f"{out} already holds a store of other data ({old.get('spec')}, "
                            f"{old.get('total')} images); choose another --out")
    elif os.path.isdir(out) and os.listdir(out):
        raise DataError(f"{out} is not empty and is not a store; choose an empty or new folder for --out")
    os.makedirs(out, exist_ok=True)
    state = _read_json(progress_path) if os.path.exists(progress_path) else {"done": 0, "bad": []}
    total, size = plan["total"], paper.IMAGE_SIZE
    if state["done"] >= total and os.path.isfile(os.path.join(out, "stats.npz")):
        report(f"{out}: complete ({total} images, {len(state['bad'])} unreadable); nothing to do")
        return Store(out)

    _write_json(meta_path, plan)
    labels = np.concatenate([splits[name].labels for name in plan["splits"]])
    np.save(os.path.join(out, "labels.npy"), labels)
    image_path = os.path.join(out, "images.u8")
    images = np.memmap(image_path, dtype=np.uint8, mode="r+" if os.path.exists(image_path) else "w+",
                       shape=(total, 3, size, size))
    jobs = [(name, i) for name in plan["splits"] for i in range(len(splits[name]))]
    if state["done"]:
        report(f"{out}: continuing at image {state['done']} of {total}")
    bar = tqdm(total=total, initial=state["done"], unit="img", desc="prepare", disable=not progress)
    pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(splits,)) if workers > 0 else None
    if pool is None:
        _init_worker(splits)
    try:
        for start in range(state["done"], total, chunk):
            todo = jobs[start:start + chunk]
            results = pool.map(_load_one, todo, chunksize=4) if pool else map(_load_one, todo)
            for row, (array, bad) in enumerate(results, start):
                if bad is None:
                    images[row] = array
                    continue
                if strict:
                    raise BadImageError(*bad)
                state["bad"].append([row, bad[0], bad[1]])
                (bar.write if progress else report)(f"skipped {bad[0]}: {bad[1]}")
            images.flush()
            state["done"] = min(start + chunk, total)
            _write_json(progress_path, state)
            bar.update(len(todo))
            if on_chunk is not None:
                on_chunk(state["done"])
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        del images

    train = _train_rows(out, plan, state["bad"])
    accumulator = StatsAccumulator()
    memmap = np.memmap(image_path, dtype=np.uint8, mode="r", shape=(total, 3, size, size))
    for begin in range(0, len(train), 32):
        accumulator.update(memmap[train[begin:begin + 32]])
    stats = accumulator.result()
    if imagenet_pca:
        stats = stats.with_imagenet_pca()
    stats.save(os.path.join(out, "stats.npz"))
    report(f"{out}: {total - len(state['bad'])} images written, {len(state['bad'])} unreadable; "
           f"mean image and PCA of {stats.count} training images saved")
    return Store(out)


def _train_rows(out: str, meta: dict, bad: list) -> np.ndarray:
    if "train" not in meta["splits"]:
        raise DataError(f"{out}: the data set has no training split to compute the mean image from")
    start, count = meta["splits"]["train"]
    skip = {row for row, _, _ in bad}
    return np.array([row for row in range(start, start + count) if row not in skip], dtype=np.int64)
