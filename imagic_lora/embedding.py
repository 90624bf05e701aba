"""Imagic step A: optimise the text embedding towards the input image, the model frozen.

    e_opt = argmin_e  L(x, e, θ)   starting from e = e_tgt, for a few Adam steps,

so that e_opt stays close to e_tgt and interpolating between them stays meaningful.
"""

from __future__ import annotations

import torch

from .conditioning import PromptEmbeds
from .diffusion import make_lr_scheduler, minimise


def optimize_embedding(unet, noise_scheduler, latents: torch.Tensor, e_tgt: PromptEmbeds, *, accelerator,
                       steps: int, learning_rate: float, batch_size: int, generator: torch.Generator,
                       weight_dtype: torch.dtype, add_time_ids: torch.Tensor | None = None,
                       optimize_pooled: bool = True, lr_scheduler: str = "constant", lr_warmup_steps: int = 0,
                       on_step=None, log=None) -> tuple[PromptEmbeds, list[float]]:
    """Return e_opt (same shapes as ``e_tgt``, fp32, detached) and the loss of every step.

    ``latents`` is the input's latent (1, C, h, w). ``unet`` must be frozen: only the embedding
    receives gradients and the UNet accumulates none. With SDXL the pooled embedding (1, P) is
    optimised too unless ``optimize_pooled`` is False. ``lr_scheduler`` and ``lr_warmup_steps``: diffusers'
    learning-rate schedule over the steps. ``steps`` = 0 returns e_tgt unchanged.
    """
    if any(p.requires_grad for p in unet.parameters()):
        raise ValueError("step A needs a frozen UNet: call unet.requires_grad_(False) first")
    embeds = PromptEmbeds(e_tgt.prompt_embeds.detach().float().clone().requires_grad_(True))
    trainable = [embeds.prompt_embeds]
    if e_tgt.pooled_prompt_embeds is not None:
        embeds.pooled_prompt_embeds = e_tgt.pooled_prompt_embeds.detach().float().clone()
        if optimize_pooled:
            embeds.pooled_prompt_embeds.requires_grad_(True)
            trainable.append(embeds.pooled_prompt_embeds)
    # Plain Adam as in the paper: weight decay would pull e towards zero, not towards e_tgt.
    optimizer = accelerator.prepare(torch.optim.Adam(trainable, lr=learning_rate))
    schedule = make_lr_scheduler(lr_scheduler, optimizer, warmup_steps=lr_warmup_steps, total_steps=steps)
    losses = minimise(unet, noise_scheduler, latents, embeds, optimizer, accelerator=accelerator, steps=steps,
                      batch_size=batch_size, generator=generator, weight_dtype=weight_dtype,
                      add_time_ids=add_time_ids, desc="A: embedding", lr_scheduler=schedule, on_step=on_step,
                      log=log)
    return embeds.detach(), losses
