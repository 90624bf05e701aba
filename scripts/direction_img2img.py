#!/usr/bin/env python
"""Experiment (issue 22): direction edits with step C started from the noised input instead of pure noise.

    python scripts/direction_img2img.py --model shapes-v2 --max_train_steps 100 --output_dir i2i

For each direction case of the shapes benchmark's tuning cases (world version 2), run the CLI (steps A and B,
the artifact), load the artifact into a stock pipeline and an img2img pipeline built from the same components,
and draw 4 seeds at each img2img strength and eta. Strength 1.0 is the CLI's own step C (pure noise), so its
rows match the benchmark's single-image rows for the same cases and seeds to within rounding (one image per
call here, several there: on the 8 tuning cases every verdict was the same). Prints, per (strength, eta), the
share of images turned to the target direction (every target attribute read), kept in place (bounding-box
centre within 6 px) and both, and how many cases have a right image; writes them to <output_dir>/tally.json.
Results: docs/shapes_benchmark.md ("Direction edits on the tuning cases").
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from imagic_lora import cli, shapes  # noqa: E402
from imagic_lora import shapes_benchmark as bench  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="A world-version-2 model (scripts/train_shapes_model.py --world 2).")
    p.add_argument("--max_train_steps", type=int, default=200, help="Step B's steps for the CLI run.")
    p.add_argument("--num_cases", type=int, default=40, help="Cases of the full run; a fifth are direction cases.")
    p.add_argument("--seed", type=int, default=1000, help="Seed of the cases (1000: the tuning cases).")
    p.add_argument("--strengths", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.7, 0.6])
    p.add_argument("--etas", type=float, nargs="+", default=[0.8, 1.0, 1.2, 1.4])
    p.add_argument("--num_seeds", type=int, default=4)
    p.add_argument("--output_dir", required=True)
    args = p.parse_args(argv)
    bench.check_world(args.model, 2)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = bench.select_kinds(bench.make_cases(args.num_cases, args.seed, 2), ["direction"], 2)
    tally: dict[str, list] = {}
    for case in cases:
        photo = shapes.render_photo(case.scene, seed=case.seed)
        reading = shapes.judge(photo, 2)
        photo.save(out / f"input{case.index}.png")
        run = out / f"case{case.index}"
        if cli.main(["--input_image", str(out / f"input{case.index}.png"), "--target_prompt", case.target_prompt,
                     "--output_dir", str(run), "--overwrite", "--pretrained_model_name_or_path", args.model,
                     "--max_train_steps", str(args.max_train_steps), "--etas", "0", "1.0", "--num_seeds", "1",
                     "--seed", str(case.seed)]) != 0:
            raise SystemExit(f"the CLI failed on case {case.index}")
        record = json.loads((run / "imagic_config.json").read_text())
        pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None, dtype=torch.float32)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(str(run))
        pipe.fuse_lora()  # as the CLI draws
        img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
        img2img.set_progress_bar_config(disable=True)
        embeds = load_file(str(run / "imagic_embeds.safetensors"))
        settings = dict(guidance_scale=record["guidance_scale"], num_inference_steps=record["num_inference_steps"])
        for strength, eta in itertools.product(args.strengths, args.etas):
            mix = eta * embeds["target_prompt_embeds"] + (1 - eta) * embeds["optimized_prompt_embeds"]
            for k in range(args.num_seeds):
                generator = torch.Generator("cpu").manual_seed(case.seed + k)  # the CLI's seeds for this case
                if strength >= 1.0:
                    image = pipe(prompt_embeds=mix, generator=generator, **settings).images[0]
                else:
                    image = img2img(prompt_embeds=mix, image=photo, strength=strength, generator=generator,
                                    **settings).images[0]
                got = shapes.judge(image, 2)
                turned = shapes.matches(got, case.target.attributes())
                in_place = shapes.centre_distance(got, reading.cx, reading.cy) <= bench.PLACE_TOLERANCE_PX
                tally.setdefault(f"{strength} {eta}", []).append([case.index, bool(turned), bool(in_place)])
    (out / "tally.json").write_text(json.dumps(tally, indent=0) + "\n")
    print("strength eta: turned, in place, both (share of images); cases with a right image")
    for key, rows in tally.items():
        n = len(rows)
        right = {c for c, turned, place in rows if turned and place}
        print(f"{key:>9}: {sum(r[1] for r in rows) / n:4.0%} {sum(r[2] for r in rows) / n:4.0%} "
              f"{sum(r[1] and r[2] for r in rows) / n:4.0%}  {len(right)}/{len(cases)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
