#!/usr/bin/env python
"""Every edit the bundled photos suggest (imagic_lora/bundled/examples/examples.json), run through the CLI and
judged from its own edit.png: what a user trying the suggestions would get.

    python scripts/edit_examples.py --output_dir examples-run
    python scripts/edit_examples.py --output_dir examples-b100 --cli_args "--max_train_steps 100"

An edit is right when the judge (imagic_lora.shapes.judge, world version 2) reads the target caption back from
edit.png, direction included, and the object's bounding-box centre lies within 6 px of the input's: the
benchmark's rule. Prints one line per edit and the count. Each run's folder is kept under --output_dir.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from imagic_lora import shapes  # noqa: E402
from imagic_lora.config import DEFAULT_EXAMPLE  # noqa: E402
from imagic_lora.shapes_benchmark import PLACE_TOLERANCE_PX  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", required=True, help="Each edit's run folder goes here (it must not exist).")
    p.add_argument("--cli_args", default="", help="Flags passed to every CLI run, e.g. '--max_train_steps 100'.")
    args = p.parse_args(argv)
    out = Path(args.output_dir)
    if out.exists():
        p.error(f"--output_dir {out} already exists; give a new folder")
    listing = json.loads((DEFAULT_EXAMPLE.parent / "examples.json").read_text())
    right = total = 0
    for photo, entry in listing.items():
        source = DEFAULT_EXAMPLE.parent / photo
        original = shapes.judge(Image.open(source), world=2)
        for index, target in enumerate(entry["edits"]):
            run = out / f"{Path(photo).stem}-{index}"
            command = [sys.executable, "-m", "imagic_lora", "--input_image", str(source), "--target_prompt", target,
                       "--output_dir", str(run), *shlex.split(args.cli_args)]
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                return proc.returncode
            picked = json.loads((run / "imagic_config.json").read_text())["picked"]
            reading = shapes.judge(Image.open(run / "images" / "edit.png"), world=2)
            read = shapes.caption(reading.shape, reading.color, reading.size, reading.background, reading.direction)
            distance = shapes.centre_distance(reading, original.cx, original.cy)
            ok = read == target and distance <= PLACE_TOLERANCE_PX
            right, total = right + ok, total + 1
            print(f"{'right' if ok else 'MISS '}  {photo}: {target!r} -> {read!r}, {distance:.1f} px "
                  f"(eta {picked['eta']}, seed {picked['seed']}, strength {picked.get('strength', 1.0)})", flush=True)
    print(f"{right} of {total} suggested edits right and in place")
    return 0


if __name__ == "__main__":
    sys.exit(main())
