"""The small-data tools (none of them the paper's: docs/deviations.md) against their definitions, written out
here: random-resized crops, colour jitter, label smoothing, mixup and CutMix, the weights' moving average,
flip averaging at test time; and their flags and records."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from paper_alexnet.data import Augment, PaperTransform
from paper_alexnet.data.mixing import Mixing, mix_images, mix_targets
from paper_alexnet.data.transforms import draw_boxes, jittered, resized_crops
from paper_alexnet.ema import WeightAverage
from paper_alexnet.engine import StepPlace, StepTools, evaluate, train_one_epoch
from reproduce import ablate, train
from reproduce.training import run_config


# --- random-resized crops ------------------------------------------------------------------------------------


@pytest.mark.parametrize("low", [0.08, 0.35, 0.75])
def test_random_resized_boxes_keep_their_area_and_aspect_within_the_stated_ranges(low):
    boxes = draw_boxes(20000, 256, low, torch.Generator().manual_seed(1))
    top, left, height, width = boxes.unbind(1)
    area, aspect = height * width / 256**2, width / height
    assert float(area.min()) >= low - 1e-9 and float(area.max()) <= 1 + 1e-9
    assert float(aspect.min()) >= 3 / 4 - 1e-9 and float(aspect.max()) <= 4 / 3 + 1e-9
    assert float(top.min()) >= 0 and float(left.min()) >= 0
    assert float((top + height).max()) <= 256 + 1e-9 and float((left + width).max()) <= 256 + 1e-9
    # the ranges are used, not a corner of them: areas reach near both ends, aspects near both bounds
    assert float(area.min()) < low + 0.02 and float(area.max()) > 0.74
    assert float(aspect.min()) < 0.76 and float(aspect.max()) > 1.32


def test_a_box_the_size_of_the_crop_resamples_to_exactly_that_crop_mirrored_or_not():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8).float()
    boxes = torch.tensor([[0.0, 0.0, 32, 32], [5.0, 8.0, 32, 32], [8.0, 3.0, 32, 32]])
    mirror = torch.tensor([False, True, False])
    out = resized_crops(images, boxes, mirror, 32)
    for k, (y, x) in enumerate([(0, 0), (5, 8), (8, 3)]):
        want = images[k, :, y : y + 32, x : x + 32]
        want = want.flip(-1) if mirror[k] else want
        # float32 grid coordinates: a sample lands within ~1e-5 px of the pixel centre (x 255 levels)
        assert torch.allclose(out[k], want, atol=0.01)


def test_a_bigger_box_is_the_bilinear_resampling_of_its_region():
    """Output pixel j samples the box at top + (j + 0.5) h / size - 0.5 (pixel centres onto the box's)."""
    image = torch.arange(64 * 64, dtype=torch.float64).view(1, 1, 64, 64).expand(1, 3, 64, 64)
    image = image + torch.linspace(0, 7, 64).view(1, 1, 64, 1)  # not separable into rows alone
    top, left, h, w, size = 6.0, 10.0, 40.0, 30.0, 20
    out = resized_crops(image, torch.tensor([[top, left, h, w]]), None, size)[0, 0]
    src = image[0, 0].numpy()

    def bilinear(yy, xx):
        y0, x0 = int(math.floor(yy)), int(math.floor(xx))
        fy, fx = yy - y0, xx - x0
        return (
            src[y0, x0] * (1 - fy) * (1 - fx)
            + src[y0, x0 + 1] * (1 - fy) * fx
            + src[y0 + 1, x0] * fy * (1 - fx)
            + src[y0 + 1, x0 + 1] * fy * fx
        )

    for i in (0, 7, 19):
        for j in (0, 11, 19):
            yy = top + (i + 0.5) * h / size - 0.5
            xx = left + (j + 0.5) * w / size - 0.5
            assert float(out[i, j]) == pytest.approx(bilinear(yy, xx), rel=1e-9)


def test_random_resized_crops_resample_the_mean_image_with_the_image():
    """The image minus its own mean is zero wherever the box falls: the mean moved with it."""
    from paper_alexnet.data.stats import DataStats

    images = torch.randint(0, 256, (4, 3, 256, 256), dtype=torch.uint8)
    stats = DataStats(
        images[0].float().numpy(), np.ones(3, np.float32), np.eye(3, dtype=np.float32)
    )
    transform = PaperTransform(stats, Augment(crop_scale=0.2, pca=False))
    same = images[:1].expand(4, -1, -1, -1)
    out = transform.train(same, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 227, 227) and float(out.abs().max()) < 1e-3


def test_the_tools_that_are_off_draw_nothing_so_the_paper_run_draws_what_it_always_drew():
    plain = PaperTransform(None, Augment(pca=False, mean="none"))
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    plain.draw(6, g1)
    torch.randint(256 - 227 + 1, (6,), generator=g2)  # §4.1: offsets, then reflections
    torch.randint(256 - 227 + 1, (6,), generator=g2)
    torch.rand(6, generator=g2)
    assert torch.equal(g1.get_state(), g2.get_state())
    on = plain.draw(6, torch.Generator().manual_seed(4))
    assert on["boxes"] is None and on["colour"] is None


@pytest.mark.parametrize(
    "flags", [["--crop-scale", "0.9"], ["--crop-scale", "-1"], ["--jitter", "1"]]
)
def test_impossible_crop_scales_and_jitters_are_one_line_and_exit_2(tmp_path, capsys, flags):
    out = tmp_path / "run"
    assert train.main(["--out", str(out), "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --") and "Traceback" not in err and not out.exists()


# --- colour jitter -------------------------------------------------------------------------------------------


def test_colour_jitter_is_brightness_then_contrast_then_saturation_as_written():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (2, 3, 5, 4), dtype=np.uint8))
    colour = torch.tensor([[1.3, 0.7, 1.2], [0.8, 1.4, 0.6]])
    got = jittered(images, colour).numpy()
    luma = np.array([0.299, 0.587, 0.114])
    for n in range(2):
        b, c, s = colour[n].tolist()
        x = np.clip(images[n].numpy().astype(np.float64) * b, 0, 255)
        mean = np.einsum("c,chw->hw", luma, x).mean()
        x = np.clip(mean + (x - mean) * c, 0, 255)
        gray = np.einsum("c,chw->hw", luma, x)
        x = np.clip(gray + (x - gray) * s, 0, 255)
        # float32 against float64: a dozen roundings of values up to 255 (u x 255 = 1.5e-5 each)
        assert np.allclose(got[n], x, rtol=0, atol=1e-3)
    # the luma weights are made (and on a GPU copied there) once, not at every step
    made = []
    real = torch.tensor
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
        again = [jittered(images, colour).numpy() for _ in range(3)]
    assert made == [] and all(np.array_equal(a, got) for a in again)


