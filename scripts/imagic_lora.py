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
import errno
import gc
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from imagic_lora import __version__  # noqa: E402
from imagic_lora.artifact import (  # noqa: E402
    CONFIG_NAME, save_embeds, save_full_unet, save_lora_files, write_json, write_model_card)
from imagic_lora.checkpoint import CheckpointStore  # noqa: E402
from imagic_lora.conditioning import PromptEmbeds, encode_prompt, interpolate, is_sdxl, sdxl_time_ids  # noqa: E402
from imagic_lora.config import (  # noqa: E402
    ARTIFACT_DIFFERENCES, BUNDLED_MODEL, DEFAULT_EXAMPLE, DEFAULT_TARGET_PROMPT, LORA_TARGET_PRESETS,
    RESUMABLE_DIFFERENCES, ImagicConfig, changed_settings, check_text, parse_args)
from imagic_lora.diffusion import NonFiniteLossError, encode_image_latents, timestep_weights  # noqa: E402
from imagic_lora.embedding import optimize_embedding  # noqa: E402
from imagic_lora.errors import ImagicInputError  # noqa: E402
from imagic_lora.finetune import finetune, full_finetune_parameters, make_optimizer  # noqa: E402
from imagic_lora.generate import EDIT_IMAGE_NAME, default_sample_batch_size, generate_images, image_name  # noqa: E402,E501
from imagic_lora.images import (  # noqa: E402
    check_image_file, contact_sheet, file_sha256, is_readable_image, load_image, pil_to_tensor, save_image)
from imagic_lora.interrupt import Interrupted, StopFlag, stop_with_launcher  # noqa: E402
from imagic_lora.jobs import Job, is_complete, order_rows, read_manifest, read_tedbench, write_summary  # noqa: E402
from imagic_lora.lora import add_lora, architecture_of, fused_lora, kohya_metadata, unmatched_targets  # noqa: E402
from imagic_lora.metrics import peak_memory, timed  # noqa: E402
from imagic_lora.pick import pick_edit, pick_record  # noqa: E402
from imagic_lora.models import (  # noqa: E402
    inference_scheduler, load_pipeline, load_tokenizer_and_vocabulary, model_family, native_resolution,
    prepare_unet, scheduler_config, training_noise_scheduler, weight_dtype_for)
from imagic_lora.output import (  # noqa: E402
    FolderLock, OutputError, StagedOutput, check_output_path, foreign_entries, partial_path, read_config,
    recover_interrupted_replacement, why_not_replaceable)
from imagic_lora.vocabulary import unknown_words  # noqa: E402

logger = logging.getLogger("imagic_lora")


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


def check_inputs(cfg: ImagicConfig, jobs: list[Job]) -> set[str]:
    """Everything checkable before the weights load: files, numbers, output folders, vocabulary, the
    model's schedule. Returns the ids of a manifest's finished jobs to skip (complete, same settings)."""
    single = jobs[0].id is None
    cfg = jobs[0].config(cfg) if single else cfg  # the single edit's image and prompt
    cfg.validate(check_image=single)
    job_cfgs = {job.id: job.config(cfg) for job in jobs}
    if not single:
        for job in jobs:
            try:
                job_cfgs[job.id].validate(check_image=False)
            except ImagicInputError as e:
                raise ImagicInputError("--manifest", f"job {job.id}: {e}") from None
    model_family(cfg.pretrained_model_name_or_path, cfg.revision)  # a readable diffusers folder or hub id
    schedule = scheduler_config(cfg.pretrained_model_name_or_path, cfg.revision).get("num_train_timesteps", 1000)
    tokenizer, vocabulary = load_tokenizer_and_vocabulary(cfg.pretrained_model_name_or_path, cfg.revision)
    for job in jobs:
        where = "--target_prompt" if single else "--manifest"
        prefix = "" if single else f"job {job.id}: "
        steps = job_cfgs[job.id].num_inference_steps
        if steps > schedule:
            raise ImagicInputError("--num_inference_steps" if single else "--manifest",
                                   f"{prefix}{steps} steps is more than the model's {schedule}-step schedule")
        if not job.target_prompt.strip():
            raise ImagicInputError(where, f"{prefix}the target prompt is empty")
        check_text(job.target_prompt, where)
        unknown = unknown_words(tokenizer, job.target_prompt, vocabulary)
        if unknown:
            known = f"; it knows: {' '.join(sorted(vocabulary))}" if vocabulary else ""
            raise ImagicInputError(where, f"{prefix}the model does not know {', '.join(map(repr, unknown))}{known}")
        ids = tokenizer(job.target_prompt).input_ids
        if len(ids) > tokenizer.model_max_length:
            kept = tokenizer.decode(ids[1:tokenizer.model_max_length - 1])
            logger.warning("%s%s is %d tokens; the text encoder reads %d, so it is cut after: %r", prefix,
                           where, len(ids), tokenizer.model_max_length, kept)
    return set() if single else finished_jobs(cfg, jobs, job_cfgs)


