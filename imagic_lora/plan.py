"""The plan of an edit, made before any weight is loaded: precision, memory and work.

Costs are measured on PyTorch's meta device from the models' config files: the UNet is built without
storage, and a forward and backward pass there costs seconds and no memory. FLOPs are counted with
``torch.utils.flop_counter``'s formulas and the memory a pass holds by a tracker of the tensors it creates
(bytes of live storages, their peak), both in one dispatch mode (FlopCounterMode beside it kept tensors
alive: gradient checkpointing's peak read 2-7x too high). Attention is measured as the memory-efficient
kernel PyTorch's SDPA runs on a GPU (the meta device would otherwise run the math kernel, which holds the
full attention matrix).
The estimate leaves out what autocast adds (normalisation outputs kept in fp32) and the allocator's
fragmentation; the plan keeps a margin for them (docs/BENCHMARKS.md compares it with measured peaks).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

GIB = 1024 ** 3
#: Of the GPU's free memory, the share the plan counts on; the rest is left to the CUDA context, cuBLAS
#: workspaces and the allocator's fragmentation.
USABLE_FRACTION = 0.85

_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}


class PeakMemory(TorchDispatchMode):
    """Within: the bytes of the storages the operations create and still alive, and their peak; and the
    FLOPs of the operations by torch's own formulas (``flops``). One mode for both: FlopCounterMode's
    per-module tracking cost a second per plan on the bundled model, a tenth of its edit's step A."""

    def __init__(self):
        super().__init__()
        from torch.utils.flop_counter import flop_registry
        self.formulas = flop_registry
        self.sizes: dict[int, int] = {}
        self.refs: dict[int, int] = {}
        self.current = self.peak = 0
        self.flops = 0

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.sizes:
            self.sizes[key], self.refs[key] = storage.nbytes(), 0
            self.current += self.sizes[key]
            self.peak = max(self.peak, self.current)
        self.refs[key] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.current -= self.sizes.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        formula = self.formulas.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **(kwargs or {}), out_val=out)
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out


def _efficient_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    out = torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, query.requires_grad or key.requires_grad, dropout_p, is_causal, scale=scale)
    return out[0]


@contextlib.contextmanager
def _memory_efficient_attention():
    real = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _efficient_sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = real


@dataclass
class UNetCosts:
    """What one sample costs the UNet at one resolution (FLOPs; bytes held beyond the weights)."""

    parameters: int
    forward_flops: float  # a forward without gradients (steps C, the pick)
    step_a_flops: float  # forward and backward to the conditioning (step A)
    step_b_flops: float  # a LoRA step (or a full fine-tune's), without gradient checkpointing's recompute
    inference_bytes: int
    train_bytes: int  # a training step's activations, no checkpointing
    train_bytes_checkpointed: int  # with gradient checkpointing
    lora_parameters: int = 0


def lora_parameter_count(unet, targets: list[str], rank: int) -> int:
    """Parameters of a rank-``rank`` LoRA on the modules ``targets`` match (peft's rule: a module's name
    is the target or ends with "." + the target)."""
    total = 0
    for name, module in unet.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if isinstance(module, torch.nn.Linear):
            total += rank * (module.in_features + module.out_features)
        elif isinstance(module, torch.nn.Conv2d):
            total += rank * (module.in_channels * math.prod(module.kernel_size) + module.out_channels)
    return total


def _unet_inputs(config: dict, resolution: int, vae_scale_factor: int, dtype, grad: bool):
    side = resolution // vae_scale_factor
    sample = torch.randn(1, config["in_channels"], side, side, device="meta", dtype=dtype)
    embeds = torch.randn(1, 77, config["cross_attention_dim"], device="meta", dtype=dtype, requires_grad=grad)
    kwargs = {}
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, pooled, device="meta", dtype=dtype, requires_grad=grad),
            "time_ids": torch.randn(1, 6, device="meta", dtype=dtype)}
    return sample, torch.tensor([500], device="meta"), embeds, kwargs


