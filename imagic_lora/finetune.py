"""Imagic step B: fine-tune the model so that e_opt reproduces the input image.

    θ* = argmin_θ  L(x, e_opt, θ)   with e_opt frozen.

The paper trains every UNet weight; we train a LoRA adapter (``add_lora``) by default and
keep the full fine-tune as the reference (``full_finetune_parameters``). The loop is the
same for both: only the list of trainable parameters differs.
"""

from __future__ import annotations

from typing import Callable

import torch
from .conditioning import PromptEmbeds
from .diffusion import minimise


def full_finetune_parameters(unet) -> list[torch.nn.Parameter]:
    """Make every UNet weight trainable, in fp32 (the optimiser's master copy); return them."""
    unet.to(dtype=torch.float32)
    unet.requires_grad_(True)
    return list(unet.parameters())


def make_optimizer(params: list[torch.nn.Parameter], *, learning_rate: float, use_8bit_adam: bool,
                   weight_decay: float, accelerator=None):
    """bitsandbytes AdamW8bit (optimiser state in 8 bits: 4x less than fp32 Adam) or torch AdamW,
    passed through ``accelerator.prepare`` when given (gradient scaling under fp16)."""
    if use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ImportError("use_8bit_adam=True needs bitsandbytes (pip install bitsandbytes)") from None
        optimizer = bnb.optim.AdamW8bit(params, lr=learning_rate, weight_decay=weight_decay)
    else:
        # The fused kernel (CUDA and CPU) updates every tensor in one call instead of several per tensor.
        fused = len({p.device.type for p in params}) == 1 and params[0].device.type in ("cuda", "cpu")
        optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, fused=fused or None)
    return accelerator.prepare(optimizer) if accelerator is not None else optimizer


def finetune(unet, noise_scheduler, latents: torch.Tensor, e_opt: PromptEmbeds, optimizer, *, accelerator,
             steps: int, batch_size: int, generator: torch.Generator, weight_dtype: torch.dtype,
             add_time_ids: torch.Tensor | None = None, timestep_weights: torch.Tensor | None = None,
             start_step: int = 0, on_step: Callable[[int, list, object], None] | None = None,
             max_grad_norm: float = 0.0, lr_scheduler=None,
             log: Callable[[dict, int], None] | None = None) -> list[float]:
    """Train what ``optimizer`` holds (a LoRA's or the whole UNet's parameters, see
    :func:`make_optimizer`) under L(x, e_opt, θ); return the losses of steps ``start_step``..``steps``-1.

    ``latents`` (1, C, h, w) fp32; ``e_opt`` is used detached (frozen). Only the optimiser's
    parameters change; every other UNet weight stays bitwise equal. ``max_grad_norm`` > 0 clips
    the gradient norm; ``lr_scheduler`` (:func:`~imagic_lora.diffusion.make_lr_scheduler`) sets the rate per
    step. ``timestep_weights``
    (see :func:`~imagic_lora.diffusion.timestep_weights`) biases which noise levels are trained.
    """
    unet.train()
    try:
        return minimise(unet, noise_scheduler, latents, e_opt.detach(), optimizer, accelerator=accelerator,
                        steps=steps, batch_size=batch_size, generator=generator, weight_dtype=weight_dtype,
                        add_time_ids=add_time_ids, timestep_weights=timestep_weights,
                        desc="B: fine-tune", start_step=start_step, on_step=on_step,
                        max_grad_norm=max_grad_norm, lr_scheduler=lr_scheduler, log=log)
    finally:
        unet.eval()