def finished_jobs(cfg: ImagicConfig, jobs: list[Job], job_cfgs: dict[str, ImagicConfig]) -> set[str]:
    """A manifest's job folders, checked before anything runs: the ids of the finished jobs to skip.

    A folder that holds anything but an imagic-lora artifact is refused (it is never replaced). A
    finished job is skipped when its artifact was made with the job's settings and image; when they
    changed, it is redone under --overwrite and refused without (never reported as done).
    """
    skip = set()
    for job in jobs:
        folder = Path(job_cfgs[job.id].output_dir)
        where = f"job {job.id}: {folder}"
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise ImagicInputError("--manifest", f"{where} is in the way of the job's artifact folder")
        partial = partial_path(folder)
        if partial.is_dir() and foreign_entries(partial, partial=True):
            raise ImagicInputError("--manifest", f"job {job.id}: {partial} holds files imagic-lora did not write")
        if not folder.is_dir() or not any(folder.iterdir()):
            continue
        record = read_config(folder)
        if record is None:
            raise ImagicInputError("--manifest", f"{where} holds files that are not an imagic-lora artifact; "
                                                 "choose another --output_dir or job id")
        if cfg.overwrite:
            reason = why_not_replaceable(folder)
            if reason is not None:
                raise ImagicInputError("--manifest", f"{where} {reason}")
            continue
        image = Path(job.input_image)
        sha = file_sha256(image) if image.is_file() else None
        before = record.get("settings") if isinstance(record.get("settings"), dict) else record
        changed = changed_settings(before, job_cfgs[job.id].settings(ARTIFACT_DIFFERENCES, sha))
        if changed:
            raise ImagicInputError("--manifest", f"{where} was made with other settings ({', '.join(changed)}); "
                                                 "pass --overwrite to redo it")
        skip.add(job.id)
    return skip


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
    input_sha256 = file_sha256(cfg.input_image)
    stage = StagedOutput(cfg.output_dir)
    out = stage.prepare(resume=cfg.resume)
    store = CheckpointStore(out / "checkpoints", cfg.checkpoints_total_limit)
    check_resumable(store, cfg, input_sha256)
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
            state = store.load_intact("phase-A")
            if state is not None:
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
            resumed_b, losses_b = resume_step_b(store, trainable, optimizer, generator_b, cfg.max_train_steps)

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
                                 timestep_weights=weights_b, start_step=resumed_b, on_step=checkpoint_b, log=log)
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
            # A resumed run keeps the images it drew whole; a torn or unreadable one is drawn again.
            pending = [pair for pair, path in images.items() if not is_readable_image(path)]
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
                            save_image(picture, images[pair])
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
            save_image(image, out / "images" / "input.png")
            save_image(contact_sheet(image, {k: Image.open(v) for k, v in images.items()}, cfg.etas, cfg.seeds,
                                     picked=(picked["eta"], picked["seed"]) if picked else None),
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
            "input_sha256": input_sha256,
            # The settings as given, for a manifest's rerun to compare (above, some are as resolved).
            "settings": cfg.settings(ARTIFACT_DIFFERENCES, input_sha256),
            "resumed_from_step_B": resumed_b or None,
            "wall_time_s": {k: round(v, 3) for k, v in timings.items()},
            "memory_per_phase": phase_memory,
            "memory": peak_memory(phase_memory),
            "versions": library_versions(),
        }
        write_model_card(out, record)
        write_json(out / CONFIG_NAME, record)  # the marker of a complete artifact
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # after: a failed write keeps them
        if tracker:
            tracker.close()
            tracker = None
        stage.commit(overwrite=cfg.overwrite)
        return record
    except BaseException as error:
        if tracker:
            tracker.close()
        if isinstance(error, Interrupted):
            latest = store.latest_b()
            error.saved = (f"step B's checkpoint at step {int(latest.split('-')[-1])}" if latest
                           else "step A's result" if store.has("phase-A") else None)
        stage.discard()  # a checkpoint (A or B) is kept for --resume
        raise


