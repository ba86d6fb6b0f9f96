"""Reading one image file as the paper's 256x256 RGB patch (§2), or saying clearly why not.

§2: "rescale the image such that the shorter side was of length 256, and then
crop out the central 256x256 patch". Files in the wild are not all clean
RGB JPEGs, so every readable oddity (CMYK, grayscale, 16-bit, RGBA, palette, a
PNG named .JPEG) is turned into plain RGB here, and every unreadable file
raises :class:`BadImageError` with its path and the reason, which the callers
count and skip (or stop on, with ``--strict``).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from .. import paper

RESIZE_MODES = ("shorter", "warp")  # §2's resize and centre crop; Caffe's warp of both sides
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".ppm",
    ".pgm",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
)


class DataError(ValueError):
    """A data set that cannot be used at all (missing root, no images, bad spec): one line for the user,
    stating the fault. ``remedy`` names what would mend it (a key the commands phrase as the command to run)
    and ``facts`` fill that phrase in."""

    def __init__(self, message: str, remedy: str = "", **facts: str):
        super().__init__(message)
        self.remedy, self.facts = remedy, facts


class BadImageError(DataError):
    """One file that cannot be read as an image. ``path`` and ``reason`` are kept apart for reports."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB; transparency is composited onto white, as a viewer shows it."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grayscale: scale to 8 bits
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(
            np.clip(array * (255.0 / top), 0, 255).round().astype(np.uint8), "L"
        )
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def _upright(image: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: its EXIF orientation (phones store portraits sideways) applied."""
    try:
        return ImageOps.exif_transpose(image)
    except (
        SyntaxError,
        ValueError,
        OSError,
        KeyError,
        TypeError,
    ):  # a damaged EXIF block: as stored
        return image


def resize_and_center_crop(image: Image.Image, size: int = paper.IMAGE_SIZE) -> Image.Image:
    """§2: shorter side to ``size`` (antialiased bilinear), then the central ``size`` x ``size`` patch."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def fit(image: Image.Image, size: int = paper.IMAGE_SIZE, resize: str = "shorter") -> Image.Image:
    """``image`` as a ``size`` x ``size`` patch: §2's shorter side and centre crop, or ("warp") both sides
    resized to ``size`` whatever the aspect, as Caffe's ``convert_imageset --resize_height/width`` did."""
    if resize == "warp":
        return image if image.size == (size, size) else image.resize((size, size), Image.BILINEAR)
    return resize_and_center_crop(image, size)


def load_rgb(path: str, size: int | None = paper.IMAGE_SIZE, resize: str = "shorter") -> np.ndarray:
    """The image at ``path`` as a ``size`` x ``size`` x 3 uint8 array (§2, or ``resize="warp"``: see fit);
    ``size=None`` keeps its own size.

    Raises :class:`BadImageError` for an empty, truncated, unrecognised or absurdly large file.
    """
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise BadImageError(path, "empty file (0 bytes)")
    except FileNotFoundError:
        raise BadImageError(path, "file not found") from None
    return _decode(path, path, size, resize)


def decode_rgb(
    data: bytes, name: str, size: int | None = paper.IMAGE_SIZE, resize: str = "shorter"
) -> np.ndarray:
    """:func:`load_rgb` for an image file's bytes (a member of an archive), ``name`` saying which in errors."""
    if not data:
        raise BadImageError(name, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, size, resize)


def _decode(source, name: str, size: int | None, resize: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if size is not None and image.format == "JPEG" and resize == "shorter":
                    image.draft("RGB", (size, size))  # decode a big JPEG at a reduced scale >= size
                image.load()
                image = _to_rgb(_upright(image))
        if size is not None:
            image = fit(image, size, resize)
        return np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise BadImageError(name, "file not found") from None
    except Image.DecompressionBombError as err:
        raise BadImageError(name, f"too large to decode safely ({err})") from None
    except Image.UnidentifiedImageError:
        raise BadImageError(name, "not an image (unrecognised file contents)") from None
    except (OSError, SyntaxError, ValueError) as err:
        reason = str(err) or type(err).__name__
        if "truncated" in reason:
            reason = f"truncated file ({reason})"
        raise BadImageError(name, f"unreadable image: {reason}") from None
