"""ILSVRC-2012 as image-net.org ships it, in miniature: the three archives read in place into the store the
extracted tree gives, byte for byte; the layouts between; the counts; the free space; the store written in
parts on several processes; the statistics on every core, continued where they stopped, and §4.1's own
PCA."""

import errno
import json
import os
import shutil
import tarfile
import time

import numpy as np
import pytest

from paper_alexnet import atomic
from paper_alexnet.data import DataError, Store, open_dataset, prepare_store
from paper_alexnet.data.passes import ordered_map
from paper_alexnet.data.stats import split_stats
from paper_alexnet.data.store import _writing
from reproduce import prepare
from data_fixtures import ilsvrc_download, ilsvrc_extracted

pytestmark = pytest.mark.usefixtures("isolated_cache")
STORE_FILES = ("images.u8", "labels.npy", "progress.json")


@pytest.fixture(scope="module")
def download(tmp_path_factory):
    """(the folder of the three archives, the files in them, the same files extracted as docs/imagenet.md
    unpacks them)."""
    pytest.importorskip("scipy.io")
    root = tmp_path_factory.mktemp("ilsvrc")
    files = ilsvrc_download(str(root / "download"))
    return root / "download", files, ilsvrc_extracted(str(root / "extracted"), files)


def _prepare(data, out, *flags):
    return prepare.main(["--data", data, "--out", str(out), "--quiet", *flags])


def _same_store(a, b, *names):
    for name in names or STORE_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    meta_a, meta_b = (json.loads((s / "store.json").read_text()) for s in (a, b))
    assert {**meta_a, "spec": ""} == {**meta_b, "spec": ""}
    stats_a, stats_b = Store(str(a)).stats(), Store(str(b)).stats()
    assert np.array_equal(stats_a.mean_image, stats_b.mean_image)
    assert np.array_equal(stats_a.eigval, stats_b.eigval)
    assert np.array_equal(stats_a.eigvec, stats_b.eigvec)


def _listing(folder) -> dict:
    return {
        os.path.join(where, f): os.path.getsize(os.path.join(where, f))
        for where, _, files in os.walk(folder)
        for f in files
    }


def test_the_three_archives_give_the_store_of_the_extracted_tree_byte_for_byte(
    download, tmp_path, capsys
):
    archives, files, extracted = download
    before = _listing(archives)
    assert _prepare(f"imagenet:{extracted}", tmp_path / "extracted", "--workers", "0") == 0
    assert _prepare(f"imagenet:{archives}", tmp_path / "archives", "--workers", "2") == 0
    err = capsys.readouterr().err
    assert "3 class archives, read in place" in err and "labelled by" in err
    assert _listing(archives) == before  # nothing written beside the archives
    _same_store(tmp_path / "extracted", tmp_path / "archives")
    store = Store(str(tmp_path / "archives"))
    assert store.classes == sorted(files["train"]) and not store.bad  # every trap file decodes
    # the val labels went through the devkit's ILSVRC2012_ID (not in sorted-WNID order)
    expected = sorted(store.classes.index(wnid) for _, wnid, _ in files["val"])
    assert store.splits["val"].labels.tolist() == expected
    # the JPEG store from the archives, the same as from the tree
    for source, out in ((archives, "a.jpg"), (extracted, "e.jpg")):
        assert _prepare(f"imagenet:{source}", tmp_path / out, "--format", "jpeg") == 0
    _same_store(tmp_path / "a.jpg", tmp_path / "e.jpg", "images.jpg", "offsets.i8", "labels.npy")


def test_every_layout_between_the_archives_and_the_tree_reads_the_same(download, tmp_path, capsys):
    """The outer train tar unpacked (a train/ of class tars), one class of it unpacked too, a half-unpacked
    class beside its tar, and the val tar unpacked flat with the devkit beside it: the same store."""
    archives, files, extracted = download
    root = tmp_path / "half"
    with tarfile.open(archives / "ILSVRC2012_img_train.tar") as outer:
        outer.extractall(root / "train", filter="data")
    first, second = sorted(files["train"])[:2]
    with tarfile.open(
        root / "train" / f"{first}.tar"
    ) as inner:  # one class unpacked, its tar removed
        inner.extractall(root / "train" / first, filter="data")
    os.remove(root / "train" / f"{first}.tar")
    os.makedirs(root / "train" / second)  # another begun: the folder holds one image, the tar all
    name = sorted(files["train"][second])[0]
    (root / "train" / second / name).write_bytes(files["train"][second][name])
    with tarfile.open(archives / "ILSVRC2012_img_val.tar") as val:
        val.extractall(root / "val", filter="data")
    shutil.copy(archives / "ILSVRC2012_devkit_t12.tar.gz", root)
    assert _prepare(f"imagenet:{extracted}", tmp_path / "tree", "--workers", "0") == 0
    assert _prepare(f"imagenet:{root}", tmp_path / "half.store", "--workers", "2") == 0
    err = capsys.readouterr().err
    assert "2 classes read from their .tar archives in place, 1 from folders" in err
    assert "the .tar is read, being whole" in err
    _same_store(tmp_path / "tree", tmp_path / "half.store")


