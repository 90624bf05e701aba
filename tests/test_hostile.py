"""Hostile and awkward input, each with what the user sees."""

from __future__ import annotations

import io
import json
import logging
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from imagic_lora.errors import ImageFileError
from imagic_lora.images import check_image_file, load_image


def rgb_disc(size=(40, 40), color=(200, 30, 30)):
    image = Image.new("RGB", size, "white")
    from PIL import ImageDraw
    ImageDraw.Draw(image).ellipse((5, 5, size[0] - 5, size[1] - 5), fill=color)
    return image


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "I;16", "L", "1", "I"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    base = rgb_disc((64, 64))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        assert image.mode == "I;16"
    elif mode == "RGBA":
        image = base.convert("RGBA")
        image.putalpha(Image.new("L", base.size, 0))  # fully transparent: composited on white
    else:
        image = base.convert(mode)
    path = tmp_path / f"in.{'tiff' if mode in ('CMYK', 'I') else 'png'}"
    image.save(path)
    out = load_image(path, 32)
    assert out.mode == "RGB" and out.size == (32, 32)
    pixels = np.asarray(out)
    if mode == "RGBA":
        assert pixels.min() >= 250  # transparent pixels are white, not black
    elif mode in ("I;16", "L", "I"):
        assert pixels.max() > 200 and pixels.min() < 120  # 16-bit is scaled, not clipped to white


def test_exif_orientation_is_respected(tmp_path):
    # A 60x30 picture, left half red, stored with EXIF orientation 6 (rotate 90 degrees clockwise to view).
    image = Image.new("RGB", (60, 30), "blue")
    image.paste((255, 0, 0), (0, 0, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    viewed = load_image(path, 30, resize_mode="stretch")
    top, bottom = np.asarray(viewed)[2, 15], np.asarray(viewed)[-3, 15]
    assert top[0] > 200 and top[2] < 80  # red on top once rotated upright
    assert bottom[2] > 200 and bottom[0] < 80


def test_non_square_policy_center_crop_or_stretch(tmp_path):
    image = Image.new("RGB", (90, 30), "white")
    image.paste((0, 0, 255), (0, 0, 30, 30))  # blue left third
    path = tmp_path / "wide.png"
    image.save(path)
    cropped = np.asarray(load_image(path, 30, "center_crop"))
    stretched = np.asarray(load_image(path, 30, "stretch"))
    assert cropped[15, 2].tolist() == [255, 255, 255]  # the middle third only: no blue
    assert stretched[15, 2][2] > 200 and stretched[15, 2][0] < 50  # the whole width squeezed in


def test_tiny_images_are_upscaled_with_a_warning(tmp_path, caplog):
    path = tmp_path / "tiny.png"
    rgb_disc((12, 12)).save(path)
    with caplog.at_level(logging.WARNING):
        assert load_image(path, 64).size == (64, 64)
    assert "upscaled" in caplog.text


def test_huge_jpeg_is_decoded_at_reduced_scale(tmp_path):
    path = tmp_path / "huge.jpg"
    rgb_disc((6000, 4000)).save(path, quality=80)
    image = load_image(path, 64)
    assert image.size == (64, 64)
    assert np.asarray(image)[32, 32][0] > 150  # the disc's red, at the centre


def png_declaring(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(
        b"IEND", b"")


@pytest.mark.parametrize("case,expected", [
    ("bomb", "pixels allowed"), ("truncated-jpeg", "not a readable image"), ("truncated-png", "not a readable image"),
    ("text", "not a readable image"), ("missing", "does not exist"), ("folder", "is a folder"),
])
def test_unreadable_files_are_refused_in_one_line(tmp_path, case, expected):
    path = tmp_path / "input.img"
    if case == "bomb":
        path.write_bytes(png_declaring(100_000, 100_000))
    elif case.startswith("truncated"):
        buffer = io.BytesIO()
        rgb_disc((200, 200)).save(buffer, format="JPEG" if "jpeg" in case else "PNG")
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif case == "text":
        path.write_text("just words")
    elif case == "folder":
        path.mkdir()
    with pytest.raises(ImageFileError) as info:
        check_image_file(path)
    message = str(info.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_long_prompt_warns_where_it_is_cut(tiny_sd, input_png, tmp_path, caplog, monkeypatch):
    import imagic_lora.cli as cli
    import imagic_lora.recipe as recipe
    monkeypatch.setattr(recipe, "load_pipeline", lambda *a, **k: (_ for _ in ()).throw(SystemExit(7)))
    words = " ".join(["a large red circle on a white background"] * 12)  # 96 words > 77 tokens
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit):
        cli.main(["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png),
                  "--target_prompt", words, "--output_dir", str(tmp_path / "o")])
    assert "--target_prompt is 98 tokens; the text encoder reads 77, so it is cut after" in caplog.text


def test_output_dir_inside_a_file_is_refused(tiny_sd, input_png, tmp_path, capsys):
    import imagic_lora.cli as cli
    (tmp_path / "a-file").write_text("x")
    code = cli.main(["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png),
                               "--target_prompt", "a red circle", "--output_dir", str(tmp_path / "a-file" / "out")])
    assert code == 2 and "--output_dir" in capsys.readouterr().err


def test_nan_loss_stops_with_advice_and_keeps_the_checkpoint(tiny_sd, input_png, tmp_path, capsys, monkeypatch):
    import imagic_lora.diffusion as diffusion
    import imagic_lora.cli as cli
    real = diffusion.denoising_loss

    def overflowing(unet, *args, **kwargs):  # fp16 overflow in step B: the loss turns to NaN
        loss = real(unet, *args, **kwargs)
        return loss * float("nan") if unet.training else loss
    monkeypatch.setattr(diffusion, "denoising_loss", overflowing)
    code = cli.main(["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png),
                               "--target_prompt", "a red circle", "--output_dir", str(tmp_path / "out"),
                               "--emb_train_steps", "2", "--max_train_steps", "5"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 1 and len(err) == 1, err
    assert "nan" in err[0] and "--mixed_precision bf16" in err[0]
    assert not (tmp_path / "out").exists()
    assert (tmp_path / ".out.partial" / "checkpoints" / "phase-A" / "state.json").is_file()


def test_out_of_memory_names_the_levers_and_the_batch_goes_on(tiny_sd, input_png, tmp_path, monkeypatch):
    import imagic_lora.cli as cli
    from test_batch import FAST, make_manifest, read_summary
    import imagic_lora.recipe as recipe
    real = recipe.finetune
    calls = []

    def oom_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)
    monkeypatch.setattr(recipe, "finetune", oom_once)
    manifest = make_manifest(tmp_path, input_png, bad=False, ids=("first", "second"))
    code = cli.main(["--pretrained_model_name_or_path", str(tiny_sd), "--manifest", str(manifest),
                        "--output_dir", str(tmp_path / "runs"), *FAST])
    summary = read_summary(tmp_path / "runs")
    assert code == 1 and summary["first"]["status"] == "failed" and summary["second"]["status"] == "ok"
    for lever in ("--gradient_checkpointing", "--use_8bit_adam", "--rank", "--resolution"):
        assert lever in summary["first"]["error"]


def test_artifacts_load_without_unpickling(tmp_path, tiny_sd, input_png, monkeypatch):
    from diffusers import StableDiffusionPipeline
    from imagic_lora.artifact import load_edit
    from test_cli import run_inprocess
    assert run_inprocess(tiny_sd, input_png, tmp_path / "edit", "--num_seeds", "1", "--etas", "0.5") == 0
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    edit = load_edit(pipe, tmp_path / "edit")
    assert edit.e_opt.prompt_embeds.shape == (1, 77, 32)
    config = json.loads((tmp_path / "edit" / "imagic_config.json").read_text())
    assert config["target_prompt"] == "a large blue square on a gray background"
