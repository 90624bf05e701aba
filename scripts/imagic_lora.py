#!/usr/bin/env python
"""Imagic with LoRA: edit one real image from a target text (Kawar et al., CVPR 2023).

    accelerate launch scripts/imagic_lora.py \\
        --input_image photo.jpg --target_prompt "a photo of a sitting dog" --output_dir out/

The recipe, top to bottom: parse -> Accelerator -> load -> for each edit: A (optimise the text
embedding) -> B (fine-tune a LoRA so that embedding reproduces the image) -> C (generate along
η·e_tgt + (1−η)·e_opt) -> save the edit artifact. An edit is built in a hidden folder beside its
--output_dir (with checkpoints for --resume) and renamed into place only when complete.

Many edits (--manifest, --tedbench) are split between the processes `accelerate launch` starts;
each process runs whole, independent edits on its own copy of the model (no DDP).
"""

from __future__ import annotations

import contextlib
import gc
import json
import shutil
import logging
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from imagic_lora import __version__  # noqa: E402
from imagic_lora.artifact import (  # noqa: E402
    CONFIG_NAME, StagedOutput, save_embeds, save_full_unet, save_lora_files, write_json, write_model_card)
from imagic_lora.checkpoint import CheckpointStore  # noqa: E402
from imagic_lora.conditioning import PromptEmbeds, encode_prompt, interpolate, is_sdxl, sdxl_time_ids  # noqa: E402
from imagic_lora.config import BUNDLED_MODEL, DEFAULT_EXAMPLE, DEFAULT_TARGET_PROMPT, ImagicConfig, parse_args  # noqa: E402,E501
from imagic_lora.diffusion import NonFiniteLossError, encode_image_latents, timestep_weights  # noqa: E402
from imagic_lora.embedding import optimize_embedding  # noqa: E402
from imagic_lora.errors import ImagicInputError  # noqa: E402
from imagic_lora.finetune import finetune, full_finetune_parameters, make_optimizer  # noqa: E402
from imagic_lora.generate import EDIT_IMAGE_NAME, default_sample_batch_size, generate_images, image_name  # noqa: E402,E501
from imagic_lora.images import contact_sheet, load_image, pil_to_tensor  # noqa: E402
from imagic_lora.interrupt import Interrupted, StopFlag  # noqa: E402
from imagic_lora.jobs import Job, is_complete, read_manifest, read_tedbench, write_summary  # noqa: E402
from imagic_lora.lora import add_lora, architecture_of, fused_lora, kohya_metadata  # noqa: E402
from imagic_lora.metrics import peak_memory, timed  # noqa: E402
from imagic_lora.pick import pick_edit, pick_record  # noqa: E402
from imagic_lora.models import (  # noqa: E402
    inference_scheduler, load_pipeline, load_tokenizer_and_vocabulary, model_family, native_resolution,
    prepare_unet, training_noise_scheduler, weight_dtype_for)
from imagic_lora.vocabulary import unknown_words  # noqa: E402

logger = logging.getLogger("imagic_lora")

#: Settings that do not change what an edit computes (sample_batch_size: only the rounding of step
#: C's images; pick_keep_fraction, pick_place_distance: the pick is redone from every image on each run):
#: a checkpoint made under other values resumes.
RESUMABLE_DIFFERENCES = {"overwrite", "resume", "checkpointing_steps", "checkpoints_total_limit", "report_to",
                         "manifest", "tedbench", "sample_batch_size", "pick_keep_fraction",
                         "pick_place_distance"}


# ---- 1. parse and check ----------------------------------------------------------------------

def plan_jobs(cfg: ImagicConfig) -> list[Job]:
    """The edits of this run: a manifest's or TEdBench's, or the one of --input_image."""
    if cfg.manifest:
        return read_manifest(cfg.manifest)
    if cfg.tedbench:
        return read_tedbench(cfg.tedbench)
    image, prompt = cfg.input_image, cfg.target_prompt
    if image is None and Path(cfg.pretrained_model_name_or_path) == BUNDLED_MODEL:
        # No image: the bundled example photo, and its edit unless a target text is given.
        image, prompt = str(DEFAULT_EXAMPLE), DEFAULT_TARGET_PROMPT if prompt is None else prompt
        logger.info("editing the bundled example %s towards %r", image, prompt)
    if prompt is None:
        raise ImagicInputError("--target_prompt", "is required: describe the wanted image")
    return [Job(None, image or "", prompt)]


