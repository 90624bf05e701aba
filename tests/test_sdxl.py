"""SDXL on a tiny model built from configs: two text encoders, pooled embeddings, time ids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from diffusers import DDIMScheduler, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import load_file

from conftest import fixed_draw_loss
from imagic_lora.conditioning import encode_prompt, sdxl_time_ids
from imagic_lora.diffusion import encode_image_latents
from imagic_lora.embedding import optimize_embedding
from imagic_lora.images import load_image, pil_to_tensor
from imagic_lora.lora import sgm_module_name
from imagic_lora.models import load_pipeline, native_resolution, training_noise_scheduler
from imagic_lora.tiny import make_tiny_sdxl
from test_cli import FAST_DEFAULT_BATCH, run_inprocess


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    return make_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "model")


@pytest.fixture(scope="module")
def sdxl_edit(tiny_sdxl, input_png, tmp_path_factory):
    """An SDXL edit at the default --sample_batch_size (SDXL: one image per call)."""
    out = tmp_path_factory.mktemp("sdxl") / "edit"
    assert run_inprocess(tiny_sdxl, input_png, out, "--lora_target_modules", "attn_ff_conv",
                         fast=FAST_DEFAULT_BATCH) == 0
    assert json.loads((out / "imagic_config.json").read_text())["sample_batch_size"] == 1
    return out


@pytest.mark.parametrize("freeze_pooled", [False, True])
def test_step_a_optimises_sequence_and_pooled(tiny_sdxl, input_png, freeze_pooled):
    pipe = load_pipeline(str(tiny_sdxl))
    scheduler = training_noise_scheduler(pipe)
    latents = encode_image_latents(pipe.vae, pil_to_tensor(load_image(input_png, native_resolution(pipe))))
    e_tgt = encode_prompt(pipe, "a large blue square", "cpu")
    assert e_tgt.prompt_embeds.shape == (1, 77, 64) and e_tgt.pooled_prompt_embeds.shape == (1, 16)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    time_ids = sdxl_time_ids(32)
    e_opt, _ = optimize_embedding(pipe.unet, scheduler, latents, e_tgt, accelerator=Accelerator(cpu=True), steps=30,
                                  learning_rate=5e-2, batch_size=4, generator=torch.Generator().manual_seed(0),
                                  weight_dtype=torch.float32, add_time_ids=time_ids,
                                  optimize_pooled=not freeze_pooled)
    assert not torch.equal(e_opt.prompt_embeds, e_tgt.prompt_embeds)
    assert torch.equal(e_opt.pooled_prompt_embeds, e_tgt.pooled_prompt_embeds) == freeze_pooled
    loss = lambda e: fixed_draw_loss(pipe.unet, scheduler, latents, e, add_time_ids=time_ids)  # noqa: E731
    assert loss(e_opt) < loss(e_tgt)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())


def test_sdxl_artifact_holds_four_embeddings_and_names_sdxl(sdxl_edit):
    embeds = load_file(sdxl_edit / "imagic_embeds.safetensors")
    assert {k: tuple(v.shape) for k, v in embeds.items()} == {
        "target_prompt_embeds": (1, 77, 64), "optimized_prompt_embeds": (1, 77, 64),
        "target_pooled_prompt_embeds": (1, 16), "optimized_pooled_prompt_embeds": (1, 16)}
    config = json.loads((sdxl_edit / "imagic_config.json").read_text())
    assert config["family"] == "sdxl" and config["pipeline_class"] == "StableDiffusionXLPipeline"
    card = (sdxl_edit / "README.md").read_text()
    assert "StableDiffusionXLPipeline" in card and "pooled_prompt_embeds" in card and "- sdxl" in card
    kohya = load_file(sdxl_edit / "pytorch_lora_weights.safetensors")
    assert any(k.startswith("lora_unet_input_blocks_") for k in kohya)  # kohya's own SDXL (SGM) names
    assert not any("down_blocks" in k or "up_blocks" in k for k in kohya)


def test_stock_sdxl_pipeline_reproduces_the_script(sdxl_edit, tiny_sdxl):
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.load_lora_weights(str(sdxl_edit))
    pipe.fuse_lora()  # the script draws with the LoRA fused
    e = load_file(sdxl_edit / "imagic_embeds.safetensors")
    eta = 0.7
    mix = lambda name: eta * e["target_" + name] + (1 - eta) * e["optimized_" + name]  # noqa: E731
    image = pipe(prompt_embeds=mix("prompt_embeds"), pooled_prompt_embeds=mix("pooled_prompt_embeds"),
                 guidance_scale=3, num_inference_steps=4, generator=torch.Generator("cpu").manual_seed(12)).images[0]
    script_image = Image.open(sdxl_edit / "images" / "eta_0.70_seed_12.png")
    assert np.array_equal(np.asarray(image), np.asarray(script_image))


def test_sgm_block_names_invert_diffusers_mapping():
    """Block indices for a UNet with two layers per block (real SDXL), through diffusers' own
    SGM -> diffusers block mapping; ResNet inner names are checked end to end above."""
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    class Config:
        layers_per_block = 2
    cases = {"down_blocks.1.attentions.1.transformer_blocks.3.attn2.to_k": "input_blocks.5.1.transformer_blocks.3",
             "down_blocks.2.attentions.0.proj_in": "input_blocks.7.1.proj_in",
             "mid_block.attentions.0.proj_out": "middle_block.1.proj_out",
             "up_blocks.0.attentions.2.transformer_blocks.0.ff.net.2": "output_blocks.2.1.transformer_blocks.0",
             "up_blocks.1.attentions.0.transformer_blocks.1.attn1.to_out.0": "output_blocks.3.1.transformer_blocks.1",
             "down_blocks.0.resnets.1.conv2": "input_blocks.2.0.out_layers.3",
             "up_blocks.1.resnets.2.time_emb_proj": "output_blocks.5.0.emb_layers.1",
             "mid_block.resnets.1.conv1": "middle_block.2.in_layers.2"}
    for name, sgm_prefix in cases.items():
        sgm = sgm_module_name(name, 2)
        assert sgm.startswith(sgm_prefix), (name, sgm)
        if "resnets" in name:
            continue
        kohya = "lora_unet_" + sgm.replace(".", "_") + ".lora_down.weight"
        (mapped,) = _maybe_map_sgm_blocks_to_diffusers({kohya: 0}, Config())
        for sgm_word, diffusers_word in (("input_blocks", "down_blocks"), ("middle_block", "mid_block"),
                                         ("output_blocks", "up_blocks")):  # renamed later by diffusers
            mapped = mapped.replace(sgm_word, diffusers_word)
        assert mapped == "lora_unet_" + name.replace(".", "_") + ".lora_down.weight"
