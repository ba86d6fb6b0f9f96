"""One set of loader processes for a whole run: every epoch's and every evaluation's batches
come from the same workers, the same batches a fresh loader gives."""

import os

import numpy as np
import torch

from paper_alexnet.data.loader import BatchLoader, WorkerPool
from paper_alexnet.data.splits import Split
from reproduce import train

TINY = ["--data", "synthetic?classes=4&train=16&val=8", "-b", "8", "--quiet"]


class Numbered(Split):
    """Image i is filled with i % 256; each batch says which process read it (its last row of labels)."""

    def __init__(self, name, count):
        super().__init__(name, np.arange(count) % 3)

    def load(self, i):
        return np.full((256, 256, 3), i % 256, dtype=np.uint8)

    def batch(self, indices, strict=False):
        images, labels, skipped = super().batch(indices, strict)
        return images, torch.cat([labels, torch.tensor([os.getpid()])]), skipped


def _read(loader):
    rows, readers = [], set()
    for images, labels in loader:
        rows.append(images[:, 0, 0, 0].tolist())
        readers.add(int(labels[-1]))
    return rows, readers


def test_a_pool_gives_every_pass_the_batches_a_new_loader_gives_from_the_same_processes():
    train_split, val_split = Numbered("train", 40), Numbered("val", 12)
    readers = set()
    with WorkerPool({"train": train_split, "val": val_split}, 2) as pool:
        for epoch in range(3):
            got, seen = _read(BatchLoader(train_split, 8, epoch=epoch, workers=pool))
            assert got == _read(BatchLoader(train_split, 8, epoch=epoch))[0]
            readers |= seen
            got, seen = _read(BatchLoader(val_split, 5, shuffle=False, workers=pool))
            assert got == _read(BatchLoader(val_split, 5, shuffle=False))[0]
            readers |= seen
        # a resumed epoch and a share of a data-parallel job take the pool's rows too
        got, _ = _read(
            BatchLoader(train_split, 8, epoch=1, start_batch=2, rank=1, world=2, workers=pool)
        )
        assert got == _read(BatchLoader(train_split, 8, epoch=1, start_batch=2, rank=1, world=2))[0]
    assert len(readers) == 2 and os.getpid() not in readers  # 6 passes, the same 2 processes


def test_a_run_starts_its_loader_processes_once(tmp_path, monkeypatch, shared_cache):
    """2 epochs, each validated, and the final per-class pass: one DataLoader for the run."""
    monkeypatch.setenv("PAPER_ALEXNET_CACHE", str(shared_cache))
    built = []
    real = torch.utils.data.DataLoader.__init__

    def counted(self, *args, **kwargs):
        built.append(kwargs.get("persistent_workers"))
        real(self, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", counted)
    out = tmp_path / "run"
    argv = TINY + [
        "--workers",
        "2",
        "--epochs",
        "2",
        "--variant",
        "paper+no-lrn",
        "--out",
        str(out),
    ]
    assert train.main(argv) == 0
    assert built == [True]


def test_the_loader_rate_counts_only_batches_read_after_its_clock_starts(monkeypatch):
    """A clock that moves 1 s for every batch read: the rate is one batch a second exactly when the batch read
    before the clock started is not counted (it was, and the rate came out (n + 1) / n too high); a split with
    fewer images than the measurement needs is repeated."""
    from types import SimpleNamespace

    from paper_alexnet.data import Augment, PaperTransform, loader

    clock = [0.0]

    class Ticking(Numbered):
        def batch(self, indices, strict=False):
            clock[0] += 1.0
            return super().batch(indices, strict)

    monkeypatch.setattr(loader, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    transform = PaperTransform(None, Augment(mean="none", pca=False))
    rate = loader.loader_throughput(Ticking("train", 10), transform, batch_size=4, batches=6)
    # 1 warm-up batch, then 6 timed, from 10 images repeated
    assert rate == 4.0 and clock[0] == 1 + 6


def test_the_loader_rate_waits_on_the_gpu_its_batches_are_on(monkeypatch):
    """loader_throughput's synchronisation names the batch's GPU (a bare synchronize() waits on the current
    GPU, cuda:0 when the run's is cuda:1, and the rate comes out too high); a fake CUDA batch shows the call."""
    from types import SimpleNamespace

    from paper_alexnet.data import loader

    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    on_gpu = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1))
    transform = SimpleNamespace(train=lambda images, generator: on_gpu)
    loader.loader_throughput(Numbered("train", 10), transform, batch_size=4, batches=2)
    assert waited and set(waited) == {torch.device("cuda", 1)}


def test_the_loader_processes_fit_the_room_in_dev_shm_and_say_so_in_one_line():
    """15 processes 2 batches ahead of 128 decoded images need (30 + 1) x 25 MB of /dev/shm: a container's 64 MB
    holds 1 process 1 batch ahead (the batch it hands over and the next), one line saying so; room enough
    changes nothing; no room at all leaves the reading to the main process; JPEG bytes for the device's
    decoder take a quarter of the room."""
    from paper_alexnet.data import loader

    batch = 128 * 3 * 256 * 256
    mb = 2**20
    assert loader.fit_to_shared_memory(15, 128, free=31 * batch) == (15, 2, None)
    processes, ahead, line = loader.fit_to_shared_memory(15, 128, free=64 * mb)
    assert (processes, ahead) == (1, 1) and 2 * batch <= 64 * mb < 3 * batch
    assert line.startswith(
        "/dev/shm has 64 MB free, and 15 loader processes 2 batches ahead need about 744 MB"
    )
    assert "1 process, 1 batch ahead" in line and "--shm-size=2g" in line and "\n" not in line
    processes, _, line = loader.fit_to_shared_memory(15, 128, free=10 * mb)
    assert processes == 0 and "the main process reads the batches itself" in line
    assert loader.fit_to_shared_memory(15, 128, loader.ENCODED_BYTES, free=8 * batch)[:2] == (15, 2)
    assert loader.fit_to_shared_memory(0, 128, free=0) == (0, 2, None)


def test_a_loader_with_too_little_shared_memory_runs_with_the_processes_that_fit(monkeypatch):
    """The DataLoader a BatchLoader builds takes fit_to_shared_memory's processes and prefetch, and the batches
    are the same."""
    from types import SimpleNamespace

    from paper_alexnet.data import loader

    split = Numbered("train", 12)
    want = [images for images, _ in BatchLoader(split, 4, workers=0, shuffle=False)]
    monkeypatch.setattr(
        loader.shutil, "disk_usage", lambda path: SimpleNamespace(free=3 * 4 * loader.IMAGE_BYTES)
    )
    said = []
    monkeypatch.setattr(loader, "_said", set())
    monkeypatch.setattr(loader._logger, "warning", said.append)
    batches = BatchLoader(split, 4, workers=3, shuffle=False)
    assert (batches.loader.num_workers, batches.loader.prefetch_factor) == (2, 1)
    # labels end with the reader's pid
    got = [(images, int(labels[-1])) for images, labels in batches]
    assert all(torch.equal(a, b) for (a, _), b in zip(got, want)) and len(got) == len(want)
    assert len({pid for _, pid in got}) == 2
    assert len(said) == 1 and "2 processes, 1 batch ahead" in said[0]
