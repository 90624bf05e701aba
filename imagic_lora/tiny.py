"""Tiny Stable-Diffusion-format models built from configs, for tests and plumbing.

Random weights: they exercise every code path (loading with ``from_pretrained``, training,
saving, stock-pipeline loading) in seconds on a CPU, and their images mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .vocabulary import write_word_tokenizer

#: Words the tiny models' tokenizer knows (the shapes world's, plus a few for tests).
TINY_WORDS = ("a photo of on background small large red green blue yellow white black gray "
              "circle square triangle dog cat sitting standing").split()

SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)


def sd_scheduler(prediction_type: str = "epsilon") -> PNDMScheduler:
    """SD 1.x's shipped scheduler: PNDM on the scaled-linear schedule. Its config also says
    ``clip_sample: false``, which the DDIM sampler built from it must inherit (latents are not
    in [-1, 1])."""
    scheduler = PNDMScheduler(**SD_SCHEDULER, prediction_type=prediction_type)
    scheduler.register_to_config(clip_sample=False)
    return scheduler


def tiny_text_encoder(tokenizer, hidden_size: int = 32, layers: int = 2, projection_dim: int | None = None):
    config = CLIPTextConfig(vocab_size=len(tokenizer.get_vocab()), hidden_size=hidden_size,
                            intermediate_size=2 * hidden_size, num_hidden_layers=layers, num_attention_heads=4,
                            max_position_embeddings=tokenizer.model_max_length,
                            projection_dim=projection_dim or hidden_size, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config)


def tiny_vae(latent_channels: int = 4) -> AutoencoderKL:
    """Downsamples by 2 (two blocks)."""
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=8, sample_size=32)


def tiny_unet(sample_size: int = 16, cross_attention_dim: int = 32) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=8)


def make_tiny_sd(folder: str | Path, *, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Write a tiny StableDiffusionPipeline (32 px images) to ``folder``; return the folder."""
    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = write_word_tokenizer(folder / "tokenizer", list(TINY_WORDS))
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(tokenizer), tokenizer=tokenizer, unet=tiny_unet(),
        scheduler=sd_scheduler(prediction_type),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def make_tiny_sdxl(folder: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny StableDiffusionXLPipeline (32 px images, two text encoders) to ``folder``."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = write_word_tokenizer(folder / "tokenizer", list(TINY_WORDS))
    tokenizer_2 = write_word_tokenizer(folder / "tokenizer_2", list(TINY_WORDS))
    text_encoder = tiny_text_encoder(tokenizer, hidden_size=32)
    config_2 = tiny_text_encoder(tokenizer_2, hidden_size=32, projection_dim=16).config
    text_encoder_2 = CLIPTextModelWithProjection(config_2)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), use_linear_projection=True,
        cross_attention_dim=64,  # 32 + 32: both encoders' hidden states, concatenated
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 16,  # time ids + the pooled embedding
        norm_num_groups=8)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
                                       prediction_type="epsilon")
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
