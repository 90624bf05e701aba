#!/usr/bin/env python
"""The README's picture of the bundled edit: the input, eta 0 (the input drawn back by the fine-tuned
model) and the edit the run picked, side by side, from a finished run's folder.

    imagic-lora && python scripts/make_readme_image.py imagic-output docs/example_edit.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagic_lora.config import as_list  # noqa: E402
from imagic_lora.generate import image_name  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    run, output = Path(argv[0]), Path(argv[1])
    record = json.loads((run / "imagic_config.json").read_text())
    eta, seed = record["recommended"]["eta"], record["recommended"]["seed"]
    strength = record["recommended"].get("strength", 1.0)  # below 1: drawn from the noised input
    first = as_list("strength", record.get("strength", 1.0))[0]  # eta 0 is drawn at the first strength
    at = lambda s: f", strength {s}" if s < 1 else ""  # noqa: E731
    zero = run / "images" / image_name(0.0, record["seeds"][0], first)
    tiles = [("input", run / "images" / "input.png"), (f"eta 0, seed {record['seeds'][0]}{at(first)}", zero),
             (f"the pick: eta {eta:.1f}, seed {seed}{at(strength)}",
              run / "images" / "edit.png")]
    cell, label_h = 192, 20
    sheet = Image.new("RGB", (len(tiles) * cell, cell + label_h), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for i, (label, path) in enumerate(tiles):
        draw.text((i * cell + 4, 4), label, fill="black", font=font)
        sheet.paste(Image.open(path).convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (i * cell, label_h))
    sheet.save(output)
    print(f"wrote {output}: {record['target_prompt']!r}, picked eta {eta} seed {seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
