"""Check the "Load Imagic Edit" node and an artifact's ComfyUI workflow in a real ComfyUI checkout.

What it checks, with ComfyUI's own code (nothing of ComfyUI is faked):

1. ComfyUI's custom-node loading (``nodes.init_extra_nodes``) finds the node: ``LoadImagicEdit`` is in
   ``nodes.NODE_CLASS_MAPPINGS`` and comes from this repository's ``comfyui/imagic_lora_comfy``. (When the
   checkout's ``custom_nodes/`` has no ``imagic_lora_comfy``, this repository's ``comfyui/`` folder is added
   as an extra custom-node folder, as ``extra_model_paths.yaml`` can do; nothing is written into the checkout.)
2. ComfyUI's ``DiffusersLoader`` loads the base model (its parent folder is added to ComfyUI's
   ``diffusers`` model folders). ComfyUI recognises published architectures only (SD 1.x, 2.x, XL, ...):
   it cannot load the bundled shapes model nor the tests' tiny models (see comfyui/README.md); use
   ``--make-sd15`` for a random-weight SD 1.5 and an artifact made for it.
3. The node applies the artifact's LoRA through ``comfy.sd.load_lora_for_models``: every key of the file
   loads (ComfyUI logs "lora key not loaded" for any it drops), and the weights ComfyUI patches into its
   UNet (``ModelPatcher.patch_model``) equal diffusers' (``pipe.load_lora_weights(artifact);
   pipe.fuse_lora()``), tensor by tensor through ``comfy.utils.unet_to_diffusers``; every other weight
   is unchanged.
4. The CONDITIONING the node outputs at the picked eta equals ``eta * e_tgt + (1 - eta) * e_opt`` as the
   diffusers pipeline gets it (``imagic_lora.artifact.read_edit(...).embeds(eta)``), and ComfyUI's
   ConditioningAverage (to = target, from = optimized, strength = eta) gives the same tensor.
5. The artifact's ``comfyui_workflow.json`` passes ComfyUI's ``execution.validate_prompt`` and runs
   through ``execution.PromptExecutor`` (with a stub server that records messages); the image SaveImage
   writes is compared with the artifact's ``images/edit.png`` (mean absolute difference, and what
   ``imagic_lora.shapes.judge`` reads from each).

It prints the figures and exits 1 when a check fails.

Setup (a Python environment with ComfyUI's requirements and this package's; placeholders for paths):

    git clone https://github.com/comfyanonymous/ComfyUI /path/to/ComfyUI
    python -m venv /path/to/venv && . /path/to/venv/bin/activate
    pip install torch torchvision          # a matching pair: ComfyUI imports torchvision (torchaudio: optional)
    pip install -r /path/to/ComfyUI/requirements.txt   # the comfyui-frontend/-templates/-docs packages are not needed
    pip install -e /path/to/imagic-lora    # this package (diffusers, transformers, peft, safetensors)
    ln -s /path/to/imagic-lora/comfyui/imagic_lora_comfy /path/to/ComfyUI/custom_nodes/   # optional, see 1.

Run, on an artifact and its base model (a diffusers folder ComfyUI can load):

    python scripts/check_comfyui.py --comfyui /path/to/ComfyUI --artifact /path/to/artifact --model /path/to/model

or build a random-weight SD 1.5 (about 1.7 GB, fp16) and an artifact for it in a work folder, then check
them (a few minutes on a CPU; ``--resolution`` and ``--steps`` set the artifact's drawing):

    python scripts/check_comfyui.py --comfyui /path/to/ComfyUI --make-sd15 /path/to/work

The same checks run as tests: ``COMFYUI_PATH=/path/to/ComfyUI python -m pytest -m comfyui tests/test_comfyui_real.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import os
import re
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "comfyui" / "imagic_lora_comfy"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Largest |ComfyUI - diffusers| allowed on a LoRA-patched weight (both fp32: rounding of W + scale·up·down).
WEIGHT_TOLERANCE = 1e-5
#: ... on the conditioning (the same formula on the same fp32 tensors).
CONDITIONING_TOLERANCE = 1e-6
LORA_FILE = "pytorch_lora_weights.safetensors"


class _Records(logging.Handler):
    """Collects the log records ComfyUI emits while a block runs."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, containing: str) -> list[str]:
        return [r.getMessage() for r in self.records if containing in r.getMessage()]


