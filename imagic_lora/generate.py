"""Imagic step C: generate from interpolated embeddings with the stock pipeline.

Generation goes through the pipeline's own ``__call__`` with ``prompt_embeds`` (and, for SDXL,
``pooled_prompt_embeds``); the unconditional embedding for classifier-free guidance is the
pipeline's own encoding of "". The CLI draws with the LoRA fused into the UNet
(:func:`imagic_lora.lora.fused_lora`). A user's stock pipeline with the same LoRA, loaded and fused
(``pipe.fuse_lora()``), embeddings, scheduler, steps, guidance and seed therefore computes the same
images: bit for bit in fp32 when both draw one image per call, and to within rounding (a few pixels
off by 1 of 255) when the sweep drew several per call, since a batched convolution sums in another
order, when the LoRA is not fused, or in fp16/bf16 (see :func:`imagic_lora.lora.fused_lora`).
"""

from __future__ import annotations

import torch
from PIL import Image
from tqdm.auto import tqdm

from .conditioning import PromptEmbeds, interpolate, is_sdxl


def seeded_generator(seed: int) -> torch.Generator:
    """The initial latents are drawn on the CPU so a seed gives the same image on every device."""
    return torch.Generator("cpu").manual_seed(seed)


@torch.no_grad()
def generate_image(pipe, embeds: PromptEmbeds, *, seed: int, guidance_scale: float, num_inference_steps: int,
                   resolution: int | None = None, image: Image.Image | None = None,
                   strength: float = 1.0) -> Image.Image:
    """One image from ``embeds`` (1, L, D) [+ pooled (1, P)] with the pipeline as configured (from ``image``
    noised to ``strength`` when below 1: see :func:`generate_images`)."""
    return generate_images(pipe, [embeds], [seed], guidance_scale=guidance_scale,
                           num_inference_steps=num_inference_steps, resolution=resolution, image=image,
                           strength=strength)[0]


@torch.no_grad()
def generate_images(pipe, embeds: list[PromptEmbeds], seeds: list[int], *, guidance_scale: float,
                    num_inference_steps: int, resolution: int | None = None, image: Image.Image | None = None,
                    strength: float = 1.0) -> list[Image.Image]:
    """N images in one pipeline call: image i from ``embeds[i]`` (1, L, D) [+ (1, P)] and the
    initial latents of ``seeds[i]``, drawn as :func:`generate_image` draws them (faster per image than
    one call each). ``strength`` < 1 starts from ``image`` (the input, at the resolution to draw) noised to
    that share of the schedule, through :func:`img2img_pipeline` (each seed draws the image's VAE sample,
    then its noise, as a stock img2img pipeline does)."""
    kwargs = PromptEmbeds.cat(embeds).pipeline_kwargs(dtype=pipe.unet.dtype)
    kwargs = {k: v.to(pipe.device) for k, v in kwargs.items()}
    generators = [seeded_generator(s) for s in seeds]
    if strength < 1.0:
        if image is None:
            raise ValueError("strength < 1 needs the image to start from")
        return img2img_pipeline(pipe)(**kwargs, image=image, strength=strength, guidance_scale=guidance_scale,
                                      num_inference_steps=num_inference_steps, generator=generators).images
    return pipe(**kwargs, height=resolution, width=resolution, guidance_scale=guidance_scale,
                num_inference_steps=num_inference_steps, generator=generators).images


def img2img_pipeline(pipe):
    """The img2img pipeline of ``pipe``'s family on the very same components (nothing copied or cast;
    ``AutoPipelineForImage2Image.from_pipe`` would cast every shared module to fp32)."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    if is_sdxl(pipe):
        i2i = StableDiffusionXLImg2ImgPipeline(
            **pipe.components, force_zeros_for_empty_prompt=pipe.config.get("force_zeros_for_empty_prompt", True),
            add_watermarker=getattr(pipe, "watermark", None) is not None)
    else:
        i2i = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    i2i.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return i2i


def generate_sweep(pipe, e_tgt: PromptEmbeds, e_opt: PromptEmbeds, *, etas: list[float], seeds: list[int],
                   guidance_scale: float, num_inference_steps: int, resolution: int | None = None,
                   batch_size: int = 1, show_progress: bool = True, image: Image.Image | None = None,
                   strength: float = 1.0) -> dict[tuple[float, int], Image.Image]:
    """{(η, seed): image} for ē = η·e_tgt + (1−η)·e_opt over every η and seed, ``batch_size`` per call (from
    ``image`` noised to ``strength`` when below 1)."""
    images = {}
    pairs = [(eta, seed) for eta in etas for seed in seeds]
    for start in tqdm(range(0, len(pairs), batch_size), desc="C: generate", disable=not show_progress):
        chunk = pairs[start:start + batch_size]
        made = generate_images(pipe, [interpolate(e_tgt, e_opt, eta) for eta, _ in chunk], [s for _, s in chunk],
                               guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                               resolution=resolution, image=image, strength=strength)
        images.update(zip(chunk, made))
    return images


def default_sample_batch_size(sdxl: bool, resolution: int) -> int:
    """Images per step-C pipeline call when --sample_batch_size is not given: 8 for small images (faster
    per image on a CPU; docs/BENCHMARKS.md), 4 up to SD's sizes, 1 for SDXL at 1024 px (its decode is the
    largest)."""
    if sdxl:
        return 1
    return 8 if resolution <= 256 else 4


EDIT_IMAGE_NAME = "edit.png"  # the automatically picked edit (imagic_lora.pick)


def image_name(eta: float, seed: int, strength: float = 1.0) -> str:
    """Step C's file name for an image; one drawn from the noised input (strength below 1) names its strength."""
    return f"eta_{eta:.2f}_seed_{seed}" + (f"_strength_{strength:.2f}" if strength < 1 else "") + ".png"
