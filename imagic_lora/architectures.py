"""Stable Diffusion 1.5, 2.1 and XL as their published configs describe them: built with random weights
(speed and memory do not depend on the weights) or written as a folder of configs alone (what a plan or
a dry run reads). No weights are downloaded; the images such a model draws mean nothing."""

from __future__ import annotations

import json
from pathlib import Path

CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
OPENCLIP_H = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                  num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=1024)
OPENCLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                     num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
              latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
SD21_UNET = dict(SD15_UNET, sample_size=96, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                 use_linear_projection=True, upcast_attention=True)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=[320, 640, 1280], cross_attention_dim=2048, attention_head_dim=[5, 10, 20],
                 transformer_layers_per_block=[1, 2, 10], use_linear_projection=True,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 steps_offset=1, set_alpha_to_one=False, skip_prk_steps=True)
MODELS = {"sd15": ("sd", SD15_UNET, [CLIP_L], "epsilon", 512),
          "sd21": ("sd", SD21_UNET, [OPENCLIP_H], "v_prediction", 768),
          "sdxl": ("sdxl", SDXL_UNET, [CLIP_L, OPENCLIP_BIGG], "epsilon", 1024)}


def build_pipeline(model: str, tiny: bool, weight_dtype, device, tmp: Path):
    """A pipeline of the real (or tiny) architecture with random weights."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .models import freeze
    from .tiny import TINY_WORDS, make_tiny_sd, make_tiny_sdxl, sd_scheduler
    from .vocabulary import write_word_tokenizer

    family, unet_config, encoders, prediction_type, resolution = MODELS[model]
    if tiny:
        folder = (make_tiny_sdxl if family == "sdxl" else make_tiny_sd)(tmp / "tiny", **(
            {} if family == "sdxl" else {"prediction_type": prediction_type}))
        from .models import load_pipeline
        return load_pipeline(str(folder), weight_dtype=weight_dtype), 32
    tokenizer = write_word_tokenizer(tmp / "tokenizer", list(TINY_WORDS))  # content is irrelevant to speed
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the accelerator: minutes faster than on the CPU
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**SD_VAE)
        text_encoders = [CLIPTextModel(CLIPTextConfig(**encoders[0]))]
        if family == "sdxl":
            text_encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**encoders[1])))
    if family == "sdxl":
        from diffusers import EulerDiscreteScheduler
        scheduler = EulerDiscreteScheduler(**{k: v for k, v in SCHEDULER.items() if k not in (
            "set_alpha_to_one", "skip_prk_steps")}, prediction_type=prediction_type)
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoders[0], text_encoder_2=text_encoders[1],
                                         tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    else:
        scheduler = sd_scheduler(prediction_type) if prediction_type == "epsilon" else PNDMScheduler(
            **SCHEDULER, prediction_type=prediction_type)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoders[0], tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.to("cpu", dtype=weight_dtype)
    return freeze(pipe), resolution


def write_configs(model: str, folder: Path) -> Path:
    """A model folder of ``model``'s published configs alone, no weights: enough for ``--dry_run`` (which
    reads configs only) and for the plan. The tokenizer is the project's small word tokenizer (its
    vocabulary does not matter to a plan), left open so the folder reads as a real checkpoint."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from .tiny import TINY_WORDS, sd_scheduler
    from .vocabulary import VOCABULARY_FILE, write_word_tokenizer

    family, unet_config, encoders, prediction_type, resolution = MODELS[model]
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        UNet2DConditionModel(**unet_config).save_config(folder / "unet")
        AutoencoderKL(**SD_VAE).save_config(folder / "vae")
    names = ["text_encoder", "text_encoder_2"][:len(encoders)]
    for name, encoder in zip(names, encoders):
        CLIPTextConfig(**encoder).save_pretrained(folder / name)
        write_word_tokenizer(folder / name.replace("text_encoder", "tokenizer"), list(TINY_WORDS))
        (folder / name.replace("text_encoder", "tokenizer") / VOCABULARY_FILE).unlink()
    if family == "sdxl":
        from diffusers import EulerDiscreteScheduler
        scheduler = EulerDiscreteScheduler(**{k: v for k, v in SCHEDULER.items() if k not in (
            "set_alpha_to_one", "skip_prk_steps")}, prediction_type=prediction_type)
        index = {"_class_name": "StableDiffusionXLPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
                 "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                 "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
                 "scheduler": ["diffusers", "EulerDiscreteScheduler"], "force_zeros_for_empty_prompt": True}
    else:
        scheduler = sd_scheduler(prediction_type)
        index = {"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
                 "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"],
                 "safety_checker": [None, None], "feature_extractor": [None, None],
                 "requires_safety_checker": False}
    scheduler.save_config(folder / "scheduler")
    index.update(unet=["diffusers", "UNet2DConditionModel"], vae=["diffusers", "AutoencoderKL"])
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder
