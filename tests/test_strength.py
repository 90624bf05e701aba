"""Step C from the noised input (--strength below 1, diffusers' img2img): refused outside (0, 1], counted as
the denoising steps it runs, and reproduced from the artifact by the model card's img2img code and by the
library, as the pure-noise edit is by the text-to-image pipeline. Several strengths: each eta and seed drawn
at each, the pick among all, the artifact recommending the picked strength."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import crash_after
import imagic_lora.cli as cli

PROMPT = "a large blue square on a gray background"
FAST = ["--emb_train_steps", "6", "--max_train_steps", "6", "--train_batch_size", "2", "--etas", "0", "0.8", "1.2",
        "--num_seeds", "2", "--num_inference_steps", "10", "--guidance_scale", "3", "--seed", "5"]


@pytest.fixture(scope="module")
def img2img_edit(tiny_sd, input_png, tmp_path_factory):
    out = tmp_path_factory.mktemp("strength") / "edit"
    assert cli.main(["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png),
                     "--target_prompt", PROMPT, "--output_dir", str(out), "--strength", "0.6", *FAST]) == 0
    return out


@pytest.mark.parametrize("values,says", [(["0"], "(0, 1]"), (["1.5"], "(0, 1]"), (["nan"], "(0, 1]"),
                                         (["1.0", "0"], "(0, 1]"), (["0.6", "0.601"], "same strength to 2 decimals")])
def test_a_bad_strength_is_refused_naming_the_flag(tiny_sd, input_png, tmp_path, capsys, values, says):
    code = cli.main(["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png),
                     "--target_prompt", PROMPT, "--output_dir", str(tmp_path / "e"), "--strength", *values])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert "--strength" in error and says in error and len(error.splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_the_run_counts_the_steps_an_img2img_start_runs(img2img_edit):
    config = json.loads((img2img_edit / "imagic_config.json").read_text())
    assert config["strength"] == [0.6] and config["recommended"]["strength"] == 0.6
    # 5 images (2 seeds x 2 etas > 0, eta 0 for one seed), 6 of the 10 steps each, guided (x2); the plan
    # counted the same.
    work, estimated = config["work"]["C"], config["plan"]["estimated_work"]["C"]
    assert work["unet_samples"] == 5 * 6 * 2
    assert work["unet_forwards"] == pytest.approx(estimated["unet_forwards"], rel=0.02)


def test_the_plan_counts_an_img2img_start_on_sd15(tmp_path):
    """SD 1.5's configs at 512 px: strength 0.6 runs 0.6 of step C's UNet work, plus one VAE encode per image."""
    from imagic_lora.architectures import write_configs
    from imagic_lora.config import ImagicConfig
    from imagic_lora.plan import Target, make_plan
    sd15 = str(write_configs("sd15", tmp_path / "sd15"))
    plans = {s: make_plan(ImagicConfig(pretrained_model_name_or_path=sd15, strength=[s], num_inference_steps=25)
                          .resolved(), Target("cpu", "cpu"))[1] for s in (1.0, 0.6)}
    full, start = plans[1.0].work["C"], plans[0.6].work["C"]
    assert start["unet_forwards"] == pytest.approx(0.6 * full["unet_forwards"])
    images = full["unet_forwards"] / 25 / 2
    encode = plans[1.0].vae_flops[1] / 1e12
    assert start["tflop"] == pytest.approx(0.6 * (full["tflop"] - images * plans[1.0].vae_flops[0] / 1e12)
                                           + images * (plans[1.0].vae_flops[0] / 1e12 + encode))


def test_the_model_card_and_the_library_redraw_the_img2img_pick(img2img_edit, tiny_sd, tmp_path):
    """The card's snippet, run as a user copies it, and load_edit + generate_image at the artifact's strength
    both give edit.png back (within rounding: step C drew several images per call)."""
    card = (img2img_edit / "README.md").read_text()
    assert "StableDiffusionImg2ImgPipeline" in card and "strength=0.6" in card
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    snippet = snippet.replace('"edit.png"', f'"{tmp_path / "card.png"}"')
    run = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300,
                         cwd=img2img_edit.parent)  # the card names the artifact from the folder above it
    assert run.returncode == 0, run.stderr[-2000:]
    picked = np.asarray(Image.open(img2img_edit / "images" / "edit.png").convert("RGB"), dtype=np.int16)
    assert np.abs(np.asarray(Image.open(tmp_path / "card.png"), dtype=np.int16) - picked).max() <= 1

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from imagic_lora import generate_image, load_edit
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None, dtype=torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    edit = load_edit(pipe, img2img_edit)
    pipe.fuse_lora()
    assert edit.strength == 0.6
    start = Image.open(img2img_edit / "images" / "input.png").convert("RGB")
    image = generate_image(pipe, edit.embeds(edit.recommended_eta), seed=edit.recommended_seed,
                           guidance_scale=edit.config["guidance_scale"],
                           num_inference_steps=edit.config["num_inference_steps"], image=start,
                           strength=edit.strength)
    assert np.abs(np.asarray(image, dtype=np.int16) - picked).max() <= 1
    # The start matters: from pure noise, the same seed and embedding draw another image.
    noise = generate_image(pipe, edit.embeds(edit.recommended_eta), seed=edit.recommended_seed,
                           guidance_scale=edit.config["guidance_scale"],
                           num_inference_steps=edit.config["num_inference_steps"])
    assert np.abs(np.asarray(noise, dtype=np.int16) - picked).max() > 10


def test_the_img2img_pipeline_shares_the_modules_and_keeps_their_dtype(tmp_path):
    """No copy and no cast (diffusers' AutoPipelineForImage2Image.from_pipe casts every module to fp32)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from imagic_lora.generate import img2img_pipeline
    from imagic_lora.models import load_pipeline
    from imagic_lora.tiny import make_tiny_sdxl
    pipe = load_pipeline(str(make_tiny_sdxl(tmp_path / "xl")), weight_dtype=torch.bfloat16)
    i2i = img2img_pipeline(pipe)
    assert isinstance(i2i, StableDiffusionXLImg2ImgPipeline)
    assert i2i.unet is pipe.unet and i2i.vae is pipe.vae and i2i.text_encoder_2 is pipe.text_encoder_2
    assert pipe.unet.dtype == torch.bfloat16


def test_a_resume_at_another_strength_draws_every_image_again(tiny_sd, input_png, tmp_path, monkeypatch):
    """Images drawn from pure noise before an interruption are not kept by a resume at strength 0.6."""
    import imagic_lora.recipe as recipe
    argv = ["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png), "--target_prompt",
            PROMPT, "--output_dir", str(tmp_path / "edit"), *FAST, "--checkpointing_steps", "3",
            "--sample_batch_size", "1"]
    real, calls = recipe.generate_images, []
    monkeypatch.setattr(recipe, "generate_images", crash_after(real, 2, calls, lambda a, k: k["strength"]))
    with pytest.raises(RuntimeError):
        cli.main(argv)
    assert len(list((tmp_path / ".edit.partial" / "images").glob("eta_*.png"))) == 2
    calls.clear()
    monkeypatch.setattr(recipe, "generate_images", lambda *a, **k: calls.append(k["strength"]) or real(*a, **k))
    assert cli.main(argv + ["--resume", "--strength", "0.6"]) == 0
    assert calls == [0.6] * 5  # all 5 images, none kept from pure noise
    assert json.loads((tmp_path / "edit" / "imagic_config.json").read_text())["strength"] == [0.6]


@pytest.fixture(scope="module")
def sweep_edit(tiny_sd, input_png, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "edit"
    assert cli.main(["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png),
                     "--target_prompt", PROMPT, "--output_dir", str(out), "--strength", "1.0", "0.6", *FAST,
                     "--sample_batch_size", "1"]) == 0
    return out


def test_a_sweep_of_strengths_draws_every_eta_and_seed_at_each_and_picks_among_all(sweep_edit):
    from imagic_lora.generate import image_name
    config = json.loads((sweep_edit / "imagic_config.json").read_text())
    assert config["strength"] == [1.0, 0.6]
    # Eta 0 at the first strength only (one reconstruction seed); eta 0.8 and 1.2 x seeds 5, 6 at both.
    drawn = [(0.0, 5, 1.0)] + [(e, s, st) for st in (1.0, 0.6) for e in (0.8, 1.2) for s in (5, 6)]
    assert sorted(p.name for p in (sweep_edit / "images").glob("eta_*.png")) == sorted(image_name(*d) for d in drawn)
    assert image_name(0.8, 5, 0.6) == "eta_0.80_seed_5_strength_0.60.png"
    assert image_name(0.8, 5) == "eta_0.80_seed_5.png"
    picked = config["picked"]
    assert [(c["eta"], c["seed"], c["strength"]) for c in picked["candidates"]] == drawn[1:]
    assert config["recommended"] == {k: picked[k] for k in ("eta", "seed", "strength")}
    assert (sweep_edit / "images" / "edit.png").read_bytes() == \
        (sweep_edit / "images" / image_name(picked["eta"], picked["seed"], picked["strength"])).read_bytes()
    # The work: 5 images of 10 steps and 4 of 6, guided (x2), as the plan counted; one encode per noised start.
    work, estimated = config["work"]["C"], config["plan"]["estimated_work"]["C"]
    assert work["unet_samples"] == (5 * 10 + 4 * 6) * 2
    assert work["unet_forwards"] == pytest.approx(estimated["unet_forwards"], rel=0.02)
    # The grid: the input, then a column per strength and eta (3 etas x 2 strengths), a row per seed.
    grid = Image.open(sweep_edit / "images" / "grid.png")
    assert grid.size == ((1 + 6) * 128, 2 * (128 + 18))
    # The card draws the recommendation the way it was drawn: img2img only for a pick from the noised input.
    card = (sweep_edit / "README.md").read_text()
    assert ("StableDiffusionImg2ImgPipeline" in card) == (picked["strength"] < 1)


def test_the_library_redraws_a_sweeps_images_at_their_strengths(sweep_edit, tiny_sd):
    """load_edit + generate_image at the artifact's recommendation gives edit.png back, and an image of each
    strength its file (bit for bit: one image per call, the LoRA fused, fp32)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from imagic_lora import generate_image, load_edit
    from imagic_lora.generate import image_name
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None, dtype=torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    edit = load_edit(pipe, sweep_edit)
    pipe.fuse_lora()
    start = Image.open(sweep_edit / "images" / "input.png").convert("RGB")
    settings = {k: edit.config[k] for k in ("guidance_scale", "num_inference_steps")}

    def draw(eta: float, seed: int, strength: float) -> np.ndarray:
        image = generate_image(pipe, edit.embeds(eta), seed=seed, image=start if strength < 1 else None,
                               strength=strength, **settings)
        return np.asarray(image, dtype=np.int16)

    def on_disk(name: str) -> np.ndarray:
        return np.asarray(Image.open(sweep_edit / "images" / name).convert("RGB"), dtype=np.int16)

    assert edit.strength == edit.config["picked"]["strength"]
    recommended = draw(edit.recommended_eta, edit.recommended_seed, edit.strength)
    assert np.abs(recommended - on_disk("edit.png")).max() <= 1
    for strength in (1.0, 0.6):
        assert np.abs(draw(1.2, 6, strength) - on_disk(image_name(1.2, 6, strength))).max() <= 1