def check_inputs(cfg: ImagicConfig, jobs: list[Job]) -> None:
    """Everything checkable before the weights load: files, numbers, output folder, vocabulary."""
    single = jobs[0].id is None
    cfg = jobs[0].config(cfg) if single else cfg  # the single edit's image and prompt
    cfg.validate(check_image=single)
    for job in jobs[1:] if single else jobs:
        job.config(cfg).validate(check_image=False)
    model_family(cfg.pretrained_model_name_or_path, cfg.revision)  # a readable diffusers folder or hub id
    tokenizer, vocabulary = load_tokenizer_and_vocabulary(cfg.pretrained_model_name_or_path, cfg.revision)
    for job in jobs:
        where = "--target_prompt" if single else "--manifest"
        prefix = "" if single else f"job {job.id}: "
        if not job.target_prompt.strip():
            raise ImagicInputError(where, f"{prefix}the target prompt is empty")
        unknown = unknown_words(tokenizer, job.target_prompt, vocabulary)
        if unknown:
            known = f"; it knows: {' '.join(sorted(vocabulary))}" if vocabulary else ""
            raise ImagicInputError(where, f"{prefix}the model does not know {', '.join(map(repr, unknown))}{known}")
        ids = tokenizer(job.target_prompt).input_ids
        if len(ids) > tokenizer.model_max_length:
            kept = tokenizer.decode(ids[1:tokenizer.model_max_length - 1])
            logger.warning("%s%s is %d tokens; the text encoder reads %d, so it is cut after: %r", prefix,
                           where, len(ids), tokenizer.model_max_length, kept)


# ---- one edit: A, B, C, save ------------------------------------------------------------------

