#!/usr/bin/env python
"""Experiment (issue 22): step C started from the noised input (img2img) instead of pure noise.

    python scripts/img2img_start.py --model shapes-v2 --max_train_steps 100 --output_dir i2i
    python scripts/img2img_start.py --model shapes-v2 --kinds shape color size background direction ...

For each case of the given kinds among the shapes benchmark's tuning cases (world version 2), run the CLI (steps A
and B, the artifact), load the artifact into a stock pipeline and an img2img pipeline built from the same
components, and draw --num_seeds seeds at each img2img strength and eta. Strength 1.0 is the CLI's own step C (pure
noise), so its rows match the benchmark's single-image rows for the same cases and seeds to within rounding (one
image per call here, several there: on 8 tuning cases every verdict was the same). Then the CLI's automatic pick
(imagic_lora.pick, scored with the base model as the CLI scores) chooses among each strength's images (every eta and
seed: 16 candidates at the defaults, as many as the CLI's own pool).

Every image is kept in <output_dir>, with its verdicts and the pick's scores in <output_dir>/candidates.jsonl (for
scripts/replay_pool.py); --artifacts draws again from an earlier run's artifacts instead of running steps A and B.
Prints, per kind and (strength, eta), the share of images edited (every target attribute read), kept in place
(bounding-box centre within 6 px) and both, and how many cases have a right image; per kind and strength, how
often the CLI's pick, the best text score alone and a person (the judge) choose a right image. Writes them to
<output_dir>/tally.json.
Results: docs/shapes_benchmark.md ("Direction edits on the tuning cases").
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from diffusers import (DDIMScheduler, DDPMScheduler, StableDiffusionImg2ImgPipeline,  # noqa: E402
                       StableDiffusionPipeline)

from imagic_lora import cli, pick, shapes  # noqa: E402
from imagic_lora import shapes_benchmark as bench  # noqa: E402
from imagic_lora.artifact import read_edit  # noqa: E402
from imagic_lora.conditioning import unconditional_embeds  # noqa: E402
from imagic_lora.config import ADDED_LATER, BUNDLED_MODEL_V2  # noqa: E402
from imagic_lora.diffusion import encode_image_latents  # noqa: E402
from imagic_lora.images import pil_to_tensor  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(BUNDLED_MODEL_V2),
                   help="A world-version-2 model (default: the bundled imagic_lora/bundled/shapes-sd-v2).")
    p.add_argument("--max_train_steps", type=int, default=200, help="Step B's steps for the CLI run.")
    p.add_argument("--num_cases", type=int, default=40, help="Cases of the full run; a fifth are of each kind.")
    p.add_argument("--seed", type=int, default=1000, help="Seed of the cases (1000: the tuning cases).")
    p.add_argument("--kinds", nargs="+", default=["direction"], help="Kinds of edit to run (default: direction).")
    p.add_argument("--strengths", type=float, nargs="+", default=[1.0, 0.9, 0.8])
    p.add_argument("--etas", type=float, nargs="+", default=[0.8, 1.0, 1.2, 1.4])
    p.add_argument("--num_seeds", type=int, default=4)
    p.add_argument("--cli_args", default="",
                   help="More flags for the CLI's run, e.g. the full schedule of before issue 25: "
                        "'--train_batch_size 4 --emb_train_steps 300 --num_inference_steps 25 --pick_timesteps 16'.")
    p.add_argument("--renderer", choices=("photo", "alt"), default="photo",
                   help="The input photos: shapes.render_photo (the benchmark's), or render_photo_alt (an independent "
                        "renderer, to check on other images what was tuned on the first).")
    p.add_argument("--artifacts", default=None,
                   help="The output_dir of an earlier run of this script: take each case's artifact from there "
                        "instead of running the CLI again (steps A and B are the same at the same flags).")
    p.add_argument("--output_dir", required=True)
    args = p.parse_args(argv)
    bench.check_world(args.model, 2)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = bench.select_kinds(bench.make_cases(args.num_cases, args.seed, 2), args.kinds, 2)
    base = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None, dtype=torch.float32)
    noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)  # as the CLI's training scheduler
    e_null = unconditional_embeds(base, "cpu")  # the pick's default contrast: one per base model
    images_tally: dict[str, list] = {}  # "kind strength eta" -> [case, edited, in place]
    pick_tally: dict[str, list] = {}  # "kind strength" -> [case, right]
    records = []  # one per candidate, with its scores, for replaying rules over pools of several strengths
    for case in cases:
        photo = (shapes.render_photo_alt if args.renderer == "alt" else shapes.render_photo)(case.scene, seed=case.seed)
        reading = shapes.judge(photo, 2)
        photo.save(out / f"input{case.index}.png")
        run = Path(args.artifacts or out) / f"case{case.index}"
        # With --artifacts, steps A and B were run before (read_edit below refuses a missing artifact).
        if not args.artifacts and cli.main([
                "--input_image", str(out / f"input{case.index}.png"), "--target_prompt", case.target_prompt,
                "--output_dir", str(run), "--overwrite", "--pretrained_model_name_or_path", args.model,
                "--max_train_steps", str(args.max_train_steps), "--etas", "0", "1.0", "--num_seeds", "1",
                "--strength", "1.0",  # steps A and B are what this script needs; step C is drawn below
                "--seed", str(case.seed), *shlex.split(args.cli_args)]) != 0:
            raise SystemExit(f"the CLI failed on case {case.index}")
        edit = read_edit(run)
        record = edit.config
        pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None, dtype=torch.float32)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(str(run))
        pipe.fuse_lora()  # as the CLI draws
        img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
        img2img.set_progress_bar_config(disable=True)
        settings = dict(guidance_scale=record["guidance_scale"], num_inference_steps=record["num_inference_steps"])
        latents = encode_image_latents(base.vae, pil_to_tensor(photo))
        for strength in args.strengths:
            pool, drawn = [], []  # the images; their records, scores added once the pick has scored them
            for eta, k in itertools.product(args.etas, range(args.num_seeds)):
                mix = edit.embeds(eta).prompt_embeds
                generator = torch.Generator("cpu").manual_seed(case.seed + k)  # the CLI's seeds for this case
                if strength >= 1.0:
                    image = pipe(prompt_embeds=mix, generator=generator, **settings).images[0]
                else:
                    image = img2img(prompt_embeds=mix, image=photo, strength=strength, generator=generator,
                                    **settings).images[0]
                v = bench.score(image, case, (reading.cx, reading.cy))
                images_tally.setdefault(f"{case.attribute} {strength} {eta}", []).append(
                    [case.index, v["success"], v["place"]])
                pool.append(image)
                drawn.append({"case": case.index, "kind": case.attribute, "strength": strength, "eta": eta,
                              "seed": k, "image": f"case{case.index}_s{strength}_eta{eta}_k{k}.png",
                              "edited": bool(v["success"]), "place": bool(v["place"]), "both": bool(v["both"])})
                image.save(out / drawn[-1]["image"])
            # The contrast the CLI's run scored with (records from before --pick_contrast: e_opt).
            e_ref = e_null if record.get("pick_contrast", "e_opt") == "empty_prompt" else edit.e_opt
            chosen, _ = pick.pick_edit(base, noise_scheduler, photo, latents, pool, edit.e_tgt, e_ref,
                                       seed=case.seed + 2, weight_dtype=torch.float32,
                                       num_timesteps=record["pick_timesteps"],
                                       keep_fraction=record["pick_keep_fraction"],
                                       place_shift=record.get("pick_place_shift", pick.PLACE_SHIFT),
                                       score=record.get("pick_score", ADDED_LATER["pick_score"]))
            best = max(range(len(pool)), key=lambda i: chosen.text_scores[i])
            for r, score, distance in zip(drawn, chosen.text_scores, chosen.distances):
                records.append({**r, "text_score": score, "distance": distance, "reference": chosen.reference})
            verdicts = [r["both"] for r in drawn]
            pick_tally.setdefault(f"{case.attribute} {strength}", []).append(
                [case.index, verdicts[chosen.index], verdicts[best], any(verdicts)])
    (out / "tally.json").write_text(json.dumps({"images": images_tally, "pick": pick_tally}, indent=0) + "\n")
    (out / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print("kind strength eta: edited, in place, both (share of images); cases with a right image")
    for key, rows in images_tally.items():
        n = len(rows)
        right = {c for c, edited, place in rows if edited and place}
        print(f"{key:>22}: {sum(r[1] for r in rows) / n:4.0%} {sum(r[2] for r in rows) / n:4.0%} "
              f"{sum(r[1] and r[2] for r in rows) / n:4.0%}  {len(right)}/{len({r[0] for r in rows})}")
    print("kind strength: cases right by the CLI's pick / by the best text score alone / by a person (the judge)")
    for strength in args.strengths:
        rows = [r for key, v in pick_tally.items() if key.endswith(f" {strength}") for r in v]
        for key, v in list(pick_tally.items()) + [(f"all {strength}", rows)]:
            if key.endswith(f" {strength}"):
                print(f"{key:>22}: " + " / ".join(f"{sum(r[k] for r in v)}" for k in (1, 2, 3)) + f" of {len(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
