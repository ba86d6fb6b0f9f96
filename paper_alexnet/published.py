"""Published trained weights by name: downloaded once, checked, converted once, cached.

    paper_alexnet.from_pretrained("bvlc")      # BVLC Caffe's bvlc_alexnet: the paper's architecture, trained
    python -m reproduce.evaluate --checkpoint torchvision --data imagenet:ROOT

A name goes wherever a checkpoint's path goes, and is used only where no file
or folder of that name exists (``resolve``). The file is downloaded into
torch's hub cache (``torch.hub.get_dir()``, which honours ``$TORCH_HOME``), with
a progress bar, into a temporary file that is checked against its published
checksum and only then renamed into place; the converted shared folder (shared.py:
safetensors and a model card) is cached beside it, so the second use touches no
network. Two processes that need one name at once (torchrun's ranks, two runs)
take a file lock: one downloads, the other waits and reads. A file put into the
cache by hand is used when its checksum matches. ``$PAPER_ALEXNET_WEIGHTS_MIRROR``
serves every name from a mirror (each file at the mirror's base URL under its
published file name). With no network: one line with the URL, the checksum,
where to put the file, and the command that then works (``WeightsError``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import urllib.error
from typing import Callable, Dict, Optional

from .atomic import file_lock, make_folder
from .checkpoint import CheckpointError

MIRROR_ENV = "PAPER_ALEXNET_WEIGHTS_MIRROR"


class WeightsError(CheckpointError):
    """Published weights that could not be had (no network, a wrong checksum): one line, exit 2."""


@dataclasses.dataclass(frozen=True)
class Published:
    """One set of published weights, as its publisher states it."""

    name: str
    url: str
    checksum: str  # "sha1:HEX" (the whole digest) or "sha256:PREFIX" (torch.hub's file-name prefix)
    size_mb: float
    variant: str  # the net it fits (list_variants)
    # the input the weights learned on, as the run that fine-tunes them must feed it: "raw" (0-255 pixels less a
    # mean) or "torchvision" (ImageNet's mean and std); reproduce's run_config.INPUTS
    input: str
    what: str  # the classes, the input and the mean the weights expect
    licence: str  # as the publisher states it
    accuracy: str  # as the publisher reports it

    @property
    def file_name(self) -> str:
        """The published file name: the cache's, and the mirror's."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def line(self) -> str:
        """The name in one line for --list-weights and --help."""
        return (
            f"{self.name}: {self.what}; variant {self.variant}; {self.accuracy}; licence: {self.licence}; "
            f"{self.url} ({self.size_mb:.0f} MB, {self.checksum})"
        )


def _bvlc() -> Published:
    from . import caffe

    return Published(
        name="bvlc",
        url="http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel",
        checksum=f"sha1:{caffe.BVLC_SHA1}",  # BVLC/caffe models/bvlc_alexnet/readme.md
        size_mb=233,
        variant="caffe",
        input="raw",
        what=(
            "BVLC Caffe's bvlc_alexnet (the paper's grouped, LRN net as BVLC trained it), 1000 ILSVRC-2012 "
            "classes, 227 crops of images warped to 256x256, raw 0-255 pixels less Caffe's per-channel mean "
            "(B 104, G 117, R 123: BVLC's mean image comes in an archive with no published checksum)"
        ),
        licence="unrestricted use (BVLC's readme)",
        accuracy="top-1 57.1%, top-5 80.2% on ILSVRC-2012 val, centre crop (BVLC's readme)",
    )


def _torchvision() -> Published:
    """torchvision's own entry (AlexNet_Weights.IMAGENET1K_V1): its URL, size and accuracy, not a copy."""
    from torchvision.models import AlexNet_Weights

    weights = AlexNet_Weights.IMAGENET1K_V1
    metrics = weights.meta["_metrics"]["ImageNet-1K"]
    prefix = re.search(r"-([a-f0-9]+)\.", weights.url.rsplit("/", 1)[-1])
    return Published(
        name="torchvision",
        url=weights.url,
        checksum=f"sha256:{prefix.group(1)}",  # the prefix torch.hub checks, in the file's name
        size_mb=float(weights.meta["_file_size"]),
        variant="torchvision",
        input="torchvision",
        what=(
            "torchvision's AlexNet_Weights.IMAGENET1K_V1 (the 2014 one-weird-trick net), 1000 ILSVRC-2012 "
            "classes, 224 crops, pixels normalised by ImageNet's mean and std"
        ),
        licence="BSD-3-Clause with torchvision; the weights' own terms derive from ImageNet's (torchvision's "
        "docs)",
        accuracy=f"top-1 {metrics['acc@1']:.1f}%, top-5 {metrics['acc@5']:.1f}% on ImageNet-1K val "
        "(torchvision's metadata)",
    )


# Where an entry comes from: a function, so that torchvision's enum is read only when asked. Tests add their own
# (small files, served on 127.0.0.1) with ``register``.
_MAKERS: Dict[str, Callable[[], Published]] = {"bvlc": _bvlc, "torchvision": _torchvision}
_CONVERTERS: Dict[str, Callable] = {}  # name -> (downloaded path -> Checkpoint), for test entries


def names() -> list:
    return list(_MAKERS)


def registry() -> Dict[str, Published]:
    """Every name, with what its publisher states."""
    return {name: make() for name, make in _MAKERS.items()}


def register(entry: Published, convert: Optional[Callable] = None) -> None:
    """Add a name (or replace one); ``convert(path) -> Checkpoint`` where weights.convert does not fit."""
    _MAKERS[entry.name] = lambda: entry
    if convert is not None:
        _CONVERTERS[entry.name] = convert


