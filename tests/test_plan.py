"""Presets per model family, the precision and memory plan, the dry run, and the GPU-path fixes that can
run on a CPU."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import threading
import weakref

import pytest
import torch

import imagic_lora.architectures as architectures
import imagic_lora.cli as cli
import imagic_lora.recipe as recipe
from test_cli import run_inprocess

PROMPT = "a large blue square on a gray background"


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """SD 1.5, SD 2.1 (v-prediction) and SDXL as folders of their published configs, no weights."""
    root = tmp_path_factory.mktemp("configs")
    return {model: architectures.write_configs(model, root / model) for model in ("sd15", "sd21", "sdxl")}


def test_the_preset_is_read_from_the_model(configs, tiny_sd, tmp_path):
    from imagic_lora.config import BUNDLED_MODEL, BUNDLED_MODEL_V2
    from imagic_lora.presets import detect_preset
    assert detect_preset(str(BUNDLED_MODEL)) == "shapes" and detect_preset(str(tiny_sd)) == "shapes"
    assert detect_preset(str(BUNDLED_MODEL_V2)) == "shapes-v2"  # its vocabulary has "pointing"
    assert detect_preset(str(configs["sd15"])) == "sd1"
    assert detect_preset(str(configs["sd21"])) == "sd2-v"
    assert detect_preset(str(configs["sdxl"])) == "sdxl"
    epsilon = architectures.write_configs("sd21", tmp_path / "sd2-base")
    sched = json.loads((epsilon / "scheduler" / "scheduler_config.json").read_text())
    (epsilon / "scheduler" / "scheduler_config.json").write_text(json.dumps({**sched, "prediction_type": "epsilon"}))
    assert detect_preset(str(epsilon)) == "sd2"


def test_a_flag_given_wins_over_the_preset(configs):
    from imagic_lora.config import ImagicConfig, parse_args
    from imagic_lora.presets import PRESETS
    cfg = parse_args(["--pretrained_model_name_or_path", str(configs["sd15"]), "--learning_rate", "5e-5",
                      "--etas", "0.9"]).resolved()
    assert cfg.preset == "sd1" and cfg.learning_rate == 5e-5 and cfg.etas == [0.9]
    assert cfg.emb_learning_rate == PRESETS["sd1"].values["emb_learning_rate"] and cfg.guidance_scale == 7.5
    forced = ImagicConfig(pretrained_model_name_or_path=str(configs["sd15"]), preset="shapes").resolved()
    assert forced.preset == "shapes" and forced.guidance_scale == 3.0


@pytest.mark.parametrize("model,preset,resolution", [("sd15", "sd1", 512), ("sd21", "sd2-v", 768),
                                                      ("sdxl", "sdxl", 1024)])
def test_dry_run_prints_the_plan_and_writes_nothing(configs, input_png, tmp_path, capsys, model, preset, resolution):
    code = cli.main(["--pretrained_model_name_or_path", str(configs[model]), "--input_image", str(input_png),
                     "--target_prompt", "a photo of a red circle", "--output_dir", str(tmp_path / "out"), "--dry_run"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"imagic_lora: preset: {preset} (its values are not yet measured on real weights" in out
    assert "estimated peak memory:" in out and f"UNet forward-equivalents at {resolution} px" in out
    assert "--learning_rate 0.0001" in out and "--gradient_checkpointing False" in out  # every setting, resolved
    assert list(tmp_path.iterdir()) == []


def test_the_shapes_dry_run_says_nothing_of_unmeasured_values(input_png, tmp_path, capsys):
    assert cli.main(["--input_image", str(input_png), "--target_prompt", "a small blue circle on a white background",
                     "--output_dir", str(tmp_path / "out"), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "imagic_lora: preset: shapes-v2\n" in out and "not yet measured" not in out  # the default model's
    assert "--strength 0.8 1.0\n" in out and "--max_train_steps 75\n" in out  # its own values, resolved


def test_a_cpu_run_on_fewer_threads_than_cores_says_how_to_use_them(monkeypatch):
    """`accelerate launch` with no config at all runs one thread per process on a machine without a GPU (1.6x the
    bundled edit's time on 2 cores, docs/BENCHMARKS.md): the plan says so and names the fix. Not launched, or
    launched with the CPU setting, the threads are the user's choice (the benchmark's workers run one each)."""
    import psutil
    import torch

    from imagic_lora.config import ImagicConfig
    from imagic_lora.plan import Target, make_plan
    cfg = ImagicConfig().resolved()
    lines = lambda target: "\n".join(make_plan(cfg, target)[1].lines())  # noqa: E731
    one = lines(Target("cpu", "cpu", threads=1, cores=2))
    assert "torch runs 1 thread(s) on 2 CPU cores" in one and "accelerate_configs/cpu.yaml" in one
    assert "thread" not in lines(Target("cpu", "cpu", threads=2, cores=2))
    two = lines(Target("cpu", "cpu", threads=1, cores=2, processes=2))
    assert "--num_cpu_threads_per_process 2" in two and "cpu.yaml" not in two

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert Target.current() == Target("cpu", "cpu")  # not launched by accelerate
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    assert Target.current() == Target("cpu", "cpu")  # launched with use_cpu: every core, or the user's count
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert Target.current() == Target("cpu", "cpu", threads=1, cores=2, processes=2)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: None)  # cannot tell the physical cores
    assert "thread" not in lines(Target.current())


def test_precision_follows_the_flag_then_the_accelerate_config_then_the_device():
    from imagic_lora.plan import decide_precision
    assert decide_precision("fp16", "bf16", "cuda", True) == "fp16"
    assert decide_precision(None, "no", "cuda", True) == "no"
    assert decide_precision(None, None, "cuda", True) == "bf16"
    assert decide_precision(None, None, "cuda", False) == "fp16"
    assert decide_precision(None, None, "cpu", True) == "no"


def test_the_plan_turns_checkpointing_on_only_where_the_peak_would_not_fit(configs, tmp_path):
    from imagic_lora.config import ImagicConfig
    from imagic_lora.errors import ImagicInputError
    from imagic_lora.plan import GIB, Target, make_plan
    cfg = ImagicConfig(pretrained_model_name_or_path=str(configs["sd15"]), sample_batch_size=1).resolved()
    roomy, plan = make_plan(cfg, Target("cuda", "a 80 GB card", 80 * GIB, True))
    assert roomy.mixed_precision == "bf16" and roomy.allow_tf32 and roomy.gradient_checkpointing is False
    without = max(plan.peak_gib.values())
    assert without == plan.peak_gib["B"]  # one image per call: step B's training is the peak
    tight = without / 0.85 * 0.97 * GIB  # fits only with checkpointing
    cfg_tight, plan_tight = make_plan(cfg, Target("cuda", "a small card", int(tight), True))
    assert cfg_tight.gradient_checkpointing is True and max(plan_tight.peak_gib.values()) < without
    assert any("checkpointing is on" in note for note in plan_tight.notes)
    # Step C's images per call (4 at 512 px when not given) come down to fit a card too.
    default_c = ImagicConfig(pretrained_model_name_or_path=str(configs["sd15"])).resolved()
    _, four = make_plan(default_c, Target("cuda", "a 80 GB card", 80 * GIB, True))
    fewer, plan_fewer = make_plan(default_c, Target("cuda", "a card", int(four.peak_gib["C"] / 0.85 * 0.9 * GIB), True))
    assert fewer.sample_batch_size in (1, 2) and plan_fewer.peak_gib["C"] < four.peak_gib["C"]
    with pytest.raises(ImagicInputError, match="--train_batch_size 1") as info:
        make_plan(cfg, Target("cuda", "a 2 GB card", 2 * GIB, True))
    assert "\n" not in str(info.value)
    explicit, _ = make_plan(ImagicConfig(pretrained_model_name_or_path=str(configs["sd15"]),
                                         gradient_checkpointing=False, mixed_precision="fp16").resolved(),
                            Target("cuda", "a 80 GB card", 80 * GIB, True))
    assert explicit.gradient_checkpointing is False and explicit.mixed_precision == "fp16"


def test_the_sd15_plan_counts_the_work_the_issue_estimated(configs):
    """SD 1.5 at 512 px: a UNet forward is 0.80 TFLOP; the defaults issue 25 started from (A 300 x 4 draws,
    B 200 x 4, 24 images of 25 steps, the pick at 16 noise levels) cost about 5 PFLOP; the SD 1.x preset's
    default edit at most half of it, in UNet forward-equivalents."""
    from imagic_lora.config import ImagicConfig
    from imagic_lora.plan import Target, make_plan
    then = ImagicConfig(pretrained_model_name_or_path=str(configs["sd15"]), emb_train_steps=300, max_train_steps=200,
                        train_batch_size=4, etas=[0.0, 0.8, 1.0], num_seeds=8, num_reconstruction_seeds=8,
                        num_inference_steps=25, guidance_scale=3.0, pick_timesteps=16)
    _, plan = make_plan(then.resolved(), Target("cpu", "cpu"))
    assert 0.79e12 < plan.costs.forward_flops < 0.81e12
    total = sum(w["tflop"] for w in plan.work.values())
    assert 4000 < total < 6000, plan.work
    _, now = make_plan(ImagicConfig(pretrained_model_name_or_path=str(configs["sd15"])).resolved(), Target("cpu", "cpu"))
    forwards = lambda p: sum(w["unet_forwards"] for w in p.work.values())  # noqa: E731
    assert forwards(now) <= forwards(plan) / 2, (now.work, plan.work)


def test_the_bundled_edit_does_at_most_half_the_work_issue_25_started_from():
    """The bundled model's default edit against the defaults issue 25 started from (b558d1c: A 300 x 4 draws,
    B 200 x 4, 24 images of 25 steps, the pick at 16 noise levels), in UNet forward-equivalents."""
    from imagic_lora.config import BUNDLED_MODEL, ImagicConfig
    from imagic_lora.plan import Target, make_plan
    v1 = str(BUNDLED_MODEL)  # the bundled model of then, world version 1's
    then = ImagicConfig(pretrained_model_name_or_path=v1, emb_train_steps=300, train_batch_size=4,
                        num_reconstruction_seeds=8, num_inference_steps=25, pick_timesteps=16).resolved()
    now = ImagicConfig(pretrained_model_name_or_path=v1).resolved()
    default = ImagicConfig().resolved()  # world version 2's model, the default since issue 22
    assert now.preset == then.preset == "shapes" and default.preset == "shapes-v2"
    forwards = {name: sum(w["unet_forwards"] for w in make_plan(cfg, Target("cpu", "cpu"))[1].work.values())
                for name, cfg in (("then", then), ("now", now), ("default", default))}
    assert forwards["now"] <= forwards["then"] / 2, forwards
    # Version 2's preset draws twice the images (two strengths, four etas) at half step B: more than version 1's
    # halved schedule, still less than the schedule issue 25 started from (docs/BENCHMARKS.md).
    assert forwards["now"] < forwards["default"] < forwards["then"], forwards


def test_the_record_holds_the_work_done_as_counted(tiny_sd, input_png, tmp_path):
    assert run_inprocess(tiny_sd, input_png, tmp_path / "e") == 0
    record = json.loads((tmp_path / "e" / "imagic_config.json").read_text())
    work, plan = record["work"], record["plan"]
    # FAST: A 8 steps x 2 draws, B 8 x 2, C 5 images (2 seeds x 2 etas > 0, eta 0 for one seed) x 4 steps x 2
    # (guided), the pick 4 candidates + the input at the shapes preset's 8 noise levels, each scored twice
    assert work["A"]["unet_samples"] == 16 and work["B"]["unet_samples"] == 16
    assert work["C"]["unet_samples"] == 5 * 4 * 2 and work["pick"]["unet_samples"] == 5 * 8 * 2
    for phase in ("A", "B", "C", "pick"):
        assert work[phase]["unet_forwards"] == pytest.approx(plan["estimated_work"][phase]["unet_forwards"], rel=0.02)
    assert plan["preset"] == "shapes" and record["preset"] == "shapes"


# ---- the GPU-path fixes, where a CPU can run them ------------------------------------------------------

def test_sdxl_in_fp16_with_its_own_vae_draws_and_encodes(tmp_path):
    """SDXL's own VAE overflows in fp16; it stays fp16 with force_upcast and is upcast for each encode and
    decode, as the stock pipeline does (before: kept fp32, and step C crashed on fp16 latents)."""
    from imagic_lora.conditioning import PromptEmbeds
    from imagic_lora.diffusion import encode_image_latents
    from imagic_lora.generate import generate_images
    from imagic_lora.models import load_pipeline
    from imagic_lora.tiny import make_tiny_sdxl
    pipe = load_pipeline(str(make_tiny_sdxl(tmp_path / "xl")), weight_dtype=torch.float16)
    assert pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast
    latents = encode_image_latents(pipe.vae, torch.zeros(1, 3, 32, 32))
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all() and pipe.vae.dtype == torch.float16
    embeds = PromptEmbeds(torch.randn(1, 77, 64), torch.randn(1, 16))
    (image,) = generate_images(pipe, [embeds], [0], guidance_scale=3.0, num_inference_steps=2, resolution=32)
    assert image.size == (32, 32) and pipe.vae.dtype == torch.float16


def test_a_diffusers_that_ignores_dtype_is_refused(tiny_sd, monkeypatch):
    from diffusers import StableDiffusionPipeline

    from imagic_lora.models import load_pipeline
    real = StableDiffusionPipeline.from_pretrained.__func__

    def old_diffusers(cls, *args, dtype=None, **kwargs):  # diffusers < 0.40 dropped dtype= silently
        return real(cls, *args, **kwargs)
    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", classmethod(old_diffusers))
    with pytest.raises(RuntimeError, match="diffusers >= 0.40"):
        load_pipeline(str(tiny_sd), weight_dtype=torch.bfloat16)


def test_edits_release_their_optimisers(tiny_sd, input_png, tmp_path, monkeypatch):
    from imagic_lora.config import ImagicConfig
    made = []
    real = recipe.make_optimizer

    def tracked(*args, **kwargs):
        optimizer = real(*args, **kwargs)
        made.append(weakref.ref(optimizer))
        return optimizer
    monkeypatch.setattr(recipe, "make_optimizer", tracked)
    cfg = ImagicConfig(pretrained_model_name_or_path=str(tiny_sd), input_image=str(input_png), target_prompt=PROMPT,
                       emb_train_steps=2, max_train_steps=2, num_seeds=1, etas=[0.5], num_inference_steps=2)
    cfg = cfg.resolved()
    run = recipe.ImagicRecipe(cfg).setup()
    for i in range(3):
        run.edit(dataclasses.replace(cfg, output_dir=str(tmp_path / f"e{i}")))
        run.cleanup()
        assert run.accelerator._optimizers == []
    import gc
    gc.collect()
    assert len(made) == 3 and all(ref() is None for ref in made)
    assert not any(p.requires_grad for p in run.pipe.unet.parameters())


def test_the_summary_gathers_every_process_without_a_collective(tmp_path):
    from types import SimpleNamespace

    from imagic_lora.runner import gather_rows

    def no_collective():
        raise AssertionError("a collective would time out when the processes' shares differ")
    accelerator = SimpleNamespace(process_index=0, num_processes=2, is_main_process=True,
                                  wait_for_everyone=no_collective)
    # The late process writes its share with gather_rows itself: a bare write_text can be read half-written
    # (CI once read an empty file), and the writer's atomic replace is part of what is tested.
    other = SimpleNamespace(process_index=1, num_processes=2, is_main_process=False, wait_for_everyone=no_collective)
    late = threading.Timer(1.0, lambda: gather_rows(other, str(tmp_path), [{"id": "b"}], ["a", "b"]))
    late.start()
    rows = gather_rows(accelerator, str(tmp_path), [{"id": "a"}], ["a", "b"])
    assert [r["id"] for r in rows] == ["a", "b"] and (tmp_path / "summary.jsonl").is_file()
    assert not list(tmp_path.glob(".summary.rank*"))


def test_the_fp16_gradient_scaler_is_in_step_bs_checkpoints(tmp_path):
    from imagic_lora.checkpoint import CheckpointStore
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    scaler.scale(param.sum() * 2).backward()
    scaler.step(optimizer)
    scaler.update(new_scale=256.0)
    store = CheckpointStore(tmp_path, 2)
    generator = torch.Generator().manual_seed(0)
    store.save("B-step-000001", recipe.b_checkpoint(1, [0.5], {"p": param}, optimizer, generator.get_state(), scaler))
    fresh = torch.amp.GradScaler("cpu", init_scale=1024.0)
    step, _ = recipe.resume_step_b(store, {"p": torch.nn.Parameter(torch.zeros(3))},
                                   torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=0.1),
                                   torch.Generator(), 1, scaler=fresh)
    assert step == 1 and fresh.get_scale() == 256.0


def test_a_full_fine_tune_checkpoints_only_at_its_end(tiny_sd, input_png, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash in step C")
    monkeypatch.setattr(recipe, "generate_images", crash)
    with pytest.raises(RuntimeError):
        run_inprocess(tiny_sd, input_png, tmp_path / "full", "--full_finetune", "--no-use_8bit_adam",
                      "--checkpointing_steps", "1", "--max_train_steps", "4")
    steps = sorted(p.name for p in (tmp_path / ".full.partial" / "checkpoints").glob("B-step-*"))
    assert steps == ["B-step-000004"]


def test_backward_and_the_optimiser_step_run_outside_autocast(tiny_sd, input_png, tmp_path, monkeypatch):
    from accelerate import Accelerator
    seen = []
    real = Accelerator.backward

    def recording(self, loss, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real(self, loss, **kwargs)
    monkeypatch.setattr(Accelerator, "backward", recording)
    assert run_inprocess(tiny_sd, input_png, tmp_path / "bf16", "--mixed_precision", "bf16", "--no-pick_edit",
                         "--emb_train_steps", "2", "--max_train_steps", "2", "--etas", "0.5", "--num_seeds", "1") == 0
    assert seen and not any(seen)


def test_noise_drawn_a_chunk_ahead_is_the_noise_drawn_per_step():
    """NoiseDraws copies chunks to an accelerator without waiting; the values, and the generator state a
    checkpoint keeps, are those of one draw per step."""
    from imagic_lora.diffusion import NoiseDraws, draw_noise
    latents = torch.zeros(1, 4, 8, 8)
    draws = NoiseDraws(latents, 2, 1000, torch.Generator().manual_seed(3))
    draws.chunk = 5  # as on an accelerator (on a CPU it draws one at a time)
    reference = torch.Generator().manual_seed(3)
    for k in range(7):
        assert torch.equal(draws.generator_state(), reference.get_state()), k
        t, n = draws.next()
        t_ref, n_ref = draw_noise(latents, 2, 1000, reference)
        assert torch.equal(t, t_ref) and torch.equal(n, n_ref)


def test_artifact_files_are_readable_like_the_users_own(tiny_sd, input_png, tmp_path):
    old = os.umask(0o022)
    try:
        assert run_inprocess(tiny_sd, input_png, tmp_path / "e", "--num_seeds", "1", "--etas", "0.5") == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "e").rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_the_model_card_names_the_bundled_model_portably_and_links_nothing_unreal(tmp_path):
    from imagic_lora.artifact import write_model_card
    config = {"full_finetune": False, "family": "sd", "artifact_name": "edit",
              "base_model": "imagic_lora/bundled/shapes-sd", "pretrained_model_name_or_path": "/somewhere/shapes-sd",
              "target_prompt": "a blue circle", "recommended_eta": 0.8, "pipeline_class": "StableDiffusionPipeline",
              "scheduler_class": "DDIMScheduler", "guidance_scale": 3.0, "num_inference_steps": 25, "seed": 0,
              "revision": None, "emb_train_steps": 1, "emb_learning_rate": 1, "max_train_steps": 1,
              "learning_rate": 1, "rank": 8, "lora_alpha_used": 8, "lora_target_module_list": [],
              "picked": {"eta": 1.0, "seed": 4, "calibrated": True}}
    write_model_card(tmp_path, config)
    card = (tmp_path / "README.md").read_text()
    assert "github.com" not in card and "/somewhere" not in card
    assert "from_pretrained(BUNDLED_MODEL" in card and "base_model:" not in card
    assert "eta = 1.0" in card and "manual_seed(4)" in card
    config.update(base_model="imagic_lora/bundled/shapes-sd-v2")  # world version 2's model, by its own constant
    write_model_card(tmp_path, config)
    card = (tmp_path / "README.md").read_text()
    assert "import BUNDLED_MODEL_V2" in card and "from_pretrained(BUNDLED_MODEL_V2" in card and "/somewhere" not in card
    from imagic_lora.config import BUNDLED_MODEL_V2
    from imagic_lora.recipe import base_model_name
    assert base_model_name(str(BUNDLED_MODEL_V2)) == "imagic_lora/bundled/shapes-sd-v2"
    config.update(base_model="stable-diffusion-v1-5/stable-diffusion-v1-5", picked={"eta": 0.7, "seed": 2,
                                                                                    "calibrated": False})
    write_model_card(tmp_path, config)
    card = (tmp_path / "README.md").read_text()
    assert "base_model: stable-diffusion-v1-5/stable-diffusion-v1-5" in card and "suggestion" in card


def test_the_optimiser_is_8bit_where_its_memory_matters_and_the_flag_wins():
    from imagic_lora.plan import decide_optimizer
    assert decide_optimizer(None, "cuda") is True  # bitsandbytes is installed here
    assert decide_optimizer(None, "cpu") is False  # torch's fused AdamW: several times faster per step there
    assert decide_optimizer(True, "cpu") is True and decide_optimizer(False, "cuda") is False
