"""The ComfyUI node package (comfyui/imagic_lora_comfy) and the workflow each artifact carries.

CI has no ComfyUI: it tests the node's own conversions and the workflow file. With a ComfyUI checkout
named by COMFYUI_PATH (a development machine), the last test loads the node as ComfyUI does and checks,
against diffusers, the weights ComfyUI patches and the conditioning it gets:

    COMFYUI_PATH=/path/to/ComfyUI python -m pytest -q tests/test_comfyui.py -m comfyui
(ComfyUI's own requirements installed in the environment that runs it).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from test_cli import run_inprocess

sys.path.insert(0, str(ROOT / "comfyui"))
from imagic_lora_comfy import NODE_CLASS_MAPPINGS, imagic_edit  # noqa: E402

#: ComfyUI's core nodes a workflow may use here, and their outputs.
OUTPUTS = {"DiffusersLoader": 3, "CheckpointLoaderSimple": 3, "LoadImagicEdit": 5, "CLIPTextEncode": 1,
           "ConditioningZeroOut": 1, "EmptyLatentImage": 1, "KSampler": 1, "VAEDecode": 1, "SaveImage": 0}


@pytest.fixture(scope="module")
def artifact(tiny_sd, input_png, tmp_path_factory):
    out = tmp_path_factory.mktemp("comfy") / "edit"
    assert run_inprocess(tiny_sd, input_png, out, "--num_seeds", "2", "--etas", "0.6", "1.0") == 0
    return out


def test_the_node_reads_the_artifact_into_comfyui_conditionings(artifact):
    loaded = imagic_edit.read_artifact(artifact)
    embeds = load_file(artifact / "imagic_embeds.safetensors")
    at_eta, target, optimized = imagic_edit.edit_conditionings(loaded, 0.6)
    assert torch.equal(target[0][0], embeds["target_prompt_embeds"]) and target[0][1] == {}
    assert torch.equal(optimized[0][0], embeds["optimized_prompt_embeds"])
    assert torch.allclose(at_eta[0][0], 0.6 * embeds["target_prompt_embeds"] + 0.4 * embeds["optimized_prompt_embeds"])
    config = json.loads((artifact / "imagic_config.json").read_text())
    assert imagic_edit.recommended(config) == (config["picked"]["eta"], config["picked"]["seed"])
    assert set(NODE_CLASS_MAPPINGS) == {"LoadImagicEdit"}
    spec = NODE_CLASS_MAPPINGS["LoadImagicEdit"].INPUT_TYPES()["required"]
    assert set(spec) == {"model", "artifact_folder", "eta", "strength"}


def test_sdxl_conditionings_carry_the_pooled_output_and_the_size(tmp_path):
    config = {"resolution": 1024, "family": "sdxl"}
    artifact = {"config": config, "target": torch.ones(1, 77, 8), "optimized": torch.zeros(1, 77, 8),
                "target_pooled": torch.ones(1, 4), "optimized_pooled": torch.zeros(1, 4)}
    at_eta, target, _ = imagic_edit.edit_conditionings(artifact, 0.25)
    extras = at_eta[0][1]
    assert torch.allclose(extras["pooled_output"], torch.full((1, 4), 0.25))
    assert (extras["width"], extras["height"], extras["target_width"], extras["crop_w"]) == (1024, 1024, 1024, 0)
    assert torch.equal(target[0][1]["pooled_output"], torch.ones(1, 4))


def test_each_artifact_carries_a_valid_comfyui_workflow_of_its_settings(artifact):
    graph = json.loads((artifact / "comfyui_workflow.json").read_text())
    config = json.loads((artifact / "imagic_config.json").read_text())
    for node_id, node in graph.items():
        assert node["class_type"] in OUTPUTS, node
        for value in node["inputs"].values():
            if isinstance(value, list):  # a link: [source node, output index]
                source, index = value
                assert source in graph and index < OUTPUTS[graph[source]["class_type"]], (node_id, value)
    sampler = next(n["inputs"] for n in graph.values() if n["class_type"] == "KSampler")
    edit = next(n["inputs"] for n in graph.values() if n["class_type"] == "LoadImagicEdit")
    assert (edit["eta"], sampler["seed"]) == (config["picked"]["eta"], config["picked"]["seed"])
    assert (sampler["steps"], sampler["cfg"]) == (config["num_inference_steps"], config["guidance_scale"])
    assert (sampler["sampler_name"], sampler["scheduler"]) == ("ddim", "ddim_uniform")
    assert edit["artifact_folder"] == str(artifact)
    assert not any(n["class_type"] == "ConditioningZeroOut" for n in graph.values())  # SD, not SDXL
