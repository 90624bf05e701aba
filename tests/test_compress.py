"""The saved LoRA: truncation to a budget, and every client reading each module's update as the file means it."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from imagic_lora.compress import delta, kept_energy, lora_parameters, truncate
from imagic_lora.config import LORA_TARGET_PRESETS
from imagic_lora.lora import add_lora, kohya_state_dict


@pytest.fixture(scope="module")
def trained(tiny_sd):
    """A kohya-format adapter with both factors random (a trained adapter's stand-in: no zero B)."""
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)
    add_lora(pipe.unet, rank=8, alpha=8, target_modules=list(LORA_TARGET_PRESETS["attn_ff_conv"]), seed=0,
             init_lora_weights=False)
    return kohya_state_dict(pipe.unet, 8.0)


def test_truncation_keeps_the_budget_and_the_most_energy(trained):
    half = truncate(trained, 0.5)
    assert lora_parameters(half) <= 0.5 * lora_parameters(trained)
    ranks = {k: v.shape[0] for k, v in half.items() if k.endswith(".lora_down.weight")}
    assert len(set(ranks.values())) > 1  # the budget falls unevenly: ranks differ per module
    assert len({float(v) for k, v in half.items() if k.endswith(".alpha")}) == 1
    assert 0.5 < kept_energy(trained, half) < 1
    whole = truncate(trained, 1.0, dtype=torch.float32)
    assert kept_energy(trained, whole) == pytest.approx(1.0, abs=1e-6)
    for key in (k[: -len(".lora_down.weight")] for k in trained if k.endswith(".lora_down.weight")):
        assert torch.allclose(delta(whole, key), delta(trained, key), atol=1e-6)


def test_diffusers_applies_every_modules_update_as_the_file_means_it(trained, tiny_sd, tmp_path):
    """Ranks that differ per module with one alpha: diffusers' fused weights move by (alpha / rank) up down
    exactly where the file names a module, and nowhere else. (With an alpha per module, diffusers built a
    peft alpha_pattern whose attention keys matched nothing: those modules were scaled wrong.)"""
    saved = truncate(trained, 0.5, dtype=torch.float32)
    save_file(saved, tmp_path / "pytorch_lora_weights.safetensors")
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(str(tmp_path))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    fused = pipe.unet.state_dict()
    modules = {k[: -len(".lora_down.weight")] for k in saved if k.endswith(".lora_down.weight")}
    attention = [m for m in modules if "_attn" in m]
    assert len({saved[f"{m}.lora_down.weight"].shape[0] for m in attention}) > 1
    checked = 0
    for name, weight in base.items():
        kohya = "lora_unet_" + name.removesuffix(".weight").replace(".", "_")
        change = (fused[name].double() - weight.double()).flatten(1) if weight.dim() > 1 else None
        if name.endswith(".weight") and kohya in modules:
            expected = delta(saved, kohya)
            assert torch.allclose(change, expected, atol=1e-5 * float(expected.abs().max())), name
            checked += 1
        else:
            assert torch.equal(fused[name], weight), name
    assert checked == len(modules)
