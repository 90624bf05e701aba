"""imagic-lora: Imagic (Kawar et al., CVPR 2023) with LoRA, for one real image and one target text."""

__version__ = "0.1.0"