def _measure(unet, inputs, *, train: bool) -> tuple[float, int]:
    sample, timestep, embeds, kwargs = inputs
    memory = PeakMemory()
    with _memory_efficient_attention(), memory, torch.set_grad_enabled(train):
        out = unet(sample, timestep, embeds, **kwargs).sample
        if train:
            out.float().pow(2).mean().backward()
        del out
    return float(memory.flops), memory.peak


def measure_unet(unet_config: dict, resolution: int, vae_scale_factor: int, dtype: torch.dtype, *,
                 lora_targets: list[str] | None = None, rank: int = 8, full_finetune: bool = False) -> UNetCosts:
    """Measure the UNet of ``unet_config`` on the meta device, per sample at ``resolution`` px."""
    from diffusers import UNet2DConditionModel
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    torch.nn.Module.to(unet, dtype).requires_grad_(False)  # (diffusers' own .to() warns about fp32 modules)
    parameters = sum(p.numel() for p in unet.parameters())
    lora = 0 if full_finetune or not lora_targets else lora_parameter_count(unet, lora_targets, rank)
    forward, inference = _measure(unet, _unet_inputs(unet_config, resolution, vae_scale_factor, dtype, False),
                                  train=False)
    unet.train()
    step_a, train = _measure(unet, _unet_inputs(unet_config, resolution, vae_scale_factor, dtype, True), train=True)
    if full_finetune:
        unet.requires_grad_(True)
        step_b, train_b = _measure(unet, _unet_inputs(unet_config, resolution, vae_scale_factor, dtype, False),
                                   train=True)
        unet.requires_grad_(False)
        train = max(train, train_b - parameters * _BYTES[dtype])  # the weight gradients are counted apart
    else:
        # A LoRA's own work: its two products per token, forward and the two backward ones (~3x).
        tokens_per_flop = forward / max(parameters, 1) / 2  # tokens seen per weight, averaged over the UNet
        step_b = step_a + 6 * lora * tokens_per_flop
    unet.enable_gradient_checkpointing()
    _, checkpointed = _measure(unet, _unet_inputs(unet_config, resolution, vae_scale_factor, dtype, True), train=True)
    return UNetCosts(parameters, forward, step_a, step_b, inference, train, min(checkpointed, train), lora)


def measure_vae(vae_config: dict, resolution: int, dtype: torch.dtype) -> tuple[int, float, int, float]:
    """(parameters, decode FLOPs, decode bytes, encode FLOPs) of one image, on the meta device."""
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(vae_config)
    torch.nn.Module.to(vae, dtype).requires_grad_(False)
    scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    latent = torch.randn(1, vae_config["latent_channels"], resolution // scale, resolution // scale, device="meta",
                         dtype=dtype)
    pixels = torch.randn(1, 3, resolution, resolution, device="meta", dtype=dtype)
    memory, flops = PeakMemory(), FlopCounterMode(display=False)
    with _memory_efficient_attention(), memory, flops, torch.no_grad():
        vae.decode(latent)
    decode_flops, decode_bytes = float(flops.get_total_flops()), memory.peak
    with _memory_efficient_attention(), FlopCounterMode(display=False) as flops, torch.no_grad():
        vae.encode(pixels)
    return sum(p.numel() for p in vae.parameters()), decode_flops, decode_bytes, float(flops.get_total_flops())


def text_encoder_parameters(pretrained_model_name_or_path: str, revision: str | None = None) -> int:
    """Parameters of the model's text encoder(s), from their configs."""
    from transformers import AutoConfig, CLIPTextModel, CLIPTextModelWithProjection
    total = 0
    for subfolder, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        try:
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, revision=revision)
        except (OSError, ValueError):
            continue
        with torch.device("meta"):
            total += sum(p.numel() for p in cls(config).parameters())
    return total


def decide_precision(mixed_precision: str | None, accelerate_config: str | None, device: str,
                     bf16_supported: bool) -> str:
    """The flag wins, then the accelerate config; else bf16 on a GPU that has it, fp16 on one that has not,
    and no (fp32) on a CPU."""
    if mixed_precision is not None:
        return mixed_precision
    if accelerate_config is not None:
        return accelerate_config
    if device == "cuda":
        return "bf16" if bf16_supported else "fp16"
    return "no"


