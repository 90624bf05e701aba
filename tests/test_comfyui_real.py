"""The "Load Imagic Edit" node and an artifact's workflow in a real ComfyUI (scripts/check_comfyui.py's checks).

Skipped unless COMFYUI_PATH names a ComfyUI checkout that imports in this interpreter (ComfyUI's
requirements installed beside this package's; see scripts/check_comfyui.py for the setup):

    COMFYUI_PATH=/path/to/ComfyUI python -m pytest -q -m comfyui tests/test_comfyui_real.py

ComfyUI loads published architectures only, not the tests' tiny models nor the bundled shapes model, so
these tests build a random-weight SD 1.5 (1.7 GB in a temporary folder, fp16) and a small artifact for it
with this package's own code (64 px, 4 steps); a few minutes and about 10 GB of memory on a CPU.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import check_comfyui  # noqa: E402

pytestmark = pytest.mark.comfyui

COMFYUI = os.environ.get("COMFYUI_PATH")


@pytest.fixture(scope="module")
def comfy():
    if not COMFYUI or not (Path(COMFYUI) / "nodes.py").is_file():
        pytest.skip("COMFYUI_PATH does not name a ComfyUI checkout")
    try:
        return check_comfyui.start_comfyui(COMFYUI)
    except ImportError as e:  # ComfyUI's requirements are not installed in this interpreter
        pytest.skip(f"ComfyUI at {COMFYUI} does not import here: {e}")


@pytest.fixture(scope="module")
def sd15(comfy, tmp_path_factory):
    work = tmp_path_factory.mktemp("comfyui-real")
    model = check_comfyui.make_sd15(work / "sd15-random", COMFYUI)
    artifact = check_comfyui.make_artifact(work / "artifact", model, resolution=64, steps=4)
    return model, artifact


@pytest.fixture(scope="module")
def loaded(comfy, sd15):
    model, _ = sd15
    return check_comfyui.load_model(comfy, model)


def test_comfyui_loads_the_node_with_its_custom_node_loader(comfy):
    result = check_comfyui.check_node(comfy)
    assert result["in_mappings"] and result["ours"], result
    assert comfy["nodes"].NODE_DISPLAY_NAME_MAPPINGS["LoadImagicEdit"] == "Load Imagic Edit"
    spec = comfy["node"].INPUT_TYPES()["required"]
    assert spec["model"][0] == "MODEL" and spec["artifact_folder"][0] == "STRING"


def test_comfyui_cannot_load_the_bundled_model(comfy):
    """What comfyui/README.md says: ComfyUI's loaders know published architectures only."""
    from imagic_lora.config import BUNDLED_MODEL
    with pytest.raises(RuntimeError, match="Could not detect model type"):
        check_comfyui.load_model(comfy, BUNDLED_MODEL)


def test_every_lora_key_loads_and_comfyui_patches_the_weights_diffusers_fuses(comfy, sd15, loaded):
    model, artifact = sd15
    result = check_comfyui.check_lora(comfy, loaded[0], artifact, model)
    assert result["keys_not_loaded"] == 0, result["not_loaded"]
    assert result["weights_patched"] == result["lora_modules"] > 0
    assert result["unmapped"] == 0 and result["compared"] == result["unet_tensors"]
    assert result["max_abs_lora_delta"] > 1e-3  # the LoRA changes the weights: the comparison is not trivial
    assert result["max_abs_diff_touched"] <= check_comfyui.WEIGHT_TOLERANCE, result
    assert result["max_abs_diff_untouched"] == 0.0, result
    assert result["ok"], result


def test_the_node_conditioning_is_imagics_interpolation_and_conditioning_averages(comfy, sd15, loaded):
    _, artifact = sd15
    result = check_comfyui.check_conditioning(comfy, loaded[0], artifact)
    config = json.loads((artifact / "imagic_config.json").read_text())
    assert result["eta"] == config["picked"]["eta"] and result["seed"] == config["picked"]["seed"]
    assert result["node_vs_diffusers"] <= check_comfyui.CONDITIONING_TOLERANCE, result
    assert result["conditioning_average_vs_node"] <= check_comfyui.CONDITIONING_TOLERANCE, result
    assert result["ok"], result


def test_the_artifacts_workflow_runs_in_comfyuis_executor_and_draws_the_edit(comfy, sd15, loaded, tmp_path):
    _, artifact = sd15
    result = check_comfyui.run_workflow(comfy, artifact, tmp_path)
    assert result["valid"], (result["validation_error"], result["node_errors"])
    assert result["ok"], result["errors"]
    image = check_comfyui.compare_images(result["images"][0], artifact / "images" / "edit.png")
    assert image["size"] == image["reference_size"] == [64, 64]
    # Same weights, noise, timesteps and guidance: ComfyUI's DDIM draws the image diffusers drew, up
    # to its own sampler arithmetic.
    assert image["mean_abs_diff"] < MAX_MEAN_IMAGE_DIFF, image


#: Mean |ComfyUI - diffusers| (of 255) allowed between the workflow's image and images/edit.png.
MAX_MEAN_IMAGE_DIFF = 8.0


def test_the_check_script_runs_all_checks_and_exits_zero(comfy, sd15, tmp_path, capsys):
    model, artifact = sd15
    code = check_comfyui.main(["--comfyui", COMFYUI, "--artifact", str(artifact), "--model", str(model),
                               "--output", str(tmp_path / "out"), "--json", str(tmp_path / "figures.json")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["lora"]["keys_not_loaded"] == 0 and figures["workflow"]["ok"]
    assert "all ComfyUI checks passed" in printed
    assert torch.__version__  # the environment that ran it
