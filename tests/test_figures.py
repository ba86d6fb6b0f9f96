"""The paper's figures and predict: Figure 3's kernel mosaic, Figure 4's nearest neighbours (checked against a
brute-force search on hand-made features), curves, and top-5 predictions for image files."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from reproduce import predict, train, visualize
from data_fixtures import colour_image, train_once, write_bad_files
from tolerance import assert_same_function

TINY = [
    "--data",
    "synthetic?classes=4&train=16&val=8",
    "-b",
    "8",
    "--workers",
    "0",
    "--quiet",
    "--epochs",
    "1",
]


pytestmark = pytest.mark.usefixtures("shared_cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run the tests read (and draw their figures into)."""
    root = train_once(tmp_path_factory, "figures", TINY)
    yield root / "run"
    shutil.rmtree(root, ignore_errors=True)


def _png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_filter_mosaic_puts_each_tower_in_its_own_block():
    weight = torch.zeros(96, 3, 11, 11)
    weight[48, 0] = 1.0  # the second tower's first kernel: pure red after stretching
    weight[47, 2, 0, 0] = 5.0  # the first tower's last kernel: one blue corner
    zoom, pad, gap, columns = 2, 1, 8, 12
    mosaic = visualize.filter_mosaic(weight, towers=2, columns=columns, zoom=zoom, pad=pad, gap=gap)
    cell = 11 * zoom + pad
    rows = 48 // columns  # 4 rows of 12 per tower
    assert mosaic.shape == (2 * rows * cell + gap + pad, columns * cell + pad, 3)
    second = 1 * (rows * cell + gap) + pad  # top of the second tower's block
    assert (mosaic[second : second + 22, pad : pad + 22] == [255, 0, 0]).all()
    last_top, last_left = (rows - 1) * cell + pad, (columns - 1) * cell + pad
    assert tuple(mosaic[last_top, last_left]) == (0, 0, 255) and tuple(
        mosaic[last_top + 2, last_left + 2]
    ) == (0, 0, 0)


def test_nearest_neighbours_are_the_true_nearest_on_hand_made_features():
    bank = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 3.0], [4.0, 4.0], [-1.0, -1.0]])
    queries = torch.tensor([[0.2, 0.1], [9.0, 1.0]])
    distances, indices = visualize.nearest(queries, bank, k=3)
    assert indices.tolist() == [[0, 4, 2], [1, 3, 0]]
    assert distances[1, 0].item() == pytest.approx(2**0.5)
    generator = torch.Generator().manual_seed(0)
    bank, queries = (
        torch.randn(300, 64, generator=generator),
        torch.randn(7, 64, generator=generator),
    )
    _, indices = visualize.nearest(queries, bank, k=5)
    for q in range(7):  # brute force, one distance at a time
        order = sorted(range(300), key=lambda i: float(((queries[q] - bank[i]) ** 2).sum()))
        assert indices[q].tolist() == order[:5]


def test_figures_from_a_trained_checkpoint(run, tmp_path):
    best = str(run / "best.pt")
    assert visualize.main(["filters", "--checkpoint", best]) == 0
    cell = 11 * 4 + 1
    # 2 towers x 4 rows of 12
    assert _png_size(run / "filters.png") == (
        12 * cell + 1,
        2 * 4 * cell + 8 + 1,
    )
    assert (
        visualize.main(
            ["neighbors", "--checkpoint", best, "--queries", "3", "-k", "4", "--device", "cpu"]
        )
        == 0
    )
    # (1 + 4) x 1.5 in, 3 x 1.6 in, at 100 dpi
    assert _png_size(run / "neighbors.png") == (
        750,
        480,
    )
    assert visualize.main(["curves", "--run", str(run), "--out", str(tmp_path / "curves.png")]) == 0
    assert _png_size(tmp_path / "curves.png") == (1000, 400)


