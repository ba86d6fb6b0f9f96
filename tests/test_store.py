"""The prepared store: round trip, bad files reported and skipped, resume after a kill, idempotence;
and the batch loader over it and over JPEG folders."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from paper_alexnet.data import (
    BadImageError,
    BatchLoader,
    DataError,
    Store,
    epoch_order,
    load_rgb,
    open_dataset,
    prepare_store,
)
from reproduce import prepare
from data_fixtures import image_tree, log_lines, write_bad_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture
def fruit(tmp_path):
    """An ImageFolder tree of JPEGs with train/ and val/, bad files among the training images."""
    root = tmp_path / "fruit"
    image_tree(str(root / "train"), {"apple": 6, "banana": 5, "cherry": 4}, size=(90, 70))
    image_tree(str(root / "val"), {"apple": 2, "banana": 2, "cherry": 2}, start_seed=100)
    bad = write_bad_files(str(root / "train" / "banana"))
    return root, bad


def _prepare(data, out, **kwargs):
    with log_lines() as lines:
        store = prepare_store(
            data.spec,
            data.classes,
            data.splits,
            str(out),
            progress=False,
            **kwargs,
        )
    return store, lines


def test_store_round_trips_and_lists_bad_files(fruit, tmp_path):
    root, bad = fruit
    data = open_dataset(f"folder:{root}")
    assert len(data.split("train")) == 18  # 15 images + 3 bad files with image names
    store, lines = _prepare(data, tmp_path / "store", chunk=4)
    for path in bad.values():
        assert any(line.startswith(f"skipped {path}: ") for line in lines)
    assert {row[1] for row in store.bad} == set(bad.values())
    train = store.splits["train"]
    assert len(train) == 15 and len(store.splits["val"]) == 6
    kept = [
        data.split("train").describe(i)
        for i in range(18)
        if data.split("train").describe(i) not in bad.values()
    ]
    images, labels, _ = train.batch(np.arange(15)[::-1])  # any order comes back in that order
    for k, i in enumerate(range(14, -1, -1)):
        assert np.array_equal(images[k].permute(1, 2, 0).numpy(), load_rgb(kept[i]))
    assert labels.tolist() == train.labels[::-1].tolist()
    # the statistics are those of the 15 readable training images
    decoded = np.stack([load_rgb(p) for p in kept]).astype(np.float64)
    # a float32 mean of 15 values up to 255 rounds at most 15 x u x 255 = 2.3e-4 from the float64 one
    assert np.allclose(
        store.stats().mean_image, decoded.mean(0).transpose(2, 0, 1), rtol=0, atol=1e-3
    )
    reopened = open_dataset(f"store:{tmp_path / 'store'}")
    assert reopened.classes == ["apple", "banana", "cherry"] and len(reopened.split("train")) == 15


def test_strict_stops_at_the_first_bad_file(fruit, tmp_path):
    root, bad = fruit
    data = open_dataset(f"folder:{root}")
    with pytest.raises(BadImageError) as info:
        _prepare(data, tmp_path / "store", strict=True)
    assert info.value.path in bad.values()


def test_interrupted_prepare_continues_and_second_run_does_nothing(fruit, tmp_path):
    root, _ = fruit
    data = open_dataset(f"folder:{root}")

    def stop(done):
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _prepare(data, tmp_path / "a", chunk=4, on_chunk=stop)
    with open(tmp_path / "a" / "progress.json") as handle:
        assert json.load(handle)["done"] == 8
    with pytest.raises(DataError, match="unfinished"):
        Store(str(tmp_path / "a"))
    seen = []
    _, lines = _prepare(data, tmp_path / "a", chunk=4, on_chunk=seen.append)
    assert seen[0] == 12 and any("continuing at image 8" in line for line in lines)
    _prepare(data, tmp_path / "b", chunk=4)
    for name in ("images.u8", "labels.npy", "progress.json", "store.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    stamp = os.stat(tmp_path / "a" / "images.u8").st_mtime_ns
    _, lines = _prepare(
        data, tmp_path / "a", chunk=4, on_chunk=lambda done: pytest.fail("wrote again")
    )
    assert (
        "nothing to do" in lines[-1] and os.stat(tmp_path / "a" / "images.u8").st_mtime_ns == stamp
    )


def test_prepare_killed_with_sigkill_resumes_to_the_same_store(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from paper_alexnet.data import prepare_store, synthetic_source, parse_spec
        data = synthetic_source(parse_spec("synthetic?classes=3&train=12&val=3"))
        def die(done):
            if done >= 6:
                os.kill(os.getpid(), signal.SIGKILL)
        prepare_store(data.spec, data.classes, data.splits, {str(tmp_path / "killed")!r}, chunk=3,
                      progress=False, on_chunk=die)
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL, run.stderr
    for out in ("killed", "fresh"):
        assert (
            prepare.main(
                [
                    "--data",
                    "synthetic?classes=3&train=12&val=3",
                    "--out",
                    str(tmp_path / out),
                    "--quiet",
                    "--workers",
                    "0",
                ]
            )
            == 0
        )
    for name in ("images.u8", "labels.npy"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


def test_prepare_cli_parallel_workers_and_errors(fruit, tmp_path, capsys):
    root, bad = fruit
    out = tmp_path / "store"
    assert (
        prepare.main(["--data", f"folder:{root}", "--out", str(out), "--workers", "2", "--quiet"])
        == 0
    )
    err = capsys.readouterr().err
    assert all(path in err for path in bad.values()) and f"store:{out}" in err
    assert prepare.main(["--data", f"folder:{root}", "--out", str(out), "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert (
        prepare.main(["--data", "synthetic?classes=2&train=4&val=2", "--out", str(out), "--quiet"])
        == 2
    )
    assert "another --out" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("keep me")
    assert (
        prepare.main(["--data", f"folder:{root}", "--out", str(tmp_path / "busy"), "--quiet"]) == 2
    )
    assert (tmp_path / "busy" / "thesis.tex").read_text() == "keep me"
    assert (
        prepare.main(
            ["--data", f"folder:{root}", "--out", str(tmp_path / "s2"), "--strict", "--quiet"]
        )
        == 1
    )
    assert "unreadable image" in capsys.readouterr().err


def test_loader_skips_and_counts_bad_files_or_stops_when_strict(fruit):
    root, bad = fruit
    train = open_dataset(f"folder:{root}").split("train")
    loader = BatchLoader(train, 5, seed=0, epoch=0, workers=2)
    seen = sum(len(labels) for _, labels in loader)
    assert seen == 15 and sorted(path for path, _ in loader.skipped) == sorted(bad.values())
    with pytest.raises(BadImageError):
        for _ in BatchLoader(train, 5, strict=True):
            pass


def test_epoch_order_is_seeded_and_complete():
    a, b = epoch_order(103, 10, seed=1, epoch=2), epoch_order(103, 10, seed=1, epoch=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == 11
    assert sorted(np.concatenate(a).tolist()) == list(range(103))
    assert not np.array_equal(
        np.concatenate(a), np.concatenate(epoch_order(103, 10, seed=1, epoch=3))
    )
    assert len(epoch_order(103, 10, drop_last=True)) == 10
    tiny = open_dataset("synthetic?classes=2&train=6&val=2", progress=False)
    loader = BatchLoader(tiny.split("train"), 4, start_batch=1)
    assert len(loader) == 1 and [len(y) for _, y in loader] == [2]
    assert torch.is_tensor(next(iter(BatchLoader(loader.split, 2)))[0])


# --- the JPEG store (prepare --format jpeg) --------------------------------------------------------------------


def test_a_jpeg_store_holds_each_image_as_a_256_jpeg_close_to_the_raw_store_and_a_tenth_of_its_size(
    fruit, tmp_path
):
    root, bad = fruit
    data = open_dataset(f"folder:{root}")
    raw, _ = _prepare(data, tmp_path / "raw", chunk=4)
    jpeg, lines = _prepare(data, tmp_path / "jpeg", chunk=4, encoding="jpeg", quality=90)
    assert {row[1] for row in jpeg.bad} == set(bad.values()) and jpeg.encoding == "jpeg"
    for name in ("train", "val"):
        a, la, _ = raw.splits[name].batch(np.arange(len(raw.splits[name])))
        b, lb, skipped = jpeg.splits[name].batch(np.arange(len(jpeg.splits[name])))
        assert (
            skipped == []
            and la.tolist() == lb.tolist()
            and b.shape == a.shape
            and b.dtype == torch.uint8
        )
        assert (b.float() - a.float()).abs().mean() < 3  # quality 90: a few grey levels
    # the statistics come from the decoded images
    assert np.abs(jpeg.stats().mean_image - raw.stats().mean_image).mean() < 3
    size = (tmp_path / "jpeg" / "images.jpg").stat().st_size + (
        tmp_path / "jpeg" / "offsets.i8"
    ).stat().st_size
    assert size <= 0.15 * (tmp_path / "raw" / "images.u8").stat().st_size
    reopened = open_dataset(f"store:{tmp_path / 'jpeg'}")
    assert len(reopened.split("train")) == 15


def test_an_interrupted_jpeg_store_continues_to_the_same_bytes(fruit, tmp_path):
    root, _ = fruit
    data = open_dataset(f"folder:{root}")

    def stop(done):
        if done >= 8:
            # a chunk half written when killed
            with open(tmp_path / "a" / "images.jpg", "ab") as handle:
                handle.write(b"\xff\xd8 half an image")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _prepare(data, tmp_path / "a", chunk=4, on_chunk=stop, encoding="jpeg")
    _, lines = _prepare(data, tmp_path / "a", chunk=4, encoding="jpeg")
    assert any("continuing at image 8" in line for line in lines)
    _prepare(data, tmp_path / "b", chunk=4, encoding="jpeg")
    for name in ("images.jpg", "offsets.i8", "labels.npy", "progress.json", "store.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_a_corrupt_entry_of_a_jpeg_store_is_skipped_and_counted_never_a_crash(fruit, tmp_path):
    from paper_alexnet.data import BatchLoader

    root, _ = fruit
    out = tmp_path / "jpeg"
    assert (
        prepare.main(
            [
                "--data",
                f"folder:{root}",
                "--out",
                str(out),
                "--format",
                "jpeg",
                "--quality",
                "75",
                "--quiet",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    store = Store(str(out))
    offsets = np.fromfile(out / "offsets.i8", dtype=np.int64)
    row = int(store.splits["train"].index[3])
    blob = bytearray((out / "images.jpg").read_bytes())
    # the entry wiped
    blob[offsets[row] : offsets[row + 1]] = b"\x00" * int(offsets[row + 1] - offsets[row])
    (out / "images.jpg").write_bytes(bytes(blob))
    loader = BatchLoader(Store(str(out)).splits["train"], 4, shuffle=False, workers=2)
    images = sum(len(batch[0]) for batch in loader)
    assert images == 14 and len(loader.skipped) == 1 and "does not decode" in loader.skipped[0][1]
    with pytest.raises(BadImageError):
        Store(str(out)).splits["train"].batch([3], strict=True)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_jpeg_store_decoded_on_the_device_gives_the_batches_the_workers_decode(
    fruit, tmp_path, workers
):
    """--decode device: the workers hand over the bytes and the batch is decoded in one call where the net is
    (here the CPU, as nvjpeg does on a GPU); the same images, labels and skipped entry as decoding in the workers."""
    root, _ = fruit
    out = tmp_path / "jpeg"
    assert (
        prepare.main(
            [
                "--data",
                f"folder:{root}",
                "--out",
                str(out),
                "--format",
                "jpeg",
                "--quiet",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    store = Store(str(out))
    offsets = np.fromfile(out / "offsets.i8", dtype=np.int64)
    row = int(store.splits["train"].index[5])
    with open(out / "images.jpg", "r+b") as handle:  # one entry cut short
        handle.seek(int(offsets[row]) + 200)
        handle.write(b"\x00" * int(offsets[row + 1] - offsets[row] - 200))
    split = Store(str(out)).splits["train"]
    there, here = (
        BatchLoader(split, 4, seed=1, workers=workers, device="cpu", decode=way)
        for way in ("device", "workers")
    )
    assert there.decode_on_device and not here.decode_on_device
    got, want = list(there.global_batches()), list(here.global_batches())
    assert len(got) == len(want) == 4
    for (n, images, labels), (n_want, images_want, labels_want) in zip(got, want):
        assert n == n_want and torch.equal(images, images_want) and torch.equal(labels, labels_want)
    assert (
        there.skipped == here.skipped
        and len(there.skipped) == 1
        and "does not decode" in there.skipped[0][1]
    )
    kept = [i for i in range(len(split)) if i != 5]
    assert torch.equal(
        torch.cat([images for _, images, _ in got]).sum(0),
        torch.stack([torch.from_numpy(split.load(i)).permute(2, 0, 1) for i in kept]).sum(0),
    )
    with pytest.raises(BadImageError, match="does not decode"):
        list(BatchLoader(split, 4, shuffle=False, device="cpu", decode="device", strict=True))
    # a worker hands over 3 tensors, whatever the batch
    blob, bounds, labels, names = split.encoded([0, 1, 2, 3])
    assert (
        blob.ndim == 1 and bounds.tolist()[0] == 0 and len(bounds) == 5 and bounds[-1] == len(blob)
    )
    assert bytes(blob[bounds[1] : bounds[2]].numpy())[:2] == b"\xff\xd8" and names[
        1
    ] == split.describe(1)
    # --limit's subset
    assert BatchLoader(split.subset([0, 1, 2]), 2, decode="device").decode_on_device
    raw = open_dataset("synthetic?classes=2&train=4&val=2", progress=False).split("train")
    assert not BatchLoader(raw, 2, decode="device").decode_on_device  # nothing to defer


def test_decode_auto_is_the_device_on_a_gpu_and_the_workers_elsewhere():
    from paper_alexnet.data.loader import decode_where

    assert decode_where("auto", "cuda:1") == "device" and decode_where("auto", "cpu") == "workers"
    assert (
        decode_where("workers", "cuda") == "workers" and decode_where("device", "cpu") == "device"
    )
    with pytest.raises(ValueError, match="auto, workers, device"):
        decode_where("gpu", "cpu")


def test_prepare_refuses_a_bad_quality_or_format_before_any_work(fruit, tmp_path, capsys):
    root, _ = fruit
    for flags in (["--format", "jpeg", "--quality", "0"], ["--format", "jpeg", "--quality", "101"]):
        assert (
            prepare.main(
                ["--data", f"folder:{root}", "--out", str(tmp_path / "s"), "--quiet", *flags]
            )
            == 2
        )
        assert "--quality must be between 1 and 100" in capsys.readouterr().err
        assert not (tmp_path / "s").exists()


def test_a_jpeg_store_made_by_workers_after_torch_has_run_does_not_hang(tmp_path):
    """The bench computes statistics with torch before it prepares: workers forked after that must not run torch
    ops (they hung in the JPEG encoder); a subprocess with a timeout, so that a hang fails instead of stalling."""
    script = textwrap.dedent(f"""
        import torch
        from paper_alexnet.data import prepare_store, synthetic_source, parse_spec
        torch.mm(torch.randn(512, 512), torch.randn(512, 512)).sum()          # the thread pool has run
        data = synthetic_source(parse_spec("synthetic?classes=3&train=12&val=3"))
        prepare_store(data.spec, data.classes, data.splits, {str(tmp_path / "store")!r}, workers=2,
                      progress=False, encoding="jpeg")
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert Store(str(tmp_path / "store")).encoding == "jpeg"
