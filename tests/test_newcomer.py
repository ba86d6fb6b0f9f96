"""What a newcomer met on a first try, each point checked: top-5 with few classes, charts that leave
a run's files alone and read well, Figure 4's numbers, a smoke grid's disk and caveat, names and data specs
that are refused helpfully, --quiet, predict and evaluate output, numbers in files, --help, words."""

import csv
import json
import os
import shutil
import re

import numpy as np
import pandas as pd
import pytest
import torch

from paper_alexnet import checkpoint
from paper_alexnet.cli import HelpFormatter, plural
from paper_alexnet.data.splits import ArraySplit
from paper_alexnet.metrics import top5_applies
from reproduce import ablate, evaluate, predict, prepare, train, visualize
from reproduce.common import figures
from data_fixtures import colour_image, folder_contents, image_tree, train_once

pytestmark = pytest.mark.usefixtures("shared_cache")

DATA = "synthetic?classes=4&train=16&val=8"
TINY = ["--data", DATA, "-b", "8", "--workers", "0", "--quiet"]
# A float as written in a file: digits with a point, or with an exponent (1e-05); not a path's or a name's digits.
FLOAT = re.compile(r"(?<![\w.])[-+]?(\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)(?![\w.])")


def too_precise(text, digits=6):
    """The floats in ``text`` written with more than ``digits`` significant digits (0.44999999999999996, where
    0.45 was meant), counted from the first non-zero digit of the mantissa: 0.0205559 has 6, 1234.5678 has 8."""
    found = []
    for match in FLOAT.finditer(text):
        mantissa = re.split("[eE]", match.group(1))[0]
        if len(mantissa.replace(".", "").lstrip("0")) > digits:
            found.append(match.group(0))
    return found


