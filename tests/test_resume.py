"""Interrupted runs: SIGTERM / Ctrl-C mid step B saves a checkpoint and exits cleanly; --resume
finishes the edit with exactly the result an uninterrupted run gives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import ROOT
import imagic_lora.cli as cli
import imagic_lora.recipe as recipe

ARGS = ["--target_prompt", "a large blue square on a gray background", "--emb_train_steps", "5",
        "--max_train_steps", "120", "--train_batch_size", "2", "--checkpointing_steps", "10",
        "--checkpoints_total_limit", "2", "--etas", "0", "0.8", "--num_seeds", "1", "--num_inference_steps", "3",
        "--seed", "5", "--lr_scheduler", "cosine", "--lr_warmup_steps", "3"]  # a resume continues the schedule


def command(tiny_sd, input_png, out, *extra):
    return [sys.executable, str(ROOT / "scripts" / "imagic_lora.py"), "--pretrained_model_name_or_path",
            str(tiny_sd), "--input_image", str(input_png), "--output_dir", str(out), *ARGS, *extra]


@pytest.fixture(scope="module")
def uninterrupted(tiny_sd, input_png, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "edit"
    proc = subprocess.run(command(tiny_sd, input_png, out), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_kill_mid_b_then_resume_gives_the_uninterrupted_result(tiny_sd, input_png, tmp_path, uninterrupted, signum):
    out = tmp_path / "edit"
    partial = tmp_path / ".edit.partial" / "checkpoints"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(command(tiny_sd, input_png, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.time() + 300
    while not list(partial.glob("B-step-*/state.json")):  # wait until step B is under way
        assert proc.poll() is None and time.time() < deadline, "the run ended before step B checkpointed"
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, stderr[-2000:]
    assert "--resume" in stderr
    assert not out.exists()  # nothing under the artifact's name
    steps = sorted(p.name for p in partial.glob("B-step-*"))
    assert 1 <= len(steps) <= 2 and int(steps[-1].split("-")[-1]) < 120  # the limit holds; stopped mid-B

    resumed = subprocess.run(command(tiny_sd, input_png, out, "--resume"), capture_output=True, text=True,
                             env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming step B at step" in resumed.stderr
    for name in ("pytorch_lora_weights.safetensors", "imagic_embeds.safetensors"):
        a, b = load_file(out / name), load_file(uninterrupted / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    for png in uninterrupted.glob("images/eta_*.png"):
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(out / "images" / png.name)))
    assert not (tmp_path / ".edit.partial").exists()
    assert not (out / "checkpoints").exists()


def test_resume_refuses_checkpoints_made_with_other_settings(tiny_sd, input_png, tmp_path, capsys, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash in step C")
    monkeypatch.setattr(recipe, "generate_images", crash)
    argv = ["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png),
            "--output_dir", str(tmp_path / "edit"), *ARGS, "--max_train_steps", "10"]
    with pytest.raises(RuntimeError):
        cli.main(argv)
    with pytest.raises(RuntimeError):  # same settings: resumes (B already done) and reaches C again
        cli.main(argv + ["--resume"])
    capsys.readouterr()
    monkeypatch.undo()
    assert cli.main(argv + ["--resume", "--learning_rate", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--learning_rate" in err
    assert (tmp_path / ".edit.partial" / "checkpoints" / "phase-A").is_dir()  # nothing was thrown away


def test_main_gives_back_the_signal_handlers_it_took(tiny_sd, input_png, tmp_path, monkeypatch):
    """main() catches SIGINT/SIGTERM only while it runs: an in-process caller (the shapes
    benchmark's pool workers, a notebook) can be stopped by SIGTERM afterwards, after a
    finished edit and after a failed one."""
    def handlers():
        return {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    before = handlers()
    argv = ["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png), *ARGS,
            "--max_train_steps", "3"]
    seen = []
    real_generate = recipe.generate_images
    monkeypatch.setattr(recipe, "generate_images", lambda *a, **k: (seen.append(handlers()), real_generate(*a, **k))[1])
    assert cli.main(argv + ["--output_dir", str(tmp_path / "ok")]) == 0
    assert seen and all(h[signal.SIGTERM] not in (before[signal.SIGTERM], signal.SIG_DFL) for h in seen)
    assert handlers() == before

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash in step C")
    monkeypatch.setattr(recipe, "generate_images", crash)
    with pytest.raises(RuntimeError):
        cli.main(argv + ["--output_dir", str(tmp_path / "crash")])
    assert handlers() == before


def test_a_record_from_before_presets_is_compared_at_the_values_of_then():
    """A record without pick_timesteps was made before presets, at 16 noise levels and the full schedule, not at
    the shapes preset's halved one: redoing it with today's defaults is a change, with those of then it is not."""
    from imagic_lora.config import PRE_PRESET_VALUES, ImagicConfig, changed_settings

    now = ImagicConfig().resolved("shapes").settings(frozenset())
    old = {k: v for k, v in now.items() if k not in PRE_PRESET_VALUES}
    assert changed_settings(old, now) == sorted(f"--{k}" for k in PRE_PRESET_VALUES)
    then = ImagicConfig(**PRE_PRESET_VALUES).resolved("shapes").settings(frozenset())
    assert changed_settings(old, then) == []


def test_a_record_from_before_pick_contrast_was_scored_against_e_opt():
    """Records made before --pick_contrast existed picked against e_opt: today's default is a change to them."""
    from imagic_lora.config import ImagicConfig, changed_settings

    now = ImagicConfig().resolved("shapes").settings(frozenset())
    assert now["pick_contrast"] == "empty_prompt"
    old = {k: v for k, v in now.items() if k != "pick_contrast"}
    assert changed_settings(old, now) == ["--pick_contrast"]
    assert changed_settings(old, ImagicConfig(pick_contrast="e_opt").resolved("shapes").settings(frozenset())) == []


def test_a_record_from_before_pick_score_was_scored_by_the_errors_difference():
    """Records made before --pick_score existed scored by err(contrast) - err(e_tgt): today's ratio is a change."""
    from imagic_lora.config import ImagicConfig, changed_settings

    now = ImagicConfig().resolved("shapes-v2").settings(frozenset())
    assert now["pick_score"] == "ratio"
    old = {k: v for k, v in now.items() if k != "pick_score"}
    assert changed_settings(old, now) == ["--pick_score"]
    then = ImagicConfig(pick_score="difference").resolved("shapes-v2").settings(frozenset())
    assert changed_settings(old, then) == []


def test_a_checkpoint_from_before_a_new_flag_resumes_at_that_flags_default(tmp_path):
    """run.json written before --timestep_bias_* existed: resuming with their defaults is allowed, with a bias not."""
    import json

    from imagic_lora.checkpoint import CheckpointStore
    from imagic_lora.config import ImagicConfig
    from imagic_lora.errors import ImagicInputError

    store = CheckpointStore(tmp_path / "checkpoints", 2)
    recipe.check_resumable(store, ImagicConfig().resolved("shapes"), "0" * 64)
    run_file = store.root / "run.json"
    old = {k: v for k, v in json.loads(run_file.read_text()).items() if not k.startswith("timestep_bias")}
    run_file.write_text(json.dumps(old))
    recipe.check_resumable(store, ImagicConfig().resolved("shapes"), "0" * 64)
    run_file.write_text(json.dumps(old))
    with pytest.raises(ImagicInputError, match="--timestep_bias_strategy"):
        recipe.check_resumable(store, ImagicConfig(timestep_bias_strategy="later", timestep_bias_multiplier=3)
                               .resolved("shapes"), "0" * 64)
