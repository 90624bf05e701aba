"""Step C's automatic pick: which of the generated images is the edit, by the model's own scores.

The paper draws several seeds at several η and lets a person choose; it names choosing
automatically as future work. Here every candidate image y (η > 0) gets two numbers:

- a text score, a diffusion classifier between the two embeddings, read with the *base* model
  (the LoRA switched off, so the fine-tuning's memory of the input does not vote):

      s(y) = 1/K Σ_k ||target_k − f(y_{t_k}, t_k, e_opt)||² − ||target_k − f(y_{t_k}, t_k, e_tgt)||²

  over K (t_k, ε_k) pairs shared by all candidates, with t_k spread over the noisier half of the
  schedule (where the layout and the object are decided). s > 0: the target text explains y
  better than the input's own embedding does, i.e. the edit is there;
- a distance to the input: the mean squared difference of the VAE latents.

The picked image is, among the candidates whose score is at least ``keep_fraction`` of the best
score, the nearest to the input: the edit made while keeping the most of the photo. When no
score is positive (nothing looks edited), it is the best-scoring one.

Measured on the shapes world (docs/shapes_benchmark.md): on its tuning cases, of 10-14 candidates
(2 seeds x 5-7 η) the pick was edited and in place in 67-69% of cases, against 54-55% for one image
at a fixed η; on the benchmark's 60 cases, 65% from the CLI's default 10 candidates and 68% from
14, against 51% at the recommended η 0.8. A person choosing from the same candidates gets 78-90%.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .conditioning import PromptEmbeds, unet_condition
from .diffusion import encode_image_latents, prediction_target
from .images import pil_to_tensor

KEEP_FRACTION = 0.5  # tuning cases: 0.5 / 0.7 / 0.9 gave 69 / 67 / 69% edited and in place; 0.3: 56%


@dataclass
class Pick:
    index: int  # which candidate
    text_scores: list[float]  # s(y) per candidate
    distances: list[float]  # latent MSE to the input per candidate
    kept: list[bool]  # candidates counted as edited (s >= keep_fraction * max s)


def pick_record(pick: Pick, candidates: list[tuple[float, int]], image: str, scored_with: str) -> dict:
    """What imagic_config.json keeps of a pick among ``candidates`` [(eta, seed), ...]: the picked
    (eta, seed), where its copy is, and every candidate's numbers."""
    eta, seed = candidates[pick.index]
    return {"image": image, "eta": eta, "seed": seed, "scored_with": scored_with,
            "candidates": [{"eta": e, "seed": s, "text_score": round(t, 6), "latent_distance": round(d, 6), "kept": k}
                           for (e, s), t, d, k in zip(candidates, pick.text_scores, pick.distances, pick.kept)]}


def score_timesteps(num_train_timesteps: int, num_timesteps: int) -> torch.Tensor:
    """(K,) timesteps spread evenly over the noisier half of the schedule, [T/2, T)."""
    half = num_train_timesteps / 2
    return ((torch.arange(num_timesteps) + 0.5) * half / num_timesteps + half).long()


@torch.no_grad()
def text_scores(unet, noise_scheduler, latents: torch.Tensor, e_tgt: PromptEmbeds, e_opt: PromptEmbeds, *,
                num_timesteps: int = 16, generator: torch.Generator, weight_dtype: torch.dtype,
                add_time_ids: torch.Tensor | None = None, batch_size: int = 64) -> torch.Tensor:
    """s(y) for each latent: (N, C, h, w) fp32 -> (N,) fp32; positive where e_tgt denoises y better
    than e_opt. One draw of K noises from ``generator`` (on the CPU), shared by every candidate and
    both embeddings, so that differences between candidates are not sampling noise."""
    n = latents.shape[0]
    timesteps = score_timesteps(noise_scheduler.config.num_train_timesteps, num_timesteps)
    noise = torch.randn((num_timesteps, *latents.shape[1:]), generator=generator, dtype=torch.float32)
    clean = latents.repeat_interleave(num_timesteps, dim=0)  # (N*K, C, h, w): candidate-major
    noise = noise.repeat(n, 1, 1, 1).to(latents.device)
    timesteps = timesteps.repeat(n).to(latents.device)
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    target = prediction_target(noise_scheduler, clean, noise, timesteps)
    errors = {}
    for name, embeds in (("tgt", e_tgt), ("opt", e_opt)):
        parts = []
        for start in range(0, n * num_timesteps, batch_size):
            stop = min(start + batch_size, n * num_timesteps)
            cond = unet_condition(embeds, stop - start, weight_dtype, add_time_ids)
            prediction = unet(noisy[start:stop].to(weight_dtype), timesteps[start:stop], **cond).sample
            parts.append((prediction.float() - target[start:stop].float()).pow(2).flatten(1).mean(1))
        errors[name] = torch.cat(parts).view(n, num_timesteps).mean(1)
    return errors["opt"] - errors["tgt"]


def choose(text_scores: list[float], distances: list[float], keep_fraction: float = KEEP_FRACTION) -> Pick:
    """The rule of the module docstring on given scores and distances (equal lengths, >= 1)."""
    if not text_scores or len(text_scores) != len(distances):
        raise ValueError("choose() needs one score and one distance per candidate, at least one")
    best = max(text_scores)
    if best > 0:
        kept = [s >= keep_fraction * best for s in text_scores]
        index = min((i for i, k in enumerate(kept) if k), key=lambda i: distances[i])
    else:
        kept = [False] * len(text_scores)
        index = text_scores.index(best)
    return Pick(index, list(text_scores), list(distances), kept)


@torch.no_grad()
def pick_edit(pipe, noise_scheduler, input_latents: torch.Tensor, candidates: list, e_tgt: PromptEmbeds,
              e_opt: PromptEmbeds, *, seed: int, weight_dtype: torch.dtype, add_time_ids: torch.Tensor | None = None,
              num_timesteps: int = 16, keep_fraction: float = KEEP_FRACTION, batch_size: int = 8) -> tuple[Pick, str]:
    """Pick the edit among ``candidates`` (PIL images at the input's resolution) for the input
    latent (1, C, h, w). The pipeline's VAE and UNet must be on the device. The UNet's LoRA, if
    any, is switched off while scoring and back on after; a fully fine-tuned UNet scores itself.
    ``batch_size`` noisy latents go through the UNet at a time: twice step C's images per call
    (classifier-free guidance doubles its batch) keeps the peak memory at step C's.
    Returns the pick and which model scored ("base" or "fine-tuned")."""
    device = input_latents.device
    latents = torch.cat([encode_image_latents(pipe.vae, pil_to_tensor(c).to(device)) for c in candidates])
    distances = (latents - input_latents).pow(2).flatten(1).mean(1)
    unet = pipe.unet
    has_lora = bool(getattr(unet, "peft_config", None))
    if has_lora:
        unet.disable_adapters()
    try:
        scores = text_scores(unet, noise_scheduler, latents, e_tgt.to(device), e_opt.to(device),
                             num_timesteps=num_timesteps, generator=torch.Generator().manual_seed(seed),
                             weight_dtype=weight_dtype, add_time_ids=add_time_ids, batch_size=batch_size)
    finally:
        if has_lora:
            unet.enable_adapters()
    return choose(scores.tolist(), distances.tolist(), keep_fraction), "base" if has_lora else "fine-tuned"