def test_what_cannot_be_read_gets_one_line_naming_what_was_found(download, tmp_path, capsys):
    archives, _, _ = download
    tar = archives / "ILSVRC2012_img_train.tar"
    assert _prepare(f"imagenet:{tar}", tmp_path / "s") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tar} is a file, not a folder: give the folder that holds it, "
                   f"--data imagenet:{archives}"]  # fmt: skip
    lone = tmp_path / "lone"  # the val archive without a devkit to label it
    shutil.copytree(download[2] + "/train", lone / "train")
    shutil.copy(archives / "ILSVRC2012_img_val.tar", lone)
    assert _prepare(f"imagenet:{lone}", tmp_path / "s") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no devkit (ILSVRC2012_devkit_t12.tar.gz" in err[0]
    empty = tmp_path / "empty"
    os.makedirs(empty / "train" / "n01440764")
    assert _prepare(f"imagenet:{empty}", tmp_path / "s") == 2
    assert "no images found under" in capsys.readouterr().err
    packed = tmp_path / "packed"  # a compressed class archive cannot be read in place
    os.makedirs(packed / "train")
    with tarfile.open(packed / "train" / "n01440764.tar", "w:gz") as archive:
        archive.add(tar, arcname="x.JPEG")
    assert _prepare(f"imagenet:{packed}", tmp_path / "s") == 2
    assert "it is compressed" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s")


def test_counts_are_checked_against_ilsvrc_2012_and_can_refuse(download, tmp_path, capsys):
    archives, _, _ = download
    assert _prepare(f"imagenet:{archives}", tmp_path / "s", "--workers", "0") == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "is not the whole of ILSVRC-2012" in line]
    assert len(warning) == 1 and warning[0].startswith("warning:")
    assert "12 training images (ILSVRC-2012: 1,281,167)" in warning[0]
    assert "6 validation images (ILSVRC-2012: 50,000)" in warning[0]
    assert _prepare(f"imagenet:{archives}?counts=refuse", tmp_path / "r") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("error: ")
        and "3 classes (ILSVRC-2012: 1,000)" in err[0]
    )
    assert not os.path.exists(tmp_path / "r")


def test_too_little_free_space_stops_before_the_first_byte(download, tmp_path, monkeypatch, capsys):
    archives, _, _ = download
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: usage._replace(free=5_000_000))
    assert _prepare(f"imagenet:{archives}", tmp_path / "s") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # 18 images of 196,608 B and 3.1 MB for the statistics' files
    assert err.startswith(
        f"error: not enough free space in {tmp_path / 's'} for the store: it needs 6.7 MB"
    )
    assert "and 5.0 MB is free (18 images of 196,608 B, raw)" in err
    assert not os.path.exists(tmp_path / "s" / "images.u8")
    assert (
        _prepare(f"imagenet:{archives}", tmp_path / "j", "--format", "jpeg") == 0
    )  # it fits as JPEG


def test_a_disk_that_fills_up_mid_write_ends_with_one_line_and_the_rest_follows(
    download, tmp_path, monkeypatch, capsys
):
    archives, _, _ = download
    real, calls = os.pwrite, []

    def full(fd, data, at):
        calls.append(at)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, at)

    monkeypatch.setattr(os, "pwrite", full)
    monkeypatch.setitem(
        prepare_store.__kwdefaults__, "chunk", 4
    )  # the third chunk of 4 finds it full
    out = tmp_path / "s"
    flags = ("--workers", "0")
    assert _prepare(f"imagenet:{archives}", out, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        f"error: the disk of {out} filled up at image 8 of 18: the rest needs about"
    )
    assert "is free; what was written is kept: free some space and run the same command" in err
    assert json.loads((out / "progress.json").read_text())["done"] == 8
    monkeypatch.setattr(os, "pwrite", real)
    assert _prepare(f"imagenet:{archives}", out, *flags) == 0
    assert _prepare(f"imagenet:{archives}", tmp_path / "fresh", *flags) == 0
    _same_store(out, tmp_path / "fresh")


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_a_store_written_in_parts_is_the_store_written_whole(download, tmp_path, capsys, encoding):
    archives, _, _ = download
    data, flags = f"imagenet:{archives}", ("--format", encoding, "--workers", "0")
    assert _prepare(data, tmp_path / "whole", *flags) == 0
    parts = tmp_path / "parts"
    for k in (3, 1):
        assert _prepare(data, parts, *flags, "--shard", f"{k}/3") == 0
        assert f"part {k} of 3 is written" in capsys.readouterr().err
        with pytest.raises(DataError, match="unfinished"):
            Store(str(parts))
    assert _prepare(data, parts, *flags, "--shard", "2/2") == 2  # another split of the same store
    assert "being written in other parts" in capsys.readouterr().err
    assert _prepare(data, parts, *flags) == 2
    assert _prepare(data, parts, *flags, "--shard", "2/3") == 0  # the last part completes it
    assert "train from it with" in capsys.readouterr().err
    names = ("images.u8",) if encoding == "raw" else ("images.jpg", "offsets.i8")
    _same_store(tmp_path / "whole", parts, *names, "labels.npy", "progress.json")
    assert not os.path.exists(parts / "parts")
    assert _prepare(data, parts, *flags, "--shard", "1/3") == 0  # a finished store: nothing to do


