"""The artifact's ComfyUI workflow: the graph that draws its edit with the "Load Imagic Edit" node.

Written into every artifact as ``comfyui_workflow.json``, in ComfyUI's API format (load it with
"Workflow > Open" or queue it through ComfyUI's API). It carries the edit's settings: the eta and seed the
run picked, the steps, the guidance and the nearest ComfyUI sampler, and where the drawing started: an empty
latent for strength 1.0, else the node's input image through VAEEncode, sampled by KSamplerAdvanced from the
step diffusers' img2img starts at. ComfyUI's samplers are its own, so the image is the same edit, not the same
pixels as images/edit.png.
"""

from __future__ import annotations

from pathlib import Path

from .artifact import recommended, recommended_strength
from .config import BUNDLED_MODELS, denoising_steps

#: Step C's samplers in ComfyUI's names (sampler, scheduler); PNDM has no ComfyUI counterpart.
SAMPLERS = {"DDIMScheduler": ("ddim", "ddim_uniform"), "DPMSolverMultistepScheduler": ("dpmpp_2m", "normal"),
            "EulerDiscreteScheduler": ("euler", "normal"), "EulerAncestralDiscreteScheduler": ("euler_ancestral",
                                                                                              "normal")}


def workflow(config: dict, artifact_folder: str) -> dict:
    """A ComfyUI API-format graph: the base model, the edit's LoRA and conditioning, KSampler (KSamplerAdvanced from
    the input when the pick's strength is below 1), save."""
    eta, seed = recommended(config)
    strength = min(recommended_strength(config), 1.0)
    steps = int(config["num_inference_steps"])
    # diffusers' img2img runs the last int(steps x strength) steps of the steps-step schedule. KSamplerAdvanced
    # can start at that step exactly; KSampler's denoise rebuilds a schedule of int(k / d) steps, which is
    # another schedule whenever steps x strength is not whole.
    start = steps - denoising_steps(steps, strength)
    side = int(config["resolution"])
    base = str(config.get("base_model", config["pretrained_model_name_or_path"]))
    if base in BUNDLED_MODELS or Path(base).is_dir():
        # A diffusers folder: put (or link) it into ComfyUI/models/diffusers/.
        loader = {"class_type": "DiffusersLoader", "inputs": {"model_path": Path(base).name}}
    else:  # a hub checkpoint: its single-file .safetensors in ComfyUI/models/checkpoints/
        loader = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"{base.split('/')[-1]}.safetensors"}}
    sampler, scheduler = SAMPLERS.get(config.get("scheduler_class"), ("euler", "normal"))
    graph = {
        "1": loader,
        "2": {"class_type": "LoadImagicEdit", "inputs": {"model": ["1", 0], "artifact_folder": artifact_folder,
                                                         "eta": eta, "strength": 1.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": side, "height": side, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["2", 1], "negative": ["3", 0], "latent_image": ["5", 0], "seed": seed,
            "steps": steps, "cfg": float(config["guidance_scale"]),
            "sampler_name": sampler, "scheduler": scheduler, "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "imagic_edit"}},
    }
    if start > 0:  # strength below 1: from the input noised to that share of the schedule (img2img)
        graph["5"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 5], "vae": ["1", 2]}}
        sampler_inputs = {k: v for k, v in graph["6"]["inputs"].items() if k not in ("seed", "denoise")}
        graph["6"] = {"class_type": "KSamplerAdvanced", "inputs": {
            **sampler_inputs, "add_noise": "enable", "noise_seed": seed, "start_at_step": start,
            "end_at_step": steps, "return_with_leftover_noise": "disable"}}
    if config.get("family") == "sdxl":  # diffusers' SDXL guides against zeros for an empty negative prompt
        graph["4"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}}
        graph["6"]["inputs"]["negative"] = ["4", 0]
    return dict(sorted(graph.items()))
