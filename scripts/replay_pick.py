#!/usr/bin/env python
"""Redo the automatic pick offline, under other rules, on a shapes benchmark run's kept images.

    python scripts/evaluate_shapes.py --seed 1000 --num_cases 40 --methods imagic_lora \\
        --keep_images runs/tune --output_dir runs/tune
    python scripts/replay_pick.py runs/tune/imagic_lora
    python scripts/replay_pick.py runs/tune/imagic_lora --model <its base model> --contrast e_opt   # scored again
    python scripts/replay_pick.py runs/tune/imagic_lora --model <its base model> --score difference  # as before

Every case folder (case<i>/: images/ and imagic_config.json, written by --keep_images) holds the run's
candidates, their text scores and the input. Each rule below chooses one candidate per case from those
numbers and the images; the judge (imagic_lora.shapes.judge) says whether the choice is edited and in
place. Prints, per rule, the share of cases edited and in place, by kind of edit, and what a person
choosing with the judge would reach.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from imagic_lora import pick, shapes  # noqa: E402
from imagic_lora.generate import image_name  # noqa: E402
from imagic_lora.images import pil_to_tensor  # noqa: E402
from replay_pool import choose_by_structure  # noqa: E402  (beside this script)

PLACE_PX = 6.0


def image_path(folder: Path, eta: float, seed: int, strength: float) -> Path:
    """A kept image's path (runs made before images were named by strength named every image as drawn from
    pure noise)."""
    path = folder / "images" / image_name(eta, seed, strength)
    return path if path.is_file() else folder / "images" / image_name(eta, seed)


def load_case(folder: Path, etas: list[float] | None = None, num_seeds: int | None = None) -> dict | None:
    """A kept case: its input, candidates and their text scores (only ``etas`` and the first ``num_seeds``
    seeds when given)."""
    config = json.loads((folder / "imagic_config.json").read_text())
    picked = config.get("picked")
    if not picked:
        return None
    scene_input = Image.open(folder / "images" / "input.png").convert("RGB")
    first = min(c["seed"] for c in picked["candidates"])
    kept = [c for c in picked["candidates"] if (etas is None or any(abs(c["eta"] - e) < 1e-6 for e in etas))
            and (num_seeds is None or c["seed"] < first + num_seeds)]
    candidates = [(c["eta"], c["seed"], c.get("strength", 1.0)) for c in kept]
    images = [Image.open(image_path(folder, *c)).convert("RGB") for c in candidates]
    return {"name": folder.name, "prompt": config["target_prompt"], "input": scene_input, "images": images,
            "candidates": candidates, "scores": [c["text_score"] if c["text_score"] is not None else -math.inf
                                                 for c in kept],
            "reference": picked["input_text_score"]}


def rescore(case: dict, folder: Path, pipe, noise_scheduler, e_null, num_timesteps: int | None = None,
            score: str = "ratio") -> None:
    """Score the case's candidates and input again with the base model ``pipe``, contrasting e_tgt with ``e_null``
    (the unconditional embedding) or, when None, the case's e_opt, at the run's noises (its seed + 2) and number of
    noise levels, as the CLI's pick does (or at ``num_timesteps``): replaces the case's text scores and input score.
    Needs the kept embeddings (imagic_embeds.safetensors, kept since --pick_contrast existed)."""
    from imagic_lora.artifact import read_edit
    from imagic_lora.diffusion import encode_image_latents

    edit = read_edit(folder)
    e_ref = e_null if e_null is not None else edit.e_opt
    latents = encode_image_latents(pipe.vae, pil_to_tensor(case["input"]))
    chosen, _ = pick.pick_edit(pipe, noise_scheduler, case["input"], latents, case["images"],
                               edit.e_tgt, e_ref, seed=edit.config["seed"] + 2, weight_dtype=torch.float32,
                               num_timesteps=num_timesteps or edit.config["pick_timesteps"], score=score)
    case["scores"], case["reference"] = chosen.text_scores, chosen.reference


def target_of(prompt: str) -> dict:
    words = prompt.split()
    size, color, shape = words[1], words[2], words[3]
    direction = words[5] if shape == "triangle" and words[4] == "pointing" else None  # world version 2 only
    return {"shape": shape, "color": color, "size": size, "background": words[-2], "direction": direction}


def kind_of(input_reading, target: dict, world: int = 1) -> str:
    """The kind of edit: the first attribute (in the benchmark's order) the target changes. A shape edit that
    makes a triangle also names a direction, and counts as a shape edit."""
    changed = [a for a in shapes.attribute_names(world) if getattr(input_reading, a) != target[a]]
    return changed[0] if changed else "none"


def _others(case: dict, i: int, members: list[int]) -> list[int]:
    """The members drawn with other seeds than candidate i's (the same seed at another eta shares i's noise, so
    it agrees with i by construction)."""
    seed = case["candidates"][i][1]
    return [j for j in members if case["candidates"][j][1] != seed]


def consensus(case: dict, distance: list[list[float]], members: list[int], input_distance: list[float] | None,
              input_weight: float) -> int:
    """The member that agrees most with the other edited candidates (the medoid: least mean distance to the
    members of other seeds), the input counting ``input_weight`` members' worth when given."""
    def cost(i: int) -> float:
        others = _others(case, i, members)
        total = sum(distance[i][j] for j in others)
        weight = len(others)
        if input_distance is not None and input_weight:
            total += input_weight * input_distance[i]
            weight += input_weight
        return total / weight if weight else 0.0
    return min(members, key=cost)


