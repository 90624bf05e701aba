"""Defaults per model family: a preset fills every setting the user did not give.

The ``shapes`` preset holds the values tuned on the shapes world's first bundled model, ``shapes-v2`` those of
world version 2's, the default model (docs/shapes_benchmark.md).
The Stable Diffusion presets start from published practice; no value of theirs has been measured on real
weights yet (none can be downloaded where the project is developed). docs/presets.md gives each value's
source and says which are guesses.

Which preset applies is read from the model's config files (no weights): a closed vocabulary
(``tokenizer/vocabulary.json``, the project's own small models) is ``shapes``, or ``shapes-v2`` when it has world
version 2's word "pointing"; otherwise SDXL, SD 2.x
(v-prediction or epsilon, by the scheduler's ``prediction_type``) or SD 1.x, by the architecture.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

#: Settings a preset may fill (each is None in :class:`~imagic_lora.config.ImagicConfig` until resolved).
PRESET_FIELDS = ("emb_train_steps", "emb_learning_rate", "max_train_steps", "learning_rate",
                 "train_batch_size", "rank", "lora_target_modules", "max_grad_norm", "etas", "num_seeds",
                 "recommended_eta", "guidance_scale", "num_inference_steps", "scheduler", "lora_budget",
                 "pick_timesteps", "strength")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    values: dict
    measured: bool  # were these values measured on this family's real weights?
    sources: dict = field(default_factory=dict)  # setting -> where its value comes from


SHAPES = Preset(
    "shapes", "world version 1's bundled model (and the project's other small closed-vocabulary models)",
    # Half the UNet work of the schedule first tuned (A 300 x 4 draws, C 25 steps, the pick at 16 levels); its
    # benchmark rate over two draws of the edit's seeds within a point of that schedule's (docs/BENCHMARKS.md).
    dict(emb_train_steps=240, emb_learning_rate=1e-2, max_train_steps=200, learning_rate=1e-3,
         train_batch_size=2, rank=8, lora_target_modules="attn_ff_conv", max_grad_norm=0.0,
         etas=[0.0, 0.8, 1.0], num_seeds=8, recommended_eta=0.8, guidance_scale=3.0, num_inference_steps=20,
         scheduler="ddim", lora_budget=1.0, pick_timesteps=8, strength=[1.0]),
    measured=True,
    sources={"*": "tuned on the shapes benchmark (docs/shapes_benchmark.md); the step counts halved, the rate "
                  "held over two draws (docs/BENCHMARKS.md)"})

SHAPES_V2 = Preset(
    "shapes-v2", "world version 2's bundled model (triangles that point up, down, left or right), the default",
    # Direction, shape and size edits move outlines: half of the images start from the input noised to 0.8, where
    # its place holds, and a light step B (75 steps) leaves the model freer to redraw (docs/shapes_benchmark.md).
    # Eta 0 is drawn at the first strength: from pure noise so light a step B rarely puts the object back in place.
    dict(SHAPES.values, max_train_steps=75, etas=[0.0, 0.8, 1.0, 1.2, 1.4], strength=[0.8, 1.0]),
    measured=True,
    sources={"*": "the shapes preset, with step B's steps, the etas and the strengths measured on world version 2's "
                  "tuning cases and benchmark (docs/shapes_benchmark.md); recommended_eta (used only without the "
                  "pick) kept from the shapes preset, unmeasured on version 2"})

# Stable Diffusion 1.x at 512 px. Every value a starting point from published practice (docs/presets.md).
_SD = dict(
    emb_train_steps=500, emb_learning_rate=1e-3,  # diffusers' community Imagic pipeline
    max_train_steps=400, learning_rate=1e-4, train_batch_size=1,  # DreamBooth-LoRA's rate; the steps a guess
    rank=8, lora_target_modules="attn_ff_conv", max_grad_norm=1.0,  # clipping as DreamBooth-LoRA
    etas=[0.0, 0.6, 0.7, 0.8], num_seeds=4, recommended_eta=0.7,  # the paper: edits at eta 0.6-0.8
    guidance_scale=7.5, num_inference_steps=25, scheduler="dpmsolver++",  # the paper's guidance; DPM-Solver++
    lora_budget=0.25,  # the artifact's size goals (SD 1.5 <= 5 MB, SDXL <= 15 MB); unmeasured on SD weights
    pick_timesteps=16,  # the pick's first calibration on the shapes model; unmeasured on SD
    strength=[1.0])  # the paper: every image from pure noise
_SD_SOURCES = {
    "emb_train_steps": "diffusers community Imagic pipeline (500 steps at 1e-3; the paper: 1000 at 2e-3)",
    "emb_learning_rate": "diffusers community Imagic pipeline and its forks (1e-3)",
    "max_train_steps": "a guess between FastEdit's 50 LoRA steps and DreamBooth-LoRA's 500-1000",
    "learning_rate": "DreamBooth-LoRA practice (1e-4; the paper's full fine-tune: 5e-7)",
    "train_batch_size": "the published implementations draw one noise per step (step A follows it)",
    "rank": "DreamBooth-LoRA practice (4-8)",
    "lora_target_modules": "the shapes benchmark (attention alone does not hold the layout) and Forgedit (the "
                           "UNet's convolutional encoder holds the layout)",
    "max_grad_norm": "DreamBooth-LoRA practice (1.0)",
    "etas": "the paper (edits usually between 0.6 and 0.8), plus eta 0 to show the reconstruction",
    "num_seeds": "a guess: the pick needs several seeds; the paper draws 8",
    "recommended_eta": "the paper (0.6-0.8)",
    "guidance_scale": "the paper and the community pipeline (7.5)",
    "num_inference_steps": "DPM-Solver++ in 25 steps, diffusers' fast sampler (the community pipeline: DDIM 50)",
    "scheduler": "DPM-Solver++ in 25 steps, diffusers' fast sampler (the community pipeline: DDIM 50)",
    "lora_budget": "a guess, to make the artifact small (SD 1.5 about 4 MB, SDXL about 12 MB); on the shapes model "
                   "a quarter of the parameters keeps only 74% of the weight update's energy and its picked edit was "
                   "right in 83% of the benchmark's cases against 85% at the full schedule (docs/BENCHMARKS.md), so "
                   "the shapes preset keeps all of it",
    "pick_timesteps": "the pick's calibration on the shapes model (16 noise levels), kept until measured on SD "
                      "weights",
    "strength": "the paper: every image drawn from pure noise",
}
SD1 = Preset("sd1", "Stable Diffusion 1.x (512 px)", dict(_SD), measured=False, sources=_SD_SOURCES)
SD2 = Preset("sd2", "Stable Diffusion 2.x base, epsilon prediction (512 px)", dict(_SD), measured=False,
             sources=_SD_SOURCES)
SD2_V = Preset("sd2-v", "Stable Diffusion 2.x, v-prediction (768 px)", dict(_SD), measured=False, sources=_SD_SOURCES)
SDXL = Preset("sdxl", "Stable Diffusion XL (1024 px)", dict(_SD, guidance_scale=5.0, num_seeds=2), measured=False,
              sources={**_SD_SOURCES, "guidance_scale": "SDXL practice (5-7; diffusers' SDXL examples use 5)",
                       "num_seeds": "a guess, fewer than SD's: an SDXL UNet call costs 8.5x an SD 1.5 one"})

PRESETS = {p.name: p for p in (SHAPES, SHAPES_V2, SD1, SD2, SD2_V, SDXL)}
#: The presets of the project's own shapes-world models, on which the pick's thresholds were calibrated.
SHAPES_PRESETS = ("shapes", "shapes-v2")


def detect_preset(pretrained_model_name_or_path: str, revision: str | None = None) -> str:
    """The preset for a model, from its config files alone (no weights are read)."""
    from diffusers import UNet2DConditionModel

    from .models import load_tokenizer_and_vocabulary, model_family, scheduler_config
    family = model_family(pretrained_model_name_or_path, revision)
    _, vocabulary = load_tokenizer_and_vocabulary(pretrained_model_name_or_path, revision)
    if vocabulary is not None:
        return "shapes-v2" if "pointing" in vocabulary else "shapes"
    if family == "sdxl":
        return "sdxl"
    unet = UNet2DConditionModel.load_config(pretrained_model_name_or_path, subfolder="unet", revision=revision)
    if unet.get("cross_attention_dim") == 1024:
        prediction = scheduler_config(pretrained_model_name_or_path, revision).get("prediction_type", "epsilon")
        return "sd2-v" if prediction == "v_prediction" else "sd2"
    return "sd1"


def apply_preset(cfg, name: str):
    """``cfg`` with every preset setting it leaves unset (None) taken from the preset ``name``."""
    # Lists are copied: the preset's own stay untouched.
    values = {k: list(v) if isinstance(v, list) else v for k, v in PRESETS[name].values.items()
              if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, preset=name, **values)
