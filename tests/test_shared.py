"""Shared folders (safetensors, config.json, a model card), torch.hub, --info, and Figure 2 drawn from the
config: what comes back is what went in, numbers included, and a damaged folder is one line."""

import csv
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET

import pytest
import paper_alexnet
import torch

from paper_alexnet import build_model, checkpoint, get_config, layer_shapes, shared
from paper_alexnet.checkpoint import CheckpointError
from reproduce import evaluate, export, features, predict, train, visualize
from data_fixtures import colour_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = "synthetic?classes=4&train=16&val=8"
TINY = ["--data", DATA, "-b", "8", "--workers", "0", "--quiet"]

pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder (best.pt, result.json, config.json) and its net exported as a shared folder."""
    root = tmp_path_factory.mktemp("shared")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAPER_ALEXNET_CACHE", str(root / "cache"))
        out = root / "run"
        assert train.main(TINY + ["--epochs", "1", "--out", str(out)]) == 0
        folder = root / "shared"
        assert export.main(["--checkpoint", str(out / "best.pt"), "--out", str(folder)]) == 0
        yield out, folder


def _hub(**kwargs):
    return torch.hub.load(ROOT, "alexnet", source="local", trust_repo=True, **kwargs)


def test_export_then_load_gives_the_same_tensors_and_no_pickle(run):
    out, folder = run
    assert sorted(os.listdir(folder)) == [
        "README.md",
        "config.json",
        "mean.safetensors",
        "model.safetensors",
    ]
    for name in os.listdir(folder):  # no pickle, no torch zip: nothing that runs code when read
        head = (folder / name).read_bytes()[:2]
        assert head not in (b"\x80\x02", b"\x80\x04", b"\x80\x05", b"PK"), name
    before, after = checkpoint.load(str(out / "best.pt")), checkpoint.load(str(folder))
    assert before.model.keys() == after.model.keys()
    assert all(torch.equal(before.model[k], after.model[k]) for k in before.model)
    assert after.classes == before.classes and after.variant == before.variant
    assert after.augment == before.augment and after.init == before.init
    for key in ("mean_image", "eigval", "eigvec"):
        assert torch.equal(torch.as_tensor(before.stats[key]).float(), after.stats[key])
    assert after.stats["pca_source"] == before.stats["pca_source"]


def test_every_command_takes_the_folder_with_the_same_numbers(run, tmp_path, capsys, monkeypatch):
    out, folder = run
    monkeypatch.setenv("PAPER_ALEXNET_CACHE", str(out.parent / "cache"))
    lines = []
    for source in (out / "best.pt", folder):
        assert evaluate.main(["--checkpoint", str(source), "--workers", "0", "--ten-crop"]) == 0
        lines.append(capsys.readouterr().out.split(": ", 1)[1])
    # the same errors, centre and ten crops, and the same per-class line
    assert lines[0] == lines[1]
    colour_image(3, size=(300, 200)).save(tmp_path / "photo.jpg")
    said = []
    for source in (out / "best.pt", folder):
        assert predict.main([str(tmp_path / "photo.jpg"), "--checkpoint", str(source)]) == 0
        said.append(capsys.readouterr().out)
    assert said[0] == said[1]
    for source, name in ((out / "best.pt", "a"), (folder, "b")):
        assert features.main(["--checkpoint", str(source), "--layers", "relu7", "--out", str(tmp_path / name),
                              "--quiet", str(tmp_path / "photo.jpg")]) == 0  # fmt: skip
    assert (tmp_path / "a" / "relu7.npy").read_bytes() == (
        tmp_path / "b" / "relu7.npy"
    ).read_bytes()
    assert (
        visualize.main(["filters", "--checkpoint", str(folder), "--out", str(tmp_path / "f.png")])
        == 0
    )
    assert export.main(["--checkpoint", str(folder), "--out", str(tmp_path / "back.pt")]) == 0
    back = checkpoint.load(str(tmp_path / "back.pt"))
    assert all(torch.equal(back.model[k], v) for k, v in checkpoint.load(str(folder)).model.items())
    assert (
        train.main(
            TINY + ["--epochs", "1", "--pretrained", str(folder), "--out", str(tmp_path / "tuned")]
        )
        == 0
    )


def test_torch_hub_loads_each_variant_and_the_weights_as_restore_gives_them(run):
    out, folder = run
    x = torch.randn(2, 3, 227, 227)
    for variant in ("paper", "paper+no-lrn", "caffe", "one-tower", "torchvision"):
        net = _hub(variant=variant, num_classes=7)
        want = build_model(variant, 7)
        assert net.config == want.config and {k: v.shape for k, v in net.state_dict().items()} == {
            k: v.shape for k, v in want.state_dict().items()
        }
    reference = build_model("paper", 4, init="he")
    reference.load_state_dict(checkpoint.load(str(out / "best.pt")).model)
    reference.eval()
    with torch.no_grad():
        want = reference(x)
    for weights in (out / "best.pt", folder):
        net = _hub(weights=str(weights))
        assert not net.training and net.classes == checkpoint.load(str(out / "best.pt")).classes
        assert torch.equal(paper_alexnet.from_pretrained(str(weights))(x), want)
        with torch.no_grad():
            assert torch.equal(net(x), want)
        images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
        assert net.transform.center(images).shape == (2, 3, 227, 227)
        assert net.meta["num_params"] == sum(p.numel() for p in net.parameters())
    with pytest.raises(ValueError, match="hold a 'paper' net"):
        _hub(variant="torchvision", weights=str(folder))


def test_torch_hub_list_and_help_read_the_entry_points(monkeypatch):
    # as if from GitHub
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: ROOT)
    assert torch.hub.list("owner/paper_alexnet") == [
        "alexnet",
        "alexnet_caffe",
        "alexnet_torchvision",
    ]
    assert "§3.5" in torch.hub.help("owner/paper_alexnet", "alexnet")


def test_the_card_quotes_the_runs_own_result(run, tmp_path):
    out, folder = run
    card = (folder / "README.md").read_text()
    result = json.loads((out / "result.json").read_text())
    assert f"{100 * result['val_top1_err']:.2f}%" in card and "python -m reproduce.train" in card
    assert "40.70%" in card and "@inproceedings{krizhevsky2012imagenet" in card
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    result["val_top1_err"] = 0.123456
    (copy / "result.json").write_text(json.dumps(result))
    assert (
        export.main(["--checkpoint", str(copy / "best.pt"), "--out", str(tmp_path / "again")]) == 0
    )
    changed = (tmp_path / "again" / "README.md").read_text()
    assert "12.35%" in changed and f"{100 * 0.123456:.2f}%" not in card
    assert (
        json.loads((tmp_path / "again" / "config.json").read_text())["meta"]["metrics"][
            "val_top1_err"
        ]
        == 0.123456
    )


def test_a_damaged_foreign_or_newer_folder_is_one_line_and_exit_2(run, tmp_path, capsys):
    _, folder = run
    cases = {}
    truncated = tmp_path / "truncated"
    shutil.copytree(folder, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases[truncated] = "damaged or truncated"
    foreign = tmp_path / "foreign"
    shutil.copytree(folder, foreign)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(foreign / "model.safetensors"))
    tensors["conv6.weight"] = tensors.pop("conv5.weight")
    save_file(tensors, str(foreign / "model.safetensors"))
    cases[foreign] = "missing conv5.weight; foreign conv6.weight"
    newer = tmp_path / "newer"
    shutil.copytree(folder, newer)
    config = json.loads((newer / "config.json").read_text())
    config["format"] = "paper_alexnet.shared/99"
    (newer / "config.json").write_text(json.dumps(config))
    cases[newer] = "newer than this paper_alexnet reads"
    cases[tmp_path] = "without config.json"
    for path, words in cases.items():
        with pytest.raises(CheckpointError, match=re.escape(words)):
            checkpoint.load(str(path))
        assert evaluate.main(["--checkpoint", str(path)]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_suffix_or_format_chooses_what_export_writes(run, tmp_path, capsys):
    out, _ = run
    best = str(out / "best.pt")
    assert export.main(["--checkpoint", best, "--out", str(tmp_path / "w.pt")]) == 0
    assert checkpoint.load(str(tmp_path / "w.pt")).optimizer is None  # weights only
    assert (
        export.main(
            ["--checkpoint", best, "--out", str(tmp_path / "named.pt"), "--format", "safetensors"]
        )
        == 0
    )
    assert (tmp_path / "named.pt" / "model.safetensors").exists()
    assert export.main(["--checkpoint", best, "--out", str(tmp_path / "x.zip")]) == 2
    assert "--format" in capsys.readouterr().err


def test_info_says_what_the_net_is(run, capsys):
    out, folder = run
    for source in (out / "best.pt", folder):
        assert evaluate.main(["--checkpoint", str(source), "--info"]) == 0
        said = capsys.readouterr().out
        params = sum(v.numel() for v in checkpoint.load(str(source)).model.values())
        assert f"parameters {params:,}" in said and "disc, ring, square, frame" in said
        assert "val_top1_err" in said and "python -m reproduce.train" in said
    meta = shared.metadata(checkpoint.load(str(folder)))
    assert (
        meta["categories"] == ["disc", "ring", "square", "frame"]
        and meta["transforms"]["crop"] == 227
    )


def _svg_labels(path):
    """Every text element of the SVG: matplotlib writes each as <text> (svg.fonttype none)."""
    texts = []
    for element in ET.parse(path).iter():
        if element.tag.endswith("text"):
            texts.append("".join(element.itertext()).strip())
    return texts


@pytest.mark.parametrize(
    "variant, size",
    [("paper", None), ("torchvision", None), ("one-tower", None), ("paper+no-groups", 259)],
)
def test_figure_2_shows_the_shape_arithmetic(tmp_path, variant, size):
    from paper_alexnet import shapes

    out = tmp_path / "figure2.svg"
    argv = ["--variant", variant, "--figure", str(out)] + (
        ["--input-size", str(size)] if size else []
    )
    assert shapes.main(argv) == 0
    labels = _svg_labels(out)
    config = get_config(variant, **({"input_size": size} if size else {}))
    want = {f"{config.input_size}×{config.input_size}×3"}
    kernels = set()
    for row in layer_shapes(config):
        if row.kind == "conv":
            c, h, w = row.out_shape
            want.add(f"{h}×{w}×{c // row.towers}")
            kernels.add(
                f"{row.kernel}×{row.kernel}" + (f" /{row.stride}" if row.stride > 1 else "")
            )
        elif row.kind == "fc":
            want.add(str(row.out_shape[0] // row.towers))
    sizes = {t for t in labels if re.fullmatch(r"\d+(×\d+×\d+)?", t)}
    assert sizes == want
    assert kernels <= set(labels)
    title = next(t for t in labels if "maps as side" in t)
    if config.towers == 2:
        assert "towers exchange maps into conv3, fc6, fc7, fc8" in title
    else:
        assert "one tower" in title
    if config.input_size == 227:
        assert "gives (224 − 11 + 2·0) / 4 + 1 = 54.25" in title


def test_torch_hub_runs_from_a_plain_checkout_that_is_not_installed(tmp_path):
    """A copy of the checkout's hubconf.py and library, loaded where the installed package cannot be found
    (the editable install's import hook removed): the net comes from the copy's own code."""
    import subprocess
    import sys

    copy = tmp_path / "checkout"
    shutil.copytree(os.path.join(ROOT, "paper_alexnet"), copy / "paper_alexnet")
    shutil.copy(os.path.join(ROOT, "hubconf.py"), copy / "hubconf.py")
    script = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__ + repr(f)]\n"
        "sys.path[:] = [p for p in sys.path if 'paper_alexnet' not in p and p not in ('', '.')]\n"
        "import torch\n"
        f"net = torch.hub.load({str(copy)!r}, 'alexnet', source='local', trust_repo=True, num_classes=5)\n"
        "import paper_alexnet\n"
        f"assert paper_alexnet.__file__.startswith({str(copy)!r}), paper_alexnet.__file__\n"
        "print(type(net).__name__, net.fc8.out_features, net.config.name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["AlexNet", "5", "paper"]


def test_convert_writes_bvlc_and_torchvision_weights_as_a_folder(tmp_path, capsys):
    """convert --format safetensors (or an --out without a suffix): the same net as the .pt it writes."""
    import torchvision

    from reproduce import convert

    torch.manual_seed(2)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "alexnet-owt.pth")
    source = str(tmp_path / "alexnet-owt.pth")
    assert convert.main([source, "--out", str(tmp_path / "tv.pt")]) == 0
    assert convert.main([source, "--out", str(tmp_path / "tv")]) == 0  # no suffix: a folder
    # export converts to ONNX
    assert convert.main([source, "--out", str(tmp_path / "tv.onnx")]) == 2
    assert "--format" in capsys.readouterr().err
    a, b = checkpoint.load(str(tmp_path / "tv.pt")), checkpoint.load(str(tmp_path / "tv"))
    assert (
        b.variant == "torchvision"
        and b.classes == a.classes
        and b.origin["format"] == "torchvision"
    )
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model) and b.augment == a.augment
    card = (tmp_path / "tv" / "README.md").read_text()
    assert (
        "torchvision's AlexNet" in card
        and "BSD 3-Clause" in card
        and "python -m reproduce.convert" in card
    )
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(
            _hub(weights=str(tmp_path / "tv"))(x), _hub(weights=str(tmp_path / "tv.pt"))(x)
        )


def test_evaluate_all_takes_the_shared_folders_beside_the_checkpoints(
    run, tmp_path, capsys, monkeypatch
):
    out, folder = run
    monkeypatch.setenv("PAPER_ALEXNET_CACHE", str(out.parent / "cache"))
    shutil.copy(out / "best.pt", tmp_path / "best.pt")
    shutil.copytree(folder, tmp_path / "shared")
    (tmp_path / "notes").mkdir()  # a folder that is not a net: left alone
    csv_path = tmp_path / "all.csv"
    assert (
        evaluate.main(
            [
                "--all",
                str(tmp_path),
                "--workers",
                "0",
                "--csv",
                str(csv_path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    errors = [
        {k: v for k, v in row.items() if k.endswith(("_err", "_acc", "loss"))} for row in rows
    ]
    assert len(rows) == 2 and errors[0] == errors[1] and len(errors[0]) >= 4  # the same errors
    assert sorted(os.listdir(tmp_path / "o")) == ["best", "shared"]
