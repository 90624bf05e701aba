"""Choices about how this machine runs an edit, made once per run: which CPU convolution kernels train."""

from __future__ import annotations

import contextlib

import torch

#: The largest UNet (first block's channels, latent side) whose training steps use PyTorch's own CPU
#: convolutions rather than oneDNN's (docs/BENCHMARKS.md has the measurements).
SMALL_UNET_CHANNELS, SMALL_UNET_LATENT = 32, 16


def training_convolutions(unet, latents: torch.Tensor) -> contextlib.AbstractContextManager:
    """The convolution kernels for steps A and B: PyTorch's own on a multi-threaded CPU for a very small
    fp32 UNet (first block at most 32 channels, latent at most 16x16: the bundled model), else the default.

    oneDNN's fixed cost per call outweighs its speed there, above all for a LoRA's 1x1 convolutions,
    which PyTorch sends to oneDNN whenever it has more than one thread. Both compute the same
    convolution, to rounding. The switch is PyTorch's process-wide flag: two threads training at once
    would share it.
    """
    small = (latents.device.type == "cpu" and torch.get_num_threads() > 1 and unet.dtype == torch.float32
             and unet.config.block_out_channels[0] <= SMALL_UNET_CHANNELS
             and max(latents.shape[-2:]) <= SMALL_UNET_LATENT)
    return _onednn_off() if small else contextlib.nullcontext()


@contextlib.contextmanager
def _onednn_off():
    # Not torch.backends.mkldnn.flags(): it also sets oneDNN's TF32 switch, which warns on a CPU build.
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled
