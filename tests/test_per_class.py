"""Per-class results: the counting against a confusion made by hand, evaluate --out against predict on the
same files, a training run's files, and the figure at 101 classes."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from paper_alexnet.metrics import Predictions, per_class
from reproduce import evaluate, predict, train
from reproduce.common import class_report
from data_fixtures import image_tree

# three classes (top-5 does not apply); one named in Chinese
CLASSES = {
    "apple": 6,
    "猫": 6,
    "pear": 6,
}


def _csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _hand_made():
    """Four classes of 10, 4, 0 and 6 images; the confusion written out, then turned into predictions."""
    confusion = np.array(
        [
            [7, 2, 0, 1],  # a: 3 wrong, mostly taken for b
            [0, 4, 0, 0],  # b: all right
            [0, 0, 0, 0],  # c: no images
            [3, 0, 1, 2],  # d: 4 wrong, 3 of them as a
        ]
    )
    labels, said = [], []
    for t in range(4):
        for p in range(4):
            labels += [t] * confusion[t, p]
            said += [p] * confusion[t, p]
    labels, said = np.array(labels), np.array(said)
    top = np.column_stack([said, (said + 1) % 4, (said + 2) % 4, (said + 3) % 4])
    prob = np.linspace(0.9, 0.3, len(labels))
    return confusion, Predictions(np.arange(len(labels)), labels, top, prob)


def test_the_counts_of_a_known_confusion():
    confusion, predictions = _hand_made()
    table = per_class(predictions, 4)
    assert (table["confusion"] == confusion).all()
    assert table["images"].tolist() == [10, 4, 0, 6]
    assert table["top1_err"][0] == pytest.approx(0.3) and table["top1_err"][1] == 0.0
    assert np.isnan(table["top1_err"][2]) and table["top1_err"][3] == pytest.approx(4 / 6)
    assert table["confused_with"].tolist() == [1, -1, -1, 0]
    assert table["confused_share"][0] == pytest.approx(0.2) and table["confused_share"][3] == 0.5
    # the mean of the classes that have images, each counted once: (0.3 + 0 + 4/6) / 3
    assert table["mean_top1_err"] == pytest.approx((0.3 + 0.0 + 4 / 6) / 3)
    assert table["top5_err"] is None  # 4 classes: top-5 says nothing


def test_the_files_agree_with_each_other(tmp_path):
    confusion, predictions = _hand_made()
    names = ["a", "b", "c", "d"]
    found = class_report.write(str(tmp_path), names, predictions)
    rows = _csv(tmp_path / "per_class.csv")
    assert [r["class"] for r in rows] == names
    assert (
        rows[2]["top1_err"] == ""
        and rows[0]["top5_err"] == ""
        and rows[0]["most_confused_with"] == "b"
    )
    labels, counts = class_report.read_confusion(str(tmp_path / "confusion.csv"))
    assert labels == names and (counts == confusion).all()
    images = [int(r["images"]) for r in rows]
    assert counts.sum(axis=1).tolist() == images  # each row sums to the class's images
    for r, row in enumerate(rows):  # the diagonal gives the per-class errors
        if images[r]:
            assert float(row["top1_err"]) == pytest.approx(1 - counts[r, r] / images[r])
    overall = 1 - np.trace(counts) / counts.sum()
    weighted = sum(float(r["top1_err"]) * int(r["images"]) for r in rows if int(r["images"])) / sum(
        images
    )
    # the image-weighted mean of the rows is the overall error
    assert weighted == pytest.approx(overall)
    assert [w["class"] for w in found["weakest"]] == ["d", "a", "b"]
    assert found["weakest"][0]["confused_with"] == "a"
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_101_classes_the_figure_stays_readable_and_groups_what_is_confused(tmp_path):
    rng = np.random.default_rng(1)
    n = 101
    counts = np.diag(rng.integers(20, 40, n))
    # 30 pairs of classes, each confused with the other
    pairs = rng.permutation(n)[:60].reshape(30, 2)
    for a, b in pairs:
        counts[a, b] += 15
        counts[b, a] += 15
    order = class_report.class_order(counts).tolist()
    assert sorted(order) == list(range(n))
    position = {c: i for i, c in enumerate(order)}
    assert np.mean([abs(position[a] - position[b]) == 1 for a, b in pairs]) >= 0.9  # side by side
    names = [f"class {i}" for i in range(n)]
    class_report.confusion_figure(str(tmp_path / "confusion.png"), names, counts)
    width, height = Image.open(tmp_path / "confusion.png").size
    # one screen, not 101 names' worth of inches
    assert 1000 <= width <= 2000 and 700 <= height <= 1400


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A paper net trained one epoch on a folder of three classes (train/ and val/), with its run folder."""
    root = tmp_path_factory.mktemp("fruit")
    image_tree(str(root / "train"), CLASSES, size=(80, 60))
    image_tree(str(root / "val"), {k: 4 for k in CLASSES}, start_seed=100, size=(80, 60))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAPER_ALEXNET_CACHE", str(root / "cache"))
        run = root / "run"
        code = train.main(
            [
                "--data",
                f"folder:{root}",
                "-b",
                "8",
                "--workers",
                "0",
                "--quiet",
                "--epochs",
                "2",
                "--ten-crop",
                "--out",
                str(run),
            ]  # fmt: skip
        )
        assert code == 0
        yield root, run


def test_a_training_run_writes_the_per_class_files_of_best_pt(trained):
    root, run = trained
    result = json.loads((run / "result.json").read_text())
    rows = _csv(run / "per_class.csv")
    assert [r["class"] for r in rows] == sorted(CLASSES)  # the folder's order
    assert all(r["top5_err"] == "" and r["ten_crop_top5_err"] == "" for r in rows)  # 3 classes
    weighted = sum(float(r["top1_err"]) * int(r["images"]) for r in rows) / 12
    # best.pt's error, the same images
    assert weighted == pytest.approx(result["val_top1_err"], abs=1e-6)
    ten = sum(float(r["ten_crop_top1_err"]) * int(r["images"]) for r in rows) / 12
    assert ten == pytest.approx(result["ten_crop_top1_err"], abs=1e-6)
    mean = np.mean([float(r["top1_err"]) for r in rows])
    assert result["val_mean_class_top1_err"] == pytest.approx(mean, abs=1e-6)
    assert len(result["val_weakest"]) == 3
    for name in ("confusion.csv", "confusion.png"):
        assert (run / name).exists()


def test_evaluate_out_agrees_with_predict_on_the_same_files(trained, tmp_path, capsys):
    root, run = trained
    out = tmp_path / "eval"
    code = evaluate.main(
        [
            "--checkpoint",
            str(run / "best.pt"),
            "--data",
            f"folder:{root}",
            "-b",
            "32",
            "--workers",
            "0",
            "--out",
            str(out),
            "--mistakes",
            "4",
        ]  # fmt: skip
    )
    assert code == 0
    said = capsys.readouterr().out
    assert "mean per-class top-1 error" in said and "weakest:" in said
    # the split's order: class, then name
    files = sorted(str(p) for p in (root / "val").rglob("*.jpg"))
    assert (
        predict.main(
            ["--checkpoint", str(run / "best.pt"), "--csv", str(tmp_path / "p.csv"), *files]
        )
        == 0
    )
    first = {r["image"]: r["class"] for r in _csv(tmp_path / "p.csv") if r["rank"] == "1"}
    names, counts = class_report.read_confusion(str(out / "confusion.csv"))
    want = np.zeros_like(counts)
    for path, said_class in first.items():
        truth = os.path.basename(os.path.dirname(path))
        want[names.index(truth), names.index(said_class)] += 1
    assert (counts == want).all()
    result = json.loads((out / "result.json").read_text())
    assert result["top1_err"] == pytest.approx(1 - np.trace(want) / want.sum(), abs=1e-6)
    assert result["mean_class_top1_err"] == pytest.approx(
        np.mean(1 - np.diag(want) / want.sum(axis=1)), abs=1e-6
    )
    wrong = int(want.sum() - np.trace(want))
    if wrong:  # at most --mistakes of them, each crop as the net saw it
        assert (out / "mistakes.png").exists()


def test_evaluate_all_writes_one_folder_per_checkpoint(trained, tmp_path):
    root, run = trained
    code = evaluate.main(
        [
            "--all",
            str(run),
            "--data",
            f"folder:{root}",
            "--workers",
            "0",
            "--out",
            str(tmp_path / "all"),
            "--mistakes",
            "0",
        ]  # fmt: skip
    )
    assert code == 0
    assert sorted(os.listdir(tmp_path / "all")) == ["best", "checkpoint"]
    for name in ("per_class.csv", "confusion.csv", "confusion.png", "result.json"):
        assert (tmp_path / "all" / "best" / name).exists()
    assert not (tmp_path / "all" / "best" / "mistakes.png").exists()  # --mistakes 0