class _Capture:
    def __enter__(self):
        self.handler = _Records()
        logging.getLogger().addHandler(self.handler)
        return self.handler

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self.handler)


# ----------------------------------------------------------------------------------------------
# 1. ComfyUI and the node


def start_comfyui(comfyui: str | Path) -> dict:
    """Import ComfyUI from its checkout (CPU unless CUDA is there) and load its nodes and custom nodes
    with its own loader. Returns {"nodes": module, "node_file": where LoadImagicEdit came from, ...}."""
    comfyui = Path(comfyui).resolve()
    if not (comfyui / "nodes.py").is_file() or not (comfyui / "comfy").is_dir():
        raise SystemExit(f"{comfyui} is not a ComfyUI checkout (no nodes.py and comfy/)")
    if str(comfyui) not in sys.path:
        sys.path.insert(0, str(comfyui))
    from comfy.cli_args import args
    if not torch.cuda.is_available():
        args.cpu = True  # as `python main.py --cpu`; set before comfy.model_management is imported
    import comfy.model_management  # noqa: F401
    import folder_paths
    import utils.extra_config  # noqa: F401  ComfyUI's utils package, before nodes.py puts comfy/ (comfy/utils.py) first
    import nodes

    linked = comfyui / "custom_nodes" / "imagic_lora_comfy"
    if "LoadImagicEdit" not in nodes.NODE_CLASS_MAPPINGS:
        if not linked.exists():
            folder_paths.add_model_folder_path("custom_nodes", str(NODE_DIR.parent))
        failed = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    else:
        failed = []
    node = nodes.NODE_CLASS_MAPPINGS.get("LoadImagicEdit")
    node_file = Path(inspect.getfile(node)).resolve() if node is not None else None
    return {"nodes": nodes, "node": node, "node_file": node_file, "linked": linked.exists(),
            "extras_failed": failed, "comfyui": comfyui}


def check_node(started: dict) -> dict:
    nodes, node, node_file = started["nodes"], started["node"], started["node_file"]
    ours = node_file is not None and node_file == (NODE_DIR / "__init__.py").resolve()
    result = {"in_mappings": node is not None, "node_file": str(node_file), "ours": ours,
              "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get("LoadImagicEdit"),
              "module": getattr(node, "RELATIVE_PYTHON_MODULE", None)}
    result["ok"] = bool(node is not None and ours)
    return result


# ----------------------------------------------------------------------------------------------
# 2. The base model through ComfyUI's DiffusersLoader


def load_model(started: dict, model: str | Path):
    """(MODEL, CLIP, VAE) of a diffusers folder, by ComfyUI's DiffusersLoader, as a workflow names it."""
    import folder_paths
    model = Path(model).resolve()
    folder_paths.add_model_folder_path("diffusers", str(model.parent))
    return started["nodes"].DiffusersLoader().load_checkpoint(model.name)


# ----------------------------------------------------------------------------------------------
# 3. The LoRA: keys and patched weights


def run_node(started: dict, model_patcher, artifact: str | Path, eta: float = -1.0, strength: float = 1.0):
    """The node's outputs and ComfyUI's log messages about LoRA keys while it ran."""
    with _Capture() as log:
        outputs = started["node"]().load(model_patcher, str(artifact), eta, strength)
    dropped = log.messages("lora key not loaded") + log.messages("NOT LOADED")
    return outputs, dropped


def diffusers_fused_unet(model: str | Path, artifact: str | Path) -> dict[str, torch.Tensor]:
    """The UNet weights diffusers draws with: ``load_lora_weights(artifact); fuse_lora()`` (fp32)."""
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(str(model), dtype=torch.float32)
    pipe.load_lora_weights(str(artifact), weight_name=LORA_FILE)
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # keeps the fused weights, drops the adapter modules: plain diffusers names
    state = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}
    del pipe
    return state


