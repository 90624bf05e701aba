"""The denoising loss both Imagic optimisations minimise.

    L(x, e, θ) = E_{t, ε} || target(x, ε, t) − f_θ(x_t, t, e) ||²,
    x_t = sqrt(ᾱ_t)·x + sqrt(1−ᾱ_t)·ε,

where x is the VAE latent of the input image and the target is ε for epsilon-prediction
models (SD 1.x, SD 2.x base) and v = sqrt(ᾱ_t)·ε − sqrt(1−ᾱ_t)·x for v-prediction models
(SD 2.x 768). Every draw of t and ε comes from the caller's seeded generator.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .conditioning import PromptEmbeds, unet_condition
from .errors import ImagicInputError


@torch.no_grad()
def encode_image_latents(vae, pixel_values: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1] -> the scaled latent x (1, C, H/f, W/f), fp32.

    The posterior mean, not a sample: the image is fixed, so its latent should be too.
    """
    pixel_values = pixel_values.to(device=vae.device, dtype=vae.dtype)
    latents = vae.encode(pixel_values).latent_dist.mode().float()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def prediction_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor,
                      timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet must predict under the scheduler's ``prediction_type``."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unsupported prediction_type {kind!r}")


def timestep_weights(strategy: str, num_train_timesteps: int, *, multiplier: float = 1.0, portion: float = 0.25,
                     begin: int = 0, end: int = 1000) -> torch.Tensor | None:
    """Sampling weights (num_train_timesteps,) of diffusers' ``--timestep_bias_strategy``, or None for uniform.

    ``later`` multiplies the weight of the last ``portion`` of the schedule (the noisiest timesteps,
    where the layout of the image is decided) by ``multiplier``; ``earlier`` the first ``portion``;
    ``range`` the timesteps ``begin`` .. ``end``-1. The result sums to 1. A bias that would select no
    timestep of this schedule is refused (ImagicInputError naming the flag) rather than ignored.
    """
    if strategy == "none" or multiplier == 1.0:
        return None
    count = int(portion * num_train_timesteps)
    if strategy in ("later", "earlier") and count < 1:
        raise ImagicInputError("--timestep_bias_portion", f"{portion} of {num_train_timesteps} timesteps is none; "
                                                          f"use at least {1 / num_train_timesteps:g}")
    if strategy == "range" and end > num_train_timesteps:
        raise ImagicInputError("--timestep_bias_end", f"{end} is past the schedule's {num_train_timesteps} "
                                                      f"timesteps (0..{num_train_timesteps - 1})")
    weights = torch.ones(num_train_timesteps, dtype=torch.float64)
    biased = {"later": slice(num_train_timesteps - count, None), "earlier": slice(0, count),
              "range": slice(begin, end)}[strategy]
    weights[biased] *= multiplier
    return weights / weights.sum()


