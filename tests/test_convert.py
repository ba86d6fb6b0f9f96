"""reproduce.convert and reproduce.export: BVLC's caffemodel (both Caffe formats, written here in the real wire
format from caffe.proto's field numbers), its mean file, torchvision's weights, ONNX, and Figure 3's colour
measure. Caffe's forward pass is written out here from Caffe's layer definitions, independently of the package."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from paper_alexnet import build_model, caffe, checkpoint
from paper_alexnet.data import DataStats, load_rgb
from reproduce import convert, evaluate, export, predict, train, visualize
from reproduce.common.restore import restore
from data_fixtures import colour_image, image_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("google.protobuf")  # an install requirement: always there after pip install
pytestmark = pytest.mark.usefixtures("isolated_cache")

# BVLC bvlc_alexnet's learned layers and blob shapes (models/bvlc_alexnet/deploy.prototxt)
BVLC = [
    ("conv1", (96, 3, 11, 11)),
    ("conv2", (256, 48, 5, 5)),
    ("conv3", (384, 256, 3, 3)),
    ("conv4", (384, 192, 3, 3)),
    ("conv5", (256, 192, 3, 3)),
    ("fc6", (4096, 9216)),
    ("fc7", (4096, 4096)),
    ("fc8", (1000, 4096)),
]


# --- the protobuf wire format, from caffe.proto's field numbers ------------------------------------------------


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _field(number: int, payload: bytes) -> bytes:  # wire type 2: length-delimited
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:  # wire type 0: varint
    return _varint(number << 3) + _varint(value)


def _blob(array: np.ndarray, v1: bool) -> bytes:
    """BlobProto: data = 5 (packed float); V1: num 1, channels 2, height 3, width 4 (inner products 1x1xOxI);
    V2: shape = 7 (BlobShape, dim = 1 packed int64)."""
    data = _field(5, np.ascontiguousarray(array, dtype="<f4").tobytes())
    if v1:
        dims = (1,) * (4 - array.ndim) + array.shape
        return b"".join(_int(n, d) for n, d in zip((1, 2, 3, 4), dims)) + data
    return _field(7, _field(1, b"".join(_varint(d) for d in array.shape))) + data


def _caffemodel(weights: dict, v1: bool, extra=()) -> bytes:
    """NetParameter: V1 ``layers`` = 2 (V1LayerParameter: name 4, type 5 enum, blobs 6) or V2 ``layer`` = 100
    (LayerParameter: name 1, type 2 string, blobs 7); ReLU layers in between, as the real file has."""
    net = _field(1, b"AlexNet")
    for name, (w, b) in [*weights.items(), *extra]:
        conv = name.startswith("conv")
        if v1:
            layer = (
                _field(4, name.encode())
                + _int(5, 4 if conv else 14)
                + b"".join(_field(6, _blob(x, v1)) for x in (w, b))
            )
            relu = _field(4, f"relu-{name}".encode()) + _int(5, 18)
            net += _field(2, layer) + _field(2, relu)
        else:
            layer = (
                _field(1, name.encode())
                + _field(2, b"Convolution" if conv else b"InnerProduct")
                + b"".join(_field(7, _blob(x, v1)) for x in (w, b))
            )
            relu = _field(1, f"relu-{name}".encode()) + _field(2, b"ReLU")
            net += _field(100, layer) + _field(100, relu)
    return net


def _weights(seed=0) -> dict:
    """Random weights of BVLC's shapes, scaled so activations stay near 1 (He-like), biases small."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in BVLC:
        fan_in = int(np.prod(shape[1:]))
        out[name] = (
            (rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(
                np.float32
            ),
            (rng.standard_normal(shape[0], dtype=np.float32) * 0.1).astype(np.float32),
        )
    return out


@pytest.fixture(scope="module")
def weights():
    return _weights()


@pytest.fixture(scope="module")
def files(tmp_path_factory, weights):
    folder = tmp_path_factory.mktemp("caffe")
    for v1 in (True, False):
        (folder / f"v{1 if v1 else 2}.caffemodel").write_bytes(_caffemodel(weights, v1))
    mean = np.zeros((1, 3, 256, 256), np.float32)
    mean[0, 0], mean[0, 1], mean[0, 2] = 100.0, 120.0, 140.0  # B, G, R
    mean[0, :, :, :128] += 5.0  # not constant: a mean image
    (folder / "mean.binaryproto").write_bytes(_blob(mean, v1=True))
    return folder


# --- Caffe's forward, written out from Caffe's layer definitions -----------------------------------------------


def _caffe_lrn(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe LRN ACROSS_CHANNELS: x / (k + alpha/size * sum of x^2 over size maps centred on each)^beta, over
    all maps (not per group)."""
    squares = F.pad(x * x, (0, 0, 0, 0, size // 2, size // 2))
    window = sum(squares[:, i : i + x.shape[1]] for i in range(size))
    return x / (k + alpha / size * window) ** beta


def _caffe_forward(
    weights, image_rgb: np.ndarray, mean_bgr: np.ndarray, lrn=_caffe_lrn, rgb_input=False
):
    """Logits of bvlc_alexnet's deploy net: BGR image minus the mean, centre 227 crop, conv/ReLU/LRN/ceil pool."""
    w = {k: (torch.from_numpy(a), torch.from_numpy(b)) for k, (a, b) in weights.items()}
    x = torch.from_numpy(image_rgb.astype(np.float32)).permute(2, 0, 1)
    if not rgb_input:
        x = x.flip(0)  # Caffe's data are BGR
    x = (x - torch.from_numpy(mean_bgr if not rgb_input else mean_bgr[::-1].copy()))[
        None, :, 14:241, 14:241
    ]
    x = lrn(F.relu(F.conv2d(x, *w["conv1"], stride=4)))
    x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    x = lrn(F.relu(F.conv2d(x, *w["conv2"], padding=2, groups=2)))
    x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    x = F.relu(F.conv2d(x, *w["conv3"], padding=1))
    x = F.relu(F.conv2d(x, *w["conv4"], padding=1, groups=2))
    x = F.max_pool2d(F.relu(F.conv2d(x, *w["conv5"], padding=1, groups=2)), 3, 2, ceil_mode=True)
    x = F.relu(F.linear(x.flatten(1), *w["fc6"]))
    x = F.relu(F.linear(x, *w["fc7"]))
    return F.linear(x, *w["fc8"])[0]


def _ours(path, image_path):
    args = predict.get_args_parser().parse_args(
        [str(image_path), "--checkpoint", str(path), "--device", "cpu"]
    )
    net = restore(str(path), args)
    image = torch.from_numpy(
        load_rgb(str(image_path), resize=net.transform.augment.resize)
    ).permute(2, 0, 1)
    with torch.no_grad():
        return net.model(net.transform.center(image[None].contiguous()))[0], net


def _close(a, b):
    return float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())


@pytest.mark.parametrize("version", [1, 2])
def test_a_caffemodel_converts_to_the_net_caffe_computes(files, weights, tmp_path, version, capsys):
    out = tmp_path / "bvlc.pt"
    assert (
        convert.main(
            [
                str(files / f"v{version}.caffemodel"),
                "--mean",
                str(files / "mean.binaryproto"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert (
        f"sha1 {caffe.sha1(str(files / f'v{version}.caffemodel'))}" in err and "not BVLC's" in err
    )
    ckpt = checkpoint.load(str(out))
    assert (ckpt.variant, len(ckpt.classes), ckpt.classes[0]) == ("caffe", 1000, "tench")
    assert ckpt.augment["resize"] == "warp"
    assert (
        ckpt.origin["sha1"] == caffe.sha1(str(files / f"v{version}.caffemodel"))
        and ckpt.optimizer is None
    )
    image = np.array(colour_image(7, size=(256, 256)))
    image[:, :, 0] = 255 - image[:, :, 0]  # red and blue clearly apart
    Image.fromarray(image).save(tmp_path / "photo.png")
    mean_bgr = np.zeros((3, 256, 256), np.float32)
    mean_bgr[0], mean_bgr[1], mean_bgr[2] = 100.0, 120.0, 140.0
    mean_bgr[:, :, :128] += 5.0
    expected = _caffe_forward(weights, image, mean_bgr)
    got, net = _ours(out, tmp_path / "photo.png")
    assert _close(got, expected), float((got - expected).abs().max())
    # the comparison can fail: the paper's LRN (k = 2, alpha not divided), or RGB fed to BGR kernels, differ
    paper_lrn = lambda x: _caffe_lrn(x, alpha=1e-4 * 5, k=2.0)  # noqa: E731
    assert not _close(got, _caffe_forward(weights, image, mean_bgr, lrn=paper_lrn))
    assert not _close(got, _caffe_forward(weights, image, mean_bgr, rgb_input=True))
    # predict, visualize and train --pretrained take it as it is
    assert predict.main([str(tmp_path / "photo.png"), "--checkpoint", str(out), "--top", "2"]) == 0
    assert "1. " in capsys.readouterr().out
    if version == 2:
        assert (
            visualize.main(["filters", "--checkpoint", str(out), "--out", str(tmp_path / "f.png")])
            == 0
        )
        printed = capsys.readouterr().out
        assert (
            "tower 1 (kernels 1-48): mean chroma" in printed
            and "tower 2 (kernels 49-96)" in printed
        )
        assert (
            train.main(
                [
                    "--data",
                    "synthetic?classes=4&train=16&val=8",
                    "-b",
                    "8",
                    "--workers",
                    "0",
                    "--quiet",
                    "--epochs",
                    "1",
                    "--variant",
                    "caffe",
                    "--pretrained",
                    str(out),
                    "--out",
                    str(tmp_path / "tuned"),
                ]
            )
            == 0
        )
        assert "fc8 re-initialised" in capsys.readouterr().err


def test_without_a_mean_file_caffes_channel_means_are_used(files, tmp_path, capsys):
    out = tmp_path / "bvlc.pt"
    assert convert.main([str(files / "v2.caffemodel"), "--out", str(out)]) == 0
    assert "104, G 117, R 123" in capsys.readouterr().err
    mean = checkpoint.load(str(out)).stats["mean_image"]
    assert mean.shape == (3, 256, 256) and mean[:, 5, 5].tolist() == [123.0, 117.0, 104.0]  # RGB


def test_warp_resize_is_pils_resize_of_both_sides(tmp_path):
    colour_image(2, size=(300, 200)).save(tmp_path / "wide.png")
    want = np.asarray(
        Image.open(tmp_path / "wide.png").convert("RGB").resize((256, 256), Image.BILINEAR)
    )
    assert np.array_equal(load_rgb(str(tmp_path / "wide.png"), resize="warp"), want)
    assert not np.array_equal(load_rgb(str(tmp_path / "wide.png")), want)  # §2's cut is another


def test_a_converted_net_evaluates_on_a_folder_with_warped_images(files, tmp_path, capsys):
    out = tmp_path / "bvlc.pt"
    assert convert.main([str(files / "v2.caffemodel"), "--out", str(out)]) == 0
    image_tree(str(tmp_path / "imagenet" / "train"), {"n01440764": 1, "n01443537": 1})
    image_tree(
        str(tmp_path / "imagenet" / "val"),
        {"n01440764": 1, "n01443537": 1},
        start_seed=9,
        size=(300, 200),
    )
    small = tmp_path / "small.pt"  # 2 classes, as the tiny ImageNet tree has
    ckpt = checkpoint.load(str(out))
    ckpt.model["fc8.weight"], ckpt.model["fc8.bias"] = (
        ckpt.model["fc8.weight"][:2],
        ckpt.model["fc8.bias"][:2],
    )
    ckpt.classes = ["tench", "goldfish"]
    checkpoint.save(str(small), ckpt)
    capsys.readouterr()
    assert (
        evaluate.main(
            [
                "--checkpoint",
                str(small),
                "--data",
                f"imagenet:{tmp_path / 'imagenet'}",
                "-b",
                "2",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    assert "(2 images)" in capsys.readouterr().out


def _bad_caffemodels(weights, folder):
    whole = _caffemodel(weights, v1=False)
    missing = dict(weights)
    del missing["fc8"]
    wrong = dict(weights, conv1=(weights["conv1"][0][:, :, :5, :5].copy(), weights["conv1"][1]))
    v0 = _field(1, b"old") + _field(2, _field(1, _field(1, b"conv1") + _field(2, b"conv")))
    files = {
        "truncated": (whole[: len(whole) // 3], "truncated"),
        "text": (b"name: 'AlexNet'\nlayer {}\n", "Caffe"),
        "missing": (_caffemodel(missing, False), "'fc8'"),
        "extra": (_caffemodel(weights, False, extra=[("fc9", weights["fc8"])]), "'fc9'"),
        "shape": (_caffemodel(wrong, False), "'conv1'"),
        "v0": (v0, "V0"),
    }
    for name, (data, _) in files.items():
        (folder / f"{name}.caffemodel").write_bytes(data)
    return {name: words for name, (_, words) in files.items()}


def test_bad_files_are_one_line_exit_2_and_write_nothing(files, weights, tmp_path, capsys):
    for name, words in _bad_caffemodels(weights, tmp_path).items():
        out = tmp_path / f"{name}.pt"
        capsys.readouterr()
        assert convert.main([str(tmp_path / f"{name}.caffemodel"), "--out", str(out)]) == 2, name
        errors = [
            line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")
        ]
        assert len(errors) == 1 and words in errors[0], (name, errors)
        assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    assert convert.main([str(tmp_path / "none.caffemodel"), "--out", str(tmp_path / "x.pt")]) == 2
    (tmp_path / "taken.pt").write_text("mine")
    assert convert.main([str(files / "v2.caffemodel"), "--out", str(tmp_path / "taken.pt")]) == 2
    assert "--force" in capsys.readouterr().err and (tmp_path / "taken.pt").read_text() == "mine"
    assert (
        convert.main([str(files / "v2.caffemodel"), "--out", str(tmp_path / "taken.pt"), "--force"])
        == 0
    )
    (tmp_path / "badmean.binaryproto").write_bytes(b"\xff\xff\xff")
    assert (
        convert.main(
            [
                str(files / "v2.caffemodel"),
                "--mean",
                str(tmp_path / "badmean.binaryproto"),
                "--out",
                str(tmp_path / "m.pt"),
            ]
        )
        == 2
        and not (tmp_path / "m.pt").exists()
    )


def test_torchvision_weights_convert_and_score_as_torchvision_does(tmp_path):
    import torchvision

    torch.manual_seed(3)
    reference = torchvision.models.alexnet(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "alexnet-owt.pth")
    out = tmp_path / "tv.pt"
    assert convert.main([str(tmp_path / "alexnet-owt.pth"), "--out", str(out)]) == 0
    Image.fromarray(np.array(colour_image(4, size=(256, 256)))).save(tmp_path / "photo.png")
    got, net = _ours(out, tmp_path / "photo.png")
    assert net.checkpoint.variant == "torchvision" and net.classes[1] == "goldfish"
    array = np.asarray(Image.open(tmp_path / "photo.png").convert("RGB"), dtype=np.float32) / 255.0
    crop = (array[16:240, 16:240] - np.array([0.485, 0.456, 0.406])) / np.array(
        [0.229, 0.224, 0.225]
    )
    with torch.no_grad():  # torchvision's own eval transform, by hand
        want = reference(torch.from_numpy(crop.astype(np.float32)).permute(2, 0, 1)[None])[0]
    assert _close(got, want)
    assert (
        train.main(
            [
                "--data",
                "synthetic?classes=4&train=16&val=8",
                "-b",
                "8",
                "--workers",
                "0",
                "--quiet",
                "--epochs",
                "1",
                "--variant",
                "torchvision",
                "--pretrained",
                str(out),
                "--out",
                str(tmp_path / "tuned"),
            ]
        )
        == 0
    )


@pytest.mark.parametrize("variant", ["paper", "caffe", "torchvision"])
def test_onnx_export_equals_the_net_in_onnxruntime(tmp_path, variant, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_model(variant, 10, init="he")
    stats = DataStats(np.zeros((3, 256, 256), np.float32), np.ones(3), np.eye(3))
    saved = checkpoint.Checkpoint(
        model=model.state_dict(),
        variant=variant,
        classes=[str(i) for i in range(10)],
        augment={"crop": model.config.input_size},
        init="he",
        stats=checkpoint.Checkpoint.stats_entry(stats),
    )
    checkpoint.save(str(tmp_path / "net.pt"), saved)
    assert (
        export.main(["--checkpoint", str(tmp_path / "net.pt"), "--out", str(tmp_path / "net.onnx")])
        == 0
    )
    assert "onnxruntime's logits within" in capsys.readouterr().err
    error = export.check_with_onnxruntime(
        model, str(tmp_path / "net.onnx"), model.config.input_size, seed=1
    )
    assert error < 1e-4
    nodes = [n for n in onnx.load(str(tmp_path / "net.onnx")).graph.node if n.op_type == "LRN"]
    alphas = {round(a.f, 8) for n in nodes for a in n.attribute if a.name == "alpha"}
    assert {"paper": (4, {5e-4}), "caffe": (2, {1e-4}), "torchvision": (0, set())}[variant] == (
        len(nodes),
        alphas,
    )


def test_filters_report_each_towers_colour():
    grey = torch.rand(48, 1, 11, 11).expand(48, 3, 11, 11)
    coloured = torch.zeros(48, 3, 11, 11)
    coloured[:, 0] = torch.rand(48, 11, 11)  # red only
    chroma = visualize.kernel_chroma(torch.cat([grey, coloured]))
    assert float(chroma[:48].max()) == 0.0 and float(chroma[48:].min()) > 0.3
    lines = visualize.chroma_report(torch.cat([grey, coloured]), 2)
    assert (
        lines[0].startswith("tower 1 (kernels 1-48): mean chroma 0.000")
        and "tower 2 (kernels 49-96)" in lines[1]
    )


def test_bvlc_by_name_is_the_caffemodel_converted_by_path(files, tmp_path, monkeypatch):
    """The name "bvlc" pointed at a server on 127.0.0.1 that serves this caffemodel under BVLC's file name, with
    its sha1: downloaded, checked, converted once and cached; from_pretrained gives the logits of convert (no
    --mean: Caffe's per-channel mean, as the name uses) and loading by path, and the caffe variant."""
    import dataclasses

    from local_server import Server
    from paper_alexnet import from_pretrained, published

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(published.MIRROR_ENV, raising=False)
    source = files / "v2.caffemodel"
    x = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    assert convert.main([str(source), "--out", str(tmp_path / "by_path.pt")]) == 0
    net = from_pretrained(str(tmp_path / "by_path.pt"))
    want, classes = net(net.transform.center(x)), net.classes
    server = Server({"/bvlc_alexnet.caffemodel": str(source)})
    real = published.lookup("bvlc")
    url, sha1 = f"{server.url}/bvlc_alexnet.caffemodel", caffe.sha1(str(source))
    monkeypatch.setitem(
        published._MAKERS,
        "bvlc",
        lambda: dataclasses.replace(real, url=url, checksum=f"sha1:{sha1}"),
    )
    try:
        net = from_pretrained("bvlc")
    finally:
        server.stop()
    assert net.meta["variant"] == "caffe" and net.classes == classes
    assert torch.equal(net(net.transform.center(x)), want)
    net = torch.hub.load(ROOT, "alexnet_caffe", source="local", pretrained=True)  # the cache
    assert torch.equal(net(net.transform.center(x)), want)
    assert server.gets == {"/bvlc_alexnet.caffemodel": 1}
    # the input the name states (a run settles by it before any download) is the converted weights' own
    from reproduce.training import run_config

    folder = os.path.join(published.cache_dir(), "paper_alexnet", "bvlc")
    assert run_config.weights_input(run_config.RunConfig(pretrained=folder)) == real.input