def test_jitter_factors_are_drawn_within_their_range():
    transform = PaperTransform(None, Augment(pca=False, mean="none", jitter=0.4))
    colour = transform.draw(5000, torch.Generator().manual_seed(2))["colour"]
    assert float(colour.min()) >= 0.6 and float(colour.max()) <= 1.4
    assert float(colour.min()) < 0.61 and float(colour.max()) > 1.39


# --- label smoothing and mixup / CutMix, through the training step -------------------------------------------


class Batches:
    """One global batch of uint8 images, as BatchLoader.global_batches gives it."""

    skipped: list = []

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def global_batches(self):
        yield len(self.labels), self.images, self.labels


def _step(mixing=None, smoothing=0.0, seed=0):
    """One training step at rate 0 of a linear net on 6 fixed 8x8 crops: the loss it reports and the input it
    was given, and the inputs as cropped before any blending."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    transform = PaperTransform(
        None, Augment(crop=8, flip=False, pca=False, translate=False, mean="none", scale=1 / 64)
    )
    seen, heard = [], []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    train_one_epoch(
        model,
        Batches(images, labels),
        transform,
        torch.optim.SGD(model.parameters(), lr=0.0),
        torch.Generator().manual_seed(seed),
        StepPlace(torch.device("cpu")),
        StepTools(mixing=mixing, label_smoothing=smoothing),
        on_step=lambda step, value, hits, n: heard.append(value),
    )
    return heard[0], seen[0], transform.center(images), labels, model.requires_grad_(False)


def test_a_label_smoothing_loss_is_the_cross_entropy_against_the_smoothed_labels():
    eps, classes = 0.1, 4
    loss, x, _, labels, model = _step(smoothing=eps)
    log_p = torch.log_softmax(model(x).double(), dim=1)
    q = torch.full((6, classes), eps / classes, dtype=torch.float64)
    q[torch.arange(6), labels] += 1 - eps
    assert loss == pytest.approx(float(-(q * log_p).sum(1).mean()), rel=1e-5)
    plain, *_ = _step()
    assert loss != pytest.approx(plain, rel=1e-4)  # smoothing changed what is minimised


def test_mixup_blends_each_image_and_its_label_with_the_reversed_batch():
    alpha = 0.2
    loss, x, crops, labels, model = _step(mixing=Mixing(mixup=alpha), seed=3)
    # the draw, from a generator seeded alike (the crops here draw nothing before it)
    lam = Mixing(mixup=alpha).draw(torch.Generator().manual_seed(3), 8)["lam"]
    assert 0 < lam < 1
    want_x = torch.stack([lam * crops[k] + (1 - lam) * crops[5 - k] for k in range(6)])
    # one blend a pixel, in float32 either way: two roundings of values under 8 (u x 8 = 5e-7)
    assert torch.allclose(x, want_x, rtol=0, atol=2e-6)
    q = torch.zeros(6, 4, dtype=torch.float64)
    for k in range(6):
        q[k, labels[k]] += lam
        q[k, labels[5 - k]] += 1 - lam
    assert torch.allclose(q.sum(1), torch.ones(6, dtype=torch.float64))
    log_p = torch.log_softmax(model(x).double(), dim=1)
    assert loss == pytest.approx(float(-(q * log_p).sum(1).mean()), rel=1e-5)


def test_mixup_draws_lam_from_beta_alpha_alpha():
    g = torch.Generator().manual_seed(0)
    lams = np.array([Mixing(mixup=0.4).draw(g, 8)["lam"] for _ in range(4000)])
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
    assert lams.mean() == pytest.approx(0.5, abs=0.02)
    assert lams.var() == pytest.approx(1 / (4 * (2 * 0.4 + 1)), rel=0.08)


def test_cutmix_pastes_a_box_of_the_reversed_batch_and_weighs_the_labels_by_area():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, 20, 20)
    y = torch.tensor([0, 1, 2, 1])
    for _ in range(20):
        choice = Mixing(cutmix=1.0).draw(g, 20)
        top, left, bottom, right = choice["box"]
        assert 0 <= top <= bottom <= 20 and 0 <= left <= right <= 20
        inside = torch.zeros(20, 20, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        got = mix_images(x, choice)
        want = torch.where(inside, x.flip(0), x)
        assert torch.equal(got, want)
        lam = 1 - float(inside.float().mean())  # the share of each image that is still its own
        assert choice["lam"] == pytest.approx(lam)
        q = mix_targets(y, 3, choice)
        for k in range(4):
            expected = torch.zeros(3)
            expected[y[k]] += lam
            expected[y[3 - k]] += 1 - lam
            assert torch.allclose(q[k], expected)


def test_with_mixup_and_cutmix_both_on_each_batch_takes_one_of_them():
    g = torch.Generator().manual_seed(1)
    kinds = [Mixing(mixup=0.2, cutmix=1.0).draw(g, 16)["box"] is None for _ in range(400)]
    assert 0.4 < sum(kinds) / len(kinds) < 0.6


# --- the weights' moving average -----------------------------------------------------------------------------


def test_the_averaged_weights_are_the_running_formula_after_k_steps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3))
    decay, steps = 0.9, 6
    average = WeightAverage(
        model, torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3)), decay
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    history = [{k: v.detach().clone().double() for k, v in model.named_parameters()}]
    for _ in range(steps):
        optimizer.zero_grad()
        (model(torch.randn(8, 5)) - 1).square().sum().backward()
        optimizer.step()
        average.update()
        history.append({k: v.detach().clone().double() for k, v in model.named_parameters()})
    for name, got in average.model.named_parameters():
        # e_k = d^k w_0 + sum_i (1 - d) d^(k - i) w_i, in float64 from the weights the steps left (whatever
        # the CPU's kernels made of them, the average is a function of these)
        want = decay**steps * history[0][name] + sum(
            (1 - decay) * decay ** (steps - i) * history[i][name] for i in range(1, steps + 1)
        )
        # float32 lerp: each of the k updates rounds at most a few ulps of max |w| (eps32 = 1.2e-7); 4 ulps a
        # step bounds it with room
        size = max(float(h[name].abs().max()) for h in history)
        tolerance = steps * 4 * torch.finfo(torch.float32).eps * size
        assert float((got.double() - want).abs().max()) <= tolerance, name
        # where the average lies clearly off the last weights (100x the tolerance), it is not the last weights:
        # a copy of the stepped net would fail here. Elements that training left still (the bias before
        # batch norm has a zero gradient in exact arithmetic, float noise on another CPU) are not asked about.
        off = (want - history[-1][name]).abs() > 100 * tolerance
        assert bool(((got.double() - history[-1][name]).abs()[off] > 50 * tolerance).all()), name
        if name.startswith("1."):
            # batch norm's scale and shift: d/dbeta of sum (y - 1)^2 is 2 sum (y - 1), about -16 at the start,
            # and d/dgamma is 2 gamma sum xhat^2 = 16 gamma; at lr 0.1 each moves by O(1) a step, every element
            assert bool(off.all()), name
    # buffers (batch norm's running statistics) are the stepped net's
    assert torch.equal(average.model[1].running_mean, model[1].running_mean)


def test_a_run_with_ema_keeps_the_average_as_best_and_the_stepped_weights_to_resume(tmp_path):
    from paper_alexnet import checkpoint

    out = tmp_path / "run"
    argv = ["--data", "synthetic?classes=4&train=16&val=8", "-b", "8", "--workers", "0"]
    assert train.main(argv + ["--quiet", "--epochs", "1", "--ema", "0.5", "--out", str(out)]) == 0
    best, last = checkpoint.load(str(out / "best.pt")), checkpoint.load(str(out / "checkpoint.pt"))
    # what evaluate, predict and features read (``model``) is the average; the stepped weights are beside it
    assert best.trained is not None and last.trained is not None
    assert torch.equal(best.model["fc8.weight"], last.model["fc8.weight"])
    assert not torch.equal(last.model["fc8.weight"], last.trained["fc8.weight"])
    record = json.loads((out / "config.json").read_text())
    assert record["run"]["ema"] == 0.5 and record["run"]["mixup"] == 0


# --- flip averaging at test time -----------------------------------------------------------------------------


def test_flip_averaging_scores_the_mean_softmax_of_the_centre_crop_and_its_reflection(monkeypatch):
    from paper_alexnet import engine

    torch.manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 12, 12), dtype=torch.uint8)
    labels = torch.arange(10) % 3
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    transform = PaperTransform(None, Augment(crop=8, pca=False, mean="none", scale=1 / 64))

    class Loader:
        skipped: list = []

        def __init__(self, *args, **kwargs):
            pass

        def indexed(self):
            yield torch.arange(10), images, labels

    monkeypatch.setattr(engine, "BatchLoader", Loader)
    got = evaluate(model, list(range(10)), transform, device=torch.device("cpu"), flip=True)
    centre = images[:, :, 2:10, 2:10].float() / 64
    with torch.no_grad():
        p = (torch.softmax(model(centre), 1) + torch.softmax(model(centre.flip(-1)), 1)) / 2
    want = float((p.argmax(1) != labels).float().mean())
    assert got["top1_err"] == pytest.approx(want) and got["flip_top1_err"] == pytest.approx(want)
    ten = evaluate(model, list(range(10)), transform, device=torch.device("cpu"), ten_crop=True)
    assert ten["flip_top1_err"] == pytest.approx(want)  # two of the ten crops, no second pass


@pytest.mark.parametrize("ten_crop, per_image", [(False, False), (True, True)])
def test_evaluation_reads_back_to_the_host_once_however_many_batches(
    monkeypatch, ten_crop, per_image
):
    """engine.evaluate keeps its sums (and the per-image rows) where the scores are and reads them once: a
    readback (``tolist``, ``item``, ``float()``, ``int()``, ``bool()``, ``.cpu()``; ``.numpy()`` reads only host
    tensors) made by engine.py or metrics.py is counted, for 2 batches and for 5."""
    import sys

    from paper_alexnet import engine

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 7))
    transform = PaperTransform(None, Augment(crop=8, pca=False, mean="none", scale=1 / 64))

    def counted(batches):
        images = torch.randint(0, 256, (batches, 4, 3, 12, 12), dtype=torch.uint8)

        class Loader:
            skipped: list = []

            def __init__(self, *args, **kwargs):
                pass

            def indexed(self):
                for k in range(batches):
                    yield list(range(4 * k, 4 * k + 4)), images[k], torch.arange(4) % 7

        monkeypatch.setattr(engine, "BatchLoader", Loader)
        reads = []
        for name in ("tolist", "item", "__float__", "__int__", "__bool__", "cpu"):
            real = getattr(torch.Tensor, name)

            def read(self, *args, real=real, name=name, **kwargs):
                caller = sys._getframe(1).f_code.co_filename
                if caller.endswith(("engine.py", "metrics.py")):
                    reads.append(name)
                return real(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, read)
        try:
            result = evaluate(model, list(range(4 * batches)), transform, device=torch.device("cpu"),
                              ten_crop=ten_crop, per_image=per_image)  # fmt: skip
        finally:
            monkeypatch.undo()
        assert result["images"] == 4 * batches
        if per_image:
            assert len(result["predictions"].index) == 4 * batches
        return reads

    assert counted(2) == counted(5) == (["tolist", "cpu"] if per_image else ["tolist"])


def test_a_steps_readback_is_queued_before_the_backward_and_read_before_the_weights_move(
    monkeypatch,
):
    """engine.train_one_epoch: the step's sums are sent to the host (a pinned copy on a GPU) before the
    backward is queued, so the host waits for the forward, not the backward; they are read, and a non-finite
    loss caught, before optimizer.step()."""
    from paper_alexnet import engine

    order = []
    real = engine.Readback

    class Recorded(real):
        def start(self, tensor):
            order.append("readback queued")
            super().start(tensor)

        def values(self):
            order.append("read")
            return super().values()

    monkeypatch.setattr(engine, "Readback", Recorded)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    model[1].weight.register_hook(lambda grad: order.append("backward"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    optimizer.register_step_pre_hook(lambda *args: order.append("step"))
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    transform = PaperTransform(
        None, Augment(crop=8, flip=False, pca=False, translate=False, mean="none")
    )
    engine.train_one_epoch(
        model, Batches(images, torch.arange(6) % 4), transform, optimizer, torch.Generator().manual_seed(0),
        StepPlace(torch.device("cpu")),
    )  # fmt: skip
    assert order == ["readback queued", "backward", "read", "step"]


# --- flags, records and grid cells ---------------------------------------------------------------------------


def test_the_paper_recipe_and_quick_leave_every_tool_off_unless_a_flag_says():
    from reproduce.training import recipes

    assert not run_config.tools_on(recipes.RECIPES["paper"])
    parsed = train.get_args_parser().parse_args(["--recipe", "paper"])
    config = run_config.from_args(parsed)
    assert (config.crop_scale, config.jitter, config.label_smoothing) == (None, 0.0, 0.0)
    assert (config.mixup, config.cutmix, config.ema) == (0.0, 0.0, 0.0)


def test_a_grid_cell_label_carries_each_tool_as_a_flag(tmp_path):
    base = run_config.from_words(["--data", "synthetic?classes=4&train=16&val=8"])
    cell = ablate.make_cell(base, "paper@mixup=0.2@label-smoothing=0.1", 0, str(tmp_path), True)
    assert (cell.config.mixup, cell.config.label_smoothing) == (0.2, 0.1)
    assert "--mixup" in cell.config.command and "0.2" in cell.config.command
