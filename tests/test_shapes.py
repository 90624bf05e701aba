"""The shapes world: the renderer and the analytic judge."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from imagic_lora import shapes


def test_judge_is_exact_on_clean_renders():
    rng = random.Random(0)
    for _ in range(500):
        scene = shapes.random_scene(rng)
        reading = shapes.judge(shapes.render(scene))
        assert reading.attributes() == scene.attributes(), (scene, reading)
        assert shapes.centre_distance(reading, scene.cx, scene.cy) < 1.5


def test_judge_reads_photos_with_gradient_blur_and_noise():
    rng = random.Random(1)
    for i in range(300):
        scene = shapes.random_scene(rng)
        reading = shapes.judge(shapes.render_photo(scene, seed=i))
        assert reading.attributes() == scene.attributes(), (scene, reading)
        assert shapes.centre_distance(reading, scene.cx, scene.cy) < 2.0


def test_judge_reads_blurred_renders():
    """Generated images are softer than renders: a Gaussian blur of 1 px changes no reading."""
    from PIL import ImageFilter
    rng = random.Random(2)
    for _ in range(300):
        scene = shapes.random_scene(rng)
        reading = shapes.judge(shapes.render(scene).filter(ImageFilter.GaussianBlur(1.0)))
        assert reading.attributes() == scene.attributes(), (scene, reading)
        assert shapes.centre_distance(reading, scene.cx, scene.cy) < 2.0


def test_judge_reads_a_rounded_square_as_a_square():
    """A square with rounded corners (a quarter of its side) is still a square, not a circle."""
    from PIL import ImageDraw
    for side in (14, 18, 32):
        image = Image.new("RGB", (256, 256), shapes.BACKGROUNDS["white"])
        ImageDraw.Draw(image).rounded_rectangle((64, 64, 64 + 4 * side, 64 + 4 * side), radius=side,
                                                fill=shapes.COLORS["blue"])
        assert shapes.judge(image.resize((64, 64), Image.Resampling.BOX)).shape == "square", side


@pytest.mark.parametrize("attribute,value", [("shape", "square"), ("color", "blue"), ("size", "large"),
                                             ("background", "black")])
def test_judge_tells_one_changed_attribute(attribute, value):
    scene = shapes.Scene("triangle", "red", "small", "white", 16.0, 20.0, 40.0)
    edited = scene.with_attribute(attribute, value)
    assert shapes.judge(shapes.render(edited)).attributes()[attribute] == value
    # The other three and the place are unchanged.
    for other in shapes.ATTRIBUTES:
        if other != attribute:
            assert getattr(edited, other) == getattr(scene, other)
    assert abs(edited.cx - scene.cx) < 1e-9 or attribute == "size"


def test_renders_are_seeded_and_antialiased():
    scene = shapes.random_scene(random.Random(3), shape="circle")
    a, b = np.asarray(shapes.render(scene)), np.asarray(shapes.render(scene))
    assert np.array_equal(a, b)
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 2  # edge pixels between object and background
    assert np.array_equal(np.asarray(shapes.render_photo(scene, 5)), np.asarray(shapes.render_photo(scene, 5)))
    assert not np.array_equal(np.asarray(shapes.render_photo(scene, 5)), np.asarray(shapes.render_photo(scene, 6)))


def test_sizes_spans_and_whole_object_inside():
    rng = random.Random(4)
    for _ in range(200):
        scene = shapes.random_scene(rng)
        low, high = shapes.SIZES[scene.size]
        assert low <= scene.span <= high
        assert scene.span / 2 <= scene.cx <= 64 - scene.span / 2
        assert scene.span / 2 <= scene.cy <= 64 - scene.span / 2


def test_judge_on_an_empty_image_finds_nothing():
    reading = shapes.judge(Image.new("RGB", (64, 64), (128, 128, 128)))
    assert not reading.found and reading.background == "gray"
    assert not shapes.matches(reading, {"shape": "circle", "color": "red", "size": "small", "background": "gray"})


def test_caption_uses_only_the_vocabulary():
    scene = shapes.random_scene(random.Random(5))
    assert set(scene.caption.split()) <= set(shapes.WORDS)
    assert scene.caption.startswith(f"a {scene.size} {scene.color} {scene.shape}")


# ---- world version 2: triangles point up, down, left or right, and their captions say so ----

def test_version_1_draws_what_it_always_drew_and_version_2_adds_only_the_direction():
    for seed in range(50):
        v1, v2 = shapes.random_scene(random.Random(seed)), shapes.random_scene(random.Random(seed), world=2)
        assert v1.direction is None and "pointing" not in v1.caption
        assert (v1.shape, v1.color, v1.size, v1.background, v1.span, v1.cx, v1.cy) == \
               (v2.shape, v2.color, v2.size, v2.background, v2.span, v2.cx, v2.cy)
        assert (v2.direction is not None) == (v2.shape == "triangle")
    with pytest.raises(ValueError, match="world version 3"):
        shapes.random_scene(random.Random(0), world=3)
    assert shapes.random_scene(random.Random(0), world=2, shape="triangle", direction="left").direction == "left"
    for world, fixed in ((1, {"shape": "triangle"}), (2, {}), (2, {"shape": "circle"})):
        with pytest.raises(ValueError, match="a direction pins a triangle's way in world version 2 only"):
            shapes.random_scene(random.Random(0), world=world, direction="left", **fixed)
    with pytest.raises(ValueError, match=r"cannot pin \['colour'\]"):
        shapes.random_scene(random.Random(0), colour="red")


@pytest.mark.parametrize("direction", shapes.DIRECTIONS)
def test_a_triangle_fills_its_square_and_its_apex_is_the_middle_of_the_side_it_points_to(direction):
    scene = shapes.Scene("triangle", "red", "large", "white", 32.0, 32.0, 32.0, direction)
    mask = np.abs(np.asarray(shapes.render(scene), np.float32) - shapes.BACKGROUNDS["white"]).sum(-1) > 200
    ys, xs = np.nonzero(mask)
    assert xs.max() - xs.min() >= 30 and ys.max() - ys.min() >= 30  # its bounding square
    apex = {"up": (ys == ys.min()), "down": (ys == ys.max()), "left": (xs == xs.min()), "right": (xs == xs.max())}
    along = xs if direction in ("up", "down") else ys
    assert abs(along[apex[direction]].mean() - 31.5) < 1.5 and apex[direction].sum() <= 3  # a point, centred
    assert scene.caption == f"a large red triangle pointing {direction} on a white background"
    assert set(scene.caption.split()) <= set(shapes.words(2)) and "pointing" not in shapes.words(1)


@pytest.mark.parametrize("render", ["clean", "photo", "alt", "blur"])
def test_judge_reads_a_triangles_direction_on_renders_photos_and_blur(render):
    from PIL import ImageFilter
    rng = random.Random(6)
    draw = {"clean": lambda s, i: shapes.render(s), "photo": shapes.render_photo, "alt": shapes.render_photo_alt,
            "blur": lambda s, i: shapes.render(s).filter(ImageFilter.GaussianBlur(1.0))}[render]
    wrong = []
    for i in range(120):
        scene = shapes.random_scene(rng, world=2, shape="triangle")
        reading = shapes.judge(draw(scene, i), world=2)
        if not shapes.matches(reading, scene.attributes()):
            wrong.append((scene, reading.attributes(), reading.direction))
    # The alternative renderer's small JPEG'd triangles are the hardest: 13 of 417 misread when measured.
    assert len(wrong) <= (6 if render == "alt" else 0), wrong


def test_a_direction_is_judged_only_where_the_scene_has_one():
    up = shapes.Scene("triangle", "red", "large", "white", 32.0, 32.0, 32.0, "up")
    left = up.with_attribute("direction", "left")
    reading = shapes.judge(shapes.render(left), world=2)
    assert reading.direction == "left" and not shapes.matches(reading, up.attributes())
    v1 = shapes.Scene("triangle", "red", "large", "white", 32.0, 32.0, 32.0)
    assert shapes.matches(shapes.judge(shapes.render(v1)), v1.attributes())  # version 1: not asked
    # Version 1 has no triangle on its side: its judge reads one as it always did, not as its triangle.
    assert shapes.judge(shapes.render(left)).shape != "triangle"
    with pytest.raises(KeyError):  # every one of the four must be asked for
        shapes.matches(reading, {"shape": "triangle", "colour": "red", "size": "large", "background": "white"})
    with pytest.raises(ValueError, match="not 'sideways'"):
        up.with_attribute("direction", "sideways")
    circle = left.with_attribute("shape", "circle")
    assert circle.direction is None and shapes.judge(shapes.render(circle)).direction is None
    with pytest.raises(ValueError, match="only a triangle points"):
        circle.with_attribute("direction", "up")


def test_the_training_data_of_version_2_shows_what_its_captions_say():
    """The model learns a direction only if the render and the caption agree: judged on the training
    script's own data set, every triangle points where its caption says."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "train_shapes_model", Path(__file__).resolve().parents[1] / "scripts" / "train_shapes_model.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    images, captions = train.render_dataset(160, seed=11, world=2)
    pointing = 0
    for image, caption in zip(images, captions):
        reading = shapes.judge(Image.fromarray(image.permute(1, 2, 0).numpy()), world=2)
        words = caption.split()
        assert caption.startswith(f"a {reading.size} {reading.color} {reading.shape}"), (caption, reading)
        if "pointing" in words:
            pointing += 1
            assert reading.direction == words[words.index("pointing") + 1], (caption, reading.direction)
        assert set(words) <= set(shapes.words(2))
    assert pointing > 30  # about a third are triangles
    # Balanced captions: a triangle in two thirds of version 2's images; version 1's data unchanged by the flag.
    images, balanced = train.render_dataset(600, seed=11, world=2, balance_captions=True)
    for phrase in ("circle", "square", *(f"pointing {d}" for d in shapes.DIRECTIONS)):  # a sixth each
        assert 0.11 < sum(phrase in c for c in balanced) / 600 < 0.23, phrase
    for image, caption in list(zip(images, balanced))[:120]:
        reading = shapes.judge(Image.fromarray(image.permute(1, 2, 0).numpy()), world=2)
        assert caption == shapes.caption(reading.shape, reading.color, reading.size, reading.background,
                                         reading.direction), (caption, reading)
    assert train.render_dataset(50, seed=3, world=1, balance_captions=True)[1] == train.render_dataset(50, seed=3)[1]
    combos = train.world_captions(2)
    assert len(combos) == 144 and sum("direction" in c for c in combos) == 96
    assert len(train.world_captions(1)) == 72
