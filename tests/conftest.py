"""Shared fixtures: tiny SD-format models built from configs (nothing from the hub)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from imagic_lora.tiny import make_tiny_sd  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "model")


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory) -> Path:
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd-v") / "model", prediction_type="v_prediction")


@pytest.fixture(scope="session")
def input_png(tmp_path_factory) -> Path:
    """A 48x40 (non-square) picture of a red disc on white."""
    path = tmp_path_factory.mktemp("inputs") / "disc.png"
    image = Image.new("RGB", (48, 40), "white")
    ImageDraw.Draw(image).ellipse((8, 10, 28, 30), fill=(220, 30, 30))
    image.save(path)
    return path


def fixed_draw_loss(unet, noise_scheduler, latents, embeds, seed=1234, batch_size=16, weight_dtype=torch.float32,
                    add_time_ids=None):
    """The denoising loss at one fixed set of draws: comparable before and after training."""
    from imagic_lora.diffusion import denoising_loss
    with torch.no_grad():
        return float(denoising_loss(unet, noise_scheduler, latents, embeds, batch_size=batch_size,
                                    generator=torch.Generator().manual_seed(seed), weight_dtype=weight_dtype,
                                    add_time_ids=add_time_ids))


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Accelerate keeps one process-wide state; tests that change mixed precision need a fresh one."""
    from accelerate.state import AcceleratorState, PartialState
    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    PartialState._reset_state()


def crash_after(real, n: int, calls: list, note=lambda args, kwargs: 1):
    """A stand-in for ``real`` that records each call in ``calls`` (what ``note`` says of it) and raises once
    ``n`` calls have gone through: a crash in the middle of step C."""
    def stand_in(*args, **kwargs):
        calls.append(note(args, kwargs))
        if len(calls) > n:
            raise RuntimeError("simulated crash in step C")
        return real(*args, **kwargs)
    return stand_in


@pytest.fixture
def strict_compile(monkeypatch):
    """torch.compile that cannot fall back to eager unseen: hitting dynamo's recompile limit raises, and the
    test asserts that graphs were compiled. Yields dynamo's counters."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    yield counters
    assert counters["stats"]["unique_graphs"] > 0
    torch._dynamo.reset()
