"""Many edits: a manifest in one process and in two, failures recorded, reruns skip what is done,
and edits independent of one another (the base model is restored between them)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import ROOT
import imagic_lora.cli as cli
import imagic_lora.recipe as recipe

FAST = ["--emb_train_steps", "4", "--max_train_steps", "4", "--train_batch_size", "2", "--etas", "0", "1",
        "--num_seeds", "1", "--num_inference_steps", "3"]


def make_manifest(tmp_path, input_png, bad=True, ids=("one", "two", "three")):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    prompts = ["a large blue square", "a small green triangle on a black background", "a red circle"]
    lines = []
    for i, (job_id, prompt) in enumerate(zip(ids, prompts)):
        image = "broken.png" if (bad and job_id == "two") else str(input_png)
        lines.append(json.dumps({"id": job_id, "image": image, "target_prompt": prompt, "seed": 3 + i}))
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(tiny_sd, manifest, out, *extra):
    return cli.main(["--pretrained_model_name_or_path", str(tiny_sd), "--manifest", str(manifest),
                               "--output_dir", str(out), *FAST, *extra])


def read_summary(out):
    return {row["id"]: row for row in map(json.loads, (out / "summary.jsonl").read_text().splitlines())}


def test_manifest_run_records_a_bad_image_and_goes_on(tiny_sd, input_png, tmp_path, capsys):
    manifest, out = make_manifest(tmp_path, input_png), tmp_path / "runs"
    assert run(tiny_sd, manifest, out) == 1  # one job failed
    summary = read_summary(out)
    assert [summary[i]["status"] for i in ("one", "two", "three")] == ["ok", "failed", "ok"]
    assert "broken.png" in summary["two"]["error"] and "not a readable image" in summary["two"]["error"]
    for job in ("one", "three"):
        assert (out / job / "imagic_config.json").is_file() and (out / job / "images" / "grid.png").is_file()
        assert summary[job]["wall_time_B_s"] > 0 and summary[job]["recommended_eta"] is not None
    assert not (out / "two").exists() and not (out / ".two.partial").exists()
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["id"] for r in rows] == ["one", "two", "three"]
    assert "two: --manifest: job two: image" in capsys.readouterr().err

    # Rerun: finished jobs are skipped, the failed one retried (now with a good image).
    before = (out / "one" / "pytorch_lora_weights.safetensors").stat().st_mtime_ns
    Image.open(input_png).save(tmp_path / "broken.png")
    assert run(tiny_sd, manifest, out) == 0
    summary = read_summary(out)
    assert [summary[i]["status"] for i in ("one", "two", "three")] == ["skipped (complete)", "ok",
                                                                        "skipped (complete)"]
    assert (out / "one" / "pytorch_lora_weights.safetensors").stat().st_mtime_ns == before


def test_an_edit_does_not_depend_on_the_edits_before_it(tiny_sd, input_png, tmp_path):
    manifest = make_manifest(tmp_path, input_png, bad=False)
    assert run(tiny_sd, manifest, tmp_path / "all") == 0
    alone = tmp_path / "alone.jsonl"
    alone.write_text(manifest.read_text().splitlines()[2] + "\n")  # job "three" only
    assert run(tiny_sd, alone, tmp_path / "alone") == 0
    for name in ("pytorch_lora_weights.safetensors", "imagic_embeds.safetensors"):
        a, b = load_file(tmp_path / "all" / "three" / name), load_file(tmp_path / "alone" / "three" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize("full", [False, True], ids=["lora", "full-finetune"])
def test_reset_restores_the_base_weights_bitwise(tiny_sd, full):
    from accelerate import Accelerator
    from imagic_lora.finetune import full_finetune_parameters, make_optimizer
    from imagic_lora.lora import add_lora
    from imagic_lora.models import load_pipeline
    pipe = load_pipeline(str(tiny_sd))
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    base_state = {k: v.clone() for k, v in original.items()} if full else None
    for _ in range(2):  # two edits in a row
        params = full_finetune_parameters(pipe.unet) if full else add_lora(
            pipe.unet, rank=2, alpha=2, target_modules=["to_q", "to_v"], seed=0, init_lora_weights=False)
        optimizer = make_optimizer(params, learning_rate=1e-2, use_8bit_adam=False, weight_decay=0.0,
                                   accelerator=Accelerator(cpu=True))
        loss = sum(p.float().pow(2).sum() for p in params)
        loss.backward()
        optimizer.step()
        recipe.reset_unet(pipe, base_state, torch.float32)
        state = pipe.unet.state_dict()
        assert state.keys() == original.keys()
        assert all(torch.equal(state[k], original[k]) for k in original)
        assert not any(p.requires_grad for p in pipe.unet.parameters())


def test_two_process_launch_splits_the_manifest(tiny_sd, input_png, tmp_path):
    manifest, out = make_manifest(tmp_path, input_png), tmp_path / "runs"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"), "--num_cpu_threads_per_process", "1",
           str(ROOT / "scripts" / "imagic_lora.py"), "--pretrained_model_name_or_path", str(tiny_sd),
           "--manifest", str(manifest), "--output_dir", str(out), *FAST]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode != 0, proc.stderr[-2000:]  # a job failed, and the exit code says so
    summary = read_summary(out)
    assert [summary[i]["status"] for i in ("one", "two", "three")] == ["ok", "failed", "ok"]
    assert (out / "one" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "three" / "imagic_embeds.safetensors").is_file()
    assert not list(out.glob(".summary.rank*"))
    # Both processes worked: the jobs were split between them, none run twice.
    assert {row["process"] for row in summary.values()} == {0, 1}
    assert proc.stdout.count("3 edits: 2 ok, 1 failed") == 1
