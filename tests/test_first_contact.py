"""What a new user meets first: --help, a typo, the output of a run, the grid, python -m imagic_lora."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

PROMPT = "a large blue square on a gray background"


def run_python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_help_is_grouped_by_step_with_examples_and_says_each_default_once(capsys):
    from imagic_lora.config import GROUPS, ImagicConfig, build_parser
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "{'option_strings'" not in text and "(default: None)" not in text
    for title in GROUPS.values():
        assert f"\n{title}:\n" in text, title
    assert text.count("imagic-lora --pretrained_model_name_or_path") >= 2 and "examples:" in text
    # Each flag's entry (its help, wrapped) names its default at most once.
    entries = re.split(r"\n  --", text.split("options:", 1)[-1])
    for entry in entries:
        assert entry.lower().count("default") <= 1, entry
    for f in dataclasses.fields(ImagicConfig):
        assert f"--{f.name}" in text, f.name


def test_help_and_typos_come_before_any_heavy_import():
    code = ("import sys, imagic_lora.cli as c\n"
            "for argv in (['--help'], ['--target_promt', 'x']):\n"
            "    try:\n        c.main(argv)\n    except SystemExit as e:\n        print('exit', e.code)\n"
            "print('heavy:', sorted(m for m in ('torch', 'diffusers', 'transformers', 'PIL') if m in sys.modules))")
    proc = run_python(code)
    assert "exit 0" in proc.stdout and "exit 2" in proc.stdout and "heavy: []" in proc.stdout, proc.stdout[-500:]
    assert "unrecognized argument --target_promt: did you mean --target_prompt?" in proc.stderr


def test_a_bad_number_is_refused_before_any_heavy_import():
    code = ("import sys, imagic_lora.cli as c\nprint('exit', c.main(['--etas', '0', '99']))\n"
            "print('heavy:', sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    proc = run_python(code)
    assert "exit 2" in proc.stdout and "heavy: []" in proc.stdout, proc.stdout
    assert proc.stderr.strip().splitlines() == ["imagic_lora: error: --etas: 99.0 is outside [-10, 10]"]


def test_python_dash_m_imagic_lora_is_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "imagic_lora", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "step A: optimise the text embedding" in proc.stdout


def test_the_grid_shows_the_input_once_and_labels_the_pick():
    from imagic_lora.images import contact_sheet
    etas, seeds = [0.0, 1.0], [0, 1]
    images = {(e, s, 1.0): Image.new("RGB", (32, 32), (0, 0, 255)) for e in etas for s in seeds}
    sheet = contact_sheet(Image.new("RGB", (32, 32), (255, 0, 0)), images, etas, seeds, picked=(1.0, 1, 1.0))
    cell, label = 128, 18
    assert sheet.size == (3 * cell, 2 * (cell + label))
    assert sheet.getpixel((cell // 2, label + cell // 2)) == (255, 0, 0)  # the input, top left
    assert sheet.getpixel((cell // 2, cell + 2 * label + cell // 2)) == (255, 255, 255)  # not again below
    assert sheet.getpixel((2 * cell + 1, cell + 2 * label + 1)) == (255, 0, 255)  # the pick's frame
    # Two strengths: a column per strength and eta; eta 0 drawn at the first only leaves its other cell blank.
    images.update({(1.0, s, 0.8): Image.new("RGB", (32, 32), (0, 255, 0)) for s in seeds})
    sheet = contact_sheet(Image.new("RGB", (32, 32), (255, 0, 0)), images, etas, seeds, [1.0, 0.8],
                          picked=(1.0, 0, 0.8))
    assert sheet.size == (5 * cell, 2 * (cell + label))
    assert sheet.getpixel((3 * cell + cell // 2, label + cell // 2)) == (255, 255, 255)  # eta 0 at 0.8: not drawn
    assert sheet.getpixel((4 * cell + cell // 2, label + cell // 2)) == (0, 255, 0)  # eta 1 at 0.8
    assert sheet.getpixel((4 * cell + 1, label + 1)) == (255, 0, 255)  # the pick's frame, seed 0


@pytest.fixture(scope="module")
def quiet_run(tiny_sd, input_png, tmp_path_factory):
    """A run as a user starts it (the console's module entry), its whole output kept."""
    out = tmp_path_factory.mktemp("quiet") / "edit"
    proc = subprocess.run([sys.executable, "-m", "imagic_lora", "--pretrained_model_name_or_path", str(tiny_sd),
                           "--input_image", str(input_png), "--target_prompt", PROMPT, "--output_dir", str(out),
                           "--emb_train_steps", "3", "--max_train_steps", "3", "--num_seeds", "2",
                           "--num_inference_steps", "2"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, proc


def test_a_run_says_what_it_edits_and_none_of_the_libraries_known_noise(quiet_run):
    out, proc = quiet_run
    text = proc.stdout + proc.stderr
    assert re.search(r"imagic_lora: editing \S+disc\.png towards 'a large blue square on a gray background'", text)
    for noise in ("gemm_4bit_forward", "publisher trust", "requires torchvision", "Loading pipeline components",
                  "Loading weights", "No LoRA keys associated"):
        assert noise not in text, noise
    # No progress bar in a log (the output is a pipe here, not a terminal): lines, not carriage returns.
    assert "\r" not in text


def test_reloading_through_the_library_gives_the_pick(quiet_run, tiny_sd):
    import numpy as np
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from imagic_lora import generate_image, load_edit
    out, _ = quiet_run
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None, dtype=torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    edit = load_edit(pipe, out)
    assert (edit.recommended_eta, edit.recommended_seed) == (edit.picked["eta"], edit.picked["seed"])
    pipe.fuse_lora()
    image = generate_image(pipe, edit.embeds(edit.recommended_eta), seed=edit.recommended_seed,
                           guidance_scale=edit.config["guidance_scale"],
                           num_inference_steps=edit.config["num_inference_steps"])
    picked = np.asarray(Image.open(out / "images" / "edit.png"), dtype=np.int16)
    assert np.abs(np.asarray(image, dtype=np.int16) - picked).max() <= 1  # the run drew 8 a call: rounding


def test_a_manifest_run_says_which_edit_is_running(tiny_sd, input_png, tmp_path):
    import json
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps({"id": i, "image": str(input_png), "target_prompt": PROMPT}) + "\n"
                                for i in ("first", "second")))
    proc = subprocess.run([sys.executable, "-m", "imagic_lora", "--pretrained_model_name_or_path", str(tiny_sd),
                           "--manifest", str(manifest), "--output_dir", str(tmp_path / "runs"),
                           "--emb_train_steps", "2", "--max_train_steps", "2", "--num_seeds", "1", "--etas", "0.5",
                           "--num_inference_steps", "2"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"imagic_lora: \[1/2\] first: editing .*\n(.*\n)*imagic_lora: \[1/2\] first: done in \d+ s "
                     r"\(A \d+ s, B \d+ s, C \d+ s, pick \d+ s\)", proc.stdout), proc.stdout
    assert "[2/2] second: done in" in proc.stdout


def test_ctrl_c_on_the_plain_command_ends_in_its_own_line_and_exit_130(tiny_sd, input_png, tmp_path):
    """Without accelerate's launcher in between (single device), Ctrl-C ends in the run's one line and
    the documented code; the launcher's own additions are documented in the README."""
    out = tmp_path / "edit"
    proc = subprocess.Popen([sys.executable, "-m", "imagic_lora", "--pretrained_model_name_or_path", str(tiny_sd),
                             "--input_image", str(input_png), "--target_prompt", PROMPT, "--output_dir", str(out),
                             "--emb_train_steps", "3", "--max_train_steps", "300", "--checkpointing_steps", "10",
                             "--train_batch_size", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 300
    while not list((tmp_path / ".edit.partial" / "checkpoints").glob("B-step-*/state.json")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("imagic_lora: interrupted; step B's checkpoint at step")


def test_the_console_command_is_installed():
    import shutil
    command = shutil.which("imagic-lora", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    assert command, "pip install -e . installs the imagic-lora command"
    proc = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "step B: fine-tune a LoRA" in proc.stdout


def test_the_known_bitsandbytes_messages_are_dropped_and_no_other(caplog):
    """bitsandbytes' 4-bit-kernel message, whatever its reason (no kernels package; with it, a kernel refused as
    untrusted or not cached offline), is dropped; another message of the same logger is kept."""
    import logging

    from imagic_lora.quiet import silence_known_messages
    silence_known_messages()
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.backends.cpu.ops"):
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'.")
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: Kernel repository "
                    "'kernels-community/quantization-bitsandbytes' could not verify publisher trust status.")
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: Version 1 of 'kernels-community/"
                    "quantization-bitsandbytes' is not available in the local cache and Hugging Face Hub is in "
                    "offline mode.")
        log.warning("Something else about gemm_4bit_forward")
    assert [r.getMessage() for r in caplog.records] == ["Something else about gemm_4bit_forward"]
