#!/usr/bin/env python
"""Imagic with LoRA: edit one real image from a target text (Kawar et al., CVPR 2023).

    accelerate launch scripts/imagic_lora.py \\
        --input_image photo.jpg --target_prompt "a photo of a sitting dog" --output_dir out/

The recipe, top to bottom: parse -> Accelerator -> load -> A (optimise the text embedding)
-> B (fine-tune a LoRA so that embedding reproduces the image) -> C (generate along
η·e_tgt + (1−η)·e_opt) -> save the edit artifact. Everything lands in a temporary folder
that replaces --output_dir only once it is complete.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import ProjectConfiguration  # noqa: E402

from imagic_lora import __version__  # noqa: E402
from imagic_lora.artifact import (  # noqa: E402
    CONFIG_NAME, atomic_output_dir, save_embeds, save_full_unet, save_lora_files, write_json, write_model_card)
from imagic_lora.conditioning import encode_prompt, is_sdxl, sdxl_time_ids  # noqa: E402
from imagic_lora.config import ImagicConfig, parse_args  # noqa: E402
from imagic_lora.diffusion import encode_image_latents  # noqa: E402
from imagic_lora.embedding import optimize_embedding  # noqa: E402
from imagic_lora.errors import ImagicInputError  # noqa: E402
from imagic_lora.finetune import finetune, full_finetune_parameters  # noqa: E402
from imagic_lora.generate import generate_sweep, image_name  # noqa: E402
from imagic_lora.images import contact_sheet, load_image, pil_to_tensor  # noqa: E402
from imagic_lora.lora import add_lora, architecture_of, kohya_metadata  # noqa: E402
from imagic_lora.metrics import peak_memory, reset_peak_memory, timed  # noqa: E402
from imagic_lora.models import (  # noqa: E402
    inference_scheduler, load_pipeline, load_tokenizer_and_vocabulary, native_resolution, set_attention,
    training_noise_scheduler, weight_dtype_for)
from imagic_lora.vocabulary import unknown_words  # noqa: E402

logger = logging.getLogger("imagic_lora")


def check_inputs(cfg: ImagicConfig) -> None:
    """Everything checkable before the weights load: files, numbers, output folder, vocabulary."""
    cfg.validate()
    from imagic_lora.models import model_family
    model_family(cfg.pretrained_model_name_or_path, cfg.revision)  # a readable diffusers folder or hub id
    tokenizer, vocabulary = load_tokenizer_and_vocabulary(cfg.pretrained_model_name_or_path, cfg.revision)
    unknown = unknown_words(tokenizer, cfg.target_prompt, vocabulary)
    if unknown:
        known = f"; it knows: {' '.join(sorted(vocabulary))}" if vocabulary else ""
        raise ImagicInputError("--target_prompt", f"the model does not know {', '.join(map(repr, unknown))}{known}")
    length = len(tokenizer(cfg.target_prompt).input_ids)
    if length > tokenizer.model_max_length:
        kept = tokenizer.decode(tokenizer(cfg.target_prompt).input_ids[1:tokenizer.model_max_length - 1])
        logger.warning("--target_prompt is %d tokens; the text encoder reads %d, so it is cut after: %r",
                       length, tokenizer.model_max_length, kept)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(name)s: %(message)s", level=logging.INFO)
    # ---- 1. parse and check, before any model loads -------------------------------------
    cfg = parse_args(argv)
    try:
        check_inputs(cfg)
    except ImagicInputError as e:
        print(f"imagic_lora: error: {e}", file=sys.stderr)
        return 2

    timings: dict[str, float] = {}
    with atomic_output_dir(cfg.output_dir, overwrite=cfg.overwrite) as out:
        # ---- 2. Accelerator: device, mixed precision, trackers --------------------------
        accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            log_with=cfg.report_to, project_config=ProjectConfiguration(project_dir=str(out),
                                                                        logging_dir=str(out / "logs")))
        device = accelerator.device
        if cfg.report_to:
            accelerator.init_trackers("imagic_lora", config={k: str(v) for k, v in cfg.to_dict().items()})
        if cfg.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        reset_peak_memory(device)
        # Frozen weights in the reduced dtype; trainable tensors and losses stay fp32.
        weight_dtype = weight_dtype_for(accelerator.mixed_precision)

        # ---- 3. load the base model --------------------------------------------------------
        with timed(timings, "load", device):
            pipe = load_pipeline(cfg.pretrained_model_name_or_path, revision=cfg.revision, variant=cfg.variant,
                                 weight_dtype=weight_dtype, vae_model_name_or_path=cfg.pretrained_vae_model_name_or_path)
            unet = pipe.unet.to(device)
            attention = set_attention(unet, cfg.enable_xformers_memory_efficient_attention)
            if cfg.gradient_checkpointing:
                unet.enable_gradient_checkpointing()
            noise_scheduler = training_noise_scheduler(pipe)
            resolution = cfg.resolution or native_resolution(pipe)
            image = load_image(cfg.input_image, resolution, cfg.resize_mode)
            # The text encoder(s) and the VAE run once here, then leave the accelerator for A and B.
            pipe.text_encoder.to(device)
            if is_sdxl(pipe):
                pipe.text_encoder_2.to(device)
            e_tgt = encode_prompt(pipe, cfg.target_prompt, device)
            pipe.vae.to(device)
            latents = encode_image_latents(pipe.vae, pil_to_tensor(image))
            for module in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None), pipe.vae):
                if module is not None:
                    module.to("cpu")
            add_time_ids = sdxl_time_ids(resolution).to(device) if is_sdxl(pipe) else None

        # ---- 4. step A: optimise the embedding, the UNet frozen ----------------------------
        with timed(timings, "A", device):
            e_opt, losses_a = optimize_embedding(
                unet, noise_scheduler, latents, e_tgt, accelerator=accelerator, steps=cfg.emb_train_steps,
                learning_rate=cfg.emb_learning_rate, batch_size=cfg.train_batch_size,
                generator=torch.Generator().manual_seed(cfg.seed), weight_dtype=weight_dtype,
                add_time_ids=add_time_ids)

        # ---- 5. step B: fine-tune (LoRA by default) so that e_opt reproduces the image ------
        with timed(timings, "B", device):
            if cfg.full_finetune:
                params = full_finetune_parameters(unet)
            else:
                params = add_lora(unet, rank=cfg.rank, alpha=cfg.effective_lora_alpha,
                                  target_modules=cfg.lora_target_module_list, seed=cfg.seed)
            n_trainable = sum(p.numel() for p in params)
            losses_b = finetune(
                unet, noise_scheduler, latents, e_opt, params, accelerator=accelerator, steps=cfg.max_train_steps,
                learning_rate=cfg.learning_rate, batch_size=cfg.train_batch_size, use_8bit_adam=cfg.use_8bit_adam,
                weight_decay=cfg.adam_weight_decay, generator=torch.Generator().manual_seed(cfg.seed + 1),
                weight_dtype=weight_dtype, add_time_ids=add_time_ids)
            if cfg.full_finetune:
                unet.to(dtype=weight_dtype)  # what is saved, and what generates, is the weight dtype
            del params
        train_memory = peak_memory(device)

        # ---- 6. step C: generate along the interpolation ------------------------------------
        with timed(timings, "C", device):
            pipe.to(device)
            pipe.scheduler = inference_scheduler(pipe, cfg.scheduler)
            images = generate_sweep(pipe, e_tgt, e_opt, etas=cfg.etas, seeds=cfg.seeds,
                                    guidance_scale=cfg.guidance_scale, num_inference_steps=cfg.num_inference_steps,
                                    resolution=resolution, show_progress=accelerator.is_local_main_process)

        # ---- 7. save the artifact and the images ---------------------------------------------
        with timed(timings, "save", device):
            (out / "images").mkdir()
            image.save(out / "images" / "input.png")
            for (eta, seed), picture in images.items():
                picture.save(out / "images" / image_name(eta, seed))
            contact_sheet(image, images, cfg.etas, cfg.seeds).save(out / "images" / "grid.png")
            architecture = architecture_of(pipe)
            if cfg.full_finetune:
                save_full_unet(out, unet, weight_dtype)
            else:
                meta = kohya_metadata(rank=cfg.rank, alpha=cfg.effective_lora_alpha,
                                      base_model=cfg.pretrained_model_name_or_path, architecture=architecture,
                                      resolution=resolution, target_prompt=cfg.target_prompt)
                save_lora_files(out, pipe, lora_alpha=cfg.effective_lora_alpha,
                                kohya_metadata=meta if cfg.output_kohya_format else None)
            save_embeds(out, e_tgt, e_opt, {"base_model": cfg.pretrained_model_name_or_path,
                                            "target_prompt": cfg.target_prompt, "format": "imagic-lora/1"})
        record = {
            **cfg.to_dict(),
            "format": "imagic-lora/1",
            "artifact_name": Path(cfg.output_dir).name,
            "family": "sdxl" if is_sdxl(pipe) else "sd",
            "architecture": architecture,
            "pipeline_class": type(pipe).__name__,
            "scheduler_class": type(pipe.scheduler).__name__,
            "prediction_type": noise_scheduler.config.prediction_type,
            "resolution": resolution,
            "seeds": cfg.seeds,
            "lora_alpha_used": cfg.effective_lora_alpha,
            "lora_target_module_list": cfg.lora_target_module_list,
            "trainable_parameters": n_trainable,
            "attention": attention,
            "weight_dtype": str(weight_dtype).replace("torch.", ""),
            "mixed_precision": accelerator.mixed_precision,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "loss_A": {"first": losses_a[0] if losses_a else None, "last": losses_a[-1] if losses_a else None},
            "loss_B": {"first": losses_b[0] if losses_b else None, "last": losses_b[-1] if losses_b else None},
            "wall_time_s": {k: round(v, 3) for k, v in timings.items()},
            "memory_during_training": train_memory,
            "memory": peak_memory(device),
            "versions": library_versions(),
        }
        write_json(out / CONFIG_NAME, record)
        write_model_card(out, record)
        accelerator.end_training()

    print_summary(cfg, timings, record)
    return 0


def library_versions() -> dict[str, str]:
    import importlib.metadata as md
    versions = {"imagic_lora": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "xformers"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def print_summary(cfg: ImagicConfig, timings: dict[str, float], record: dict) -> None:
    phases = " | ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
    memory = record["memory"]
    mem = ", ".join(f"{k.replace('_gib', '')} {v:.2f} GiB" for k, v in memory.items())
    print(f"\nimagic_lora: done in {sum(timings.values()):.1f} s ({phases}); memory: {mem}")
    print(f"imagic_lora: loss A {record['loss_A']['first']} -> {record['loss_A']['last']}, "
          f"B {record['loss_B']['first']} -> {record['loss_B']['last']}")
    print(f"imagic_lora: images in {Path(cfg.output_dir) / 'images'} (contact sheet: grid.png); "
          f"artifact in {cfg.output_dir}; recommended eta {cfg.recommended_eta}")
    print(json.dumps({"wall_time_s": record["wall_time_s"]}))


if __name__ == "__main__":
    sys.exit(main())
