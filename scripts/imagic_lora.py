#!/usr/bin/env python
"""Imagic with LoRA: edit one real image from a target text (Kawar et al., CVPR 2023).

    accelerate launch scripts/imagic_lora.py \\
        --input_image photo.jpg --target_prompt "a photo of a sitting dog" --output_dir out/

A thin door to the package's command line (``imagic-lora`` once installed; ``python -m imagic_lora``):
the recipe itself is :mod:`imagic_lora.recipe`, the run around it :mod:`imagic_lora.runner`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from imagic_lora.cli import entry  # noqa: E402

if __name__ == "__main__":
    entry()
