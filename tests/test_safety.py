"""Nothing lost, nothing late: the tool never deletes what it did not write, one run writes a folder at
a time, a resume or a rerun never mixes two inputs, and bad settings are refused before training."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from conftest import ROOT, crash_after
import imagic_lora.cli as cli
import imagic_lora.recipe as recipe
from test_cli import FAST, run_inprocess

PROMPT = "a large blue square on a gray background"


@pytest.fixture()
def no_model(monkeypatch):
    """The command line, with loading a model made an error: a refusal must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was refused")
    monkeypatch.setattr(recipe, "load_pipeline", refuse)
    return cli


def main_err(script, capsys, argv):
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def user_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_photo.png").write_bytes(b"my precious photo")
    (folder / "notes").mkdir(exist_ok=True)
    (folder / "notes" / "todo.txt").write_text("buy milk")
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def files_of(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def manifest_file(tmp_path, image, jobs):
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps({"image": str(image), **job}) + "\n" for job in jobs))
    return path


# ---- 1, 2: --overwrite replaces only an artifact ----------------------------------------------------

@pytest.mark.parametrize("case", ["user-folder", "artifact-plus-user-file", "current-folder", "empty-name"])
def test_overwrite_never_deletes_what_the_tool_did_not_write(no_model, capsys, tiny_sd, input_png, tmp_path, case,
                                                             monkeypatch):
    photos = tmp_path / "photos"
    before = user_files(photos)
    output_dir = str(photos)
    if case == "artifact-plus-user-file":
        (photos / "imagic_config.json").write_text(json.dumps({"format": "imagic-lora/1"}))
        before = files_of(photos)
    elif case == "current-folder":
        monkeypatch.chdir(photos)
        output_dir = "."
    elif case == "empty-name":
        monkeypatch.chdir(photos)
        output_dir = ""
    code, err = main_err(no_model, capsys, ["--pretrained_model_name_or_path", tiny_sd, "--input_image", input_png,
                                            "--target_prompt", PROMPT, "--output_dir", output_dir, "--overwrite"])
    assert code == 2 and len(err) == 1 and "--output_dir" in err[0], err
    assert files_of(photos) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no lock, no partial left beside it


def test_manifest_overwrite_never_replaces_a_users_folder(no_model, capsys, tiny_sd, input_png, tmp_path):
    out = tmp_path / "out"
    before = user_files(out / "photos")
    manifest = manifest_file(tmp_path, input_png, [{"id": "photos", "target_prompt": PROMPT}])
    code, err = main_err(no_model, capsys, ["--pretrained_model_name_or_path", tiny_sd, "--manifest", manifest,
                                            "--output_dir", out, "--overwrite"])
    assert code == 2 and len(err) == 1 and "job photos" in err[0] and "not an imagic-lora artifact" in err[0], err
    assert files_of(out / "photos") == before


# ---- 3: SIGTERM to `accelerate launch` reaches the run ------------------------------------------------

RESUME_ARGS = ["--target_prompt", PROMPT, "--emb_train_steps", "5", "--max_train_steps", "400",
               "--train_batch_size", "2", "--checkpointing_steps", "10", "--etas", "0", "0.8", "--num_seeds", "1",
               "--num_inference_steps", "3", "--seed", "5"]


def children(pid):
    try:
        return [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the launcher's end is followed on Linux")
def test_sigterm_to_the_launcher_stops_the_run_with_a_checkpoint(tiny_sd, input_png, tmp_path):
    out = tmp_path / "edit"
    partial = tmp_path / ".edit.partial" / "checkpoints"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "accelerate_configs" / "cpu.yaml"), "--num_cpu_threads_per_process", "1",
           str(ROOT / "scripts" / "imagic_lora.py"), "--pretrained_model_name_or_path", str(tiny_sd),
           "--input_image", str(input_png), "--output_dir", str(out), *RESUME_ARGS]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 300
    while not list(partial.glob("B-step-*/state.json")):  # step B under way
        assert launcher.poll() is None and time.time() < deadline, launcher.stderr.read()[-2000:]
        time.sleep(0.05)
    (child,) = children(launcher.pid)
    launcher.send_signal(signal.SIGTERM)  # what a scheduler or `kill` sends: to the launcher alone
    _, stderr = launcher.communicate(timeout=300)  # the pipes close when the run, too, has ended
    while os.path.exists(f"/proc/{child}"):  # no orphan trains on
        assert time.time() < deadline, "the run outlived its launcher"
        time.sleep(0.05)
    assert "interrupted; step B's checkpoint at step" in stderr, stderr[-2000:]
    assert not out.exists()  # not committed
    steps = sorted(int(p.name.split("-")[-1]) for p in partial.glob("B-step-*"))
    assert steps and steps[-1] < 400


