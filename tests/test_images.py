"""§2: one file -> the central 256x256 RGB patch of the image rescaled to a shorter side of 256;
odd but readable files come out as correct RGB, unreadable ones as BadImageError with path and reason."""

import os

import numpy as np
import pytest
from PIL import Image

from paper_alexnet.data import BadImageError, load_rgb
from data_fixtures import write_bad_files


def _save(image, path, fmt=None):
    image.save(path, fmt)
    return str(path)


def test_shorter_side_to_256_then_central_patch(tmp_path):
    # A 512x1024 (h x w) image whose left, middle and right quarters differ: after rescaling the
    # shorter side to 256 it is 256x512, and the central 256 columns are the middle half.
    array = np.zeros((512, 1024, 3), np.uint8)
    array[:, :256] = (255, 0, 0)
    array[:, 256:768] = (0, 255, 0)
    array[:, 768:] = (0, 0, 255)
    out = load_rgb(_save(Image.fromarray(array), tmp_path / "wide.png"))
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert (out[:, 2:-2] == (0, 255, 0)).all()  # only the green middle survives the centre crop
    tall = load_rgb(_save(Image.fromarray(array.transpose(1, 0, 2).copy()), tmp_path / "tall.png"))
    assert (tall[2:-2, :] == (0, 255, 0)).all()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "I;16"])
def test_readable_modes_become_rgb(tmp_path, mode):
    colour = (200, 40, 90)
    rgb = Image.new("RGB", (300, 260), colour)
    if mode == "L":
        image, expected, fmt = rgb.convert("L"), (rgb.convert("L").getpixel((0, 0)),) * 3, "png"
    elif mode == "RGBA":
        image, expected, fmt = rgb.convert("RGBA"), colour, "png"
    elif mode == "P":
        image, expected, fmt = rgb.convert("P", palette=Image.ADAPTIVE), colour, "png"
    elif mode == "CMYK":
        image, expected, fmt = rgb.convert("CMYK"), colour, "jpeg"
    elif mode == "LA":
        image, expected, fmt = rgb.convert("LA"), (rgb.convert("L").getpixel((0, 0)),) * 3, "png"
    else:
        image = Image.fromarray(np.full((260, 300), 40000, np.uint16))
        expected, fmt = (round(40000 / 65535 * 255),) * 3, "png"
    assert image.mode == mode or (mode == "I;16" and image.mode.startswith("I"))
    out = load_rgb(_save(image, tmp_path / f"x.{fmt}", fmt))
    assert out.shape == (256, 256, 3)
    assert np.abs(out.astype(int) - np.array(expected)).max() <= (6 if fmt == "jpeg" else 1)


def test_transparency_is_composited_on_white(tmp_path):
    image = Image.new("RGBA", (256, 256), (255, 0, 0, 255))
    image.paste((0, 0, 255, 0), (0, 0, 128, 256))  # left half fully transparent blue
    out = load_rgb(_save(image, tmp_path / "rgba.png"))
    assert (out[:, :120] == 255).all() and (out[:, 136:] == (255, 0, 0)).all()
    palette = Image.new("P", (256, 256), 0)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.paste(1, (128, 0, 256, 256))
    palette.info["transparency"] = 0
    out = load_rgb(_save(palette, tmp_path / "pal.png"))
    assert (out[:, :120] == 255).all() and (out[:, 136:] == (10, 200, 30)).all()


def test_png_named_jpeg_and_tiny_and_huge(tmp_path):
    png = tmp_path / "photo.JPEG"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(png, "PNG")
    assert (load_rgb(str(png)) == (1, 2, 3)).all()
    tiny = _save(Image.new("RGB", (1, 1), (9, 99, 199)), tmp_path / "tiny.png")
    assert (load_rgb(tiny) == (9, 99, 199)).all()
    huge = _save(Image.new("RGB", (6000, 4000), (30, 60, 90)), tmp_path / "huge.jpg")
    out = load_rgb(huge)
    assert out.shape == (256, 256, 3) and np.abs(out.astype(int) - (30, 60, 90)).max() <= 3


def test_decompression_bomb_is_a_bad_file(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (300, 300), (5, 5, 5)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 // 4)
    with pytest.raises(BadImageError, match="too large"):
        load_rgb(path)


@pytest.mark.parametrize(
    "kind,reason", [("truncated", "truncated"), ("empty", "empty file"), ("text", "not an image")]
)
def test_unreadable_files_name_path_and_reason(tmp_path, kind, reason):
    path = write_bad_files(str(tmp_path))[kind]
    with pytest.raises(BadImageError) as info:
        load_rgb(path)
    assert info.value.path == path and reason in info.value.reason
    assert path in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(BadImageError, match="not found"):
        load_rgb(os.path.join(tmp_path, "nope.jpg"))
