"""The README's code blocks, run as a new reader runs them, in one fresh folder (tests/readme.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from readme import blocks, run_blocks

README = ROOT / "README.md"


def test_every_readme_block_is_run_or_says_why_not():
    found = blocks(README.read_text())
    assert found, "the README has no code blocks"
    for block in found:
        assert block.skip is None or block.skip, f"block {block.number} is skipped without a reason"
        if block.skip is None:
            assert block.lang in ("bash", "python"), f"block {block.number} ({block.lang!r}) would not run"


def test_the_readme_skips_only_what_cannot_run_here():
    skipped = [b for b in blocks(README.read_text()) if b.skip is not None]
    # The install (CI runs it), the test command (this is it), and what needs a network or another program.
    assert len(skipped) <= 5, [(b.number, b.skip) for b in skipped]


@pytest.mark.slow
def test_the_readme_runs_as_written(tmp_path):
    """Command 1 and every snippet after it; the diffusers snippet draws the run's own edit.png back."""
    ran = run_blocks(tmp_path)
    commands = [block.code for block, _ in ran]
    assert any(code.strip().startswith("imagic-lora") for code in commands), commands
    assert any("load_lora_weights" in code for code in commands), commands
    run = np.asarray(Image.open(tmp_path / "imagic-output" / "images" / "edit.png").convert("RGB"), dtype=np.int16)
    again = np.asarray(Image.open(tmp_path / "edit.png").convert("RGB"), dtype=np.int16)
    # Within rounding: the run drew eight images per pipeline call, the snippet one.
    assert int(np.abs(run - again).max()) <= 1
    for block, output in ran:
        print(f"README block {block.number} ({block.lang}): ok")

    # The snippet's other branch: had the pick chosen an image drawn from the noised input, the img2img pipeline
    # draws that image back. The record is pointed at one the run drew at the preset's lower strength.
    snippet = next(code for code in commands if "load_lora_weights" in code)
    record_path = tmp_path / "imagic-output" / "imagic_config.json"
    record = json.loads(record_path.read_text())
    low = min(record["strength"])
    assert low < 1.0, record["strength"]
    eta, seed = max(e for e in record["etas"] if e > 0), record["seeds"][-1]
    record["recommended"] = {"eta": eta, "seed": seed, "strength": low}
    record_path.write_text(json.dumps(record))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # as run_blocks runs the README's blocks
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    drawn = tmp_path / "imagic-output" / "images" / f"eta_{eta:.2f}_seed_{seed}_strength_{low:.2f}.png"
    run = np.asarray(Image.open(drawn).convert("RGB"), dtype=np.int16)
    again = np.asarray(Image.open(tmp_path / "edit.png").convert("RGB"), dtype=np.int16)
    assert int(np.abs(run - again).max()) <= 1
    pure_noise = drawn.with_name(f"eta_{eta:.2f}_seed_{seed}.png")  # the same eta and seed from pure noise
    assert np.abs(np.asarray(Image.open(pure_noise).convert("RGB"), dtype=np.int16) - again).max() > 1
