#!/usr/bin/env python
"""Replay the automatic pick over pools of images drawn at several img2img strengths (issue 22).

    python scripts/img2img_start.py --model shapes-v2 --max_train_steps 100 --kinds shape color size \\
        background direction --strengths 1.0 0.9 0.8 0.7 --etas 0.8 1.0 1.2 1.4 --output_dir pool
    python scripts/replay_pool.py pool
    python scripts/replay_pool.py pool --model shapes-v2      # also the null-text score (below)

Reads <run>/candidates.jsonl (one line per image: case, kind, strength, eta, seed, the judge's verdicts, the
pick's text score and structure distance, the input's score). For each pool (the images of one strength, or of
several together) prints how many cases each rule gets edited and in place, by kind: a person choosing with
the judge; the CLI's rule (imagic_lora.pick.choose: step 1 among the candidates whose extent's centre,
imagic_lora.pick.extent_centres, lies within 6 px of the input's, the best score when one beats the input's);
the rule before it (step 1 by structure distance, choose_by_structure); the best text score alone; a "ladder"
that takes the lowest strength whose best score is at least f of the way from the input's score to the best
of the pool (the least change that edits), then the rule before within it; and the rule before at other
constants (step 1's place distance and keep fraction). First, how well the structure distance and the extent's
shift tell the images the judge reads in place from the moved ones.

With --model (and the artifacts of the run: --artifacts, default <run>), every image is scored again with
e_opt replaced by the empty prompt's embedding, s0(y) = err(y, e_null) - err(y, e_tgt), at the pick's
timesteps and noises: a text score that does not reward a moved object (the empty prompt, unlike e_opt,
expects the object nowhere in particular). Prints how well each score tells edited images from unedited
ones, and right ones (edited and in place) from the rest, as the mean within-case AUC, and the rules above
with s0 in place of s. Results: docs/shapes_benchmark.md ("A pool of several strengths").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from imagic_lora import pick  # noqa: E402

KINDS = ["shape", "color", "size", "background", "direction"]
POOLS = [[1.0], [0.9], [0.8], [0.7], [1.0, 0.8], [0.9, 0.8], [1.0, 0.9, 0.8, 0.7]]


def load_images(run: Path, cases: dict[int, list[dict]]) -> dict[int, list[Image.Image]]:
    """Each case's candidates, in its records' order, then its input last."""
    return {index: [Image.open(run / r["image"]).convert("RGB") for r in rows]
            + [Image.open(run / f"input{index}.png").convert("RGB")] for index, rows in cases.items()}


def null_scores(artifacts: Path, model: str, cases: dict[int, list[dict]], images: dict[int, list]) -> None:
    """Add "null_score" to every record and "null_reference" (the input's) to each case's first."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from imagic_lora.artifact import read_edit
    from imagic_lora.conditioning import encode_prompt
    from imagic_lora.diffusion import encode_image_latents
    from imagic_lora.images import pil_to_tensor

    base = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, dtype=torch.float32)
    noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
    e_null = encode_prompt(base, "", "cpu")
    for index, rows in sorted(cases.items()):
        edit = read_edit(artifacts / f"case{index}")
        with torch.no_grad():
            latents = torch.cat([encode_image_latents(base.vae, pil_to_tensor(i)) for i in images[index]])
        # The pick's timesteps and noises (seed + 2, as img2img_start.py scores), e_opt's place taken by e_null.
        s0 = pick.text_scores(base.unet, noise_scheduler, latents, edit.e_tgt, e_null, score="difference",
                              num_timesteps=edit.config["pick_timesteps"], weight_dtype=torch.float32,
                              generator=torch.Generator().manual_seed(edit.config["seed"] + 2)).tolist()
        for r, s in zip(rows, s0):
            r["null_score"] = s
        rows[0]["null_reference"] = s0[-1]


def extent_shifts(cases: dict[int, list[dict]], images: dict[int, list]) -> None:
    """Add "extent_shift" to every record: how far its extent's centre lies from the input's, in frames."""
    for index, rows in cases.items():
        for r, shift in zip(rows, pick.extent_shifts(images[index][:-1], images[index][-1])):
            r["extent_shift"] = shift


def choose_by_structure(scores: list[float], distances: list[float], reference: float,
                        place_distance: float = 0.25, place_keep_fraction: float = 0.9) -> int:
    """The CLI's rule before step 1 went by the extent (its figures in docs/pick.md): step 1 among the candidates
    within ``place_distance`` in structure, when one beats ``reference``: those at least ``place_keep_fraction``
    of the way from it to their best, the nearest; else pick.choose's step 2."""
    inside = [i for i, d in enumerate(distances) if d <= place_distance] if place_distance > 0 else []
    if inside and max(scores[i] for i in inside) > reference:
        best = max(scores[i] for i in inside)
        bar = min(reference + place_keep_fraction * (best - reference), best)
        return min((i for i in inside if scores[i] >= bar), key=lambda i: distances[i])
    return pick.choose(scores, distances, reference=reference).index


