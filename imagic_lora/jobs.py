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
from .output import read_config

#: Settings a manifest line may override for its own job.
OVERRIDABLE = ("etas", "seed", "num_seeds", "guidance_scale", "num_inference_steps", "recommended_eta",
               "emb_train_steps", "emb_learning_rate", "max_train_steps", "learning_rate", "rank", "lora_alpha",
               "resize_mode", "resolution", "scheduler", "strength")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_STEM = 96


@dataclass
class Job:
    id: str | None  # None: the single edit of --input_image, written to --output_dir itself
    input_image: str
    target_prompt: str
    overrides: dict = field(default_factory=dict)

    def config(self, run: ImagicConfig) -> ImagicConfig:
        """The run's config with this job's image, prompt, overrides and output folder."""
        output_dir = run.output_dir if self.id is None else str(Path(run.output_dir) / self.id)
        cfg = dataclasses.replace(run, input_image=self.input_image, target_prompt=self.target_prompt,
                                  output_dir=output_dir, manifest=None, tedbench=None, **self.overrides)
        return cfg.resolved(run.preset) if run.preset is not None else cfg  # a null takes the preset's value


def is_complete(folder: str | Path) -> bool:
    """The folder holds a complete imagic-lora artifact (its record is written last)."""
    return read_config(folder) is not None


#: Names a job id may not take: the run's own files beside the job folders (compared case-insensitively,
#: as a case-insensitive file system would).
RESERVED_IDS = frozenset({"summary.jsonl", "summary.csv", "summary.jsonl.tmp", "summary.csv.tmp"})


def _check_override(name: str, value, where: str):
    """A manifest value for the flag ``name``, of the flag's type (an int is an integral number)."""
    kind = str(next(f.type for f in dataclasses.fields(ImagicConfig) if f.name == name))
    if value is None and "None" in kind:  # null: the preset's value, even where the run set the flag
        return None
    if name in ("etas", "strength"):
        if name == "strength" and not isinstance(value, list):
            value = [value]  # one strength, as the flag's one value
        if not isinstance(value, list) or not value or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            what = "a non-empty list of numbers" if name == "etas" else "a number or a non-empty list of numbers"
            raise ImagicInputError("--manifest", f"{where}: {name!r} must be {what}")
        return [float(v) for v in value]
    if kind.startswith("str"):
        if not isinstance(value, str):
            raise ImagicInputError("--manifest", f"{where}: {name!r} must be a string, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ImagicInputError("--manifest", f"{where}: {name!r} must be a number, got {value!r}")
    if kind.startswith("int"):
        if value != int(value):
            raise ImagicInputError("--manifest", f"{where}: {name!r} must be a whole number, got {value!r}")
        if abs(value) >= 2 ** 63:
            raise ImagicInputError("--manifest", f"{where}: {name!r} is out of range ({value:.3g})")
        return int(value)
    return float(value)


def read_manifest(path: str | Path) -> list[Job]:
    """Jobs from a JSON Lines file: ``{"id", "image", "target_prompt", ...overrides}`` per line.

    Relative image paths are relative to the manifest's folder. Structural problems (bad JSON,
    missing keys, duplicate, unsafe or reserved ids, unknown overrides) are refused as soon as
    their line is read, naming it; a bad image only fails its own job, later. Lines end at "\\n"
    alone: U+2028 or U+0085 inside a JSON string is text, not a line break.
    """
    path = Path(path)
    if not path.is_file():
        raise ImagicInputError("--manifest", f"{path} is not a file")
    with open(path, "rb") as lines:  # binary lines end at b"\\n" alone
        return manifest_jobs(lines, path)


def manifest_jobs(lines, path: Path) -> list[Job]:
    """The jobs of a manifest's lines (bytes, each ending in "\\n"), each checked as it is read."""
    jobs, seen = [], set()
    for number, raw in enumerate(lines, start=1):
        where = f"{path.name} line {number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ImagicInputError("--manifest", f"{where} is not UTF-8 text") from None
        if not line.strip():
            continue
        jobs.append(_manifest_job(line, where, path.parent, seen))
    if not jobs:
        raise ImagicInputError("--manifest", f"{path} holds no jobs")
    return jobs


def _manifest_job(line: str, where: str, folder: Path, seen: set[str]) -> Job:
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
    if job_id.lower() in RESERVED_IDS:
        raise ImagicInputError("--manifest", f"{where}: id {job_id!r} is the name of the run's own summary file")
    if job_id.lower() in seen:
        raise ImagicInputError("--manifest", f"{where}: id {job_id!r} is used twice")
    seen.add(job_id.lower())
    image = Path(entry.pop("image"))
    image = image if image.is_absolute() else folder / image
    prompt = entry.pop("target_prompt")
    try:  # the image's path may hold any bytes (its job fails if it cannot be read); the text may not
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ImagicInputError("--manifest", f"{where}: 'target_prompt' is not valid UTF-8 text") from None
    overrides = {}
    for key, value in entry.items():
        if key not in OVERRIDABLE:
            raise ImagicInputError("--manifest", f"{where}: {key!r} cannot be set per job "
                                                 f"(allowed: {', '.join(OVERRIDABLE)})")
        overrides[key] = _check_override(key, value, where)
    return Job(job_id, str(image), prompt, overrides)


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
        try:
            image = folder / name if (folder / name).exists() else folder / "originals" / name
        except (OSError, ValueError):  # a name no file can have: its job fails, naming it
            image = folder / name
        # Capped: the id names a folder (and its hidden partial and lock files), under the usual 255 bytes.
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).stem)[:MAX_STEM] or "image"
        jobs.append(Job(f"{index:03d}_{stem}", str(image), entry["target_text"]))
    return jobs


SUMMARY_FIELDS = ("id", "status", "error", "input_image", "target_prompt", "recommended_eta", "picked_eta",
                  "picked_seed", "picked_strength", "model_load_s",
                  "wall_time_encode_s",
                  "wall_time_A_s", "wall_time_B_s", "wall_time_C_s", "wall_time_pick_s", "wall_time_save_s",
                  "unet_forwards", "tflop", "peak_memory_gib",
                  "output_dir", "process")


def order_rows(rows: list[dict], order: list[str]) -> list[dict]:
    """``rows`` sorted by the position of their ``id`` in ``order`` (linear in both)."""
    position = {job_id: i for i, job_id in enumerate(order)}
    return sorted(rows, key=lambda row: position[row["id"]])


def write_summary(output_dir: str | Path, rows: list[dict]) -> None:
    """``summary.jsonl`` and ``summary.csv`` in ``output_dir``, one row a job, in job order.

    Text that UTF-8 cannot encode (a path from a file system of other bytes) is written escaped.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "summary.jsonl.tmp", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")  # ensure_ascii: every string is \\u-escaped ASCII
    with open(output_dir / "summary.csv.tmp", "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (output_dir / "summary.jsonl.tmp").replace(output_dir / "summary.jsonl")
    (output_dir / "summary.csv.tmp").replace(output_dir / "summary.csv")
