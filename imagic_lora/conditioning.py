"""Text conditioning in one place: encoding, the Imagic interpolation, and the UNet's inputs.

Stable Diffusion 1.x/2.x condition the UNet on one sequence of text-encoder hidden states
(SD1: 1x77x768, SD2: 1x77x1024). SDXL concatenates two encoders' states (1x77x2048) and adds
a pooled embedding (1x1280) and ``add_time_ids`` (original size, crop, target size).
:class:`PromptEmbeds` carries whichever the family uses, so the optimisation, fine-tuning and
generation code is the same for every family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PromptEmbeds:
    """A prompt's conditioning: ``prompt_embeds`` (1, L, D); SDXL also ``pooled_prompt_embeds`` (1, P)."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.prompt_embeds, self.pooled_prompt_embeds) if t is not None]

    def to(self, device=None, dtype=None) -> "PromptEmbeds":
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype)
        return PromptEmbeds(move(self.prompt_embeds), move(self.pooled_prompt_embeds))

    def detach(self) -> "PromptEmbeds":
        return PromptEmbeds(*(None if t is None else t.detach().clone() for t in
                              (self.prompt_embeds, self.pooled_prompt_embeds)))

    def pipeline_kwargs(self, dtype: torch.dtype | None = None) -> dict:
        """Keyword arguments for a stock diffusers pipeline call."""
        kwargs = {"prompt_embeds": self.prompt_embeds.to(dtype=dtype)}
        if self.pooled_prompt_embeds is not None:
            kwargs["pooled_prompt_embeds"] = self.pooled_prompt_embeds.to(dtype=dtype)
        return kwargs

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """``{prefix}_prompt_embeds`` (and ``{prefix}_pooled_prompt_embeds``), fp32, contiguous."""
        out = {f"{prefix}_prompt_embeds": self.prompt_embeds.detach().float().cpu().contiguous()}
        if self.pooled_prompt_embeds is not None:
            out[f"{prefix}_pooled_prompt_embeds"] = self.pooled_prompt_embeds.detach().float().cpu().contiguous()
        return out

    @classmethod
    def cat(cls, embeds: list["PromptEmbeds"]) -> "PromptEmbeds":
        """A batch: (N, L, D) [+ (N, P)] from N single conditionings, in order."""
        pooled = [e.pooled_prompt_embeds for e in embeds]
        return cls(torch.cat([e.prompt_embeds for e in embeds]), None if pooled[0] is None else torch.cat(pooled))

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], prefix: str) -> "PromptEmbeds":
        return cls(tensors[f"{prefix}_prompt_embeds"], tensors.get(f"{prefix}_pooled_prompt_embeds"))


def interpolate(e_tgt: PromptEmbeds, e_opt: PromptEmbeds, eta: float) -> PromptEmbeds:
    """Imagic step C: ē = η·e_tgt + (1−η)·e_opt (every tensor the family uses).

    η = 0 gives e_opt (the input image back after fine-tuning), η = 1 the target text's
    embedding, η > 1 extrapolates past it.
    """
    def mix(tgt, opt):
        if tgt is None:
            return None
        return eta * tgt + (1.0 - eta) * opt
    return PromptEmbeds(mix(e_tgt.prompt_embeds, e_opt.prompt_embeds),
                        mix(e_tgt.pooled_prompt_embeds, e_opt.pooled_prompt_embeds))


@torch.no_grad()
def encode_prompt(pipe, prompt: str, device: torch.device | str) -> PromptEmbeds:
    """Encode ``prompt`` exactly as the stock pipeline does (its own ``encode_prompt``), in fp32."""
    if is_sdxl(pipe):
        embeds, _, pooled, _ = pipe.encode_prompt(prompt, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return PromptEmbeds(embeds.float(), pooled.float())
    embeds, _ = pipe.encode_prompt(prompt, device, 1, False)
    return PromptEmbeds(embeds.float())


@torch.no_grad()
def unconditional_embeds(pipe, device: torch.device | str) -> PromptEmbeds:
    """The embedding the stock pipeline's classifier-free guidance contrasts with (no negative prompt): the
    empty prompt's, or zeros where an SDXL pipeline's ``force_zeros_for_empty_prompt`` says so; fp32."""
    if is_sdxl(pipe):
        _, embeds, _, pooled = pipe.encode_prompt("", device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=True)
        return PromptEmbeds(embeds.float(), pooled.float())
    _, embeds = pipe.encode_prompt("", device, 1, True)
    return PromptEmbeds(embeds.float())


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None or type(pipe).__name__.startswith("StableDiffusionXL")


def sdxl_time_ids(resolution: int) -> torch.Tensor:
    """SDXL's micro-conditioning for a square, uncropped image: (1, 6) =
    (original h, w, crop top, left, target h, w)."""
    return torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)


def unet_condition(embeds: PromptEmbeds, batch_size: int, dtype: torch.dtype,
                   add_time_ids: torch.Tensor | None = None) -> dict:
    """UNet keyword arguments for a batch of ``batch_size`` noisy copies of one image.

    Returns ``encoder_hidden_states`` (B, L, D) and, for SDXL, ``added_cond_kwargs`` with
    ``text_embeds`` (B, P) and ``time_ids`` (B, 6). Gradients flow back to ``embeds``.
    """
    kwargs = {"encoder_hidden_states": embeds.prompt_embeds.to(dtype).expand(batch_size, -1, -1)}
    if embeds.pooled_prompt_embeds is not None:
        if add_time_ids is None:
            raise ValueError("SDXL conditioning needs add_time_ids")
        kwargs["added_cond_kwargs"] = {
            "text_embeds": embeds.pooled_prompt_embeds.to(dtype).expand(batch_size, -1),
            "time_ids": add_time_ids.to(device=embeds.prompt_embeds.device, dtype=dtype).expand(batch_size, -1),
        }
    return kwargs
