"""Loading a base model: the stock diffusers pipeline of its family, with the precision set.

Any diffusers Stable Diffusion 1.x/2.x or SDXL checkpoint loads by hub id or local folder,
with the same ``from_pretrained`` a user's own code would call. The family is read from the
checkpoint's ``model_index.json``, so nothing downstream guesses.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from .errors import ArgumentError, ModelError
from .vocabulary import VOCABULARY_FILE, read_vocabulary

logger = logging.getLogger(__name__)

FAMILIES = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}


def weight_dtype_for(mixed_precision: str | None) -> torch.dtype:
    """dtype of the frozen weights under Accelerate's ``mixed_precision``."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision or "no", torch.float32)


def model_family(pretrained_model_name_or_path: str, revision: str | None = None) -> str:
    """'sd' or 'sdxl', from the checkpoint's model_index.json (ModelError when it cannot be read)."""
    try:
        index = DiffusionPipeline.load_config(pretrained_model_name_or_path, revision=revision)
    except Exception as e:  # hub errors, missing folder, bad JSON: one line for the user
        raise ModelError(pretrained_model_name_or_path,
                         f"cannot read a diffusers model_index.json ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    class_name = index.get("_class_name", "")
    if "text_encoder_2" in index or class_name.startswith("StableDiffusionXL"):
        return "sdxl"
    if class_name.startswith("StableDiffusion") or "unet" in index:
        return "sd"
    raise ModelError(pretrained_model_name_or_path,
                     f"{class_name or 'this model'} is not a Stable Diffusion 1.x/2.x/XL pipeline")


def load_tokenizer_and_vocabulary(pretrained_model_name_or_path: str, revision: str | None = None):
    """The (first) tokenizer and the closed vocabulary, if the model ships one. Cheap: no weights."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(pretrained_model_name_or_path, subfolder="tokenizer",
                                              revision=revision)
    local = Path(pretrained_model_name_or_path)
    if local.is_dir():
        vocabulary = read_vocabulary(local / "tokenizer")
    else:
        vocabulary = None
        try:
            from huggingface_hub import hf_hub_download
            path = hf_hub_download(pretrained_model_name_or_path, f"tokenizer/{VOCABULARY_FILE}", revision=revision)
            vocabulary = read_vocabulary(Path(path).parent)
        except Exception:  # no such file (every real checkpoint): an open vocabulary
            pass
    return tokenizer, vocabulary


def load_pipeline(pretrained_model_name_or_path: str, *, revision: str | None = None, variant: str | None = None,
                  weight_dtype: torch.dtype = torch.float32, vae_model_name_or_path: str | None = None,
                  vae_dtype: torch.dtype | None = None):
    """Load the stock pipeline of the checkpoint's family, every weight frozen in ``weight_dtype``.

    The VAE can be replaced (``vae_model_name_or_path``) and kept in its own dtype (``vae_dtype``). SDXL's
    own VAE overflows in fp16: its config says ``force_upcast``, and the stock pipeline then decodes in
    fp32 by itself; our own encodes do the same (:func:`imagic_lora.diffusion.encode_image_latents`).
    """
    family = model_family(pretrained_model_name_or_path, revision)
    pipeline_class = FAMILIES[family]
    # safetensors only: a folder of .bin weights would be unpickled (torch.load), which can run code.
    kwargs = {"revision": revision, "variant": variant, "dtype": weight_dtype, "use_safetensors": True}
    if family == "sd":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if vae_model_name_or_path:
        with _safetensors_only(vae_model_name_or_path):
            kwargs["vae"] = AutoencoderKL.from_pretrained(vae_model_name_or_path, dtype=vae_dtype or weight_dtype,
                                                          use_safetensors=True)
    with _safetensors_only(pretrained_model_name_or_path):
        pipe = pipeline_class.from_pretrained(pretrained_model_name_or_path, **kwargs)
    if pipe.unet.dtype != weight_dtype:  # diffusers before 0.40 ignores dtype= and loads fp32
        import diffusers
        raise RuntimeError(f"the base model loaded in {pipe.unet.dtype}, not {weight_dtype}: diffusers "
                           f"{diffusers.__version__} ignores dtype=; imagic-lora needs diffusers >= 0.40")
    return freeze(pipe, vae_dtype)


@contextmanager
def _safetensors_only(name: str):
    """diffusers' error for a checkpoint without .safetensors weights, as one line (a ModelError)."""
    try:
        yield
    except (OSError, ValueError) as e:
        if "safetensors" not in str(e):
            raise
        raise ModelError(name, "has no .safetensors weights for every component; imagic-lora loads no pickled "
                               "(.bin/.ckpt) weights: convert them to safetensors first") from None


def scheduler_config(pretrained_model_name_or_path: str, revision: str | None = None) -> dict:
    """The base model's scheduler config (its training schedule): cheap, no weights."""
    return dict(DDPMScheduler.load_config(pretrained_model_name_or_path, subfolder="scheduler", revision=revision))


def freeze(pipe, vae_dtype: torch.dtype | None = None):
    """Every weight frozen and in eval mode (the VAE optionally in its own dtype); no progress bar."""
    if vae_dtype is not None:
        pipe.vae.to(dtype=vae_dtype)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False)
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prepare_unet(pipe, device, *, xformers: bool = False, gradient_checkpointing: bool = False,
                 vae_tiling: bool = False, channels_last: bool = False, compile_mode: str | None = None) -> None:
    """The UNet on the accelerator with the memory and speed levers asked for; the rest stays on the CPU
    until an edit needs it. ``compile_mode``: torch.compile the UNet in place (``nn.Module.compile``, so
    peft's adapters, ``fuse_lora`` and ``disable_adapters`` act on the same module; a new adapter or batch
    shape recompiles)."""
    pipe.unet.to(device)
    if channels_last:  # LoRA weights added later are small 1x1 convolutions and linear layers: left as made
        pipe.unet.to(memory_format=torch.channels_last)
    set_attention(pipe.unet, xformers)
    if gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    if vae_tiling:  # encode and decode large images in tiles, one image at a time
        pipe.vae.enable_tiling()
        pipe.vae.enable_slicing()
    if compile_mode is not None:
        pipe.unet.compile(mode=compile_mode)


