"""Bad input: one line naming the flag, exit code 2, no model loaded, nothing on disk lost."""

from __future__ import annotations

import dataclasses
import json

import pytest
from PIL import Image

from imagic_lora.config import ImagicConfig, build_parser
import imagic_lora.cli as cli
import imagic_lora.recipe as recipe


@pytest.fixture()
def script(monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")
    monkeypatch.setattr(recipe, "load_pipeline", no_model)
    return cli


def run_bad(script, capsys, tiny_sd, **overrides):
    args = {"pretrained_model_name_or_path": str(tiny_sd), "target_prompt": "a red circle",
            "output_dir": str(overrides.pop("tmp") / "out"), **overrides}
    argv = []
    for key, value in args.items():
        argv += [f"--{key}", *([value] if isinstance(value, str) else value)]
    try:
        code = script.main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def corrupt_png(path):
    Image.new("RGB", (64, 64), "red").save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("case,flag", [
    ("missing", "--input_image"), ("folder", "--input_image"), ("not-image", "--input_image"),
    ("truncated", "--input_image"), ("empty-prompt", "--target_prompt"), ("blank-prompt", "--target_prompt"),
    ("unknown-word", "--target_prompt"), ("eta-not-number", "--etas"), ("eta-empty", "--etas"),
    ("output-is-file", "--output_dir"), ("bad-model", "--pretrained_model_name_or_path"),
    ("zero-seeds", "--num_seeds"), ("bad-resolution", "--resolution"),
    ("bias-multiplier", "--timestep_bias_multiplier"), ("bias-range", "--timestep_bias_end"),
    ("bias-begin", "--timestep_bias_begin"), ("bias-portion", "--timestep_bias_portion"),
    ("keep-fraction", "--pick_keep_fraction"), ("place-shift", "--pick_place_shift"),
    ("contrast", "--pick_contrast"), ("score", "--pick_score"),
])
def test_bad_input_is_one_line_naming_the_flag(script, capsys, tiny_sd, input_png, tmp_path, case, flag):
    kwargs = {"tmp": tmp_path, "input_image": str(input_png)}
    if case == "missing":
        kwargs["input_image"] = str(tmp_path / "nope.png")
    elif case == "folder":
        kwargs["input_image"] = str(tmp_path)
    elif case == "not-image":
        (tmp_path / "notes.png").write_text("hello")
        kwargs["input_image"] = str(tmp_path / "notes.png")
    elif case == "truncated":
        kwargs["input_image"] = str(corrupt_png(tmp_path / "cut.png"))
    elif case == "empty-prompt":
        kwargs["target_prompt"] = ""
    elif case == "blank-prompt":
        kwargs["target_prompt"] = "   "
    elif case == "unknown-word":
        kwargs["target_prompt"] = "a purple circle"
    elif case == "eta-not-number":
        kwargs["etas"] = ["0.5", "abc"]
    elif case == "eta-empty":
        kwargs["etas"] = []
    elif case == "output-is-file":
        (tmp_path / "out").write_text("precious")
    elif case == "bad-model":
        kwargs["pretrained_model_name_or_path"] = str(tmp_path / "no-model")
    elif case == "keep-fraction":
        kwargs["pick_keep_fraction"] = "1.5"
    elif case == "place-shift":
        kwargs["pick_place_shift"] = "-0.1"
    elif case == "contrast":
        kwargs["pick_contrast"] = "clip"
    elif case == "score":
        kwargs["pick_score"] = "sum"
    elif case == "zero-seeds":
        kwargs["num_seeds"] = "0"
    elif case == "bad-resolution":
        kwargs["resolution"] = "30"
    elif case == "bias-multiplier":
        kwargs["timestep_bias_multiplier"] = "0"
    elif case == "bias-range":
        kwargs.update(timestep_bias_strategy="range", timestep_bias_begin="500", timestep_bias_end="500")
    elif case == "bias-begin":
        kwargs.update(timestep_bias_strategy="range", timestep_bias_begin="-1", timestep_bias_multiplier="3")
    elif case == "bias-portion":
        kwargs["timestep_bias_portion"] = "0"
    code, err = run_bad(script, capsys, tiny_sd, **kwargs)
    assert code == 2
    assert len(err) == 1, err
    assert flag in err[0]
    if case == "unknown-word":
        assert "'purple'" in err[0]
    if case == "output-is-file":
        assert (tmp_path / "out").read_text() == "precious"


def test_existing_artifact_is_kept_without_overwrite(script, capsys, tiny_sd, input_png, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "imagic_config.json").write_text(json.dumps({"format": "imagic-lora/1", "mine": True}))
    code, err = run_bad(script, capsys, tiny_sd, tmp=tmp_path, input_image=str(input_png))
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0]
    assert json.loads((out / "imagic_config.json").read_text()) == {"format": "imagic-lora/1", "mine": True}


def test_overwrite_replaces_an_earlier_artifact_whole(tiny_sd, input_png, tmp_path):
    from test_cli import run_inprocess
    out = tmp_path / "out"
    assert run_inprocess(tiny_sd, input_png, out, "--num_seeds", "1", "--etas", "0.5") == 0
    assert run_inprocess(tiny_sd, input_png, out, "--overwrite", "--num_seeds", "1", "--etas", "0.7") == 0
    assert (out / "images" / "eta_0.70_seed_11.png").is_file()
    assert not (out / "images" / "eta_0.50_seed_11.png").exists()
    assert json.loads((out / "imagic_config.json").read_text())["etas"] == [0.7]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_crash_leaves_no_artifact_only_resumable_checkpoints(tiny_sd, input_png, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash in step C")
    monkeypatch.setattr(recipe, "generate_images", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        cli.main(["--pretrained_model_name_or_path", str(tiny_sd), "--input_image", str(input_png),
                  "--target_prompt", "a red circle", "--output_dir", str(tmp_path / "out"),
                     "--emb_train_steps", "1", "--max_train_steps", "2"])
    # No folder under the output's name; the hidden partial folder keeps only what --resume needs.
    assert [p.name for p in tmp_path.iterdir()] == [".out.partial"]
    partial = tmp_path / ".out.partial"
    assert not (partial / "imagic_config.json").exists()
    assert sorted(p.name for p in (partial / "checkpoints").iterdir()) == ["B-step-000002", "phase-A", "run.json"]


def test_help_has_one_line_for_every_flag(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(ImagicConfig):
        assert f"--{f.name}" in text, f.name
        assert f.metadata["help"] and "\n" not in f.metadata["help"]


@pytest.mark.parametrize("flags,flag", [
    (["--timestep_bias_strategy", "range", "--timestep_bias_begin", "990", "--timestep_bias_end", "2000"],
     "--timestep_bias_end"),
    (["--timestep_bias_strategy", "later", "--timestep_bias_portion", "0.0001"], "--timestep_bias_portion"),
])
def test_a_bias_outside_the_schedule_is_refused_before_anything_is_written(capsys, tiny_sd, input_png, tmp_path,
                                                                           flags, flag):
    """Checked against the loaded model's 1000-step schedule, not silently ignored."""
    from test_cli import run_inprocess
    code = run_inprocess(tiny_sd, input_png, tmp_path / "out", *flags, "--timestep_bias_multiplier", "3")
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imagic_lora: error")]
    assert code == 2
    assert len(err) == 1 and flag in err[0], err
    assert list(tmp_path.iterdir()) == []