def unregister(name: str) -> None:
    _MAKERS.pop(name, None)
    _CONVERTERS.pop(name, None)


def lookup(name: str) -> Optional[Published]:
    make = _MAKERS.get(name)
    return make() if make is not None else None


def cache_dir() -> str:
    """torch.hub's checkpoint folder, where torch.hub and torchvision keep downloaded weights too."""
    import torch

    return os.path.join(torch.hub.get_dir(), "checkpoints")


def resolve(path: str, progress: bool = True) -> str:
    """``path`` itself where a file or folder of that name exists, or is no published name; otherwise the
    converted shared folder of the name's weights (downloaded and converted first, once)."""
    if os.path.exists(path):
        return path
    entry = lookup(path)
    return path if entry is None else converted(entry, progress)


def converted(entry: Published, progress: bool = True) -> str:
    """The shared folder of ``entry``'s weights, converted once from the downloaded file and cached."""
    from . import shared, weights

    folder = os.path.join(cache_dir(), "paper_alexnet", entry.name)
    if shared.is_shared(folder):
        return folder
    make_folder(cache_dir())
    with file_lock(
        os.path.join(cache_dir(), f"{entry.file_name}.lock"), _waiting(entry), _unlocked
    ):
        if shared.is_shared(folder):  # another process converted it while this one waited
            return folder
        source = fetch(entry, progress, locked=True)
        convert = _CONVERTERS.get(entry.name) or (lambda path: weights.convert(path))
        ckpt = convert(source)
        building = folder + ".building"
        shutil.rmtree(building, ignore_errors=True)
        shared.write(ckpt, building, command=f"paper_alexnet.published.converted({entry.name!r})")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(building, folder)
    return folder


def fetch(entry: Published, progress: bool = True, locked: bool = False) -> str:
    """The downloaded file of ``entry`` in the cache, checked: downloaded where it is not there yet (into a
    temporary file, checked, then renamed); a cached file whose checksum does not match is a WeightsError."""
    path = os.path.join(cache_dir(), entry.file_name)
    if not locked:
        make_folder(cache_dir())
        with file_lock(f"{path}.lock", _waiting(entry), _unlocked):
            return fetch(entry, progress, locked=True)
    if os.path.exists(path):
        found = digest(path, entry.checksum)
        if not matches(found, entry.checksum):
            raise WeightsError(
                f"{path} is not the published {entry.name} weights: {_kind(entry)} {found}, expected "
                f"{_expected(entry)}; delete it and run the same command again"
            )
        return path
    url = mirrored(entry)
    partial = f"{path}.partial"
    try:
        _download(url, partial, progress)
        found = digest(partial, entry.checksum)
        if not matches(found, entry.checksum):
            raise WeightsError(
                f"{url} gave a file with {_kind(entry)} {found}, not the published {_expected(entry)}: "
                "nothing was kept"
            )
        os.replace(partial, path)
    except (urllib.error.URLError, OSError, ValueError) as err:
        if isinstance(err, WeightsError):
            raise
        raise WeightsError(offline(entry, err)) from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path


def _download(url: str, path: str, progress: bool) -> None:
    """``url`` into ``path``, with a progress bar; a transfer cut short is an OSError (the caller turns it into
    a WeightsError)."""
    import http.client
    import urllib.request

    from tqdm.auto import tqdm

    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=os.path.basename(path),
                disable=not progress,
            ) as bar:
                got = 0
                while True:
                    chunk = response.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            if total is not None and got != total:
                raise OSError(f"the transfer ended after {got} of {total} bytes")
    except http.client.HTTPException as err:
        raise OSError(f"the transfer broke off ({type(err).__name__})") from None


def mirrored(entry: Published) -> str:
    """Where ``entry`` is downloaded from: its URL, or ``$PAPER_ALEXNET_WEIGHTS_MIRROR/FILE_NAME``."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return f"{mirror.rstrip('/')}/{entry.file_name}" if mirror else entry.url


def digest(path: str, checksum: str) -> str:
    """The file's digest of the kind ``checksum`` names (sha1 or sha256), in hex."""
    kind = checksum.split(":", 1)[0]
    hasher = hashlib.new(kind)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def matches(found: str, checksum: str) -> bool:
    """A sha1 must equal; a sha256 must start with the published prefix (as torch.hub checks it)."""
    kind, want = checksum.split(":", 1)
    return found == want if kind == "sha1" else found.startswith(want)


def offline(entry: Published, err: Exception) -> str:
    """The one line for weights that could not be downloaded: what to fetch, where to put it, what then works."""
    reason = getattr(err, "reason", None) or err
    return (
        f"could not download the {entry.name} weights from {mirrored(entry)} ({reason}): fetch that file by hand "
        f"({entry.size_mb:.0f} MB, {_expected(entry)}) into {os.path.join(cache_dir(), entry.file_name)} and "
        f"run the same command again, or set {MIRROR_ENV}=URL to a mirror that holds {entry.file_name}"
    )


def _kind(entry: Published) -> str:
    return entry.checksum.split(":", 1)[0]


def _expected(entry: Published) -> str:
    kind, want = entry.checksum.split(":", 1)
    return f"{kind} {want}" + ("..." if kind == "sha256" else "")


def _waiting(entry: Published):
    def busy(handle):
        import sys

        print(
            f"waiting for another process, which downloads the {entry.name} weights",
            file=sys.stderr,
        )

    return busy


def _unlocked(path, err) -> None:  # a cache folder without locks: each process downloads for itself
    return None
