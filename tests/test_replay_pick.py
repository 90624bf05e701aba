"""scripts/replay_pick.py's place measure with a border margin, on hand-drawn images (no model)."""

import importlib.util
import sys
from pathlib import Path

import torch

from imagic_lora import pick

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # replay_pick imports replay_pool, beside it
spec = importlib.util.spec_from_file_location("replay_pick", SCRIPTS / "replay_pick.py")
replay = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replay)


def square(x0: int, y0: int, side: int = 12, band: bool = False) -> torch.Tensor:
    """(1, 3, 64, 64) in [-1, 1]: a white frame with a dark square at (x0, y0); ``band``: a dark line along the
    frame's border too, as the model sometimes draws."""
    image = torch.ones(1, 3, 64, 64)
    image[..., y0:y0 + side, x0:x0 + side] = -1.0
    if band:
        image[..., 0, :] = image[..., -1, :] = image[..., :, 0] = image[..., :, -1] = -1.0
    return image


def test_without_a_margin_it_is_the_pick_s_own_extent_shift():
    candidates, reference = torch.cat([square(30, 10), square(10, 40)]), square(10, 10)
    ours = replay.extent_shifts_inside(candidates, reference, 0)
    assert torch.allclose(torch.tensor(ours), torch.tensor(pick._extent_shifts(candidates, reference)))
    assert abs(ours[0] * 64 - 20) < 1 and abs(ours[1] * 64 - 30) < 1


def test_a_margin_finds_the_object_inside_a_band_along_the_border():
    # The object moved 30 px right and 30 down (42 px); with a band along the border the extent spans the whole
    # frame, whose centre lies 16 px right and 16 down of the input's object (23 px).
    moved, reference = square(40, 40, band=True), square(10, 10)
    plain = pick._extent_shifts(moved, reference)[0] * 64
    inside = replay.extent_shifts_inside(moved, reference, 2)[0] * 64
    assert abs(plain - 16 * 2 ** 0.5) < 1.5 and abs(inside - 30 * 2 ** 0.5) < 1.5, (plain, inside)
