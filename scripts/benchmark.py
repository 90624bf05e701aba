#!/usr/bin/env python
"""Speed and memory of Imagic-LoRA on real model sizes, and what each lever buys.

    python scripts/benchmark.py --models sd15 sd21 sdxl --output docs/benchmark      # on a GPU
    python scripts/benchmark.py --tiny --output /tmp/bench                          # CPU smoke test
    python scripts/benchmark.py --write_configs model-configs                      # configs for --dry_run

The real architectures (SD 1.5 at 512 px, SD 2.1 at 768 px with v-prediction, SDXL at 1024 px)
are built from their configs with random weights (no download: weights change neither speed nor
memory; the images mean nothing). Each variant runs in its own process through the CLI's own
`edit()` (A -> B -> C -> save, the C sweep being 5 eta values), and reports per phase the wall time
(synchronised), peak allocated and reserved GPU memory, steps per second and the achieved
TFLOP/s (FLOPs of one step counted with torch.utils.flop_counter) against the device's bf16 peak.

Variants: `recommended` (LoRA, 8-bit AdamW, bf16, gradient checkpointing, SDPA, our schedule);
each lever off on its own; the paper's step B (`--full_finetune`, Adam, its 1000 + 1500 steps,
fp32) and the memory-saving fork of it (8-bit Adam, fp16, checkpointing). Long schedules are
measured over --max_measured_steps steps per phase and their time scaled to the full schedule
(marked "extrapolated"). `--tiny` runs every variant on tiny models on the CPU: a smoke test of
this script, not a speed claim.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagic_lora.architectures import MODELS, build_pipeline, write_configs  # noqa: E402

#: bf16 dense tensor-core peak, TFLOP/s, by device name fragment.
BF16_PEAK = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "RTX 4090": 165.2,
             "RTX 3090": 71.0, "L4": 121.0, "T4": 65.0}

PAPER = {"emb_train_steps": 1000, "emb_learning_rate": 2e-3, "max_train_steps": 1500, "learning_rate": 5e-7}
VARIANTS = {
    # name: (CLI settings, mixed precision, description)
    "defaults": ({}, "auto", "exactly what a user gets with no flags: the model's preset, the CLI's precision and "
                             "memory plan"),
    "recommended": ({"gradient_checkpointing": True}, "bf16",
                    "LoRA, 8-bit AdamW, bf16, gradient checkpointing, SDPA, our schedule"),
    "no_8bit_adam": ({"gradient_checkpointing": True, "use_8bit_adam": False}, "bf16", "recommended, torch AdamW"),
    "no_mixed_precision": ({"gradient_checkpointing": True}, "no", "recommended, fp32 weights"),
    "no_checkpointing": ({}, "bf16", "recommended, no gradient checkpointing"),
    "xformers": ({"gradient_checkpointing": True, "enable_xformers_memory_efficient_attention": True}, "bf16",
                 "recommended, xformers attention instead of SDPA"),
    "compiled": ({"gradient_checkpointing": True, "torch_compile": "default", "channels_last": True,
                  "cudnn_benchmark": True}, "bf16",
                 "recommended, UNet compiled, channels-last, cuDNN benchmark (timed after a warm-up edit)"),
    "cuda_graphs": ({"gradient_checkpointing": True, "torch_compile": "reduce-overhead", "channels_last": True,
                     "cudnn_benchmark": True}, "bf16", "compiled with CUDA graphs (reduce-overhead)"),
    "paper_full": ({"full_finetune": True, "use_8bit_adam": False, **PAPER}, "no",
                   "the paper: full UNet, Adam, fp32, 1000 + 1500 steps"),
    "paper_full_8bit_ckpt": ({"full_finetune": True, "gradient_checkpointing": True, **PAPER}, "fp16",
                             "the paper's schedule, full UNet with 8-bit Adam, fp16, checkpointing (~11 GB fork)"),
}


def device_peak(name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


# ------------------------------------------------------------------------------------------------
# One variant, in its own process


def run_variant(args) -> dict:
    import dataclasses

    import torch
    from accelerate import Accelerator

    from imagic_lora.config import ImagicConfig
    from imagic_lora.interrupt import StopFlag
    from imagic_lora.plan import Target, decide_precision, make_plan, measure_unet
    from imagic_lora.recipe import ImagicRecipe
    from imagic_lora.models import weight_dtype_for
    settings, mixed_precision, description = VARIANTS[args.variant]
    tmp = Path(tempfile.mkdtemp(prefix="imagic-bench-"))
    target = Target.current()
    if mixed_precision == "auto":  # what a user gets: the CLI's own choice for this device
        mixed_precision = decide_precision(None, None, target.kind, target.bf16)
    accelerator = Accelerator(mixed_precision=mixed_precision if not args.tiny else "no")
    device = accelerator.device
    weight_dtype = weight_dtype_for(accelerator.mixed_precision)
    if args.allow_tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    pipe, resolution = build_pipeline(args.model, args.tiny, weight_dtype, device, tmp)
    from imagic_lora.shapes import Scene, render_photo
    render_photo(Scene("circle", "red", "large", "gray", 30, 30, 34), seed=0).resize((resolution, resolution)).save(
        tmp / "input.png")
    preset = "shapes" if args.tiny else {"sd15": "sd1", "sd21": "sd2-v", "sdxl": "sdxl"}[args.model]
    base = ImagicConfig(input_image=str(tmp / "input.png"), target_prompt="a large blue circle on a gray background",
                        output_dir=str(tmp / "edit"), checkpointing_steps=0, **settings).resolved(preset)
    if args.variant != "defaults":
        base = dataclasses.replace(base, etas=[0.0, 0.6, 0.8, 1.0, 1.2], num_seeds=1)
    full_schedule = {k: getattr(base, k) for k in ("emb_train_steps", "max_train_steps")}
    measured = {k: min(v, args.max_measured_steps) for k, v in full_schedule.items()}
    cfg = dataclasses.replace(base, **measured)
    if cfg.enable_xformers_memory_efficient_attention:
        try:
            import xformers  # noqa: F401
        except ImportError:
            return {"model": args.model, "variant": args.variant, "skipped": "xformers is not installed"}
    plan = None
    if args.variant == "defaults" and not args.tiny:  # the CLI's plan decides gradient checkpointing
        cfg, plan = make_plan(dataclasses.replace(cfg, pretrained_model_name_or_path=str(
            write_configs(args.model, tmp / "configs")), mixed_precision=accelerator.mixed_precision), target)
    elif cfg.gradient_checkpointing is None:
        cfg = dataclasses.replace(cfg, gradient_checkpointing=False)
    recipe = ImagicRecipe(cfg, plan=plan, accelerator=accelerator).setup(pipe=pipe)
    if cfg.torch_compile:  # compilation is paid once per process: a short edit first, the timed one after
        recipe.edit(dataclasses.replace(cfg, emb_train_steps=2, max_train_steps=2, output_dir=str(tmp / "warm-up")),
                    stop=StopFlag(), lock=False)
        # As between a manifest's edits: the warm-up's adapter goes, so the timed edit starts from the same UNet
        # as every other variant's (its new adapter is traced again; the compiled kernels come from the cache).
        recipe.cleanup()
    if args.profile and device.type == "cuda":
        record = _profiled_edit(recipe, Path(args.profile))
    else:
        record = recipe.edit(stop=StopFlag(), lock=False)
    recipe.cleanup()
    # FLOPs of one step of each phase, counted on the meta device without gradient checkpointing's recompute.
    costs = measure_unet(dict(pipe.unet.config), resolution, pipe.vae_scale_factor, weight_dtype,
                         lora_targets=cfg.lora_target_module_list, rank=cfg.rank, full_finetune=cfg.full_finetune)
    flops = {"A": costs.step_a_flops * cfg.effective_emb_train_batch_size,
             "B": costs.step_b_flops * cfg.train_batch_size}
    times = record["wall_time_s"]
    scale = {"A": full_schedule["emb_train_steps"] / max(measured["emb_train_steps"], 1),
             "B": full_schedule["max_train_steps"] / max(measured["max_train_steps"], 1)}
    phases = {}
    for phase in ("encode", "A", "B", "C", "pick", "save"):
        entry = {"wall_s": times.get(phase, 0.0), **record.get("memory_per_phase", {}).get(phase, {})}
        if phase in ("A", "B"):
            steps = measured["emb_train_steps" if phase == "A" else "max_train_steps"]
            entry.update(steps=steps, steps_per_s=steps / max(entry["wall_s"], 1e-9),
                         tflops=flops[phase] * steps / max(entry["wall_s"], 1e-9) / 1e12,
                         full_schedule_wall_s=entry["wall_s"] * scale[phase], extrapolated=scale[phase] > 1)
        phases[phase] = entry
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    total = sum(p.get("full_schedule_wall_s", p["wall_s"]) for p in phases.values())
    return {"model": args.model, "variant": args.variant, "description": description, "tiny": args.tiny,
            "device": device_name, "bf16_peak_tflops": device_peak(device_name), "resolution": resolution,
            "mixed_precision": accelerator.mixed_precision, "gradient_checkpointing": cfg.gradient_checkpointing,
            "schedule": full_schedule, "measured_steps": measured,
            "trainable_parameters": record["trainable_parameters"], "phases": phases, "total_wall_s": total,
            "plan": plan.record() if plan is not None else None,
            "peak_allocated_gib": record["memory"].get("peak_allocated_gib"),
            "peak_reserved_gib": record["memory"].get("peak_reserved_gib"),
            "peak_rss_gib": record["memory"]["peak_rss_gib"], "versions": record["versions"]}


def _profiled_edit(recipe, out: Path) -> dict:
    """The edit under torch.profiler; the top operators by CUDA time go to ``out``."""
    from torch.profiler import ProfilerActivity, profile

    from imagic_lora.interrupt import StopFlag
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=False) as prof:
        record = recipe.edit(stop=StopFlag(), lock=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))
    return record


# ------------------------------------------------------------------------------------------------
# The orchestrator


def markdown(results: list[dict], meta: dict) -> str:
    lines = ["# Speed and memory benchmark", "",
             f"Command: `{meta['command']}`  ", f"Device: {meta['device']}; {meta['versions']}", "",
             "| model | variant | A s | B s | C s (5 etas) | total s | peak alloc GiB | peak reserved GiB | "
             "B steps/s | B TFLOP/s | vs paper: time | vs paper: memory |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by_model = {}
    for r in results:
        by_model.setdefault(r["model"], {})[r["variant"]] = r
    for model, runs in by_model.items():
        baseline = runs.get("paper_full")
        for variant, r in runs.items():
            if "skipped" in r or "error" in r:
                lines.append(f"| {model} | {variant} | {r.get('skipped') or r.get('error')} |||||||||||")
                continue
            p = r["phases"]
            a, b = p["A"].get("full_schedule_wall_s", p["A"]["wall_s"]), p["B"].get("full_schedule_wall_s",
                                                                                     p["B"]["wall_s"])
            mark = "*" if p["A"]["extrapolated"] or p["B"]["extrapolated"] else ""
            ratio_t = ratio_m = "-"
            if baseline and "phases" in baseline:
                ratio_t = f"{baseline['total_wall_s'] / r['total_wall_s']:.1f}x less"
                if r["peak_allocated_gib"] and baseline["peak_allocated_gib"]:
                    ratio_m = f"{baseline['peak_allocated_gib'] / r['peak_allocated_gib']:.1f}x less"
            alloc = r["peak_allocated_gib"] if r["peak_allocated_gib"] is not None else "-"
            reserved = r["peak_reserved_gib"] if r["peak_reserved_gib"] is not None else "-"
            lines.append(f"| {model} | {variant} | {a:.1f}{mark} | {b:.1f}{mark} | {p['C']['wall_s']:.1f} | "
                         f"{r['total_wall_s']:.1f}{mark} | {alloc} | {reserved} | {p['B']['steps_per_s']:.2f} | "
                         f"{p['B']['tflops']:.1f} | {ratio_t} | {ratio_m} |")
    lines += ["", "\\* extrapolated: the phase ran --max_measured_steps steps and its time is scaled to the full "
              "schedule. TFLOP/s counts the FLOPs of one step (torch.utils.flop_counter) times the steps run."]
    return "\n".join(lines) + "\n"


def _write(out: Path, results: list[dict], argv, tiny: bool) -> None:
    first = next((r for r in results if "phases" in r), {})
    meta = {"command": "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "device": first.get("device", "?") + (" (tiny models: a smoke test, not a speed claim)" if tiny else ""),
            "versions": ", ".join(f"{k} {v}" for k, v in first.get("versions", {}).items())}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(results, meta))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sd15", "sd21", "sdxl"], choices=list(MODELS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--tiny", action="store_true", help="Tiny models on the CPU: a smoke test, not a claim.")
    parser.add_argument("--max_measured_steps", type=int, default=200,
                        help="Steps measured per phase; longer schedules are extrapolated.")
    parser.add_argument("--allow_tf32", action="store_true")
    parser.add_argument("--profile", default=None, help="Write a torch.profiler table of each run to this folder.")
    parser.add_argument("--output", default="benchmark", help="Writes OUTPUT.json and OUTPUT.md.")
    parser.add_argument("--timeout", type=int, default=1800, help="Seconds allowed per variant.")
    parser.add_argument("--write_configs", default=None, metavar="DIR",
                        help="Write each of --models as a folder of its published configs alone (no weights) to "
                             "DIR/<model>, for imagic-lora --dry_run, and exit.")
    parser.add_argument("--_child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.write_configs:
        for model in args.models:
            print(write_configs(model, Path(args.write_configs) / model))
        return 0

    if args._child:
        args.model, args.variant = args._child
        if args.profile:
            args.profile = str(Path(args.profile) / f"profile_{args.model}_{args.variant}.txt")
        result = run_variant(args)
        Path(args._result).write_text(json.dumps(result))
        return 0

    results = []
    for model in args.models:
        for variant in args.variants:
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                result_path = f.name
            cmd = [sys.executable, __file__, "--_child", model, variant, "--_result", result_path,
                   "--max_measured_steps", str(args.max_measured_steps)] + (["--tiny"] if args.tiny else []) + (
                ["--allow_tf32"] if args.allow_tf32 else []) + (["--profile", args.profile] if args.profile else [])
            start = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                if proc.returncode == 0:
                    result = json.loads(Path(result_path).read_text())
                else:
                    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    result = {"model": model, "variant": variant, "error": tail[:200]}
            except subprocess.TimeoutExpired:
                result = {"model": model, "variant": variant, "error": f"over {args.timeout} s"}
            finally:
                os.unlink(result_path)
            results.append(result)
            summary = (f"{result['total_wall_s']:.1f} s, peak {result.get('peak_allocated_gib')} GiB allocated"
                       if "phases" in result else result.get("skipped") or result.get("error"))
            print(f"{model:>5} {variant:<22} {summary}  ({time.perf_counter() - start:.0f} s wall)", flush=True)
            # Written after every variant, so that a run stopped from outside keeps what it measured.
            _write(Path(args.output), results, argv, args.tiny)
    print(f"benchmark: {Path(args.output).with_suffix('.md')}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
