"""The bundled shapes-world model and its example photos: what a new user runs first."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image

from conftest import ROOT
from imagic_lora import shapes
from imagic_lora.config import BUNDLED_MODEL, BUNDLED_MODEL_V2, DEFAULT_EXAMPLE, DEFAULT_TARGET_PROMPT, ImagicConfig
from imagic_lora.generate import image_name
from imagic_lora.vocabulary import read_vocabulary
import imagic_lora.cli as cli


@pytest.mark.parametrize("model", [BUNDLED_MODEL, BUNDLED_MODEL_V2], ids=["v1", "v2"])
def test_bundled_model_is_small_and_loads_like_a_real_checkpoint(model):
    size = sum(f.stat().st_size for f in model.rglob("*") if f.is_file())
    assert size < 25e6
    pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None, dtype=torch.float32)
    assert pipe.vae_scale_factor * pipe.unet.config.sample_size == 64
    report = json.loads((model / "training_report.json").read_text())
    assert report["vae"]["heldout_psnr_db"] >= 30
    # The world it was trained on is the one its vocabulary names (what evaluate_shapes.py checks).
    assert set(shapes.words(report["args"].get("world", 1))) <= set(read_vocabulary(model / "tokenizer"))


def draw(model, scenes, guidance_scale):
    """One image per scene from its caption: DDIM 25 steps, seed i for the i-th."""
    pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None, dtype=torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts = [shapes.caption(*scene) for scene in scenes]
    return pipe(prompts, guidance_scale=guidance_scale, num_inference_steps=25,
                generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))]).images


def test_bundled_model_draws_what_the_caption_says():
    """A small sample of what the training report measures over every caption."""
    scenes = [("circle", "red", "large", "white"), ("square", "blue", "small", "black"),
              ("triangle", "yellow", "large", "gray"), ("square", "green", "large", "white")]
    images = draw(BUNDLED_MODEL, scenes, ImagicConfig().resolved("shapes").guidance_scale)
    right = sum(shapes.matches(shapes.judge(image), dict(zip(shapes.ATTRIBUTES, scene)))
                for image, scene in zip(images, scenes))
    assert right >= 3, [shapes.judge(image).attributes() for image in images]


def test_bundled_v2_model_draws_the_direction_its_caption_names():
    """World version 2's model: a triangle pointing each way, and two other shapes, each judged in full."""
    scenes = [("triangle", "red", "large", "white", "up"), ("triangle", "blue", "large", "black", "down"),
              ("triangle", "yellow", "large", "gray", "left"), ("triangle", "green", "large", "white", "right"),
              ("circle", "red", "large", "black", None), ("square", "blue", "large", "white", None)]
    readings = [shapes.judge(image, world=2) for image in draw(BUNDLED_MODEL_V2, scenes, 3.0)]
    right = sum(shapes.matches(reading, dict(zip(shapes.ATTRIBUTES_V2, scene)))
                for reading, scene in zip(readings, scenes))
    assert right >= 5, [(r.attributes(), r.direction) for r in readings]


def test_examples_are_unseen_photos_the_judge_reads():
    listing = json.loads((DEFAULT_EXAMPLE.parent / "examples.json").read_text())
    assert DEFAULT_EXAMPLE.name in listing and listing[DEFAULT_EXAMPLE.name]["edits"][0] == DEFAULT_TARGET_PROMPT
    for name, entry in listing.items():  # read as scenes of world version 2, the default model's
        reading = shapes.judge(Image.open(DEFAULT_EXAMPLE.parent / name), world=2)
        assert shapes.caption(reading.shape, reading.color, reading.size, reading.background,
                              reading.direction) == entry["caption"]
    # Every suggested edit is a caption the default model knows.
    vocabulary = read_vocabulary(ImagicConfig().pretrained_model_name_or_path + "/tokenizer")
    assert all(set(edit.split()) <= vocabulary for entry in listing.values() for edit in entry["edits"])


