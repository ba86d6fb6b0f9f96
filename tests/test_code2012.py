"""The ``code-2012`` variant and recipe against the authors' 2012 release, and its layers against their formulas.

Every expected value below is written as a literal with the file and line of the release it was read from
(github.com/computerhistory/AlexNet-Source-Code at 2f8b81f; the release is not read at test time).
"layers-145.cfg N" and "layer-params-145.cfg N" are line numbers of those files.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from paper_alexnet import build_model, get_config, layers
from paper_alexnet.data import Augment, DataStats, PaperTransform
from paper_alexnet.layers import LocalResponseNorm, MapResponseNorm, DropoutScaledAtTest
from paper_alexnet.optim import HandSchedule, PaperSGD, parameter_groups
from paper_alexnet.two_tower import splits_in_two

# layers-145.cfg: (filters a tower, filterSize, stride, padding) of conv1a..conv5a
CONV = {
    "conv1": (48, 11, 4, 0),  # lines 13, 16, 15, 14
    "conv2": (128, 5, 1, 2),  # lines 68, 71, 70, 69
    "conv3": (192, 3, 1, 1),  # lines 138, 141, 140, 139 ("filters=192,192": one per input tower)
    "conv4": (192, 3, 1, 1),  # lines 166, 169, 168, 167
    "conv5": (128, 3, 1, 1),  # lines 195, 198, 197, 196
}
# layers-145.cfg: which layers read only their own tower ("inputs=pool1a"), which both ("inputs=pool2a,pool2b")
OWN_TOWER = {
    "conv1": False,
    "conv2": True,
    "conv3": False,
    "conv4": True,
    "conv5": True,
}  # 11, 67, 137, 165, 194
FC_TOWER = 2048  # layers-145.cfg 241, 269: fc2048a, fc2048ba
# layers-145.cfg initW (std of N(0, std), layer.py 807) and initB (layer.py 833: 0 when absent)
INIT_W = {
    "conv1": 0.01,
    "conv2": 0.01,
    "conv3": 0.03,
    "conv4": 0.03,
    "conv5": 0.03,
}  # 17, 73, 143, 172, 200
INIT_W.update(fc6=0.01, fc7=0.01, fc8=0.01)  # 242, 270, 298
INIT_B = {
    "conv1": 0.0,
    "conv2": 1.0,
    "conv3": 0.0,
    "conv4": 1.0,
    "conv5": 1.0,
}  # -, 74, -, 173, 201
INIT_B.update(fc6=1.0, fc7=1.0, fc8=0.0)  # 243, 271, -
# layer-params-145.cfg 137-140 (rnorm1a): scale, pow, minDiv; layers-145.cfg 39: size
RNORM = dict(scale=0.0001, pow=0.75, min_div=2.0, size=5)
# layer-params-145.cfg 157-159 (cnorm2a): scale, pow; layers-145.cfg 111: size. layer.py 1183: the parser
# divides scale by size (cmrnorm) or size**2 (rnorm); cuda-convnet's rnorm kernel adds 1 (no minDiv)
CNORM = dict(scale=0.001, pow=0.75, size=5)
KEEP = 0.5  # layers-145.cfg 258, 286 (hs1a, hs2a)


def test_the_variant_is_layers_145_cfg_as_the_file_writes_it():
    config = get_config("code-2012")
    model = build_model("code-2012", num_classes=10)
    for name, (filters, size, stride, padding) in CONV.items():
        conv = getattr(model, name)
        assert conv.out_channels == 2 * filters, name
        assert conv.kernel_size == (size, size) and conv.stride == (stride, stride), name
        assert conv.padding == (padding, padding), name
        assert conv.groups == (2 if OWN_TOWER[name] else 1), name
    assert (model.fc6.out_features, model.fc7.out_features) == (2 * FC_TOWER, 2 * FC_TOWER)
    # the normalisations: alpha as applied (scale / size), k = minDiv, within each tower's maps
    for norm in (model.norm1, model.norm2):
        assert isinstance(norm, LocalResponseNorm)
        assert norm.alpha == RNORM["scale"] / RNORM["size"] and norm.k == RNORM["min_div"]
        assert (norm.size, norm.beta, norm.groups) == (RNORM["size"], RNORM["pow"], 2)
    mapnorm = model.mapnorm2
    assert isinstance(mapnorm, MapResponseNorm) and not hasattr(model, "mapnorm1")
    assert mapnorm.alpha == CNORM["scale"] / CNORM["size"] ** 2 and mapnorm.k == 1.0
    assert (mapnorm.size, mapnorm.beta) == (CNORM["size"], CNORM["pow"])
    # layers-145.cfg 37 + 54: rnorm1a reads conv1a, the ReLU is pool1a's; 77 + 97: conv2's ReLU, then rnorm2a
    assert config.norm_before_relu == (True, False) and config.map_norm == (False, True)
    # sizeX 3, stride 2 (layers-145.cfg 51-52); layer.py 1164 and 1004 round outputs up
    assert (config.pool_size, config.pool_stride, config.pool_rounding) == (3, 2, "ceil")
    assert config.conv_rounding == "ceil" and config.input_size == 224
    for drop in (model.drop6, model.drop7):
        assert isinstance(drop, DropoutScaledAtTest) and drop.p == 1 - KEEP
    # the towers of --two-gpu build §3.5's order only: code-2012 runs grouped on one device
    assert not splits_in_two(config)


def test_the_variant_starts_from_the_files_init():
    torch.manual_seed(0)
    model = build_model("code-2012", num_classes=10)
    for name, std in INIT_W.items():
        weight = getattr(model, name).weight
        # the sample std of >= 34,848 N(0, std) draws (conv1; fc8 of 10 classes: 40,960): relative spread
        # 1/sqrt(2n) <= 0.0038, so 3% is 7.9 of it
        assert abs(weight.std().item() / std - 1) < 0.03, name
        assert (getattr(model, name).bias == INIT_B[name]).all(), name


def _cmrnorm(a, size, scale, power, min_div, tower):
    """layer.py 1183 + cuda-convnet's cross-map kernel: b_i = a_i (k + scale/size sum_j a_j^2)^-pow over
    j = i - size//2 .. i - size//2 + size - 1, clipped at the tower's edges; the backward is its own kernel's
    formula: g_i d_i^-pow + a_i sum_{j: i in window(j)} (-2 scale/size pow) g_j b_j / d_j."""
    n, c = a.shape[:2]
    d = np.zeros_like(a)
    for i in range(c):
        start = (i // tower) * tower
        lo, hi = max(start, i - size // 2), min(start + tower, i - size // 2 + size)
        d[:, i] = min_div + scale / size * (a[:, lo:hi] ** 2).sum(axis=1)
    return d


def test_the_cross_map_norm_as_the_2012_code_computes_it_forward_and_backward():
    rng = np.random.default_rng(0)
    a = rng.normal(
        0, 40, size=(2, 96, 3, 3)
    )  # conv1's raw output is signed: it is normalised before the ReLU
    g = rng.normal(size=a.shape)
    size, scale, power, k = RNORM["size"], RNORM["scale"], RNORM["pow"], RNORM["min_div"]
    d = _cmrnorm(a, size, scale, power, k, tower=48)
    b = a * d**-power
    grad = g * d**-power
    for i in range(96):
        start = (i // 48) * 48
        for j in range(start, start + 48):  # i is in j's window
            if j - size // 2 <= i < j - size // 2 + size:
                grad[:, i] += a[:, i] * (-2 * scale / size * power) * g[:, j] * b[:, j] / d[:, j]
    x = torch.tensor(a, requires_grad=True)
    out = layers.norm(get_config("code-2012"))(x)
    out.backward(torch.tensor(g))
    # float64 throughout: the two sums differ in order only
    np.testing.assert_allclose(out.detach().numpy(), b, rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("size", [5, 4])
def test_the_within_map_norm_against_its_formula_forward_and_backward(size):
    rng = np.random.default_rng(1)
    a = rng.normal(0, 30, size=(2, 3, 6, 7))
    g = rng.normal(size=a.shape)
    alpha, beta = CNORM["scale"] / CNORM["size"] ** 2, CNORM["pow"]
    h, w = a.shape[2:]

    def window(
        y, x
    ):  # rows y - size//2 .. y - size//2 + size - 1 (columns alike), clipped at the edges
        top, left = y - size // 2, x - size // 2
        return slice(max(0, top), min(h, top + size)), slice(max(0, left), min(w, left + size))

    d = np.zeros_like(a)
    for y in range(h):
        for x in range(w):
            rows, cols = window(y, x)
            d[:, :, y, x] = 1.0 + alpha * (a[:, :, rows, cols] ** 2).sum(axis=(2, 3))
    b = a * d**-beta
    grad = g * d**-beta
    for y in range(h):
        for x in range(w):  # (y, x)'s own denominator reads every pixel of its window
            rows, cols = window(y, x)
            term = (-2 * alpha * beta) * g[:, :, y, x] * b[:, :, y, x] / d[:, :, y, x]
            grad[:, :, rows, cols] += a[:, :, rows, cols] * term[:, :, None, None]
    x = torch.tensor(a, requires_grad=True)
    out = MapResponseNorm(size, alpha, beta, 1.0)(x)
    out.backward(torch.tensor(g))
    np.testing.assert_allclose(out.detach().numpy(), b, rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), grad, rtol=1e-10, atol=1e-14)


def test_the_forward_is_the_2012_layer_order_written_out():
    """conv1 -> rnorm1 -> pool1 (+ReLU) -> conv2 (+ReLU) -> rnorm2 -> cnorm2 -> pool2 -> conv3..5 -> pool3 (+ReLU)
    -> fc2048 (+ReLU) -> x keep ... as layers-145.cfg chains them, in float64, the net in eval mode."""
    torch.manual_seed(0)
    model = build_model("code-2012", num_classes=10).double().eval()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64) * 50
    m = model

    def rnorm(z):
        return (
            torch.tensor(_cmrnorm(z.numpy(), 5, RNORM["scale"], 0.75, 2.0, z.shape[1] // 2))
            ** -0.75
            * z
        )

    def cnorm(z):
        squares = F.pad(z * z, (2, 2, 2, 2))
        total = sum(
            squares[:, :, i : i + z.shape[2], j : j + z.shape[3]]
            for i in range(5)
            for j in range(5)
        )
        return z * (1 + CNORM["scale"] / 25 * total) ** -0.75

    def pool(z):  # sizeX 3, stride 2, outputs rounded up (layer.py 1164)
        return F.max_pool2d(z, 3, 2, ceil_mode=True)

    with torch.no_grad():
        z = F.conv2d(
            F.pad(x, (0, 3, 0, 3)), m.conv1.weight, m.conv1.bias, stride=4
        )  # 224 -> 55, rounded up
        z = F.relu(pool(rnorm(z)))
        z = F.relu(F.conv2d(z, m.conv2.weight, m.conv2.bias, padding=2, groups=2))
        z = pool(cnorm(rnorm(z)))
        z = F.relu(F.conv2d(z, m.conv3.weight, m.conv3.bias, padding=1))
        z = F.relu(F.conv2d(z, m.conv4.weight, m.conv4.bias, padding=1, groups=2))
        z = F.relu(pool(F.conv2d(z, m.conv5.weight, m.conv5.bias, padding=1, groups=2)))
        z = F.relu(F.linear(z.flatten(1), m.fc6.weight, m.fc6.bias)) * KEEP
        z = F.relu(F.linear(z, m.fc7.weight, m.fc7.bias)) * KEEP
        want = F.linear(z, m.fc8.weight, m.fc8.bias)
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_dropout_scaled_at_test_keeps_units_unscaled_in_training():
    x = torch.rand(4, 1000) + 1
    torch.manual_seed(3)
    trained = DropoutScaledAtTest(0.5).train()(x)
    torch.manual_seed(3)
    inverted = torch.nn.Dropout(0.5).train()(x)
    kept = inverted != 0
    assert torch.equal(trained != 0, kept)  # the same seed drops the same units as nn.Dropout
    assert torch.equal(trained[kept], x[kept])  # hs layer, src/layer.cu 1131: input x mask
    assert torch.equal(DropoutScaledAtTest(0.5).eval()(x), x * KEEP)  # 1133: input x keep


def test_the_recipe_is_layer_params_145_cfg_and_its_log():
    from reproduce.training import run_config
    from reproduce.training.recipes import RECIPES

    recipe = RECIPES["code-2012"]
    # layer-params-145.cfg 169: "set epsw to 0.001 from 0.01"; 19, 27, 35, ...: epsB=0.02; 4-5: momW, momB
    assert recipe.optimizer == "sgd" and recipe.lr == 0.01 and recipe.bias_lr == 0.02 / 0.01
    # 6: wc=0.0005 on weights; src/layer.cu 565: the biases' Weights are made with wc 0
    assert recipe.bias_wd == 0.0
    config = run_config.from_words(["--recipe", "code-2012", "--data", "synthetic"])
    assert (config.momentum, config.wd, config.schedule) == (0.9, 0.0005, "code-2012")
    # convdata_jpeg.py 77: crop_chunk = 32; 95: the mean image's centre crop; 177-179: the noise, then / 1.1
    assert (config.crop_chunk, config.lighting, config.mean) == (32, "code-2012", "image-centre")
    # on ImageNet, --recipe auto trains code-2012 as the code did; elsewhere the data kind's recipe
    auto = run_config.from_words(["--variant", "code-2012", "--data", "imagenet:/nowhere"])
    assert auto.recipe == "code-2012"
    assert (
        run_config.from_words(["--variant", "code-2012", "--data", "synthetic"]).recipe == "quick"
    )


def test_the_hand_schedule_sets_the_rates_the_2012_run_logged():
    model = build_model("code-2012", num_classes=10)
    groups = parameter_groups(model, 0.01, 0.0005, bias_lr=2.0, bias_wd=0.0, own=("conv1",))
    optimizer = PaperSGD(groups)
    by_name = {group["name"]: group for group in optimizer.param_groups}
    assert {name: (g["lr"], g["weight_decay"]) for name, g in by_name.items()} == {
        "weights": (0.01, 0.0005),
        "biases": (0.02, 0.0),
        "conv1.weight": (0.01, 0.0005),
        "conv1.bias": (0.02, 0.0),
    }
    assert all(p.dim() == 1 for p in by_name["biases"]["params"])
    # layer-params-145.cfg 169-181: the rate each group trains the given epoch with, over the run's 91 epochs
    logged = {  # epoch: (weights, biases, conv1 weights, conv1 biases)
        25: (0.01, 0.02, 0.01, 0.02),
        26: (0.001, 0.02, 0.001, 0.02),  # "epoch 25: set epsw to 0.001 from 0.01"
        52: (0.0001, 0.02, 0.0001, 0.02),  # "epoch 51: set epsw to 0.0001 from 0.001"
        68: (0.0001, 0.02, 0.00001, 0.02),  # "epoch 67: set epsw to 0.00001 from 0.0001 on conv1"
        73: (
            0.0001,
            0.02,
            0.0,
            0.0,
        ),  # "epoch 72: set epsw to 0 on conv1" (and epsB: 0.0 in params 3)
        80: (0.00001, 0.02, 0.0, 0.0),  # "epoch 79: set epsw to 0.00001 from 0.0001"
        91: (0.00001, 0.02, 0.0, 0.0),
    }
    schedule = HandSchedule(optimizer, 91)
    for epoch in range(1, 92):
        if epoch in logged:
            names = ("weights", "biases", "conv1.weight", "conv1.bias")
            got = tuple(by_name[name]["lr"] for name in names)
            np.testing.assert_allclose(got, logged[epoch], rtol=1e-12, err_msg=f"epoch {epoch}")
        # "epoch 67: ... set color noise to 0 from 0.1" (params 178)
        assert schedule.lighting(epoch) == (epoch <= 67)
        schedule.step()
    # a shorter run takes the same steps at the same fractions of its epochs
    assert [HandSchedule(optimizer, 12).at(e) for e in (25, 51, 67, 72, 79)] == [3, 7, 9, 9, 10]


def _coordinates() -> torch.Tensor:
    """Images whose channel 0 is each pixel's row and channel 1 its column (channel 2: the image's index)."""
    rows = torch.arange(256).view(256, 1).expand(256, 256)
    return torch.stack([rows, rows.T, torch.zeros(256, 256, dtype=torch.long)]).to(torch.uint8)


def _stats() -> DataStats:
    mean = np.random.default_rng(2).uniform(0, 255, size=(3, 256, 256)).astype(np.float32)
    return DataStats(
        mean,
        np.array([0.04, 0.01, 0.0025]),
        np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0],
    )


def test_chunked_crops_share_one_crop_and_flip_per_32_images():
    n = 80
    images = _coordinates().expand(n, 3, 256, 256).contiguous()
    augment = Augment(crop=224, pca=False, mean="none", crop_chunk=32)
    out = PaperTransform(None, augment).train(images, torch.Generator().manual_seed(0))
    top, left, right = out[:, 0, 0, 0], out[:, 1, 0, 0], out[:, 1, 0, -1]
    mirrored = left > right
    placed = torch.stack([top, torch.where(mirrored, right, left), mirrored.float()], dim=1)
    chunks = [placed[a:b] for a, b in ((0, 32), (32, 64), (64, 80))]  # convdata_jpeg.py 238-246
    for chunk in chunks:
        assert (chunk == chunk[0]).all()  # one position and one reflection for the chunk
    # each chunk draws anew: over many batches the chunks' crops vary
    many = PaperTransform(None, augment).train(
        images[:32].repeat(8, 1, 1, 1), torch.Generator().manual_seed(1)
    )
    assert len({(int(c[0, 0, 0]), int(c[1, 0, 0])) for c in many[::32]}) > 1
    # §4.1's own: each image its own crop
    each = PaperTransform(None, Augment(crop=224, pca=False, mean="none")).train(
        images, torch.Generator().manual_seed(0)
    )
    assert len({(int(c[0, 0, 0]), int(c[1, 0, 0])) for c in each[:32]}) > 1


def test_the_2012_lighting_uses_the_components_std_and_divides_the_crop():
    stats = _stats()
    images = torch.randint(0, 256, (4, 3, 256, 256), dtype=torch.uint8)
    fixed = dict(crop=224, flip=False, translate=False, mean="none")
    paper = PaperTransform(stats, Augment(**fixed))
    code = PaperTransform(stats, Augment(**fixed, lighting="code-2012"))
    shift_paper = paper.draw(4, torch.Generator().manual_seed(5))["shift"].double()
    shift_code = code.draw(4, torch.Generator().manual_seed(5))["shift"].double()
    p, lam = (
        torch.tensor(stats.eigvec, dtype=torch.float64),
        torch.tensor(stats.eigval, dtype=torch.float64),
    )
    # the same a_i: §4.1 scales them by lambda_i, the 2012 code by its color_stdevs, sqrt(lambda_i). The shifts
    # are float32, so a_i comes back to about 1e-6 (float32's 6e-8 of |shift|, over lambda_3 = 0.0025); a wrong
    # scale would be off by a factor sqrt(lambda_i), 0.05-0.2
    torch.testing.assert_close(
        (shift_paper @ p) / lam, (shift_code @ p) / lam.sqrt(), rtol=1e-4, atol=1e-5
    )
    # the crop, the noise added (x 255: pixels are 0-255), all divided by 1 + 0.1 (convdata_jpeg.py 177-179)
    draw = code.draw(4, torch.Generator().manual_seed(5))
    got = code.apply(images, draw).double()
    crop = images[:, :, 16:240, 16:240].double()
    want = (crop + 255 * draw["shift"].double().view(4, 3, 1, 1)) / 1.1
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-3)
    # no lighting, no division (the test pass, and the run's last epochs)
    code.lighting_on = False
    assert torch.equal(code.train(images, torch.Generator().manual_seed(5)), crop.float())


def test_the_mean_image_centre_is_subtracted_whatever_the_crop():
    stats = _stats()
    images = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8)
    transform = PaperTransform(stats, Augment(crop=224, pca=False, flip=False, mean="image-centre"))
    draw = {"ys": torch.tensor([0, 32, 5]), "xs": torch.tensor([32, 0, 7])}
    got = transform.apply(
        images, {**draw, "mirror": None, "shift": None, "boxes": None, "colour": None}
    )
    centre = torch.tensor(stats.mean_image[:, 16:240, 16:240])  # convdata_jpeg.py 95
    for k, (y, x) in enumerate(zip(draw["ys"].tolist(), draw["xs"].tolist())):
        want = images[k, :, y : y + 224, x : x + 224].float() - centre
        torch.testing.assert_close(got[k], want)


def test_a_stalled_2012_recipe_is_told_the_recipe_that_avoids_it_and_a_lower_rate_keeps_the_recipe():
    from reproduce.training import run_config
    from reproduce.training.alerts import avoiding_command

    words = ["--variant", "code-2012", "--recipe", "code-2012", "--data", "synthetic", "--out", "r"]
    config = run_config.from_words(words)
    # the 2012 code's init stalls on small data as §5's does: the quick recipe, not a lower rate
    assert avoiding_command(config, alexnet=True).split()[-4:] == [
        "--recipe",
        "quick",
        "--out",
        "r-quick",
    ]
    # a run that does not start from that init keeps its own recipe and lowers the rate
    quick = run_config.from_words(["--recipe", "quick", "--data", "synthetic", "--out", "r"])
    told = avoiding_command(quick, alexnet=True).split()
    assert told[told.index("--recipe") + 1] == "quick" and told[told.index("--lr") + 1] == "1e-05"