def edit(cfg: ImagicConfig, pipe, accelerator: Accelerator, noise_scheduler, stop: StopFlag) -> dict:
    """Run one edit into ``cfg.output_dir``; return its record (what imagic_config.json holds)."""
    device = accelerator.device
    weight_dtype = weight_dtype_for(accelerator.mixed_precision)
    unet = pipe.unet
    # Checked against the model's schedule before anything is written.
    weights_b = timestep_weights(cfg.timestep_bias_strategy, noise_scheduler.config.num_train_timesteps,
                                 multiplier=cfg.timestep_bias_multiplier, portion=cfg.timestep_bias_portion,
                                 begin=cfg.timestep_bias_begin, end=cfg.timestep_bias_end)
    if (cfg.timestep_bias_strategy == "none") != (cfg.timestep_bias_multiplier == 1.0):
        logger.warning("--timestep_bias_strategy %s with --timestep_bias_multiplier %g: no bias (both are needed)",
                       cfg.timestep_bias_strategy, cfg.timestep_bias_multiplier)
    stage = StagedOutput(cfg.output_dir)
    out = stage.prepare(resume=cfg.resume)
    store = CheckpointStore(out / "checkpoints", cfg.checkpoints_total_limit)
    check_resumable(store, cfg)
    tracker = None
    if cfg.report_to == "tensorboard":  # per edit, on whichever process runs it
        from torch.utils.tensorboard import SummaryWriter
        tracker = SummaryWriter(str(out / "logs"))
        tracker.add_text("config", json.dumps(cfg.to_dict(), indent=1))
    log = (lambda values, step: [tracker.add_scalar(k, v, step) for k, v in values.items()]) if tracker else None
    timings: dict[str, float] = {}
    phase_memory: dict[str, dict] = {}  # per-phase peaks, on CUDA
    try:
        # The image and the target text, encoded once; the text encoder(s) and the VAE then
        # leave the accelerator for A and B.
        with timed(timings, "encode", device, phase_memory):
            resolution = cfg.resolution or native_resolution(pipe)
            image = load_image(cfg.input_image, resolution, cfg.resize_mode)
            encoders = [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]
            for module in encoders + [pipe.vae]:
                module.to(device)
            e_tgt = encode_prompt(pipe, cfg.target_prompt, device)
            latents = encode_image_latents(pipe.vae, pil_to_tensor(image))  # (1, C, h, w) fp32
            for module in encoders + [pipe.vae]:
                module.to("cpu")
            free_accelerator_cache(device)
            add_time_ids = sdxl_time_ids(resolution).to(device) if is_sdxl(pipe) else None

        # ---- A: optimise the embedding, the UNet frozen ----
        with timed(timings, "A", device, phase_memory):
            if store.has("phase-A"):
                state = store.load("phase-A")
                e_opt = PromptEmbeds(state["prompt_embeds"].to(device), _opt(state["pooled_prompt_embeds"], device))
                losses_a = state["losses"]
            else:
                e_opt, losses_a = optimize_embedding(
                    unet, noise_scheduler, latents, e_tgt, accelerator=accelerator, steps=cfg.emb_train_steps,
                    learning_rate=cfg.emb_learning_rate, batch_size=cfg.effective_emb_train_batch_size,
                    generator=torch.Generator().manual_seed(cfg.seed), weight_dtype=weight_dtype,
                    add_time_ids=add_time_ids, optimize_pooled=not cfg.freeze_pooled_embeds,
                    on_step=lambda step, losses: stop.check(), log=log)
                store.save("phase-A", {"prompt_embeds": e_opt.prompt_embeds,
                                       "pooled_prompt_embeds": e_opt.pooled_prompt_embeds, "losses": losses_a})

        # ---- B: fine-tune (LoRA by default) so that e_opt reproduces the image ----
        with timed(timings, "B", device, phase_memory):
            if cfg.full_finetune:
                params = full_finetune_parameters(unet)
            else:
                params = add_lora(unet, rank=cfg.rank, alpha=cfg.effective_lora_alpha,
                                  target_modules=cfg.lora_target_module_list, seed=cfg.seed)
            trainable = {name: p for name, p in unet.named_parameters() if p.requires_grad}
            optimizer = make_optimizer(params, learning_rate=cfg.learning_rate, use_8bit_adam=cfg.use_8bit_adam,
                                       weight_decay=cfg.adam_weight_decay, accelerator=accelerator)
            generator_b = torch.Generator().manual_seed(cfg.seed + 1)
            start, losses_b = 0, []
            if latest := store.latest_b():
                state = store.load(latest)
                with torch.no_grad():
                    for name, value in state["params"].items():
                        trainable[name].copy_(value)
                optimizer.load_state_dict(state["optimizer"])
                generator_b.set_state(state["generator"])
                start, losses_b = state["step"], state["losses"]
                logger.info("resuming step B at step %d of %d from %s", start, cfg.max_train_steps, latest)

            def checkpoint_b(step: int, new_losses: list) -> None:
                done = step + 1
                if (stop.requested or done == cfg.max_train_steps
                        or (cfg.checkpointing_steps and done % cfg.checkpointing_steps == 0)):
                    store.save(f"B-step-{done:06d}", {
                        "step": done, "losses": losses_b + [float(v) for v in new_losses],
                        "params": {n: p.detach() for n, p in trainable.items()},
                        "optimizer": optimizer.state_dict(), "generator": generator_b.get_state()})
                stop.check()

            losses_b += finetune(unet, noise_scheduler, latents, e_opt, optimizer, accelerator=accelerator,
                                 steps=cfg.max_train_steps, batch_size=cfg.train_batch_size, generator=generator_b,
                                 weight_dtype=weight_dtype, add_time_ids=add_time_ids,
                                 timestep_weights=weights_b, start_step=start, on_step=checkpoint_b, log=log)
            n_trainable = sum(p.numel() for p in params)
            if cfg.full_finetune:
                unet.to(dtype=weight_dtype)  # what is saved, and what generates, is the weight dtype
            del params, trainable, optimizer

        # ---- C: generate along the interpolation (images already there from a resumed run stay) ----
        with timed(timings, "C", device, phase_memory):
            pipe.to(device)
            model_scheduler, pipe.scheduler = pipe.scheduler, inference_scheduler(pipe, cfg.scheduler)
            scheduler_class = type(pipe.scheduler).__name__
            (out / "images").mkdir(exist_ok=True)
            images = {(eta, seed): out / "images" / image_name(eta, seed) for eta in cfg.etas for seed in cfg.seeds}
            pending = [pair for pair, path in images.items() if not path.is_file()]
            batch = cfg.sample_batch_size or default_sample_batch_size(is_sdxl(pipe), resolution)
            try:
                # Fused: faster; the base weights come back bit for bit for the pick (nothing to draw
                # after a resume that had drawn every image: no fusing).
                with fused_lora(pipe) if pending else contextlib.nullcontext():
                    for start in range(0, len(pending), batch):
                        chunk = pending[start:start + batch]
                        made = generate_images(pipe, [interpolate(e_tgt, e_opt, eta) for eta, _ in chunk],
                                               [seed for _, seed in chunk], guidance_scale=cfg.guidance_scale,
                                               num_inference_steps=cfg.num_inference_steps, resolution=resolution)
                        for pair, picture in zip(chunk, made):
                            picture.save(images[pair])
                        stop.check()
            finally:
                pipe.scheduler = model_scheduler  # the next edit starts from the model's own, even after an error
            # ---- C': pick the edit among the images with eta > 0 (the model scores them; no person) ----
            candidates = [pair for pair in images if pair[0] > 0]
            picked = None
            if cfg.pick_edit and candidates:
                # As many noisy latents per UNet call as step C's guided batch (2 x its images), so the
                # pick needs no more memory than C; small latents (16x16: 64 a call) go faster in bulk.
                score_batch = max(2 * batch, 16384 // latents[0, 0].numel())
                pick, scored_with = pick_edit(pipe, noise_scheduler, image, latents.to(device),
                                              [Image.open(images[pair]).convert("RGB") for pair in candidates],
                                              e_tgt, e_opt, seed=cfg.seed + 2, weight_dtype=weight_dtype,
                                              add_time_ids=add_time_ids, keep_fraction=cfg.pick_keep_fraction,
                                              place_distance=cfg.pick_place_distance,
                                              batch_size=score_batch)  # A: seed, B: seed+1
                shutil.copyfile(images[candidates[pick.index]], out / "images" / EDIT_IMAGE_NAME)
                picked = pick_record(pick, candidates, f"images/{EDIT_IMAGE_NAME}", scored_with)
            for module in encoders + [pipe.vae]:
                module.to("cpu")
            free_accelerator_cache(device)

        # ---- save the artifact ----
        with timed(timings, "save", device, phase_memory):
            image.save(out / "images" / "input.png")
            contact_sheet(image, {k: Image.open(v) for k, v in images.items()}, cfg.etas, cfg.seeds,
                          picked=(picked["eta"], picked["seed"]) if picked else None).save(
                out / "images" / "grid.png")
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
            "scheduler_class": scheduler_class,
            "prediction_type": noise_scheduler.config.prediction_type,
            "resolution": resolution,
            "seeds": cfg.seeds,
            "picked": picked,
            "sample_batch_size": batch,
            "emb_train_batch_size": cfg.effective_emb_train_batch_size,
            "lora_alpha_used": cfg.effective_lora_alpha,
            "lora_target_module_list": cfg.lora_target_module_list,
            "trainable_parameters": n_trainable,
            "attention": "xformers" if cfg.enable_xformers_memory_efficient_attention else "sdpa",
            "weight_dtype": str(weight_dtype).replace("torch.", ""),
            "mixed_precision": accelerator.mixed_precision,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "device_type": device.type,
            "loss_A": {"first": losses_a[0] if losses_a else None, "last": losses_a[-1] if losses_a else None},
            "loss_B": {"first": losses_b[0] if losses_b else None, "last": losses_b[-1] if losses_b else None},
            "resumed_from_step_B": start or None,
            "wall_time_s": {k: round(v, 3) for k, v in timings.items()},
            "memory_per_phase": phase_memory,
            "memory": peak_memory(phase_memory),
            "versions": library_versions(),
        }
        write_model_card(out, record)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        write_json(out / CONFIG_NAME, record)  # last: the marker of a complete artifact
        if tracker:
            tracker.close()
            tracker = None
        stage.commit(overwrite=cfg.overwrite)
        return record
    except BaseException as error:
        if tracker:
            tracker.close()
        stage.discard()  # a checkpoint (A or B) is kept for --resume
        raise


