"""reproduce.features: every layer against a forward pass written here from the paper, torchvision's paths
against torchvision's own modules, fc8 against predict, the RDM against numpy, bounded memory, and a stopped
run that leaves nothing that looks whole."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from paper_alexnet import features as lib
from reproduce import convert, features, predict, train
from reproduce.common.npy_stream import NpyStream
from data_fixtures import colour_image, folder_contents, image_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_LAYERS = (
    "input conv1 relu1 norm1 pool1 conv2 relu2 norm2 pool2 conv3 relu3 conv4 relu4 conv5 relu5 pool5 "
    "fc6 relu6 fc7 relu7 fc8 prob"
).split()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A paper net trained one epoch on a folder of three classes; the folder and the run."""
    root = tmp_path_factory.mktemp("shapes")
    image_tree(str(root / "train"), {"a": 4, "b": 4, "c": 4}, size=(70, 50))
    image_tree(str(root / "val"), {"a": 3, "b": 3, "c": 3}, start_seed=50, size=(70, 50))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAPER_ALEXNET_CACHE", str(root / "cache"))
        out = root / "run"
        assert (
            train.main(
                [
                    "--data",
                    f"folder:{root}",
                    "-b",
                    "6",
                    "--workers",
                    "0",
                    "--quiet",
                    "--epochs",
                    "1",
                    "--out",
                    str(out),
                ]  # fmt: skip
            )
            == 0
        )
        yield root, out / "best.pt"