def within_case_auc(cases: dict[int, list[dict]], key: str, label: str, sign: float = 1.0) -> tuple[float, int]:
    """Mean over cases (with both classes) of P(sign x key of a positive > that of a negative); nan if none has
    both (sign -1: a smaller value marks a positive, as a distance does)."""
    aucs = []
    for rows in cases.values():
        pos = [sign * r[key] for r in rows if r[label]]
        neg = [sign * r[key] for r in rows if not r[label]]
        if pos and neg:
            aucs.append(sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg)))
    return (sum(aucs) / len(aucs) if aucs else float("nan")), len(aucs)


def cli_rule(score: str, reference: str):
    """pick.choose, the CLI's rule, on the records' scores, structure distances and extent shifts."""
    def rule(pool, first):
        return pool[pick.choose([r[score] for r in pool], [r["distance"] for r in pool], reference=first[reference],
                                shifts=[r["extent_shift"] for r in pool]).index]
    return rule


def structure_rule(score: str, reference: str, place_distance: float = 0.25, place_keep_fraction: float = 0.9):
    def rule(pool, first):
        return pool[choose_by_structure([r[score] for r in pool], [r["distance"] for r in pool], first[reference],
                                        place_distance, place_keep_fraction)]
    return rule


def ladder(fraction: float, score: str, reference: str):
    inner = structure_rule(score, reference)

    def rule(pool, first):
        top = max(r[score] for r in pool)
        for strength in sorted({r["strength"] for r in pool}):
            at = [r for r in pool if r["strength"] == strength]
            if max(r[score] for r in at) >= first[reference] + fraction * (top - first[reference]):
                return inner(at, first)
        return inner(pool, first)
    return rule


def tally(cases, rule, strengths) -> str:
    right = defaultdict(int)
    total = n = 0
    for rows in cases.values():
        pool = [r for r in rows if r["strength"] in strengths]
        if not pool:
            continue
        ok = rule(pool, rows[0])["both"]
        right[rows[0]["kind"]] += ok
        total += ok
        n += 1
    return f"{total:2d}/{n}  " + " ".join(f"{right[k]}" for k in KINDS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="An output_dir of scripts/img2img_start.py (with candidates.jsonl).")
    p.add_argument("--model", default=None, help="Score with the empty prompt too (the run's base model).")
    p.add_argument("--artifacts", default=None, help="Where the cases' artifacts are (default: the run).")
    args = p.parse_args(argv)
    run = Path(args.run)
    cases: dict[int, list[dict]] = defaultdict(list)
    for line in (run / "candidates.jsonl").read_text().splitlines():
        r = json.loads(line)
        cases[r["case"]].append(r)
    strengths = sorted({r["strength"] for rows in cases.values() for r in rows}, reverse=True)
    pools = [s for s in POOLS if set(s) <= set(strengths)]
    scores = [("text_score", "reference")]
    images = load_images(run, cases)
    if args.model:
        null_scores(Path(args.artifacts or run), args.model, cases, images)
        scores.append(("null_score", "null_reference"))
    extent_shifts(cases, images)
    records = [r for rows in cases.values() for r in rows]
    for name, key, bar in (("structure distance", "distance", 0.25),
                           ("extent shift", "extent_shift", pick.PLACE_SHIFT)):
        auc, n = within_case_auc(cases, key, "place", sign=-1.0)
        agree = sum((r[key] <= bar) == r["place"] for r in records) / len(records)
        print(f"{name} tells images in place from moved ones: mean within-case AUC {auc:.2f} ({n} cases); "
              f"at {bar:.3f} it agrees with the judge on {agree:.0%} of images")
    for score, _ in scores:
        for label in ("edited", "both"):
            auc, n = within_case_auc(cases, score, label)
            print(f"{score} tells {label:>6} images from the rest: mean within-case AUC {auc:.2f} ({n} cases)")
    print("rule, pool of strengths: cases right (all; " + " ".join(KINDS) + ")")
    for strengths_ in pools:
        print(f"{'a person (the judge)':>42} {str(strengths_):>22}: "
              + tally(cases, lambda pool, first: max(pool, key=lambda r: r["both"]), strengths_))
    for score, reference in scores:
        for strengths_ in pools:
            rows = [("the CLI's rule", cli_rule(score, reference)),
                    ("the rule before, by structure", structure_rule(score, reference)),
                    ("the best score alone", lambda pool, first, s=score: max(pool, key=lambda r: r[s]))]
            if len(strengths_) > 1:
                rows += [(f"ladder {f}", ladder(f, score, reference)) for f in (0.3, 0.5, 0.7, 0.9)]
            for name, rule in rows:
                print(f"{name + ' (' + score + ')':>42} {str(strengths_):>22}: " + tally(cases, rule, strengths_))
    print("the rule before at other constants (text_score): place distance / place keep fraction")
    for strengths_ in pools:
        for distance in (0.0, 0.15, 0.25, 0.35, 0.5):
            for keep in (0.7, 0.9, 1.0):
                print(f"{f'{distance} / {keep}':>42} {str(strengths_):>22}: "
                      + tally(cases, structure_rule("text_score", "reference", distance, keep), strengths_))
    return 0


if __name__ == "__main__":
    sys.exit(main())