def test_curves_of_several_runs_share_one_chart(run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    rows = pd.read_csv(run / "metrics.csv")
    rows.assign(val_top1_err=rows["val_top1_err"] / 2).to_csv(other / "metrics.csv", index=False)
    assert (
        visualize.main(
            ["curves", "--run", str(run), str(other), "--out", str(tmp_path / "both.png")]
        )
        == 0
    )
    assert _png_size(tmp_path / "both.png") == (1100, 400)
    assert (
        visualize._run_label(str(run)).endswith("(quick recipe)")
        and visualize._run_label(str(other)) == "other"
    )
    assert visualize.main(["curves", "--run", str(run), str(tmp_path / "missing")]) == 2


def test_fc7_features_are_the_relu_outputs_of_fc7(run):
    from paper_alexnet.data import open_dataset
    from reproduce.common.restore import restore

    net = restore(
        str(run / "best.pt"),
        visualize.get_args_parser().parse_args(["neighbors", "--checkpoint", "x"]),
    )
    model, transform = net.model, net.transform
    assert len(net.classes) == 4
    split = open_dataset("synthetic?classes=4&train=16&val=8").split("val")
    features, kept, skipped = visualize.fc7_features(
        model, split, transform, torch.device("cpu"), batch_size=3
    )
    assert kept == list(range(8)) and skipped == []
    images, _, _ = split.batch(range(len(split)))
    with torch.no_grad():  # by hand: §3.5's layers up to fc7, then its ReLU
        x = model.pool1(model.norm1(torch.relu(model.conv1(transform.center(images)))))
        x = model.pool2(model.norm2(torch.relu(model.conv2(x))))
        x = torch.relu(model.conv4(torch.relu(model.conv3(x))))
        x = torch.flatten(model.pool5(torch.relu(model.conv5(x))), 1)
        expected = torch.relu(model.fc7(torch.relu(model.fc6(x))))
    assert features.shape == (8, 4096)
    # batches of 3 against one of 8: another order
    assert_same_function(features, expected, 9216, 7)


def test_predict_prints_the_top_classes_of_image_files(run, tmp_path, capsys):
    paths = []
    for seed in range(3):
        path = tmp_path / f"photo{seed}.jpg"
        colour_image(seed, size=(300, 200)).save(path)
        paths.append(str(path))
    csv = tmp_path / "predictions.csv"
    assert (
        predict.main(
            paths + ["--checkpoint", str(run / "best.pt"), "--top", "3", "--csv", str(csv)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("centre crop") == 3 and out.count("  1. ") == 3 and "  4. " not in out

    table = pd.read_csv(csv)
    assert len(table) == 9 and set(table["class"]) <= {"disc", "ring", "square", "frame"}
    for _, group in table.groupby("image"):  # probabilities, best first
        assert list(group["probability"]) == sorted(group["probability"], reverse=True)
        assert group["probability"].between(0, 1).all()
    assert predict.main(paths[:1] + ["--checkpoint", str(run / "best.pt"), "--ten-crop"]) == 0
    assert "ten crops" in capsys.readouterr().out


def test_predict_is_the_softmax_of_the_centre_crop(run):
    """The probabilities of predict are the softmax of the net on the §4.1 centre crop, computed here by hand."""
    from paper_alexnet import build_model, checkpoint
    from paper_alexnet.data import Augment, PaperTransform

    saved = checkpoint.load(str(run / "best.pt"))
    model = build_model("paper", 4, init="he")
    model.load_state_dict(saved.model)
    model.eval()
    array = np.array(colour_image(5, size=(256, 256)))
    images = torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()
    mean = saved.stats["mean_image"]
    scale = saved.augment["scale"]
    at = (256 - 227) // 2
    x = (images[0].double() - mean.double())[:, at : at + 227, at : at + 227] * scale
    transform = PaperTransform(saved.data_stats(), Augment(**saved.augment))
    crop = transform.center(images)
    # the crop, by hand in float64: the transform's float32 subtraction and scaling round twice, at most u each
    u = torch.finfo(torch.float32).eps / 2
    assert float((crop[0].double() - x).abs().max()) <= 4 * u * float(x.abs().max())
    # and predict is the softmax of the net on that crop: the same net on the same input, bit for bit
    got = predict.predict(model, transform, images, False)[0]
    with torch.no_grad():
        assert torch.equal(got, torch.softmax(model(crop), dim=1)[0])


def test_bad_input_is_one_line_and_exit_2(run, tmp_path, capsys):
    bad = write_bad_files(str(tmp_path / "bad"))
    cases = [
        (
            predict.main,
            [str(tmp_path / "missing.jpg"), "--checkpoint", str(run / "best.pt")],
            "file not found",
        ),
        (
            predict.main,
            [next(iter(bad.values())), "--checkpoint", str(run / "best.pt")],
            "not a readable image",
        ),
        (predict.main, [str(tmp_path), "--checkpoint", str(run / "best.pt")], "Is a directory"),
        (
            predict.main,
            [str(tmp_path / "x.jpg"), "--checkpoint", str(tmp_path / "none.pt")],
            "does not exist",
        ),
        (visualize.main, ["filters", "--checkpoint", str(tmp_path / "none.pt")], "does not exist"),
        (visualize.main, ["curves", "--run", str(tmp_path)], "holds no metrics.csv"),
    ]
    for main, argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err


def _bomb(path):
    """A PNG of 16000 x 16000 pixels, a few kB on disk: PIL refuses to decode it (a decompression bomb)."""
    Image.new("1", (16000, 16000)).save(path)


def test_an_unreadable_image_never_shifts_the_neighbours_rows(run, tmp_path):
    from paper_alexnet.data.splits import FileSplit
    from reproduce.common.restore import restore

    net = restore(
        str(run / "best.pt"),
        visualize.get_args_parser().parse_args(["neighbors", "--checkpoint", "x"]),
    )
    paths = []
    for k in range(4):
        paths.append(str(tmp_path / f"img{k}.jpg"))
        colour_image(k, size=(300, 200)).save(paths[-1])
    _bomb(paths[1])
    cpu = torch.device("cpu")
    mixed = FileSplit("train", paths, [0, 1, 2, 3])
    features, kept, skipped = visualize.fc7_features(net.model, mixed, net.transform, cpu, 2)
    assert kept == [0, 2, 3] and [p for p, _ in skipped] == [paths[1]]
    assert "decompression bomb" in skipped[0][1]
    good = FileSplit("train", [paths[0], paths[2], paths[3]], [0, 2, 3])
    alone, _, _ = visualize.fc7_features(net.model, good, net.transform, cpu, 2)
    assert_same_function(features, alone, 9216, 7)  # row k is the image kept[k]
    with pytest.raises(Exception, match="decompression bomb"):
        visualize.fc7_features(net.model, mixed, net.transform, cpu, 2, strict=True)


def test_neighbors_skips_an_unreadable_training_image_by_the_one_rule(tmp_path, capsys):
    root = tmp_path / "photos"
    for split, seed in (("train", 0), ("val", 50)):
        for c, name in enumerate(("cat", "dog")):
            os.makedirs(root / split / name)
            for k in range(4 if split == "train" else 2):
                colour_image(seed + 10 * c + k, size=(120, 90)).save(
                    root / split / name / f"{k}.jpg"
                )
    out = tmp_path / "run"
    data = ["--data", f"folder:{root}", "--epochs", "1", "-b", "4", "--workers", "0", "--quiet"]
    assert train.main(data + ["--out", str(out)]) == 0
    _bomb(root / "train" / "dog" / "huge.png")
    capsys.readouterr()
    argv = ["neighbors", "--checkpoint", str(out / "best.pt"), "--queries", "2", "-k", "3"]
    assert visualize.main(argv + ["--out", str(tmp_path / "n.png")]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 unreadable file skipped" in err and "huge.png" in err
    assert "decompression bomb" in err and "--strict stops at the first instead" in err
    assert visualize.main(argv + ["--out", str(tmp_path / "s.png"), "--strict"]) == 1
    assert "huge.png" in capsys.readouterr().err and not (tmp_path / "s.png").exists()


def test_class_names_in_any_script_are_drawn_with_an_installed_cjk_font_or_said_once(
    monkeypatch, capsys
):
    from reproduce.common import figures

    # the chain: matplotlib's DejaVu Sans, then each CJK font that is installed, in CJK_FONTS' order
    fake = ["DejaVu Sans", "Arial", "PingFang SC", "Noto Sans CJK JP", "Microsoft YaHei"]
    assert figures.font_chain(fake) == [
        "DejaVu Sans", "Noto Sans CJK JP", "Microsoft YaHei", "PingFang SC"]  # fmt: skip
    assert figures.font_chain(["DejaVu Sans", "Arial"]) == ["DejaVu Sans"]
    names = ["猫", "狗", "고양이", "café"]
    # café's é is DejaVu's
    assert figures.missing_glyphs(names, ["DejaVu Sans"]) == "".join(sorted("猫狗고양이"))
    # with no CJK font: one warning naming the font to install, once, not one per glyph
    monkeypatch.setattr(figures, "font_chain", lambda installed=None: ["DejaVu Sans"])
    monkeypatch.setattr(figures, "_said", set())
    figures.drawable(names)
    figures.drawable(names)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fonts-noto-cjk" in err[0] and "猫, 狗, 고양이" in err[0]


def test_with_a_cjk_font_installed_the_names_draw_without_a_glyph_warning(tmp_path, recwarn):
    from reproduce.common import figures

    if len(figures.font_chain()) == 1:
        pytest.skip("no CJK font on this machine (Debian: apt install fonts-wqy-microhei)")
    plt = figures.pyplot()
    assert figures.missing_glyphs(["猫", "狗", "ねこ"]) == ""
    fig, axis = plt.subplots()
    axis.set_title("猫 狗 ねこ café")
    figures.save(fig, str(tmp_path / "names.png"))
    assert not [w for w in recwarn if "Glyph" in str(w.message)]
    assert plt.rcParams["font.family"][0] == "DejaVu Sans" and len(plt.rcParams["font.family"]) > 1


def test_a_console_table_lines_up_by_display_width():
    from paper_alexnet.cli import display_width, pad

    assert (
        display_width("猫") == 2 and display_width("café") == 4 and display_width("cafe\u0301") == 4
    )
    assert {display_width(pad(name, 12)) for name in ("猫", "dog", "고양이", "café")} == {12}
