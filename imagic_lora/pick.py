"""Step C's automatic pick: which of the generated images is the edit, by the model's own scores.

The paper draws several seeds at several η and lets a person choose; it names choosing
automatically as future work. Here every candidate image y (η > 0) gets three numbers:

- a text score, a diffusion classifier between two embeddings, read with the *base* model
  (the LoRA switched off, so the fine-tuning's memory of the input does not vote). With the mean
  denoising errors err(y, e) = 1/K Σ_k ||target_k − f(y_{t_k}, t_k, e)||² over K (t_k, ε_k) pairs shared
  by all candidates, t_k spread over the noisier half of the schedule (where the layout and the object
  are decided):

      s(y) = 1 − err(y, e_tgt) / err(y, e_ref)          (``--pick_score ratio``)

  the share of e_ref's error that the target text explains. The difference err(y, e_ref) − err(y, e_tgt)
  (``--pick_score difference``, the rule before) grows with how much of the image the text describes:
  a large object outscored a small one for its area, so a size edit lost to an image that had kept
  the old size. e_ref is the unconditional embedding
  (the empty prompt's, as step C's guidance uses; ``--pick_contrast empty_prompt``): s asks how much
  the target text explains y beyond no text, so a side effect the text does not ask for (another
  colour or size than it names) lowers it. Against e_opt instead (the rule until issue 22), s also
  grew with any departure from the input, side effects included. The larger s, the better the target
  text explains y compared with e_ref;
- a structure distance to the input: 1 − the correlation of the two images' edge maps (gradient
  magnitude, blurred by a tenth of the frame; :func:`structure_distances`). It asks whether the
  outlines lie where the input's do, at any contrast: a recoloured object or a new background
  moves every pixel but no edge, so it stays at 0, while a moved object is far;
- a place shift: how far the centre of the image's *extent* (the box around its strongest edges,
  :func:`extent_centres`) lies from the input's, as a share of the frame. It asks where the object
  is, whatever its outline: a shape turned or redrawn in place keeps its box's centre, where its
  edge map no longer correlates with the input's.

The input itself is scored too, with the same noises: s(x) is what "unedited" scores. It is the
reference, not 0: an unedited image is explained by the target text's unchanged words too (and
against e_opt, which carries more of the photo than its attributes, an edit that keeps the object in
place scores lower than one that moves it, often below 0, while the input scores lower still).

The rule, in two steps:

1. *In place first.* The candidates whose place shift is at most ``place_shift`` kept the photo's
   layout, whether their outlines changed or not. If any of them beats the input's score, the pick is
   the best-scoring of them. Deciding among the in-place candidates alone matters because a moved
   object scores high on its own account (against e_opt, which expects it where it was). No outline is
   rewarded for being the input's: an edit that must change the outline (a triangle turned, a shape
   grown or redrawn) competes with a recolour on its score alone.
2. *Otherwise* (no candidate kept the layout; none of those beats the input's score; or
   ``place_shift`` 0): a candidate counts as edited when its score lies at least ``keep_fraction`` of
   the way from s(x) to the best score, and the edited one nearest the input in structure is the pick.
   When no candidate beats the input's own score, it is the best-scoring one.

Why these constants, with the figures behind each: docs/pick.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .conditioning import PromptEmbeds, unet_condition
from .diffusion import encode_image_latents, prediction_target
from .images import pil_to_tensor

# Step 2: edited means at least this fraction of the way from the input's score to the best. Stricter
# fractions drop size edits, which score lower than recolours (docs/pick.md).
KEEP_FRACTION = 0.6

# Step 1: in place when the extent's centre lies within this share of the frame of the input's (the benchmark's
# 6 px of 64; docs/pick.md).
PLACE_SHIFT = 6 / 64


@dataclass
class Pick:
    index: int  # which candidate
    text_scores: list[float]  # s(y) per candidate
    distances: list[float]  # structure distance to the input per candidate (structure_distances)
    kept: list[bool]  # candidates counted as edited by the step that decided (see choose)
    reference: float = 0.0  # s of the input itself: what "unedited" scores
    in_place: list[bool] | None = None  # candidates within place_shift of the input (None: step 1 off)
    chosen_in_place: bool = False  # step 1 decided: the pick was made among the in-place candidates alone
    shifts: list[float] | None = None  # place shift per candidate (extent_shifts; None: not measured)


def _json_number(x: float) -> float | None:
    """Rounded for the record; a non-finite score (an fp16 overflow) is written as null, not a bare NaN."""
    return round(x, 6) if math.isfinite(x) else None


def ranking(pick: Pick) -> list[int]:
    """The candidates in the rule's order of preference: the pick, the other kept ones (best score first when
    step 1 decided, else nearest first), then the rest by text score."""
    n = len(pick.text_scores)
    score = [s if math.isfinite(s) else -math.inf for s in pick.text_scores]
    order = (lambda i: -score[i]) if pick.chosen_in_place else (lambda i: pick.distances[i])
    kept = sorted((i for i in range(n) if pick.kept[i] and i != pick.index), key=order)
    rest = sorted((i for i in range(n) if not pick.kept[i] and i != pick.index), key=lambda i: -score[i])
    return [pick.index] + kept + rest


def pick_record(pick: Pick, candidates: list[tuple[float, int, float]], image: str, scored_with: str,
                calibrated: bool = True, contrast: str = "empty_prompt", score: str = "ratio") -> dict:
    """What imagic_config.json keeps of a pick among ``candidates`` [(eta, seed, strength), ...]: the picked
    (eta, seed, strength), where its copy is, which step of the rule decided ("chosen_in_place": step 1), every
    candidate's numbers ("place_shift": the extent's shift; "in_place": within the flag's bound, null when step 1
    is off), and the candidates ranked. ``calibrated``: the rule's thresholds were tuned on this kind of model
    (the shapes world); elsewhere the pick is a suggestion to check against the ranking. ``contrast``: the
    embedding the text scores contrast e_tgt with ("empty_prompt" or "e_opt"); ``score``: how ("ratio" or
    "difference", :func:`text_scores`)."""
    def draw(c: tuple[float, int, float]) -> dict:
        return {"eta": c[0], "seed": c[1], "strength": c[2]}

    in_place = pick.in_place if pick.in_place is not None else [None] * len(candidates)
    shifts = pick.shifts if pick.shifts is not None else [math.nan] * len(candidates)
    return {"image": image, **draw(candidates[pick.index]), "scored_with": scored_with, "contrast": contrast,
            "score": score, "calibrated": calibrated,
            "ranking": [draw(candidates[i]) for i in ranking(pick)],
            "input_text_score": _json_number(pick.reference), "chosen_in_place": pick.chosen_in_place,
            "candidates": [{**draw(c), "text_score": _json_number(t), "structure_distance": _json_number(d),
                            "place_shift": _json_number(h), "kept": k, "in_place": p}
                           for c, t, d, h, k, p in zip(candidates, pick.text_scores, pick.distances, shifts,
                                                       pick.kept, in_place)]}


# The structure distance works at this resolution (an image is area-resized down to it first), so that its
# blur is the same fraction of the frame at any resolution.
STRUCTURE_SIZE = 64
# Blur of the edge maps, as a fraction of the frame's side (6.4 px at 64; docs/pick.md).
STRUCTURE_BLUR = 0.1


def _replicate_conv(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """Correlate each channel of x (N, C, H, W) with a 1-D kernel along dim (2: rows, 3: columns), edges
    replicated."""
    r = kernel.numel() // 2
    pad = (0, 0, r, r) if dim == 2 else (r, r, 0, 0)
    shape = (1, 1, -1, 1) if dim == 2 else (1, 1, 1, -1)
    c = x.shape[1]
    weight = kernel.to(x).view(shape).repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, pad, mode="replicate"), weight, groups=c)


def edge_map(images: torch.Tensor, blur: float = STRUCTURE_BLUR) -> torch.Tensor:
    """(N, 3, H, W) images, any range -> (N, S, S) blurred gradient magnitude (Sobel, summed over the
    colour channels) at S = STRUCTURE_SIZE (images larger than that are area-resized first)."""
    return gaussian_blur(gradient_magnitude(images)[:, None], blur)[:, 0]


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) images, any range -> (N, S, S) gradient magnitude (Sobel, summed over the colour channels)
    at S = STRUCTURE_SIZE (images larger than that are area-resized first), unblurred."""
    x = images.float()
    if max(x.shape[-2:]) > STRUCTURE_SIZE:
        x = F.interpolate(x, size=(STRUCTURE_SIZE, STRUCTURE_SIZE), mode="area")
    diff, smooth = torch.tensor([1.0, 0.0, -1.0]), torch.tensor([1.0, 2.0, 1.0])
    gy = _replicate_conv(_replicate_conv(x, diff, 2), smooth, 3)
    gx = _replicate_conv(_replicate_conv(x, diff, 3), smooth, 2)
    return torch.sqrt(gx ** 2 + gy ** 2).sum(1)