def rules(case: dict, blur_place: float) -> dict[str, int]:
    """Each rule's choice (a candidate index)."""
    pixels = torch.cat([pil_to_tensor(i) for i in case["images"]])
    reference = pil_to_tensor(case["input"])
    structure = pick.structure_distances(pixels, reference).tolist()
    layout = pick.structure_distances(pixels, reference, blur=blur_place).tolist()
    scores, ref = case["scores"], case["reference"]
    shifts = pick._extent_shifts(pixels, reference)
    out = {"current": pick.choose(scores, structure, reference=ref, shifts=shifts).index,
           "before, by structure": choose_by_structure(scores, structure, ref)}
    for margin in (1, 2, 3):  # a band the model draws along the border stretches the extent over the frame
        inside = pick._extent_shifts(pixels, reference, margin)
        out[f"current, extent {margin} px inside the border"] = pick.choose(scores, structure, reference=ref,
                                                                             shifts=inside).index
    n = len(scores)
    for tau in (0.1, 0.15, 0.2, 0.25, 0.3):
        inside = [i for i in range(n) if layout[i] <= tau]
        if inside and max(scores[i] for i in inside) > ref:
            choice = max(inside, key=lambda i: scores[i])
        else:
            choice = max(range(n), key=lambda i: scores[i])
        out[f"max score within layout {tau}"] = choice
    for fraction in (0.7, 0.8, 0.9):
        for tau in (0.15, 0.2, 0.25):
            inside = [i for i in range(n) if layout[i] <= tau]
            pool = inside if inside and max(scores[i] for i in inside) > ref else list(range(n))
            best = max(scores[i] for i in pool)
            bar = ref + fraction * (best - ref)
            kept = [i for i in pool if scores[i] >= bar] or [max(pool, key=lambda i: scores[i])]
            out[f"nearest layout among {fraction} of best within {tau}"] = min(kept, key=lambda i: layout[i])
    # A soft trade-off: the text score as a share of the way from the input's to the best, less a
    # penalty per unit of layout distance.
    best = max(scores)
    if best > ref:
        share = [(s - ref) / (best - ref) for s in scores]
        for lam in (0.5, 1.0, 2.0, 4.0):
            out[f"max share - {lam} x layout"] = max(range(n), key=lambda i: share[i] - lam * layout[i])
            out[f"max share - {lam} x structure"] = max(range(n), key=lambda i: share[i] - lam * structure[i])
    else:
        for lam in (0.5, 1.0, 2.0, 4.0):
            out[f"max share - {lam} x layout"] = out[f"max share - {lam} x structure"] = scores.index(best)
    out["max score"] = max(range(n), key=lambda i: scores[i])
    # Consensus: of the edited candidates, the one the others agree with most. An edit that keeps the photo
    # keeps it the same way in every seed; a moved or rotated-elsewhere object moves differently per seed.
    for blur in (0.1, 0.2):
        distance = [pick.structure_distances(pixels, pixels[i:i + 1], blur=blur).tolist() for i in range(n)]
        to_input = pick.structure_distances(pixels, reference, blur=blur).tolist()
        for fraction in (0.5, 0.7, 0.9):
            edited = pick._edited(scores, [True] * n, ref, fraction) if best > ref else [True] * n
            members = [i for i in range(n) if edited[i]]
            for w in (0.0, 1.0, 3.0):
                out[f"consensus blur {blur} among {fraction} input x{w:g}"] = consensus(
                    case, distance, members, to_input, w)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="Folders of case<i>/ folders (a run's --keep_images/<method>).")
    parser.add_argument("--blur_place", type=float, default=0.2, help="Blur of the layout distance's edge maps.")
    parser.add_argument("--etas", type=float, nargs="+", default=None, help="Only the candidates at these etas.")
    parser.add_argument("--num_seeds", type=int, default=None, help="Only the candidates of the first seeds.")
    parser.add_argument("--world", type=int, default=None, choices=shapes.WORLDS,
                        help="The world version the run's cases are of (its judge; version 2 judges a direction). "
                             "Default: 2 for a folder whose prompts name a direction, else 1.")
    parser.add_argument("--model", default=None,
                        help="Score the images again with this base model (the run's) instead of reading the run's "
                             "scores; the cases must hold their embeddings.")
    parser.add_argument("--contrast", default="empty_prompt", choices=("empty_prompt", "e_opt"),
                        help="With --model: what the text score contrasts e_tgt with (the CLI's --pick_contrast).")
    parser.add_argument("--score", default="ratio", choices=pick.SCORES,
                        help="With --model: how the text score compares the two errors (the CLI's --pick_score).")
    parser.add_argument("--pick_timesteps", type=int, default=None,
                        help="With --model: score at this many noise levels instead of the run's.")
    args = parser.parse_args(argv)
    pipe = None
    if args.model:  # loaded, and the empty prompt encoded, once for every case
        from imagic_lora.conditioning import unconditional_embeds
        from imagic_lora.models import load_pipeline, training_noise_scheduler
        pipe = load_pipeline(args.model)
        noise_scheduler = training_noise_scheduler(pipe)
        e_null = unconditional_embeds(pipe, "cpu") if args.contrast == "empty_prompt" else None
    tally: dict[str, dict[str, list[bool]]] = {}
    for folder in args.folders:
        case_dirs = sorted(Path(folder).glob("case*"), key=lambda p: int(p.name[4:]))
        world = args.world or (2 if any(" pointing " in json.loads((d / "imagic_config.json").read_text())
                                        .get("target_prompt", "") for d in case_dirs) else 1)
        for case_dir in case_dirs:
            case = load_case(case_dir, args.etas, args.num_seeds)
            if case is None:
                continue
            if pipe is not None:
                rescore(case, case_dir, pipe, noise_scheduler, e_null, args.pick_timesteps, args.score)
            input_reading = shapes.judge(case["input"], world)
            target = target_of(case["prompt"])
            kind = kind_of(input_reading, target, world)
            good = []
            for image in case["images"]:
                reading = shapes.judge(image, world)
                good.append(shapes.matches(reading, target)
                            and shapes.centre_distance(reading, input_reading.cx, input_reading.cy) <= PLACE_PX)
            choices = rules(case, args.blur_place)
            choices["a person, with the judge"] = good.index(True) if any(good) else 0
            for rule, index in choices.items():
                tally.setdefault(rule, {}).setdefault(kind, []).append(good[index])
                tally[rule].setdefault("all", []).append(good[index])
    kinds = sorted({k for by_kind in tally.values() for k in by_kind if k != "all"})
    print(f"{'rule':<52} {'all':>6} " + " ".join(f"{k:>10}" for k in kinds))
    for rule, by_kind in tally.items():
        rate = lambda xs: f"{100 * sum(xs) / len(xs):.0f}%" if xs else "-"  # noqa: E731
        print(f"{rule:<52} {rate(by_kind['all']):>6} " + " ".join(f"{rate(by_kind.get(k, [])):>10}" for k in kinds))
    print(f"({len(tally['current']['all'])} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
