"""The GPU speed levers of issue 25 (torch.compile, channels-last, cuDNN benchmark), on the CPU: each is
applied as asked, leaves the module that peft, fuse_lora and the artifact act on in place, and changes an
edit by rounding only. Their speed is measured by scripts/benchmark.py on a GPU (docs/BENCHMARKS.md)."""

from __future__ import annotations

import json

import pytest
import torch

import imagic_lora.cli as cli
from imagic_lora.config import ROUNDING_ONLY
from imagic_lora.models import load_pipeline, prepare_unet

PROMPT = "a large blue square on a gray background"
FAST = ["--emb_train_steps", "4", "--max_train_steps", "4", "--num_seeds", "2", "--etas", "0", "1.0",
        "--num_inference_steps", "3", "--train_batch_size", "2"]


def test_the_levers_are_applied_in_place(tiny_sd):
    pipe = load_pipeline(str(tiny_sd))
    keys = list(pipe.unet.state_dict())
    prepare_unet(pipe, "cpu", channels_last=True, compile_mode="default")
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert pipe.unet._compiled_call_impl is not None  # nn.Module.compile: the same module, its call compiled
    assert list(pipe.unet.state_dict()) == keys  # no "_orig_mod." prefix for the artifact to carry
    plain = load_pipeline(str(tiny_sd))
    prepare_unet(plain, "cpu")
    assert plain.unet._compiled_call_impl is None and plain.unet.conv_in.weight.is_contiguous()


def test_the_levers_change_no_setting_that_a_resume_compares():
    assert {"torch_compile", "channels_last", "cudnn_benchmark"} <= ROUNDING_ONLY


def test_an_unknown_compile_mode_is_refused_naming_the_flag(tiny_sd, input_png, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png),
                  "--target_prompt", PROMPT, "--output_dir", str(tmp_path / "e"), "--torch_compile", "fast"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "--torch_compile" in error and "'fast'" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_a_compiled_channels_last_edit_is_the_plain_one_to_rounding(tiny_sd, input_png, tmp_path, strict_compile):
    """Steps A and B, step C with the LoRA fused and the pick with it switched off, all through the compiled
    UNet (a new adapter and each batch shape recompile, within dynamo's limit: no silent fall back to eager):
    the same losses and text scores as the plain run."""
    def edit(out, *extra):
        assert cli.main(["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png),
                         "--target_prompt", PROMPT, "--output_dir", str(tmp_path / out), *FAST, *extra]) == 0
        return json.loads((tmp_path / out / "imagic_config.json").read_text())

    plain = edit("plain")
    fast = edit("fast", "--torch_compile", "default", "--channels_last", "--cudnn_benchmark")
    assert fast["torch_compile"] == "default" and fast["channels_last"] and fast["cudnn_benchmark"]
    for phase in ("loss_A", "loss_B"):
        for end in ("first", "last"):
            assert fast[phase][end] == pytest.approx(plain[phase][end], rel=1e-3)
    scores = [[c["text_score"] for c in run["picked"]["candidates"]] for run in (plain, fast)]
    assert len(scores[0]) == 2 and scores[1] == pytest.approx(scores[0], rel=1e-2, abs=1e-5)
    assert fast["work"] == plain["work"] and fast["work"]["B"]["unet_samples"] > 0  # the counter sees compiled calls