# The extent of an image: the box around its edges at least this fraction of the way from its weakest to its
# strongest gradient (measured on world version 2's tuning cases: docs/pick.md).
EXTENT_FRACTION = 0.5


def extent_centres(images: list[Image.Image]) -> torch.Tensor:
    """(N, 2): the centre (x, y), as shares of the frame, of each image's extent: the box around the pixels whose
    gradient magnitude (:func:`gradient_magnitude`) lies at least ``EXTENT_FRACTION`` of the way from the image's
    weakest to its strongest. Where the object is, whatever its outline: a triangle turned in place keeps its
    box's centre, one moved does not."""
    return _extent_centres(torch.cat([pil_to_tensor(i) for i in images]))


def _extent_centres(pixels: torch.Tensor, margin: int = 0) -> torch.Tensor:
    """:func:`extent_centres` of (N, 3, H, W) images in any range -> (N, 2); ``margin`` > 0 ignores the gradient
    within that many pixels (at S) of the frame's edges (a replay's variant, docs/shapes_benchmark.md)."""
    magnitude = gradient_magnitude(pixels)  # (N, S, S)
    centres = []
    for m in magnitude:
        m = m - m.min()
        if margin > 0:
            inner = torch.zeros_like(m)
            inner[margin:-margin, margin:-margin] = m[margin:-margin, margin:-margin]
            m = inner
        ys, xs = torch.nonzero(m >= EXTENT_FRACTION * m.max(), as_tuple=True)
        centres.append([(xs.min() + xs.max()).item() / 2, (ys.min() + ys.max()).item() / 2])
    return torch.tensor(centres) / magnitude.shape[-1]


