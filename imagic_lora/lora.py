"""LoRA adapters on the UNet (peft through diffusers), and their two file formats.

diffusers format: ``convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))`` saved by
the pipeline's ``save_lora_weights`` with the adapter's config as metadata.
kohya format (AUTOMATIC1111, ComfyUI): ``lora_unet_<path_with_underscores>.lora_down.weight``,
``.lora_up.weight`` and ``.alpha``; diffusers' ``convert_state_dict_to_kohya`` writes
alpha = rank, so the true alpha is written here.
"""

from __future__ import annotations

import torch
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

ADAPTER_NAME = "default"


def add_lora(unet, *, rank: int, alpha: float, target_modules: list[str], seed: int,
             init_lora_weights: bool | str = "gaussian") -> list[torch.nn.Parameter]:
    """Add a LoRA adapter to ``unet`` (base weights frozen); return its parameters, cast to fp32.

    ``init_lora_weights="gaussian"`` starts with B = 0 (the adapter is a no-op at step 0);
    ``False`` draws both factors at random (used by tests, so invariants cannot pass trivially).
    The random init draws from torch's global RNG, so it runs under a forked, seeded RNG.
    """
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules,
                        init_lora_weights=init_lora_weights)
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(config, adapter_name=ADAPTER_NAME)
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"no UNet module matches the LoRA targets {target_modules}")
    # Trainable tensors live in fp32 even when the frozen base is fp16/bf16.
    for p in params:
        p.data = p.data.float()
    return params


def lora_state_dict(unet) -> dict[str, torch.Tensor]:
    """The adapter in diffusers format (keys without the ``unet.`` prefix), fp32, on the CPU."""
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME))
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def lora_adapter_metadata(unet) -> dict:
    return unet.peft_config[ADAPTER_NAME].to_dict()


def kohya_state_dict(unet, alpha: float, prefix: str = "unet") -> dict[str, torch.Tensor]:
    """The adapter with kohya keys and the true ``.alpha`` (scale = alpha / rank), fp32."""
    peft_state = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
    peft_state = {f"{prefix}.{k}": v.detach().float().cpu().contiguous() for k, v in peft_state.items()}
    kohya = convert_state_dict_to_kohya(peft_state)
    for key in kohya:
        if key.endswith(".alpha"):
            kohya[key] = torch.tensor(float(alpha), dtype=torch.float32)
    return kohya


def kohya_metadata(*, rank: int, alpha: float, base_model: str, architecture: str, resolution: int,
                   target_prompt: str) -> dict[str, str]:
    """``ss_*`` and ``modelspec.*`` strings that kohya-aware UIs read; ``architecture`` is a key
    of :data:`ARCHITECTURES` (see :func:`architecture_of`)."""
    base_version, modelspec = ARCHITECTURES[architecture]
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": base_version,
        "ss_v2": str(architecture.startswith("sd2")),
        "ss_sd_model_name": base_model,
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_training_comment": f"imagic-lora edit: {target_prompt}",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{modelspec}/lora",
        "modelspec.implementation": "https://github.com/huggingface/diffusers",
        "modelspec.title": f"imagic-lora: {target_prompt}",
        "modelspec.resolution": f"{resolution}x{resolution}",
    }


#: architecture -> (kohya ss_base_model_version, SAI modelspec architecture)
ARCHITECTURES = {
    "sd1": ("sd_v1", "stable-diffusion-v1"),
    "sd2": ("sd_v2", "stable-diffusion-v2-512"),
    "sd2-v": ("sd_v2_768_v", "stable-diffusion-v2-768-v"),
    "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base"),
}


def architecture_of(pipe) -> str:
    """sd1, sd2, sd2-v or sdxl, from the UNet's cross-attention width and the prediction type."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    if pipe.unet.config.cross_attention_dim == 1024:
        return "sd2-v" if pipe.scheduler.config.get("prediction_type") == "v_prediction" else "sd2"
    return "sd1"