def free_accelerator_cache(device) -> None:
    """Hand the memory of modules that left the GPU back to the allocator's pool for others."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _opt(tensor, device):
    return None if tensor is None else tensor.to(device)


def check_resumable(store: CheckpointStore, cfg: ImagicConfig, input_sha256: str) -> None:
    """Refuse to resume checkpoints made with settings, or an input image, that change the result."""
    settings = cfg.settings(RESUMABLE_DIFFERENCES, input_sha256)
    run_file = store.root / "run.json"
    if run_file.is_file():
        try:
            before = json.loads(run_file.read_text())
        except ValueError:
            before = None
        if not isinstance(before, dict):
            raise ImagicInputError("--resume", f"{run_file} is unreadable, so the checkpoint's settings are unknown; "
                                               "pass --overwrite to start over")
        changed = changed_settings(before, settings)
        if changed:
            raise ImagicInputError("--resume", f"the checkpoint in {store.root.parent} was made with other "
                                               f"settings ({', '.join(changed)}); pass --overwrite instead of "
                                               "--resume to start over")
    store.root.mkdir(parents=True, exist_ok=True)
    write_json(run_file, settings)


def resume_step_b(store: CheckpointStore, trainable: dict, optimizer, generator: torch.Generator,
                  steps: int) -> tuple[int, list[float]]:
    """Put the newest intact step-B checkpoint back (weights, optimiser, generator); return its step and
    losses, or (0, []) when there is none. A torn or corrupt one is passed over for the one before it."""
    for step in reversed(store.b_steps()):
        name = f"B-step-{step:06d}"
        state = store.load_intact(name)
        if state is None:
            continue
        params = state.get("params", {})
        if set(params) != set(trainable) or any(params[k].shape != trainable[k].shape for k in params):
            logger.warning("checkpoint %s does not hold this run's weights; not used", store.path(name))
            continue
        with torch.no_grad():
            for key, value in params.items():
                trainable[key].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        if step != store.b_steps()[-1]:
            logger.warning("resuming from %s, the newest intact checkpoint", name)
        logger.info("resuming step B at step %d of %d from %s", state["step"], steps, name)
        return state["step"], state["losses"]
    return 0, []


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
    if is_disk_full(error):
        return (f"no space left on the device writing {error.filename or 'the output'}; the checkpoints made so far "
                "are kept: free some space, then rerun the same command with --resume")
    return str(error) if isinstance(error, (ImagicInputError, NonFiniteLossError, OutputError)) else \
        f"{type(error).__name__}: {error}"


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


#: Failures of one edit that get a one-line message (a manifest records them and goes on); anything
#: else is a bug, shown with its traceback.
EXPECTED_FAILURES = (ImagicInputError, NonFiniteLossError, OutputError, torch.cuda.OutOfMemoryError)


# ---- the run ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(name)s: %(message)s", level=logging.INFO)
    # ---- 1. parse and check, before any model loads ----
    cfg = parse_args(argv)
    with contextlib.ExitStack() as held:
        try:
            jobs = plan_jobs(cfg)
            many = jobs[0].id is not None
            # One run at a time per output folder (for many edits, the main process holds the run's);
            # then a replacement an earlier run left half done is undone before anything is checked.
            check_output_path(cfg.output_dir, artifact=not many)
            if not many or int(os.environ.get("RANK", "0")) == 0:
                held.enter_context(FolderLock(cfg.output_dir, inside=many))
                for job in jobs:
                    recover_interrupted_replacement(job.config(cfg).output_dir)
            skip = check_inputs(cfg, jobs)
        except OutputError as e:
            print(f"imagic_lora: error: --output_dir: {e}", file=sys.stderr)
            return 2
        except ImagicInputError as e:
            print(f"imagic_lora: error: {e}", file=sys.stderr)
            return 2
        if not many and cfg.resume and is_complete(cfg.output_dir) and not partial_path(cfg.output_dir).is_dir():
            print(f"imagic_lora: {cfg.output_dir} is already complete; nothing to resume")
            return 0
        return run(cfg, jobs, skip, many)


def run(cfg: ImagicConfig, jobs: list[Job], skip: set[str], many: bool) -> int:
    """Steps 2-5 of the run, on checked input: Accelerator, load, the edits, the report."""
    # ---- 2. Accelerator: the device, mixed precision; each process takes its share of the jobs ----
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision,
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    if many and accelerator.num_processes > 1:  # no stale summary part from an earlier run is read back
        if accelerator.is_main_process:
            for stale in Path(cfg.output_dir).glob(".summary.rank*.json"):
                stale.unlink()
        accelerator.wait_for_everyone()
    # SIGINT/SIGTERM finish the current step and save a checkpoint; the handlers before are back after.
    with StopFlag() as stop:
        if cfg.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # Frozen weights in the reduced dtype; trainable tensors and losses stay fp32.
        weight_dtype = weight_dtype_for(accelerator.mixed_precision)

        # ---- 3. load the base model, once per process; then what only the model can check ----
        load_timing: dict[str, float] = {}
        try:
            with timed(load_timing, "model_load", accelerator.device):
                pipe = load_pipeline(cfg.pretrained_model_name_or_path, revision=cfg.revision, variant=cfg.variant,
                                     weight_dtype=weight_dtype,
                                     vae_model_name_or_path=cfg.pretrained_vae_model_name_or_path)
                prepare_unet(pipe, accelerator.device, xformers=cfg.enable_xformers_memory_efficient_attention,
                             gradient_checkpointing=cfg.gradient_checkpointing, vae_tiling=cfg.enable_vae_tiling)
            check_with_model(cfg, pipe)
        except ImagicInputError as e:
            print(f"imagic_lora: error: {e}", file=sys.stderr)
            return 2
        noise_scheduler = training_noise_scheduler(pipe)
        # A full fine-tune changes the base weights: keep a copy to restore between edits.
        base_state = ({k: v.detach().to("cpu", copy=True) for k, v in pipe.unet.state_dict().items()}
                      if cfg.full_finetune and len(jobs) > 1 else None)

        # ---- 4. the edits: A, B, C, save each ----
        rows, interrupted = [], None
        try:
            with accelerator.split_between_processes(jobs) as my_jobs:
                for job in my_jobs:
                    job_cfg = job.config(cfg)
                    row = {"id": job.id, "input_image": job.input_image, "target_prompt": job.target_prompt,
                           "output_dir": job_cfg.output_dir, "status": "ok", "error": None,
                           "model_load_s": round(load_timing["model_load"], 3),
                           "process": accelerator.process_index}
                    if job.id in skip:
                        done = read_config(job_cfg.output_dir) or {}
                        rows.append({**row, **summary_fields(done), "status": "skipped (complete)"})
                        continue
                    try:
                        with FolderLock(job_cfg.output_dir) if many else contextlib.nullcontext():
                            if many:  # checked only now: a bad image fails its own job
                                check_image_file(job_cfg.input_image, flag="--input_image")
                            record = edit(job_cfg, pipe, accelerator, noise_scheduler, stop)
                        rows.append({**row, **summary_fields(record)})
                    except Interrupted as e:
                        interrupted = e.signum
                        saved = (f"{e.saved} is saved: rerun the same command with --resume" if e.saved else
                                 "nothing was saved yet (step A is not checkpointed until it ends)")
                        rows.append({**row, "status": "interrupted", "error": f"interrupted; {saved}"})
                        print(f"imagic_lora: interrupted{' in ' + job.id if many else ''}; {saved}", file=sys.stderr)
                        break
                    except Exception as e:  # one edit's failure is recorded; the run goes on
                        if not many and not (isinstance(e, EXPECTED_FAILURES) or is_disk_full(e)):
                            raise
                        rows.append({**row, "status": "failed", "error": failure_message(e),
                                     "input_error": isinstance(e, (ImagicInputError, OutputError))})
                        print(f"imagic_lora: error: {job.id + ': ' if many else ''}{failure_message(e)}",
                              file=sys.stderr)
                    finally:
                        reset_unet(pipe, base_state, weight_dtype)
        finally:  # the summary is written whatever happened to the edits
            if many:
                rows = gather_rows(accelerator, cfg.output_dir, rows, [job.id for job in jobs])

        # ---- 5. report ----
        if accelerator.is_main_process:
            print_summary(cfg, rows, many)
        if interrupted:
            return 128 + interrupted
        if not many and rows[0]["status"] == "failed" and rows[0].get("input_error"):
            return 2
        return 1 if any(row["status"] == "failed" for row in rows) else 0


def check_with_model(cfg: ImagicConfig, pipe) -> None:
    """What only the loaded model can tell, checked before step A: the LoRA's target modules exist."""
    if cfg.full_finetune or cfg.lora_target_modules in LORA_TARGET_PRESETS:
        return  # a preset's names are matched by whichever of them the architecture has
    missing = unmatched_targets(pipe.unet, cfg.lora_target_module_list)
    if missing:
        raise ImagicInputError("--lora_target_modules", f"{', '.join(map(repr, missing))} names no module of this "
                                                        "UNet; e.g. to_q, to_k, to_v, to_out.0, conv1, conv2, "
                                                        "ff.net.2, or a preset: attn, attn_ff, attn_ff_conv")