def free_accelerator_cache(device) -> None:
    """Hand the memory of modules that left the GPU back to the allocator's pool for others."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _opt(tensor, device):
    return None if tensor is None else tensor.to(device)


def check_resumable(store: CheckpointStore, cfg: ImagicConfig) -> None:
    """Refuse to resume checkpoints made with settings that change the result."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_DIFFERENCES}
    run_file = store.root / "run.json"
    if run_file.is_file():
        before = json.loads(run_file.read_text())
        # A flag added since the checkpoint was made had its default then.
        defaults = json.loads(json.dumps(ImagicConfig().to_dict()))
        now = json.loads(json.dumps(settings))
        changed = sorted(k for k in now if before.get(k, defaults.get(k)) != now[k])
        if changed:
            raise ImagicInputError("--resume", f"the checkpoint in {store.root.parent} was made with other "
                                               f"settings ({', '.join('--' + k for k in changed)}); drop --resume "
                                               "to start over")
    store.root.mkdir(parents=True, exist_ok=True)
    write_json(run_file, settings)


def reset_unet(pipe, base_state: dict | None, weight_dtype: torch.dtype) -> None:
    """Between edits: drop the LoRA, or restore the base weights a full fine-tune changed."""
    unet = pipe.unet
    if getattr(unet, "peft_config", None):
        unet.unload_lora()
    if base_state is not None:
        unet.to(dtype=weight_dtype)
        unet.load_state_dict(base_state)
    unet.requires_grad_(False)
    unet.eval()


