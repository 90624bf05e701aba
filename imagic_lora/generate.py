"""Imagic step C: generate from interpolated embeddings with the stock pipeline.

Generation goes through the pipeline's own ``__call__`` with ``prompt_embeds`` (and, for SDXL,
``pooled_prompt_embeds``); the unconditional embedding for classifier-free guidance is the
pipeline's own encoding of "". A user's stock pipeline with the same LoRA, embeddings,
scheduler, steps, guidance and seed therefore computes the very same images.
"""

from __future__ import annotations

import torch
from PIL import Image
from tqdm.auto import tqdm

from .conditioning import PromptEmbeds, interpolate


def seeded_generator(seed: int) -> torch.Generator:
    """The initial latents are drawn on the CPU so a seed gives the same image on every device."""
    return torch.Generator("cpu").manual_seed(seed)


@torch.no_grad()
def generate_image(pipe, embeds: PromptEmbeds, *, seed: int, guidance_scale: float, num_inference_steps: int,
                   resolution: int | None = None) -> Image.Image:
    """One image from ``embeds`` (1, L, D) [+ pooled (1, P)] with the pipeline as configured."""
    kwargs = embeds.pipeline_kwargs(dtype=pipe.unet.dtype)
    kwargs = {k: v.to(pipe.device) for k, v in kwargs.items()}
    return pipe(**kwargs, height=resolution, width=resolution, guidance_scale=guidance_scale,
                num_inference_steps=num_inference_steps, generator=seeded_generator(seed)).images[0]


def generate_sweep(pipe, e_tgt: PromptEmbeds, e_opt: PromptEmbeds, *, etas: list[float], seeds: list[int],
                   guidance_scale: float, num_inference_steps: int, resolution: int | None = None,
                   show_progress: bool = True) -> dict[tuple[float, int], Image.Image]:
    """{(η, seed): image} for ē = η·e_tgt + (1−η)·e_opt over every η and seed."""
    images = {}
    pairs = [(eta, seed) for eta in etas for seed in seeds]
    for eta, seed in tqdm(pairs, desc="C: generate", disable=not show_progress):
        images[(eta, seed)] = generate_image(pipe, interpolate(e_tgt, e_opt, eta), seed=seed,
                                             guidance_scale=guidance_scale,
                                             num_inference_steps=num_inference_steps, resolution=resolution)
    return images


def image_name(eta: float, seed: int) -> str:
    return f"eta_{eta:.2f}_seed_{seed}.png"