def extent_shifts(candidates: list[Image.Image], reference: Image.Image) -> list[float]:
    """How far each candidate's extent's centre lies from the reference's, in shares of the frame."""
    return _extent_shifts(torch.cat([pil_to_tensor(c) for c in candidates]), pil_to_tensor(reference))


def _extent_shifts(pixels: torch.Tensor, reference: torch.Tensor, margin: int = 0) -> list[float]:
    """:func:`extent_shifts` of (N, 3, H, W) candidates from a (1, 3, H, W) reference, in the same range (``margin``:
    as :func:`_extent_centres`)."""
    centres = _extent_centres(torch.cat([pixels, reference]), margin)
    return (centres[:-1] - centres[-1]).norm(dim=1).tolist()


def gaussian_blur(maps: torch.Tensor, blur: float) -> torch.Tensor:
    """(N, C, S, S) -> the same, each channel blurred by a Gaussian of sigma ``blur`` x S, edges replicated."""
    sigma = blur * maps.shape[-1]
    radius = int(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    gauss = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    gauss = gauss / gauss.sum()
    return _replicate_conv(_replicate_conv(maps, gauss, 2), gauss, 3)


def structure_distances(candidates: torch.Tensor, reference: torch.Tensor, blur: float = STRUCTURE_BLUR) -> torch.Tensor:
    """1 - the correlation of each candidate's edge map with the reference's: (N, 3, H, W) and
    (1, 3, H, W) images in the same range -> (N,) in [0, 2]; 0 where the edges lie where the
    reference's do, at any contrast. Blind to a change of colour or background brightness, which
    moves every pixel but no edge; it grows as outlines move away from where the reference has them."""
    maps = edge_map(torch.cat([candidates, reference]), blur)
    maps = maps.flatten(1) - maps.flatten(1).mean(1, keepdim=True)
    c, r = maps[:-1], maps[-1:]
    c_var, r_var = (c * c).sum(1), (r * r).sum(1)
    correlation = (c * r).sum(1) / (c_var * r_var).clamp_min(1e-20).sqrt()
    # An image without edges (a flat colour) correlates with nothing, but matches another flat one.
    flat_c, flat_r = c_var < 1e-12, bool(r_var < 1e-12)
    correlation = torch.where(flat_c | flat_r, (flat_c & flat_r).float(), correlation)
    return (1.0 - correlation).clamp(0.0, 2.0)  # (rounding can leave an identical map at -1e-7)


def score_timesteps(num_train_timesteps: int, num_timesteps: int) -> torch.Tensor:
    """(K,) timesteps spread evenly over the noisier half of the schedule, [T/2, T)."""
    half = num_train_timesteps / 2
    return ((torch.arange(num_timesteps) + 0.5) * half / num_timesteps + half).long()


#: How the text score compares the errors under e_tgt and e_ref (--pick_score).
SCORES = ("ratio", "difference")


@torch.no_grad()
def text_scores(unet, noise_scheduler, latents: torch.Tensor, e_tgt: PromptEmbeds, e_ref: PromptEmbeds, *,
                num_timesteps: int = 16, generator: torch.Generator, weight_dtype: torch.dtype,
                add_time_ids: torch.Tensor | None = None, batch_size: int = 64, progress: bool = False,
                score: str = "ratio") -> torch.Tensor:
    """s(y) for each latent: (N, C, h, w) fp32 -> (N,) fp32; positive where e_tgt denoises y better
    than e_ref (the unconditional embedding, or e_opt): ``score`` "ratio", 1 - err(e_tgt) / err(e_ref), or
    "difference", err(e_ref) - err(e_tgt), of the mean errors over the K noise levels. One draw of K noises
    from ``generator`` (on the CPU), shared by every candidate and both embeddings, so that differences between
    candidates are not sampling noise."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    n = latents.shape[0]
    timesteps = score_timesteps(noise_scheduler.config.num_train_timesteps, num_timesteps)
    noise = torch.randn((num_timesteps, *latents.shape[1:]), generator=generator, dtype=torch.float32)
    clean = latents.repeat_interleave(num_timesteps, dim=0)  # (N*K, C, h, w): candidate-major
    noise = noise.repeat(n, 1, 1, 1).to(latents.device)
    timesteps = timesteps.repeat(n).to(latents.device)
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    target = prediction_target(noise_scheduler, clean, noise, timesteps)
    errors = {}
    calls = 2 * -(-n * num_timesteps // batch_size)
    bar = tqdm(total=calls, desc="pick: score", unit="call", disable=None if progress else True)
    for name, embeds in (("tgt", e_tgt), ("ref", e_ref)):
        parts = []
        for start in range(0, n * num_timesteps, batch_size):
            stop = min(start + batch_size, n * num_timesteps)
            cond = unet_condition(embeds, stop - start, weight_dtype, add_time_ids)
            prediction = unet(noisy[start:stop].to(weight_dtype), timesteps[start:stop], **cond).sample
            parts.append((prediction.float() - target[start:stop].float()).pow(2).flatten(1).mean(1))
            bar.update()
        errors[name] = torch.cat(parts).view(n, num_timesteps).mean(1)
    bar.close()
    if score == "ratio":
        return 1.0 - errors["tgt"] / errors["ref"].clamp_min(1e-12)
    return errors["ref"] - errors["tgt"]


def _edited(scores: list[float], candidates: list[bool], reference: float, fraction: float) -> list[bool]:
    """Which of the ``candidates`` score at least ``fraction`` of the way from ``reference`` to their best
    (never above the best itself, so that the best always passes, even at 1.0 after rounding)."""
    best = max(s for s, c in zip(scores, candidates) if c)
    bar = min(reference + fraction * (best - reference), best)
    return [c and s >= bar for s, c in zip(scores, candidates)]


def choose(text_scores: list[float], distances: list[float], keep_fraction: float = KEEP_FRACTION,
           reference: float = 0.0, shifts: list[float] | None = None, place_shift: float = PLACE_SHIFT) -> Pick:
    """The rule of the module docstring on given scores, structure distances and place shifts (equal lengths,
    >= 1).

    ``reference`` is the score of an unedited image, the input's own. Step 1: when a candidate's shift lies
    within ``place_shift`` (no ``shifts``, or 0, turns step 1 off) and one of those beats the reference, the
    pick is the best-scoring of those. Step 2, otherwise: among all, a candidate counts as edited when its
    score lies at least ``keep_fraction`` of the way from the reference to the best score; the pick is the
    edited one nearest in structure, or the best-scoring one when none beats the reference. A non-finite score
    counts as the lowest."""
    n = len(text_scores)
    if not n or len(distances) != n or (shifts is not None and len(shifts) != n):
        raise ValueError("choose() needs one score, one distance and one shift (if any) per candidate, at least one")
    scores = [s if math.isfinite(s) else -math.inf for s in text_scores]
    in_place = [d <= place_shift for d in shifts] if shifts is not None and place_shift > 0 else None

    if in_place and any(in_place) and max(s for s, p in zip(scores, in_place) if p) > reference:
        kept = [p and s > reference for s, p in zip(scores, in_place)]
        index = max((i for i in range(n) if in_place[i]), key=lambda i: scores[i])
        return Pick(index, list(text_scores), list(distances), kept, reference, in_place, True, shifts)
    best = max(scores)
    if best > reference:
        kept = _edited(scores, [True] * n, reference, keep_fraction)
        index = min((i for i in range(n) if kept[i]), key=lambda i: distances[i])
    else:
        kept = [False] * n
        index = scores.index(best)
    return Pick(index, list(text_scores), list(distances), kept, reference, in_place, False, shifts)


@torch.no_grad()
def pick_edit(pipe, noise_scheduler, input_image: Image.Image, input_latents: torch.Tensor, candidates: list,
              e_tgt: PromptEmbeds, e_ref: PromptEmbeds, *, seed: int, weight_dtype: torch.dtype,
              add_time_ids: torch.Tensor | None = None, num_timesteps: int = 16,
              keep_fraction: float = KEEP_FRACTION, place_shift: float = PLACE_SHIFT,
              batch_size: int = 8, progress: bool = False, score: str = "ratio") -> tuple[Pick, str]:
    """Pick the edit among ``candidates`` (PIL images at the input's resolution) for the input: the
    PIL image steps A and B trained on and its latent (1, C, h, w). The pipeline's VAE and UNet must
    be on the device. The UNet's LoRA, if any, is switched off while scoring and back on after; a
    fully fine-tuned UNet scores itself. The text scores contrast ``e_tgt`` with ``e_ref``: the unconditional
    embedding (:func:`imagic_lora.conditioning.unconditional_embeds`, the CLI's default) or e_opt, by ``score``
    (:func:`text_scores`).
    ``batch_size`` noisy latents go through the UNet at a time: twice step C's images per call
    (classifier-free guidance doubles its batch) keeps the peak memory at step C's.
    Returns the pick and which model scored ("base" or "fine-tuned")."""
    device = input_latents.device
    pixels = torch.cat([pil_to_tensor(c) for c in candidates])  # (N, 3, H, W) in [-1, 1], on the CPU
    reference = pil_to_tensor(input_image)
    distances = structure_distances(pixels, reference)  # at 64 px: cheap at any size
    shifts = _extent_shifts(pixels, reference)
    latents = torch.cat([encode_image_latents(pipe.vae, pixels[i:i + 1].to(device)) for i in range(len(pixels))])
    latents = torch.cat([latents, input_latents.float()])  # the input last: its score is the reference
    unet = pipe.unet
    has_lora = bool(getattr(unet, "peft_config", None))
    if has_lora:
        unet.disable_adapters()
    try:
        scores = text_scores(unet, noise_scheduler, latents, e_tgt.to(device), e_ref.to(device),
                             num_timesteps=num_timesteps, generator=torch.Generator().manual_seed(seed),
                             weight_dtype=weight_dtype, add_time_ids=add_time_ids, batch_size=batch_size,
                             progress=progress, score=score)
    finally:
        if has_lora:
            unet.enable_adapters()
    scores = scores.tolist()
    return choose(scores[:-1], distances.tolist(), keep_fraction, reference=scores[-1], shifts=shifts,
                  place_shift=place_shift), \
        "base" if has_lora else "fine-tuned"