def file_deltas(lora: dict[str, torch.Tensor], shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """What the kohya file means, per diffusers weight: (alpha / rank) · up · down (fp64,
    ``imagic_lora.compress.delta``), for every module (``lora_unet_`` + the diffusers module path with "_" for
    "."; SD 1.x/2.x naming). A module that names no weight of ``shapes`` is left out (the caller counts it)."""
    from imagic_lora.compress import delta, modules

    names = {"lora_unet_" + k[: -len(".weight")].replace(".", "_"): k for k in shapes if k.endswith(".weight")}
    return {names[m]: delta(lora, m).reshape(shapes[names[m]]) for m in modules(lora) if m in names}


def check_lora(started: dict, model_patcher, artifact: str | Path, model: str | Path) -> dict:
    """Every LoRA key loaded; ComfyUI's patched UNet equal to the file's meaning (W + alpha/rank · up · down)
    and to diffusers' fused UNet, tensor by tensor; every other weight unchanged."""
    import comfy.utils
    from safetensors.torch import load_file

    lora = load_file(str(Path(artifact) / LORA_FILE))
    from imagic_lora.compress import modules as lora_modules

    modules = lora_modules(lora)
    (patched, *_), dropped = run_node(started, model_patcher, artifact)
    result = {"lora_keys": len(lora), "lora_modules": len(modules), "keys_not_loaded": len(dropped),
              "not_loaded": dropped[:10], "weights_patched": len(patched.patches)}

    fused = diffusers_fused_unet(model, artifact)
    deltas = file_deltas(lora, {k: v.shape for k, v in fused.items()})
    to_ldm = comfy.utils.unet_to_diffusers(patched.model.model_config.unet_config)  # {diffusers: ComfyUI key}
    unmapped = sorted(set(fused) - set(to_ldm))
    touched = {k[len("diffusion_model."):] for k in patched.patches}
    figures = {"comfyui_vs_diffusers": 0.0, "comfyui_vs_file": 0.0, "diffusers_vs_file": 0.0, "untouched": 0.0,
               "delta": 0.0}
    worst, off_in_diffusers, missing = ("", 0.0), [], []
    patched.patch_model()
    try:
        ours = patched.model.diffusion_model.state_dict()
        backup = {k[len("diffusion_model."):]: v.weight for k, v in patched.backup.items()}
        # ComfyUI's map names every tensor the architecture family can have (a conv_shortcut for every ResNet);
        # the ones this model does not have are in neither UNet. A tensor diffusers has and ComfyUI lacks is a gap.
        to_ldm = {key: ldm_key for key, ldm_key in to_ldm.items() if key in fused}
        for key, ldm_key in to_ldm.items():
            if ldm_key not in ours:
                missing.append(key)
                continue
            comfy_w, diffusers_w = ours[ldm_key].double(), fused[key].double().reshape(ours[ldm_key].shape)
            difference = float((comfy_w - diffusers_w).abs().max())
            if ldm_key not in touched:
                figures["untouched"] = max(figures["untouched"], difference)
                continue
            figures["comfyui_vs_diffusers"] = max(figures["comfyui_vs_diffusers"], difference)
            if difference > worst[1]:
                worst = (key, difference)
            base = backup[ldm_key].double()
            expected = base + deltas[key].reshape(base.shape) if key in deltas else None
            if expected is None:
                missing.append(key)
                continue
            figures["delta"] = max(figures["delta"], float((comfy_w - base).abs().max()))
            figures["comfyui_vs_file"] = max(figures["comfyui_vs_file"], float((comfy_w - expected).abs().max()))
            off = float((diffusers_w - expected).abs().max())
            figures["diffusers_vs_file"] = max(figures["diffusers_vs_file"], off)
            if off > WEIGHT_TOLERANCE:
                ratio = float((diffusers_w - base).norm() / (expected - base).norm())
                off_in_diffusers.append(f"{key} (diffusers' change / the file's: {ratio:.3g})")
        compared = len(to_ldm) - len(missing)
    finally:
        patched.unpatch_model()
    result.update({"unet_tensors": len(fused), "compared": compared, "unmapped": len(unmapped),
                   "unmapped_examples": unmapped[:5], "missing": missing[:5], "touched": len(touched),
                   "modules_named": len(deltas), "max_abs_diff_touched": figures["comfyui_vs_diffusers"],
                   "worst_tensor": worst[0], "max_abs_diff_untouched": figures["untouched"],
                   "max_abs_lora_delta": figures["delta"], "comfyui_vs_file": figures["comfyui_vs_file"],
                   "diffusers_vs_file": figures["diffusers_vs_file"],
                   "diffusers_off": len(off_in_diffusers), "diffusers_off_examples": off_in_diffusers[:5]})
    result["comfyui_ok"] = bool(not dropped and touched and len(touched) == len(patched.patches) == len(modules)
                                and len(deltas) == len(modules) and not unmapped and not missing
                                and figures["comfyui_vs_file"] <= WEIGHT_TOLERANCE
                                and figures["untouched"] == 0.0 and figures["delta"] > 0)
    result["ok"] = bool(result["comfyui_ok"] and figures["comfyui_vs_diffusers"] <= WEIGHT_TOLERANCE)
    return result


# ----------------------------------------------------------------------------------------------
# 4. The conditioning


def check_conditioning(started: dict, model_patcher, artifact: str | Path, other_eta: float = 0.35) -> dict:
    """At the picked eta (the node's eta -1) and at ``other_eta`` (a picked eta of 1 or 0 alone would
    not tell the interpolation from one of the two embeddings)."""
    from imagic_lora.artifact import read_edit

    edit = read_edit(artifact)
    average = started["nodes"].NODE_CLASS_MAPPINGS["ConditioningAverage"]()
    result = {"eta": edit.recommended_eta, "other_eta": other_eta, "picked_seed": edit.recommended_seed,
              "node_vs_diffusers": 0.0, "conditioning_average_vs_node": 0.0}
    for node_eta, eta in ((-1.0, edit.recommended_eta), (other_eta, other_eta)):
        (_, at_eta, target, optimized, seed, *_), _ = run_node(started, model_patcher, artifact, eta=node_eta)
        diffusers_embeds = edit.embeds(eta).pipeline_kwargs(dtype=torch.float32)["prompt_embeds"]
        averaged = getattr(average, average.FUNCTION)(conditioning_to=target, conditioning_from=optimized,
                                                      conditioning_to_strength=eta)[0]
        result["node_vs_diffusers"] = max(result["node_vs_diffusers"],
                                          float((at_eta[0][0].float() - diffusers_embeds).abs().max()))
        result["conditioning_average_vs_node"] = max(result["conditioning_average_vs_node"], float(
            (averaged[0][0].float() - at_eta[0][0].float()).abs().max()))
        if node_eta == -1.0:
            result.update(seed=seed, shape=list(at_eta[0][0].shape),
                          target_is_e_tgt=bool(torch.equal(target[0][0], edit.e_tgt.prompt_embeds)),
                          optimized_is_e_opt=bool(torch.equal(optimized[0][0], edit.e_opt.prompt_embeds)))
    result["ok"] = bool(result["node_vs_diffusers"] <= CONDITIONING_TOLERANCE
                        and result["conditioning_average_vs_node"] <= CONDITIONING_TOLERANCE
                        and result["seed"] == edit.recommended_seed and result["target_is_e_tgt"]
                        and result["optimized_is_e_opt"])
    return result


# ----------------------------------------------------------------------------------------------
# 5. The workflow, by ComfyUI's executor


class StubServer:
    """What ``execution.PromptExecutor`` needs of ComfyUI's PromptServer: it records the messages."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


def run_workflow(started: dict, artifact: str | Path, output_dir: str | Path) -> dict:
    """Validate and execute the artifact's comfyui_workflow.json; the path of the image SaveImage wrote."""
    import execution
    import folder_paths

    graph = json.loads((Path(artifact) / "comfyui_workflow.json").read_text())
    folder_paths.set_output_directory(str(output_dir))
    prompt_id = str(uuid.uuid4())
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, graph, None))
    result = {"valid": bool(valid), "validation_error": error, "node_errors": node_errors, "outputs": outputs,
              "nodes": {k: v["class_type"] for k, v in graph.items()}}
    if not valid:
        result["ok"] = False
        return result
    server = StubServer()
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0})
    executor.execute(graph, prompt_id, {}, outputs)
    errors = [data for event, data in executor.status_messages if event == "execution_error"]
    images = [Path(output_dir) / i.get("subfolder", "") / i["filename"]
              for ui in executor.history_result.get("outputs", {}).values() for i in ui.get("images", [])]
    result.update({"success": bool(executor.success), "errors": [
        {k: e.get(k) for k in ("node_type", "exception_type", "exception_message")} for e in errors],
        "images": [str(p) for p in images]})
    result["ok"] = bool(executor.success and not errors and len(images) == 1 and images[0].is_file())
    return result