def _lrn_per_tower(a, towers=2, n=5, alpha=1e-4, beta=0.75, k=2.0):
    """§3.3, as written: b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta, with N the
    maps of one GPU (§3.2: each tower normalises its own half)."""
    out = torch.empty_like(a)
    per = a.shape[1] // towers
    for t in range(towers):
        block = a[:, t * per : (t + 1) * per]
        for i in range(per):
            lo, hi = max(0, i - n // 2), min(per - 1, i + n // 2)
            total = (block[:, lo : hi + 1] ** 2).sum(dim=1)
            out[:, t * per + i] = block[:, i] / (k + alpha * total) ** beta
    return out


def _paper_forward(w, x):
    """§3.5 from the checkpoint's tensors: conv1 96 11x11 stride 4; conv2 5x5 pad 2 in two towers; conv3 3x3
    across both; conv4, conv5 3x3 in two towers; ReLU after each (§3.1); LRN after conv1, conv2 (§3.3); 3/2
    max-pooling after conv1, conv2, conv5 (§3.4); fc6, fc7, fc8."""
    out = {"input": x}
    z = F.conv2d(x, w["conv1.weight"], w["conv1.bias"], stride=4)
    out["conv1"] = z
    out["relu1"] = z = F.relu(z)
    out["norm1"] = z = _lrn_per_tower(z)
    out["pool1"] = z = F.max_pool2d(z, 3, 2)
    out["conv2"] = z = F.conv2d(z, w["conv2.weight"], w["conv2.bias"], padding=2, groups=2)
    out["relu2"] = z = F.relu(z)
    out["norm2"] = z = _lrn_per_tower(z)
    out["pool2"] = z = F.max_pool2d(z, 3, 2)
    for i, groups in ((3, 1), (4, 2), (5, 2)):
        out[f"conv{i}"] = z = F.conv2d(
            z, w[f"conv{i}.weight"], w[f"conv{i}.bias"], padding=1, groups=groups
        )
        out[f"relu{i}"] = z = F.relu(z)
    out["pool5"] = z = F.max_pool2d(z, 3, 2)
    z = z.flatten(1)
    for i in (6, 7):
        out[f"fc{i}"] = z = F.linear(z, w[f"fc{i}.weight"], w[f"fc{i}.bias"])
        out[f"relu{i}"] = z = F.relu(z)
    out["fc8"] = z = F.linear(z, w["fc8.weight"], w["fc8.bias"])
    out["prob"] = torch.softmax(z, dim=1)
    return out


def _close(got, want):
    scale = float(want.abs().max()) or 1.0
    return torch.allclose(torch.as_tensor(got), want, rtol=1e-3, atol=1e-4 * scale)


def _index(folder):
    with open(os.path.join(folder, "index.csv"), newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_layer_equals_the_paper_written_here(run, tmp_path, capsys):
    root, best = run
    out = tmp_path / "all"
    assert (
        features.main(
            [
                "--checkpoint",
                str(best),
                "--data",
                f"folder:{root}",
                "--layers",
                ",".join(PAPER_LAYERS),
                "--out",
                str(out),
                "-b",
                "4",
                "--workers",
                "0",
                "--quiet",
            ]  # fmt: skip
        )
        == 0
    )
    weights = torch.load(best, weights_only=True)["model"]
    saved = {name: np.load(out / f"{name}.npy") for name in PAPER_LAYERS}
    want = _paper_forward(weights, torch.from_numpy(saved["input"]))
    assert saved["input"].shape == (9, 3, 227, 227)
    for name in PAPER_LAYERS:
        assert saved[name].shape == tuple(want[name].shape), name
        assert _close(saved[name], want[name]), name
    record = json.loads((out / "layers.json").read_text())
    assert record["images"] == 9 and record["layers"]["pool5"]["shape"] == [9, 256, 6, 6]
    # the shapes layers.json states (the shape arithmetic) are the arrays'
    for name in PAPER_LAYERS:
        assert record["layers"][name]["unpooled"] == list(saved[name].shape[1:]), name
    rows = _index(out)
    assert [r["row"] for r in rows] == [str(i) for i in range(9)]
    assert [r["class"] for r in rows] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3


def test_fc8_argmax_is_predicts_top1_and_unreadable_files_have_no_row(run, tmp_path, capsys):
    root, best = run
    files = sorted(str(p) for p in (root / "val").rglob("*.jpg"))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    given = files[:4] + [str(bad)] + files[4:]
    out = tmp_path / "files"
    assert (
        features.main(
            [
                "--checkpoint",
                str(best),
                "--layers",
                "fc8,relu7",
                "--out",
                str(out),
                "--quiet",
                *given,
            ]
        )
        == 0
    )
    assert "broken.jpg" in capsys.readouterr().err
    rows = _index(out)
    assert [r["path"] for r in rows] == files  # the broken file is skipped, and so has no row
    fc8 = np.load(out / "fc8.npy")
    assert fc8.shape == (9, 3) and np.load(out / "relu7.npy").shape == (9, 4096)
    assert predict.main(["--checkpoint", str(best), "--csv", str(tmp_path / "p.csv"), *files]) == 0
    with open(tmp_path / "p.csv", newline="") as handle:
        top1 = {r["image"]: r["class"] for r in csv.DictReader(handle) if r["rank"] == "1"}
    classes = ["a", "b", "c"]
    assert [classes[i] for i in fc8.argmax(axis=1)] == [top1[f] for f in files]


def test_torchvision_paths_are_torchvisions_own_modules(tmp_path, capsys):
    import torchvision

    torch.manual_seed(5)
    reference = torchvision.models.alexnet(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "alexnet-owt.pth")
    assert convert.main([str(tmp_path / "alexnet-owt.pth"), "--out", str(tmp_path / "tv.pt")]) == 0
    photo = tmp_path / "photo.png"
    Image.fromarray(np.array(colour_image(7, size=(256, 256)))).save(photo)
    paths = (
        [f"features.{i}" for i in range(13)] + ["avgpool"] + [f"classifier.{i}" for i in range(7)]
    )
    names = list(dict.fromkeys(lib.TORCHVISION_PATHS[p] for p in paths))
    out = tmp_path / "tv"
    args = ["--checkpoint", str(tmp_path / "tv.pt"), "--out", str(out), "--quiet", str(photo)]
    assert features.main(args[:-1] + ["--layers", ",".join(paths + names), args[-1]]) == 0
    seen = {}
    hooks = [
        reference.get_submodule(p).register_forward_hook(
            lambda m, i, o, p=p: seen.__setitem__(p, o.detach().clone())
        )
        for p in paths
    ]
    x = _torchvision_input(photo)
    with torch.no_grad():
        reference(x)
    for hook in hooks:
        hook.remove()
    for path in paths:
        ours = np.load(out / f"{path}.npy")
        # same arrays
        assert np.array_equal(ours, np.load(out / f"{lib.TORCHVISION_PATHS[path]}.npy"))
        theirs = seen[path].reshape(ours.shape)  # classifier.0: the flattened avgpool
        assert _close(ours, theirs), path
    assert features.main(args[:-1] + ["--layers", "norm1", args[-1]]) == 2
    said = capsys.readouterr().err
    assert "no layer 'norm1'" in said and "features.0" in said and "Traceback" not in said


def _torchvision_input(photo):
    """torchvision's eval transform of a 256x256 image, by hand: centre 224, /255, ImageNet mean and std."""
    array = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float32) / 255.0
    crop = (array[16:240, 16:240] - np.array([0.485, 0.456, 0.406])) / np.array(
        [0.229, 0.224, 0.225]
    )
    return torch.from_numpy(crop.astype(np.float32)).permute(2, 0, 1)[None]


def test_the_rdm_is_one_minus_numpys_corrcoef(run, tmp_path):
    root, best = run
    out = tmp_path / "rdm"
    assert (
        features.main(
            [
                "--checkpoint",
                str(best),
                "--data",
                f"folder:{root}",
                "--split",
                "train",
                "--layers",
                "pool5,fc8",
                "--rdm",
                "--out",
                str(out),
                "--workers",
                "0",
                "--quiet",
            ]  # fmt: skip
        )
        == 0
    )
    for name in ("pool5", "fc8"):
        acts = np.load(out / f"{name}.npy").reshape(12, -1).astype(np.float64)
        got = np.load(out / f"rdm_{name}.npy")
        assert got.shape == (12, 12) and np.allclose(got, 1 - np.corrcoef(acts), atol=1e-5)
        assert (out / f"rdm_{name}.png").exists()
    # 3 rows at a time: 16 blocks
    blocks = lib.rdm(np.load(out / "pool5.npy"), block_bytes=3 * 9216 * 8)
    assert np.allclose(blocks, np.load(out / "rdm_pool5.npy"), atol=1e-6)


def test_pooling_and_float16(run, tmp_path):
    root, best = run
    out = tmp_path / "pooled"
    base = ["--checkpoint", str(best), "--data", f"folder:{root}", "--workers", "0", "--quiet"]
    assert features.main(base + ["--layers", "relu5", "--out", str(tmp_path / "full")]) == 0
    assert (
        features.main(
            base + ["--layers", "relu5", "--pool", "max", "--dtype", "float16", "--out", str(out)]
        )
        == 0
    )
    full, pooled = np.load(tmp_path / "full" / "relu5.npy"), np.load(out / "relu5.npy")
    assert pooled.dtype == np.float16 and pooled.shape == (9, 256)
    assert np.allclose(pooled, full.max(axis=(2, 3)), rtol=1e-3, atol=1e-3)


def test_a_stopped_run_leaves_the_earlier_files_whole_and_no_new_ones(
    run, tmp_path, monkeypatch, capsys
):
    root, best = run
    out = tmp_path / "twice"
    args = ["--checkpoint", str(best), "--data", f"folder:{root}", "--layers", "fc7", "--out", str(out),
            "-b", "2", "--workers", "0", "--quiet"]  # fmt: skip
    assert features.main(args) == 0
    before = folder_contents(out)
    calls = []

    def interrupted(self, rows):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, rows)

    real = NpyStream.write
    monkeypatch.setattr(NpyStream, "write", interrupted)
    assert features.main(args + ["--layers", "fc7,fc6"]) == 130
    assert "stopped" in capsys.readouterr().err
    assert folder_contents(out) == before  # no .partial either


