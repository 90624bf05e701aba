"""The command line's run: every check before a model loads, the plan, the edits, the summary.

For one image, ``--output_dir`` is the artifact; for a manifest (or TEdBench) each job's artifact is
``--output_dir/<id>/`` and the processes `accelerate launch` starts split the jobs between them, each
running whole, independent edits on its own copy of the model (no DDP).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from .config import (ARTIFACT_DIFFERENCES, BUNDLED_MODEL, BUNDLED_MODEL_V2, DEFAULT_EXAMPLE, DEFAULT_TARGET_PROMPT,
                     GROUPS, ImagicConfig, changed_settings, check_text)
from .diffusion import NonFiniteLossError
from .errors import ArgumentError, ImageFileError, ImagicInputError, ModelError
from .generate import EDIT_IMAGE_NAME
from .images import check_image_file, file_sha256
from .interrupt import Interrupted, StopFlag
from .jobs import Job, is_complete, order_rows, read_manifest, read_tedbench, write_summary
from .models import check_inference_steps, load_tokenizer_and_vocabulary, model_family
from .output import (FolderLock, OutputError, check_output_dir, check_output_path, foreign_entries, has_checkpoints,
                     partial_path, read_config, recover_interrupted_replacements, why_not_replaceable)
from .plan import Target, make_plan
from .recipe import ImagicRecipe
from .vocabulary import unknown_words

logger = logging.getLogger("imagic_lora")


def run(cfg: ImagicConfig) -> int:
    """Run the command line's config; return the exit code (2: bad input, found before any model loads)."""
    main = int(os.environ.get("RANK", "0")) == 0
    with contextlib.ExitStack() as held:
        try:
            cfg = cfg.resolved()
            jobs = plan_jobs(cfg)
            many = jobs[0].id is not None
            check_output_path(cfg.output_dir, artifact=not many)
            if not many and cfg.resume and is_complete(cfg.output_dir) and not partial_path(cfg.output_dir).exists():
                print(f"imagic_lora: {cfg.output_dir} is already complete; nothing to resume")
                return 0
            check_inputs(cfg, jobs)  # writes nothing
            # One run at a time per output folder (for many edits, the main process holds the run's);
            # then a replacement an earlier run left half done is undone, and the folders checked again.
            if not cfg.dry_run and (not many or main):
                held.enter_context(FolderLock(cfg.output_dir, inside=many))
                recover_interrupted_replacements([job.config(cfg).output_dir for job in jobs])
                if not many:
                    check_output_dir(cfg.output_dir, overwrite=cfg.overwrite, resume=cfg.resume)
            cfg, plan = make_plan(cfg, Target.current(), os.environ.get("ACCELERATE_MIXED_PRECISION"))
            skip = finished_jobs(cfg, jobs) if many else set()
            if many:
                check_summary_files(cfg.output_dir)
        except OutputError as e:
            print(f"imagic_lora: error: --output_dir: {e}", file=sys.stderr)
            return 2
        except (ImagicInputError, ModelError, ImageFileError) as e:
            print(f"imagic_lora: error: {as_input_error(e, cfg)}", file=sys.stderr)
            return 2
        except OSError as e:
            if not is_disk_full(e):
                raise
            print(f"imagic_lora: error: {failure_message(e)}", file=sys.stderr)
            return 1
        if main:
            for line in plan.lines():
                print(f"imagic_lora: {line}", flush=True)
        if cfg.dry_run:
            print_settings(cfg)
            return 0
        return run_edits(cfg, plan, jobs, skip, many)