def failure_message(error: BaseException) -> str:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return ("CUDA out of memory; levers that fit a smaller card: --gradient_checkpointing, --use_8bit_adam, "
                "a lower --rank, a lower --resolution, --train_batch_size 1 (and --emb_train_batch_size 1) with "
                "--gradient_accumulation_steps, "
                "--sample_batch_size 1, "
                "--mixed_precision fp16/bf16")
    return str(error) if isinstance(error, (ImagicInputError, NonFiniteLossError)) else \
        f"{type(error).__name__}: {error}"


# ---- the run ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(name)s: %(message)s", level=logging.INFO)
    # ---- 1. parse and check, before any model loads ----
    cfg = parse_args(argv)
    try:
        jobs = plan_jobs(cfg)
        check_inputs(cfg, jobs)
    except ImagicInputError as e:
        print(f"imagic_lora: error: {e}", file=sys.stderr)
        return 2
    many = jobs[0].id is not None
    if not many and cfg.resume and is_complete(cfg.output_dir):
        print(f"imagic_lora: {cfg.output_dir} is already complete; nothing to resume")
        return 0

    # ---- 2. Accelerator: the device, mixed precision; each process takes its share of the jobs ----
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision,
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    # SIGINT/SIGTERM finish the current step and save a checkpoint; the handlers before are back after.
    with StopFlag() as stop:
        if cfg.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # Frozen weights in the reduced dtype; trainable tensors and losses stay fp32.
        weight_dtype = weight_dtype_for(accelerator.mixed_precision)

        # ---- 3. load the base model, once per process ----
        load_timing: dict[str, float] = {}
        with timed(load_timing, "model_load", accelerator.device):
            pipe = load_pipeline(cfg.pretrained_model_name_or_path, revision=cfg.revision, variant=cfg.variant,
                                 weight_dtype=weight_dtype,
                                 vae_model_name_or_path=cfg.pretrained_vae_model_name_or_path)
            prepare_unet(pipe, accelerator.device, xformers=cfg.enable_xformers_memory_efficient_attention,
                         gradient_checkpointing=cfg.gradient_checkpointing, vae_tiling=cfg.enable_vae_tiling)
        noise_scheduler = training_noise_scheduler(pipe)
        # A full fine-tune changes the base weights: keep a copy to restore between edits.
        base_state = ({k: v.detach().to("cpu", copy=True) for k, v in pipe.unet.state_dict().items()}
                      if cfg.full_finetune and len(jobs) > 1 else None)

        # ---- 4. the edits: A, B, C, save each ----
        rows, interrupted = [], None
        with accelerator.split_between_processes(jobs) as my_jobs:
            for job in my_jobs:
                job_cfg = job.config(cfg)
                row = {"id": job.id, "input_image": job.input_image, "target_prompt": job.target_prompt,
                       "output_dir": job_cfg.output_dir, "status": "ok", "error": None,
                       "model_load_s": round(load_timing["model_load"], 3), "process": accelerator.process_index}
                if many and is_complete(job_cfg.output_dir) and not cfg.overwrite:
                    done = json.loads((Path(job_cfg.output_dir) / CONFIG_NAME).read_text())
                    rows.append({**row, **summary_fields(done), "status": "skipped (complete)"})
                    continue
                try:
                    if many:
                        job_cfg.validate(check_image=True)
                    record = edit(job_cfg, pipe, accelerator, noise_scheduler, stop)
                    rows.append({**row, **summary_fields(record)})
                except Interrupted as e:
                    interrupted = e.signum
                    rows.append({**row, "status": "interrupted", "error": "interrupted; rerun with --resume"})
                    print(f"imagic_lora: interrupted; the checkpoint is saved: rerun the same command with --resume",
                          file=sys.stderr)
                    break
                except Exception as e:  # one edit's failure is recorded; the run goes on
                    if not many and not isinstance(e, (ImagicInputError, NonFiniteLossError,
                                                       torch.cuda.OutOfMemoryError)):
                        raise
                    rows.append({**row, "status": "failed", "error": failure_message(e),
                                 "input_error": isinstance(e, ImagicInputError)})
                    print(f"imagic_lora: error: {job.id + ': ' if many else ''}{failure_message(e)}", file=sys.stderr)
                finally:
                    reset_unet(pipe, base_state, weight_dtype)

        # ---- 5. report ----
        if many:
            rows = gather_rows(accelerator, cfg.output_dir, rows, [job.id for job in jobs])
        if accelerator.is_main_process:
            print_summary(cfg, rows, many)
        if interrupted:
            return 128 + interrupted
        if not many and rows[0]["status"] == "failed" and rows[0].get("input_error"):
            return 2
        return 1 if any(row["status"] == "failed" for row in rows) else 0


