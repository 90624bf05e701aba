#!/usr/bin/env python
"""The size of an edit artifact's LoRA file on the real SD 1.5 and SDXL UNets, at a preset's settings.

    python scripts/lora_size.py --models sd15 sdxl

Builds each UNet from its published config (random weights, bf16: the file's size depends on the
shapes only), adds the preset's LoRA (rank, targets) with random factors, and writes it as the recipe
does: kohya keys (SGM names for SDXL), truncated to the preset's ``lora_budget``, fp16
(``imagic_lora.lora.kohya_state_dict``, ``imagic_lora.compress.truncate``, ``imagic_lora.artifact.save_lora``).
Prints, per model, the trained and saved parameters and the file's size in MB. How much of a trained
adapter's update the truncation keeps depends on its spectrum, which random factors do not have: the
energy figure printed is not a quality figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    p.add_argument("--lora_budget", type=float, default=None, help="default: the model's preset")
    args = p.parse_args(argv)

    import torch
    from diffusers import UNet2DConditionModel

    from imagic_lora.architectures import SD15_UNET, SDXL_UNET
    from imagic_lora.artifact import LORA_WEIGHT_NAME, save_lora
    from imagic_lora.compress import kept_energy, lora_parameters, truncate
    from imagic_lora.config import LORA_TARGET_PRESETS
    from imagic_lora.lora import add_lora, kohya_state_dict
    from imagic_lora.presets import PRESETS

    for model in args.models:
        preset = PRESETS["sd1" if model == "sd15" else "sdxl"].values
        budget = args.lora_budget if args.lora_budget is not None else preset["lora_budget"]
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**(SD15_UNET if model == "sd15" else SDXL_UNET)).to(torch.bfloat16)
        add_lora(unet, rank=preset["rank"], alpha=preset["rank"],
                 target_modules=list(LORA_TARGET_PRESETS[preset["lora_target_modules"]]), seed=0,
                 init_lora_weights=False)
        trained = kohya_state_dict(unet, float(preset["rank"]), sgm_names=model == "sdxl")
        del unet
        saved = truncate(trained, budget)
        with tempfile.TemporaryDirectory() as folder:
            save_lora(Path(folder), saved, {})
            size = (Path(folder) / LORA_WEIGHT_NAME).stat().st_size
        print(f"{model}: rank {preset['rank']} on {preset['lora_target_modules']}, {lora_parameters(trained) / 1e6:.2f} M "
              f"parameters trained; budget {budget}: {lora_parameters(saved) / 1e6:.2f} M saved in fp16, "
              f"file {size / 1e6:.2f} MB (energy kept of random factors: {kept_energy(trained, saved):.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