def summary_fields(record: dict) -> dict:
    timings = record.get("wall_time_s", {})
    memory = record.get("memory", {})
    picked = record.get("picked") or {}
    return {"recommended_eta": record.get("recommended_eta"), "picked_eta": picked.get("eta"),
            "picked_seed": picked.get("seed"),
            **{f"wall_time_{k}_s": timings.get(k) for k in ("encode", "A", "B", "C", "save")},
            "peak_memory_gib": memory.get("peak_allocated_gib", memory.get("peak_rss_gib"))}


def gather_rows(accelerator: Accelerator, output_dir: str, rows: list[dict], order: list[str]) -> list[dict]:
    """Every process's rows, merged on the main process into summary.jsonl/.csv in job order.

    Each process leaves its rows in a file; the main process waits for the others' files rather than
    at a collective, so processes whose shares take very different times (a rerun that skips one
    half) do not run into the collective's timeout.
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".summary.rank{accelerator.process_index}.json"
    tmp = part.with_name(part.name + ".tmp")
    tmp.write_text(json.dumps(rows))
    os.replace(tmp, part)
    if not accelerator.is_main_process:
        return rows
    merged = []
    for rank in range(accelerator.num_processes):
        path = folder / f".summary.rank{rank}.json"
        while not path.is_file():
            time.sleep(1.0)
        merged += json.loads(path.read_text())
        path.unlink()
    merged = order_rows(merged, order)
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
    stop_with_launcher()
    status = main()
    # At exit the interpreter's last garbage collections walk every object torch, diffusers and
    # transformers created: about 1 s of a default edit on 2 CPU cores. Frozen, they are skipped (the
    # memory goes back with the process). No finaliser is needed: what main() wrote is closed.
    gc.freeze()
    sys.exit(status)
