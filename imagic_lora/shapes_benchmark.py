"""Edit-quality benchmark on the shapes world, judged analytically (run by scripts/evaluate_shapes.py).

    python scripts/evaluate_shapes.py --num_cases 60 --output_dir docs

Each case is a seeded "photo" of a scene (imagic_lora.shapes.render_photo: a lighting gradient,
blur and noise, unlike the training renders) and a target caption that changes one attribute
(shape, colour, size or background; the same number of each; with ``--world 2`` also a triangle's
direction, on a model trained on that version of the world). Methods:

- imagic_lora: scripts/imagic_lora.py with its defaults (LoRA step B), run through the CLI's own
  main() per case, exactly as a user runs it;
- imagic_full: the same with --full_finetune (the paper's step B: every UNet weight);
- imagic_no_b: the same with --max_train_steps 0 (the paper's ablation: no fine-tuning);
- sdedit: StableDiffusionImg2ImgPipeline on the target caption at several strengths;
- text2img: StableDiffusionPipeline on the target caption (ignores the input).

For each method and eta (or strength), over cases x seeds: edit success (the judge reads every
target attribute), place kept (bounding-box centre within 6 px of the input's), both, and the
wall time per case. Writes <output_dir>/shapes_benchmark.{md,json,png} and shapes_examples.png.
``--variant NAME='--flag value ...'`` adds Imagic variants (used to choose the defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import cli, shapes
from .config import BUNDLED_MODEL, BUNDLED_MODEL_V2, as_list
from .generate import image_name

ROOT = Path(__file__).resolve().parents[1]  # model paths are reported relative to the project

PLACE_TOLERANCE_PX = 6.0
AUTO = "auto"  # the setting name of the CLI's automatically picked edit (imagic_lora.pick)
# The references are pinned to the schedule they were measured with (step A 300 x 1e-2 at 4 draws a step, 25
# DDIM steps, the pick at 16 noise levels; full fine-tuning 200 steps at 3e-5, its best of 1e-5 / 3e-5),
# whatever the CLI's defaults become, and draw one image per pipeline call as they did when measured.
_FULL_SCHEDULE = ["--emb_train_steps", "300", "--emb_learning_rate", "1e-2", "--train_batch_size", "4",
                  "--num_inference_steps", "25", "--pick_timesteps", "16", "--sample_batch_size", "1",
                  "--strength", "1.0"]
IMAGIC_METHODS = {
    "imagic_lora": [],
    "imagic_full": ["--full_finetune", "--learning_rate", "3e-5", "--no-use_8bit_adam", "--max_train_steps", "200",
                    *_FULL_SCHEDULE],
    "imagic_no_b": ["--max_train_steps", "0", *_FULL_SCHEDULE],
}
#: The baselines' (SDEdit's, text-to-image's) DDIM steps, as measured.
BASELINE_STEPS = 25


@dataclass
class Case:
    index: int
    attribute: str
    scene: shapes.Scene
    target: shapes.Scene
    seed: int
    world: int = 1  # the judge reads the case's images as scenes of this version

    @property
    def target_prompt(self) -> str:
        return self.target.caption


def make_cases(n: int, seed: int, world: int = 1) -> list[Case]:
    """n cases, the kinds of edit in turn (:func:`shapes.attribute_names`); each scene leaves room for a large object at
    its centre so that a size edit never has to move it. Version 1's cases are what they always were for a
    seed. In version 2 a direction case's scene is a triangle, and a shape edit that makes a triangle draws
    the way it points."""
    rng = random.Random(seed)
    kinds = shapes.attribute_names(world)
    cases = []
    for i in range(n):
        attribute = kinds[i % len(kinds)]
        scene = shapes.random_scene(rng, world=world, **({"shape": "triangle"} if attribute == "direction" else {}))
        if attribute == "size":
            margin = shapes.SIZES["large"][1] / 2 + 1
            scene = dataclasses.replace(scene, cx=rng.uniform(margin, 64 - margin), cy=rng.uniform(margin, 64 - margin))
        choices = {"shape": shapes.SHAPES, "color": list(shapes.COLORS), "size": list(shapes.SIZES),
                   "background": list(shapes.BACKGROUNDS), "direction": shapes.DIRECTIONS}[attribute]
        value = rng.choice([v for v in choices if v != getattr(scene, attribute)])
        target = scene.with_attribute(attribute, value, rng)
        if world == 2 and target.shape == "triangle" and target.direction is None:
            target = target.with_attribute("direction", rng.choice(shapes.DIRECTIONS))
        cases.append(Case(i, attribute, scene, target, seed * 1000 + i, world))
    return cases


def select_kinds(cases: list[Case], kinds: list[str], world: int) -> list[Case]:
    """The cases of the given kinds of edit, as they are in the full run (same index, scene and seed); a kind
    the world does not have is refused, naming --kinds."""
    unknown = sorted(set(kinds) - set(shapes.attribute_names(world)))
    if unknown:
        raise SystemExit(f"--kinds: world version {world} has no edit of kind {', '.join(unknown)} (its kinds: "
                         f"{', '.join(shapes.attribute_names(world))})")
    return [case for case in cases if case.attribute in kinds]


def score(image: Image.Image, case: Case, input_centre: tuple[float, float]) -> dict:
    reading = shapes.judge(image, case.world)
    success = shapes.matches(reading, case.target.attributes())
    place = shapes.centre_distance(reading, *input_centre) <= PLACE_TOLERANCE_PX
    read = reading.attributes() if case.world == 1 else {**reading.attributes(), "direction": reading.direction}
    return {"success": bool(success), "place": bool(place), "both": bool(success and place), "read": read}


def run_imagic(cli, case: Case, input_path: Path, flags: list[str], etas: list[float], num_seeds: int,
               workdir: Path, input_centre, keep: Path | None = None,
               seed_offset: int = 0) -> tuple[list[dict], dict]:
    out = workdir / f"case{case.index}"
    argv = ["--input_image", str(input_path), "--target_prompt", case.target_prompt, "--output_dir", str(out),
            "--etas", *map(str, etas), "--num_seeds", str(num_seeds), "--seed", str(case.seed + seed_offset),
            "--overwrite", *flags]
    if cli.main(argv) != 0:
        raise RuntimeError(f"imagic_lora failed on case {case.index}: {argv}")
    config = json.loads((out / "imagic_config.json").read_text())
    records = []
    strengths = as_list("strength", config.get("strength", 1.0))
    for strength in strengths:
        for eta in etas:
            for seed in config["seeds"]:
                path = out / "images" / image_name(eta, seed, strength)
                if path.is_file():  # eta 0 is drawn for --num_reconstruction_seeds seeds only
                    image = Image.open(path).convert("RGB")
                    # The setting is the eta; at a second strength and after, "eta@strength".
                    setting = eta if strength == strengths[0] else f"{eta:g}@{strength:g}"
                    records.append({"setting": setting, "seed": seed, **score(image, case, input_centre)})
    if config.get("picked"):  # the CLI's automatic pick among the images with eta > 0: one per case
        picked = config["picked"]
        image = Image.open(out / picked["image"]).convert("RGB")
        # The pick's numbers for every candidate too, so that a pick among a subset can be redone offline.
        records.append({"setting": AUTO, "seed": picked["seed"], "picked_eta": picked["eta"],
                        "picked_strength": picked.get("strength", strengths[0]),
                        **score(image, case, input_centre),
                        "pick": {k: picked[k] for k in ("input_text_score", "chosen_in_place", "candidates")
                                 if k in picked}})
    timing = {k: config["wall_time_s"].get(k, 0.0) for k in ("A", "B", "C", "pick")}
    if keep is not None:  # the images and the record, for redoing a pick offline
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copytree(out / "images", keep / "images")
        shutil.copyfile(out / "imagic_config.json", keep / "imagic_config.json")
        if (out / "imagic_embeds.safetensors").is_file():  # e_opt and e_tgt: a replay can score the images again
            shutil.copyfile(out / "imagic_embeds.safetensors", keep / "imagic_embeds.safetensors")
    shutil.rmtree(out, ignore_errors=True)
    return records, timing


def run_case(case: Case, methods: dict[str, list[str]], baselines: list[str], args, workdir: Path) -> dict:
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    render = shapes.render_photo_alt if getattr(args, "renderer", "photo") == "alt" else shapes.render_photo
    photo = render(case.scene, seed=case.seed)
    input_path = workdir / f"input{case.index}.png"
    photo.save(input_path)
    input_reading = shapes.judge(photo, case.world)
    input_centre = (input_reading.cx, input_reading.cy)
    result = {"case": case.index, "attribute": case.attribute, "input": case.scene.caption,
              "target": case.target_prompt, "input_read_ok": shapes.matches(input_reading, case.scene.attributes()),
              "methods": {}}
    for name, flags in methods.items():
        start = time.perf_counter()
        keep = Path(args.keep_images) / name / f"case{case.index}" if args.keep_images else None
        records, timing = run_imagic(cli, case, input_path, ["--pretrained_model_name_or_path", args.model, *flags],
                                     args.etas, args.num_seeds, workdir / name, input_centre, keep,
                                     seed_offset=getattr(args, "edit_seed_offset", 0))
        result["methods"][name] = {"records": records, "phase_s": timing,
                                   "wall_s": round(time.perf_counter() - start, 2)}
    if baselines:
        pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None, dtype=torch.float32)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        seeds = [case.seed + k for k in range(args.num_seeds)]
        if "sdedit" in baselines:
            img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
            records, start = [], time.perf_counter()
            for strength in args.strengths:
                for seed in seeds:
                    image = img2img(case.target_prompt, image=photo, strength=strength,
                                    guidance_scale=args.guidance_scale, num_inference_steps=args.num_inference_steps,
                                    generator=torch.Generator("cpu").manual_seed(seed)).images[0]
                    records.append({"setting": strength, "seed": seed, **score(image, case, input_centre)})
            result["methods"]["sdedit"] = {"records": records, "wall_s": round(time.perf_counter() - start, 2)}
        if "text2img" in baselines:
            records, start = [], time.perf_counter()
            for seed in seeds:
                image = pipe(case.target_prompt, guidance_scale=args.guidance_scale,
                             num_inference_steps=args.num_inference_steps,
                             generator=torch.Generator("cpu").manual_seed(seed)).images[0]
                records.append({"setting": "-", "seed": seed, **score(image, case, input_centre)})
            result["methods"]["text2img"] = {"records": records, "wall_s": round(time.perf_counter() - start, 2)}
    return result


def portable_command(argv: list[str]) -> str:
    """The command as anyone with a clone can run it: paths inside the clone relative to its root, paths
    elsewhere (a run folder of this machine's) as RUN/<name>."""
    words = []
    for word in argv:
        path = Path(word)
        if path.is_absolute():
            try:
                word = str(path.resolve().relative_to(ROOT))
            except ValueError:
                word = f"RUN/{path.name}"
        words.append(shlex.quote(word))
    return " ".join(["python", "scripts/evaluate_shapes.py", *words])


def merge_reused(results: list[dict], path: Path, args) -> dict:
    """Add to ``results`` the methods an earlier run measured and this one did not; refuse a run
    made on other cases or settings. Returns what was taken, for the report."""
    earlier = json.loads(path.read_text())
    meta = earlier["meta"]
    for key, value in (("num_seeds", args.num_seeds), ("etas", args.etas), ("strengths", args.strengths),
                       ("edit_seed_offset", getattr(args, "edit_seed_offset", 0)),
                       ("world", getattr(args, "world", 1))):
        then = meta.get(key, {"edit_seed_offset": 0, "world": 1}.get(key))  # runs from before these existed
        if then != value:
            raise SystemExit(f"--reuse: {path} was run with {key} {then}, this run with {value}")
    old = {r["case"]: r for r in earlier["cases"]}
    taken = set()
    for result in results:
        before = old.get(result["case"])
        if before is None or (before["input"], before["target"]) != (result["input"], result["target"]):
            raise SystemExit(f"--reuse: {path} holds another case {result['case']} (different --seed or --num_cases)")
        for method, value in before["methods"].items():
            if method not in result["methods"]:
                result["methods"][method] = value
                taken.add(method)
    then = meta.get("cli_defaults", {})
    return {"file": str(path), "command": meta["command"], "methods": sorted(taken),
            "flags": {m: f for m, f in meta["methods"].items() if m in taken},
            "cli_defaults_then": {k: then.get(k) for k in ("emb_train_steps", "emb_learning_rate", "max_train_steps",
                                                           "learning_rate", "guidance_scale", "num_inference_steps",
                                                           "strength")}}


def _worker(payload):
    cases, methods, baselines, args, threads = payload
    torch.set_num_threads(threads)
    workdir = Path(tempfile.mkdtemp(prefix="shapes-bench-"))
    try:
        return [run_case(case, methods, baselines, args, workdir) for case in cases]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Aggregation and reports


def summarise(results: list[dict]) -> dict:
    """{method: {setting: {success, place, both, n}}, plus per-attribute rates and timings}."""
    summary = {}
    for method in results[0]["methods"]:
        by_setting, by_attribute = {}, {}
        for result in results:
            for r in result["methods"][method]["records"]:
                key = str(r["setting"])
                s = by_setting.setdefault(key, {"success": 0, "place": 0, "both": 0, "n": 0})
                for metric in ("success", "place", "both"):
                    s[metric] += r[metric]
                s["n"] += 1
                a = by_attribute.setdefault(key, {}).setdefault(result["attribute"], {"both": 0, "n": 0})
                a["both"] += r["both"]
                a["n"] += 1
        for s in by_setting.values():
            for metric in ("success", "place", "both"):
                s[metric] = s[metric] / s["n"]
        walls = [result["methods"][method]["wall_s"] for result in results]
        phases = [result["methods"][method].get("phase_s") for result in results]
        summary[method] = {
            "settings": by_setting,
            "by_attribute": {k: {att: v["both"] / v["n"] for att, v in d.items()} for k, d in by_attribute.items()},
            "wall_s_per_case": float(np.median(walls)),
            "phase_s_median": ({k: float(np.median([p[k] for p in phases])) for k in phases[0]}
                               if phases[0] else None),
            "pick_against_person": pick_against_person(results, method),
        }
    return summary


def bootstrap_interval(values: list[float], draws: int = 10000, seed: int = 0) -> list[float]:
    """The 95% bootstrap interval of the mean of ``values`` (one per case; of bools, the share of true ones),
    resampling the cases."""
    x = np.asarray(values, dtype=np.float64)
    means = x[np.random.default_rng(seed).integers(0, len(x), (draws, len(x)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def pick_against_person(results: list[dict], method: str) -> dict | None:
    """The automatic pick (one image per case: the AUTO records) against a person choosing, with the judge,
    among the same candidates (every other record but eta 0, the reconstruction, which is never a candidate):
    the share of cases edited and in place, with bootstrap intervals over cases, and the counts by kind.
    None when the method has no AUTO records."""
    picked, person, kinds = [], [], {}
    for result in results:
        records = result["methods"][method]["records"]
        auto = [r["both"] for r in records if r["setting"] == AUTO]
        if not auto:
            return None
        chosen = bool(auto[0])
        any_right = any(r["both"] for r in records if r["setting"] not in (AUTO, 0.0))
        picked.append(chosen)
        person.append(any_right)
        k = kinds.setdefault(result["attribute"], {"pick": 0, "person": 0, "n": 0})
        k["pick"] += chosen
        k["person"] += any_right
        k["n"] += 1
    return {"n": len(picked), "pick": sum(picked), "pick_interval": bootstrap_interval(picked),
            "person": sum(person), "person_interval": bootstrap_interval(person), "by_kind": kinds}


def picked_right(results: list[dict], method: str) -> dict[int, bool]:
    """Whether the pick (the AUTO record) of ``method`` is edited and in place, by case index."""
    out = {}
    for result in results:
        auto = [r["both"] for r in result["methods"][method]["records"] if r["setting"] == AUTO]
        if not auto:
            raise ValueError(f"method {method!r} has no automatically picked edit in case {result['case']}")
        out[result["case"]] = bool(auto[0])
    return out


def paired_difference(a: dict[int, bool], b: dict[int, bool], draws: int = 10000, seed: int = 0) -> dict:
    """The pick's share of right cases in run ``a`` minus run ``b`` on the cases both ran (``picked_right``),
    with a 95% paired bootstrap interval: the same resampled cases for both runs, so that what the cases
    share (an easy case is easy in both) cancels. Also the cases only one of them got right."""
    cases = sorted(set(a) & set(b))
    if not cases:
        raise ValueError("the two runs have no case in common")
    x = [float(a[c]) - float(b[c]) for c in cases]
    return {"n": len(cases), "a": int(sum(a[c] for c in cases)), "b": int(sum(b[c] for c in cases)),
            "difference": float(np.mean(x)), "interval": bootstrap_interval(x, draws, seed),
            "only_a": [c for c in cases if a[c] and not b[c]], "only_b": [c for c in cases if b[c] and not a[c]]}


def best_setting(method_summary: dict) -> tuple[str, dict]:
    return max(method_summary["settings"].items(), key=lambda kv: (kv[1]["both"], kv[1]["success"]))


def write_markdown(path: Path, summary: dict, meta: dict) -> None:
    # --kinds: only those kinds' cases ran; a kind that did not run shows "-", not 0%.
    kinds = [k for k in shapes.attribute_names(meta.get("world", 1)) if k in (meta.get("kinds") or [k])]
    named = {"color": "colour"}
    listed = (f"{', '.join(named.get(k, k) for k in kinds[:-1])} and " if len(kinds) > 1 else "") \
        + named.get(kinds[-1], kinds[-1])
    lines = ["# Shapes-world edit benchmark", "",
             f"{meta['num_cases']} seeded cases of world version {meta.get('world', 1)} "
             f"({meta['num_cases'] // len(kinds)} each of {listed} edits), {meta['num_seeds']} seeds per setting; "
             f"inputs are 'photos' "
             f"(gradient, blur, noise) the model never saw. Judge: `imagic_lora.shapes.judge`. *success*: every "
             f"target attribute read back; "
             f"*place*: bounding-box centre within {PLACE_TOLERANCE_PX:.0f} px of the input's; *both*: the two "
             f"together. Rates are over cases x seeds.", "",
             f"Command: `{meta['command']}`  ", *reused_lines(meta),
             f"Machine: {meta['device']}; torch {meta['torch']}, diffusers {meta['diffusers']}; "
             f"model `{meta['model']}`.", "",
             "## Best setting of each method", "",
             "| method | best eta / strength | success | place kept | both | wall time per case (s) | A / B / C (s) |",
             "|---|---|---|---|---|---|---|"]
    for method, s in summary.items():
        setting, best = best_setting(s)
        phases = s["phase_s_median"]
        phase_text = " / ".join(f"{phases[k]:.1f}" for k in ("A", "B", "C")) if phases else "-"
        lines.append(f"| {method} | {setting} | {best['success']:.0%} | {best['place']:.0%} | **{best['both']:.0%}** "
                     f"| {s['wall_s_per_case']:.1f} | {phase_text} |")
    lines += goal_lines(summary, meta) + pick_lines(summary, kinds, named)
    if meta.get("notes"):
        lines += ["", meta["notes"].rstrip()]
    lines += ["", "## Every setting", "", "| method | eta / strength | success | place kept | both | both: "
              + " | ".join(named.get(k, k) for k in kinds) + " |", "|---|---|---|---|---|" + "---|" * len(kinds)]
    for method, s in summary.items():
        for setting, v in s["settings"].items():
            att = s["by_attribute"][setting]
            lines.append(f"| {method} | {setting} | {v['success']:.0%} | {v['place']:.0%} | {v['both']:.0%} | "
                         + " | ".join(f"{att.get(a, 0):.0%}" for a in kinds) + " |")
    path.write_text("\n".join(lines) + "\n")


def pick_lines(summary: dict, kinds: list[str], named: dict) -> list[str]:
    """The automatic pick against a person, per method that picks, with 95% bootstrap intervals over cases."""
    rows = [(m, s["pick_against_person"]) for m, s in summary.items() if s.get("pick_against_person")]
    if not rows:
        return []

    def rate(right: int, n: int, interval: list[float]) -> str:
        return f"{right / n:.0%} ({right} of {n}; {interval[0]:.0%}-{interval[1]:.0%})"

    lines = ["", "## The automatic pick against a person", "",
             "Cases edited and in place: the pick (`edit.png`, one image per case) against a person choosing among "
             "the same candidates with the judge (a right image among them). 95% bootstrap intervals over cases; "
             "by kind, cases right by the pick / by a person.", "",
             "| method | the pick | a person | " + " | ".join(named.get(k, k) for k in kinds) + " |",
             "|---|---|---|" + "---|" * len(kinds)]
    for method, v in rows:
        by_kind = [v["by_kind"].get(k) for k in kinds]
        lines.append(f"| {method} | **{rate(v['pick'], v['n'], v['pick_interval'])}** | "
                     f"{rate(v['person'], v['n'], v['person_interval'])} | "
                     + " | ".join(f"{k['pick']} / {k['person']} of {k['n']}" if k else "-" for k in by_kind) + " |")
    return lines


def reused_lines(meta: dict) -> list[str]:
    reused = meta.get("reused")
    if not reused:
        return []
    return [f"Rows of {', '.join(reused['methods'])}: from an earlier run of the same cases, seeds and settings "
            f"(`{reused['command']}`; `--reuse {Path(reused['file']).name}`), run then with "
            f"{'; '.join(f'{m}: `{shlex.join(f)}`' for m, f in reused['flags'].items())} on the CLI defaults of "
            f"then ({', '.join(f'{k} {v}' for k, v in reused['cli_defaults_then'].items())}): the settings the "
            f"pinned flags in IMAGIC_METHODS give today.  "]


def goal_lines(summary: dict, meta: dict) -> list[str]:
    """Imagic-LoRA at the CLI's recommended eta (chosen beforehand, not the best of this run)
    against the others; SDEdit and no-B at the setting whose edit success matches it."""
    eta = meta.get("recommended_eta")
    key = str(float(eta)) if eta is not None else None
    if "imagic_lora" not in summary or key not in summary["imagic_lora"]["settings"]:
        return []
    ours = summary["imagic_lora"]["settings"][key]
    lines = ["", f"## Imagic-LoRA at its recommended eta ({key}) against the others", "",
             "| method | setting | success | place kept | both |", "|---|---|---|---|---|",
             f"| imagic_lora (recommended eta) | {key} | {ours['success']:.0%} | {ours['place']:.0%} | "
             f"**{ours['both']:.0%}** |"]
    auto = summary["imagic_lora"]["settings"].get(AUTO)
    if auto:
        lines.append(f"| imagic_lora (automatic pick, one image per case) | {AUTO} | {auto['success']:.0%} | "
                     f"{auto['place']:.0%} | **{auto['both']:.0%}** |")
    for method in ("imagic_full", "imagic_no_b", "sdedit", "text2img"):
        if method not in summary:
            continue
        settings = {k: v for k, v in summary[method]["settings"].items() if k != AUTO}
        if method == "imagic_full" and key in settings:
            label, v = f"{key} (same eta)", settings[key]
        else:
            # matched edit success: the least edit success at least ours, else the most there is
            reaching = [(k, v) for k, v in settings.items() if v["success"] >= ours["success"]]
            k, v = (min(reaching, key=lambda kv: kv[1]["success"]) if reaching
                    else max(settings.items(), key=lambda kv: kv[1]["success"]))
            label = f"{k} (matched success)" if reaching else f"{k} (its most success)"
        lines.append(f"| {method} | {label} | {v['success']:.0%} | {v['place']:.0%} | {v['both']:.0%} |")
        k, best = best_setting(summary[method]) if method == "imagic_full" else (None, None)
        if best is not None and k != key:
            lines.append(f"| imagic_full (its best eta) | {k} | {best['success']:.0%} | {best['place']:.0%} | "
                         f"{best['both']:.0%} |")
    return lines


def write_plot(path: Path, summary: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for method, s in summary.items():
        numeric = {k: v for k, v in s["settings"].items() if k not in ("-", AUTO) and "@" not in k}
        for key, style in (("-", ":"), (AUTO, "-.")):
            if key in s["settings"]:
                for ax, metric in zip(axes, ("success", "place", "both")):
                    ax.axhline(s["settings"][key][metric], ls=style, color="gray" if key == "-" else "C0",
                               label=method if key == "-" else f"{method}, automatic pick")
        if not numeric:
            continue
        xs = sorted(numeric, key=float)
        style = "--" if method == "sdedit" else "-"
        for ax, metric in zip(axes, ("success", "place", "both")):
            ax.plot([float(x) for x in xs], [numeric[x][metric] for x in xs], style, marker="o",
                    label=method + (" (x = strength)" if method == "sdedit" else ""))
    for ax, title in zip(axes, ("edit success", "place kept", "both")):
        ax.set_title(title)
        ax.set_xlabel("eta (Imagic) / strength (SDEdit)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_examples(path: Path, cases: list[Case], model: str, flags: list[str], eta: float, args) -> None:
    """A contact sheet: input photo, Imagic-LoRA at eta 0 and at ``eta`` (first seed), the edit the CLI
    picked automatically (as in the benchmark's 'auto' row: the same etas and seeds), and the verdicts."""
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="shapes-examples-"))
    etas = sorted({0.0, eta, *args.etas})
    try:
        for case in cases:
            photo = shapes.render_photo(case.scene, seed=case.seed)
            photo.save(workdir / "in.png")
            out = workdir / f"c{case.index}"
            cli.main(["--pretrained_model_name_or_path", model, "--input_image", str(workdir / "in.png"),
                      "--target_prompt", case.target_prompt, "--output_dir", str(out), "--etas", *map(str, etas),
                      "--num_seeds", str(args.num_seeds), "--seed", str(case.seed), "--overwrite", *flags])
            config = json.loads((out / "imagic_config.json").read_text())
            picked, first = config.get("picked"), as_list("strength", config.get("strength", 1.0))[0]
            tiles = [("input", photo),
                     ("eta 0", Image.open(out / "images" / image_name(0.0, case.seed, first)).convert("RGB")),
                     (f"eta {eta}", Image.open(out / "images" / image_name(eta, case.seed, first)).convert("RGB"))]
            if picked:
                tiles.append((f"picked eta {picked['eta']} seed+{picked['seed'] - case.seed}",
                              Image.open(out / picked["image"]).convert("RGB")))
            rows.append((case, photo, tiles))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    cell, label = 128, 14
    columns = max(len(tiles) for _, _, tiles in rows)
    sheet = Image.new("RGB", (columns * cell + 330, len(rows) * (cell + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (case, photo, tiles) in enumerate(rows):
        y = i * (cell + label)
        for j, (title, image) in enumerate(tiles):
            draw.text((j * cell + 2, y), title, fill="black")
            sheet.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (j * cell, y + label))
        reading = shapes.judge(photo, case.world)
        verdicts = []
        for title, image in tiles[2:]:
            v = score(image, case, (reading.cx, reading.cy))
            verdicts.append(f"{title.split(' seed')[0]}: {'edited' if v['success'] else 'not edited'}, "
                            f"{'in place' if v['place'] else 'moved'}")
        draw.text((columns * cell + 8, y + label + 14), f"{case.attribute} edit:\n{case.target_prompt}\n"
                  + "\n".join(verdicts), fill="black")
    sheet.save(path)


def check_world(model: str, world: int) -> None:
    """Refuse a model whose vocabulary cannot caption the world's cases (a version-1 model on version 2)."""
    from .vocabulary import read_vocabulary
    vocabulary = read_vocabulary(Path(model) / "tokenizer")
    if vocabulary is not None and not set(shapes.words(world)) <= set(vocabulary):
        missing = sorted(set(shapes.words(world)) - set(vocabulary))
        raise SystemExit(f"--world {world}: the model {model} does not know {', '.join(missing)}; train one with "
                         f"scripts/train_shapes_model.py --world {world} and pass it as --model")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None,
                   help="Base model (default: the bundled shapes model of --world's version: imagic_lora/bundled/"
                        "shapes-sd, or shapes-sd-v2 for --world 2).")
    p.add_argument("--num_cases", type=int, default=60)
    p.add_argument("--seed", type=int, default=0, help="Seed of the cases.")
    p.add_argument("--world", type=int, default=1, choices=shapes.WORLDS,
                   help="The shapes world's version: 2 adds direction edits (a fifth of the cases) and needs a "
                        "version-2 model (the bundled shapes-sd-v2, or scripts/train_shapes_model.py --world 2).")
    p.add_argument("--kinds", nargs="+", default=None, metavar="KIND",
                   help="Only the cases of these kinds of edit (shape, color, size, background, direction): the same "
                        "cases, by index, as the full run of --num_cases.")
    p.add_argument("--edit_seed_offset", type=int, default=0,
                   help="Added to each case's seed for the Imagic methods' own --seed (their draws in steps A, B, C "
                        "and the pick), on the same cases: how much of a difference the edit's randomness makes.")
    p.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4])
    p.add_argument("--strengths", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    p.add_argument("--num_seeds", type=int, default=2)
    p.add_argument("--guidance_scale", type=float, default=None, help="Baselines' guidance (default: the CLI's).")
    p.add_argument("--num_inference_steps", type=int, default=BASELINE_STEPS, help="Baselines' DDIM steps.")
    p.add_argument("--methods", nargs="+", default=[*IMAGIC_METHODS, "sdedit", "text2img"])
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="An extra Imagic method: a name and the CLI flags it adds.")
    p.add_argument("--workers", type=int, default=2, help="Processes (one thread each).")
    p.add_argument("--output_dir", default="docs")
    p.add_argument("--prefix", default="shapes_benchmark", help="File name prefix of the outputs.")
    p.add_argument("--examples", type=int, default=8, help="Cases in the example contact sheet (0: none).")
    p.add_argument("--reuse", default=None, metavar="JSON",
                   help="An earlier run's <prefix>.json: the methods this run does not run are taken from it "
                        "(it must hold the same cases, seeds, etas and strengths; checked).")
    p.add_argument("--renderer", default="photo", choices=("photo", "alt"),
                   help="The input photos: shapes.render_photo (the benchmark's), or render_photo_alt (an "
                        "independent renderer, to check on other images what was tuned on the first).")
    p.add_argument("--keep_images", default=None, metavar="DIR",
                   help="Keep each Imagic case's images and record in DIR/<method>/case<i>/ (to redo a pick offline).")
    p.add_argument("--notes", default=None, help="A markdown file whose text the report includes (the defaults "
                                                 "chosen and why).")
    args = p.parse_args(argv)
    if args.model is None:
        args.model = str(BUNDLED_MODEL_V2 if args.world == 2 else BUNDLED_MODEL)
    return args


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def map_in_processes(fn, items: list, workers: int) -> list:
    """``[fn(item) for item in items]`` in ``workers`` spawned processes that do not outlive this one: a SIGTERM
    to this process ends them too (its default action would end this process alone and leave them running)."""
    import multiprocessing as mp
    import signal
    import threading

    handled = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if handled else None
    try:
        with mp.get_context("spawn").Pool(workers) as pool:  # leaving the block terminates the workers
            return pool.map(fn, items)
    finally:
        if handled:
            signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> int:
    args = parse_args(argv)
    from imagic_lora.config import ImagicConfig
    defaults = ImagicConfig(pretrained_model_name_or_path=args.model).resolved()  # what the CLI runs on the model
    args.guidance_scale = args.guidance_scale if args.guidance_scale is not None else defaults.guidance_scale
    methods = {name: flags for name, flags in IMAGIC_METHODS.items() if name in args.methods}
    for variant in args.variant:
        name, _, flags = variant.partition("=")
        methods[name] = shlex.split(flags)
    baselines = [m for m in ("sdedit", "text2img") if m in args.methods]
    check_world(args.model, args.world)
    cases = make_cases(args.num_cases, args.seed, args.world)
    if args.kinds:
        if args.reuse:
            raise SystemExit("--kinds with --reuse: an earlier run's rows are kept for all its cases; run the kinds alone")
        cases = select_kinds(cases, args.kinds, args.world)
    chunks = [cases[i::args.workers] for i in range(args.workers)]
    start = time.perf_counter()
    if args.workers > 1:
        parts = map_in_processes(_worker, [(chunk, methods, baselines, args, 1) for chunk in chunks], args.workers)
    else:
        parts = [_worker((cases, methods, baselines, args, torch.get_num_threads()))]
    results = sorted((r for part in parts for r in part), key=lambda r: r["case"])
    elapsed = time.perf_counter() - start
    reused = merge_reused(results, Path(args.reuse), args) if args.reuse else None
    summary = summarise(results)
    import diffusers
    meta = {"num_cases": len(cases), "world": args.world, "kinds": args.kinds, "num_seeds": args.num_seeds,
            "edit_seed_offset": args.edit_seed_offset,
            "model": os.path.relpath(args.model, ROOT)
            if Path(args.model).is_absolute() else args.model,
            "command": portable_command(argv or sys.argv[1:]),
            "device": f"CPU, {args.workers} processes x 1 thread", "torch": torch.__version__,
            "diffusers": diffusers.__version__, "elapsed_min": round(elapsed / 60, 1),
            "methods": {**(reused or {}).get("flags", {}), **methods}, "reused": reused,
            "etas": args.etas, "strengths": args.strengths,
            "inputs_read_correctly": sum(r["input_read_ok"] for r in results),
            "recommended_eta": defaults.recommended_eta, "cli_defaults": defaults.to_dict(),
            "notes": Path(args.notes).read_text() if args.notes else None}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.prefix}.json").write_text(json.dumps({"meta": meta, "summary": summary, "cases": results},
                                                        indent=1) + "\n")
    write_markdown(out / f"{args.prefix}.md", summary, meta)
    write_plot(out / f"{args.prefix}.png", summary)
    for method, s in summary.items():
        setting, best = best_setting(s)
        print(f"{method:>14}: best at {setting}: success {best['success']:.0%}, place {best['place']:.0%}, "
              f"both {best['both']:.0%}; {s['wall_s_per_case']:.1f} s/case")
    if args.examples and "imagic_lora" in methods:
        numeric = {k: v for k, v in summary["imagic_lora"]["settings"].items() if k != AUTO}
        eta = float(best_setting({"settings": numeric})[0])
        write_examples(out / f"{args.prefix}_examples.png", cases[:args.examples], args.model,
                       methods["imagic_lora"], eta, args)
    print(f"benchmark: {len(cases)} cases in {elapsed / 60:.1f} min; tables in {out}/{args.prefix}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
