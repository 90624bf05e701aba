"""The one configuration of an Imagic-LoRA edit: a dataclass whose fields are the CLI flags.

Every field carries its one-line help text; :func:`build_parser` turns the dataclass into an
``argparse`` parser, so ``--help`` and the config can never drift apart. :meth:`ImagicConfig.validate`
checks the input files, prompts and output folder before any model is loaded; every error
names the flag to change.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ImageFileError, ImagicInputError
from .output import OutputError, check_output_dir, check_writable

#: The first model the package shipped: a small Stable-Diffusion-format model of the "shapes world", version 1
#: (kept so that its artifacts still load).
BUNDLED_MODEL = Path(__file__).resolve().parent / "bundled" / "shapes-sd"
#: The default model: the shapes world's version 2 (triangles that point up, down, left or right;
#: docs/shapes_model.md), the model of its benchmark.
BUNDLED_MODEL_V2 = Path(__file__).resolve().parent / "bundled" / "shapes-sd-v2"
#: How an artifact names each bundled model (its place in the package, the same on every machine) -> the
#: constant that holds its path here.
BUNDLED_MODELS = {"imagic_lora/bundled/shapes-sd": "BUNDLED_MODEL",
                  "imagic_lora/bundled/shapes-sd-v2": "BUNDLED_MODEL_V2"}
#: What runs when no image is given: a bundled photo the bundled model never saw, and an edit.
DEFAULT_EXAMPLE = Path(__file__).resolve().parent / "bundled" / "examples" / "red_circle.png"
DEFAULT_TARGET_PROMPT = "a small blue circle on a white background"

#: LoRA target-module presets. Attention projections are diffusers' default for LoRA; the
#: larger presets add the feed-forward layers and the ResNet convolutions (kohya's "LoCon").
LORA_TARGET_PRESETS = {
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    "attn_ff": ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"],
    "attn_ff_conv": [
        "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
        "conv1", "conv2", "conv_shortcut", "time_emb_proj",
    ],
}

SCHEDULERS = ("ddim", "dpmsolver++", "euler", "euler_a", "pndm", "model")
MAX_ETA = 10.0  # |eta| beyond this is no edit, and its image name would not be a sane file name
MAX_SEED = 2 ** 63 - 1
MAX_RESOLUTION = 2048  # twice SDXL's native side; an absurd value would otherwise try to allocate it
MAX_RANK = 1024  # a LoRA is low-rank: SD's widest layers have 1280 (2560 inputs) features


def _field(default, help: str, group: str, **kwargs):
    """A dataclass field whose metadata carries the flag's help text, its group in ``--help`` and
    argparse extras. A default of None on a preset setting means: the model's preset decides."""
    metadata = {"help": help, "group": group, **kwargs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


#: The groups of ``--help``, in order, as the README's table has them.
GROUPS = {
    "model": "the base model",
    "input": "input",
    "output": "output",
    "A": "step A: optimise the text embedding",
    "B": "step B: fine-tune a LoRA",
    "memory": "precision and memory",
    "C": "step C: draw the edit",
    "pick": "the automatic pick",
}


@dataclass
class ImagicConfig:
    # --- model -------------------------------------------------------------------------
    pretrained_model_name_or_path: str = _field(
        str(BUNDLED_MODEL_V2), "Base model: a hub id or a local diffusers folder (SD 1.x/2.x/XL); the bundled "
        "shapes-world model (version 2) when not given.", "model")
    revision: str | None = _field(None, "Git revision of the base model on the hub.", "model")
    variant: str | None = _field(None, "Weights variant of the base model, e.g. fp16.", "model")
    pretrained_vae_model_name_or_path: str | None = _field(
        None, "Optional replacement VAE (hub id or folder), e.g. an fp16-safe SDXL VAE.", "model")
    preset: str | None = _field(
        None, "Defaults for the model family: shapes, shapes-v2, sd1, sd2, sd2-v or sdxl; read from the model when "
        "not given. A flag you give overrides its value.", "model",
        choices=(None, "shapes", "shapes-v2", "sd1", "sd2", "sd2-v", "sdxl"))
    # --- input -------------------------------------------------------------------------
    input_image: str | None = _field(
        None, "The image to edit (PNG/JPEG/WebP...); a bundled example photo when not given.", "input")
    target_prompt: str | None = _field(
        None, "The edit, written as a description of the wanted image; the example's edit when not given.", "input")
    manifest: str | None = _field(
        None, "Many edits: a JSON Lines file of {id, image, target_prompt, optional overrides}.", "input")
    tedbench: str | None = _field(
        None, "Many edits: a TEdBench folder (input_list.json with img_name, target_text).", "input")
    resolution: int | None = _field(
        None, "Square side the image is resized to; the model's native resolution when not given.", "input")
    resize_mode: str = _field(
        "center_crop", "How a non-square image becomes square: center_crop (keeps aspect) or stretch.", "input",
        choices=("center_crop", "stretch"))
    # --- output ------------------------------------------------------------------------
    output_dir: str = _field("imagic-output", "Folder for the images and the edit artifact.", "output")
    overwrite: bool = _field(
        False, "Replace an earlier imagic-lora artifact in --output_dir (manifest: redo finished jobs).", "output")
    resume: bool = _field(False, "Continue an interrupted run from its last checkpoint.", "output")
    dry_run: bool = _field(
        False, "Print the plan (preset, precision, memory, work) and every resolved setting, then exit.", "output")
    checkpointing_steps: int = _field(
        50, "Step B: save a resumable checkpoint every this many steps (0: never).", "output")
    checkpoints_total_limit: int = _field(2, "Keep at most this many step-B checkpoints.", "output")
    lora_budget: float | None = _field(
        None, "The saved LoRA keeps at most this share of the trained adapter's parameters: a low-rank "
        "truncation keeping the most of its weight update per parameter, stored in fp16 (1: every parameter); step "
        "C draws with the LoRA as saved. Preset: 1 on the shapes model, 0.25 on Stable Diffusion.", "output")
    report_to: str | None = _field(None, "Log losses to this tracker (tensorboard).", "output",
                                   choices=(None, "tensorboard"))
    seed: int = _field(0, "Seed of every random draw (timesteps, noise, LoRA init, sampling).", "output")
    # --- A: embedding optimisation (preset values: imagic_lora/presets.py) ---------------
    emb_train_steps: int | None = _field(
        None, "Step A: Adam steps on the text embedding (paper: 1000 at 2e-3 on SD).", "A")
    emb_learning_rate: float | None = _field(None, "Step A: learning rate of the embedding.", "A")
    emb_train_batch_size: int | None = _field(
        None, "Step A: noise draws (timesteps) per step; --train_batch_size when not given.", "A")
    freeze_pooled_embeds: bool = _field(
        False, "Step A, SDXL: keep the pooled text embedding at the target's (optimise the sequence only).", "A")
    # --- B: fine-tuning ----------------------------------------------------------------
    max_train_steps: int | None = _field(
        None, "Step B: fine-tuning steps (paper: 1500 of the full UNet; a LoRA needs far fewer).", "B")
    learning_rate: float | None = _field(None, "Step B: learning rate of the LoRA (or UNet) weights.", "B")
    train_batch_size: int | None = _field(
        None, "Noise draws (timesteps) of the one input image per optimisation step, in B (and in A unless "
        "--emb_train_batch_size is given).", "B")
    max_grad_norm: float | None = _field(
        None, "Step B: clip the gradient norm to this (0: no clipping).", "B")
    lr_scheduler: str = _field(
        "constant", "Learning-rate schedule of steps A and B (diffusers' names): constant, constant_with_warmup, "
        "cosine or linear.", "B", choices=("constant", "constant_with_warmup", "cosine", "linear"))
    lr_warmup_steps: int = _field(0, "Steps A and B: warmup steps of --lr_scheduler.", "B")
    gradient_accumulation_steps: int = _field(
        1, "Accumulate gradients over this many batches per step (saves memory).", "B")
    timestep_bias_strategy: str = _field(
        "none", "Step B: sample training timesteps with a bias: later (noisier: the layout), earlier, range, none.",
        "B", choices=("none", "later", "earlier", "range"))
    timestep_bias_multiplier: float = _field(
        1.0, "Step B: weight of the biased timesteps relative to the others (1: no bias).", "B")
    timestep_bias_portion: float = _field(
        0.25, "Step B: fraction of the schedule biased by the later/earlier strategies.", "B")
    timestep_bias_begin: int = _field(0, "Step B, range strategy: first biased timestep.", "B")
    timestep_bias_end: int = _field(1000, "Step B, range strategy: biased timesteps end before this one.", "B")
    rank: int | None = _field(None, "LoRA rank.", "B")
    lora_alpha: float | None = _field(None, "LoRA alpha (scale = alpha / rank); the rank when not given.", "B")
    # Attention-only LoRA cannot pin where things are: the layout lives in the ResNet convolutions.
    lora_target_modules: str | None = _field(
        None, "LoRA targets: a preset (attn, attn_ff, attn_ff_conv) or a comma list of module names.", "B")
    full_finetune: bool = _field(
        False, "Step B as in the paper: train every UNet weight (the quality and cost reference).", "B")
    use_8bit_adam: bool | None = _field(
        None, "Step B optimiser: bitsandbytes AdamW8bit, else torch's fused AdamW; when not given: 8-bit on a GPU "
        "(its state takes a quarter of the memory), torch's on the CPU (faster there).", "B")
    adam_weight_decay: float = _field(1e-2, "Step B: AdamW weight decay.", "B")
    # --- precision and memory ------------------------------------------------------------
    mixed_precision: str | None = _field(
        None, "no, fp16 or bf16; when not given: the accelerate config's, else bf16 on a GPU that has it (fp16 on "
        "one that has not), else no.", "memory", choices=(None, "no", "fp16", "bf16"))
    gradient_checkpointing: bool | None = _field(
        None, "Recompute UNet activations in the backward pass (less memory, about a third slower); when not "
        "given: on where the plan's estimated peak would not fit the GPU's free memory.", "memory")
    enable_xformers_memory_efficient_attention: bool = _field(
        False, "Use xformers attention (pip install xformers); PyTorch SDPA when not given.", "memory")
    allow_tf32: bool | None = _field(
        None, "TF32 matmuls on Ampere and newer GPUs (faster, tiny precision loss); on by default on a GPU.", "memory")
    enable_vae_tiling: bool = _field(
        False, "Encode and decode with VAE tiling and slicing (less memory at 1024 px, e.g. SDXL).", "memory")
    torch_compile: str | None = _field(
        None, "torch.compile the UNet for steps A, B, C and the pick, in this mode (reduce-overhead and "
        "max-autotune add CUDA graphs); the first steps of each phase pay the compilation. Off when not given.",
        "memory", choices=(None, "default", "reduce-overhead", "max-autotune"))
    channels_last: bool = _field(
        False, "Convert the UNet's weights to channels-last memory format, which its convolutions' activations "
        "follow (faster convolutions on tensor cores).", "memory")
    cudnn_benchmark: bool = _field(
        False, "Let cuDNN time its convolution algorithms for each new input shape and keep the fastest (an "
        "edit has few shapes: each phase's batch, and a shorter last batch).", "memory")
    # --- C: generation -----------------------------------------------------------------
    etas: list[float] | None = _field(
        None, "Interpolation weights eta of the target embedding (0 = the input back; >1 extrapolates).", "C",
        nargs="+")
    recommended_eta: float | None = _field(
        None, "The eta the artifact recommends when the pick is off (recorded in its config).", "C")
    num_seeds: int | None = _field(None, "Images per eta: seeds seed, seed+1, ...", "C")
    num_reconstruction_seeds: int = _field(
        1, "Eta 0 (the input back, to see the fine-tuning held) is drawn for this many of the seeds only; "
        "every other eta for all.", "C")
    # Batched is about twice as fast on a CPU; SDXL at 1024 px decodes in fp32, so one at a time.
    sample_batch_size: int | None = _field(
        None, "Step C: images per pipeline call; 8 up to 256 px, else 4 (SDXL: 1) when not given. 1 uses the least "
        "memory and makes each image bit-identical to a one-image stock pipeline call (LoRA fused; fp32).", "C")
    strength: list[float] | None = _field(
        None, "Step C starts from the input image noised to this share of the schedule, as diffusers' img2img "
        "does, instead of from pure noise (1.0, the paper's). Below 1 the photo's layout holds: an object "
        "turned or resized stays where it was; the model card's code then uses the img2img pipeline. Several "
        "values: every eta and seed is drawn at each (eta 0 at the first only), and the pick chooses among all.",
        "C", nargs="+")
    guidance_scale: float | None = _field(None, "Classifier-free guidance scale for the edited images.", "C")
    num_inference_steps: int | None = _field(None, "Denoising steps per edited image.", "C")
    scheduler: str | None = _field(
        None, "Sampler for the images: ddim, dpmsolver++, euler, euler_a, pndm, or model (the base's own).", "C",
        choices=(None,) + SCHEDULERS)
    # --- the automatic pick ----------------------------------------------------------------
    pick_edit: bool = _field(
        True, "Pick one image (eta > 0) as the edit, images/edit.png, by the model's own scores (base model, e_tgt "
              "against --pick_contrast) and where its edges lie (docs/pick.md).", "pick")
    pick_contrast: str = _field(
        "empty_prompt", "What the pick's text score compares each image's denoising error (base model) under e_tgt "
        "with: its error under this embedding (how: --pick_score). empty_prompt (the unconditional one step C's guidance uses): how much the target "
        "text explains the image beyond no text. e_opt (the rule before): beyond the input's own embedding, which "
        "also rewards any departure from the input, side effects included.", "pick",
        choices=("empty_prompt", "e_opt"))
    pick_score: str = _field(
        "ratio", "How the pick's text score compares the two errors. ratio: 1 - err(e_tgt) / err(contrast), the "
        "share of the contrast's error the target text explains, which does not grow with how much of the image "
        "the text describes (a large object scored higher than a small one for its area). difference: "
        "err(contrast) - err(e_tgt), the rule before (docs/pick.md).", "pick", choices=("ratio", "difference"))
    pick_place_shift: float = _field(
        6 / 64, "The pick, step 1: candidates whose extent (the box around the image's strongest edges) has its "
                "centre within this share of the frame of the input's kept the object in place, whatever its "
                "outline; when one of them beats the input's text score, the best-scoring of them is the pick "
                "(0 turns this step off).", "pick")
    pick_timesteps: int | None = _field(
        None, "The pick scores each image at this many noise levels (the noisier half of the schedule).", "pick")
    pick_keep_fraction: float = _field(
        0.6, "The pick, step 2 (when step 1 does not decide): a candidate counts as edited when its text score "
             "lies at least this fraction of the way from the input's score to the best, in (0, 1].", "pick")

    # ----------------------------------------------------------------------------------
    def denoising_steps(self, strength: float) -> int:
        """Step C's denoising steps per image drawn at ``strength``: all of them from pure noise, fewer from a
        noised input (as diffusers' img2img pipelines count them)."""
        return denoising_steps(self.num_inference_steps, strength)

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_seeds)]

    @property
    def draws(self) -> list[tuple[float, int, float]]:
        """The (eta, seed, strength) of every image step C draws: each eta and seed at each --strength, eta 0
        for the first --num_reconstruction_seeds at the first strength only."""
        return [(eta, seed, strength) for strength in self.strength for eta in self.etas
                for i, seed in enumerate(self.seeds)
                if eta != 0 or (i < self.num_reconstruction_seeds and strength == self.strength[0])]

    @property
    def lora_target_module_list(self) -> list[str]:
        if self.lora_target_modules is None:
            return []
        if self.lora_target_modules in LORA_TARGET_PRESETS:
            return list(LORA_TARGET_PRESETS[self.lora_target_modules])
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]

    @property
    def effective_emb_train_batch_size(self) -> int:
        return self.train_batch_size if self.emb_train_batch_size is None else self.emb_train_batch_size

    @property
    def effective_lora_alpha(self) -> float:
        return float(self.rank if self.lora_alpha is None else self.lora_alpha)

    def validate(self, check_image: bool = True, complete: bool = True) -> "ImagicConfig":
        """Check everything that can be checked without a model; raise ImagicInputError.

        ``check_image=False`` leaves the image to the job (a manifest's bad image fails its job only).
        ``complete=False`` checks a config whose preset is not applied yet (the settings it fills are
        skipped), and neither the image nor the output folder: the command line does so right after
        parsing, before any heavy library is imported.
        """
        from .presets import PRESET_FIELDS

        unresolved = [name for name in PRESET_FIELDS if getattr(self, name) is None]
        if unresolved and complete:
            raise ValueError(f"{', '.join(unresolved)} not set: resolve the config first (ImagicConfig.resolved())")
        check_image = check_image and complete
        if self.manifest and self.tedbench:
            raise ImagicInputError("--manifest", "cannot be combined with --tedbench; give one job list")
        for f in dataclasses.fields(self):  # choices hold for a manifest's values as for the flags
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices is not None and value not in choices:
                allowed = ", ".join(c for c in choices if c is not None)
                raise ImagicInputError(f"--{f.name}", f"{value!r} is not one of: {allowed}")
        if check_image:
            if not self.input_image:
                raise ImagicInputError("--input_image", "is required")
            from .images import check_image_file  # local: PIL and numpy only when an image is checked
            try:
                check_image_file(self.input_image)
            except ImageFileError as e:
                raise ImagicInputError("--input_image", str(e)) from None
            if self.target_prompt is None or not self.target_prompt.strip():
                raise ImagicInputError("--target_prompt", "is empty; describe the wanted image")
        if self.target_prompt is not None:
            check_text(self.target_prompt, "--target_prompt")
        if self.etas is not None and not self.etas:
            raise ImagicInputError("--etas", "is empty; give at least one value, e.g. --etas 0 0.7 1")
        for eta in self.etas or []:
            if not (math.isfinite(eta) and abs(eta) <= MAX_ETA):
                raise ImagicInputError("--etas", f"{eta} is outside [-{MAX_ETA:g}, {MAX_ETA:g}]")
        _distinct_names(self.etas or [], "--etas", "eta")
        if self.recommended_eta is not None and not (math.isfinite(self.recommended_eta)
                                                     and abs(self.recommended_eta) <= MAX_ETA):
            raise ImagicInputError("--recommended_eta", f"{self.recommended_eta} is outside [-{MAX_ETA:g}, "
                                                        f"{MAX_ETA:g}]")
        positive_ints = ("emb_train_steps", "max_train_steps", "train_batch_size", "emb_train_batch_size", "rank",
                         "num_seeds", "sample_batch_size", "num_inference_steps", "gradient_accumulation_steps",
                         "checkpointing_steps", "checkpoints_total_limit", "num_reconstruction_seeds",
                         "pick_timesteps", "lr_warmup_steps")
        for name in positive_ints:
            value = getattr(self, name)
            if value is None:  # a default chosen later, per model family
                continue
            # Zero steps is allowed for A and B (the paper's ablation) and for checkpoints (none).
            minimum = 0 if name in ("emb_train_steps", "max_train_steps", "checkpointing_steps",
                                    "num_reconstruction_seeds", "lr_warmup_steps") else 1
            if value < minimum:
                raise ImagicInputError(f"--{name}", f"must be >= {minimum}, got {value}")
        # A: seed, B: seed + 1, the pick: seed + 2, C: seed .. seed + num_seeds - 1; every one a 63-bit seed.
        seeds = max(self.num_seeds or 1, 3)
        if self.seed < 0 or self.seed + seeds - 1 > MAX_SEED:
            shown = self.seed if abs(self.seed) < 10 ** 20 else f"{self.seed:.3g}"
            raise ImagicInputError("--seed", f"must be in 0..{MAX_SEED - seeds + 1} (the run also uses the next "
                                             f"seeds), got {shown}")
        for name in ("emb_learning_rate", "learning_rate"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ImagicInputError(f"--{name}", f"must be a positive number, got {value}")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise ImagicInputError("--max_grad_norm", f"must be >= 0 (0: no clipping), got {self.max_grad_norm}")
        if not (math.isfinite(self.timestep_bias_multiplier) and self.timestep_bias_multiplier > 0):
            raise ImagicInputError("--timestep_bias_multiplier", f"must be a positive number, got "
                                                                 f"{self.timestep_bias_multiplier}")
        if not (math.isfinite(self.pick_place_shift) and 0 <= self.pick_place_shift <= 2):
            raise ImagicInputError("--pick_place_shift", f"must be in [0, 2] (0: off), got {self.pick_place_shift}")
        if self.lora_budget is not None and not (math.isfinite(self.lora_budget) and 0 < self.lora_budget <= 1):
            raise ImagicInputError("--lora_budget", f"must be in (0, 1] (1: the whole adapter), got {self.lora_budget}")
        if self.strength is not None and not self.strength:
            raise ImagicInputError("--strength", "is empty; give at least one value, e.g. --strength 1.0")
        for strength in self.strength or []:
            if not (math.isfinite(strength) and 0 < strength <= 1):
                raise ImagicInputError("--strength", f"must be in (0, 1] (1: from pure noise), got {strength}")
        _distinct_names(self.strength or [], "--strength", "strength")
        if not 0 < self.pick_keep_fraction <= 1:
            raise ImagicInputError("--pick_keep_fraction", f"must be in (0, 1], got {self.pick_keep_fraction}")
        if not 0 < self.timestep_bias_portion <= 1:
            raise ImagicInputError("--timestep_bias_portion", f"must be in (0, 1], got {self.timestep_bias_portion}")
        if self.timestep_bias_strategy == "range":
            if self.timestep_bias_begin < 0:
                raise ImagicInputError("--timestep_bias_begin", f"must be >= 0, got {self.timestep_bias_begin}")
            if self.timestep_bias_end <= self.timestep_bias_begin:
                raise ImagicInputError("--timestep_bias_end", f"must be above --timestep_bias_begin ("
                                                              f"{self.timestep_bias_begin}), got "
                                                              f"{self.timestep_bias_end}")
        if self.lora_alpha is not None and not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ImagicInputError("--lora_alpha", f"must be a positive number, got {self.lora_alpha}")
        if self.lora_target_modules is not None and not self.lora_target_module_list:
            raise ImagicInputError("--lora_target_modules", "names no module")
        if self.rank is not None and self.rank > MAX_RANK:
            raise ImagicInputError("--rank", f"must be at most {MAX_RANK}, got {self.rank}")
        if self.resolution is not None and not (8 <= self.resolution <= MAX_RESOLUTION and self.resolution % 8 == 0):
            raise ImagicInputError("--resolution", f"must be a multiple of 8 from 8 to {MAX_RESOLUTION}, got "
                                                   f"{self.resolution}")
        if self.guidance_scale is not None and (self.guidance_scale < 0 or not math.isfinite(self.guidance_scale)):
            raise ImagicInputError("--guidance_scale", f"must be >= 0, got {self.guidance_scale}")
        if self.report_to == "tensorboard" and not _installed("tensorboard"):
            raise ImagicInputError("--report_to", "tensorboard is not installed (pip install tensorboard)")
        if self.use_8bit_adam and not _installed("bitsandbytes"):
            raise ImagicInputError("--use_8bit_adam", "bitsandbytes is not installed (pip install bitsandbytes); "
                                                      "pass --no-use_8bit_adam for torch's AdamW")
        if self.enable_xformers_memory_efficient_attention:
            if not _installed("xformers"):
                raise ImagicInputError(
                    "--enable_xformers_memory_efficient_attention",
                    "xformers is not installed (pip install 'imagic-lora[xformers]'; CUDA only); "
                    "leave the flag off to use PyTorch SDPA")
        if not complete:
            return self
        try:
            if check_image:  # a single edit: --output_dir is the artifact
                check_output_dir(self.output_dir, overwrite=self.overwrite, resume=self.resume)
            else:  # many edits: --output_dir holds one artifact folder per job
                if not self.output_dir.strip():
                    raise OutputError(Path(self.output_dir), "is empty: name the folder for the artifacts")
                check_writable(self.output_dir)
        except OutputError as e:
            raise ImagicInputError("--output_dir", str(e)) from None
        return self

    def resolved(self, preset: str | None = None) -> "ImagicConfig":
        """This config with a preset filling every setting left unset: ``preset``, else ``--preset``, else
        the one the model's config files call for (:func:`imagic_lora.presets.detect_preset`)."""
        from .presets import apply_preset, detect_preset
        name = preset or self.preset or detect_preset(self.pretrained_model_name_or_path, self.revision)
        return apply_preset(self, name)

    def settings(self, ignore: frozenset[str] | set[str], input_sha256: str | None = None) -> dict:
        """What this config computes, as JSON values: every field not in ``ignore``, the base model
        as a resolved folder or a hub id, and the input image by content (``input_sha256``)."""
        values = {k: v for k, v in self.to_dict().items() if k not in ignore}
        if "pretrained_model_name_or_path" in values:
            values["pretrained_model_name_or_path"] = model_key(self.pretrained_model_name_or_path)
        if input_sha256 is not None:
            values["input_sha256"] = input_sha256
        return json.loads(json.dumps(values))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Memory and speed levers that change an edit's numbers by rounding at most: neither a resume nor a
#: manifest's rerun is refused for them (an out-of-memory message suggests them).
ROUNDING_ONLY = frozenset({"gradient_checkpointing", "enable_xformers_memory_efficient_attention", "allow_tf32",
                           "enable_vae_tiling", "sample_batch_size", "torch_compile", "channels_last",
                           "cudnn_benchmark"})
#: Settings that do not change a finished artifact: a manifest's rerun skips a finished job despite them
#: (output_dir and input_image: the folder is the same one, the image is compared by content; preset: its
#: values are compared, not its name).
ARTIFACT_DIFFERENCES = ROUNDING_ONLY | {
    "overwrite", "resume", "checkpointing_steps", "checkpoints_total_limit", "report_to", "manifest", "tedbench",
    "output_dir", "input_image", "dry_run", "preset"}
#: Settings that change only step C and the pick, which a resume redoes from the checkpoint of step B.
STEP_C_SETTINGS = frozenset({"etas", "num_seeds", "recommended_eta", "guidance_scale", "num_inference_steps",
                             "scheduler", "pick_edit", "pick_contrast", "pick_score", "pick_keep_fraction",
                             "pick_place_shift",
                             "lora_budget", "num_reconstruction_seeds", "pick_timesteps", "strength"})
#: Settings that do not change what steps A and B compute: a checkpoint made under other values resumes.
RESUMABLE_DIFFERENCES = ARTIFACT_DIFFERENCES | STEP_C_SETTINGS
#: Keys an imagic-lora 0.1 record (no "settings" entry) holds as resolved, not as given.
LEGACY_RESOLVED = frozenset({"emb_train_batch_size", "mixed_precision", "resolution", "sample_batch_size"})
# The shapes preset's values that changed after presets existed (issue 25 halved its schedule): a record without
# one of these keys was made before presets, at these values.
PRE_PRESET_VALUES = {"emb_train_steps": 300, "train_batch_size": 4, "num_inference_steps": 25, "pick_timesteps": 16}
# Settings added later, at what a record made before them had (the pick scored against e_opt until issue 22's
# change of contrast, by the errors' difference until its change of score, 2026-12-04).
ADDED_LATER = {"pick_contrast": "e_opt", "pick_score": "difference"}


def denoising_steps(num_inference_steps: int, strength: float) -> int:
    """The last steps of a ``num_inference_steps``-step schedule an image drawn at ``strength`` runs: all of them
    from pure noise, int(steps x strength) from a noised input, as diffusers' img2img pipelines count them."""
    return min(int(num_inference_steps * strength), num_inference_steps)


def _installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it (xformers would import torch)."""
    import importlib.util
    try:
        return importlib.util.find_spec(package) is not None
    except ValueError:
        return False


def changed_settings(before: dict, now: dict) -> list[str]:
    """The flags whose values differ between two :meth:`ImagicConfig.settings` records, as ``--name``
    (``--input_image`` for another image). A setting ``before`` lacks had its default then, and an
    image hash it lacks is not compared (records from before hashes were kept)."""
    # What every setting was before presets existed: the shapes preset's values as they were then.
    then = ImagicConfig(pretrained_model_name_or_path=str(BUNDLED_MODEL))  # version 1's model: the default then
    defaults = {**then.resolved("shapes").settings(frozenset()), **PRE_PRESET_VALUES, **ADDED_LATER}
    legacy = "settings" not in before and "format" in before  # a 0.1 artifact's record
    changed = []
    for key, value in now.items():
        if legacy and key in LEGACY_RESOLVED and value is None:
            continue
        if key == "input_sha256":
            if key in before and before[key] != value:
                changed.append("--input_image (another image)")
        elif key == "pretrained_model_name_or_path":
            if model_key(str(before.get(key, defaults[key]))) != value:
                changed.append(f"--{key}")
        elif as_list(key, before.get(key, defaults.get(key))) != value:
            changed.append(f"--{key}")
    return sorted(changed)


def _distinct_names(values: list[float], flag: str, what: str) -> None:
    """The images are named by each value to 2 decimals: two values that round alike are refused, naming ``flag``."""
    names = {}
    for value in values:
        name = f"{value:.2f}"
        if name in names:
            raise ImagicInputError(flag, f"{names[name]:g} and {value:g} are the same {what} to 2 decimals "
                                         f"({name}), which names the images")
        names[name] = value


def as_list(key: str, value):
    """A record's value as the flag has it now: --strength took one number before it took several."""
    return [float(value)] if key == "strength" and isinstance(value, (int, float)) else value


def model_key(pretrained_model_name_or_path: str) -> str:
    """A base model as a comparable string: a local folder resolved, a hub id as it is."""
    path = Path(pretrained_model_name_or_path)
    return str(path.resolve()) if path.is_dir() else pretrained_model_name_or_path


def check_text(text: str, flag: str) -> None:
    """A prompt must be encodable text (a command line's invalid UTF-8 arrives as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ImagicInputError(flag, f"is not valid UTF-8 text: {text.encode('utf-8', 'backslashreplace')!r}") \
            from None


EXAMPLES = """examples:
  # the bundled example photo and model (about 30 s on 2 CPU cores)
  accelerate launch --config_file accelerate_configs/cpu.yaml scripts/imagic_lora.py

  # your photo on Stable Diffusion (the sd1 preset is chosen from the model)
  imagic-lora --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
      --input_image dog.jpg --target_prompt "a photo of a sitting dog" --output_dir dog-sitting

  # what that would run with and cost, without running it
  imagic-lora --pretrained_model_name_or_path stabilityai/stable-diffusion-xl-base-1.0 \\
      --input_image dog.jpg --target_prompt "a photo of a sitting dog" --dry_run
"""


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we print the error alone, on one line, with the closest
    flag for a mistyped one."""

    def error(self, message):  # noqa: D401 - argparse API
        if message.startswith("unrecognized arguments:"):
            import difflib
            flags = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
            for word in message.split(":", 1)[1].split():
                if word.startswith("--"):
                    close = difflib.get_close_matches(word.split("=")[0], flags, n=1, cutoff=0.6)
                    if close:
                        message = f"unrecognized argument {word}: did you mean {close[0]}?"
                        break
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return value


def _default_text(f: dataclasses.Field) -> str:
    """What --help says of a flag's default (never twice)."""
    from .presets import PRESET_FIELDS, PRESETS
    if f.name in PRESET_FIELDS:
        shapes, sd = PRESETS["shapes-v2"].values[f.name], PRESETS["sd1"].values[f.name]
        show = lambda v: " ".join(map(str, v)) if isinstance(v, list) else str(v)  # noqa: E731
        return f" (default: the preset's; shapes-v2 {show(shapes)}, SD {show(sd)})"
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if default is None:
        return ""  # the help says what happens when it is not given
    if isinstance(default, bool):
        return " (default: on)" if default else ""
    if f.name == "pretrained_model_name_or_path":
        return ""
    return f" (default: {default})"


def build_parser(prog: str = "imagic_lora") -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog=prog, allow_abbrev=False, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Imagic with LoRA: edit one real image from a target text with a Stable Diffusion model. "
                    "Flags a preset fills show the default model's (shapes-v2) and SD values; docs/presets.md has all.")
    groups = {name: parser.add_argument_group(title) for name, title in GROUPS.items()}
    for f in dataclasses.fields(ImagicConfig):
        meta = dict(f.metadata)
        group = groups[meta.pop("group")]
        help_text = (meta.pop("help") + _default_text(f)).replace("%", "%%")
        flag = f"--{f.name}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if "bool" in str(f.type):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        type_name = str(f.type)
        if "float" in type_name:
            kind = _parse_float
        elif "int" in type_name:
            kind = int
        else:
            kind = str
        if meta.get("choices") is not None and None in meta["choices"]:
            meta["choices"] = [c for c in meta["choices"] if c is not None]
        group.add_argument(flag, type=kind, default=default, help=help_text, metavar=f.name.upper()
                           if "choices" not in meta else None, **meta)
    return parser


def parse_args(argv: list[str] | None = None) -> ImagicConfig:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return ImagicConfig(**vars(args))
