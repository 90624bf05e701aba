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
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .conditioning import PromptEmbeds, unet_condition
from .errors import ArgumentError


@contextlib.contextmanager
def vae_precision(vae):
    """Within: the VAE in fp32 if it is fp16 and its config says ``force_upcast`` (SDXL's own VAE overflows
    in fp16), as the stock pipeline decodes; back to fp16 after, bit for bit (fp16 values are exact in fp32)."""
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        yield vae
    finally:
        if upcast:
            vae.to(dtype=torch.float16)


@torch.no_grad()
def encode_image_latents(vae, pixel_values: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> the scaled latents x (N, C, H/f, W/f), fp32.

    The posterior mean, not a sample: the image is fixed, so its latent should be too.
    """
    with vae_precision(vae):
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
    timestep of this schedule is refused (ArgumentError naming the argument) rather than ignored.
    """
    if strategy == "none" or multiplier == 1.0:
        return None
    count = int(portion * num_train_timesteps)
    if strategy in ("later", "earlier") and count < 1:
        raise ArgumentError("portion", f"{portion} of {num_train_timesteps} timesteps is none; "
                                       f"use at least {1 / num_train_timesteps:g}")
    if strategy == "range" and end > num_train_timesteps:
        raise ArgumentError("end", f"{end} is past the schedule's {num_train_timesteps} "
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


class NoiseDraws:
    """The (timesteps, noise) draws of a loop, one per micro-batch: the same values, in the same order, as
    calling :func:`draw_noise` once per micro-batch, so a seed means the same on every device. On an
    accelerator they are drawn ``chunk`` at a time and copied from pinned memory without waiting, so the
    loop does not stall on the host every step; :meth:`generator_state` is the generator's state before
    the next draw the loop has not taken (what a checkpoint must keep to continue bit for bit)."""

    def __init__(self, latents: torch.Tensor, batch_size: int, num_train_timesteps: int,
                 generator: torch.Generator, weights: torch.Tensor | None = None, chunk: int = 16):
        self.device = latents.device
        self.shape = torch.empty(latents.shape)  # a CPU stand-in: draw_noise draws where its latents are
        self.batch_size, self.num_train_timesteps = batch_size, num_train_timesteps
        self.generator, self.weights = generator, weights
        self.chunk = 1 if self.device.type == "cpu" else chunk
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def _refill(self) -> None:
        states, timesteps, noise = [], [], []
        for _ in range(self.chunk):
            states.append(self.generator.get_state())
            t, n = draw_noise(self.shape, self.batch_size, self.num_train_timesteps, self.generator, self.weights)
            timesteps.append(t)
            noise.append(n)
        if self.device.type == "cpu":
            self._pending = list(zip(states, timesteps, noise))
            return
        pinned = self.device.type == "cuda"
        t, n = torch.stack(timesteps), torch.stack(noise)
        if pinned:
            t, n = t.pin_memory(), n.pin_memory()
        t, n = t.to(self.device, non_blocking=pinned), n.to(self.device, non_blocking=pinned)
        self._pending = list(zip(states, t.unbind(0), n.unbind(0)))

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps (B,) and noise (B, C, h, w) on the latents' device."""
        if not self._pending:
            self._refill()
        _, timesteps, noise = self._pending.pop(0)
        return timesteps, noise

    def generator_state(self) -> torch.Tensor:
        """The generator's state as if the loop had drawn exactly what it has taken so far."""
        return self._pending[0][0] if self._pending else self.generator.get_state()


def denoising_loss(unet, noise_scheduler, latents: torch.Tensor, embeds: PromptEmbeds, *,
                   batch_size: int, generator: torch.Generator | None = None, weight_dtype: torch.dtype,
                   add_time_ids: torch.Tensor | None = None, timestep_weights: torch.Tensor | None = None,
                   draws: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """One Monte-Carlo estimate of L over ``batch_size`` draws of (t, ε); a scalar, fp32.

    ``latents`` is (1, C, h, w) fp32; the UNet runs in ``weight_dtype`` (call inside
    ``accelerator.autocast()`` for mixed precision); the loss is computed in fp32. The draws are
    ``draws`` (timesteps (B,), noise (B, C, h, w)) when given, else drawn from ``generator``.
    """
    if draws is None:
        draws = draw_noise(latents, batch_size, noise_scheduler.config.num_train_timesteps, generator,
                           timestep_weights)
    timesteps, noise = draws
    clean = latents.expand(batch_size, -1, -1, -1)
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    target = prediction_target(noise_scheduler, clean, noise, timesteps)
    cond = unet_condition(embeds, batch_size, weight_dtype, add_time_ids)
    prediction = unet(noisy.to(weight_dtype), timesteps, **cond).sample
    return F.mse_loss(prediction.float(), target.float())


def minimise(unet, noise_scheduler, latents: torch.Tensor, embeds: PromptEmbeds, optimizer, *, accelerator,
             steps: int, batch_size: int, generator: torch.Generator, weight_dtype: torch.dtype,
             add_time_ids: torch.Tensor | None = None, timestep_weights: torch.Tensor | None = None,
             desc: str = "", start_step: int = 0, max_grad_norm: float = 0.0, lr_scheduler=None,
             on_step: Callable[[int, list, NoiseDraws], None] | None = None,
             log: Callable[[dict, int], None] | None = None) -> list[float]:
    """The optimisation loop of steps A and B: optimiser steps ``start_step`` .. ``steps``-1 on L.

    What is trained is whatever ``optimizer`` holds (the embedding in A, the LoRA or UNet in B).
    Each step averages ``accelerator.gradient_accumulation_steps`` batches of ``batch_size``
    draws; only the forward pass and the loss run under autocast, the backward pass and the
    optimiser step outside it. ``max_grad_norm`` > 0 clips the gradient norm (unscaled under
    fp16). ``lr_scheduler`` (a torch LR scheduler over ``optimizer``, already at ``start_step``) steps
    after each optimiser step. Returns the losses of the steps run. Losses stay on the device (no host sync per
    step) except every 10th, which is checked for NaN/inf, shown on the progress bar and passed
    to ``log``. ``on_step(step, losses, draws)`` runs after each step (checkpoints, interruption).
    """
    accumulation = accelerator.gradient_accumulation_steps
    params = [p for group in optimizer.param_groups for p in group["params"]]
    draws = NoiseDraws(latents, batch_size, noise_scheduler.config.num_train_timesteps, generator, timestep_weights)
    losses: list[torch.Tensor] = []
    # The main process shows a bar on a terminal; a log file gets none (disable=None: tqdm asks the stream).
    progress = tqdm(range(start_step, steps), desc=desc, initial=start_step, total=steps,
                    disable=None if accelerator.is_local_main_process else True)
    for step in progress:
        step_loss = torch.zeros((), device=latents.device)
        for _ in range(accumulation):
            with accelerator.accumulate():
                with accelerator.autocast():
                    loss = denoising_loss(unet, noise_scheduler, latents, embeds, batch_size=batch_size,
                                          weight_dtype=weight_dtype, add_time_ids=add_time_ids, draws=draws.next())
                accelerator.backward(loss)
                if max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                if lr_scheduler is not None and accelerator.sync_gradients:
                    lr_scheduler.step()
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
            on_step(step, losses, draws)
    return [float(v) for v in losses]


def make_lr_scheduler(name: str, optimizer, *, warmup_steps: int, total_steps: int, start_step: int = 0):
    """diffusers' learning-rate schedule ``name`` (constant, cosine, ...) over ``total_steps`` optimiser
    steps, moved on to ``start_step`` (a resumed loop); None for a constant rate without warmup."""
    if name == "constant" and warmup_steps == 0:
        return None
    from diffusers.optimization import get_scheduler
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=min(warmup_steps, total_steps),
                              num_training_steps=max(total_steps, 1))
    with warnings.catch_warnings():  # stepping before any optimiser step is what a resume means here
        warnings.simplefilter("ignore")
        for _ in range(start_step):
            scheduler.step()
    return scheduler


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf: under fp16 this is overflow; bf16 or fp32 avoid it, a lower learning
    rate may."""

    def __init__(self, phase: str, step: int, value: float):
        self.phase, self.step, self.value = phase, step, value
        super().__init__(f"{phase}: the loss became {value} at step {step} (in fp16: an overflow)")