def compare_images(made: str | Path, reference: str | Path) -> dict:
    """Mean and max absolute difference (0-255) and what the shapes judge reads from each image."""
    from imagic_lora.shapes import judge
    a, b = Image.open(made).convert("RGB"), Image.open(reference).convert("RGB")
    result = {"size": list(a.size), "reference_size": list(b.size)}
    if a.size == b.size:
        difference = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))
        result.update(mean_abs_diff=float(difference.mean()), max_abs_diff=float(difference.max()))
    ra, rb = judge(a), judge(b)
    result.update(judge_comfyui=ra.attributes() if ra.found else None,
                  judge_reference=rb.attributes() if rb.found else None)
    result["judge_agrees"] = result["judge_comfyui"] == result["judge_reference"]
    result["ok"] = a.size == b.size
    return result


# ----------------------------------------------------------------------------------------------
# The fallback: a random-weight SD 1.5 (an architecture ComfyUI recognises) and an artifact for it


def make_sd15(folder: str | Path, comfyui: str | Path, seed: int = 0) -> Path:
    """A diffusers folder of SD 1.5's published architecture with random weights (fp16), and the real
    CLIP tokenizer ComfyUI ships (comfy/sd1_tokenizer), so both sides encode "" alike."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from imagic_lora.architectures import CLIP_L, SD15_UNET, SD_VAE
    from imagic_lora.tiny import sd_scheduler

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD_VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
        tokenizer=CLIPTokenizer.from_pretrained(str(Path(comfyui) / "comfy" / "sd1_tokenizer"), model_max_length=77),
        unet=UNet2DConditionModel(**SD15_UNET), scheduler=sd_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.to(dtype=torch.float16).save_pretrained(str(folder), safe_serialization=True)
    # transformers 5 saves a CLIPTextModel's weights without the "text_model." prefix; ComfyUI's loader knows
    # the prefixed layout of published checkpoints only (else it loads nothing: "clip missing"). Both load it.
    path = folder / "text_encoder" / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    state = load_file(str(path))
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}, str(path),
              metadata=metadata)
    return folder


def make_artifact(folder: str | Path, model: str | Path, *, resolution: int = 256, steps: int = 10,
                  guidance_scale: float = 3.0, eta: float = 0.8, seed: int = 7, rank: int = 4) -> Path:
    """An artifact for ``model`` written with this package's own code: a LoRA on every module the
    default targets name (random factors, as a trained one has, not zero), kept to the default budget
    and saved in kohya's format (imagic_lora.lora/compress/artifact), e_tgt (the text encoder's output
    for a prompt) and e_opt (e_tgt moved), its record, its ComfyUI workflow (imagic_lora.comfyui) and
    images/edit.png drawn as the CLI draws it (fused LoRA, DDIM, imagic_lora.generate)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from imagic_lora.artifact import load_edit, save_embeds, save_lora, write_json
    from imagic_lora.comfyui import workflow
    from imagic_lora.compress import rank_and_alpha, truncate
    from imagic_lora.conditioning import PromptEmbeds, encode_prompt
    from imagic_lora.config import LORA_TARGET_PRESETS
    from imagic_lora.presets import PRESETS
    from imagic_lora.generate import generate_image
    from imagic_lora.lora import add_lora, architecture_of, kohya_metadata, kohya_state_dict

    folder, model = Path(folder).resolve(), Path(model).resolve()
    if (folder / "images" / "edit.png").is_file():  # written last
        return folder
    (folder / "images").mkdir(parents=True, exist_ok=True)
    prompt = "a photo of a dog"
    targets = LORA_TARGET_PRESETS["attn_ff_conv"]
    budget = PRESETS["sd1"].values["lora_budget"]  # what a real SD 1.5 run saves
    pipe = StableDiffusionPipeline.from_pretrained(str(model), dtype=torch.float32)
    add_lora(pipe.unet, rank=rank, alpha=rank, target_modules=targets, seed=seed, init_lora_weights=False)
    trained = kohya_state_dict(pipe.unet, alpha=rank)
    trained = {k: v * 0.1 if k.endswith("lora_up.weight") else v for k, v in trained.items()}  # a modest update
    saved = truncate(trained, budget)
    rank, alpha = rank_and_alpha(saved)
    save_lora(folder, saved, kohya_metadata(rank=rank, alpha=alpha, base_model=str(model),
                                            architecture=architecture_of(pipe), resolution=resolution,
                                            target_prompt=prompt))
    e_tgt = encode_prompt(pipe, prompt, "cpu")
    generator = torch.Generator().manual_seed(seed)
    e_opt = PromptEmbeds(e_tgt.prompt_embeds + 0.1 * torch.randn(e_tgt.prompt_embeds.shape, generator=generator))
    save_embeds(folder, e_tgt, e_opt, {"base_model": str(model), "target_prompt": prompt,
                                       "format": "imagic-lora/1"})
    config = {"format": "imagic-lora/1", "pretrained_model_name_or_path": str(model), "base_model": str(model),
              "target_prompt": prompt, "family": "sd", "architecture": architecture_of(pipe),
              "pipeline_class": "StableDiffusionPipeline", "scheduler_class": "DDIMScheduler",
              "prediction_type": "epsilon", "resolution": resolution, "num_inference_steps": steps,
              "guidance_scale": guidance_scale, "lora_budget": budget, "lora_target_module_list": targets,
              "picked": {"eta": eta, "seed": seed}, "recommended": {"eta": eta, "seed": seed},
              "note": "made by scripts/check_comfyui.py: random weights, for checking ComfyUI's loading only"}
    write_json(folder / "imagic_config.json", config)
    write_json(folder / "comfyui_workflow.json", workflow(config, str(folder)))
    del pipe
    pipe = StableDiffusionPipeline.from_pretrained(str(model), dtype=torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    edit = load_edit(pipe, folder)
    pipe.fuse_lora()
    image = generate_image(pipe, edit.embeds(eta), seed=seed, guidance_scale=guidance_scale,
                           num_inference_steps=steps, resolution=resolution)
    image.save(folder / "images" / "edit.png")
    return folder


# ----------------------------------------------------------------------------------------------


def run_checks(comfyui: str | Path, artifact: str | Path, model: str | Path, output_dir: str | Path,
               report=print) -> dict:
    """Checks 1-5; ``report`` gets one line per figure. Returns {check: result} ("ok" in each)."""
    results = {}
    started = start_comfyui(comfyui)
    results["node"] = node = check_node(started)
    report(f"1 node: LoadImagicEdit in NODE_CLASS_MAPPINGS: {node['in_mappings']}, from {node['node_file']} "
           f"(this repository's: {node['ours']}), module {node['module']}")
    if not node["in_mappings"]:
        return results
    try:
        with _Capture() as log:
            model_patcher, clip, vae = load_model(started, model)
        # ComfyUI only logs the text encoder weights it did not find, and runs on uninitialised ones (the
        # CLIPTextEncode of the workflow's negative prompt is then NaN). text_projection: SD 1.x has none.
        clip_missing = [name for message in log.messages("clip missing")
                        for name in re.findall(r"'([^']+)'", message) if name != "text_projection.weight"]
        results["model"] = {"ok": not clip_missing, "class": type(model_patcher.model).__name__,
                            "config": type(model_patcher.model.model_config).__name__,
                            "dtype": str(model_patcher.model.get_dtype()), "clip_missing": len(clip_missing),
                            "clip_missing_examples": clip_missing[:3]}
        report(f"2 model: ComfyUI's DiffusersLoader loaded {model}: {results['model']['config']} "
               f"({results['model']['class']}, {results['model']['dtype']}); text encoder weights it did not "
               f"find: {len(clip_missing)} {clip_missing[:3]}")
    except Exception as e:  # ComfyUI's own refusal: say it as it is
        message = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        results["model"] = {"ok": False, "error": message}
        report(f"2 model: ComfyUI cannot load {model}: {message}")
        model_patcher = clip = vae = None
    if model_patcher is not None:
        results["lora"] = lora = check_lora(started, model_patcher, artifact, model)
    else:
        lora = None
        report("3 lora: not checked (no model)")
    if lora is not None:
        report(f"3 lora: {lora['lora_keys']} keys ({lora['lora_modules']} modules) in the file; not loaded: "
               f"{lora['keys_not_loaded']} {lora['not_loaded']}; weights patched: {lora['weights_patched']}")
        report(f"3 lora: UNet tensors compared with diffusers' fused UNet: {lora['compared']} of "
               f"{lora['unet_tensors']} (unmapped {lora['unmapped']}); max |ComfyUI - diffusers| over the "
               f"{lora['touched']} patched: {lora['max_abs_diff_touched']:.3g} ({lora['worst_tensor']}); over the "
               f"others: {lora['max_abs_diff_untouched']:.3g}; largest weight change by the LoRA: "
               f"{lora['max_abs_lora_delta']:.3g}")
        report(f"3 lora: max |patched - (W + alpha/rank * up @ down)| from the file: ComfyUI "
               f"{lora['comfyui_vs_file']:.3g}, diffusers {lora['diffusers_vs_file']:.3g}; tensors diffusers "
               f"changes otherwise than the file says: {lora['diffusers_off']} {lora['diffusers_off_examples']}")
    # The conditioning does not depend on the model: without one (a model ComfyUI cannot load), the node
    # still runs (ComfyUI then patches nothing).
    results["conditioning"] = cond = check_conditioning(started, model_patcher, artifact)
    report(f"4 conditioning at eta {cond['eta']} (picked) and {cond['other_eta']}, {tuple(cond['shape'])}: max |node - diffusers' "
           f"eta*e_tgt+(1-eta)*e_opt| = {cond['node_vs_diffusers']:.3g}; max |ConditioningAverage - node| = "
           f"{cond['conditioning_average_vs_node']:.3g}; seed {cond['seed']} (picked {cond['picked_seed']})")
    del model_patcher, clip, vae
    results["workflow"] = flow = run_workflow(started, artifact, output_dir)
    if not flow["valid"]:
        report(f"5 workflow: validate_prompt refused it: {flow['validation_error']} {flow['node_errors']}")
        return results
    report(f"5 workflow: valid ({', '.join(flow['nodes'][k] for k in sorted(flow['nodes']))}); executed: "
           f"{flow['success']}; errors: {flow['errors']}; image: {flow['images']}")
    reference = Path(artifact) / "images" / "edit.png"
    if flow["ok"] and reference.is_file():
        results["image"] = image = compare_images(flow["images"][0], reference)
        report(f"5 image vs images/edit.png: size {image['size']} vs {image['reference_size']}; mean |diff| "
               f"{image.get('mean_abs_diff', float('nan')):.2f}, max {image.get('max_abs_diff', float('nan')):.0f} "
               f"(of 255); judge: ComfyUI {image['judge_comfyui']}, edit.png {image['judge_reference']}")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", required=True, help="a ComfyUI checkout (its folder holding nodes.py)")
    parser.add_argument("--artifact", help="an imagic-lora artifact folder")
    parser.add_argument("--model", help="the artifact's base model, a diffusers folder (default: the bundled one)")
    parser.add_argument("--make-sd15", metavar="FOLDER",
                        help="build a random-weight SD 1.5 and an artifact for it in FOLDER (kept for a rerun), "
                             "and check those")
    parser.add_argument("--resolution", type=int, default=256, help="with --make-sd15: the artifact's image side")
    parser.add_argument("--steps", type=int, default=10, help="with --make-sd15: the artifact's sampling steps")
    parser.add_argument("--output", help="where the workflow's SaveImage writes (default: a temporary folder)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="comfyui %(levelname)s: %(message)s")

    if args.make_sd15:
        work = Path(args.make_sd15)
        model = make_sd15(work / "sd15-random", args.comfyui)
        artifact = make_artifact(work / "artifact", model, resolution=args.resolution, steps=args.steps)
    else:
        if not args.artifact:
            parser.error("give --artifact (and --model), or --make-sd15")
        from imagic_lora.config import BUNDLED_MODEL
        artifact, model = Path(args.artifact), Path(args.model) if args.model else BUNDLED_MODEL
    output = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="comfyui-check-"))
    output.mkdir(parents=True, exist_ok=True)
    results = run_checks(args.comfyui, artifact, model, output)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    failed = [name for name in ("node", "model", "lora", "conditioning", "workflow", "image")
              if name not in results or not results[name].get("ok")]
    print("FAILED: " + ", ".join(failed) if failed else "all ComfyUI checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
