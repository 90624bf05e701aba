#!/usr/bin/env python
"""Write the bundled example photos (imagic_lora/bundled/examples/): shapes-world scenes made
differently from the training renders (a lighting gradient, blur, sensor noise), so the default
edit runs on an image the bundled model never saw. Deterministic; examples.json lists each
photo's caption and suggested edits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagic_lora.shapes import Scene, render_photo  # noqa: E402

EXAMPLES = {
    "red_circle.png": (Scene("circle", "red", "small", "white", 17.0, 20.0, 41.0), 101,
                       ["a small blue circle on a white background", "a small red circle on a black background",
                        "a large red circle on a white background"]),
    # Captioned as world version 2 (the default model's) names it; the image is the same as version 1's upright one.
    "green_triangle.png": (Scene("triangle", "green", "large", "gray", 34.0, 38.0, 30.0, "up"), 102,
                           ["a large green triangle pointing left on a gray background",
                            "a large green triangle pointing up on a black background",
                            "a large yellow triangle pointing up on a gray background",
                            "a large green square on a gray background"]),
    "yellow_square.png": (Scene("square", "yellow", "small", "black", 15.0, 44.0, 22.0), 103,
                          ["a small yellow square on a white background", "a small red square on a black background",
                           "a small yellow circle on a black background"]),
}


def main() -> int:
    folder = Path(__file__).resolve().parents[1] / "imagic_lora" / "bundled" / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    listing = {}
    for name, (scene, seed, edits) in EXAMPLES.items():
        render_photo(scene, seed=seed).save(folder / name)
        listing[name] = {"caption": scene.caption, "centre": [scene.cx, scene.cy], "edits": edits}
    (folder / "examples.json").write_text(json.dumps(listing, indent=2) + "\n")
    print(f"wrote {len(listing)} examples to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