# ---- 4: one run per output folder ----------------------------------------------------------------

def test_a_second_run_into_the_same_folder_is_refused_up_front(no_model, capsys, tiny_sd, input_png, tmp_path):
    from imagic_lora.output import FolderLock
    out = tmp_path / "edit"
    checkpoint = tmp_path / ".edit.partial" / "checkpoints" / "B-step-000010"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.json").write_text("{}")
    with FolderLock(out):  # the first run, still running
        code, err = main_err(no_model, capsys, ["--pretrained_model_name_or_path", tiny_sd, "--input_image",
                                                input_png, "--target_prompt", PROMPT, "--output_dir", out,
                                                "--resume"])
        assert code == 2 and len(err) == 1 and "another imagic-lora run" in err[0], err
        assert (checkpoint / "state.json").read_text() == "{}"  # the first run's checkpoints are untouched
    assert not (tmp_path / ".edit.lock").exists()  # released


def test_a_lock_left_by_a_killed_run_does_not_block(tiny_sd, input_png, tmp_path):
    """flock is released by the kernel when its process dies, however it dies."""
    out = tmp_path / "edit"
    code = ("import sys, os; sys.path.insert(0, %r); from imagic_lora.output import FolderLock; "
            "FolderLock(%r).acquire(); os.kill(os.getpid(), 9)") % (str(ROOT), str(out))
    subprocess.run([sys.executable, "-c", code])
    assert (tmp_path / ".edit.lock").exists()
    assert run_inprocess(tiny_sd, input_png, out, "--num_seeds", "1", "--etas", "0.5") == 0


# ---- 5: a resume never mixes two inputs ------------------------------------------------------------

