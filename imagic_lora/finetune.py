"""Imagic step B: fine-tune the model so that e_opt reproduces the input image.

    θ* = argmin_θ  L(x, e_opt, θ)   with e_opt frozen.

The paper trains every UNet weight; we train a LoRA adapter (``add_lora``) by default and
keep the full fine-tune as the reference (``full_finetune_parameters``). The loop is the
same for both: only the list of trainable parameters differs.
"""

from __future__ import annotations

import torch
from .conditioning import PromptEmbeds
from .diffusion import minimise


def full_finetune_parameters(unet) -> list[torch.nn.Parameter]:
    """Make every UNet weight trainable, in fp32 (the optimiser's master copy); return them."""
    unet.to(dtype=torch.float32)
    unet.requires_grad_(True)
    return list(unet.parameters())


def make_optimizer(params: list[torch.nn.Parameter], *, learning_rate: float, use_8bit_adam: bool,
                   weight_decay: float) -> torch.optim.Optimizer:
    """bitsandbytes AdamW8bit (optimiser state in 8 bits: 4x less than fp32 Adam) or torch AdamW."""
    if use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ImportError("--use_8bit_adam needs bitsandbytes (pip install bitsandbytes), "
                              "or pass --no-use_8bit_adam") from None
        return bnb.optim.AdamW8bit(params, lr=learning_rate, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)


def finetune(unet, noise_scheduler, latents: torch.Tensor, e_opt: PromptEmbeds, params: list[torch.nn.Parameter],
             *, accelerator, steps: int, learning_rate: float, batch_size: int, use_8bit_adam: bool,
             weight_decay: float, generator: torch.Generator, weight_dtype: torch.dtype,
             add_time_ids: torch.Tensor | None = None) -> list[float]:
    """Train ``params`` (a LoRA's, or the whole UNet's) under L(x, e_opt, θ); return step losses.

    ``latents`` (1, C, h, w) fp32; ``e_opt`` is used detached (frozen). Only ``params`` change;
    every other UNet weight stays bitwise equal.
    """
    optimizer = accelerator.prepare(make_optimizer(params, learning_rate=learning_rate,
                                                   use_8bit_adam=use_8bit_adam, weight_decay=weight_decay))
    unet.train()
    losses = minimise(unet, noise_scheduler, latents, e_opt.detach(), optimizer, accelerator=accelerator,
                      steps=steps, batch_size=batch_size, generator=generator, weight_dtype=weight_dtype,
                      add_time_ids=add_time_ids, desc="B: fine-tune", log_key="B/loss")
    unet.eval()
    return losses
