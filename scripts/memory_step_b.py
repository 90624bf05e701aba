#!/usr/bin/env python
"""Peak memory of step B on the real SD 1.5 UNet, on the CPU: the LoRA recipe against the paper's full fine-tune.

    python scripts/memory_step_b.py --resolution 256 --steps 3 --output runs/memory_step_b.json

Each variant runs in its own process (so one's peak cannot hide in another's), builds the SD 1.5 UNet
from its published config with random weights (the memory does not depend on the weights), and runs
``--steps`` steps of step B through the package's own code (``add_lora`` or ``full_finetune_parameters``,
``make_optimizer``, ``finetune``) on one 256 px latent with the sd1 preset's batch. The figure is the
process's peak resident memory (``getrusage``'s ``ru_maxrss``), which includes the Python interpreter
and the libraries (about 0.5 GiB) as a user's process would. Variants:

- ``lora``: what the recipe does on a GPU: frozen UNet in bf16, rank-8 LoRA (attention, feed-forward
  and ResNet convolutions) in fp32, 8-bit AdamW, bf16 autocast, gradient checkpointing;
- ``lora_no_checkpointing``: the same without gradient checkpointing (what the plan picks when it fits);
- ``paper``: the paper's step B: every UNet weight trained in fp32 with fp32 Adam, no checkpointing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {
    "lora": dict(full=False, mixed_precision="bf16", gradient_checkpointing=True, use_8bit_adam=True),
    "lora_no_checkpointing": dict(full=False, mixed_precision="bf16", gradient_checkpointing=False,
                                  use_8bit_adam=True),
    "paper": dict(full=True, mixed_precision="no", gradient_checkpointing=False, use_8bit_adam=False),
}


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def run_variant(name: str, resolution: int, steps: int) -> dict:
    import torch
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from imagic_lora.architectures import SCHEDULER, SD15_UNET
    from imagic_lora.conditioning import PromptEmbeds
    from imagic_lora.config import LORA_TARGET_PRESETS
    from imagic_lora.finetune import finetune, full_finetune_parameters, make_optimizer
    from imagic_lora.lora import add_lora
    from imagic_lora.models import set_attention, weight_dtype_for
    from imagic_lora.presets import SD1

    v = VARIANTS[name]
    preset = SD1.values
    accelerator = Accelerator(mixed_precision=v["mixed_precision"], cpu=True)
    weight_dtype = weight_dtype_for(accelerator.mixed_precision)
    torch.manual_seed(0)
    # Built in the weight dtype, as from_pretrained(dtype=...) loads it: an fp32 build cast down would peak at the
    # fp32 model's 3.4 GB before training starts.
    default = torch.get_default_dtype()
    torch.set_default_dtype(weight_dtype)
    try:
        unet = UNet2DConditionModel(**SD15_UNET)
    finally:
        torch.set_default_dtype(default)
    unet.requires_grad_(False)
    set_attention(unet, use_xformers=False)
    if v["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    after_load = rss_gib()
    if v["full"]:
        params = full_finetune_parameters(unet)
    else:
        params = add_lora(unet, rank=preset["rank"], alpha=float(preset["rank"]),
                          target_modules=LORA_TARGET_PRESETS[preset["lora_target_modules"]], seed=0)
    optimizer = make_optimizer(params, learning_rate=preset["learning_rate"], use_8bit_adam=v["use_8bit_adam"],
                               weight_decay=1e-2, accelerator=accelerator)
    generator = torch.Generator().manual_seed(0)
    side = resolution // 8
    latents = torch.randn((1, 4, side, side), generator=generator)
    e_opt = PromptEmbeds(torch.randn((1, 77, 768), generator=generator) * 0.5)
    start = time.perf_counter()
    finetune(unet, DDPMScheduler.from_config(SCHEDULER), latents, e_opt,
             optimizer, accelerator=accelerator, steps=steps, batch_size=preset["train_batch_size"],
             generator=generator, weight_dtype=weight_dtype, max_grad_norm=preset["max_grad_norm"])
    seconds = time.perf_counter() - start
    return {"variant": name, **v, "resolution": resolution, "steps": steps,
            "trainable_parameters": sum(p.numel() for p in params),
            "rss_after_load_gib": round(after_load, 3), "peak_rss_gib": round(rss_gib(), 3),
            "seconds_per_step": round(seconds / steps, 2), "torch": torch.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="Step-B steps per variant (the peak is reached by 2).")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--output", default=None, help="Also write the figures to this JSON file.")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        print(json.dumps(run_variant(args._child, args.resolution, args.steps)))
        return 0
    results = []
    for name in args.variants:
        proc = subprocess.run([sys.executable, __file__, "--_child", name, "--resolution", str(args.resolution),
                               "--steps", str(args.steps)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
            return 1
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"{name:<22} {result['trainable_parameters'] / 1e6:8.1f} M trainable  peak RSS "
              f"{result['peak_rss_gib']:6.2f} GiB (after loading {result['rss_after_load_gib']:.2f})  "
              f"{result['seconds_per_step']:.1f} s/step", flush=True)
    by_name = {r["variant"]: r for r in results}
    if "paper" in by_name:
        for name, r in by_name.items():
            if name != "paper":
                print(f"paper / {name}: {by_name['paper']['peak_rss_gib'] / r['peak_rss_gib']:.1f}x the peak memory")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"command": "python scripts/memory_step_b.py " + " ".join(
            argv if argv is not None else sys.argv[1:]), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