def check_summary_files(output_dir: str) -> None:
    """A manifest's run writes summary.jsonl and summary.csv in its folder: never over a file of the user's."""
    from .jobs import SUMMARY_FIELDS
    folder = Path(output_dir)
    checks = {"summary.jsonl": lambda text: not text.strip() or all(
                  isinstance(row := json.loads(line), dict) and "id" in row and "status" in row
                  for line in text.splitlines() if line.strip()),
              "summary.csv": lambda text: text.startswith(",".join(SUMMARY_FIELDS[:3]))}
    for name, ours in checks.items():
        path = folder / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise OutputError(path, "is in the way of the run's summary (not a plain file)")
        if path.is_file():
            try:
                mine = ours(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                mine = False
            if not mine:
                raise OutputError(path, "is not a summary imagic-lora wrote: it is never replaced; rename it or "
                                        "choose another --output_dir")


def print_settings(cfg: ImagicConfig) -> None:
    """Every setting as resolved, grouped as --help groups them."""
    import dataclasses
    values = cfg.to_dict()
    for group, title in GROUPS.items():
        print(f"imagic_lora: {title}:")
        for f in dataclasses.fields(cfg):
            if f.metadata["group"] == group:
                value = values[f.name]
                shown = " ".join(map(str, value)) if isinstance(value, list) else value
                print(f"imagic_lora:   --{f.name} {shown}")


def plan_jobs(cfg: ImagicConfig) -> list[Job]:
    """The edits of this run: a manifest's or TEdBench's, or the one of --input_image."""
    if cfg.manifest:
        return read_manifest(cfg.manifest)
    if cfg.tedbench:
        return read_tedbench(cfg.tedbench)
    image, prompt = cfg.input_image, cfg.target_prompt
    if image is None and Path(cfg.pretrained_model_name_or_path) in (BUNDLED_MODEL, BUNDLED_MODEL_V2):
        # No image: the bundled example photo, and its edit unless a target text is given.
        image, prompt = str(DEFAULT_EXAMPLE), DEFAULT_TARGET_PROMPT if prompt is None else prompt
    if prompt is None:
        raise ImagicInputError("--target_prompt", "is required: describe the wanted image")
    return [Job(None, image or "", prompt)]


def check_inputs(cfg: ImagicConfig, jobs: list[Job]) -> None:
    """Everything checkable before the weights load: files, numbers, output folders, vocabulary, the
    model's schedule."""
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
    tokenizer, vocabulary = load_tokenizer_and_vocabulary(cfg.pretrained_model_name_or_path, cfg.revision)
    for job in jobs:
        where = "--target_prompt" if single else "--manifest"
        prefix = "" if single else f"job {job.id}: "
        job_cfg = job_cfgs[job.id]
        try:
            check_inference_steps(cfg.pretrained_model_name_or_path, cfg.revision, job_cfg.scheduler,
                                  job_cfg.num_inference_steps)
        except ArgumentError as e:
            raise ImagicInputError("--num_inference_steps" if single else "--manifest", f"{prefix}{e.problem}") \
                from None
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


def finished_jobs(cfg: ImagicConfig, jobs: list[Job]) -> set[str]:
    """A manifest's job folders, checked before anything runs: the ids of the finished jobs to skip.

    A folder that holds anything but an imagic-lora artifact is refused (it is never replaced). A
    finished job is skipped when its artifact was made with the job's settings and image; when they
    changed, it is redone under --overwrite and refused without (never reported as done).
    """
    skip = set()
    job_cfgs = {job.id: job.config(cfg) for job in jobs}
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


def run_edits(cfg: ImagicConfig, plan, jobs: list[Job], skip: set[str], many: bool) -> int:
    """The Accelerator, the model once per process, then each of this process's edits; the summary."""
    from accelerate import Accelerator
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision,
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    if many and accelerator.num_processes > 1:  # no stale summary part from an earlier run is read back
        if accelerator.is_main_process:
            for stale in Path(cfg.output_dir).glob(".summary.rank*.json"):
                stale.unlink()
        accelerator.wait_for_everyone()
    # SIGINT/SIGTERM finish the current step and save a checkpoint; the handlers before are back after.
    with StopFlag() as stop:
        recipe = ImagicRecipe(cfg, plan=plan, accelerator=accelerator)
        quiet_loading()
        try:
            recipe.setup()
        except (ImagicInputError, ModelError) as e:
            print(f"imagic_lora: error: {as_input_error(e, cfg)}", file=sys.stderr)
            return 2
        rows, interrupted = [], None
        try:
            with accelerator.split_between_processes(jobs) as my_jobs:
                for number, job in enumerate(my_jobs, start=1):
                    job_cfg = job.config(cfg)
                    head = f"[{number}/{len(my_jobs)}] {job.id}: " if many else ""
                    started = time.perf_counter()
                    row = {"id": job.id, "input_image": job.input_image, "target_prompt": job.target_prompt,
                           "output_dir": job_cfg.output_dir, "status": "ok", "error": None,
                           "model_load_s": round(recipe.model_load_s, 3), "process": accelerator.process_index}
                    if job.id in skip:
                        done = read_config(job_cfg.output_dir) or {}
                        rows.append({**row, **summary_fields(done), "status": "skipped (complete)"})
                        print(f"imagic_lora: {head}already complete", flush=True)
                        continue
                    print(f"imagic_lora: {head}editing {job_cfg.input_image} towards {job_cfg.target_prompt!r}",
                          flush=True)
                    try:
                        if many:  # checked only now: a bad image fails its own job
                            try:
                                check_image_file(job_cfg.input_image)
                            except ImageFileError as e:
                                raise ImagicInputError("--manifest", f"job {job.id}: image {e}") from None
                            job_cfg = resume_or_restart(job, job_cfg)
                        # The single edit's folder is locked by run(); a manifest's job folders here.
                        record = recipe.edit(job_cfg, stop, lock=many)
                        rows.append({**row, **summary_fields(record)})
                        if many:
                            phases = ", ".join(f"{k} {v:.0f} s" for k, v in record["wall_time_s"].items()
                                               if k in ("A", "B", "C", "pick"))
                            print(f"imagic_lora: {head}done in {time.perf_counter() - started:.0f} s ({phases})",
                                  flush=True)
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
                        recipe.cleanup()
        finally:  # the summary is written whatever happened to the edits
            if many:
                rows = gather_rows(accelerator, cfg.output_dir, rows, [job.id for job in jobs])

        if accelerator.is_main_process:
            print_summary(cfg, rows, many)
        if interrupted:
            return 128 + interrupted
        if not many and rows[0]["status"] == "failed" and rows[0].get("input_error"):
            return 2
        return 1 if any(row["status"] == "failed" for row in rows) else 0


def resume_or_restart(job: Job, job_cfg: ImagicConfig) -> ImagicConfig:
    """A manifest job an earlier run left checkpoints for resumes from them when its settings and image are
    unchanged (the same result as an uninterrupted run), with or without --resume; when its line changed,
    they are of no use to it and it starts over."""
    import dataclasses

    from .config import RESUMABLE_DIFFERENCES
    partial = partial_path(job_cfg.output_dir)
    if not has_checkpoints(partial):
        return job_cfg
    try:
        before = json.loads((partial / "checkpoints" / "run.json").read_text())
    except (OSError, ValueError):
        before = None
    now = job_cfg.settings(RESUMABLE_DIFFERENCES, file_sha256(job_cfg.input_image))
    if isinstance(before, dict) and not changed_settings(before, now):
        logger.info("job %s: resuming from the checkpoints an earlier run left", job.id)
        return dataclasses.replace(job_cfg, resume=True)
    logger.warning("job %s: the checkpoints an earlier run left were made with other settings; starting over", job.id)
    return dataclasses.replace(job_cfg, resume=False)


def quiet_loading() -> None:
    """No progress bars while the libraries load the model: a few lines of noise per run in a log file."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def as_input_error(error: Exception, cfg: ImagicConfig) -> ImagicInputError:
    """A library error about a model or an image, as the flag that named it."""
    if isinstance(error, ModelError):
        vae = cfg.pretrained_vae_model_name_or_path
        flag = "--pretrained_vae_model_name_or_path" if vae and error.name == vae else "--pretrained_model_name_or_path"
        return ImagicInputError(flag, str(error))
    if isinstance(error, ImageFileError):
        return ImagicInputError("--input_image", str(error))
    return error


def failure_message(error: BaseException) -> str:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return ("CUDA out of memory; levers that fit a smaller card: --gradient_checkpointing, --use_8bit_adam, "
                "a lower --rank, a lower --resolution, --train_batch_size 1 (and --emb_train_batch_size 1) with "
                "--gradient_accumulation_steps, "
                "--sample_batch_size 1, "
                "--mixed_precision fp16/bf16")
    if is_disk_full(error):
        where = getattr(error, "filename", None) or "the output"
        return (f"no space left on the device writing {where}; the checkpoints made so far are kept: free some "
                "space, then rerun the same command with --resume")
    if isinstance(error, NonFiniteLossError):
        return (f"{error}: use --mixed_precision bf16 (Ampere or newer) or no instead of fp16, or lower the learning "
                "rate")
    return str(error) if isinstance(error, (ImagicInputError, ImageFileError, OutputError)) else \
        f"{type(error).__name__}: {error}"


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # safetensors' writer raises its own error, naming the OS error only in its text
    return type(error).__name__ == "SafetensorError" and "No space left on device" in str(error)


#: Failures of one edit that get a one-line message (a manifest records them and goes on); anything
#: else is a bug, shown with its traceback.
EXPECTED_FAILURES = (ImagicInputError, ImageFileError, NonFiniteLossError, OutputError, torch.cuda.OutOfMemoryError)


PHASES = ("encode", "A", "B", "C", "pick", "save")


def _total(work: dict | None, key: str) -> float | None:
    values = [phase[key] for phase in (work or {}).values() if key in phase]
    return round(sum(values), 3) if values else None


def summary_fields(record: dict) -> dict:
    timings = record.get("wall_time_s", {})
    memory = record.get("memory", {})
    picked = record.get("picked") or {}
    return {"recommended_eta": (record.get("recommended") or {}).get("eta", record.get("recommended_eta")),
            "picked_eta": picked.get("eta"),
            "picked_seed": picked.get("seed"), "picked_strength": picked.get("strength"),
            "picked_calibrated": picked.get("calibrated"),
            **{f"wall_time_{k}_s": timings.get(k) for k in PHASES},
            "unet_forwards": _total(record.get("work"), "unet_forwards"), "tflop": _total(record.get("work"), "tflop"),
            "peak_memory_gib": memory.get("peak_allocated_gib", memory.get("peak_rss_gib"))}


def gather_rows(accelerator, output_dir: str, rows: list[dict], order: list[str]) -> list[dict]:
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
    phases = " | ".join(f"{k} {row[f'wall_time_{k}_s']:.1f} s" for k in PHASES if row.get(f"wall_time_{k}_s"))
    total = sum(row[f"wall_time_{k}_s"] or 0.0 for k in PHASES)
    print(f"\nimagic_lora: edit done in {total:.1f} s after {row['model_load_s']:.1f} s of model loading "
          f"({phases}); peak memory {row['peak_memory_gib']:.2f} GiB")
    print(f"imagic_lora: images in {Path(cfg.output_dir) / 'images'} (contact sheet: grid.png); "
          f"artifact in {cfg.output_dir}; recommended eta {row['recommended_eta']}")
    if row.get("picked_eta") is not None:
        where = Path(cfg.output_dir) / "images" / EDIT_IMAGE_NAME
        at = f", strength {row['picked_strength']}" if (row.get("picked_strength") or 1.0) < 1 else ""
        if row.get("picked_calibrated") is False:
            print(f"imagic_lora: the edit, suggested automatically: {where} (eta {row['picked_eta']}, seed "
                  f"{row['picked_seed']}{at}); the pick is calibrated on the shapes model only: check grid.png")
        else:
            print(f"imagic_lora: the edit, picked automatically: {where} (eta {row['picked_eta']}, seed "
                  f"{row['picked_seed']}{at})")