def decide_optimizer(use_8bit_adam: bool | None, device: str) -> bool:
    """The flag wins; else 8-bit AdamW on a GPU, where its state's memory matters, when bitsandbytes is
    installed, and torch's fused AdamW elsewhere (on a CPU 8-bit AdamW costs several times more per step)."""
    if use_8bit_adam is not None:
        return use_8bit_adam
    import importlib.util
    return device == "cuda" and importlib.util.find_spec("bitsandbytes") is not None


@dataclass
class Plan:
    """What the edit will run with and what it costs: printed before step A (``--dry_run`` stops there)."""

    preset: str
    preset_measured: bool
    device: str
    mixed_precision: str
    tf32: bool
    gradient_checkpointing: bool
    attention: str
    resolution: int
    peak_gib: dict[str, float]  # per phase: A, B, C
    free_gib: float | None
    work: dict[str, dict[str, float]]  # phase -> unet_forwards, tflop
    costs: UNetCosts
    vae_flops: tuple[float, float] = (0.0, 0.0)  # one image's decode, encode
    notes: list[str] = field(default_factory=list)
    optimizer: str = "AdamW"  # step B's: "AdamW8bit" or "AdamW"

    def record(self) -> dict:
        """The plan as the artifact's record keeps it."""
        return {"preset": self.preset, "preset_measured": self.preset_measured, "device": self.device,
                "mixed_precision": self.mixed_precision, "tf32": self.tf32,
                "gradient_checkpointing": self.gradient_checkpointing, "attention": self.attention,
                "optimizer": self.optimizer, "estimated_peak_gib": {k: round(v, 2) for k, v in self.peak_gib.items()},
                "estimated_work": {k: {m: round(x, 1 if m == "unet_forwards" else 3) for m, x in w.items()}
                                   for k, w in self.work.items()},
                "unet_forward_tflop": round(self.costs.forward_flops / 1e12, 4)}

    @property
    def peak(self) -> float:
        return max(self.peak_gib.values())

    def lines(self) -> list[str]:
        total_fwd = sum(w["unet_forwards"] for w in self.work.values())
        total_tflop = sum(w["tflop"] for w in self.work.values())
        per_phase = ", ".join(f"{k} {w['unet_forwards']:.0f}" for k, w in self.work.items())
        free = f" of {self.free_gib:.1f} GiB free" if self.free_gib is not None else ""
        lines = [
            f"preset: {self.preset}" + ("" if self.preset_measured else " (its values are not yet measured on "
                                                                        "real weights: docs/presets.md)"),
            f"device: {self.device}; precision: {'fp32' if self.mixed_precision == 'no' else self.mixed_precision}"
            f"{', TF32' if self.tf32 else ''}; "
            f"gradient checkpointing: {'on' if self.gradient_checkpointing else 'off'}; attention: {self.attention}; "
            f"optimiser: {self.optimizer}",
            f"estimated peak memory: {self.peak:.2f} GiB{free} (A {self.peak_gib['A']:.2f}, B {self.peak_gib['B']:.2f}, "
            f"C {self.peak_gib['C']:.2f})",
            f"work: {total_fwd:.0f} UNet forward-equivalents at {self.resolution} px ({per_phase}), "
            + (f"{total_tflop / 1000:.2f} PFLOP" if total_tflop >= 1000 else f"{total_tflop:.3g} TFLOP"),
        ]
        return lines + self.notes


def estimate_work(costs: UNetCosts, *, emb_steps: int, emb_batch: int, steps: int, batch: int, accumulation: int,
                  images: int, candidates: int, denoising_steps: int, guided: bool, vae_decode_flops: float,
                  vae_encode_flops: float, pick_timesteps: int, encodes: int = 0) -> dict[str, dict[str, float]]:
    """UNet forward-equivalents (FLOPs / one sample's forward) and TFLOP per phase of an edit.
    ``denoising_steps``: step C's over all its ``images``; ``encodes``: the images that start from the noised
    input (step C encodes the input for each)."""
    f = costs.forward_flops
    phases = {
        "A": emb_steps * emb_batch * accumulation * costs.step_a_flops,
        "B": steps * batch * accumulation * costs.step_b_flops,
        "C": denoising_steps * (2 if guided else 1) * f,
        "pick": (candidates + 1) * pick_timesteps * 2 * f if candidates else 0.0,
    }
    vae = {"A": vae_encode_flops, "B": 0.0, "C": images * vae_decode_flops + encodes * vae_encode_flops,
           "pick": candidates * vae_encode_flops}
    return {k: {"unet_forwards": v / f, "tflop": (v + vae[k]) / 1e12} for k, v in phases.items()}


