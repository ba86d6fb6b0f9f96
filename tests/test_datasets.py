"""Data sets by --data spec, from fixtures in the real on-disk formats written here."""

import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from paper_alexnet.data import DataError, load_rgb, open_dataset, parse_spec, resize_and_center_crop
from paper_alexnet.data.imagenet import sort_imagenet_val
from reproduce.common.args import explain
from data_fixtures import cifar_batches, colour_image, image_tree, log_lines


pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_spec_parsing_and_errors():
    spec = parse_spec("folder:/data/fruit?val=0.25&seed=3")
    assert (spec.kind, spec.root, spec.options) == (
        "folder",
        "/data/fruit",
        {"val": 0.25, "seed": 3},
    )
    assert parse_spec("synthetic").options == {
        "classes": 10,
        "train": 1000,
        "val": 200,
        "seed": 0,
        "level": "easy",
    }
    for bad, words in [
        ("mnist:/x", "unknown data set"),
        ("cifar10", "needs a folder"),
        ("folder:/x?colour=1", "unknown option"),
        ("folder:/x?val=abc", "not a float"),
    ]:
        with pytest.raises(DataError, match=words):
            parse_spec(bad)


@pytest.mark.parametrize(
    "spec",
    [
        "folder:{}/missing",
        "imagenet:{}/missing",
        "cifar10:{}/missing",
        "caltech101:{}/missing",
        "store:{}/missing",
    ],
)
def test_missing_root_is_one_clear_error(tmp_path, spec):
    with pytest.raises(DataError) as info:
        open_dataset(spec.format(tmp_path))
    assert "\n" not in str(info.value) and "missing" in str(info.value)


def test_cifar10_pickled_batches(tmp_path):
    arrays, labels = cifar_batches(str(tmp_path))
    data = open_dataset(f"cifar10:{tmp_path}")
    assert data.classes == [f"class{i}" for i in range(10)]
    train = data.split("train")
    assert len(train) == len(labels) and len(data.split("val")) == 10
    images, got, skipped = train.batch([0, 7])
    assert (
        images.shape == (2, 3, 256, 256) and got.tolist() == [labels[0], labels[7]] and not skipped
    )
    # §2 on a 32x32 image: rescaled to 256 (shorter side), nothing cropped
    expected = np.asarray(resize_and_center_crop(Image.fromarray(arrays[7])))
    assert np.array_equal(images[1].permute(1, 2, 0).numpy(), expected)
    assert (
        np.abs(images[1].float().mean((1, 2)).numpy() - arrays[7].reshape(-1, 3).mean(0)).max() < 2
    )


