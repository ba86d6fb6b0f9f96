"""Data sets chosen by one spec string: ``KIND[:ROOT][?key=value&...]``.

=====================  ====================================================================
``synthetic``          the built-in set (:mod:`.synthetic`), generated once into a cached store;
                       options ``classes`` (10), ``train`` (1000), ``val`` (200), ``seed`` (0)
``imagenet:ROOT``      ILSVRC-2012: ``ROOT/train/<wnid>/`` and ``ROOT/val/<wnid>/`` (sort a flat val
                       folder with :func:`.imagenet.sort_imagenet_val`); PCA lighting uses the
                       published ImageNet eigenvalues (§4.1)
``cifar10:ROOT``       torchvision's on-disk CIFAR-10 (``cifar-10-batches-py``); val = the test batch
``cifar100:ROOT``      torchvision's on-disk CIFAR-100 (``cifar-100-python``), fine labels
``caltech101:ROOT``    torchvision's layout (``caltech101/101_ObjectCategories``) without
                       BACKGROUND_Google; seeded stratified ``split`` (8:1:1) into train/val/test
``folder:ROOT``        an ImageFolder tree with ``train/`` and ``val/``, or one tree split by
                       the seeded ratio ``val`` (0.1)
``store:DIR``          a store written by ``python -m reproduce.prepare`` (the fast path)
=====================  ====================================================================

Every problem with the spec or the data root is a :class:`DataError` with one
line saying what to do, raised before any work starts.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import parse_qsl

import numpy as np

from ..atomic import make_folder, need_space
from ..cli import plural
from .folders import scan, tree_split
from .passes import usable_cores
from .images import DataError
from .splits import ArraySplit, FileSplit, RenderSplit, Split, SubsetSplit, stratified_split
from .stats import STATS_BYTES, DataStats, split_stats
from .store import Store, is_store, prepare_store
from . import synthetic

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Opening:
    """How a data set is opened: whether it may be downloaded, and whether long work shows a bar."""

    download: bool = False
    progress: bool = True


@dataclass(frozen=True)
class Source:
    """One kind of data set (``SOURCES`` at the end of this module): a new kind is one entry there."""

    open: Callable[["DataSpec", Opening], "DataSet"]
    needs_root: bool = True
    # ?key=value options and their defaults (the type is theirs)
    options: dict = field(default_factory=dict)
    downloadable: bool = False


@dataclass
class DataSpec:
    kind: str
    root: Optional[str]
    options: dict
    text: str
    given: tuple = ()  # the options the spec itself set (the rest are defaults)


def parse_spec(text: str) -> DataSpec:
    """``"folder:/data/fruit?val=0.2&seed=1"`` -> DataSpec(kind="folder", root="/data/fruit", options={...})."""
    head, _, query = str(text).partition("?")
    kind, _, root = head.partition(":")
    kind = kind.strip().lower()
    if kind not in SOURCES:
        raise DataError(
            f"unknown data set {kind!r} in --data {text!r}: use one of "
            f"{', '.join(k + (':ROOT' if s.needs_root else '') for k, s in SOURCES.items())}"
        )
    if SOURCES[kind].needs_root and not root:
        raise DataError(f"--data {kind} needs a folder: --data {kind}:ROOT")
    defaults = SOURCES[kind].options
    options = dict(defaults)
    pairs = parse_qsl(query, keep_blank_values=True)
    for key, value in pairs:
        if key not in defaults:
            allowed = ", ".join(defaults) or "none"
            raise DataError(f"unknown option {key!r} for --data {kind} (options: {allowed})")
        try:
            options[key] = type(defaults[key])(value)
        except ValueError:
            raise DataError(
                f"--data {kind}: option {key}={value!r} is not a {type(defaults[key]).__name__}"
            ) from None
    return DataSpec(
        kind,
        os.path.expanduser(root) if root else None,
        options,
        str(text),
        tuple(k for k, _ in pairs),
    )


def cache_dir() -> str:
    """Where generated data and statistics are kept: $PAPER_ALEXNET_CACHE, else ~/.cache/paper_alexnet."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("PAPER_ALEXNET_CACHE") or os.path.join(base, "paper_alexnet")


