"""The edit artifact: what an edit leaves on disk, written whole or not at all, and read back.

A folder holding
- ``pytorch_lora_weights.safetensors``: the LoRA, truncated to its budget and in fp16, in kohya's format:
  diffusers' ``load_lora_weights`` (which finds it by this name), ComfyUI and AUTOMATIC1111 load it;
- ``imagic_embeds.safetensors``: ``target_prompt_embeds`` and ``optimized_prompt_embeds``
  (SDXL adds ``target_pooled_prompt_embeds`` and ``optimized_pooled_prompt_embeds``);
- ``imagic_config.json``: base model, prompt, hyper-parameters, recommended η, timings;
- ``README.md``: a model card with a usage snippet for a stock diffusers pipeline.
A full fine-tune (the paper's step B) stores ``unet/`` instead of the LoRA.
Only safetensors and JSON: nothing is unpickled, and metadata strings are treated as data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .conditioning import PromptEmbeds, interpolate, is_sdxl
from .config import BUNDLED_MODELS
from .generate import image_name
from .output import CONFIG_NAME

#: The one LoRA file: kohya's format (``lora_unet_...``), which diffusers (``load_lora_weights``, by this
#: default name), ComfyUI, AUTOMATIC1111 and kohya's scripts all load.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
EMBEDS_NAME = "imagic_embeds.safetensors"
FULL_UNET_DIR = "unet"
ARTIFACT_FORMAT = "imagic-lora/1"


def save_lora(folder: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """The adapter as saved (kohya-format keys; see :mod:`imagic_lora.compress`)."""
    save_file(state, folder / LORA_WEIGHT_NAME, metadata=metadata)


def save_full_unet(folder: Path, unet, dtype: torch.dtype) -> None:
    """The whole fine-tuned UNet (the paper's step B), as safetensors."""
    unet.to(dtype=dtype).save_pretrained(folder / FULL_UNET_DIR, safe_serialization=True)


def save_embeds(folder: Path, e_tgt: PromptEmbeds, e_opt: PromptEmbeds, metadata: dict[str, str]) -> None:
    tensors = {**e_tgt.state_dict("target"), **e_opt.state_dict("optimized")}
    save_file(tensors, folder / EMBEDS_NAME, metadata=metadata)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


@dataclass
class ImagicEdit:
    """A loaded edit: the two embeddings and the config the edit was made with."""

    e_tgt: PromptEmbeds
    e_opt: PromptEmbeds
    config: dict = field(default_factory=dict)

    @property
    def recommended_eta(self) -> float:
        """The eta of the edit the run picked (else --recommended_eta): its images/edit.png."""
        return recommended(self.config)[0]

    @property
    def recommended_seed(self) -> int:
        """The seed of the edit the run picked (else the run's first seed)."""
        return recommended(self.config)[1]

    @property
    def strength(self) -> float:
        """Where the recommended image's drawing started: 1.0 from pure noise, below 1 from the run's input
        (images/input.png) noised to that share of the schedule (draw with an img2img pipeline at this strength)."""
        return recommended_strength(self.config)

    @property
    def picked(self) -> dict | None:
        """The run's automatic pick: its eta, seed, scores and ranking (None when the pick was off)."""
        return self.config.get("picked")

    def embeds(self, eta: float) -> PromptEmbeds:
        """ē = η·e_tgt + (1−η)·e_opt."""
        return interpolate(self.e_tgt, self.e_opt, eta)


def read_edit(folder: str | os.PathLike) -> ImagicEdit:
    """The embeddings and config of an artifact folder (no model needed). Refuses, with a ValueError
    naming the file, a config that is not a JSON object, embeddings of the wrong shape (each
    ``(1, L, D)``, pooled ``(1, P)``, target and optimized alike) and non-finite values."""
    folder = Path(folder)
    config_path, embeds_path = folder / CONFIG_NAME, folder / EMBEDS_NAME
    for path in (config_path, embeds_path):
        if not path.is_file():
            raise ValueError(f"{folder} is not an imagic-lora artifact: {path.name} is missing")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{config_path} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} is not a JSON object")
    tensors = _load_tensors(embeds_path)
    try:
        e_tgt, e_opt = (PromptEmbeds.from_state_dict(tensors, "target"),
                        PromptEmbeds.from_state_dict(tensors, "optimized"))
    except KeyError as e:
        raise ValueError(f"{embeds_path} lacks the tensor {e}") from None
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{embeds_path}: {name} is {tensor.dtype}, not a floating-point embedding")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{embeds_path}: {name} holds NaN or infinite values")
    for kind, ndim in (("prompt_embeds", 3), ("pooled_prompt_embeds", 2)):
        target, optimized = getattr(e_tgt, kind), getattr(e_opt, kind)
        if (target is None) != (optimized is None):
            raise ValueError(f"{embeds_path}: target_{kind} and optimized_{kind} must come together")
        if target is None:
            continue
        if target.ndim != ndim or target.shape[0] != 1 or target.shape != optimized.shape:
            raise ValueError(f"{embeds_path}: target_{kind} {tuple(target.shape)} and optimized_{kind} "
                             f"{tuple(optimized.shape)} must both be one prompt's, (1, ...) of {ndim} dimensions")
    return ImagicEdit(e_tgt, e_opt, config)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a torn or corrupt file is a one-line ValueError naming it."""
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error type for a file it cannot parse
        raise ValueError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:200]})") from None


def check_finite_file(path: Path) -> None:
    """Refuse a safetensors file holding NaN or infinite values (a diverged training's weights)."""
    for name, tensor in _load_tensors(path).items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: {name} holds NaN or infinite values")


def load_edit(pipe, folder: str | os.PathLike, adapter_name: str = "imagic") -> ImagicEdit:
    """Load an artifact into a stock pipeline (its LoRA, or its full UNet); return the embeddings and the
    run's record (``recommended_eta``, ``recommended_seed``: the edit the run picked).

    Refuses an artifact made for another model family, embedding width or sequence length, and one
    whose weights are not finite.
    """
    folder = Path(folder)
    edit = read_edit(folder)
    family = "sdxl" if is_sdxl(pipe) else "sd"
    if edit.config.get("family", family) != family:
        raise ValueError(f"{folder} was made for a {edit.config['family']} model; this pipeline is {family}")
    width = pipe.unet.config.cross_attention_dim
    if edit.e_tgt.prompt_embeds.shape[-1] != width:
        raise ValueError(f"{folder} holds {edit.e_tgt.prompt_embeds.shape[-1]}-wide embeddings; "
                         f"this pipeline's UNet attends to {width}-wide ones (another base model)")
    length = getattr(getattr(pipe, "tokenizer", None), "model_max_length", None)
    if length is not None and edit.e_tgt.prompt_embeds.shape[1] != length:
        raise ValueError(f"{folder} holds embeddings of {edit.e_tgt.prompt_embeds.shape[1]} tokens; this "
                         f"pipeline's text encoder gives {length}")
    if (edit.e_tgt.pooled_prompt_embeds is None) != (family == "sd"):
        raise ValueError(f"{folder}: pooled embeddings do not match a {family} pipeline")
    if family == "sdxl":
        pooled = pipe.text_encoder_2.config.projection_dim
        if edit.e_tgt.pooled_prompt_embeds.shape[-1] != pooled:
            raise ValueError(f"{folder} holds {edit.e_tgt.pooled_prompt_embeds.shape[-1]}-wide pooled embeddings; "
                             f"this pipeline's second text encoder gives {pooled}")
    if (folder / FULL_UNET_DIR).is_dir():
        from diffusers import UNet2DConditionModel
        for path in sorted((folder / FULL_UNET_DIR).glob("*.safetensors")):
            check_finite_file(path)
        unet = UNet2DConditionModel.from_pretrained(folder / FULL_UNET_DIR, dtype=pipe.unet.dtype,
                                                    use_safetensors=True)
        pipe.register_modules(unet=unet.to(pipe.device))
    else:
        weight_name = LORA_WEIGHT_NAME
        if not (folder / weight_name).is_file():
            raise ValueError(f"{folder} has no {weight_name}")
        check_finite_file(folder / weight_name)
        load_lora(pipe, folder, adapter_name=adapter_name, weight_name=weight_name)
    return edit


def load_lora(pipe, source, adapter_name: str, **kwargs) -> None:
    """``pipe.load_lora_weights(source, ...)``, without diffusers' note that the text encoder has no LoRA
    keys: an imagic-lora LoRA adapts the UNet alone, so the note says nothing wrong."""
    import logging

    from .quiet import no_text_encoder_lora_note
    loaders = [logging.getLogger(f"diffusers.loaders.{m}") for m in ("lora_base", "peft", "lora_pipeline")]
    note = no_text_encoder_lora_note()
    for logger in loaders:
        logger.addFilter(note)
    try:
        pipe.load_lora_weights(source, adapter_name=adapter_name, **kwargs)
    finally:
        for logger in loaders:
            logger.removeFilter(note)


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


MODEL_CARD = """---
{front_matter}library_name: diffusers
tags:
- imagic
- lora
- text-guided-image-editing
- {family_tag}
---

# Imagic-LoRA edit: "{target_prompt}"

An [Imagic](https://arxiv.org/abs/2210.09276) edit of one image, made with imagic-lora: a {kind}
fine-tuned on the input image, plus the two text embeddings Imagic interpolates between.

| file | what |
|---|---|
{files}

Interpolate `e = eta * target + (1 - eta) * optimized`: eta = 0 gives the input image back (where step B
fitted it: `images/eta_0.00_*` shows the run's), the edit appears as eta grows, eta > 1 extrapolates.{picked_line}

## Use it with a stock diffusers pipeline

```python
import torch
from diffusers import {pipeline_class}, {scheduler_class}
from safetensors.torch import load_file
{base_import}
pipe = {pipeline_class}.from_pretrained({base_model_arg}{load_kwargs}){to_device}
pipe.scheduler = {scheduler_class}.from_config(pipe.scheduler.config)
{load_weights}
embeds = load_file("{artifact}/imagic_embeds.safetensors")
eta = {eta}
mix = lambda name: eta * embeds["target_" + name] + (1 - eta) * embeds["optimized_" + name]
{draw}
image.save("edit.png")
```

This reproduces `images/{reproduces}`{exactness}.
Or with the library: `imagic_lora.load_edit(pipe, "{artifact}")`.

## How it was made

- base model: {base_model_text} (revision `{revision}`)
- preset: {preset}
- step A (embedding): {emb_train_steps} steps, lr {emb_learning_rate}
- step B ({kind}): {max_train_steps} steps, lr {learning_rate}{lora_line}
- wall time: A {time_a:.1f} s, B {time_b:.1f} s, C {time_c:.1f} s on {device}
"""


def recommended(config: dict) -> tuple[float, int]:
    """The (eta, seed) an artifact recommends: the run's pick, else --recommended_eta at the first seed."""
    picked = config.get("picked")
    if picked:
        return float(picked["eta"]), int(picked["seed"])
    return float(config.get("recommended_eta", 0.7)), int(config.get("seed", 0))


def recommended_strength(config: dict) -> float:
    """The strength an artifact recommends drawing at: the run's pick's, else its first --strength (a record of
    before several strengths holds one number; of before --strength, none: pure noise)."""
    picked = config.get("picked")
    if picked and picked.get("strength") is not None:
        return float(picked["strength"])
    strength = config.get("strength", 1.0)
    strength = strength[0] if isinstance(strength, list) else strength
    return 1.0 if strength is None else float(strength)


def _exactness(config: dict) -> str:
    """How exactly the card's snippet gives the run's image back."""
    batch = config.get("sample_batch_size")
    if batch != 1:
        return (" (to within rounding, a few pixels off by 1 of 255: the sweep drew "
                f"{batch} images per call; `--sample_batch_size 1` makes it bit for bit in fp32)")
    if not config.get("full_finetune") and config.get("weight_dtype", "float32") != "float32":
        return (f" (to within rounding: the run fused the fp32 LoRA into {config['weight_dtype']} weights, a "
                f"stock pipeline fuses the LoRA cast to {config['weight_dtype']})")
    return " (bit for bit: the sweep drew one image per call)"


def write_model_card(folder: Path, config: dict) -> None:
    full = config["full_finetune"]
    sdxl = config["family"] == "sdxl"
    files = [("imagic_embeds.safetensors", "target and optimized text embeddings"),
             ("imagic_config.json", "every setting, the recommended eta, timings and versions")]
    if full:
        files.insert(0, ("unet/", "the fully fine-tuned UNet (the paper's step B)"))
        load_weights = ('from diffusers import UNet2DConditionModel\n'
                        f'pipe.unet = UNet2DConditionModel.from_pretrained("{config["artifact_name"]}/unet")')
    else:
        files.insert(0, (LORA_WEIGHT_NAME, "the LoRA, in kohya's format: diffusers, ComfyUI and AUTOMATIC1111 "
                                           "load it"))
        load_weights = (f'pipe.load_lora_weights("{config["artifact_name"]}")\n'
                        'pipe.fuse_lora()  # as the run drew its images: faster, and needed to match them exactly')
    call = 'prompt_embeds=mix("prompt_embeds")'
    if sdxl:
        call += ', pooled_prompt_embeds=mix("pooled_prompt_embeds")'
    timings = config.get("wall_time_s", {})
    base = config.get("base_model", config["pretrained_model_name_or_path"])
    bundled = BUNDLED_MODELS.get(base)  # the constant that names a bundled model's path, or None
    hub_id = not bundled and not Path(base).is_absolute() and base.count("/") == 1 and not Path(base).exists()
    eta, seed = recommended(config)
    picked = config.get("picked")
    reproduces = "edit.png`, the run's pick" if picked else f"{image_name(eta, seed, recommended_strength(config))}`"
    text = MODEL_CARD.format(
        front_matter=f"base_model: {base}\n" if hub_id else "",
        base_import=f"from imagic_lora.config import {bundled}  # the model that comes with imagic-lora\n"
        if bundled else "",
        base_model_arg=bundled or f'"{base}"',
        base_model_text=f"the shapes-world model bundled with imagic-lora (`{base}`)" if bundled else f"`{base}`",
        family_tag="sdxl" if sdxl else "stable-diffusion",
        target_prompt=config["target_prompt"], kind="full UNet" if full else "LoRA adapter",
        files="\n".join(f"| `{name}` | {what} |" for name, what in files),
        eta=eta, reproduces=reproduces, preset=config.get("preset") or "shapes",
        pipeline_class=config["pipeline_class"], scheduler_class=config["scheduler_class"],
        # The dtype the run's frozen weights had: the one that reproduces its images. Without it a
        # checkpoint saved in fp16 (the bundled model) loads in fp16, which a CPU cannot run with the
        # fp32 LoRA.
        load_kwargs=("" if sdxl else ", safety_checker=None") + f", dtype=torch.{config.get('weight_dtype', 'float32')}",
        # device_type (cuda, mps), not device: that is the card's name ("NVIDIA H100 ..."), not a torch device.
        to_device="" if config.get("device_type", "cpu") == "cpu" else f'.to("{config["device_type"]}")',
        load_weights=load_weights,
        artifact=config["artifact_name"], draw=_draw_code(config, call, seed), revision=config["revision"],
        emb_train_steps=config["emb_train_steps"], emb_learning_rate=config["emb_learning_rate"],
        max_train_steps=config["max_train_steps"], learning_rate=config["learning_rate"],
        lora_line="" if full else (f", rank {config['rank']}, alpha {config['lora_alpha_used']}, targets "
                                   f"{config['lora_target_module_list']}" + _saved_line(config)),
        exactness=_exactness(config),
        time_a=timings.get("A", 0.0), time_b=timings.get("B", 0.0), time_c=timings.get("C", 0.0),
        device=config.get("device", "?"),
        picked_line=_picked_line(config))
    (folder / "README.md").write_text(text)


def _draw_code(config: dict, call_embeds: str, seed: int) -> str:
    """The model card's drawing call: the pipeline itself from pure noise, or, for a run drawn from the noised
    input (--strength below 1), the img2img pipeline of the same family on the same components."""
    settings = (f'guidance_scale={config["guidance_scale"]},\n             num_inference_steps='
                f'{config["num_inference_steps"]}, generator=torch.Generator("cpu").manual_seed({seed})')
    strength = recommended_strength(config)
    if strength >= 1.0:
        return f"image = pipe({call_embeds}, {settings}).images[0]"
    img2img = ("StableDiffusionXLImg2ImgPipeline" if config["family"] == "sdxl"
               else "StableDiffusionImg2ImgPipeline")
    return (f"from diffusers import {img2img}\nfrom PIL import Image\n"
            f"img2img = {img2img}(**pipe.components)  # the same weights; starts from the noised input\n"
            f'start = Image.open("{config["artifact_name"]}/images/input.png")  # the input as the run drew from it\n'
            f"image = img2img({call_embeds}, image=start, strength={strength},\n             {settings}).images[0]")


def _picked_line(config: dict) -> str:
    picked = config.get("picked")
    if not picked:
        return f" The artifact recommends eta {config.get('recommended_eta')}."
    at = f", strength {picked['strength']}" if recommended_strength(config) < 1 else ""
    line = (f"\n\nThe run picked eta {picked['eta']}, seed {picked['seed']}{at} as the edit (`images/edit.png`), by "
            "the model's own scores; it is the artifact's recommendation (`picked` in `imagic_config.json`).")
    if picked.get("calibrated") is False:
        line += (" The pick's thresholds were tuned on the bundled shapes model only: on this model it is a "
                 "suggestion. `picked.ranking` lists every image in the order the rule prefers them; look at "
                 "`images/grid.png`.")
    return line


def _saved_line(config: dict) -> str:
    saved = config.get("lora_saved")
    if not saved:
        return ""
    return (f"; saved: {saved['parameters']:,} of its {saved['trained_parameters']:,} parameters (budget "
            f"{saved['budget']}), keeping {saved['kept_energy']:.1%} of its weight update, in fp16")
