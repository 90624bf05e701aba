"""Reading an imagic-lora edit artifact into ComfyUI's own types; no ComfyUI import here.

An artifact folder holds ``pytorch_lora_weights.safetensors`` (the LoRA, kohya's format, which ComfyUI's
LoRA loader reads), ``imagic_embeds.safetensors`` (e_tgt and e_opt: the text encoder's output, which is
exactly what a ComfyUI CONDITIONING holds) and ``imagic_config.json``. ComfyUI's CONDITIONING is a list of
``[tensor (1, 77, D), {extras}]``; SDXL's extras carry the pooled output and the size conditioning.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

LORA_FILE = "pytorch_lora_weights.safetensors"
EMBEDS_FILE = "imagic_embeds.safetensors"
CONFIG_FILE = "imagic_config.json"
INPUT_FILE = "images/input.png"  # the input as the run drew from it: the start of a draw at strength < 1


def read_artifact(folder: str | Path) -> dict:
    """The LoRA's tensors, the four (or two) embeddings and the record of an artifact folder."""
    folder = Path(folder).expanduser()
    for name in (LORA_FILE, EMBEDS_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"{folder} is not an imagic-lora artifact: {name} is missing")
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    embeds = load_file(folder / EMBEDS_FILE)
    return {"lora": load_file(folder / LORA_FILE), "config": config,
            "target": embeds["target_prompt_embeds"], "optimized": embeds["optimized_prompt_embeds"],
            "target_pooled": embeds.get("target_pooled_prompt_embeds"),
            "optimized_pooled": embeds.get("optimized_pooled_prompt_embeds")}


def mix(target: torch.Tensor, optimized: torch.Tensor, eta: float) -> torch.Tensor:
    """Imagic's interpolation: eta · e_tgt + (1 − eta) · e_opt (what ConditioningAverage computes for eta in
    [0, 1], with conditioning_to = target, conditioning_from = optimized)."""
    return eta * target + (1.0 - eta) * optimized


def conditioning(embeds: torch.Tensor, pooled: torch.Tensor | None, config: dict) -> list:
    """A ComfyUI CONDITIONING of one prompt: ``[[embeds, extras]]``. For SDXL the extras hold the pooled
    output and the size conditioning the edit was trained with (original = target = its resolution, no crop)."""
    extras = {}
    if pooled is not None:
        side = int(config.get("resolution", 1024))
        extras = {"pooled_output": pooled, "width": side, "height": side, "crop_w": 0, "crop_h": 0,
                  "target_width": side, "target_height": side}
    return [[embeds, extras]]


def edit_conditionings(artifact: dict, eta: float) -> tuple[list, list, list]:
    """The CONDITIONING at ``eta``, and those of e_tgt (eta 1) and e_opt (eta 0), for ConditioningAverage."""
    config = artifact["config"]
    pooled = artifact["target_pooled"] is not None
    at_eta = conditioning(mix(artifact["target"], artifact["optimized"], eta),
                          mix(artifact["target_pooled"], artifact["optimized_pooled"], eta) if pooled else None,
                          config)
    return (at_eta, conditioning(artifact["target"], artifact["target_pooled"], config),
            conditioning(artifact["optimized"], artifact["optimized_pooled"], config))


def recommended(config: dict) -> tuple[float, int]:
    """The (eta, seed) of the edit the run picked (its images/edit.png), else its recommended eta."""
    picked = config.get("picked")
    if picked:
        return float(picked["eta"]), int(picked["seed"])
    return float(config.get("recommended_eta", 0.7)), int(config.get("seed", 0))


def recommended_strength(config: dict) -> float:
    """Where the picked image's drawing started: 1.0 from pure noise, below 1 from the input noised to that share
    of the schedule (ComfyUI: the input through VAEEncode, KSamplerAdvanced from the step it gives). The run's pick's,
    else its first --strength; a record of before --strength holds none: 1.0."""
    picked = config.get("picked")
    if picked and picked.get("strength") is not None:
        return float(picked["strength"])
    strength = config.get("strength", 1.0)
    strength = strength[0] if isinstance(strength, list) else strength
    return 1.0 if strength is None else float(strength)


def input_image(folder: str | Path, config: dict) -> torch.Tensor:
    """The artifact's images/input.png as a ComfyUI IMAGE: (1, H, W, 3) float in [0, 1]. An artifact without it
    (one written by hand) gets a black image of its resolution, unless it recommends drawing from it (strength
    below 1): then a ValueError names the missing file."""
    import numpy as np
    from PIL import Image

    path = Path(folder).expanduser() / INPUT_FILE
    if not path.is_file():
        if recommended_strength(config) < 1.0:
            raise ValueError(f"{path} is missing: the edit was drawn from the input at strength "
                             f"{recommended_strength(config)}")
        side = int(config.get("resolution", 512))
        return torch.zeros(1, side, side, 3)
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels.copy())[None]