def test_two_prepares_into_one_store_are_refused_while_one_runs(download, tmp_path, capsys):
    archives, _, _ = download
    out = tmp_path / "s"
    os.makedirs(out)
    with _writing(str(out), 0, 1):  # as a running prepare holds it
        assert _prepare(f"imagenet:{archives}", out) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"{out} is being written by process {os.getpid()} on " in err
        assert _prepare(f"imagenet:{archives}", out, "--shard", "1/2") == 2
    with _writing(str(out), 1, 2):  # a part running: the same part, and the whole, wait for it
        assert _prepare(f"imagenet:{archives}", out, "--shard", "2/2") == 2
        assert "(part 2 of 2)" in capsys.readouterr().err
        assert _prepare(f"imagenet:{archives}", out) == 2
    assert _prepare(f"imagenet:{archives}", out, "--workers", "0") == 0


def test_the_workers_decode_ahead_while_the_main_process_is_busy(tmp_path):
    """The main process holds the first result until the workers have finished three more chunks: it can
    only get it because they do not wait for it (at most ``ahead`` chunks)."""
    marks = tmp_path / "marks"
    os.makedirs(marks)
    results = ordered_map(_mark, [(str(marks), k) for k in range(8)], workers=2, ahead=4)
    job, first = next(results)
    deadline = time.monotonic() + 120
    while len(os.listdir(marks)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir(marks)) >= 4 and first == 0
    assert [k for _, k in results] == list(range(1, 8))  # and the results come in the jobs' order


def _mark(job):
    folder, k = job
    open(os.path.join(folder, str(k)), "w").close()
    return k


def test_statistics_on_every_core_continue_where_they_stopped_and_are_every_pixels_pca(
    download, tmp_path
):
    archives, files, _ = download
    train = open_dataset(f"imagenet:{archives}", progress=False).split("train")
    one = split_stats(train, workers=0, chunk=5)
    two = split_stats(train, workers=2, chunk=3)
    state = tmp_path / "partial.npz"

    def stop(done):
        if done >= 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        split_stats(train, workers=2, chunk=3, state_path=str(state), on_chunk=stop)
    with np.load(state) as saved:
        assert int(saved["done"]) == 6 and int(saved["count"]) == 6
    seen = []
    resumed = split_stats(train, workers=0, chunk=3, state_path=str(state), on_chunk=seen.append)
    assert seen == [9, 12] and not state.exists()
    for other in (two, resumed):  # exact integer moments: the same numbers however the pass was cut
        assert np.array_equal(one.mean_image, other.mean_image)
        assert np.array_equal(one.eigval, other.eigval) and np.array_equal(one.eigvec, other.eigvec)
    # §4.1: the eigen-decomposition of the 3x3 covariance of every RGB pixel of the training images
    pixels = np.concatenate([train.load(i).reshape(-1, 3) for i in range(len(train))]) / 255.0
    eigval, eigvec = np.linalg.eigh(np.cov(pixels.T, bias=True))
    assert one.count == 12 and one.pca_source == "training set"
    # float64 both ways (np.cov's sums against exact integers): far below 1e-8 of the largest eigenvalue
    assert np.allclose(one.eigval, eigval[::-1], rtol=0, atol=1e-8 * eigval.max())
    assert np.allclose(np.abs(one.eigvec), np.abs(eigvec[:, ::-1]), rtol=0, atol=1e-6)
    stack = np.stack([train.load(i) for i in range(len(train))]).astype(np.float64)
    assert np.allclose(one.mean_image, stack.mean(0).transpose(2, 0, 1), rtol=0, atol=1e-4)


def test_train_without_a_store_takes_the_statistics_of_its_limit_train_subset_and_pca_as_asked(
    download, isolated_cache
):
    from paper_alexnet import distributed
    from paper_alexnet.data.stats import IMAGENET_EIGVAL
    from reproduce import train
    from reproduce.training import run_config

    archives, _, _ = download
    words = ["--data", f"imagenet:{archives}", "--limit-train", "3", "--quiet"]
    data = train.open_data(run_config.from_words(words), distributed.Process())
    assert (
        data.stats.count == 3 and len(data.train) == 3 and data.stats.pca_source == "training set"
    )
    three = np.stack([data.train.load(i) for i in range(3)]).astype(np.float64).mean(0)
    assert np.allclose(data.stats.mean_image, three.transpose(2, 0, 1), rtol=0, atol=1e-4)
    assert [f.name.endswith(".npz") for f in (isolated_cache / "stats").iterdir()] == [True]
    published = train.open_data(
        run_config.from_words(words + ["--pca", "published"]), distributed.Process()
    )
    assert published.stats.pca_source == "ImageNet (published)"
    assert np.array_equal(published.stats.eigval, IMAGENET_EIGVAL)
    assert np.array_equal(
        published.stats.mean_image, data.stats.mean_image
    )  # the cached pass, again
