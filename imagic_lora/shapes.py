"""The shapes world: a renderer whose images we can judge exactly, and the judge.

64x64 RGB images of one object on a plain background, anywhere in the frame (the whole object
inside). Shapes circle, square, triangle; colours red, green, blue, yellow; sizes small (the
object spans 12-20 px) and large (28-40 px); backgrounds white, black, gray.
Caption: "a {size} {color} {shape} on a {background} background". The position is never in
the caption: it is the detail of a real image that text does not describe and that an edit
must keep.

Two versions of the world. In version 1 (the bundled model's) every triangle points up and its
caption does not say so. In version 2 a triangle points up, down, left or right (an isosceles
triangle filling its bounding square, its apex the middle of one side) and its caption names the
way: "a small red triangle pointing left on a white background"; the direction is the world's
edit that must move the outline. A scene's ``direction`` is None where its caption has none.

:func:`judge` reads shape, colour, size, background, a triangle's direction and the bounding-box
centre back from any image, analytically: background from the border, the object as the pixels
far from it, the shape from how its mask fills its bounding box: overall, in its top half (version 1,
whose triangles stand upright) or its emptiest half (version 2), and in the corners; a triangle points
to its emptiest half.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40)}
SIZES = {"small": (12, 20), "large": (28, 40)}
BACKGROUNDS = {"white": (250, 250, 250), "black": (15, 15, 15), "gray": (128, 128, 128)}
DIRECTIONS = ("up", "down", "left", "right")
ATTRIBUTES = ("shape", "color", "size", "background")
#: A version-2 scene's attributes: a triangle's direction too (None for the other shapes).
ATTRIBUTES_V2 = (*ATTRIBUTES, "direction")
WORLDS = (1, 2)
RESOLUTION = 64
#: Every word a caption of world version 1 can use: the bundled model's closed vocabulary.
WORDS = sorted({"a", "on", "background", *SHAPES, *COLORS, *SIZES, *BACKGROUNDS})


def attribute_names(world: int = 1) -> tuple[str, ...]:
    """The attributes a scene of world version ``world`` can name: the four, and in version 2 a triangle's
    direction (in that order: the benchmark's kinds of edit take it)."""
    return ATTRIBUTES if world == 1 else ATTRIBUTES_V2


def words(world: int = 1) -> list[str]:
    """Every word a caption of world version ``world`` can use (a model's closed vocabulary)."""
    return WORDS if world == 1 else sorted({*WORDS, "pointing", *DIRECTIONS})

# Each shape's (box fill, share of its top half (version 1) or emptiest half (version 2), corner fill),
# measured on clean renders' masks; the corners tell a rounded or blurred square from a circle
# (docs/shapes_model.md, "How the judge reads a shape"). An upright triangle's emptiest half is its top.
_PROTOTYPES = {"square": (1.0, 0.5, 1.0), "circle": (0.77, 0.5, 0.29), "triangle": (0.53, 0.265, 0.41)}
# The emptiest half's share moves least under blur (a blurred triangle fills more of its box, but its
# mass stays away from the apex): it counts four times in the squared distance.
_FEATURE_WEIGHTS = (1.0, 4.0, 1.0)
_SIZE_SPLIT = 24


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    size: str
    background: str
    span: float  # side of the object's bounding square, pixels
    cx: float  # centre of the bounding box, pixels (0 = left edge of the image)
    cy: float
    direction: str | None = None  # where a version-2 triangle points; None: version 1 (drawn up) or no triangle

    @property
    def caption(self) -> str:
        return caption(self.shape, self.color, self.size, self.background, self.direction)

    def attributes(self) -> dict[str, str]:
        """Shape, colour, size, background; and the direction when the scene has one (version 2)."""
        names = ATTRIBUTES if self.direction is None else ATTRIBUTES_V2
        return {a: getattr(self, a) for a in names}

    def with_attribute(self, name: str, value: str, rng: random.Random | None = None) -> "Scene":
        """The same scene with one attribute changed (a new span if the size changes, same centre). Only a
        triangle points: a shape change drops the direction, and a version-2 scene that becomes a triangle
        then needs one (``.with_attribute("direction", ...)``)."""
        if name == "direction" and self.shape != "triangle":
            raise ValueError(f"only a triangle points: the scene holds a {self.shape}")
        if name == "direction" and value not in DIRECTIONS:
            raise ValueError(f"a triangle points {', '.join(DIRECTIONS)}, not {value!r}")
        changed = replace(self, **{name: value})
        if name == "shape" and value != "triangle":
            changed = replace(changed, direction=None)
        if name == "size":
            low, high = SIZES[value]
            span = (low + high) / 2 if rng is None else rng.uniform(low, high)
            changed = replace(changed, span=span)
            changed = _clamp_centre(changed)
        return changed

    def to_dict(self) -> dict:
        return asdict(self)


def caption(shape: str, color: str, size: str, background: str, direction: str | None = None) -> str:
    pointing = f" pointing {direction}" if direction else ""
    return f"a {size} {color} {shape}{pointing} on a {background} background"


def _clamp_centre(scene: Scene, resolution: int = RESOLUTION) -> Scene:
    half = scene.span / 2 + 1
    return replace(scene, cx=min(max(scene.cx, half), resolution - half),
                   cy=min(max(scene.cy, half), resolution - half))


def random_scene(rng: random.Random, resolution: int = RESOLUTION, world: int = 1, **fixed) -> Scene:
    """A uniformly random scene of world version ``world``; ``fixed`` pins attributes (e.g.
    ``shape="circle"``). Version 1 draws exactly what it always drew for a seed; version 2 then draws a
    triangle's direction."""
    if world not in WORLDS:
        raise ValueError(f"world version {world} is not one of {WORLDS}")
    unknown = set(fixed) - set(ATTRIBUTES_V2)
    if unknown:
        raise ValueError(f"random_scene cannot pin {sorted(unknown)}")
    if fixed.get("direction") and (world == 1 or fixed.get("shape") != "triangle"):
        raise ValueError(f"a direction pins a triangle's way in world version 2 only: pin shape='triangle' and "
                         f"world=2 with it (got world {world}, shape {fixed.get('shape')!r})")
    shape = fixed.get("shape") or rng.choice(SHAPES)
    color = fixed.get("color") or rng.choice(list(COLORS))
    size = fixed.get("size") or rng.choice(list(SIZES))
    background = fixed.get("background") or rng.choice(list(BACKGROUNDS))
    span = rng.uniform(*SIZES[size])
    half = span / 2 + 1
    cx, cy = rng.uniform(half, resolution - half), rng.uniform(half, resolution - half)
    direction = None
    if world == 2 and shape == "triangle":
        direction = fixed.get("direction") or rng.choice(DIRECTIONS)
    return Scene(shape, color, size, background, span, cx, cy, direction)


def _shape_polygon(scene: Scene, scale: float):
    s, cx, cy = scene.span * scale, scene.cx * scale, scene.cy * scale
    left, top, right, bottom = cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2
    if scene.shape == "triangle":  # the apex is the middle of the side it points to; the base the opposite side
        return {"up": [(cx, top), (right, bottom), (left, bottom)],
                "down": [(cx, bottom), (left, top), (right, top)],
                "left": [(left, cy), (right, top), (right, bottom)],
                "right": [(right, cy), (left, bottom), (left, top)]}[scene.direction or "up"]
    return [left, top, right, bottom]


def render(scene: Scene, resolution: int = RESOLUTION, supersample: int = 4) -> Image.Image:
    """Anti-aliased render: drawn at ``supersample`` times the size, then box-filtered down."""
    big = resolution * supersample
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    shape = _shape_polygon(scene, supersample)
    fill = COLORS[scene.color]
    if scene.shape == "circle":
        draw.ellipse(shape, fill=fill)
    elif scene.shape == "square":
        draw.rectangle(shape, fill=fill)
    else:
        draw.polygon(shape, fill=fill)
    return image.resize((resolution, resolution), Image.Resampling.BOX)


def render_photo(scene: Scene, seed: int, resolution: int = RESOLUTION) -> Image.Image:
    """A "photo" of the scene, made differently from the training renders: a lighting gradient
    across the background, a slight blur and sensor noise."""
    rng = np.random.default_rng(seed)
    image = np.asarray(render(scene, resolution), dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:resolution, 0:resolution] / (resolution - 1) - 0.5
    gradient = (np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(20, 36)
    image = image + gradient[..., None]
    image = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 5.0, (resolution, resolution, 3))
    return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))


