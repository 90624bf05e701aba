"""LoRA adapters on the UNet (peft through diffusers), saved in kohya's format.

The artifact keeps one LoRA file in kohya's format (``lora_unet_<path_with_underscores>.lora_down.weight``,
``.lora_up.weight`` and ``.alpha``): AUTOMATIC1111, ComfyUI and kohya's scripts read it, and diffusers'
``load_lora_weights`` converts it back. diffusers' ``convert_state_dict_to_kohya`` writes alpha = rank,
so the true alpha is written here.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_kohya
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
    if not any(p.requires_grad for p in unet.parameters()):
        raise ValueError(f"no UNet module matches the LoRA targets {target_modules}")
    # Trainable tensors live in fp32 even when the frozen base is fp16/bf16.
    cast_training_params(unet, dtype=torch.float32)
    return [p for p in unet.parameters() if p.requires_grad]


def unmatched_targets(unet, target_modules: list[str]) -> list[str]:
    """The entries of ``target_modules`` that name no module of ``unet`` (peft matches a module whose
    name is the entry or ends with "." + the entry)."""
    names = [name for name, _ in unet.named_modules()]
    return [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]


def copy_device(device: torch.device, copy_bytes: int, free_bytes: int | None) -> torch.device:
    """Where :func:`fused_lora` keeps its copy of the base weights: on the GPU itself when its free memory
    holds the copy twice over (no round trip through the host: SD 1.5's adapted weights are 1.6 GB in
    fp16), else on the CPU, so that a full card is not pushed over by step C."""
    if device.type == "cuda" and free_bytes is not None and free_bytes >= 2 * copy_bytes:
        return device
    return torch.device("cpu")


@contextmanager
def fused_lora(pipe):
    """Within: the UNet's LoRA merged into the weights it adapts (diffusers' ``fuse_lora``), so that an
    adapted layer runs one product instead of three (step C about twice as fast on a CPU;
    docs/BENCHMARKS.md). A stock pipeline that loads the same file and fuses it draws the same images.

    After (also after an error, fusing's included): unfused, and every adapted base weight restored bit
    for bit from a copy, because unfusing subtracts the update again and leaves rounding behind, and what
    comes next uses the base weights (the pick scores with the LoRA off; a manifest's next edit starts from
    them). The copy stays on the GPU when it has room (:func:`copy_device`), else on the CPU. A UNet
    without a LoRA (a full fine-tune) runs as it is.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in pipe.unet.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        yield
        return
    weights = [m.get_base_layer().weight for m in layers]
    device = weights[0].device
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    keep_on = copy_device(device, sum(w.numel() * w.element_size() for w in weights), free)
    originals = [w.detach().to(keep_on, copy=True) for w in weights]
    try:
        pipe.fuse_lora(components=["unet"])
        yield
    finally:
        try:
            pipe.unfuse_lora(components=["unet"])
        finally:
            with torch.no_grad():
                for module, weight in zip(layers, originals):
                    module.get_base_layer().weight.copy_(weight)


def kohya_state_dict(unet, alpha: float, sgm_names: bool = False) -> dict[str, torch.Tensor]:
    """The adapter with kohya keys and the true ``.alpha`` (scale = alpha / rank), fp32.

    kohya trains SD 1.x/2.x on diffusers' UNet (keys ``lora_unet_down_blocks_...``) but SDXL on
    the original (SGM) UNet (``lora_unet_input_blocks_...``): ``sgm_names`` writes the latter.
    """
    peft_state = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
    layers = unet.config.layers_per_block
    rename = (lambda key: sgm_module_name(key, layers)) if sgm_names else (lambda key: key)
    peft_state = {f"unet.{rename(k)}": v.detach().float().cpu().contiguous() for k, v in peft_state.items()}
    kohya = convert_state_dict_to_kohya(peft_state)
    for key in kohya:
        if key.endswith(".alpha"):
            kohya[key] = torch.tensor(float(alpha), dtype=torch.float32)
    return kohya


_RESNET_SGM = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
               "conv_shortcut": "skip_connection", "norm1": "in_layers.0", "norm2": "out_layers.0"}


def sgm_module_name(name: str, layers_per_block: int) -> str:
    """A diffusers UNet parameter name in the original SGM/LDM UNet's naming (SDXL's kohya keys).

    down_blocks.i.{resnets,attentions}.j -> input_blocks.{i(L+1)+j+1}.{0,1}; downsamplers ->
    input_blocks.{(i+1)(L+1)}.0.op; mid_block -> middle_block.{0,1,2}; up_blocks.i.{resnets,
    attentions}.j -> output_blocks.{i(L+1)+j}.{0,1}, upsamplers -> output_blocks.{i(L+1)+L}.2
    (L = layers per block); ResNet layers take their SGM names. Inverse of diffusers'
    ``_maybe_map_sgm_blocks_to_diffusers`` and ``_convert_unet_lora_key``.
    """
    per = layers_per_block + 1
    parts = name.split(".")
    head, rest = parts[0], parts[1:]
    if head == "down_blocks":
        block, kind, index, tail = int(rest[0]), rest[1], int(rest[2]), rest[3:]
        if kind == "downsamplers":
            return ".".join(["input_blocks", str((block + 1) * per), "0", "op", *tail[1:]])
        inner = "0" if kind == "resnets" else "1"
        new = ["input_blocks", str(block * per + index + 1), inner]
    elif head == "mid_block":
        kind, index, tail = rest[0], int(rest[1]), rest[2:]
        new = ["middle_block", {("resnets", 0): "0", ("attentions", 0): "1", ("resnets", 1): "2"}[(kind, index)]]
    elif head == "up_blocks":
        block, kind, index, tail = int(rest[0]), rest[1], int(rest[2]), rest[3:]
        if kind == "upsamplers":
            return ".".join(["output_blocks", str(block * per + layers_per_block), "2", *tail])
        inner = "0" if kind == "resnets" else "1"
        new = ["output_blocks", str(block * per + index), inner]
    else:
        return name
    if kind == "resnets" and tail and tail[0] in _RESNET_SGM:
        tail = _RESNET_SGM[tail[0]].split(".") + tail[1:]
    return ".".join(new + list(tail))


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