class _Payload:
    """What a crafted batch would run when unpickled: it writes a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_cifar_batch_that_would_run_code_is_refused_and_runs_nothing(tmp_path, capsys):
    from reproduce import train

    cifar_batches(str(tmp_path))
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "rb") as handle:
        real = pickle.load(handle, encoding="bytes")
    # the batches as CIFAR's site has them were pickled by Python 2 with numpy.core's names: still read
    with open(batch, "wb") as handle:
        handle.write(pickle.dumps(real, protocol=2).replace(b"numpy._core", b"numpy.core"))
    assert len(open_dataset(f"cifar10:{tmp_path}").split("train")) == 35
    touched = tmp_path / "pwned"
    with open(batch, "wb") as handle:
        pickle.dump({**real, b"labels": _Payload(str(touched))}, handle, protocol=2)
    with pytest.raises(
        DataError, match="data_batch_1: it asks for io.open, which no CIFAR batch holds"
    ):
        open_dataset(f"cifar10:{tmp_path}")
    assert not touched.exists()
    out = tmp_path / "run"
    assert train.main(["--data", f"cifar10:{tmp_path}", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(batch) in err[0] and "nothing in it was run" in err[0]
    assert not touched.exists() and not out.exists()


def test_cifar100_fine_labels(tmp_path):
    cifar_batches(str(tmp_path), hundred=True, classes=20)
    data = open_dataset(f"cifar100:{tmp_path}/cifar-100-python")
    assert len(data.classes) == 20 and data.split("train").labels.max() == 19


def test_caltech101_seeded_stratified_8_1_1(tmp_path):
    root = tmp_path / "caltech101" / "101_ObjectCategories"
    image_tree(str(root), {"BACKGROUND_Google": 4, "accordion": 20, "airplanes": 30, "anchor": 10})
    gray = root / "anchor" / "gray.jpg"
    Image.new("L", (80, 60), 77).save(gray)
    data = open_dataset(f"caltech101:{tmp_path}")
    assert data.classes == ["accordion", "airplanes", "anchor"]  # no BACKGROUND_Google
    sizes = {name: len(split) for name, split in data.splits.items()}
    assert sizes == {"train": 16 + 24 + 9, "val": 2 + 3 + 1, "test": 2 + 3 + 1}
    paths = [data.split(n).describe(i) for n in data.splits for i in range(len(data.split(n)))]
    assert len(set(paths)) == 61 and not any("BACKGROUND" in p for p in paths)
    again = open_dataset(f"caltech101:{tmp_path}")
    assert [again.split("val").describe(i) for i in range(6)] == [
        data.split("val").describe(i) for i in range(6)
    ]
    other = open_dataset(f"caltech101:{tmp_path}?seed=1")
    assert {other.split("val").describe(i) for i in range(6)} != {
        data.split("val").describe(i) for i in range(6)
    }
    name, index = next(
        (n, i)
        for n in data.splits
        for i in range(len(data.split(n)))
        if data.split(n).describe(i) == str(gray)
    )
    image = data.split(name).batch([index])[0][0]
    assert image.shape == (3, 256, 256) and (image == 77).all()  # grayscale made RGB


def test_folder_with_train_and_val(tmp_path):
    image_tree(str(tmp_path / "train"), {"apple": 3, "banana": 2})
    image_tree(str(tmp_path / "val"), {"apple": 1, "banana": 1}, start_seed=50)
    data = open_dataset(f"folder:{tmp_path}")
    assert data.classes == ["apple", "banana"]
    assert data.split("train").labels.tolist() == [0, 0, 0, 1, 1] and data.split(
        "val"
    ).labels.tolist() == [0, 1]
    shutil.rmtree(tmp_path / "val" / "banana")
    os.makedirs(tmp_path / "val" / "banana")  # a validation class may be empty: said, not refused
    assert any(
        "'banana' has no images" in note for note in open_dataset(f"folder:{tmp_path}").notes
    )


def _junk(root):
    """What a zip made on macOS, Finder, Windows Explorer and Jupyter leave in a photo folder."""
    for folder in ("train/__MACOSX/apple", "train/.ipynb_checkpoints", "val/__MACOSX"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    colour_image(9).save(os.path.join(root, "train/__MACOSX/apple/._img000.jpg"), "JPEG")
    for name in (
        "train/apple/._img000.jpg",
        "train/apple/.DS_Store",
        "train/banana/Thumbs.db",
        "val/apple/desktop.ini",
    ):
        with open(os.path.join(root, name), "wb") as handle:
            handle.write(b"\x00\x05\x16\x07 not an image")


def test_the_junk_of_zips_and_file_managers_is_never_a_class_nor_unreadable_and_is_said_once(
    tmp_path, capsys
):
    from reproduce import train

    image_tree(str(tmp_path / "train"), {"apple": 3, "banana": 2})
    image_tree(str(tmp_path / "val"), {"apple": 1, "banana": 1}, start_seed=50)
    _junk(str(tmp_path))
    data = open_dataset(f"folder:{tmp_path}")
    assert data.classes == ["apple", "banana"] and len(data.split("train")) == 5
    said = [note for note in data.notes if "not data" in note]
    assert said == [
        f"{tmp_path / 'train'}: left out what is not data (1 x Thumbs.db, 1 x __MACOSX/, "
        "2 x hidden file, 1 x hidden folder)",
        f"{tmp_path / 'val'}: left out what is not data (1 x __MACOSX/, 1 x desktop.ini)",
    ], said
    out = tmp_path / "run"
    argv = ["--data", f"folder:{tmp_path}", "--out", str(out), "--epochs", "1", "-b", "4"]
    assert train.main(argv + ["--workers", "0", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "left out what is not data" in err and "unreadable" not in err


def test_a_validation_class_that_is_not_a_training_class_is_refused_by_name(tmp_path, capsys):
    from reproduce import train

    image_tree(str(tmp_path / "train"), {"apple": 3, "banana": 2})
    image_tree(str(tmp_path / "val"), {"apple": 1, "cherry": 1}, start_seed=50)
    with pytest.raises(DataError, match=r"val has classes that the training folder lacks: cherry"):
        open_dataset(f"folder:{tmp_path}")
    out = tmp_path / "run"
    assert train.main(["--data", f"folder:{tmp_path}", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cherry" in err[0] and not out.exists()


def test_an_empty_or_single_training_class_is_refused(tmp_path):
    image_tree(str(tmp_path / "train"), {"apple": 3, "banana": 2, "empty": 0})
    # not "3 classes, chance 67%"
    with pytest.raises(DataError, match=r"train/empty holds no image files"):
        open_dataset(f"folder:{tmp_path}")
    os.rmdir(tmp_path / "train" / "empty")
    shutil.rmtree(tmp_path / "train" / "banana")
    with pytest.raises(DataError, match="one class folder"):  # not 0.0% error
        open_dataset(f"folder:{tmp_path}")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    """A JPEG stored as a camera stores it, with EXIF orientation 1-8, reads back upright (the EXIF spec:
    2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 anticlockwise,
    each applied to the stored pixels to show them)."""
    # tall: red top half, blue bottom-left, green rest
    upright = np.zeros((120, 80, 3), dtype=np.uint8)
    upright[:60] = (255, 0, 0)
    upright[60:, :40] = (0, 0, 255)
    upright[60:, 40:] = (0, 255, 0)
    stored = {
        1: upright,
        2: upright[:, ::-1],
        3: upright[::-1, ::-1],
        4: upright[::-1],
        5: upright.transpose(1, 0, 2),
        6: np.rot90(upright, 1),
        7: upright[::-1, ::-1].transpose(1, 0, 2),
        8: np.rot90(upright, -1),
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(
        tmp_path / "photo.jpg", quality=95, exif=exif
    )
    got = load_rgb(str(tmp_path / "photo.jpg"), size=None)
    assert got.shape == upright.shape and np.abs(got.astype(int) - upright).mean() < 4, orientation


def test_folder_single_tree_split_by_ratio(tmp_path):
    image_tree(str(tmp_path), {"a": 10, "b": 10})
    data = open_dataset(f"folder:{tmp_path}?val=0.2&seed=4")
    assert len(data.split("train")) == 16 and sorted(data.split("val").labels.tolist()) == [
        0,
        0,
        1,
        1,
    ]


def test_empty_data_set_and_foreign_val_class(tmp_path):
    os.makedirs(tmp_path / "train" / "a")
    with pytest.raises(DataError, match="no images found"):
        open_dataset(f"folder:{tmp_path}")
    image_tree(str(tmp_path / "train"), {"a": 2, "b": 2})
    image_tree(str(tmp_path / "val"), {"zebra": 1})
    with pytest.raises(DataError, match="zebra"):
        open_dataset(f"folder:{tmp_path}")


def test_mean_image_and_pca_are_those_of_the_training_pixels(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8) for _ in range(6)]
    for k, array in enumerate(arrays):
        os.makedirs(tmp_path / "train" / f"c{k % 2}", exist_ok=True)
        Image.fromarray(array).save(tmp_path / "train" / f"c{k % 2}" / f"{k}.png")
    shutil.copytree(tmp_path / "train", tmp_path / "val")
    stats = open_dataset(f"folder:{tmp_path}").stats(progress=False)
    stack = np.stack(arrays).astype(np.float64)  # N x H x W x 3, 0-255
    # a float32 mean of 6 values up to 255 rounds at most 6 x u x 255 = 1e-4 from the float64 one
    assert np.allclose(stats.mean_image, stack.mean(0).transpose(2, 0, 1), rtol=0, atol=1e-3)
    pixels = stack.reshape(-1, 3) / 255.0
    eigval, eigvec = np.linalg.eigh(np.cov(pixels.T, bias=True))
    assert np.allclose(stats.eigval, eigval[::-1], rtol=1e-6)
    assert np.allclose(np.abs(stats.eigvec), np.abs(eigvec[:, ::-1]), atol=1e-6)
    again = open_dataset(f"folder:{tmp_path}").stats(progress=False)  # cached, same numbers
    assert np.array_equal(again.mean_image, stats.mean_image)


def test_imagenet_layout_and_validation_sorting(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    root = tmp_path / "ilsvrc"
    image_tree(str(root / "train"), {"n01440764": 2, "n02119789": 2})
    os.makedirs(root / "val")
    for k in range(1, 5):
        Image.new("RGB", (50, 40), (k, k, k)).save(root / "val" / f"ILSVRC2012_val_{k:08d}.JPEG")
    with pytest.raises(DataError, match="not sorted into class folders") as caught:
        open_dataset(f"imagenet:{root}")
    assert "python -m" not in str(caught.value)  # the library states the fault; the command
    assert "--sort-imagenet-val " + str(root / "val") in explain(caught.value)  # adds the remedy
    devkit = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    os.makedirs(devkit)
    synsets = np.array(
        [(1, "n02119789", 0), (2, "n01440764", 0), (1001, "n00001740", 2)],
        dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")],
    )
    scipy_io.savemat(devkit / "meta.mat", {"synsets": synsets})
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n2\n1\n")
    assert sort_imagenet_val(str(root / "val"), str(tmp_path / "ILSVRC2012_devkit_t12")) == 4
    assert sorted(os.listdir(root / "val" / "n02119789")) == [
        "ILSVRC2012_val_00000001.JPEG",
        "ILSVRC2012_val_00000004.JPEG",
    ]
    data = open_dataset(f"imagenet:{root}")
    assert data.classes == ["n01440764", "n02119789"] and data.split("val").labels.tolist() == [
        0,
        0,
        1,
        1,
    ]
    assert any(
        "is not the whole of ILSVRC-2012: 2 classes (ILSVRC-2012: 1,000)" in n for n in data.notes
    )


def test_imagenet_sorting_from_kaggle_csv(tmp_path):
    val = tmp_path / "val"
    os.makedirs(val)
    Image.new("RGB", (8, 8)).save(val / "ILSVRC2012_val_00000002.JPEG")
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\nILSVRC2012_val_00000002,n03000134 1 2 3 4\n")
    sort_imagenet_val(str(val), str(csv))
    assert os.listdir(val / "n03000134") == ["ILSVRC2012_val_00000002.JPEG"]


def test_synthetic_is_deterministic_and_cached(tmp_path):
    a = open_dataset("synthetic?classes=4&train=8&val=4", progress=False)
    with log_lines() as lines:
        b = open_dataset("synthetic?classes=4&train=8&val=4", progress=False)
    assert not lines, f"regenerated: {lines}"
    assert a.classes == ["disc", "ring", "square", "frame"]
    x, y, _ = a.split("train").batch(range(8))
    assert np.array_equal(x, b.split("train").batch(range(8))[0]) and y.tolist() == [0, 1, 2, 3] * 2
    # varied: no two images alike, and colours spread widely over the set
    flat = x.reshape(8, -1).float()
    assert torch.cdist(flat, flat)[~torch.eye(8, dtype=torch.bool)].min() > 0
    assert x.float().std(dim=(0, 2, 3)).min() > 30


def _object_centre(level: str, shape: str, index: int):
    """Centroid (x, y) of one object's mask, in pixels."""
    from paper_alexnet.data import synthetic

    how = synthetic.LEVELS[level]
    rng = np.random.default_rng([0, 0, index])
    mask = np.asarray(synthetic._shape_mask(shape, 256, rng, how), dtype=np.float64)
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean()


