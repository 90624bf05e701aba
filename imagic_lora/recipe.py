"""The Imagic-LoRA recipe: one loaded model, any number of edits.

    recipe = ImagicRecipe(cfg).setup()       # Accelerator, the base model, the plan
    record = recipe.edit()                   # A -> B -> C -> the pick -> save, into cfg.output_dir
    recipe.cleanup()                         # drop the LoRA and the optimiser before the next edit

An edit: A optimises the text embedding towards the input image with the model frozen; B fine-tunes
a LoRA (or, as the paper, the whole UNet) so that e_opt reproduces the image; C draws along
η·e_tgt + (1−η)·e_opt; the pick chooses the edit among the images; the artifact is built in a hidden
folder beside ``output_dir`` (with checkpoints for ``resume``) and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import platform
import shutil
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from . import __version__
from .artifact import load_lora, save_embeds, save_full_unet, save_lora, write_json, write_model_card
from .checkpoint import CheckpointStore
from .conditioning import PromptEmbeds, encode_prompt, interpolate, is_sdxl, sdxl_time_ids, unconditional_embeds
from .config import ARTIFACT_DIFFERENCES, LORA_TARGET_PRESETS, RESUMABLE_DIFFERENCES, ImagicConfig, changed_settings
from .diffusion import encode_image_latents, make_lr_scheduler, timestep_weights
from .embedding import optimize_embedding
from .errors import ArgumentError, ImagicInputError
from .finetune import finetune, full_finetune_parameters, make_optimizer
from .generate import EDIT_IMAGE_NAME, default_sample_batch_size, generate_images, image_name
from .images import contact_sheet, file_sha256, is_readable_image, load_image, pil_to_tensor, save_image
from .interrupt import Interrupted, StopFlag
from .comfyui import workflow
from .compress import kept_energy, lora_parameters, rank_and_alpha, truncate
from .lora import add_lora, architecture_of, fused_lora, kohya_metadata, kohya_state_dict, unmatched_targets
from .metrics import peak_memory, timed
from .models import (inference_scheduler, load_pipeline, native_resolution, prepare_unet, training_noise_scheduler,
                     weight_dtype_for)
from .output import (CONFIG_NAME, WORKFLOW_NAME, FolderLock, StagedOutput, artifact_files, read_config,
                     recover_interrupted_replacement, target_path)
from .pick import pick_edit, pick_record
from .plan import Plan, WorkMeter, decide_optimizer
from .presets import SHAPES_PRESETS
from .runtime import training_convolutions

logger = logging.getLogger("imagic_lora")


class ImagicRecipe:
    """Loads the base model once (:meth:`setup`), then runs whole, independent edits on it (:meth:`edit`),
    each followed by :meth:`cleanup`, which puts the base model back as it was loaded."""

    def __init__(self, cfg: ImagicConfig, *, plan: Plan | None = None, accelerator=None):
        self.cfg = cfg if cfg.preset is not None else cfg.resolved()
        self.plan = plan
        self.accelerator = accelerator
        self.pipe = None

    # ---- setup: the Accelerator, the base model, what only the model can check -------------------------
    def setup(self, pipe=None) -> "ImagicRecipe":
        """Create the Accelerator (unless given), plan (unless given), load the base model (or take ``pipe``,
        a loaded pipeline of its family, frozen) and check what only the model can tell."""
        from accelerate import Accelerator

        cfg = self.cfg
        if self.plan is None:
            from .plan import Target, make_plan
            cfg, self.plan = make_plan(cfg, Target.current())
            self.cfg = cfg
        if self.accelerator is None:
            self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision,
                                           gradient_accumulation_steps=cfg.gradient_accumulation_steps)
        if cfg.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if cfg.cudnn_benchmark and torch.cuda.is_available():
            torch.backends.cudnn.benchmark = True
        # Frozen weights in the reduced dtype; trainable tensors and losses stay fp32.
        self.weight_dtype = weight_dtype_for(self.accelerator.mixed_precision)
        self.timings: dict[str, float] = {}
        with timed(self.timings, "model_load", self.accelerator.device):
            self.pipe = pipe or load_pipeline(cfg.pretrained_model_name_or_path, revision=cfg.revision,
                                              variant=cfg.variant, weight_dtype=self.weight_dtype,
                                              vae_model_name_or_path=cfg.pretrained_vae_model_name_or_path)
            prepare_unet(self.pipe, self.accelerator.device, xformers=cfg.enable_xformers_memory_efficient_attention,
                         gradient_checkpointing=bool(cfg.gradient_checkpointing), vae_tiling=cfg.enable_vae_tiling,
                         channels_last=cfg.channels_last, compile_mode=cfg.torch_compile)
        check_with_model(cfg, self.pipe)
        self.noise_scheduler = training_noise_scheduler(self.pipe)
        # A full fine-tune changes the base weights: a copy restores them between edits.
        self.base_state = ({k: v.detach().to("cpu", copy=True) for k, v in self.pipe.unet.state_dict().items()}
                           if cfg.full_finetune else None)
        return self

    @property
    def model_load_s(self) -> float:
        return self.timings.get("model_load", 0.0)

    # ---- cleanup: the base model back as loaded, nothing of the edit kept alive ------------------------
    def cleanup(self) -> None:
        """Drop the LoRA (or restore the fully fine-tuned weights), release the edit's optimiser from the
        Accelerator, and hand the memory back."""
        reset_unet(self.pipe, self.base_state, self.weight_dtype)
        self.accelerator.free_memory()  # prepare() kept each edit's optimiser in the Accelerator
        gc.collect()
        free_accelerator_cache(self.accelerator.device)

    # ---- one edit ------------------------------------------------------------------------------------
    def edit(self, cfg: ImagicConfig | None = None, stop: StopFlag | None = None, *, lock: bool = True) -> dict:
        """Run one edit into ``cfg.output_dir`` (the recipe's config when None); return its record, what
        imagic_config.json holds. ``lock``: take the output folder's lock (the CLI already holds it)."""
        cfg = self.cfg if cfg is None else cfg
        if cfg.preset is None:
            cfg = cfg.resolved(self.cfg.preset)
        stop = stop or StopFlag()
        with FolderLock(cfg.output_dir) if lock else contextlib.nullcontext():
            if lock:
                recover_interrupted_replacement(cfg.output_dir)
            return self._edit(cfg, stop)

    def _say_eta(self, timings: dict, meter: WorkMeter) -> None:
        """After step A: how long the rest should take, from step A's own pace and the plan's work."""
        if self.plan is None or not self.accelerator.is_local_main_process:
            return
        done = meter.record().get("A", {}).get("unet_forwards")
        if not done or timings.get("A", 0.0) < 1.0:
            return  # resumed past A, or too quick to time
        per_forward = timings["A"] / done
        rest = sum(self.plan.work[k]["unet_forwards"] for k in ("B", "C", "pick"))
        logger.info("step A took %s; B, C and the pick should take about %s more", _format_s(timings["A"]),
                    _format_s(rest * per_forward))

    def _edit(self, cfg: ImagicConfig, stop: StopFlag) -> dict:
        pipe, accelerator, noise_scheduler = self.pipe, self.accelerator, self.noise_scheduler
        device, weight_dtype, unet = accelerator.device, self.weight_dtype, self.pipe.unet
        if cfg.use_8bit_adam is None:  # recorded as run (a resume on another kind of device is then refused)
            cfg = dataclasses.replace(cfg, use_8bit_adam=decide_optimizer(None, device.type))
        # Checked against the model's schedule before anything is written.
        try:
            weights_b = timestep_weights(cfg.timestep_bias_strategy, noise_scheduler.config.num_train_timesteps,
                                         multiplier=cfg.timestep_bias_multiplier, portion=cfg.timestep_bias_portion,
                                         begin=cfg.timestep_bias_begin, end=cfg.timestep_bias_end)
        except ArgumentError as e:  # its arguments are the --timestep_bias_* settings
            raise ImagicInputError(f"--timestep_bias_{e.name}", e.problem) from None
        if (cfg.timestep_bias_strategy == "none") != (cfg.timestep_bias_multiplier == 1.0):
            logger.warning("--timestep_bias_strategy %s with --timestep_bias_multiplier %g: no bias (both are "
                           "needed)", cfg.timestep_bias_strategy, cfg.timestep_bias_multiplier)
        input_sha256 = file_sha256(cfg.input_image)
        stage = StagedOutput(cfg.output_dir)
        out = stage.prepare(resume=cfg.resume)
        finished = read_config(out) if cfg.resume else None
        if finished is not None and not changed_settings(finished.get("settings", {}),
                                                         cfg.settings(ARTIFACT_DIFFERENCES, input_sha256)):
            stage.commit(overwrite=cfg.overwrite)  # an edit complete but for its final rename
            return finished
        store = CheckpointStore(out / "checkpoints", cfg.checkpoints_total_limit)
        try:
            check_resumable(store, cfg, input_sha256)
        except ImagicInputError:
            if not (cfg.resume and cfg.overwrite):
                raise
            logger.warning("the checkpoints in %s were made with other settings: starting over (--overwrite)", out)
            out = stage.prepare(resume=False)
            check_resumable(store, cfg, input_sha256)
        tracker = None
        if cfg.report_to == "tensorboard":  # per edit, on whichever process runs it
            from torch.utils.tensorboard import SummaryWriter
            tracker = SummaryWriter(str(out / "logs"))
            tracker.add_text("config", json.dumps(cfg.to_dict(), indent=1))
        log = (lambda values, step: [tracker.add_scalar(k, v, step) for k, v in values.items()]) if tracker else None
        timings: dict[str, float] = {}
        phase_memory: dict[str, dict] = {}  # per-phase peaks, on CUDA
        costs = self.plan.costs if self.plan is not None else None
        meter = WorkMeter(unet, costs, *(self.plan.vae_flops if self.plan is not None else (0.0, 0.0)))
        try:
            # The image and the target text, encoded once; the text encoder(s) and the VAE then
            # leave the accelerator for A and B.
            with timed(timings, "encode", device, phase_memory), meter.phase("encode"):
                resolution = cfg.resolution or native_resolution(pipe)
                image = load_image(cfg.input_image, resolution, cfg.resize_mode)
                encoders = [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]
                for module in encoders + [pipe.vae]:
                    module.to(device)
                e_tgt = encode_prompt(pipe, cfg.target_prompt, device)
                # What the pick's text score contrasts e_tgt with (--pick_contrast; e_opt exists only after A).
                e_null = unconditional_embeds(pipe, device) if cfg.pick_contrast == "empty_prompt" else None
                latents = encode_image_latents(pipe.vae, pil_to_tensor(image))  # (1, C, h, w) fp32
                meter.add_vae(encodes=1)
                for module in encoders + [pipe.vae]:
                    module.to("cpu")
                free_accelerator_cache(device)
                add_time_ids = sdxl_time_ids(resolution).to(device) if is_sdxl(pipe) else None

            # A tiny UNet on a multi-threaded CPU trains faster on PyTorch's own convolutions (steps A, B).
            kernels = contextlib.ExitStack()
            kernels.enter_context(training_convolutions(unet, latents))
            # ---- A: optimise the embedding, the UNet frozen ----
            with timed(timings, "A", device, phase_memory), meter.phase("A"):
                state = store.load_intact("phase-A")
                if state is not None:
                    e_opt = PromptEmbeds(state["prompt_embeds"].to(device),
                                         _opt(state["pooled_prompt_embeds"], device))
                    losses_a = state["losses"]
                else:
                    e_opt, losses_a = optimize_embedding(
                        unet, noise_scheduler, latents, e_tgt, accelerator=accelerator, steps=cfg.emb_train_steps,
                        learning_rate=cfg.emb_learning_rate, batch_size=cfg.effective_emb_train_batch_size,
                        generator=torch.Generator().manual_seed(cfg.seed), weight_dtype=weight_dtype,
                        add_time_ids=add_time_ids, optimize_pooled=not cfg.freeze_pooled_embeds,
                        lr_scheduler=cfg.lr_scheduler, lr_warmup_steps=cfg.lr_warmup_steps,
                        on_step=lambda step, losses, draws: stop.check(), log=log)
                    store.save("phase-A", {"prompt_embeds": e_opt.prompt_embeds,
                                           "pooled_prompt_embeds": e_opt.pooled_prompt_embeds, "losses": losses_a})

            self._say_eta(timings, meter)
            # ---- B: fine-tune (LoRA by default) so that e_opt reproduces the image ----
            with timed(timings, "B", device, phase_memory), meter.phase("B"):
                if cfg.full_finetune:
                    params = full_finetune_parameters(unet)
                else:
                    params = add_lora(unet, rank=cfg.rank, alpha=cfg.effective_lora_alpha,
                                      target_modules=cfg.lora_target_module_list, seed=cfg.seed)
                trainable = {name: p for name, p in unet.named_parameters() if p.requires_grad}
                optimizer = make_optimizer(params, learning_rate=cfg.learning_rate,
                                           use_8bit_adam=cfg.use_8bit_adam,
                                           weight_decay=cfg.adam_weight_decay, accelerator=accelerator)
                generator_b = torch.Generator().manual_seed(cfg.seed + 1)
                resumed_b, losses_b = resume_step_b(store, trainable, optimizer, generator_b, cfg.max_train_steps,
                                                    scaler=accelerator.scaler)

                def checkpoint_b(step: int, new_losses: list, draws) -> None:
                    done = step + 1
                    # A full fine-tune's checkpoint is the whole UNet and its optimiser (gigabytes on SD):
                    # saved only when stopping and at the end, not every --checkpointing_steps.
                    periodic = (not cfg.full_finetune and cfg.checkpointing_steps
                                and done % cfg.checkpointing_steps == 0)
                    if stop.requested or done == cfg.max_train_steps or periodic:
                        store.save(f"B-step-{done:06d}", b_checkpoint(
                            done, losses_b + [float(v) for v in new_losses], trainable, optimizer,
                            draws.generator_state(), accelerator.scaler))
                    stop.check()

                losses_b += finetune(unet, noise_scheduler, latents, e_opt, optimizer, accelerator=accelerator,
                                     steps=cfg.max_train_steps, batch_size=cfg.train_batch_size,
                                     generator=generator_b, weight_dtype=weight_dtype, add_time_ids=add_time_ids,
                                     timestep_weights=weights_b, start_step=resumed_b, on_step=checkpoint_b,
                                     max_grad_norm=cfg.max_grad_norm, log=log, lr_scheduler=make_lr_scheduler(
                                         cfg.lr_scheduler, optimizer, warmup_steps=cfg.lr_warmup_steps,
                                         total_steps=cfg.max_train_steps, start_step=resumed_b))
                n_trainable = sum(p.numel() for p in params)
                if cfg.full_finetune:
                    unet.to(dtype=weight_dtype)  # what is saved, and what generates, is the weight dtype
                params = trainable = optimizer = None  # nothing of the optimiser outlives step B
            kernels.close()

            # ---- the LoRA as the artifact saves it; step C draws with exactly that ----
            saved_lora, lora_saved = None, None
            if not cfg.full_finetune:
                trained = kohya_state_dict(unet, cfg.effective_lora_alpha, sgm_names=is_sdxl(pipe))
                saved_lora = truncate(trained, cfg.lora_budget)
                lora_saved = {"trained_parameters": lora_parameters(trained), "budget": cfg.lora_budget,
                              "parameters": lora_parameters(saved_lora),
                              "kept_energy": round(kept_energy(trained, saved_lora), 6)}
                unet.unload_lora()  # the training adapter, replaced by the saved one as a user's pipeline loads it
                load_lora(pipe, {k: v.clone() for k, v in saved_lora.items()}, adapter_name="imagic")
                unet.requires_grad_(False)

            # ---- C: generate along the interpolation (images already there from a resumed run stay) ----
            with timed(timings, "C", device, phase_memory), meter.phase("C"):
                pipe.to(device)
                model_scheduler, pipe.scheduler = pipe.scheduler, inference_scheduler(pipe, cfg.scheduler)
                scheduler_class = type(pipe.scheduler).__name__
                (out / "images").mkdir(exist_ok=True)
                images = {draw: out / "images" / image_name(*draw) for draw in cfg.draws}  # (eta, seed, strength)
                # A resumed run keeps the images it drew with step C's settings of now, whole; a torn or
                # unreadable one is drawn again, and one of other settings or of an eta or seed no longer
                # in the sweep is removed (step C's own files).
                drawn_with = {k: cfg.to_dict()[k] for k in ("guidance_scale", "num_inference_steps", "scheduler")}
                if cfg.strength != [1.0]:  # (markers of before --strength existed stay valid for pure noise)
                    drawn_with["strength"] = cfg.strength
                marker = out / "images" / ".step_c.json"
                if marker.is_file() and json.loads(marker.read_text()) != drawn_with:
                    for stale in (out / "images").glob("eta_*.png"):
                        stale.unlink()
                write_json(marker, drawn_with)
                for stale in (out / "images").glob("eta_*.png"):
                    if stale.name not in {path.name for path in images.values()}:
                        stale.unlink()
                pending = [pair for pair, path in images.items() if not is_readable_image(path)]
                batch = cfg.sample_batch_size or default_sample_batch_size(is_sdxl(pipe), resolution)
                bar = tqdm(total=len(images), initial=len(images) - len(pending), desc="C: draw", unit="image",
                           disable=None if accelerator.is_local_main_process else True)
                try:
                    # Fused: faster; the base weights come back bit for bit for the pick (nothing to draw
                    # after a resume that had drawn every image: no fusing).
                    with fused_lora(pipe) if pending else contextlib.nullcontext():
                        for strength in cfg.strength:  # one pipeline call draws at one strength
                            at = [draw for draw in pending if draw[2] == strength]
                            for first in range(0, len(at), batch):
                                chunk = at[first:first + batch]
                                made = generate_images(pipe, [interpolate(e_tgt, e_opt, eta) for eta, _, _ in chunk],
                                                       [seed for _, seed, _ in chunk],
                                                       guidance_scale=cfg.guidance_scale,
                                                       num_inference_steps=cfg.num_inference_steps,
                                                       resolution=resolution, image=image, strength=strength)
                                meter.add_vae(decodes=len(chunk), encodes=len(chunk) if strength < 1 else 0)
                                for draw, picture in zip(chunk, made):
                                    save_image(picture, images[draw])
                                bar.update(len(chunk))
                                stop.check()
                finally:
                    bar.close()
                    pipe.scheduler = model_scheduler  # the next edit starts from the model's own, even after an error

            # ---- the pick: the edit among the images with eta > 0 (the model scores them; no person) ----
            with timed(timings, "pick", device, phase_memory), meter.phase("pick"):
                candidates = [draw for draw in images if draw[0] > 0]
                picked = None
                if cfg.pick_edit and candidates:
                    # As many noisy latents per UNet call as step C's guided batch (2 x its images), so the
                    # pick needs no more memory than C; small latents (16x16: 64 a call) go faster in bulk.
                    score_batch = max(2 * batch, 16384 // latents[0, 0].numel())
                    pick, scored_with = pick_edit(pipe, noise_scheduler, image, latents.to(device),
                                                  [Image.open(images[draw]).convert("RGB") for draw in candidates],
                                                  e_tgt, e_null if cfg.pick_contrast == "empty_prompt" else e_opt,
                                                  seed=cfg.seed + 2, weight_dtype=weight_dtype,
                                                  add_time_ids=add_time_ids, keep_fraction=cfg.pick_keep_fraction,
                                                  place_shift=cfg.pick_place_shift,
                                                  num_timesteps=cfg.pick_timesteps, score=cfg.pick_score,
                                                  batch_size=score_batch,  # A: seed, B: seed+1
                                                  progress=accelerator.is_local_main_process)
                    meter.add_vae(encodes=len(candidates))
                    shutil.copyfile(images[candidates[pick.index]], out / "images" / EDIT_IMAGE_NAME)
                    picked = pick_record(pick, candidates, f"images/{EDIT_IMAGE_NAME}", scored_with,
                                         calibrated=cfg.preset in SHAPES_PRESETS, contrast=cfg.pick_contrast,
                                         score=cfg.pick_score)
                for module in encoders + [pipe.vae]:
                    module.to("cpu")
                free_accelerator_cache(device)

            # ---- save the artifact ----
            with timed(timings, "save", device, phase_memory):
                (out / "images" / ".step_c.json").unlink()
                save_image(image, out / "images" / "input.png")
                save_image(contact_sheet(image, {k: Image.open(v) for k, v in images.items()}, cfg.etas, cfg.seeds,
                                         cfg.strength, picked=tuple(picked[k] for k in ("eta", "seed", "strength"))
                                         if picked else None),
                           out / "images" / "grid.png")
                architecture = architecture_of(pipe)
                base_model = base_model_name(cfg.pretrained_model_name_or_path)
                if cfg.full_finetune:
                    save_full_unet(out, unet, weight_dtype)
                else:
                    rank, alpha = rank_and_alpha(saved_lora)
                    meta = kohya_metadata(rank=rank, alpha=alpha,
                                          base_model=base_model, architecture=architecture, resolution=resolution,
                                          target_prompt=cfg.target_prompt)
                    save_lora(out, saved_lora, meta)
                save_embeds(out, e_tgt, e_opt, {"base_model": base_model, "target_prompt": cfg.target_prompt,
                                                "format": "imagic-lora/1"})
            record = {
                **cfg.to_dict(),
                "format": "imagic-lora/1",
                "artifact_name": Path(cfg.output_dir).name,
                "base_model": base_model,
                "family": "sdxl" if is_sdxl(pipe) else "sd",
                "architecture": architecture,
                "pipeline_class": type(pipe).__name__,
                "scheduler_class": scheduler_class,
                "prediction_type": noise_scheduler.config.prediction_type,
                "resolution": resolution,
                "seeds": cfg.seeds,
                "picked": picked,
                # What a user reloading the artifact should draw: the pick (its images/edit.png), else the flag.
                "recommended": {"eta": picked["eta"] if picked else cfg.recommended_eta,
                                "seed": picked["seed"] if picked else cfg.seed,
                                "strength": picked["strength"] if picked else cfg.strength[0]},
                "sample_batch_size": batch,
                "emb_train_batch_size": cfg.effective_emb_train_batch_size,
                "lora_alpha_used": cfg.effective_lora_alpha,
                "lora_target_module_list": cfg.lora_target_module_list,
                "trainable_parameters": n_trainable,
                "lora_saved": lora_saved,
                "attention": "xformers" if cfg.enable_xformers_memory_efficient_attention else "sdpa",
                "weight_dtype": str(weight_dtype).replace("torch.", ""),
                "mixed_precision": accelerator.mixed_precision,
                "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                           else platform.processor() or "cpu"),
                "device_type": device.type,
                "loss_A": {"first": losses_a[0] if losses_a else None, "last": losses_a[-1] if losses_a else None},
                "loss_B": {"first": losses_b[0] if losses_b else None, "last": losses_b[-1] if losses_b else None},
                "input_sha256": input_sha256,
                # The settings as given, for a manifest's rerun to compare (above, some are as resolved).
                "settings": cfg.settings(ARTIFACT_DIFFERENCES, input_sha256),
                "resumed_from_step_B": resumed_b or None,
                "wall_time_s": {k: round(v, 3) for k, v in timings.items()},
                "work": meter.record(),
                "plan": self.plan.record() if self.plan is not None else None,
                "memory_per_phase": phase_memory,
                "memory": peak_memory(phase_memory),
                "versions": library_versions(),
            }
            write_model_card(out, record)
            write_json(out / WORKFLOW_NAME, workflow(record, str(target_path(cfg.output_dir))))
            if tracker:
                tracker.close()
                tracker = None
            record["files"] = artifact_files(out)  # what --overwrite may replace later, by content
            write_json(out / CONFIG_NAME, record)  # the marker of a complete artifact
            shutil.rmtree(out / "checkpoints", ignore_errors=True)  # after: a failed write keeps them
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
        finally:
            meter.close()


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


def _format_s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def free_accelerator_cache(device) -> None:
    """Hand the memory of modules that left the GPU back to the allocator's pool for others."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _opt(tensor, device):
    return None if tensor is None else tensor.to(device)


def base_model_name(pretrained_model_name_or_path: str) -> str:
    """How an artifact names its base model: a hub id as given; the bundled model by its place in the
    package, so that a card written on one machine works on another."""
    from . import config
    path = Path(pretrained_model_name_or_path)
    if path.is_dir():
        for name, constant in config.BUNDLED_MODELS.items():
            if path.resolve() == getattr(config, constant).resolve():
                return name
    return pretrained_model_name_or_path


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


def b_checkpoint(step: int, losses: list[float], trainable: dict, optimizer, generator_state: torch.Tensor,
                 scaler=None) -> dict:
    """What a step-B checkpoint holds: enough to continue bit for bit (the fp16 gradient scaler's state too)."""
    return {"step": step, "losses": losses, "params": {n: p.detach() for n, p in trainable.items()},
            "optimizer": optimizer.state_dict(), "generator": generator_state,
            "scaler": scaler.state_dict() if scaler is not None else None}


def resume_step_b(store: CheckpointStore, trainable: dict, optimizer, generator: torch.Generator, steps: int,
                  scaler=None) -> tuple[int, list[float]]:
    """Put the newest intact step-B checkpoint back (weights, optimiser, generator, gradient scaler);
    return its step and losses, or (0, []) when there is none. A torn or corrupt one is passed over for
    the one before it."""
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
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if step != store.b_steps()[-1]:
            logger.warning("resuming from %s, the newest intact checkpoint", name)
        logger.info("resuming step B at step %d of %d from %s", state["step"], steps, name)
        return state["step"], state["losses"]
    return 0, []


def check_with_model(cfg: ImagicConfig, pipe) -> None:
    """What only the loaded model can tell, checked before step A: the LoRA's target modules exist."""
    if cfg.full_finetune or cfg.lora_target_modules in LORA_TARGET_PRESETS:
        return  # a preset's names are matched by whichever of them the architecture has
    missing = unmatched_targets(pipe.unet, cfg.lora_target_module_list)
    if missing:
        raise ImagicInputError("--lora_target_modules", f"{', '.join(map(repr, missing))} names no module of this "
                                                        "UNet; e.g. to_q, to_k, to_v, to_out.0, conv1, conv2, "
                                                        "ff.net.2, or a preset: attn, attn_ff, attn_ff_conv")


def library_versions() -> dict[str, str]:
    import importlib.metadata as md
    versions = {"imagic_lora": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "xformers"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def edit_image(input_image: str, target_prompt: str, output_dir: str, **settings) -> dict:
    """Edit one image with the defaults of the model's preset (any :class:`ImagicConfig` field can be given
    as a keyword); return the artifact's record. The whole recipe, for a notebook."""
    cfg = ImagicConfig(input_image=str(input_image), target_prompt=target_prompt, output_dir=str(output_dir),
                       **settings).resolved()
    cfg.validate()
    recipe = ImagicRecipe(cfg).setup()
    try:
        return recipe.edit()
    finally:
        recipe.cleanup()