def estimate_peaks(costs: UNetCosts, *, weight_bytes: int, vae_parameters: int, vae_bytes: int,
                   text_parameters: int, vae_decode_bytes: int, emb_batch: int, batch: int, sample_batch: int,
                   checkpointing: bool, full_finetune: bool, use_8bit_adam: bool) -> dict[str, float]:
    """Peak bytes on the accelerator per phase, in GiB (A and B hold the UNet alone; C everything)."""
    unet = costs.parameters * weight_bytes
    state = 2 if use_8bit_adam else 8  # Adam's two moments, 8-bit or fp32, per trainable parameter
    activations = costs.train_bytes_checkpointed if checkpointing else costs.train_bytes
    if full_finetune:  # fp32 master weights and gradients, the optimiser's state
        trained = costs.parameters * (4 + 4 + state)
        b = trained + activations * batch
    else:
        b = unet + costs.lora_parameters * (4 + 4 + state) + activations * batch
    a = unet + activations * emb_batch
    models = unet + text_parameters * weight_bytes + vae_parameters * vae_bytes
    c = models + costs.lora_parameters * 4 + max(costs.inference_bytes * 2 * sample_batch,
                                                 vae_decode_bytes * sample_batch)
    return {"A": a / GIB, "B": b / GIB, "C": c / GIB}


#: Autocast keeps normalisation outputs in fp32 and casts the inputs of each product, which the meta
#: pass in one dtype does not see: a guess of their share until a GPU measures it (docs/BENCHMARKS.md).
AUTOCAST_ACTIVATION_FACTOR = 1.5


