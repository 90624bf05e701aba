"""GPU smoke tests: fp16 and bf16 end to end for SD and SDXL, and a bf16 resume (tiny models on CUDA).

Skipped without CUDA. On a GPU machine: ``python -m pytest -q -m gpu`` (scripts/gpu_check.sh runs them
with the GPU benchmark).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import imagic_lora.cli as cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

PROMPT = "a large blue square on a gray background"
FAST = ["--emb_train_steps", "6", "--max_train_steps", "6", "--num_seeds", "2", "--etas", "0", "0.8",
        "--num_inference_steps", "4", "--checkpointing_steps", "3"]


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    from imagic_lora.tiny import make_tiny_sdxl
    return make_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "model")


def edit(model, image, out, *extra):
    return cli.main(["--pretrained_model_name_or_path", str(model), "--input_image", str(image), "--target_prompt",
                     PROMPT, "--output_dir", str(out), *FAST, *extra])


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_an_edit_runs_end_to_end_on_the_gpu(tiny_sd, tiny_sdxl, input_png, tmp_path, precision, family):
    model = tiny_sd if family == "sd" else tiny_sdxl
    assert edit(model, input_png, tmp_path / "e", "--mixed_precision", precision) == 0
    config = json.loads((tmp_path / "e" / "imagic_config.json").read_text())
    assert config["device_type"] == "cuda" and config["mixed_precision"] == precision
    assert config["weight_dtype"] == {"fp16": "float16", "bf16": "bfloat16"}[precision]
    assert np.isfinite(config["loss_B"]["last"]) and config["memory"]["peak_allocated_gib"] > 0
    assert config["plan"]["device"].startswith("cuda") and config["plan"]["tf32"] is True
    image = np.asarray(Image.open(tmp_path / "e" / "images" / "edit.png"))
    assert image.std() > 0  # not a blank (NaN) image


def test_the_gpu_defaults_are_bf16_and_tf32(tiny_sd, input_png, tmp_path):
    assert edit(tiny_sd, input_png, tmp_path / "e") == 0
    config = json.loads((tmp_path / "e" / "imagic_config.json").read_text())
    assert config["mixed_precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert config["allow_tf32"] is True


def test_a_bf16_resume_gives_the_uninterrupted_result(tiny_sd, input_png, tmp_path, monkeypatch):
    """Stopped after step B's checkpoint at step 3 of 6 (on the GPU: noise drawn ahead in chunks, the
    optimiser and generator states restored), the resumed run ends where the straight one does."""
    from imagic_lora.checkpoint import CheckpointStore
    assert edit(tiny_sd, input_png, tmp_path / "straight", "--mixed_precision", "bf16") == 0
    real = CheckpointStore.save

    def crash_after_step_3(self, name, payload):
        folder = real(self, name, payload)
        if name == "B-step-000003":
            raise RuntimeError("simulated crash in step B")
        return folder
    monkeypatch.setattr(CheckpointStore, "save", crash_after_step_3)
    with pytest.raises(RuntimeError):
        edit(tiny_sd, input_png, tmp_path / "resumed", "--mixed_precision", "bf16")
    monkeypatch.undo()
    assert edit(tiny_sd, input_png, tmp_path / "resumed", "--mixed_precision", "bf16", "--resume") == 0
    record = json.loads((tmp_path / "resumed" / "imagic_config.json").read_text())
    assert record["resumed_from_step_B"] == 3
    for name in ("pytorch_lora_weights.safetensors", "imagic_embeds.safetensors"):
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "resumed" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_fused_lora_on_the_gpu_keeps_its_copy_there_and_restores_bit_for_bit(tiny_sd, monkeypatch):
    from imagic_lora import lora
    from imagic_lora.models import load_pipeline
    pipe = load_pipeline(str(tiny_sd), weight_dtype=torch.float16).to("cuda")
    lora.add_lora(pipe.unet, rank=4, alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"], seed=0,
                  init_lora_weights=False)
    weights = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    kept = []
    choose = lora.copy_device
    monkeypatch.setattr(lora, "copy_device", lambda *a: kept.append(choose(*a)) or kept[-1])
    with lora.fused_lora(pipe):
        assert any(not torch.equal(p, weights[n]) for n, p in pipe.unet.named_parameters())
    assert kept and kept[0].type == "cuda"  # a tiny UNet's copy fits on any card
    assert all(torch.equal(p, weights[n]) for n, p in pipe.unet.named_parameters())


def test_the_gpu_speed_levers_give_the_same_edit(tiny_sd, input_png, tmp_path, strict_compile):
    """torch.compile (with CUDA graphs), channels-last and cuDNN's benchmark mode change the edit by rounding
    only: the same losses to bf16's precision and a finite image, compiled throughout (never falling back to
    eager at the recompile limit)."""
    assert edit(tiny_sd, input_png, tmp_path / "plain", "--mixed_precision", "bf16") == 0
    assert edit(tiny_sd, input_png, tmp_path / "fast", "--mixed_precision", "bf16", "--torch_compile",
                "reduce-overhead", "--channels_last", "--cudnn_benchmark") == 0
    plain, fast = (json.loads((tmp_path / k / "imagic_config.json").read_text()) for k in ("plain", "fast"))
    assert fast["torch_compile"] == "reduce-overhead" and fast["channels_last"] and fast["cudnn_benchmark"]
    for phase in ("loss_A", "loss_B"):
        assert fast[phase]["last"] == pytest.approx(plain[phase]["last"], rel=0.1, abs=1e-3)
    image = np.asarray(Image.open(tmp_path / "fast" / "images" / "edit.png"))
    assert image.std() > 0