def test_synthetic_levels_place_objects_as_documented(tmp_path, monkeypatch):
    """easy: near the centre (within 20% of the room left by the object); hard: anywhere."""
    offsets = {
        level: [
            max(abs(c - 127.5) for c in _object_centre(level, shape, i))
            for shape in ("disc", "square", "hexagon")
            for i in range(12)
        ]
        for level in ("easy", "hard")
    }
    assert max(offsets["easy"]) < 0.2 * 128 * (1 - 0.25) + 3  # radius >= 0.25 of the side
    assert max(offsets["hard"]) > 40
    monkeypatch.setenv("PAPER_ALEXNET_CACHE", str(tmp_path))
    easy = open_dataset("synthetic?classes=2&train=2&val=1", progress=False)
    hard = open_dataset("synthetic?classes=2&train=2&val=1&level=hard", progress=False)
    assert not np.array_equal(easy.split("train").batch([0])[0], hard.split("train").batch([0])[0])
    assert sorted(os.listdir(tmp_path)) == [
        "synthetic-easy-c2-t2-v1-s0",
        "synthetic-hard-c2-t2-v1-s0",
    ]
    with pytest.raises(DataError, match="level='medium' is not one of easy, hard"):
        open_dataset("synthetic?level=medium", progress=False)


def test_runs_started_at_once_each_get_the_synthetic_set_whole(tmp_path):
    """ablate --jobs and torchrun start several runs together on a cold cache: none may fail on another's
    half-written folder, and one folder is left."""
    import subprocess
    import sys

    code = (
        "from paper_alexnet.data import open_dataset; "
        "d = open_dataset('synthetic?classes=4&train=64&val=16', progress=False); "
        "print(len(d.split('train')))"
    )
    env = dict(os.environ, PAPER_ALEXNET_CACHE=str(tmp_path), OMP_NUM_THREADS="1")
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, [err for _, err in results]
    assert [out.strip() for out, _ in results] == ["64"] * 4
    assert os.listdir(tmp_path) == ["synthetic-easy-c4-t64-v16-s0"]