def test_npy_stream_rewrites_its_header_and_reads_back(tmp_path):
    stream = NpyStream(str(tmp_path / "x.npy"), (3, 2), "float16")
    assert not (tmp_path / "x.npy").exists()  # only the .partial until it is whole
    chunks = [np.full((n, 3, 2), n, dtype=np.float32) for n in (1, 5, 2)]
    for chunk in chunks:
        stream.write(chunk)
    stream.close()
    back = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert back.shape == (8, 3, 2) and back.dtype == np.float16
    assert np.array_equal(back, np.concatenate(chunks).astype(np.float16))
    assert not (tmp_path / "x.npy.partial").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in kB is Linux's")
def test_memory_stays_bounded_while_more_is_written_than_it_holds(run, tmp_path):
    """Resident memory of the whole command while it writes: 3 conv1-sized layers of 243 images (~840 MB) may
    not hold much more than fc8 alone. Read after each write (the most of those readings), so that how the
    checkpoint's loading peaked, which varies between two runs of one command, is not what is compared.

    What the command holds beyond fc8's run grows with the batch, not with what it wrote: a few copies of one
    batch of the three maps (3 x 96 x 55 x 55 floats, 3.5 MB an image), measured 175 MB at batch 16 and 50 MB
    at 4 on the project's CPU. At batch 4 that is a quarter of the bound below; holding what was written would
    be 840 MB, four times over it."""
    root, best = run
    files = sorted(str(p) for p in (root / "val").rglob("*.jpg")) * 27  # 243 images
    probe = (
        "import resource, runpy, sys\n"
        "from reproduce.common.npy_stream import NpyStream\n"
        "real, most = NpyStream.write, [0]\n"
        "def write(self, rows):\n"
        "    done = real(self, rows)\n"
        "    with open('/proc/self/statm') as f:\n"
        "        most[0] = max(most[0], int(f.read().split()[1]) * resource.getpagesize())\n"
        "    return done\n"
        "NpyStream.write = write\n"
        "sys.argv = sys.argv[1:]\n"
        "try:\n    runpy.run_module('reproduce.features', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('PEAK', most[0])\n"
    )

    def peak(layers, out):
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                probe,
                "features",
                "--checkpoint",
                str(best),
                "--layers",
                layers,
                "--out",
                str(out),
                "-b",
                "4",
                "--quiet",
                "--device",
                "cpu",
                *files,
            ],  # fmt: skip
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.split("PEAK")[-1])

    small = peak("fc8", tmp_path / "small")
    big = peak("conv1,relu1,norm1", tmp_path / "big")
    written = sum(
        os.path.getsize(tmp_path / "big" / f"{n}.npy") for n in ("conv1", "relu1", "norm1")
    )
    assert written > 800e6
    assert big - small < 0.25 * written, (small, big, written)