def test_a_word_outside_the_vocabulary_is_named(capsys, tmp_path):
    code = cli.main(["--target_prompt", "a small purple circle on a white background",
                               "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--target_prompt" in err[0] and "'purple'" in err[0] and "yellow" in err[0]  # and what it knows


@pytest.mark.slow
def test_the_default_edit_by_the_judge(tmp_path):
    """The README's first command, as a user runs it: no arguments but the output folder.

    What the user sees is the grid: a row per seed. Eta 0 gives the input back, in place, for the
    seeds it is drawn for; at the recommended eta the row of at least one seed shows the edit, in place (the
    benchmark, not this test, says how often a single sample does).
    """
    out = tmp_path / "imagic-output"
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(ROOT / "accelerate_configs" / "cpu.yaml"), "--num_cpu_threads_per_process", "2",
                           str(ROOT / "scripts" / "imagic_lora.py"), "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "imagic_config.json").read_text())
    eta, seeds = config["recommended_eta"], config["seeds"]
    assert len(seeds) >= 2 and config["sample_batch_size"] == 8  # SD at 64 px: eight images per pipeline call
    assert config["preset"] == "shapes-v2"  # the default model: world version 2's
    assert config["picked"]["calibrated"] is True  # its pick is the calibrated one, not a suggestion
    original = shapes.judge(Image.open(DEFAULT_EXAMPLE), world=2)
    target = dict(zip(shapes.ATTRIBUTES, ("circle", "blue", "small", "white")))
    edits = [shapes.judge(Image.open(out / "images" / image_name(eta, seed, strength)), world=2)
             for seed in seeds for strength in config["strength"]]
    assert any(shapes.matches(edited, target) and shapes.centre_distance(edited, original.cx, original.cy) <= 6
               for edited in edits), [(e.attributes(), e.cx, e.cy) for e in edits]
    # eta 0 gives the input back, in place, for every seed it is drawn for (at the first strength).
    assert config["num_reconstruction_seeds"] >= 1
    for seed in seeds[:config["num_reconstruction_seeds"]]:
        zero = out / "images" / image_name(0.0, seed, config["strength"][0])
        reconstruction = shapes.judge(Image.open(zero), world=2)
        assert shapes.matches(reconstruction, original.attributes()), (seed, reconstruction.attributes())
        assert shapes.centre_distance(reconstruction, original.cx, original.cy) <= 6, seed
    # The image the CLI picks as the edit, with no person choosing, is edited, and in place by the pick's own
    # measure, which agrees with the judge's within a pixel. At step B's 75 steps this example's pick lies at the
    # bound: 5.7 px by its extent, 6.1 px by the judge's box, one of the benchmark's place-bound misses
    # (docs/shapes_benchmark.md, "Step B at 75 steps, the default").
    picked = shapes.judge(Image.open(out / "images" / "edit.png"), world=2)
    assert shapes.matches(picked, target), (config["picked"]["eta"], config["picked"]["seed"], picked.attributes())
    assert config["picked"]["chosen_in_place"] is True
    key = ("eta", "seed", "strength")
    chosen = next(c for c in config["picked"]["candidates"]
                  if tuple(c[k] for k in key) == tuple(config["picked"][k] for k in key))
    assert chosen["in_place"] is True
    judged = shapes.centre_distance(picked, original.cx, original.cy)
    assert abs(judged - chosen["place_shift"] * 64) <= 1.0, (judged, chosen["place_shift"] * 64)
    print(next(line for line in proc.stdout.splitlines() if "edit done in" in line))
    # The model card's snippet, run as a user copies it (from the folder above the artifact), gives the
    # edit the run picked back (within rounding: the run drew 8 images per call). The bundled model
    # is saved in fp16; without the card's dtype a CPU fails on it.
    card = (out / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    card_run = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
    assert card_run.returncode == 0, card_run.stderr[-2000:]
    mine = np.asarray(Image.open(tmp_path / "edit.png"), dtype=np.int16)
    run = np.asarray(Image.open(out / "images" / "edit.png").convert("RGB"), dtype=np.int16)
    assert int(np.abs(mine - run).max()) <= 1


def test_training_script_refuses_a_context_shorter_than_its_captions_before_training(tmp_path):
    out = tmp_path / "model"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_shapes_model.py"), "--smoke", "--world", "2",
                           "--max_caption_tokens", "11", "--output_dir", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == "--max_caption_tokens 11 is below the longest caption's 12 tokens"
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("seed", [3])
def test_training_script_is_deterministic_from_its_seed(tmp_path, seed):
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_shapes_model.py"), "--smoke",
                               "--seed", str(seed), "--output_dir", str(out)], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(out)
    from safetensors.torch import load_file
    weights = sorted(p.relative_to(outputs[0]) for p in outputs[0].rglob("*.safetensors"))
    assert len(weights) == 3  # unet, vae, text encoder
    for rel in weights:
        a, b = load_file(outputs[0] / rel), load_file(outputs[1] / rel)
        assert all(torch.equal(a[k], b[k]) for k in a), rel
    assert (outputs[0] / "tokenizer" / "vocab.json").read_bytes() == (outputs[1] / "tokenizer" / "vocab.json").read_bytes()
    assert np.isfinite(json.loads((outputs[0] / "training_report.json").read_text())["vae"]["heldout_psnr_db"])