def summary_fields(record: dict) -> dict:
    timings = record.get("wall_time_s", {})
    memory = record.get("memory", {})
    picked = record.get("picked") or {}
    return {"recommended_eta": record.get("recommended_eta"), "picked_eta": picked.get("eta"),
            "picked_seed": picked.get("seed"),
            **{f"wall_time_{k}_s": timings.get(k) for k in ("encode", "A", "B", "C", "save")},
            "peak_memory_gib": memory.get("peak_allocated_gib", memory.get("peak_rss_gib"))}


def gather_rows(accelerator: Accelerator, output_dir: str, rows: list[dict], order: list[str]) -> list[dict]:
    """Every process's rows, merged on the main process into summary.jsonl/.csv in job order."""
    part = Path(output_dir) / f".summary.rank{accelerator.process_index}.json"
    part.write_text(json.dumps(rows))
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return rows
    merged = []
    for rank in range(accelerator.num_processes):
        path = Path(output_dir) / f".summary.rank{rank}.json"
        merged += json.loads(path.read_text())
        path.unlink()
    merged.sort(key=lambda row: order.index(row["id"]))
    write_summary(output_dir, merged)
    return merged


def library_versions() -> dict[str, str]:
    import importlib.metadata as md
    versions = {"imagic_lora": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "xformers"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def print_summary(cfg: ImagicConfig, rows: list[dict], many: bool) -> None:
    if many:
        counts = {}
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        print(f"\nimagic_lora: {len(rows)} edits: " + ", ".join(f"{n} {s}" for s, n in counts.items())
              + f"; summary in {Path(cfg.output_dir) / 'summary.csv'}")
        return
    row = rows[0]
    if row["status"] != "ok":
        return
    phases = " | ".join(f"{k} {row[f'wall_time_{k}_s']:.1f} s" for k in ("encode", "A", "B", "C", "save"))
    total = sum(row[f"wall_time_{k}_s"] for k in ("encode", "A", "B", "C", "save"))
    print(f"\nimagic_lora: edit done in {total:.1f} s after {row['model_load_s']:.1f} s of model loading "
          f"({phases}); peak memory {row['peak_memory_gib']:.2f} GiB")
    print(f"imagic_lora: images in {Path(cfg.output_dir) / 'images'} (contact sheet: grid.png); "
          f"artifact in {cfg.output_dir}; recommended eta {row['recommended_eta']}")
    if row.get("picked_eta") is not None:
        print(f"imagic_lora: the edit, picked automatically: {Path(cfg.output_dir) / 'images' / EDIT_IMAGE_NAME} "
              f"(eta {row['picked_eta']}, seed {row['picked_seed']})")


if __name__ == "__main__":
    status = main()
    # At exit the interpreter's last garbage collections walk every object torch, diffusers and
    # transformers created: about 1 s of a default edit on 2 CPU cores. Frozen, they are skipped (the
    # memory goes back with the process). No finaliser is needed: what main() wrote is closed.
    gc.freeze()
    sys.exit(status)