def test_bad_input_is_one_line(run, tmp_path, capsys):
    from reproduce import evaluate

    root, best = run
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    checks = [
        (
            features.main,
            ["--checkpoint", str(best), "--out", str(blocker), "--data", f"folder:{root}"],
            1,
        ),
        (
            evaluate.main,
            ["--checkpoint", str(best), "--out", str(blocker / "x"), "--data", f"folder:{root}"],
            1,
        ),
        (
            features.main,
            [
                "--checkpoint",
                str(best),
                "--out",
                str(tmp_path / "o"),
                "--split",
                "test",
                "--data",
                f"folder:{root}",
            ],
            2,
        ),  # fmt: skip
        (features.main, ["--checkpoint", str(best), "--data", f"folder:{root}"], 2),  # no --out
        (
            features.main,
            ["--checkpoint", str(best), "--out", str(tmp_path / "o"), str(tmp_path / "none.jpg")],
            2,
        ),
    ]
    for command, argv, code in checks:
        assert command(argv) == code, argv
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith("error:") and "Traceback" not in err, err


def test_the_flags_stay_as_given_and_layers_json_keeps_the_readers_it_used(run, tmp_path):
    """--workers left out: the command resolves it (0 readers on the CPU) for itself, without writing it back into
    the parsed flags that a caller (the bench, a notebook) hands on; layers.json records the count."""
    root, best = run
    args = features.get_args_parser().parse_args(
        ["--checkpoint", str(best), "--data", f"folder:{root}", "--layers", "fc8", "--quiet"]
        + ["--out", str(tmp_path / "out")]
    )
    assert args.workers is None
    assert features.run(args) == 0
    assert args.workers is None
    record = json.loads((tmp_path / "out" / "layers.json").read_text())
    assert record["workers"] == 0
