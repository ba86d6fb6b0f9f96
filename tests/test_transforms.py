"""§2 and §4.1 on batches: crops, reflections, mean image, PCA lighting, the ten test patches.

Expected values are computed here from the paper's description, not from the implementation."""

import numpy as np
import pytest
import torch

from paper_alexnet import paper
from paper_alexnet.data import Augment, DataStats, PaperTransform, average_softmax, ten_crop_offsets


@pytest.fixture(autouse=True, params=[False, True], ids=["loop", "gather"])
def both_ways(request, monkeypatch):
    """Every test here runs on both ways of cutting a batch: one image at a time (the CPU's default) and one
    gather for the whole batch (the GPU's)."""
    init = PaperTransform.__init__

    def forced(self, *args, batched=request.param, **kwargs):
        init(self, *args, batched=batched, **kwargs)

    monkeypatch.setattr(PaperTransform, "__init__", forced)
    return request.param


def _coded_images(n, size=256):
    """Images whose pixel (c, y, x) encodes its own position, so a crop tells where it came from."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    one = torch.stack([y, x, (y + x) % 7]).to(torch.uint8)
    return one.expand(n, -1, -1, -1).clone(), one


def _stats(mean_image=None, size=256):
    mean = np.zeros((3, size, size), np.float32) if mean_image is None else mean_image
    return DataStats(
        mean,
        np.array([0.3, 0.02, 0.005]),
        np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0],
    )


def test_ten_crop_coordinates_are_the_corners_and_centre():
    # §4.1: "the four corner patches and the center patch as well as their horizontal reflections"
    offsets = ten_crop_offsets(256, 224)
    assert offsets[:5] == [
        (0, 0, False),
        (0, 32, False),
        (32, 0, False),
        (32, 32, False),
        (16, 16, False),
    ]
    assert offsets[5:] == [(y, x, True) for y, x, _ in offsets[:5]]
    assert ten_crop_offsets(256, 227)[3][:2] == (29, 29) and ten_crop_offsets(256, 227)[4][:2] == (
        14,
        14,
    )
    assert len(offsets) == len(set(offsets)) == paper.TEN_CROP  # the count §4.1 states


@pytest.mark.parametrize("crop", [224, 227])
def test_ten_crops_are_exact_slices_and_mirrors(crop):
    images, one = _coded_images(2)
    transform = PaperTransform(_stats(), Augment(crop=crop, pca=False, mean="none"))
    crops = transform.ten_crops(images)
    assert crops.shape == (10, 2, 3, crop, crop)
    far = 256 - crop
    starts = [(0, 0), (0, far), (far, 0), (far, far), (far // 2, far // 2)]
    for k, (y, x) in enumerate(starts):
        patch = one[:, y : y + crop, x : x + crop].float()
        assert torch.equal(crops[k, 1], patch)
        assert torch.equal(crops[k + 5, 0], patch.flip(-1))
    assert torch.equal(
        transform.center(images)[0],
        one[:, far // 2 : far // 2 + crop, far // 2 : far // 2 + crop].float(),
    )


def test_random_crops_stay_inside_and_flip_half_the_time():
    images, one = _coded_images(400)
    transform = PaperTransform(_stats(), Augment(crop=227, pca=False, mean="none"))
    out = transform.train(images, torch.Generator().manual_seed(0))
    assert out.shape == (400, 3, 227, 227)
    flipped, positions = 0, set()
    for patch in out:
        mirrored = patch[1, 0, 0] > patch[1, 0, -1]  # x coordinate decreasing: reflected
        if mirrored:
            patch, flipped = patch.flip(-1), flipped + 1
        y, x = int(patch[0, 0, 0]), int(patch[1, 0, 0])
        assert 0 <= y <= 29 and 0 <= x <= 29  # 256 - 227 = 29: every crop inside the image
        assert torch.equal(patch, one[:, y : y + 227, x : x + 227].float())
        positions.add((y, x))
    assert 150 < flipped < 250  # p = 1/2
    assert len(positions) > 200  # offsets vary per image
    no_flip = PaperTransform(_stats(), Augment(crop=227, pca=False, flip=False, mean="none"))
    out = no_flip.train(images[:50], torch.Generator().manual_seed(0))
    assert (out[:, 1, 0, 0] < out[:, 1, 0, -1]).all()


def test_mean_image_is_subtracted_where_the_image_is_cropped():
    images, one = _coded_images(16)
    transform = PaperTransform(_stats(one.float().numpy()), Augment(crop=224, pca=False))
    assert torch.count_nonzero(transform.train(images, torch.Generator().manual_seed(3))) == 0
    channel = PaperTransform(
        _stats(one.float().numpy()), Augment(crop=224, pca=False, flip=False, mean="channel")
    )
    out = channel.center(images)
    expected = one[:, 16:240, 16:240].float() - one.float().mean(dim=(1, 2), keepdim=True)
    # values up to 255 in float32: a subtraction and a mean of 224x224 values, each a few ulps (1.5e-5 at 255)
    assert torch.allclose(out[0], expected, rtol=0, atol=1e-4)


def test_torchvision_normalisation():
    images = torch.full((1, 3, 256, 256), 128, dtype=torch.uint8)
    out = PaperTransform(None, Augment(crop=224, pca=False, mean="torchvision")).center(images)
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    # values about 1 in float32: three roundings of at most u (6e-8) each in either order of the operations
    assert torch.allclose(out[0, :, 5, 5], expected, rtol=0, atol=1e-6)


def test_pca_lighting_statistics_and_one_draw_per_image():
    # §4.1: add [p1 p2 p3][a1 λ1, a2 λ2, a3 λ3]^T to every pixel, a_i ~ N(0, 0.1) once per image.
    # The shift s = P diag(λ) a has mean 0 and covariance P diag(0.1² λ²) Pᵀ (pixels in [0, 1]; ×255 raw).
    stats = _stats(size=4)
    n = 20000
    transform = PaperTransform(stats, Augment(crop=4, flip=False, mean="none"))
    images = torch.full((n, 3, 4, 4), 100, dtype=torch.uint8)
    shift = (transform.train(images, torch.Generator().manual_seed(0)) - 100) / 255.0
    per_image = shift[:, :, 0, 0]
    # same a for all pixels: the one shift added to 100 and taken off again rounds at ulp(100 + shift) / 255
    assert torch.allclose(
        shift, per_image[:, :, None, None].expand_as(shift), rtol=0, atol=2 * 2**-17 / 255
    )
    p, lam = torch.tensor(stats.eigvec), torch.tensor(stats.eigval)
    expected = p @ torch.diag(0.1**2 * lam**2) @ p.T
    sample = per_image.double()
    assert sample.mean(0).abs().max() < 4 * float(expected.diagonal().max().sqrt()) / n**0.5
    covariance = torch.cov(sample.T)
    assert torch.allclose(covariance, expected, atol=0.05 * float(expected.abs().max()))
    assert not torch.allclose(shift[0], shift[1])  # a differs per image


def test_augment_rejects_impossible_settings():
    with pytest.raises(ValueError, match="256"):
        Augment(crop=300)
    with pytest.raises(ValueError, match="mean mode"):
        Augment(mean="std")
    with pytest.raises(ValueError, match="statistics"):
        PaperTransform(None, Augment())


def test_average_softmax_averages_probabilities_not_logits():
    class Lookup(torch.nn.Module):
        def forward(self, x):
            return x[:, :, 0, 0]

    crops = torch.zeros(2, 1, 2, 1, 1)
    crops[0, 0, :, 0, 0] = torch.tensor([10.0, 0.0])
    crops[1, 0, :, 0, 0] = torch.tensor([0.0, 1.0])
    p0, p1 = torch.softmax(torch.tensor([10.0, 0.0]), 0), torch.softmax(torch.tensor([0.0, 1.0]), 0)
    assert torch.allclose(average_softmax(Lookup(), crops)[0], (p0 + p1) / 2)


def test_every_part_switches_from_the_command_line():
    from paper_alexnet.data import DataError
    from reproduce import train
    from reproduce.training import run_config

    def augment(*flags):
        argv = ["--data", "synthetic", *flags]
        return run_config.augment(train.get_args_parser().parse_args(argv), 227)

    # the paper's
    assert augment() == Augment(crop=227, flip=True, pca=True, pca_sigma=0.1, mean="image")
    off = augment("--no-pca", "--no-flip", "--no-translate", "--crop", "224", "--mean", "channel")
    assert off == Augment(crop=224, flip=False, pca=False, mean="channel", translate=False)
    with pytest.raises(DataError, match="256"):
        augment("--crop", "300")


def test_the_pipeline_is_read_from_the_settled_config_and_the_loader_is_checked_once():
    """run_config.augment takes the config (one type) and reads the pipeline's switches only; --workers is the
    config's own check (it raised out of the augmentation's builder)."""
    from reproduce.common.args import UsageError
    from reproduce.training import run_config

    config = run_config.RunConfig(workers=-1, crop=224, no_flip=True)
    assert run_config.augment(config, 227) == Augment(crop=224, flip=False)
    with pytest.raises(UsageError, match="--workers must be 0 or more, not -1"):
        run_config.settle(config)


def test_no_translate_trains_on_the_centre_crop_and_keeps_the_flip_and_lighting_draws():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    fixed = PaperTransform(
        _stats(size=8), Augment(crop=4, translate=False, flip=False, pca=False, mean="none")
    )
    centre = images[:, :, 2:6, 2:6].float()  # (8 - 4) // 2 = 2 on both axes
    assert torch.equal(fixed.train(images, torch.Generator().manual_seed(0)), centre)
    flips = PaperTransform(_stats(size=8), Augment(crop=4, translate=False, pca=False, mean="none"))
    out = flips.train(images, torch.Generator().manual_seed(1))
    assert all(torch.equal(o, c) or torch.equal(o, c.flip(-1)) for o, c in zip(out, centre))


@pytest.mark.parametrize("mean", ["image", "channel", "torchvision", "none"])
def test_the_loop_and_the_gather_give_the_same_numbers(mean, both_ways):
    gen = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (12, 3, 256, 256), dtype=torch.uint8, generator=gen)
    stats = _stats((torch.rand(3, 256, 256, generator=gen) * 255).numpy())
    augment = Augment(crop=227, mean=mean, scale=1 / 64)
    ways = [PaperTransform(stats, augment, batched=b) for b in (False, True)]
    assert [w.batched for w in ways] == [False, True]
    train = [w.train(images, torch.Generator().manual_seed(9)) for w in ways]
    assert torch.equal(train[0], train[1])
    assert torch.equal(ways[0].ten_crops(images), ways[1].ten_crops(images))