def test_too_precise_counts_significant_digits_not_decimals():
    assert too_precise("0.0205559,0.45,1e-05,12.5,100.0,0.000123457") == []
    assert too_precise("0.44999999999999996 1234.5678 -3.14159265e-03") == [
        "0.44999999999999996",
        "1234.5678",
        "-3.14159265e-03",
    ]
    assert too_precise("runs/seed12345678/x.csv v3.11.7 1,234,567") == []  # no float there


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run the tests only read."""
    root = train_once(tmp_path_factory, "newcomer", TINY + ["--epochs", "1", "--ten-crop"])
    yield root / "run"
    shutil.rmtree(root, ignore_errors=True)


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_top5_is_na_with_five_classes_or_fewer_everywhere(run, tmp_path, capsys):
    assert not top5_applies(5) and top5_applies(6)
    row = _csv(run / "metrics.csv")[0]
    assert row["val_top5_err"] == "" and 0 <= float(row["val_top1_err"]) <= 1
    result = json.loads((run / "result.json").read_text())
    assert result["val_top5_err"] is None and result["ten_crop_top5_err"] is None
    assert result["val_top1_err"] is not None and result["ten_crop_top1_err"] is not None
    assert (
        evaluate.main(
            ["--checkpoint", str(run / "best.pt"), "--csv", str(tmp_path / "e.csv"), "-b", "8"]
        )
        == 0
    )
    assert "top-5 n/a" in capsys.readouterr().out
    assert _csv(tmp_path / "e.csv")[0]["top5_err"] == ""
    fig = figures.curves_figure(pd.read_csv(run / "metrics.csv").to_dict("records"))
    labels = [line.get_label() for line in fig.axes[1].get_lines()]
    assert labels == ["train top-1", "val top-1"]  # no flat line at 0 for top-5
    fig = figures.curves_figure(
        [{**r, "val_top5_err": 0.5} for r in pd.read_csv(run / "metrics.csv").to_dict("records")]
    )
    assert "val top-5" in [line.get_label() for line in fig.axes[1].get_lines()]


def test_reading_a_run_never_replaces_its_files(run, tmp_path, monkeypatch):
    before = folder_contents(run)
    monkeypatch.chdir(tmp_path)
    assert visualize.main(["curves", "--run", str(run)]) == 0
    assert folder_contents(run) == before
    assert (tmp_path / "curves-run.png").exists()
    assert visualize._run_title(str(run)) == f"paper on {DATA}"  # the title train gives it
    # named: allowed
    assert visualize.main(["curves", "--run", str(run), "--out", str(run / "curves.png")]) == 0


def test_charts_have_whole_epoch_ticks_and_markers_on_every_series():
    one = [
        {
            "epoch": 1,
            "train_loss": 2.0,
            "val_loss": 1.9,
            "train_top1_err": 0.8,
            "val_top1_err": 0.7,
            "val_top5_err": 0.2,
        }
    ]
    three = [{**one[0], "epoch": e} for e in (1, 2, 3)]
    for rows, ticks in ((one, [1]), (three, [1, 2, 3])):
        fig = figures.curves_figure(rows)
        for axis in fig.axes:
            assert list(axis.get_xticks()) == ticks
            assert all(line.get_marker() not in (None, "None", "") for line in axis.get_lines())
    fig = figures.runs_figure({"a": one, "b": three})
    for axis in fig.axes:
        assert list(axis.get_xticks()) == [1, 2, 3]
        assert len(axis.get_lines()) in (2, 4)
        assert all(line.get_marker() not in (None, "None", "") for line in axis.get_lines())


def test_figure4_says_what_its_numbers_are_with_enough_digits():
    queries = ArraySplit("val", np.zeros((1, 256, 256, 3), dtype=np.uint8), [0])
    bank = ArraySplit("train", np.zeros((3, 256, 256, 3), dtype=np.uint8), [0, 1, 0])
    fig = visualize.neighbours_figure(
        queries, bank, ["cat", "dog"], torch.tensor([[0.1234567, 12.3456]]), torch.tensor([[1, 2]])
    )
    titles = [axis.get_title() for axis in fig.axes]
    assert titles == ["query\ncat", "d = 0.123\ndog", "d = 12.3\ncat"]
    assert "Euclidean distance" in fig._suptitle.get_text() and "fc7" in fig._suptitle.get_text()


def test_a_smoke_grid_keeps_weights_only_and_says_its_numbers_mean_nothing(tmp_path, capsys):
    out = tmp_path / "smoke"
    argv = [
        "--smoke",
        "--out",
        str(out),
        "--variants",
        "paper,paper+no-lrn",
        "--no-ten-crop",
        "--quiet",
    ]
    assert ablate.main(argv) == 0
    printed = capsys.readouterr()
    assert (
        ablate.SMOKE_NOTE in (out / "summary.md").read_text() and ablate.SMOKE_NOTE in printed.out
    )
    assert "2 cells (2 variants x 1 seed)" in printed.err
    for best in out.glob("cells/*/best.pt"):
        kept = checkpoint.load(str(best))
        weights = sum(t.numel() * t.element_size() for t in kept.model.values())
        # not Adam's 2x weights
        assert kept.optimizer is None and best.stat().st_size < 1.1 * weights
    assert evaluate.main(["--checkpoint", str(next(out.glob("cells/*/best.pt"))), "-b", "8"]) == 0
    readme = open(
        os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8"
    ).read()
    assert "summary.csv" in readme


@pytest.mark.parametrize(
    "name, suggestion", [("vgg-11", "vgg11"), ("resnet50", "resnet18"), ("Paper", "paper")]
)
def test_an_unknown_net_lists_every_name_and_suggests_the_closest(
    tmp_path, capsys, name, suggestion
):
    assert train.main(TINY + ["--variant", name, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"did you mean '{suggestion}'" in err
    assert all(
        net in err
        for net in ("paper", "caffe", "one-tower", "figure1", "vgg11", "googlenet", "resnet18")
    )


def test_val_option_on_a_tree_with_its_own_val_folder_is_refused(tmp_path, capsys):
    image_tree(str(tmp_path / "fruit" / "train"), {"apple": 3, "pear": 3})
    image_tree(str(tmp_path / "fruit" / "val"), {"apple": 1, "pear": 1}, start_seed=40)
    spec = f"folder:{tmp_path / 'fruit'}?val=0.2"
    assert prepare.main(["--data", spec, "--out", str(tmp_path / "store"), "--workers", "0"]) == 2
    assert "?val=" in capsys.readouterr().err and not (tmp_path / "store").exists()
    assert train.main(["--data", spec, "--out", str(tmp_path / "run"), "--workers", "0"]) == 2


def test_quiet_hides_progress_bars_only(run, tmp_path, capsys):
    # one tree: split 0.9:0.1
    image_tree(str(tmp_path / "fruit"), {"apple": 5, "pear": 5, "plum": 5})
    capsys.readouterr()
    assert (
        train.main(
            [
                "--data",
                f"folder:{tmp_path / 'fruit'}",
                "-b",
                "8",
                "--workers",
                "0",
                "--quiet",
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "fine"),
                "--pretrained",
                str(run / "best.pt"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "split 0.9:0.1" in err and "fc8 re-initialised" in err


def test_predict_skips_an_unreadable_file_and_scores_the_rest(run, tmp_path, capsys):
    good, notes = tmp_path / "chelsea.jpg", tmp_path / "notes.txt"
    colour_image(3, size=(300, 200)).save(good)
    notes.write_text("not an image")
    assert (
        predict.main(
            [
                str(notes),
                str(good),
                "--checkpoint",
                str(run / "best.pt"),
                "--csv",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert f"{good} (centre crop)" in out and str(notes) not in out and f"skipped {notes}" in err
    assert {r["image"] for r in _csv(tmp_path / "p.csv")} == {str(good)}
    assert not too_precise((tmp_path / "p.csv").read_text())
    assert (
        predict.main(
            [str(notes), str(tmp_path / "missing.jpg"), "--checkpoint", str(run / "best.pt")]
        )
        == 2
    )
    assert "none of the 2 files" in capsys.readouterr().err


def test_evaluate_says_what_it_scored_and_the_device_once(run, tmp_path, capsys):
    assert evaluate.main(["--all", str(run), "-b", "8", "--csv", str(tmp_path / "all.csv")]) == 0
    out, err = capsys.readouterr()
    assert out.count(f"on {DATA} val (8 images)") == 2 and err.count("device: cpu") == 1
    text = (tmp_path / "all.csv").read_text()
    assert not too_precise(text)
    assert (
        evaluate.main(["--checkpoint", str(run / "best.pt"), "--data", "synthetic?classes=5"]) == 2
    )
    err = capsys.readouterr().err
    assert "device:" not in err and "other classes than" not in err
    assert err.strip().splitlines()[-1].startswith("error:") and "not the 5 of" in err


def test_numbers_in_files_are_fractions_rounded_to_what_they_mean(run):
    for name in ("metrics.csv", "result.json"):
        assert not too_precise((run / name).read_text()), name
    row = _csv(run / "metrics.csv")[0]
    for key in ("train_top1_err", "val_top1_err"):
        assert 0 <= float(row[key]) <= 1
        # a count over 8 or 16
        assert float(row[key]) * 16 == pytest.approx(round(float(row[key]) * 16))


def _parsers():
    from paper_alexnet import shapes
    from reproduce import bench

    parsers = [
        m.get_args_parser() for m in (train, evaluate, predict, prepare, ablate, bench, shapes)
    ]
    top = visualize.get_args_parser()
    parsers += list(
        next(a for a in top._actions if a.choices and isinstance(a.choices, dict)).choices.values()
    )
    return parsers


def test_help_gives_each_default_once_and_none_for_required_or_unset_flags():
    for parser in _parsers():
        assert parser.formatter_class is HelpFormatter, parser.prog
        formatter = parser._get_formatter()
        for action in parser._actions:
            text = (formatter._get_help_string(action) or "").replace(
                "%(default)s", str(action.default)
            )
            assert text.lower().count("default") <= 1, (parser.prog, action.dest, text)
            assert "(default: None)" not in text and "(default: False)" not in text, (
                parser.prog,
                action.dest,
            )


def test_words(tmp_path, capsys):
    assert plural(1, "epoch") == "1 epoch" and plural(2, "seed") == "2 seeds"
    assert plural(1200, "image") == "1,200 images"
    assert train.main(TINY + ["--epochs", "1", "--out", str(tmp_path / "one")]) == 0
    assert "; 1 epoch of batch 8" in capsys.readouterr().err
    from paper_alexnet import shapes

    assert shapes.main(["--format", "csv"]) == 0
    assert "checked: every layer's output shape and parameter count" in capsys.readouterr().err


def test_reproduce_shows_its_commands_at_the_top_and_the_helpers_old_paths_still_import():
    """``reproduce/`` at its top level: the ``python -m reproduce.X`` commands, each documented, and nothing
    else; the helpers live in subpackages, and a notebook's ``from reproduce.restore import restore`` works."""
    import importlib

    import reproduce
    from reproduce.common import restore

    root = os.path.dirname(reproduce.__file__)
    top = {name[:-3] for name in os.listdir(root) if name.endswith(".py") and name != "__init__.py"}
    for name in top:
        with open(os.path.join(root, name + ".py"), encoding="utf-8") as handle:
            assert 'if __name__ == "__main__":' in handle.read(), (
                f"reproduce/{name}.py is no command"
            )
    repo = os.path.dirname(root)
    pages = [os.path.join(repo, "README.md")] + [
        os.path.join(repo, "docs", page) for page in os.listdir(os.path.join(repo, "docs"))
    ]
    documented = set()
    for page in pages:
        if page.endswith(".md"):
            with open(page, encoding="utf-8") as handle:
                documented |= set(re.findall(r"python -m reproduce\.([a-z_]+)\b", handle.read()))
    assert documented == top
    packages = {n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n, "__init__.py"))}
    assert packages == {"training", "ablation", "common"}
    for old, new in reproduce.MOVED.items():
        assert importlib.import_module(f"reproduce.{old}") is importlib.import_module(
            f"reproduce.{new}"
        )
    from reproduce.restore import restore as old_path

    assert old_path is restore.restore