def render_photo_alt(scene: Scene, seed: int, resolution: int = RESOLUTION) -> Image.Image:
    """A second, independent "photo" of the scene, for checking on other images what was tuned on
    :func:`render_photo`'s: drawn at twice the size without anti-aliasing and halved with a bicubic
    filter, colours jittered, a vignette instead of a gradient, a box blur, JPEG compression."""
    import io
    rng = np.random.default_rng(seed + 7919)
    jitter = lambda rgb: tuple(int(np.clip(c + rng.normal(0, 12), 0, 255)) for c in rgb)  # noqa: E731
    big = resolution * 2
    image = Image.new("RGB", (big, big), jitter(BACKGROUNDS[scene.background]))
    draw = ImageDraw.Draw(image)
    shape, fill = _shape_polygon(scene, 2), jitter(COLORS[scene.color])
    {"circle": draw.ellipse, "square": draw.rectangle, "triangle": draw.polygon}[scene.shape](shape, fill=fill)
    image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    yy, xx = np.mgrid[0:resolution, 0:resolution] / (resolution - 1) - 0.5
    vignette = 1.0 - rng.uniform(0.15, 0.3) * (xx ** 2 + yy ** 2) * 2
    pixels = np.asarray(image, dtype=np.float32) * vignette[..., None] + rng.uniform(-10, 10)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(0.7))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(70, 90)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