@dataclass
class DataSet:
    """Class names and splits ("train", "val", maybe "test") of one data set, and its statistics."""

    spec: str
    classes: list
    splits: dict
    notes: list = field(default_factory=list)
    store: Optional[Store] = None

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(
                f"--data {self.spec} has no {name!r} split (it has {', '.join(self.splits)})"
            )
        return self.splits[name]

    def stats(
        self, progress: bool = True, train: Optional[Split] = None, workers: Optional[int] = None
    ) -> DataStats:
        """§2/§4.1 statistics of the training split (or of ``train``, a part of it: --limit-train), from the
        store, else computed on ``workers`` processes (default: every usable core) and cached, the moments so
        far saved as they go: a stopped pass continues where it stopped."""
        if self.store is not None:
            return self.store.stats()
        train = self.split("train") if train is None else train
        key = hashlib.sha1(
            "\n".join(
                [self.spec, str(len(train))] + [train.describe(i) for i in range(len(train))]
            ).encode()
        ).hexdigest()[:16]
        path = os.path.join(cache_dir(), "stats", f"{key}.npz")
        if os.path.exists(path):
            return DataStats.load(path)
        make_folder(os.path.dirname(path))
        need_space(os.path.dirname(path), 3 * STATS_BYTES, "the data statistics' cache")
        chunk = 64
        workers = usable_cores() if workers is None else workers
        workers = min(workers, -(-len(train) // chunk)) if len(train) > chunk else 0
        _logger.info(
            f"computing the mean image and RGB PCA of {len(train)} training images on "
            f"{plural(max(workers, 1), 'process', 'processes')} (once; cached in {path})"
        )
        stats = split_stats(
            train, workers, chunk, state_path=path + ".partial.npz", progress=progress
        )
        stats.save(path)
        return stats


def _check_nonempty(spec: str, splits: dict) -> None:
    for name, split in splits.items():
        if len(split) == 0:
            raise DataError(f"--data {spec}: the {name} split has no images")


def _open_folder(spec: DataSpec, train_dir: str, val_dir: Optional[str]) -> DataSet:
    if not os.path.isdir(train_dir):
        raise DataError(f"data folder {train_dir} does not exist")
    classes, train, notes, empty = tree_split("train", train_dir)
    notes = [n for n in notes if not n.startswith("warning: class")]  # empty classes: refused below
    if len(train) == 0:
        raise DataError(
            f"no images found under {train_dir} (looked for class folders of "
            f".jpg/.jpeg/.png/.bmp/... files)"
        )
    if empty:  # a class the net could never learn, and a chance level that would be wrong
        raise DataError(
            f"{os.path.join(train_dir, empty[0])} holds no image files: every training class needs "
            f"images (remove the folder, or fill it)"
            + (f"; also empty: {', '.join(empty[1:4])}" if len(empty) > 1 else "")
        )
    if len(classes) < 2:
        raise DataError(
            f"{train_dir} has one class folder ({classes[0]}): a classifier needs at least two"
        )
    if val_dir is not None:
        _, val, more, _ = tree_split("val", val_dir, classes)
        splits = {"train": train, "val": val}
        notes += more
    else:
        ratio = spec.options.get("val", 0.1)
        if not 0 < ratio < 1:
            raise DataError(f"--data {spec.text}: val={ratio} must be a fraction between 0 and 1")
        part_train, part_val = stratified_split(
            train.labels, [1 - ratio, ratio], spec.options.get("seed", 0)
        )
        splits = {
            "train": SubsetSplit(train, part_train, "train"),
            "val": SubsetSplit(train, part_val, "val"),
        }
        notes.append(
            f"{spec.text}: one tree split {1 - ratio:g}:{ratio:g} per class with seed "
            f"{spec.options.get('seed', 0)}"
        )
    _check_nonempty(spec.text, splits)
    return DataSet(spec.text, classes, splits, notes)


def _open_imagenet(spec: DataSpec, opening: Opening) -> DataSet:
    from . import imagenet

    if spec.options["counts"] not in ("warn", "refuse"):
        raise DataError(f"--data {spec.text}: counts= must be warn or refuse")
    classes, splits, notes = imagenet.open_ilsvrc(spec.root, opening.progress)
    _check_nonempty(spec.text, splits)
    line = imagenet.count_check(spec.text, classes, splits, spec.options["counts"] == "refuse")
    return DataSet(spec.text, classes, splits, notes + ([line] if line else []))


def _open_plain_folder(spec: DataSpec, opening: Opening) -> DataSet:
    root = spec.root
    if not os.path.isdir(root):
        raise DataError(f"data folder {root} does not exist")
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        return _open_folder(spec, root, None)
    val_dir = next(
        (
            os.path.join(root, d)
            for d in ("val", "valid", "validation", "test")
            if os.path.isdir(os.path.join(root, d))
        ),
        None,
    )
    if val_dir is not None and "val" in spec.given:
        raise DataError(
            f"--data {spec.text}: {root} has its own {os.path.basename(val_dir)}/ folder, which is the "
            f"validation set, so ?val= has nothing to split: drop it to use that folder, or give a tree "
            f"without one"
        )
    return _open_folder(spec, train_dir, val_dir)


# What a CIFAR batch holds, pickled: dicts, lists, bytes, str and ints, and numpy arrays rebuilt by these
# (Python 2's files name numpy.core; numpy 2 pickles numpy._core; Python 3's bytes come through _codecs).
CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """pickle, refusing every global a CIFAR batch does not hold: a crafted batch cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which no CIFAR batch holds")
        return super().find_class(module, name)


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            batch = _BatchUnpickler(handle, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DataError(
            f"cannot read the CIFAR batch {path}: {err}; nothing in it was run"
        ) from None
    if not isinstance(batch, dict):
        raise DataError(
            f"cannot read the CIFAR batch {path}: it holds a {type(batch).__name__}, not a dict"
        )
    return batch


def _open_cifar(spec: DataSpec, opening: Opening) -> DataSet:
    hundred = spec.kind == "cifar100"
    folder = "cifar-100-python" if hundred else "cifar-10-batches-py"
    root = (
        spec.root
        if os.path.basename(os.path.normpath(spec.root)) == folder
        else os.path.join(spec.root, folder)
    )
    if not os.path.isdir(root) and opening.download:
        import torchvision

        dataset = torchvision.datasets.CIFAR100 if hundred else torchvision.datasets.CIFAR10
        for train in (True, False):
            dataset(spec.root, train=train, download=True)
    if not os.path.isdir(root):
        raise DataError(
            f"{spec.kind}: {root} does not exist (torchvision's layout); add --download to fetch it"
        )
    files = (
        (["train"], ["test"])
        if hundred
        else ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])
    )
    key = b"fine_labels" if hundred else b"labels"
    splits = {}
    for name, names in zip(("train", "val"), files):
        arrays, labels = [], []
        for file in names:
            path = os.path.join(root, file)
            if not os.path.isfile(path):
                raise DataError(f"{spec.kind}: missing {path}")
            batch = _unpickle(path)
            arrays.append(
                np.asarray(batch[b"data"], dtype=np.uint8)
                .reshape(-1, 3, 32, 32)
                .transpose(0, 2, 3, 1)
            )
            labels += list(batch[key])
        splits[name] = ArraySplit(name, np.concatenate(arrays), labels)
    meta = _unpickle(os.path.join(root, "meta" if hundred else "batches.meta"))
    classes = [c.decode() for c in meta[b"fine_label_names" if hundred else b"label_names"]]
    return DataSet(spec.text, classes, splits, ["val = the CIFAR test set (10,000 images)"])


def _open_caltech(spec: DataSpec, opening: Opening) -> DataSet:
    candidates = [
        os.path.join(spec.root, *p)
        for p in ((), ("101_ObjectCategories",), ("caltech101", "101_ObjectCategories"))
    ]
    root = next(
        (
            c
            for c in candidates
            if os.path.basename(os.path.normpath(c)) == "101_ObjectCategories" and os.path.isdir(c)
        ),
        None,
    )
    if root is None and opening.download:
        import torchvision

        torchvision.datasets.Caltech101(spec.root, download=True)
        root = candidates[2]
    if root is None:
        raise DataError(
            f"caltech101: no 101_ObjectCategories folder under {spec.root} (torchvision's layout "
            f"ROOT/caltech101/101_ObjectCategories); add --download to fetch it"
        )
    found = scan(root)
    classes, paths, labels, empty = found.classes, found.paths, found.labels, found.empty
    keep = [c for c in classes if c != "BACKGROUND_Google"]  # as torchvision does
    mapping = {classes.index(c): k for k, c in enumerate(keep)}
    pairs = [(p, mapping[y]) for p, y in zip(paths, labels) if y in mapping]
    if not pairs:
        raise DataError(f"caltech101: no images under {root}")
    whole = FileSplit("all", [p for p, _ in pairs], [y for _, y in pairs])
    try:
        ratios = [float(r) for r in spec.options["split"].split(":")]
        assert len(ratios) == 3 and min(ratios) >= 0 and sum(ratios) > 0
    except (ValueError, AssertionError):
        raise DataError(
            f"caltech101: split={spec.options['split']!r} must be three ratios like 8:1:1"
        ) from None
    fractions = [r / sum(ratios) for r in ratios]
    parts = stratified_split(whole.labels, fractions, spec.options["seed"])
    splits = {
        name: SubsetSplit(whole, part, name) for name, part in zip(("train", "val", "test"), parts)
    }
    _check_nonempty(spec.text, splits)
    notes = [
        f"caltech101: {len(keep)} classes, split {spec.options['split']} per class with seed "
        f"{spec.options['seed']}: {', '.join(f'{n} {len(s)}' for n, s in splits.items())}"
    ]
    notes += [f"warning: class {c!r} has no images" for c in empty if c in keep]
    notes += [note for note in [found.junk_note(root)] if note]
    return DataSet(spec.text, keep, splits, notes)


def _open_store(spec: DataSpec, opening: Opening) -> DataSet:
    store = Store(spec.root)
    return DataSet(
        spec.text,
        store.classes,
        dict(store.splits),
        [
            f"store {spec.root}: {store.meta['spec']}, {plural(len(store.bad), 'unreadable file')} left out"
        ],
        store=store,
    )


def synthetic_source(spec: DataSpec) -> DataSet:
    """The synthetic set as splits that render on demand (what gets written into its cached store)."""
    o = spec.options
    if not 2 <= o["classes"] <= len(synthetic.SHAPES):
        raise DataError(
            f"synthetic: classes={o['classes']} must be between 2 and {len(synthetic.SHAPES)}"
        )
    if o["train"] < o["classes"] or o["val"] < 1:
        raise DataError(
            f"synthetic: train={o['train']} must be at least classes={o['classes']}, val at least 1"
        )
    if o["level"] not in synthetic.LEVELS:
        raise DataError(
            f"synthetic: level={o['level']!r} is not one of {', '.join(synthetic.LEVELS)}"
        )
    splits = {}
    for name in ("train", "val"):
        render = functools.partial(
            _render, split=name, seed=o["seed"], num_classes=o["classes"], level=o["level"]
        )
        splits[name] = RenderSplit(name, synthetic.labels_for(o[name], o["classes"]), render)
    return DataSet(spec.text, list(synthetic.SHAPES[: o["classes"]]), splits)


def _render(label, index, split, seed, num_classes, level):
    return synthetic.render(label, index, split, seed, num_classes=num_classes, level=level)


def _complete(folder: str) -> bool:
    return is_store(folder) and os.path.isfile(os.path.join(folder, "stats.npz"))


def _open_synthetic(spec: DataSpec, opening: Opening) -> DataSet:
    o = spec.options
    source = synthetic_source(spec)
    folder = os.path.join(
        cache_dir(),
        f"synthetic-{o['level']}-c{o['classes']}-t{o['train']}-v{o['val']}-s{o['seed']}",
    )
    if not _complete(folder):
        _logger.info(f"generating the built-in synthetic data set into {folder} (once)")
        # written beside and renamed into place whole: runs started at once (ablate --jobs, torchrun ranks)
        # each build their own and the first rename wins, instead of writing into one folder together
        os.makedirs(cache_dir(), exist_ok=True)
        building = tempfile.mkdtemp(prefix=os.path.basename(folder) + ".building-", dir=cache_dir())
        try:
            prepare_store(
                source.spec,
                source.classes,
                source.splits,
                building,
                workers=0,
                progress=opening.progress,
            )
            if not _complete(folder):
                # a folder left half-written by a killed run
                shutil.rmtree(folder, ignore_errors=True)
                try:
                    os.rename(building, folder)
                except OSError:
                    if not _complete(folder):  # not another run's finished copy: a real error
                        raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    store = Store(folder)
    return DataSet(
        spec.text,
        store.classes,
        dict(store.splits),
        [f"synthetic data cached in {folder}"],
        store=store,
    )


def open_dataset(text: str = "synthetic", download: bool = False, progress: bool = True) -> DataSet:
    """Open the data set named by ``text`` (see the module docstring); errors are :class:`DataError`."""
    spec = parse_spec(text)
    source = SOURCES[spec.kind]
    if download and not source.downloadable:
        raise DataError(
            f"--download works for {', '.join(k for k, s in SOURCES.items() if s.downloadable)}, "
            f"not {spec.kind}"
        )
    return source.open(spec, Opening(download, progress))


# Every kind of data set: how it opens, whether it needs a root folder, its options, whether it downloads.
SOURCES = {
    "synthetic": Source(
        _open_synthetic,
        needs_root=False,
        options={"classes": 10, "train": 1000, "val": 200, "seed": 0, "level": "easy"},
    ),
    "imagenet": Source(_open_imagenet, options={"counts": "warn"}),
    "cifar10": Source(_open_cifar, downloadable=True),
    "cifar100": Source(_open_cifar, downloadable=True),
    "caltech101": Source(_open_caltech, options={"split": "8:1:1", "seed": 0}, downloadable=True),
    "folder": Source(_open_plain_folder, options={"val": 0.1, "seed": 0}),
    "store": Source(_open_store),
}
KINDS = tuple(SOURCES)