def crash_in_c(monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash in step C")
    monkeypatch.setattr(recipe, "generate_images", crash)


def test_resume_with_another_input_image_is_refused(tiny_sd, input_png, tmp_path, capsys, monkeypatch):
    image = tmp_path / "input.png"
    image.write_bytes(input_png.read_bytes())
    argv = ["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(image),
            "--output_dir", str(tmp_path / "edit"), *RESUME_ARGS, "--max_train_steps", "10"]
    crash_in_c(monkeypatch)
    with pytest.raises(RuntimeError):
        cli.main(argv)
    monkeypatch.undo()
    Image.new("RGB", (40, 40), "green").save(image)  # replaced since the checkpoint
    capsys.readouterr()
    assert cli.main(argv + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "--input_image (another image)" in err and "--resume" in err
    assert (tmp_path / ".edit.partial" / "checkpoints" / "phase-A" / "state.json").is_file()


def test_the_same_folder_spelled_differently_resumes(tiny_sd, input_png, tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png), *RESUME_ARGS,
            "--max_train_steps", "10"]
    real = recipe.generate_images
    crash_in_c(monkeypatch)
    with pytest.raises(RuntimeError):
        cli.main(argv + ["--output_dir", "./x/"])
    monkeypatch.setattr(recipe, "generate_images", real)
    with caplog.at_level(logging.INFO):
        assert cli.main(argv + ["--output_dir", "x", "--resume"]) == 0
    assert "resuming step B at step 10" in caplog.text
    assert (tmp_path / "x" / "imagic_config.json").is_file()


# ---- 6: a manifest rerun never reports a changed job as done ------------------------------------------

def test_a_finished_job_whose_line_changed_is_refused_or_redone(tiny_sd, input_png, tmp_path, capsys):
    out = tmp_path / "runs"
    fast = ["--emb_train_steps", "2", "--max_train_steps", "2", "--etas", "0.5", "--num_seeds", "1",
            "--num_inference_steps", "2"]
    jobs = [{"id": "a", "target_prompt": PROMPT}, {"id": "b", "target_prompt": "a red circle"}]
    argv = ["--pretrained_model_name_or_path", str(tiny_sd), "--output_dir", str(out), *fast]
    assert cli.main(argv + ["--manifest", str(manifest_file(tmp_path, input_png, jobs))]) == 0
    jobs[1]["target_prompt"] = "a small green circle"
    changed = manifest_file(tmp_path, input_png, jobs)
    capsys.readouterr()
    assert cli.main(argv + ["--manifest", str(changed)]) == 2
    err = capsys.readouterr().err
    assert "job b" in err and "--target_prompt" in err and "--overwrite" in err
    assert json.loads((out / "b" / "imagic_config.json").read_text())["target_prompt"] == "a red circle"
    assert cli.main(argv + ["--manifest", str(changed), "--overwrite"]) == 0
    assert json.loads((out / "b" / "imagic_config.json").read_text())["target_prompt"] == "a small green circle"
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert [r["target_prompt"] for r in rows] == [PROMPT, "a small green circle"]


# ---- bad settings, refused before any model loads ---------------------------------------------------

@pytest.mark.parametrize("flags,flag", [
    (["--num_inference_steps", "1001"], "--num_inference_steps"),
    (["--etas", "0", "1e300"], "--etas"),
    (["--etas", "0.801", "0.804"], "--etas"),
    (["--seed", str(2 ** 64)], "--seed"),
    (["--seed", str(2 ** 64 - 1)], "--seed"),
    (["--seed", str(2 ** 63 - 2)], "--seed"),  # seed + 1 and + 2 are used too
    (["--resolution", "100000"], "--resolution"),
    (["--target_prompt", "a red \udcff circle"], "--target_prompt"),  # invalid UTF-8 on the command line
    (["--scheduler", "bogus"], "--scheduler"),
], ids=["steps", "eta-huge", "eta-same-name", "seed-2^64", "seed-2^64-1", "seed-overflow", "resolution",
        "invalid-utf8", "scheduler"])
def test_bad_settings_are_refused_before_the_model_loads(no_model, capsys, tiny_sd, input_png, tmp_path, flags, flag):
    argv = ["--pretrained_model_name_or_path", tiny_sd, "--input_image", input_png, "--target_prompt", PROMPT,
            "--output_dir", tmp_path / "out", *flags]
    code, err = main_err(no_model, capsys, argv)
    assert code == 2 and len(err) == 1 and flag in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_an_input_that_is_a_fifo_is_refused_not_waited_on(no_model, capsys, tiny_sd, tmp_path):
    import threading
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    # A reader of the FIFO would wait for a writer for ever: one comes after 10 s, so that such a
    # reader fails this test instead of hanging it.
    unblock = threading.Timer(10, lambda: open(fifo, "wb").close())
    unblock.daemon = True
    unblock.start()
    code, err = main_err(no_model, capsys, ["--pretrained_model_name_or_path", tiny_sd, "--input_image", fifo,
                                            "--target_prompt", PROMPT, "--output_dir", tmp_path / "out"])
    assert code == 2 and len(err) == 1 and "not a regular file" in err[0], err
    unblock.cancel()


@pytest.mark.parametrize("extra,problem", [
    ({"resolution": 32.5}, "'resolution' must be a whole number"),
    ({"num_seeds": 1.7}, "'num_seeds' must be a whole number"),
    ({"scheduler": "bogus"}, "--scheduler"),
    ({"resize_mode": "bogus"}, "--resize_mode"),
    ({"id": "summary.jsonl"}, "summary file"),
    ({"id": "SUMMARY.CSV"}, "summary file"),
    ({"target_prompt": "a red \ud800 circle"}, "not valid UTF-8"),
    ({"num_inference_steps": 5000}, "5000 steps"),
    ({"seed": 2 ** 64}, "'seed' is out of range"),
    ({"seed": 2 ** 63 - 2}, "--seed"),
])
def test_bad_manifest_lines_are_refused_before_the_model_loads(no_model, capsys, tiny_sd, input_png, tmp_path, extra,
                                                               problem):
    manifest = manifest_file(tmp_path, input_png, [{"id": "ok", "target_prompt": PROMPT},
                                                    {"id": "bad", "target_prompt": PROMPT, **extra}])
    code, err = main_err(no_model, capsys, ["--pretrained_model_name_or_path", tiny_sd, "--manifest", manifest,
                                            "--output_dir", tmp_path / "out"])
    assert code == 2 and len(err) == 1 and "--manifest" in err[0] and problem in err[0], err


def test_manifest_whole_numbers_stay_integers(tmp_path, input_png):
    from imagic_lora.config import ImagicConfig
    from imagic_lora.jobs import read_manifest
    manifest = manifest_file(tmp_path, input_png, [{"id": "a", "target_prompt": PROMPT, "resolution": 32,
                                                    "num_seeds": 2.0}])
    (job,) = read_manifest(manifest)
    cfg = job.config(ImagicConfig(output_dir=str(tmp_path)))
    assert cfg.resolution == 32 and isinstance(cfg.resolution, int) and cfg.num_seeds == 2


@pytest.mark.parametrize("separator", ["\u2028", "\u0085", "\u2029"])
def test_a_manifest_string_may_hold_unicode_line_separators(tmp_path, input_png, separator):
    from imagic_lora.jobs import read_manifest
    line = json.dumps({"id": "a", "image": str(input_png), "target_prompt": f"a red{separator}circle"},
                      ensure_ascii=False)
    (tmp_path / "jobs.jsonl").write_text(line + "\n", encoding="utf-8")
    (job,) = read_manifest(tmp_path / "jobs.jsonl")
    assert job.target_prompt == f"a red{separator}circle"


def test_tedbench_ids_fit_a_file_name(tmp_path):
    from imagic_lora.jobs import read_tedbench
    name = "x" * 300 + ".png"
    (tmp_path / "input_list.json").write_text(json.dumps([{"img_name": name, "target_text": "a dog"}]))
    (job,) = read_tedbench(tmp_path)
    assert len(f".{job.id}.partial".encode()) < 255 and job.id.startswith("000_xxx")


def test_lora_targets_that_match_nothing_are_refused_before_step_a(tiny_sd, input_png, tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.setattr(recipe, "optimize_embedding", lambda *a, **k: pytest.fail("step A ran"))
    code = cli.main(["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png),
                        "--target_prompt", PROMPT, "--output_dir", str(tmp_path / "out"),
                        "--lora_target_modules", "to_q,foo"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(err) == 1 and "--lora_target_modules" in err[0] and "'foo'" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_a_base_model_of_pickled_weights_is_refused(tmp_path, input_png, capsys):
    from diffusers import StableDiffusionPipeline
    from imagic_lora.tiny import make_tiny_sd
    model = make_tiny_sd(tmp_path / "safe")
    StableDiffusionPipeline.from_pretrained(str(model)).save_pretrained(tmp_path / "pickled", safe_serialization=False)
    code = cli.main(["--pretrained_model_name_or_path", str(tmp_path / "pickled"), "--input_image",
                               str(input_png), "--target_prompt", PROMPT, "--output_dir", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(err) == 1 and "safetensors" in err[0], err
    assert not (tmp_path / "out").exists()


# ---- faults ---------------------------------------------------------------------------------------

def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(tiny_sd, input_png, tmp_path, caplog, monkeypatch):
    argv = ["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png),
            "--output_dir", str(tmp_path / "edit"), *RESUME_ARGS, "--max_train_steps", "20",
            "--checkpoints_total_limit", "3"]
    crash_in_c(monkeypatch)
    with pytest.raises(RuntimeError):
        cli.main(argv)
    latest = tmp_path / ".edit.partial" / "checkpoints" / "B-step-000020" / "tensors.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # torn
    monkeypatch.undo()
    with caplog.at_level(logging.INFO):
        assert cli.main(argv + ["--resume"]) == 0
    assert "B-step-000020" in caplog.text and "unreadable" in caplog.text
    assert "resuming step B at step 10" in caplog.text


def test_a_full_disk_keeps_the_checkpoints_and_the_rerun_resumes(tiny_sd, input_png, tmp_path, capsys, caplog,
                                                                  monkeypatch):
    import imagic_lora.checkpoint as checkpoint
    argv = ["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png),
            "--output_dir", str(tmp_path / "edit"), *RESUME_ARGS, "--max_train_steps", "30"]
    real, saves = checkpoint.save_file, []

    def fill_up(tensors, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 3:  # phase-A, B-step-10, then the disk is full: safetensors' own error, as it raises it
            from safetensors import SafetensorError
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
        return real(tensors, path, *args, **kwargs)
    monkeypatch.setattr(checkpoint, "save_file", fill_up)
    assert cli.main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "no space left" in err[0] and "--resume" in err[0], err
    assert (tmp_path / ".edit.partial" / "checkpoints" / "B-step-000010" / "state.json").is_file()
    monkeypatch.undo()
    with caplog.at_level(logging.INFO):
        assert cli.main(argv + ["--resume"]) == 0
    assert "resuming step B at step 10" in caplog.text


def test_the_summary_is_written_when_every_job_fails_and_for_any_path(tiny_sd, tmp_path):
    out = tmp_path / "runs"
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image": "\ud800.png", "target_prompt": PROMPT}) + "\n"
                        + json.dumps({"id": "b", "image": "missing.png", "target_prompt": PROMPT}) + "\n")
    code = cli.main(["--pretrained_model_name_or_path", str(tiny_sd), "--manifest", str(manifest),
                               "--output_dir", str(out), *FAST])
    assert code == 1
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert [(r["id"], r["status"]) for r in rows] == [("a", "failed"), ("b", "failed")]
    assert "\\ud800" in (out / "summary.csv").read_text(encoding="utf-8")


def test_a_torn_image_of_a_resumed_run_is_drawn_again(tiny_sd, input_png, tmp_path, monkeypatch):
    argv = ["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png),
            "--output_dir", str(tmp_path / "edit"), *RESUME_ARGS, "--max_train_steps", "4",
            "--sample_batch_size", "1", "--num_seeds", "2"]
    monkeypatch.setattr(recipe, "generate_images", crash_after(recipe.generate_images, 2, []))
    with pytest.raises(RuntimeError):
        cli.main(argv)
    images = tmp_path / ".edit.partial" / "images"
    drawn = sorted(images.glob("eta_*.png"))
    assert len(drawn) == 2 and not list(images.glob(".*.tmp"))
    drawn[0].write_bytes(drawn[0].read_bytes()[:40])  # torn, as by a kill mid-write in an older version
    monkeypatch.undo()
    assert cli.main(argv + ["--resume"]) == 0
    Image.open(tmp_path / "edit" / "images" / drawn[0].name).load()


def test_a_replacement_killed_between_its_renames_is_undone(tiny_sd, input_png, tmp_path, caplog):
    out = tmp_path / "edit"
    assert run_inprocess(tiny_sd, input_png, out, "--num_seeds", "1", "--etas", "0.5") == 0
    before = files_of(out)
    os.replace(out, tmp_path / ".edit.old-4242")  # killed after the first rename of a commit
    assert run_inprocess(tiny_sd, input_png, out, "--num_seeds", "1", "--etas", "0.7") == 2  # not without --overwrite
    assert "restored" in caplog.text
    assert files_of(out) == before and not (tmp_path / ".edit.old-4242").exists()


def test_sigterm_in_step_a_says_nothing_was_saved(tiny_sd, input_png, tmp_path, capsys, monkeypatch):
    import imagic_lora.diffusion as diffusion
    real, calls = diffusion.denoising_loss, []

    def terminated(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    monkeypatch.setattr(diffusion, "denoising_loss", terminated)
    code = run_inprocess(tiny_sd, input_png, tmp_path / "edit")
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM
    assert "nothing was saved" in err and "checkpoint" not in err.split("interrupted")[-1].split("(")[0]
    assert not (tmp_path / ".edit.partial").exists()


def test_resumed_from_step_b_is_recorded_only_after_a_resume(tiny_sd, input_png, tmp_path, monkeypatch):
    assert run_inprocess(tiny_sd, input_png, tmp_path / "straight") == 0  # 6 images, one per call
    assert json.loads((tmp_path / "straight" / "imagic_config.json").read_text())["resumed_from_step_B"] is None
    argv = ["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png),
            "--output_dir", str(tmp_path / "edit"), *RESUME_ARGS, "--max_train_steps", "10"]
    crash_in_c(monkeypatch)
    with pytest.raises(RuntimeError):
        cli.main(argv)
    monkeypatch.undo()
    assert cli.main(argv + ["--resume"]) == 0
    assert json.loads((tmp_path / "edit" / "imagic_config.json").read_text())["resumed_from_step_B"] == 10


# ---- reading an artifact ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def artifact(tiny_sd, input_png, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifact") / "edit"
    assert run_inprocess(tiny_sd, input_png, out, "--num_seeds", "1", "--etas", "0.5") == 0
    return out


@pytest.mark.parametrize("damage,problem", [
    ("five-prompts", "one prompt's"), ("nan-embeds", "NaN"), ("nan-lora", "NaN"), ("config-list", "JSON object"),
])
def test_load_edit_refuses_a_damaged_artifact(artifact, tiny_sd, tmp_path, damage, problem):
    import shutil

    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file, save_file
    from imagic_lora.artifact import load_edit
    folder = tmp_path / "edit"
    shutil.copytree(artifact, folder)
    embeds = load_file(folder / "imagic_embeds.safetensors")
    if damage == "five-prompts":
        embeds["optimized_prompt_embeds"] = embeds["optimized_prompt_embeds"].repeat(5, 1, 1)
        save_file(embeds, folder / "imagic_embeds.safetensors")
    elif damage == "nan-embeds":
        embeds["optimized_prompt_embeds"][0, 3, 1] = float("nan")
        save_file(embeds, folder / "imagic_embeds.safetensors")
    elif damage == "nan-lora":
        lora = load_file(folder / "pytorch_lora_weights.safetensors")
        next(v for k, v in lora.items() if k.endswith(".lora_down.weight"))[0] = float("nan")
        save_file(lora, folder / "pytorch_lora_weights.safetensors")
    else:
        (folder / "imagic_config.json").write_text("[1, 2]")
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)
    with pytest.raises(ValueError, match=problem) as info:
        load_edit(pipe, folder)
    assert "\n" not in str(info.value)
    assert not getattr(pipe.unet, "peft_config", None)  # nothing was loaded


# ---- a long manifest stays linear ----------------------------------------------------------------

def test_summary_ordering_looks_each_id_up_once():
    from imagic_lora.jobs import order_rows

    class NoIndex(list):
        def index(self, *args):
            raise AssertionError("list.index per row is quadratic")
    order = NoIndex(f"job{i}" for i in range(1000))
    rows = [{"id": f"job{i}"} for i in reversed(range(1000))]
    assert [r["id"] for r in order_rows(rows, order)] == list(order)


def test_a_manifest_is_refused_at_its_first_bad_line_without_reading_on(tmp_path, input_png):
    """Lines are checked as they are read: an endless manifest with a bad second line fails at once."""
    import itertools

    from imagic_lora.errors import ImagicInputError
    from imagic_lora.jobs import manifest_jobs
    good = json.dumps({"id": "a", "image": str(input_png), "target_prompt": PROMPT}).encode() + b"\n"
    endless = itertools.chain([good, b"{broken\n"], (json.dumps({"id": f"j{i}", "image": "x.png",
                                                                   "target_prompt": PROMPT}).encode() + b"\n"
                                                       for i in itertools.count()))
    with pytest.raises(ImagicInputError, match="line 2 is not JSON"):
        manifest_jobs(endless, tmp_path / "jobs.jsonl")


# ---- what an adversarial review of the first fixes found ----------------------------------------------

def test_a_users_summary_files_are_never_replaced(no_model, capsys, tiny_sd, input_png, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "summary.csv").write_text("my,own,table\n")
    manifest = manifest_file(tmp_path, input_png, [{"id": "a", "target_prompt": PROMPT}])
    code, err = main_err(no_model, capsys, ["--pretrained_model_name_or_path", tiny_sd, "--manifest", manifest,
                                            "--output_dir", out])
    assert code == 2 and len(err) == 1 and "summary.csv" in err[0], err
    assert (out / "summary.csv").read_text() == "my,own,table\n"


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_a_lock_name_in_the_way_is_refused_and_left_alone(no_model, capsys, tiny_sd, input_png, tmp_path, kind):
    thesis = tmp_path / "thesis.txt"
    thesis.write_text("precious")
    lock = tmp_path / ".edit.lock"
    if kind == "symlink":
        lock.symlink_to(thesis)
    else:
        lock.write_text("my notes")
    code, err = main_err(no_model, capsys, ["--pretrained_model_name_or_path", tiny_sd, "--input_image", input_png,
                                            "--target_prompt", PROMPT, "--output_dir", tmp_path / "edit"])
    assert code == 2 and len(err) == 1 and ".edit.lock" in err[0], err
    assert thesis.read_text() == "precious" and (lock.is_symlink() or lock.read_text() == "my notes")


def test_an_output_folder_named_through_a_symlink_is_written_where_it_points(tiny_sd, input_png, tmp_path):
    (tmp_path / "disk").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "disk")
    assert run_inprocess(tiny_sd, input_png, tmp_path / "link", "--num_seeds", "1", "--etas", "0.5") == 0
    assert (tmp_path / "disk" / "imagic_config.json").is_file() and (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "link"]


def test_a_symlinked_partial_folder_is_refused(no_model, capsys, tiny_sd, input_png, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / ".edit.partial").symlink_to(tmp_path / "mine")
    code, err = main_err(no_model, capsys, ["--pretrained_model_name_or_path", tiny_sd, "--input_image", input_png,
                                            "--target_prompt", PROMPT, "--output_dir", tmp_path / "edit",
                                            "--resume"])
    assert code == 2 and ".edit.partial" in err[0], err
    assert list((tmp_path / "mine").iterdir()) == []


def test_an_interrupted_manifest_job_resumes_when_rerun(tiny_sd, input_png, tmp_path, caplog, monkeypatch):
    out = tmp_path / "runs"
    manifest = manifest_file(tmp_path, input_png, [{"id": "a", "target_prompt": PROMPT}])
    argv = ["--pretrained_model_name_or_path", str(tiny_sd), "--manifest", str(manifest), "--output_dir", str(out),
            *RESUME_ARGS, "--max_train_steps", "10"]
    crash_in_c(monkeypatch)
    assert cli.main(argv) == 1  # the job failed after step B
    assert (out / ".a.partial" / "checkpoints" / "B-step-000010" / "state.json").is_file()
    monkeypatch.undo()
    with caplog.at_level(logging.INFO):
        assert cli.main(argv) == 0  # the same command, without --resume
    assert "resuming step B at step 10" in caplog.text and (out / "a" / "imagic_config.json").is_file()


def test_sampling_steps_past_the_schedule_with_its_offset_are_refused(no_model, capsys, tiny_sd, input_png, tmp_path):
    code, err = main_err(no_model, capsys, ["--pretrained_model_name_or_path", tiny_sd, "--input_image", input_png,
                                            "--target_prompt", PROMPT, "--output_dir", tmp_path / "out",
                                            "--num_inference_steps", "1000"])
    assert code == 2 and "--num_inference_steps" in err[0] and "at most 999" in err[0], err


def test_manifest_reruns_accept_memory_levers_and_records_of_the_previous_version(tiny_sd, input_png, tmp_path):
    out = tmp_path / "runs"
    manifest = manifest_file(tmp_path, input_png, [{"id": "a", "target_prompt": PROMPT}])
    argv = ["--pretrained_model_name_or_path", str(tiny_sd), "--manifest", str(manifest), "--output_dir", str(out),
            "--emb_train_steps", "2", "--max_train_steps", "2", "--num_seeds", "1", "--etas", "0.5"]
    assert cli.main(argv) == 0
    assert cli.main(argv + ["--gradient_checkpointing", "--sample_batch_size", "1", "--enable_vae_tiling"]) == 0
    record = json.loads((out / "a" / "imagic_config.json").read_text())
    del record["settings"]  # as imagic-lora 0.1 wrote it: resolved values, no settings as given
    (out / "a" / "imagic_config.json").write_text(json.dumps(record))
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert rows[0]["status"] == "skipped (complete)"


def test_recovering_replacements_scans_each_folder_once(tmp_path, monkeypatch):
    import pathlib

    from imagic_lora.output import recover_interrupted_replacements
    real, scans = pathlib.Path.iterdir, []

    def counting(self):
        if self == tmp_path:
            scans.append(1)
        return real(self)
    monkeypatch.setattr(pathlib.Path, "iterdir", counting)
    recover_interrupted_replacements([tmp_path / f"job{i}" for i in range(500)])
    assert len(scans) == 1


def test_resume_of_a_complete_edit_has_nothing_to_do(tiny_sd, input_png, tmp_path, capsys):
    assert run_inprocess(tiny_sd, input_png, tmp_path / "edit", "--num_seeds", "1", "--etas", "0.5") == 0
    capsys.readouterr()
    assert run_inprocess(tiny_sd, input_png, tmp_path / "edit", "--num_seeds", "1", "--etas", "0.5", "--resume") == 0
    assert "nothing to resume" in capsys.readouterr().out


def test_a_huge_rank_is_refused_up_front(no_model, capsys, tiny_sd, input_png, tmp_path):
    code, err = main_err(no_model, capsys, ["--pretrained_model_name_or_path", tiny_sd, "--input_image", input_png,
                                            "--target_prompt", PROMPT, "--output_dir", tmp_path / "out",
                                            "--rank", "100000000000"])
    assert code == 2 and "--rank" in err[0], err


def test_recovery_leaves_a_hidden_folder_that_is_no_artifact_alone(tmp_path):
    from imagic_lora.output import recover_interrupted_replacements
    old = tmp_path / ".half.old-5"
    (old / "images").mkdir(parents=True)
    (old / "README.md").write_text("half")
    recover_interrupted_replacements([tmp_path / "half"])
    assert old.is_dir() and not (tmp_path / "half").exists()


@pytest.mark.parametrize("change", ["note-in-readme", "own-picture", "new-file"])
def test_overwrite_checks_content_not_names(artifact, tiny_sd, input_png, tmp_path, capsys, change):
    import shutil
    out = tmp_path / "edit"
    shutil.copytree(artifact, out)
    if change == "note-in-readme":
        with open(out / "README.md", "a") as f:
            f.write("\nmy notes about this edit\n")
    elif change == "own-picture":
        Image.new("RGB", (8, 8), "blue").save(out / "images" / "edit.png")
    else:
        (out / "images" / "eta_3.00_seed_9.png").write_bytes((out / "images" / "input.png").read_bytes())
    before = files_of(out)
    assert run_inprocess(tiny_sd, input_png, out, "--num_seeds", "1", "--etas", "0.5", "--overwrite") == 2
    assert "did not write" in capsys.readouterr().err
    assert files_of(out) == before


def test_overwrite_replaces_its_own_artifact_holding_only_its_files(artifact, tiny_sd, input_png, tmp_path):
    import shutil
    out = tmp_path / "edit"
    shutil.copytree(artifact, out)
    assert run_inprocess(tiny_sd, input_png, out, "--num_seeds", "1", "--etas", "0.6", "--overwrite") == 0
    assert (out / "images" / "eta_0.60_seed_11.png").is_file()


def test_a_refused_run_creates_no_folders(no_model, capsys, tiny_sd, input_png, tmp_path):
    code, err = main_err(no_model, capsys, ["--pretrained_model_name_or_path", tiny_sd, "--input_image", input_png,
                                            "--target_prompt", PROMPT, "--output_dir", tmp_path / "new" / "deep" / "out",
                                            "--etas", "99"])
    assert code == 2 and list(tmp_path.iterdir()) == []


def test_wording_of_small_refusals(no_model, capsys, tiny_sd, input_png, tmp_path):
    code, err = main_err(no_model, capsys, ["--pretrained_model_name_or_path", tiny_sd, "--input_image", input_png,
                                            "--target_prompt", PROMPT, "--output_dir", ""])
    assert code == 2 and "--output_dir" in err[0] and "'' is empty" in err[0], err
    manifest = manifest_file(tmp_path, input_png, [{"id": "a", "target_prompt": PROMPT, "seed": 1e300}])
    code, err = main_err(no_model, capsys, ["--pretrained_model_name_or_path", tiny_sd, "--manifest", manifest,
                                            "--output_dir", tmp_path / "out"])
    assert code == 2 and len(err[0]) < 300 and "1e+300" in err[0], err


def test_manifest_null_takes_the_runs_value(tmp_path, input_png):
    from imagic_lora.config import ImagicConfig
    from imagic_lora.jobs import read_manifest
    manifest = manifest_file(tmp_path, input_png, [{"id": "a", "target_prompt": PROMPT, "resolution": None,
                                                    "lora_alpha": None, "guidance_scale": None}])
    (job,) = read_manifest(manifest)
    run = ImagicConfig(output_dir=str(tmp_path), guidance_scale=5.0).resolved("shapes")
    cfg = job.config(run)
    assert cfg.resolution is None and cfg.lora_alpha is None and cfg.guidance_scale == 3.0  # the preset's
    cfg.validate(check_image=False)


def test_load_edit_names_a_corrupt_weights_file(artifact, tiny_sd, tmp_path):
    import shutil

    from diffusers import StableDiffusionPipeline
    from imagic_lora.artifact import load_edit
    folder = tmp_path / "edit"
    shutil.copytree(artifact, folder)
    data = (folder / "pytorch_lora_weights.safetensors").read_bytes()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(data[:len(data) // 2])
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)
    with pytest.raises(ValueError, match="pytorch_lora_weights.safetensors") as info:
        load_edit(pipe, folder)
    assert "\n" not in str(info.value)


def test_a_stale_old_folder_of_the_same_process_id_does_not_break_the_commit(tmp_path):
    import os as _os

    from imagic_lora.output import StagedOutput
    target = tmp_path / "edit"
    target.mkdir()
    (target / "imagic_config.json").write_text(json.dumps({"format": "imagic-lora/1", "files": {}}))
    stale = tmp_path / f".edit.old-{_os.getpid()}"
    stale.mkdir()
    (stale / "keep.txt").write_text("not ours to delete")
    stage = StagedOutput(target)
    out = stage.prepare(resume=False)
    (out / "imagic_config.json").write_text(json.dumps({"format": "imagic-lora/1", "files": {}, "new": True}))
    stage.commit(overwrite=True)
    assert json.loads((target / "imagic_config.json").read_text())["new"]
    assert (stale / "keep.txt").read_text() == "not ours to delete"
