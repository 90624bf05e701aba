#!/usr/bin/env python
"""Experiment (issue 22): can a general measure of "the object stayed in place" tell a turned triangle from a
moved one? On renders alone (no model): for each kind of change of a rendered photo, the length (px at 64) of the
shift that best aligns the changed image with the input, under two maps of the image.

    python scripts/place_measures.py

- edges: the pick's own edge map (imagic_lora.pick.edge_map, blur 0.05 of the frame);
- mass: each pixel's distance from the image's median colour, blurred the same (an object on any background).

The benchmark's place is the bounding box's centre (within 6 px). Printed: the median shift per change, for small
(14 px) and large (34 px) triangles on white and gray, 6 photos each. Results: docs/pick.md, "Known limits".
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from imagic_lora import pick, shapes  # noqa: E402
from imagic_lora.images import pil_to_tensor  # noqa: E402

BLUR = 0.05


def mass_map(images: torch.Tensor, blur: float = BLUR) -> torch.Tensor:
    """(N, 3, H, W) -> (N, H, W): each pixel's distance from the image's median colour, Gaussian-blurred."""
    x = images.float()
    median = x.flatten(2).median(2).values[..., None, None]
    return pick.gaussian_blur((x - median).abs().sum(1, keepdim=True), blur)[:, 0]


def best_shift(maps: torch.Tensor, reference: torch.Tensor, max_shift: int = 12) -> list[float]:
    """The length of the circular shift (within max_shift px) that best correlates each map (N, H, W) with the
    reference map (H, W), both mean-removed."""
    maps, reference = maps - maps.mean((1, 2), keepdim=True), reference - reference.mean()
    best, length = torch.full((len(maps),), -math.inf), torch.zeros(len(maps))
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            corr = (torch.roll(maps, (dy, dx), (1, 2)) * reference).sum((1, 2))
            better = corr > best
            best = torch.where(better, corr, best)
            length = torch.where(better, torch.tensor(math.hypot(dy, dx)), length)
    return length.tolist()


def main() -> int:
    scene = shapes.Scene
    shifts: dict[tuple, list[float]] = {}
    for background in ("white", "gray"):
        for size, span in (("small", 14), ("large", 34)):
            for k in range(6):
                cx, cy = 20 + 3 * k, 40 - 2 * k
                source = scene("triangle", "red", size, background, span, cx, cy, "up")
                other_size, other_span = ("large", 34) if size == "small" else ("small", 14)
                changes = {
                    "none (another photo)": source,
                    "recoloured, new background": scene("triangle", "blue", size,
                                                        "black" if background == "white" else "white", span, cx, cy,
                                                        "up"),
                    "turned in place": scene("triangle", "red", size, background, span, cx, cy, "left"),
                    "resized in place": scene("triangle", "red", other_size, background, other_span, cx, cy, "up"),
                    "moved 6 px": scene("triangle", "red", size, background, span, cx, cy + 6, "up"),
                    "moved 10 px": scene("triangle", "red", size, background, span, cx + 10, cy, "up"),
                }
                photos = torch.cat([pil_to_tensor(shapes.render_photo(s, seed=100 + k)) for s in changes.values()])
                reference = pil_to_tensor(shapes.render_photo(source, seed=k))
                for name, maps in (("edges", pick.edge_map(torch.cat([photos, reference]), BLUR)),
                                   ("mass", mass_map(torch.cat([photos, reference])))):
                    for change, shift in zip(changes, best_shift(maps[:-1], maps[-1])):
                        shifts.setdefault((change, size, name), []).append(shift)
    print(f"{'change':<28} {'size':<6} {'edges':>6} {'mass':>6}   (median best-aligning shift, px)")
    for change, size in dict.fromkeys((c, s) for c, s, _ in shifts):
        print(f"{change:<28} {size:<6} " + " ".join(
            f"{statistics.median(shifts[(change, size, name)]):6.1f}" for name in ("edges", "mass")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
