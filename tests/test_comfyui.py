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
from PIL import Image
from safetensors.torch import load_file

from conftest import ROOT
from test_cli import run_inprocess

sys.path.insert(0, str(ROOT / "comfyui"))
from imagic_lora_comfy import NODE_CLASS_MAPPINGS, imagic_edit  # noqa: E402

#: ComfyUI's core nodes a workflow may use here, and their outputs.
OUTPUTS = {"DiffusersLoader": 3, "CheckpointLoaderSimple": 3, "LoadImagicEdit": 6, "CLIPTextEncode": 1,
           "ConditioningZeroOut": 1, "EmptyLatentImage": 1, "VAEEncode": 1, "KSampler": 1, "KSamplerAdvanced": 1,
           "VAEDecode": 1, "SaveImage": 0}


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


def assert_links_are_valid(graph: dict) -> None:
    for node_id, node in graph.items():
        assert node["class_type"] in OUTPUTS, node
        for value in node["inputs"].values():
            if isinstance(value, list):  # a link: [source node, output index]
                source, index = value
                assert source in graph and index < OUTPUTS[graph[source]["class_type"]], (node_id, value)


def test_each_artifact_carries_a_valid_comfyui_workflow_of_its_settings(artifact):
    graph = json.loads((artifact / "comfyui_workflow.json").read_text())
    config = json.loads((artifact / "imagic_config.json").read_text())
    assert_links_are_valid(graph)
    assert NODE_CLASS_MAPPINGS["LoadImagicEdit"].RETURN_TYPES[5] == "IMAGE"
    assert len(NODE_CLASS_MAPPINGS["LoadImagicEdit"].RETURN_TYPES) == OUTPUTS["LoadImagicEdit"]
    sampler = next(n["inputs"] for n in graph.values() if n["class_type"] == "KSampler")
    edit = next(n["inputs"] for n in graph.values() if n["class_type"] == "LoadImagicEdit")
    assert (edit["eta"], sampler["seed"]) == (config["picked"]["eta"], config["picked"]["seed"])
    assert (sampler["steps"], sampler["cfg"]) == (config["num_inference_steps"], config["guidance_scale"])
    assert (sampler["sampler_name"], sampler["scheduler"]) == ("ddim", "ddim_uniform")
    assert edit["artifact_folder"] == str(artifact)
    assert not any(n["class_type"] == "ConditioningZeroOut" for n in graph.values())  # SD, not SDXL
    assert config["picked"]["strength"] == 1.0 and sampler["denoise"] == 1.0  # from pure noise: an empty latent
    assert graph[sampler["latent_image"][0]]["class_type"] == "EmptyLatentImage"


@pytest.mark.parametrize("steps,strength,start", [(20, 0.8, 4), (25, 0.7, 8), (10, 0.75, 3)])
def test_a_pick_at_strength_below_1_draws_in_comfyui_from_the_input_image(artifact, steps, strength, start):
    """The run drew the picked image from its input noised to the strength (img2img: the last int(steps x strength)
    steps of the steps-step schedule): the workflow encodes the node's input image and samples from that step of
    the same schedule, also where steps x strength is not whole."""
    from imagic_lora.comfyui import workflow

    config = json.loads((artifact / "imagic_config.json").read_text())
    config["num_inference_steps"] = steps
    config["picked"] = {**config["picked"], "strength": strength}
    graph = workflow(config, str(artifact))
    assert_links_are_valid(graph)
    assert not any(n["class_type"] in ("KSampler", "EmptyLatentImage") for n in graph.values())
    sampler = next(n["inputs"] for n in graph.values() if n["class_type"] == "KSamplerAdvanced")
    node = next(k for k, n in graph.items() if n["class_type"] == "LoadImagicEdit")
    assert graph[sampler["latent_image"][0]] == {"class_type": "VAEEncode", "inputs": {"pixels": [node, 5],
                                                                                       "vae": ["1", 2]}}
    assert (sampler["steps"], sampler["start_at_step"], sampler["end_at_step"]) == (steps, start, steps)
    assert (sampler["add_noise"], sampler["noise_seed"], sampler["return_with_leftover_noise"]) == (
        "enable", config["picked"]["seed"], "disable")
    assert (sampler["cfg"], sampler["positive"], sampler["negative"]) == (config["guidance_scale"], [node, 1], ["3", 0])

    image = imagic_edit.input_image(artifact, config)  # what the node's sixth output carries
    png = torch.tensor(list(Image.open(artifact / "images" / "input.png").convert("RGB").getdata()))
    assert image.shape == (1, config["resolution"], config["resolution"], 3)
    assert torch.allclose(image.reshape(-1, 3) * 255, png.float(), atol=1e-3)


def test_the_node_refuses_an_artifact_without_its_input_image_only_when_the_edit_needs_it(tmp_path):
    config = {"resolution": 8, "picked": {"eta": 0.8, "seed": 1, "strength": 1.0}}
    assert torch.equal(imagic_edit.input_image(tmp_path, config), torch.zeros(1, 8, 8, 3))
    config["picked"]["strength"] = 0.8
    with pytest.raises(ValueError, match="input.png is missing"):
        imagic_edit.input_image(tmp_path, config)

def test_the_node_and_the_library_read_the_recommended_strength_alike():
    from imagic_lora.artifact import recommended_strength
    for config, expected in (({"strength": [0.8, 1.0]}, 0.8), ({}, 1.0), ({"strength": None}, 1.0),
                             ({"strength": 0.9}, 0.9), ({"picked": {"strength": None}, "strength": [0.7]}, 0.7),
                             ({"picked": {"eta": 1.0, "seed": 0}, "strength": [1.0, 0.8]}, 1.0),
                             ({"picked": {"strength": 0.8}, "strength": [1.0, 0.8]}, 0.8)):
        assert imagic_edit.recommended_strength(config) == recommended_strength(config) == expected, config