def training_noise_scheduler(pipe) -> DDPMScheduler:
    """The forward-process schedule the model was trained with (betas, prediction_type)."""
    return DDPMScheduler.from_config(pipe.scheduler.config)


def inference_scheduler(pipe, name: str):
    """A sampler for generation, built from the model's own scheduler config."""
    if name == "model":
        return pipe.scheduler
    return scheduler_from_config(pipe.scheduler.config, name)


def check_inference_steps(pretrained_model_name_or_path: str, revision: str | None, name: str, steps: int) -> None:
    """Refuse (ArgumentError) a number of sampling steps the sampler cannot take on this model's schedule
    (one past its last timestep, say, with the schedule's ``steps_offset``); reads configs only."""
    import diffusers
    config = DDPMScheduler.load_config(pretrained_model_name_or_path, subfolder="scheduler", revision=revision)
    if name == "model":
        cls = getattr(diffusers, config.get("_class_name", "DDIMScheduler"), DDIMScheduler)
        scheduler = cls.from_config(config)
    else:
        scheduler = scheduler_from_config(config, name)
    total = scheduler.config.num_train_timesteps
    try:
        scheduler.set_timesteps(steps)
        fits = int(scheduler.timesteps.max()) < total
    except (ValueError, IndexError):
        fits = False
    if not fits:
        most = total - int(scheduler.config.get("steps_offset", 0) or 0)
        raise ArgumentError("steps", f"{steps} steps do not fit this model's {total}-step schedule with the {name} "
                                     f"sampler; use at most {most}")


def scheduler_from_config(config, name: str):
    """A sampler (ddim, dpmsolver++, euler, euler_a, pndm) on a scheduler config's schedule."""
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "pndm":
        return PNDMScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {name!r}")


def set_attention(unet, use_xformers: bool) -> str:
    """xformers when asked (and installed), else PyTorch SDPA (diffusers' default). Returns which."""
    if use_xformers:
        unet.enable_xformers_memory_efficient_attention()
        return "xformers"
    return "sdpa"


def native_resolution(pipe) -> int:
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