# ---------------------------------------------------------------------------------------------
# The judge


@dataclass(frozen=True)
class Reading:
    """What the judge reads from an image; ``found`` is False when no object stands out."""

    shape: str | None
    color: str | None
    size: str | None
    background: str
    cx: float
    cy: float
    span: float
    fill: float
    top_share: float = 0.5  # the share of the object's mask in its top half
    corners: float = 0.0
    found: bool = True
    direction: str | None = None  # where a triangle points (the side of its emptiest half); None for other shapes

    def attributes(self) -> dict[str, str | None]:
        return {a: getattr(self, a) for a in ATTRIBUTES}


def _nearest(value: np.ndarray, table: dict[str, tuple[int, int, int]]) -> str:
    return min(table, key=lambda name: float(np.sum((value - np.asarray(table[name], np.float32)) ** 2)))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (a flood fill; images are small)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, current = 0, 0, 0
    height, width = mask.shape
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x]:
            continue
        current += 1
        stack, size = [(y, x)], 0
        labels[y, x] = current
        while stack:
            cy, cx = stack.pop()
            size += 1
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.zeros_like(mask)


def judge(image: Image.Image, world: int = 1) -> Reading:
    """Read the scene back from an RGB image of any size (it is resized to 64x64), as a scene of world
    version ``world``: in version 1 the shape is read from the top half's share, exactly as before
    version 2 existed (a triangle on its side is not one of version 1's); in version 2 from the emptiest
    half's, whichever way the triangle points."""
    if image.size != (RESOLUTION, RESOLUTION):
        image = image.resize((RESOLUTION, RESOLUTION), Image.Resampling.BILINEAR)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    # Background: the border's median colour, and a per-pixel background plane fitted to the
    # border (so a lighting gradient is not mistaken for the object).
    background_rgb = np.median(border, axis=0)
    background = _nearest(background_rgb, BACKGROUNDS)
    plane = _fit_border_plane(pixels)
    distance = np.linalg.norm(pixels - plane, axis=-1)
    if distance.max() < 40:
        return Reading(None, None, None, background, RESOLUTION / 2, RESOLUTION / 2, 0.0, 0.0, found=False)
    core = _largest_component(distance > 0.5 * distance.max())
    object_rgb = np.median(pixels[core & (distance >= 0.75 * distance[core].max())], axis=0)
    color = _nearest(object_rgb, COLORS)
    # Coverage: how far each pixel is from the background towards the object's colour; the
    # object is where coverage reaches one half (blur moves no edge across that level).
    direction = object_rgb - background_rgb
    alpha = np.clip(((pixels - plane) @ direction) / float(direction @ direction), 0.0, 1.0)
    mask = _largest_component(alpha >= 0.5)
    if not mask.any():
        mask = core
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    box = mask[top:bottom + 1, left:right + 1]
    height, width = box.shape
    fill = float(box.mean())
    halves = {side: _half_share(box if side in ("up", "down") else box.T, side in ("up", "left"))
              for side in DIRECTIONS}
    apex = min(halves, key=halves.get)
    top_share = halves["up"]
    # Corners by soft coverage: a blurred corner pixel drops below one half but not to zero.
    soft = alpha[top:bottom + 1, left:right + 1]
    ch, cw = max(1, round(height / 4)), max(1, round(width / 4))
    corners = float(np.mean([soft[:ch, :cw].mean(), soft[:ch, -cw:].mean(), soft[-ch:, :cw].mean(),
                             soft[-ch:, -cw:].mean()]))
    features = (fill, top_share if world == 1 else halves[apex], corners)
    shape = min(_PROTOTYPES, key=lambda name: sum(w * (a - b) ** 2 for w, a, b in
                                                  zip(_FEATURE_WEIGHTS, _PROTOTYPES[name], features)))
    span = float(max(width, height))
    size = "small" if span < _SIZE_SPLIT else "large"
    return Reading(shape, color, size, background, (left + right + 1) / 2, (top + bottom + 1) / 2, span, fill,
                   top_share, corners, direction=apex if shape == "triangle" else None)


