"""Reading the input image and writing images: the input policy, tensors, the contact sheet.

Input policy: the EXIF orientation is applied; any mode (RGBA, LA, P, CMYK, 16-bit, grayscale)
becomes RGB, transparent pixels composited on white; a non-square image is center-cropped
(``center_crop``, keeps the aspect) or stretched (``stretch``) to a square, then resized to the
model's resolution with Lanczos. Images smaller than the resolution are upscaled with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from .errors import ImageFileError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Refuse images that declare more pixels than this (a 150-megapixel photo is 450 MB decoded).
#: The check reads the header only, before anything is decoded.
MAX_IMAGE_PIXELS = 150_000_000


def _open(path: str | Path, draft_size: int | None = None) -> Image.Image:
    path = Path(path)
    try:
        exists = path.exists()
    except (OSError, ValueError) as e:  # a name too long, or one this file system cannot encode
        raise ImageFileError(ascii(str(path)), f"is not a usable file name ({e})") from None
    if not exists:
        raise ImageFileError(path, "does not exist")
    if path.is_dir():
        raise ImageFileError(path, "is a folder, not an image file")
    if not path.is_file():  # a FIFO or a device would block the read or never end
        raise ImageFileError(path, "is not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            image = Image.open(path)
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageFileError(path, f"declares {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                                           "allowed")
            if draft_size and image.format == "JPEG":
                # Decode a large JPEG at the smallest scale (1/2, 1/4, 1/8) still >= draft_size.
                image.draft("RGB", (draft_size, draft_size))
            image.load()  # decodes the whole file: truncated or corrupt data fails here
    except ImageFileError:
        raise
    except Image.DecompressionBombError:
        raise ImageFileError(path, f"declares more than the {MAX_IMAGE_PIXELS:,} pixels allowed") from None
    except UnidentifiedImageError:
        raise ImageFileError(path, "is not a readable image (unknown format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageFileError(path, f"is not a readable image: {e}") from None
    return image


def check_image_file(path: str | Path) -> None:
    """Raise ImageFileError unless ``path`` is an image file that decodes whole."""
    _open(path).close()


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: PIL's convert("L") clips instead of scaling; scale by the max value.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def load_image(path: str | Path, resolution: int, resize_mode: str = "center_crop") -> Image.Image:
    """Read an image file and return it as the square RGB ``resolution``² image the model sees
    (ImageFileError when it cannot)."""
    image = _open(path, draft_size=2 * resolution)
    image = ImageOps.exif_transpose(image)
    image = to_rgb(image)
    return square_resize(image, resolution, resize_mode)


def square_resize(image: Image.Image, resolution: int, resize_mode: str = "center_crop") -> Image.Image:
    width, height = image.size
    if min(width, height) < resolution:
        logger.warning("the input image is %dx%d, smaller than the model's %d px: it is upscaled",
                       width, height, resolution)
    if resize_mode == "center_crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    elif resize_mode != "stretch":
        raise ValueError(f"unknown resize_mode {resize_mode!r}")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return image


def save_image(image: Image.Image, path: str | Path) -> None:
    """Write a PNG whole or not at all: to a hidden temporary name beside it, then renamed, so a kill
    mid-write never leaves a torn image under the real name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def is_readable_image(path: str | Path) -> bool:
    """The file exists and decodes whole."""
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes: what "the same input image" means for a resume or a rerun."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pil_to_tensor(image: Image.Image) -> "torch.Tensor":
    """RGB PIL image -> float tensor (1, 3, H, W) in [-1, 1], the VAE's input range."""
    import torch
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def contact_sheet(input_image: Image.Image, images: dict[tuple[float, int, float], Image.Image],
                  etas: list[float], seeds: list[int], strengths: list[float] = (1.0,), cell: int | None = None,
                  picked: tuple[float, int, float] | None = None) -> Image.Image:
    """A labelled grid of ``images`` keyed (eta, seed, strength): the input once (top left), then one column per
    strength and eta and one row per seed; the ``picked`` (eta, seed, strength) image, if any, framed in magenta
    and labelled "picked". Labels name the strength when there are several."""
    cell = cell or max(128, input_image.width)
    label_h = 18
    columns = [(strength, eta) for strength in strengths for eta in etas]
    sheet = Image.new("RGB", ((1 + len(columns)) * cell, len(seeds) * (cell + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()

    def tile(col: int, row: int, label: str, image: Image.Image, frame: bool = False) -> None:
        x, y = col * cell, row * (cell + label_h)
        draw.text((x + 3, y + 3), label, fill=(200, 0, 200) if frame else "black", font=font)
        sheet.paste(image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y + label_h))
        if frame:
            draw.rectangle((x, y + label_h, x + cell - 1, y + label_h + cell - 1), outline=(255, 0, 255), width=3)

    tile(0, 0, "input", input_image)
    for row, seed in enumerate(seeds):
        for col, (strength, eta) in enumerate(columns, start=1):
            key = (eta, seed, strength)
            if key not in images:  # not drawn (eta 0 beyond the reconstruction seeds): left blank
                continue
            chosen = key == picked
            label = f"eta {eta:.2f}  seed {seed}" + (f"  s{strength:g}" if len(strengths) > 1 else "")
            tile(col, row, label + ("  picked" if chosen else ""), images[key], frame=chosen)
    return sheet
