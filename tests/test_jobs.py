"""Manifests, TEdBench folders and the batch summary (no model needed)."""

from __future__ import annotations

import csv
import json

import pytest

from imagic_lora.errors import ImagicInputError
from imagic_lora.jobs import read_manifest, read_tedbench, write_summary


def write_lines(path, *lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_manifest_jobs_overrides_and_relative_paths(tmp_path):
    manifest = write_lines(
        tmp_path / "jobs.jsonl",
        json.dumps({"id": "a", "image": "photos/a.png", "target_prompt": "a red circle"}),
        "",
        json.dumps({"id": "b-2", "image": "/abs/b.png", "target_prompt": "a blue square", "etas": [0, 1.5],
                    "seed": 4, "learning_rate": 1e-4}))
    jobs = read_manifest(manifest)
    assert [j.id for j in jobs] == ["a", "b-2"]
    assert jobs[0].input_image == str(tmp_path / "photos" / "a.png")
    assert jobs[1].input_image == "/abs/b.png"
    assert jobs[1].overrides == {"etas": [0.0, 1.5], "seed": 4, "learning_rate": 1e-4}
    from imagic_lora.config import ImagicConfig
    cfg = jobs[1].config(ImagicConfig(output_dir=str(tmp_path / "runs")))
    assert cfg.output_dir == str(tmp_path / "runs" / "b-2") and cfg.seed == 4 and cfg.etas == [0.0, 1.5]


def test_a_manifest_job_sets_its_own_strengths(tmp_path):
    """--strength per job: one number or a list, checked against the flag's rules with the job named."""
    from imagic_lora.config import ImagicConfig
    from imagic_lora.runner import check_inputs
    manifest = write_lines(
        tmp_path / "jobs.jsonl",
        json.dumps({"id": "one", "image": "a.png", "target_prompt": "t", "strength": 0.8}),
        json.dumps({"id": "two", "image": "a.png", "target_prompt": "t", "strength": [1, 0.8]}),
        json.dumps({"id": "run", "image": "a.png", "target_prompt": "t"}))
    jobs = read_manifest(manifest)
    run = ImagicConfig(output_dir=str(tmp_path / "runs"), strength=[0.6])
    assert [j.config(run).strength for j in jobs] == [[0.8], [1.0, 0.8], [0.6]]
    # null: the preset's strengths, not the run's flag
    from imagic_lora.presets import PRESETS
    null = read_manifest(write_lines(tmp_path / "null.jsonl", json.dumps(
        {"id": "null", "image": "a.png", "target_prompt": "t", "strength": None})))
    assert null[0].overrides == {"strength": None}
    for preset in ("shapes", "shapes-v2"):
        resolved = null[0].config(ImagicConfig(output_dir=str(tmp_path / "runs"), strength=[0.6], preset=preset))
        assert resolved.strength == PRESETS[preset].values["strength"], preset
    assert PRESETS["shapes"].values["strength"] != PRESETS["shapes-v2"].values["strength"]
    for bad, problem in (("high", "'strength' must be a number or a non-empty list of numbers"),
                         ([], "'strength' must be a number or a non-empty list of numbers")):
        with pytest.raises(ImagicInputError, match=problem):
            read_manifest(write_lines(tmp_path / "bad.jsonl", json.dumps(
                {"id": "a", "image": "a.png", "target_prompt": "t", "strength": bad})))
    out_of_range = read_manifest(write_lines(tmp_path / "range.jsonl", json.dumps(
        {"id": "far", "image": "a.png", "target_prompt": "t", "strength": [1.5]})))
    with pytest.raises(ImagicInputError, match=r"job far: .*--strength.*must be in \(0, 1\]"):
        check_inputs(ImagicConfig(output_dir=str(tmp_path / "runs"), manifest=str(tmp_path / "range.jsonl"),
                                  preset="shapes").resolved(), out_of_range)


@pytest.mark.parametrize("line,problem", [
    ("{not json", "not JSON"),
    ('["a list"]', "not a JSON object"),
    ('{"id": "a", "image": "x.png"}', "target_prompt"),
    ('{"id": "../escape", "image": "x.png", "target_prompt": "t"}', "id '../escape'"),
    ('{"id": "a", "image": "x.png", "target_prompt": "t", "rank": "big"}', "'rank' must be a number"),
    ('{"id": "a", "image": "x.png", "target_prompt": "t", "etas": ["high"]}', "'etas' must be"),
    ('{"id": "a", "image": "x.png", "target_prompt": "t", "output_dir": "/etc"}', "cannot be set per job"),
])
def test_manifest_problems_name_the_flag_and_line(tmp_path, line, problem):
    manifest = write_lines(tmp_path / "jobs.jsonl", json.dumps({"id": "ok", "image": "x.png", "target_prompt": "t"}),
                           line)
    with pytest.raises(ImagicInputError) as info:
        read_manifest(manifest)
    assert info.value.flag == "--manifest" and "line 2" in str(info.value) and problem in str(info.value)


def test_manifest_duplicate_ids_and_empty_files(tmp_path):
    line = json.dumps({"id": "same", "image": "x.png", "target_prompt": "t"})
    with pytest.raises(ImagicInputError, match="used twice"):
        read_manifest(write_lines(tmp_path / "dup.jsonl", line, line))
    with pytest.raises(ImagicInputError, match="no jobs"):
        read_manifest(write_lines(tmp_path / "empty.jsonl", ""))
    with pytest.raises(ImagicInputError, match="not a file"):
        read_manifest(tmp_path / "missing.jsonl")


def test_tedbench_folder(tmp_path):
    (tmp_path / "originals").mkdir()
    (tmp_path / "input_list.json").write_text(json.dumps([
        {"img_name": "dog.jpeg", "target_text": "A photo of a sitting dog."},
        {"img_name": "dog.jpeg", "target_text": "A photo of a jumping dog."},
        {"img_name": "my bird.png", "target_text": "A bird spreading its wings."}]))
    jobs = read_tedbench(tmp_path)
    assert [j.id for j in jobs] == ["000_dog", "001_dog", "002_my_bird"]
    assert jobs[2].input_image == str(tmp_path / "originals" / "my bird.png")
    assert jobs[1].target_prompt == "A photo of a jumping dog."
    with pytest.raises(ImagicInputError, match="--tedbench"):
        read_tedbench(tmp_path / "nowhere")


def test_summary_files(tmp_path):
    rows = [{"id": "a", "status": "ok", "error": None, "wall_time_A_s": 1.5},
            {"id": "b", "status": "failed", "error": "bad image", "wall_time_A_s": None}]
    write_summary(tmp_path, rows)
    assert [json.loads(l)["id"] for l in (tmp_path / "summary.jsonl").read_text().splitlines()] == ["a", "b"]
    table = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert table[1]["status"] == "failed" and table[1]["error"] == "bad image" and table[0]["wall_time_A_s"] == "1.5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv", "summary.jsonl"]
