"""Many edits in one run: jobs from a manifest or TEdBench, their output folders and the summary.

A job is one independent edit (an image and a target text, with optional per-job overrides of
the run's settings). With one image, the job's artifact is ``--output_dir`` itself; with a
manifest, each job's artifact is ``--output_dir/<id>/`` and the run writes ``summary.jsonl``
and ``summary.csv`` beside them. A job is complete when its folder holds ``imagic_config.json``:
the artifact is renamed into place only when whole, so a complete-looking folder is complete.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .config import ImagicConfig
from .errors import ImagicInputError

#: Settings a manifest line may override for its own job.
OVERRIDABLE = ("etas", "seed", "num_seeds", "guidance_scale", "num_inference_steps", "recommended_eta",
               "emb_train_steps", "emb_learning_rate", "max_train_steps", "learning_rate", "rank", "lora_alpha",
               "resize_mode", "resolution", "scheduler")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
COMPLETE_MARKER = "imagic_config.json"


@dataclass
class Job:
    id: str | None  # None: the single edit of --input_image, written to --output_dir itself
    input_image: str
    target_prompt: str
    overrides: dict = field(default_factory=dict)

    def config(self, run: ImagicConfig) -> ImagicConfig:
        """The run's config with this job's image, prompt, overrides and output folder."""
        output_dir = run.output_dir if self.id is None else str(Path(run.output_dir) / self.id)
        return dataclasses.replace(run, input_image=self.input_image, target_prompt=self.target_prompt,
                                   output_dir=output_dir, manifest=None, tedbench=None, **self.overrides)


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / COMPLETE_MARKER).is_file()


def _check_override(name: str, value, where: str):
    default = getattr(ImagicConfig(), name)
    if name == "etas":
        if not isinstance(value, list) or not value or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            raise ImagicInputError("--manifest", f"{where}: 'etas' must be a non-empty list of numbers")
        return [float(v) for v in value]
    if isinstance(default, bool) or name == "resize_mode" or name == "scheduler":
        return value
    if isinstance(default, (int, float)) or default is None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ImagicInputError("--manifest", f"{where}: {name!r} must be a number, got {value!r}")
        return int(value) if isinstance(default, int) else float(value)
    return value


def read_manifest(path: str | Path) -> list[Job]:
    """Jobs from a JSON Lines file: ``{"id", "image", "target_prompt", ...overrides}`` per line.

    Relative image paths are relative to the manifest's folder. Structural problems (bad JSON,
    missing keys, duplicate or unsafe ids, unknown overrides) are refused up front, naming the
    line; a bad image only fails its own job, later.
    """
    path = Path(path)
    if not path.is_file():
        raise ImagicInputError("--manifest", f"{path} is not a file")
    jobs, seen = [], set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ImagicInputError("--manifest", f"{where} is not JSON ({e.msg})") from None
        if not isinstance(entry, dict):
            raise ImagicInputError("--manifest", f"{where} is not a JSON object")
        missing = [k for k in ("id", "image", "target_prompt") if not isinstance(entry.get(k), str)]
        if missing:
            raise ImagicInputError("--manifest", f"{where} lacks the string field(s) {', '.join(missing)}")
        job_id = entry.pop("id")
        if not _SAFE_ID.fullmatch(job_id):
            raise ImagicInputError("--manifest", f"{where}: id {job_id!r} must be letters, digits, '.', '_', '-'")
        if job_id in seen:
            raise ImagicInputError("--manifest", f"{where}: id {job_id!r} is used twice")
        seen.add(job_id)
        image = Path(entry.pop("image"))
        image = image if image.is_absolute() else path.parent / image
        prompt = entry.pop("target_prompt")
        overrides = {}
        for key, value in entry.items():
            if key not in OVERRIDABLE:
                raise ImagicInputError("--manifest", f"{where}: {key!r} cannot be set per job "
                                                     f"(allowed: {', '.join(OVERRIDABLE)})")
            overrides[key] = _check_override(key, value, where)
        jobs.append(Job(job_id, str(image), prompt, overrides))
    if not jobs:
        raise ImagicInputError("--manifest", f"{path} holds no jobs")
    return jobs


def read_tedbench(folder: str | Path) -> list[Job]:
    """TEdBench: ``input_list.json`` with ``img_name`` and ``target_text``; images beside it or
    in ``originals/``. Job ids are ``<index>_<image stem>`` (an image has several targets)."""
    folder = Path(folder)
    listing = folder / "input_list.json"
    if not listing.is_file():
        raise ImagicInputError("--tedbench", f"{listing} does not exist")
    try:
        entries = json.loads(listing.read_text())
    except json.JSONDecodeError as e:
        raise ImagicInputError("--tedbench", f"{listing} is not JSON ({e.msg})") from None
    if not isinstance(entries, list) or not entries:
        raise ImagicInputError("--tedbench", f"{listing} must be a non-empty JSON list")
    jobs = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("img_name"), str) or not isinstance(
                entry.get("target_text"), str):
            raise ImagicInputError("--tedbench", f"entry {index} lacks img_name or target_text")
        name = entry["img_name"]
        image = folder / name if (folder / name).exists() else folder / "originals" / name
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).stem) or "image"
        jobs.append(Job(f"{index:03d}_{stem}", str(image), entry["target_text"]))
    return jobs


SUMMARY_FIELDS = ("id", "status", "error", "input_image", "target_prompt", "recommended_eta", "picked_eta",
                  "picked_seed", "model_load_s",
                  "wall_time_encode_s",
                  "wall_time_A_s", "wall_time_B_s", "wall_time_C_s", "wall_time_save_s", "peak_memory_gib",
                  "output_dir", "process")


def write_summary(output_dir: str | Path, rows: list[dict]) -> None:
    """``summary.jsonl`` and ``summary.csv`` in ``output_dir``, one row a job, in job order."""
    output_dir = Path(output_dir)
    with open(output_dir / "summary.jsonl.tmp", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    with open(output_dir / "summary.csv.tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (output_dir / "summary.jsonl.tmp").replace(output_dir / "summary.jsonl")
    (output_dir / "summary.csv.tmp").replace(output_dir / "summary.csv")