def draw_noise(latents: torch.Tensor, batch_size: int, num_train_timesteps: int,
               generator: torch.Generator, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (B,) and noise (B, C, h, w), drawn on the CPU.

    Timesteps are uniform over the schedule, or drawn from ``weights`` (see :func:`timestep_weights`).
    Drawing on the CPU makes a seed mean the same thing on every device.
    """
    if weights is None:
        timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator)
    else:
        timesteps = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
    noise = torch.randn((batch_size, *latents.shape[1:]), generator=generator, dtype=torch.float32)
    return timesteps.to(latents.device), noise.to(latents.device)


def denoising_loss(unet, noise_scheduler, latents: torch.Tensor, embeds: PromptEmbeds, *,
                   batch_size: int, generator: torch.Generator, weight_dtype: torch.dtype,
                   add_time_ids: torch.Tensor | None = None,
                   timestep_weights: torch.Tensor | None = None) -> torch.Tensor:
    """One Monte-Carlo estimate of L over ``batch_size`` draws of (t, ε); a scalar, fp32.

    ``latents`` is (1, C, h, w) fp32; the UNet runs in ``weight_dtype`` (call inside
    ``accelerator.autocast()`` for mixed precision); the loss is computed in fp32.
    """
    timesteps, noise = draw_noise(latents, batch_size, noise_scheduler.config.num_train_timesteps, generator,
                                  timestep_weights)
    clean = latents.expand(batch_size, -1, -1, -1)
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    target = prediction_target(noise_scheduler, clean, noise, timesteps)
    cond = unet_condition(embeds, batch_size, weight_dtype, add_time_ids)
    prediction = unet(noisy.to(weight_dtype), timesteps, **cond).sample
    return F.mse_loss(prediction.float(), target.float())


#: The largest UNet (first block's channels, latent side) whose training steps use PyTorch's own CPU
#: convolutions rather than oneDNN's: see :func:`training_convolutions`.
SMALL_UNET_CHANNELS, SMALL_UNET_LATENT = 32, 16


def training_convolutions(unet, latents: torch.Tensor) -> contextlib.AbstractContextManager:
    """The convolution kernels for steps A and B: PyTorch's own on a multi-threaded CPU for a very
    small UNet (first block at most 32 channels, latent at most 16x16, as the bundled model), else
    the default.

    On such a UNet oneDNN's fixed cost per call outweighs its speed, above all for a LoRA's 1x1 and
    rank-wide convolutions, which PyTorch sends to oneDNN whenever it has more than one thread. On
    2 CPU cores, the bundled model's training steps at batch 4: step B 132 -> 110 ms, step A 50 ->
    46 ms. Not with one thread (PyTorch then keeps 1x1 convolutions off oneDNN itself, and its 3x3
    ones are faster: the shapes benchmark's 60 cases took 30.6 min without it, 29 min with), not for
    step C's sampling (batched, with the VAE at full resolution: 2.6x slower without oneDNN), not in
    fp16/bf16 (oneDNN is the CPU's fast path there; only fp32 was measured), and not for larger
    UNets, where oneDNN is faster already at 64 channels or a 32x32 latent (A 7-16% slower without
    it). Both compute the same convolution, to rounding. The switch is PyTorch's process-wide flag:
    two threads training at once would share it.
    """
    small = (latents.device.type == "cpu" and torch.get_num_threads() > 1 and unet.dtype == torch.float32
             and unet.config.block_out_channels[0] <= SMALL_UNET_CHANNELS
             and max(latents.shape[-2:]) <= SMALL_UNET_LATENT)
    return _onednn_off() if small else contextlib.nullcontext()


@contextlib.contextmanager
def _onednn_off():
    # Not torch.backends.mkldnn.flags(): it also sets oneDNN's TF32 switch, which warns on a CPU build.
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def minimise(unet, noise_scheduler, latents: torch.Tensor, embeds: PromptEmbeds, optimizer, *, accelerator,
             steps: int, batch_size: int, generator: torch.Generator, weight_dtype: torch.dtype,
             add_time_ids: torch.Tensor | None = None, timestep_weights: torch.Tensor | None = None,
             desc: str = "", start_step: int = 0,
             on_step: Callable[[int, list[float]], None] | None = None,
             log: Callable[[dict, int], None] | None = None) -> list[float]:
    """The optimisation loop of steps A and B: optimiser steps ``start_step`` .. ``steps``-1 on L.

    What is trained is whatever ``optimizer`` holds (the embedding in A, the LoRA or UNet in B).
    Each step averages ``accelerator.gradient_accumulation_steps`` batches of ``batch_size``
    draws. Returns the losses of the steps run. Losses stay on the device (no host sync per
    step) except every 10th, which is checked for NaN/inf, shown on the progress bar and passed
    to ``log``. ``on_step(step, losses)`` runs after each step (checkpoints, interruption).
    """
    accumulation = accelerator.gradient_accumulation_steps
    losses: list[torch.Tensor] = []
    progress = tqdm(range(start_step, steps), desc=desc, initial=start_step, total=steps,
                    disable=not accelerator.is_local_main_process)
    with training_convolutions(unet, latents):
        for step in progress:
            step_loss = torch.zeros((), device=latents.device)
            for _ in range(accumulation):
                with accelerator.accumulate(), accelerator.autocast():
                    loss = denoising_loss(unet, noise_scheduler, latents, embeds, batch_size=batch_size,
                                          generator=generator, weight_dtype=weight_dtype,
                                          add_time_ids=add_time_ids, timestep_weights=timestep_weights)
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step_loss += loss.detach() / accumulation
            losses.append(step_loss)
            if step % 10 == 0 or step == steps - 1:
                value = float(step_loss)
                if not math.isfinite(value):
                    raise NonFiniteLossError(desc, step, value)
                progress.set_postfix(loss=f"{value:.4f}")
                if log is not None:
                    log({f"{desc.split(':')[0]}/loss": value}, step)
            if on_step is not None:
                on_step(step, losses)
    return [float(v) for v in losses]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf: under fp16 this is overflow; bf16 or fp32 avoid it."""

    def __init__(self, phase: str, step: int, value: float):
        self.phase, self.step, self.value = phase, step, value
        super().__init__(f"{phase}: the loss became {value} at step {step}; under --mixed_precision fp16 this is "
                         "overflow: use --mixed_precision bf16 (Ampere or newer) or no, or lower the learning rate")
