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

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from .errors import ImagicInputError

logger = logging.getLogger(__name__)

#: Refuse images that declare more pixels than this (a 150-megapixel photo is 450 MB decoded).
#: The check reads the header only, before anything is decoded.
MAX_IMAGE_PIXELS = 150_000_000


def _open(path: str | Path, flag: str, draft_size: int | None = None) -> Image.Image:
    path = Path(path)
    try:
        exists = path.exists()
    except (OSError, ValueError) as e:  # a name too long, or one this file system cannot encode
        raise ImagicInputError(flag, f"{ascii(str(path))} is not a usable file name ({e})") from None
    if not exists:
        raise ImagicInputError(flag, f"{path} does not exist")
    if path.is_dir():
        raise ImagicInputError(flag, f"{path} is a folder, not an image file")
    if not path.is_file():  # a FIFO or a device would block the read or never end
        raise ImagicInputError(flag, f"{path} is not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            image = Image.open(path)
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImagicInputError(
                    flag, f"{path} declares {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} allowed")
            if draft_size and image.format == "JPEG":
                # Decode a large JPEG at the smallest scale (1/2, 1/4, 1/8) still >= draft_size.
                image.draft("RGB", (draft_size, draft_size))
            image.load()  # decodes the whole file: truncated or corrupt data fails here
    except ImagicInputError:
        raise
    except Image.DecompressionBombError:
        raise ImagicInputError(flag, f"{path} declares more than the {MAX_IMAGE_PIXELS:,} pixels allowed") from None
    except UnidentifiedImageError:
        raise ImagicInputError(flag, f"{path} is not a readable image (unknown format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImagicInputError(flag, f"{path} is not a readable image: {e}") from None
    return image


def check_image_file(path: str | Path, flag: str = "--input_image") -> None:
    """Raise ImagicInputError unless ``path`` is an image file that decodes whole."""
    _open(path, flag).close()


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


def load_image(path: str | Path, resolution: int, resize_mode: str = "center_crop",
               flag: str = "--input_image") -> Image.Image:
    """Read an image file and return it as the square RGB ``resolution``² image the model sees."""
    image = _open(path, flag, draft_size=2 * resolution)
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


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (1, 3, H, W) in [-1, 1], the VAE's input range."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def contact_sheet(input_image: Image.Image, images: dict[tuple[float, int], Image.Image],
                  etas: list[float], seeds: list[int], cell: int | None = None,
                  picked: tuple[float, int] | None = None) -> Image.Image:
    """A labelled grid: one row per seed, the input first, then one column per eta; the
    ``picked`` (eta, seed) image, if any, framed and labelled."""
    cell = cell or max(128, input_image.width)
    label_h = 18
    columns = 1 + len(etas)
    sheet = Image.new("RGB", (columns * cell, len(seeds) * (cell + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for row, seed in enumerate(seeds):
        y = row * (cell + label_h)
        tiles = [("input", input_image)] + [(f"eta {eta:.2f}  seed {seed}", images[(eta, seed)]) for eta in etas]
        for col, (label, tile) in enumerate(tiles):
            x = col * cell
            is_picked = col > 0 and (etas[col - 1], seed) == picked
            label = f"PICKED eta {etas[col - 1]:.2f} s{seed}" if is_picked else label
            draw.text((x + 3, y + 3), label, fill="black", font=font)
            sheet.paste(tile.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y + label_h))
            if is_picked:
                draw.rectangle((x, y + label_h, x + cell - 1, y + label_h + cell - 1), outline=(255, 0, 255), width=3)
    return sheet