@dataclass
class Target:
    """The device the plan is for: its kind, name, free memory and bf16 support. ``threads``, ``cores`` and
    ``processes`` are set only on a CPU run under `accelerate launch` without its CPU setting (no config at
    all: it then runs one thread per process): torch's threads, the physical cores per process, the processes."""

    kind: str  # cuda, mps, cpu
    name: str
    free_bytes: int | None = None
    bf16: bool = False
    threads: int | None = None
    cores: int | None = None
    processes: int = 1

    @classmethod
    def current(cls) -> "Target":
        import os
        if torch.cuda.is_available():
            index = int(os.environ.get("LOCAL_RANK", "0"))
            free, _ = torch.cuda.mem_get_info(index)
            return cls("cuda", torch.cuda.get_device_name(index), free, torch.cuda.is_bf16_supported())
        if os.environ.get("ACCELERATE_USE_CPU") != "False":  # not launched, or launched with use_cpu / --cpu
            return cls("cpu", "cpu")
        import psutil  # accelerate's own dependency
        physical = psutil.cpu_count(logical=False)  # None where it cannot tell: no note then
        processes = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
        return cls("cpu", "cpu", threads=torch.get_num_threads(),
                   cores=max(physical // processes, 1) if physical else None, processes=processes)


def make_plan(cfg, target: Target, accelerate_mixed_precision: str | None = None):
    """Resolve the precision and memory settings ``cfg`` leaves open for ``target`` and measure the edit's
    cost; return (the config with them set, the :class:`Plan`). Raises ImagicInputError, naming the flags
    to change, when the edit cannot fit the GPU's free memory even with gradient checkpointing."""
    import dataclasses

    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .errors import ImagicInputError
    from .generate import default_sample_batch_size
    from .models import model_family, weight_dtype_for
    from .presets import PRESETS

    name, revision = cfg.pretrained_model_name_or_path, cfg.revision
    unet_config = dict(UNet2DConditionModel.load_config(name, subfolder="unet", revision=revision))
    vae_path = cfg.pretrained_vae_model_name_or_path
    vae_config = dict(AutoencoderKL.load_config(vae_path or name, **({} if vae_path else {"subfolder": "vae"}),
                                                revision=None if vae_path else revision))
    scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    resolution = cfg.resolution or int(unet_config["sample_size"]) * scale
    sdxl = model_family(name, revision) == "sdxl"
    mixed = decide_precision(cfg.mixed_precision, accelerate_mixed_precision, target.kind, target.bf16)
    cfg = dataclasses.replace(cfg, use_8bit_adam=decide_optimizer(cfg.use_8bit_adam, target.kind))
    dtype = weight_dtype_for(mixed)
    costs = measure_unet(unet_config, resolution, scale, dtype, lora_targets=cfg.lora_target_module_list,
                         rank=cfg.rank, full_finetune=cfg.full_finetune)
    if mixed != "no":
        costs = dataclasses.replace(costs, train_bytes=int(costs.train_bytes * AUTOCAST_ACTIVATION_FACTOR),
                                    train_bytes_checkpointed=int(costs.train_bytes_checkpointed
                                                                 * AUTOCAST_ACTIVATION_FACTOR))
    upcast_vae = sdxl and dtype == torch.float16 and vae_config.get("force_upcast", True)
    vae_dtype = torch.float32 if upcast_vae else dtype
    vae_parameters, decode_flops, decode_bytes, encode_flops = measure_vae(vae_config, resolution, vae_dtype)
    sample_batch = cfg.sample_batch_size or default_sample_batch_size(sdxl, resolution)
    emb_batch = cfg.effective_emb_train_batch_size
    common = dict(weight_bytes=_BYTES[dtype], vae_parameters=vae_parameters, vae_bytes=_BYTES[vae_dtype],
                  text_parameters=text_encoder_parameters(name, revision), vae_decode_bytes=decode_bytes,
                  emb_batch=emb_batch, batch=cfg.train_batch_size, sample_batch=sample_batch,
                  full_finetune=cfg.full_finetune, use_8bit_adam=cfg.use_8bit_adam)
    notes = []
    usable = target.free_bytes * USABLE_FRACTION / GIB if target.free_bytes is not None else None
    checkpointing = cfg.gradient_checkpointing
    if checkpointing is None:
        checkpointing = False
        if usable is not None and max(estimate_peaks(costs, checkpointing=False, **common).values()) > usable:
            checkpointing = True
            notes.append("gradient checkpointing is on: without it the estimated peak would not fit")
    peaks = estimate_peaks(costs, checkpointing=checkpointing, **common)
    while cfg.sample_batch_size is None and usable is not None and peaks["C"] > usable and common["sample_batch"] > 1:
        common["sample_batch"] //= 2  # step C draws fewer images per call rather than run out of memory
        peaks = estimate_peaks(costs, checkpointing=checkpointing, **common)
    if common["sample_batch"] != sample_batch:
        notes.append(f"step C draws {common['sample_batch']} images per call to fit")
    if usable is not None and max(peaks.values()) > usable:
        levers = ["--gradient_checkpointing"] if not checkpointing else []
        levers += ["--train_batch_size 1 --emb_train_batch_size 1 (with --gradient_accumulation_steps)",
                   "--sample_batch_size 1", "a lower --resolution", "--mixed_precision bf16 or fp16",
                   "--use_8bit_adam", "LoRA instead of --full_finetune"]
        raise ImagicInputError("--gradient_checkpointing" if not checkpointing else "--train_batch_size",
                               f"the edit needs an estimated {max(peaks.values()):.1f} GiB, more than the "
                               f"{usable:.1f} GiB usable on {target.name}; change: {', '.join(levers)}")
    if target.kind != "cuda":
        notes.append(f"memory on the {target.kind.upper()} is not checked")
    if target.threads is not None and target.cores is not None and target.threads < target.cores:
        # `accelerate launch` with no config at all sets OMP_NUM_THREADS=1, GPU or not: the bundled edit took
        # 1.6x as long on 1 thread as on 2 cores (docs/BENCHMARKS.md)
        fix = f"`--num_cpu_threads_per_process {target.cores}`"
        if target.processes == 1:
            fix = (f"a CPU config (`accelerate config default`, or `--config_file accelerate_configs/cpu.yaml`) "
                   f"or {fix}")
        notes.append(f"torch runs {target.threads} thread(s) on {target.cores} CPU cores: for all of them, give "
                     f"`accelerate launch` {fix}")
    draws = cfg.draws
    candidates = sum(1 for eta, _, _ in draws if eta > 0) if cfg.pick_edit else 0
    work = estimate_work(costs, emb_steps=cfg.emb_train_steps, emb_batch=emb_batch, steps=cfg.max_train_steps,
                         batch=cfg.train_batch_size, accumulation=cfg.gradient_accumulation_steps, images=len(draws),
                         candidates=candidates, denoising_steps=sum(cfg.denoising_steps(s) for _, _, s in draws),
                         encodes=sum(1 for _, _, s in draws if s < 1),
                         guided=cfg.guidance_scale > 1, vae_decode_flops=decode_flops, vae_encode_flops=encode_flops,
                         pick_timesteps=cfg.pick_timesteps)
    tf32 = cfg.allow_tf32 if cfg.allow_tf32 is not None else target.kind == "cuda"
    resolved = dataclasses.replace(cfg, mixed_precision=mixed, gradient_checkpointing=checkpointing, allow_tf32=tf32,
                                   sample_batch_size=cfg.sample_batch_size if common["sample_batch"] == sample_batch
                                   else common["sample_batch"])
    device = target.name if target.kind == "cpu" else f"{target.kind} ({target.name})"
    plan = Plan(cfg.preset, PRESETS[cfg.preset].measured, device, mixed, tf32, checkpointing,
                "xformers" if cfg.enable_xformers_memory_efficient_attention else "sdpa", resolution, peaks,
                target.free_bytes / GIB if target.free_bytes is not None else None, work, costs,
                (decode_flops, encode_flops), notes, "AdamW8bit" if cfg.use_8bit_adam else "AdamW")
    return resolved, plan


class WorkMeter:
    """Counts what the UNet runs in each phase (a forward pre-hook on it), to record the work an edit did:
    UNet samples, forward-equivalents (FLOPs over one sample's forward) and TFLOP, from the plan's costs."""

    def __init__(self, unet, costs: UNetCosts | None = None, vae_decode_flops: float = 0.0,
                 vae_encode_flops: float = 0.0):
        self.costs, self.decode_flops, self.encode_flops = costs, vae_decode_flops, vae_encode_flops
        self.samples: dict[str, dict[str, int]] = {}
        self.current: str | None = None
        self._handle = unet.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        if self.current is None:
            return
        sample = args[0] if args else kwargs["sample"]
        counts = self.samples.setdefault(self.current, {"train": 0, "inference": 0, "vae_decodes": 0,
                                                        "vae_encodes": 0})
        counts["train" if torch.is_grad_enabled() else "inference"] += int(sample.shape[0])

    @contextlib.contextmanager
    def phase(self, name: str):
        before, self.current = self.current, name
        self.samples.setdefault(name, {"train": 0, "inference": 0, "vae_decodes": 0, "vae_encodes": 0})
        try:
            yield self
        finally:
            self.current = before

    def add_vae(self, decodes: int = 0, encodes: int = 0) -> None:
        counts = self.samples[self.current]
        counts["vae_decodes"] += decodes
        counts["vae_encodes"] += encodes

    def close(self) -> None:
        self._handle.remove()

    def record(self) -> dict[str, dict]:
        out = {}
        for phase, n in self.samples.items():
            entry = {"unet_samples": n["train"] + n["inference"]}
            if self.costs is not None:
                train = self.costs.step_a_flops if phase == "A" else self.costs.step_b_flops
                unet = n["train"] * train + n["inference"] * self.costs.forward_flops
                vae = n["vae_decodes"] * self.decode_flops + n["vae_encodes"] * self.encode_flops
                entry.update(unet_forwards=round(unet / self.costs.forward_flops, 1),
                             tflop=round((unet + vae) / 1e12, 4))
            out[phase] = entry
        return out