def _half_share(box: np.ndarray, first: bool) -> float:
    """The share of a mask's pixels in its first (top) or last (bottom) half of rows; a middle row counts half."""
    height = box.shape[0]
    middle = 0.5 * box[height // 2].sum() if height % 2 else 0.0
    part = box[: height // 2] if first else box[height - height // 2:]
    return float((part.sum() + middle) / max(box.sum(), 1))


def _fit_border_plane(pixels: np.ndarray) -> np.ndarray:
    """Per-channel least-squares plane a + b·x + c·y through the border pixels, evaluated everywhere."""
    size = pixels.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    on_border = np.zeros((size, size), dtype=bool)
    on_border[[0, -1], :] = True
    on_border[:, [0, -1]] = True
    design = np.stack([np.ones(on_border.sum()), xx[on_border], yy[on_border]], axis=1)
    values = pixels[on_border]
    keep = np.ones(len(values), dtype=bool)
    for _ in range(2):  # refit without border pixels that belong to something else (an object)
        coefficients, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        residual = np.linalg.norm(values - design @ coefficients, axis=1)
        keep = residual < max(30.0, float(np.percentile(residual, 50)) * 3)
    full = np.stack([np.ones(size * size), xx.ravel(), yy.ravel()], axis=1)
    return (full @ coefficients).reshape(size, size, 3).astype(np.float32)


def matches(reading: Reading, attributes: dict[str, str]) -> bool:
    """All four attributes equal the wanted ones, and a version-2 triangle's direction too when
    ``attributes`` names one (a version-2 scene's :meth:`Scene.attributes`)."""
    direction = attributes.get("direction")
    return (reading.found and all(getattr(reading, a) == attributes[a] for a in ATTRIBUTES)
            and (direction is None or reading.direction == direction))


def centre_distance(reading: Reading, cx: float, cy: float) -> float:
    return math.hypot(reading.cx - cx, reading.cy - cy) if reading.found else float("inf")
