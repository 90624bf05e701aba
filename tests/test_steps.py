"""Steps A and B and the LoRA on tiny models: what changes, what must not, and the targets."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from PIL import Image

from conftest import fixed_draw_loss
from imagic_lora.conditioning import PromptEmbeds, encode_prompt, interpolate
from imagic_lora.diffusion import denoising_loss, encode_image_latents, prediction_target
from imagic_lora.embedding import optimize_embedding
from imagic_lora.finetune import finetune, full_finetune_parameters, make_optimizer
from imagic_lora.images import load_image, pil_to_tensor
from imagic_lora.lora import add_lora, fused_lora
from imagic_lora.models import load_pipeline, native_resolution, training_noise_scheduler

ATTN = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.fixture()
def setup(tiny_sd, input_png):
    pipe = load_pipeline(str(tiny_sd))
    image = load_image(input_png, native_resolution(pipe))
    latents = encode_image_latents(pipe.vae, pil_to_tensor(image))
    e_tgt = encode_prompt(pipe, "a large blue square on a white background", "cpu")
    return pipe, training_noise_scheduler(pipe), latents, e_tgt


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_step_a_lowers_loss_and_leaves_unet_bitwise_unchanged(setup):
    pipe, scheduler, latents, e_tgt = setup
    before = snapshot(pipe.unet)
    e_opt, losses = optimize_embedding(
        pipe.unet, scheduler, latents, e_tgt, accelerator=Accelerator(cpu=True), steps=40, learning_rate=5e-2,
        batch_size=4, generator=torch.Generator().manual_seed(0), weight_dtype=torch.float32)
    assert len(losses) == 40
    assert e_opt.prompt_embeds.shape == e_tgt.prompt_embeds.shape == (1, 77, 32)
    assert e_opt.prompt_embeds.dtype == torch.float32 and not e_opt.prompt_embeds.requires_grad
    assert not torch.equal(e_opt.prompt_embeds, e_tgt.prompt_embeds)
    assert fixed_draw_loss(pipe.unet, scheduler, latents, e_opt) < fixed_draw_loss(pipe.unet, scheduler, latents, e_tgt)
    after = snapshot(pipe.unet)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in pipe.unet.parameters())


def test_step_a_refuses_a_trainable_unet(setup):
    pipe, scheduler, latents, e_tgt = setup
    pipe.unet.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen UNet"):
        optimize_embedding(pipe.unet, scheduler, latents, e_tgt, accelerator=Accelerator(cpu=True), steps=1,
                           learning_rate=1e-3, batch_size=1, generator=torch.Generator(), weight_dtype=torch.float32)


@pytest.mark.parametrize("use_8bit_adam", [True, False])
def test_step_b_changes_only_lora_and_lowers_loss(setup, use_8bit_adam):
    pipe, scheduler, latents, e_tgt = setup
    base = snapshot(pipe.unet)
    params = add_lora(pipe.unet, rank=4, alpha=4, target_modules=ATTN, seed=0)
    lora_names = {n for n, p in pipe.unet.named_parameters() if p.requires_grad}
    assert lora_names and all(".lora_A." in n or ".lora_B." in n for n in lora_names)
    assert all(p.dtype == torch.float32 for p in params)
    lora_before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if p.requires_grad}
    loss_before = fixed_draw_loss(pipe.unet, scheduler, latents, e_tgt)
    accelerator = Accelerator(cpu=True)
    optimizer = make_optimizer(params, learning_rate=1e-2, use_8bit_adam=use_8bit_adam, weight_decay=0.0,
                               accelerator=accelerator)
    losses = finetune(pipe.unet, scheduler, latents, e_tgt, optimizer, accelerator=accelerator, steps=40,
                      batch_size=4, generator=torch.Generator().manual_seed(0), weight_dtype=torch.float32)
    assert len(losses) == 40
    assert fixed_draw_loss(pipe.unet, scheduler, latents, e_tgt) < loss_before
    for name, param in pipe.unet.named_parameters():
        if name in lora_names:
            continue
        base_name = name.replace(".base_layer.", ".")
        assert torch.equal(param, base[base_name]), f"base weight {name} changed"
    changed = [n for n, p in pipe.unet.named_parameters() if n in lora_names and not torch.equal(p, lora_before[n])]
    assert len(changed) == len(lora_names)


def test_8bit_adam_is_bitsandbytes():
    import bitsandbytes as bnb
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(8192))], learning_rate=1e-3, use_8bit_adam=True,
                               weight_decay=0.0)
    assert isinstance(optimizer, bnb.optim.AdamW8bit)


def test_lora_invariants_with_nonzero_init(setup):
    """A randomly initialised (non-zero) adapter changes the output; disabled, it is the base."""
    pipe, scheduler, latents, e_tgt = setup
    unet = pipe.unet
    x = torch.randn((2, *latents.shape[1:]), generator=torch.Generator().manual_seed(3))
    t = torch.tensor([10, 700])
    cond = e_tgt.prompt_embeds.expand(2, -1, -1)
    with torch.no_grad():
        base = unet(x, t, encoder_hidden_states=cond).sample
        add_lora(unet, rank=4, alpha=8, target_modules=ATTN, seed=0, init_lora_weights=False)
        adapted = unet(x, t, encoder_hidden_states=cond).sample
        unet.disable_adapters()
        disabled = unet(x, t, encoder_hidden_states=cond).sample
        unet.enable_adapters()
        again = unet(x, t, encoder_hidden_states=cond).sample
    assert (adapted - base).abs().max() > 1e-3
    torch.testing.assert_close(disabled, base, rtol=0, atol=0)
    torch.testing.assert_close(again, adapted, rtol=0, atol=0)


def test_fused_lora_computes_the_adapter_and_restores_the_base_bit_for_bit(setup):
    """Step C runs with the LoRA merged: the same output to rounding; after, the base weights are
    exactly the base's again (unfusing alone leaves rounding), and the adapter still switches."""
    pipe, scheduler, latents, e_tgt = setup
    unet = pipe.unet
    x = torch.randn((2, *latents.shape[1:]), generator=torch.Generator().manual_seed(3))
    t = torch.tensor([10, 700])
    cond = e_tgt.prompt_embeds.expand(2, -1, -1)
    before = snapshot(unet)
    with torch.no_grad():
        base = unet(x, t, encoder_hidden_states=cond).sample
        add_lora(unet, rank=4, alpha=8, target_modules=ATTN + ["conv1", "conv2", "ff.net.2"], seed=0,
                 init_lora_weights=False)
        adapted = unet(x, t, encoder_hidden_states=cond).sample
        weights = {n: p.detach().clone() for n, p in unet.named_parameters()}
        with fused_lora(pipe):
            merged = [m for m in unet.modules() if getattr(m, "merged", False)]
            fused = unet(x, t, encoder_hidden_states=cond).sample
            changed = [n for n, p in unet.named_parameters() if not torch.equal(p, weights[n])]
        after = unet(x, t, encoder_hidden_states=cond).sample
        unet.disable_adapters()
        disabled = unet(x, t, encoder_hidden_states=cond).sample
    assert merged and changed and all(".base_layer." in n for n in changed)  # it did merge
    torch.testing.assert_close(fused, adapted, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(p, weights[n]) for n, p in unet.named_parameters())  # bit for bit
    torch.testing.assert_close(after, adapted, rtol=0, atol=0)
    torch.testing.assert_close(disabled, base, rtol=0, atol=0)
    unet.unload_lora()
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())


@pytest.mark.parametrize("where", ["inside", "while fusing"])
def test_fused_lora_restores_the_base_after_an_error(setup, monkeypatch, where):
    pipe = setup[0]
    unet = pipe.unet
    add_lora(unet, rank=4, alpha=8, target_modules=ATTN, seed=0, init_lora_weights=False)
    weights = {n: p.detach().clone() for n, p in unet.named_parameters()}
    if where == "while fusing":  # e.g. out of memory after some layers merged
        fuse = pipe.fuse_lora
        monkeypatch.setattr(pipe, "fuse_lora", lambda **kw: (fuse(**kw), (_ for _ in ()).throw(RuntimeError("boom"))))
    with pytest.raises(RuntimeError, match="boom"):
        with fused_lora(pipe):
            raise RuntimeError("boom")
    assert not any(getattr(m, "merged", False) for m in unet.modules())
    assert all(torch.equal(p, weights[n]) for n, p in unet.named_parameters())


def test_fused_lora_keeps_its_copy_on_the_gpu_only_with_room_to_spare():
    from imagic_lora.lora import copy_device
    gpu, gb = torch.device("cuda", 0), 2 ** 30
    assert copy_device(gpu, 2 * gb, free_bytes=5 * gb) == gpu
    assert copy_device(gpu, 2 * gb, free_bytes=3 * gb) == torch.device("cpu")  # twice the copy or the host
    assert copy_device(torch.device("cpu"), 2 * gb, free_bytes=None) == torch.device("cpu")
    assert copy_device(torch.device("mps"), 1, free_bytes=None) == torch.device("cpu")


def test_fused_lora_without_an_adapter_changes_nothing(setup):
    pipe = setup[0]
    before = snapshot(pipe.unet)
    with fused_lora(pipe):
        pass
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_lora_init_is_seeded(tiny_sd):
    weights = []
    for _ in range(2):
        pipe = load_pipeline(str(tiny_sd))
        add_lora(pipe.unet, rank=4, alpha=4, target_modules=ATTN, seed=7)
        weights.append({n: p.detach().clone() for n, p in pipe.unet.named_parameters() if p.requires_grad})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_lora_targets_that_match_nothing_are_refused(tiny_sd):
    pipe = load_pipeline(str(tiny_sd))
    with pytest.raises(ValueError):
        add_lora(pipe.unet, rank=4, alpha=4, target_modules=["no_such_module"], seed=0)


def test_full_finetune_trains_every_weight(setup):
    pipe, scheduler, latents, e_tgt = setup
    base = snapshot(pipe.unet)
    params = full_finetune_parameters(pipe.unet)
    accelerator = Accelerator(cpu=True)
    optimizer = make_optimizer(params, learning_rate=1e-3, use_8bit_adam=False, weight_decay=0.0,
                               accelerator=accelerator)
    finetune(pipe.unet, scheduler, latents, e_tgt, optimizer, accelerator=accelerator, steps=3, batch_size=2,
             generator=torch.Generator().manual_seed(0), weight_dtype=torch.float32)
    after = snapshot(pipe.unet)
    changed = sum(not torch.equal(base[k], after[k]) for k in base)
    assert changed > 0.9 * len(base)


def test_epsilon_and_v_prediction_targets(tiny_sd, tiny_sd_v):
    eps_scheduler = training_noise_scheduler(load_pipeline(str(tiny_sd)))
    v_scheduler = training_noise_scheduler(load_pipeline(str(tiny_sd_v)))
    assert eps_scheduler.config.prediction_type == "epsilon"
    assert v_scheduler.config.prediction_type == "v_prediction"
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn((3, 4, 8, 8), generator=g), torch.randn((3, 4, 8, 8), generator=g)
    t = torch.tensor([0, 500, 999])
    assert torch.equal(prediction_target(eps_scheduler, x, noise, t), noise)
    alpha_bar = v_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected_v = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x
    torch.testing.assert_close(prediction_target(v_scheduler, x, noise, t), expected_v)


def test_denoising_loss_trains_against_the_v_target(tiny_sd_v):
    """A UNet that outputs exactly v has zero loss on a v-prediction model, and not zero for eps."""
    scheduler = training_noise_scheduler(load_pipeline(str(tiny_sd_v)))
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    embeds = PromptEmbeds(torch.zeros(1, 77, 32))

    class Oracle(torch.nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.kind = kind

        def forward(self, noisy, t, encoder_hidden_states):
            # Recover the noise from x_t and the known clean latents, then return the target.
            a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
            noise = (noisy - a.sqrt() * latents) / (1 - a).sqrt()
            out = a.sqrt() * noise - (1 - a).sqrt() * latents if self.kind == "v" else noise

            class Out:
                sample = out
            return Out()

    def loss(kind):
        return float(denoising_loss(Oracle(kind), scheduler, latents, embeds, batch_size=8,
                                    generator=torch.Generator().manual_seed(0), weight_dtype=torch.float32))
    assert loss("v") < 1e-8
    assert loss("eps") > 1e-2


def test_interpolation_endpoints_and_extrapolation():
    e_tgt = PromptEmbeds(torch.ones(1, 77, 4), torch.ones(1, 8))
    e_opt = PromptEmbeds(torch.zeros(1, 77, 4), torch.full((1, 8), 2.0))
    assert torch.equal(interpolate(e_tgt, e_opt, 0.0).prompt_embeds, e_opt.prompt_embeds)
    assert torch.equal(interpolate(e_tgt, e_opt, 1.0).pooled_prompt_embeds, e_tgt.pooled_prompt_embeds)
    mid = interpolate(e_tgt, e_opt, 0.7)
    torch.testing.assert_close(mid.prompt_embeds, torch.full((1, 77, 4), 0.7))
    torch.testing.assert_close(mid.pooled_prompt_embeds, torch.full((1, 8), 0.7 + 0.3 * 2.0))
    torch.testing.assert_close(interpolate(e_tgt, e_opt, 1.5).prompt_embeds, torch.full((1, 77, 4), 1.5))


def test_same_seed_same_training(tiny_sd, input_png):
    results = []
    for _ in range(2):
        pipe = load_pipeline(str(tiny_sd))
        scheduler = training_noise_scheduler(pipe)
        latents = encode_image_latents(pipe.vae, pil_to_tensor(load_image(input_png, native_resolution(pipe))))
        e_tgt = encode_prompt(pipe, "a red circle", "cpu")
        e_opt, _ = optimize_embedding(pipe.unet, scheduler, latents, e_tgt, accelerator=Accelerator(cpu=True),
                                      steps=5, learning_rate=1e-2, batch_size=2,
                                      generator=torch.Generator().manual_seed(5), weight_dtype=torch.float32)
        params = add_lora(pipe.unet, rank=2, alpha=2, target_modules=ATTN, seed=5)
        accelerator = Accelerator(cpu=True)
        optimizer = make_optimizer(params, learning_rate=1e-2, use_8bit_adam=True, weight_decay=0.0,
                                   accelerator=accelerator)
        finetune(pipe.unet, scheduler, latents, e_opt, optimizer, accelerator=accelerator, steps=5, batch_size=2,
                 generator=torch.Generator().manual_seed(6), weight_dtype=torch.float32)
        results.append((e_opt.prompt_embeds, [p.detach().clone() for p in params]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_bf16_mixed_precision_keeps_trainables_fp32(tiny_sd, input_png):
    pipe = load_pipeline(str(tiny_sd), weight_dtype=torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    scheduler = training_noise_scheduler(pipe)
    latents = encode_image_latents(pipe.vae, pil_to_tensor(load_image(input_png, native_resolution(pipe))))
    assert latents.dtype == torch.float32
    e_tgt = encode_prompt(pipe, "a red circle", "cpu")
    e_opt, losses = optimize_embedding(pipe.unet, scheduler, latents, e_tgt, accelerator=accelerator, steps=2,
                                       learning_rate=1e-2, batch_size=2, generator=torch.Generator().manual_seed(0),
                                       weight_dtype=torch.bfloat16)
    params = add_lora(pipe.unet, rank=2, alpha=2, target_modules=ATTN, seed=0)
    optimizer = make_optimizer(params, learning_rate=1e-3, use_8bit_adam=True, weight_decay=0.0,
                               accelerator=accelerator)
    finetune(pipe.unet, scheduler, latents, e_opt, optimizer, accelerator=accelerator, steps=2, batch_size=2,
             generator=torch.Generator().manual_seed(0), weight_dtype=torch.bfloat16)
    assert e_opt.prompt_embeds.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in params)
    frozen = [p for p in pipe.unet.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses)


def test_timestep_bias_weights_and_draws():
    from imagic_lora.diffusion import draw_noise, timestep_weights

    assert timestep_weights("none", 1000, multiplier=3) is None
    assert timestep_weights("later", 1000, multiplier=1.0) is None  # no bias: the uniform randint draw
    later = timestep_weights("later", 1000, multiplier=3, portion=0.25)
    assert later.sum().item() == pytest.approx(1.0)
    # The last quarter carries 250 x 3 of the 750 + 750 units of weight: half the draws.
    assert later[750:].sum().item() == pytest.approx(0.5)
    assert later[749].item() * 3 == pytest.approx(later[750].item())
    earlier = timestep_weights("earlier", 1000, multiplier=3, portion=0.5)
    assert earlier[:500].sum().item() == pytest.approx(0.75)
    ranged = timestep_weights("range", 1000, multiplier=9, begin=100, end=200)
    assert ranged[100:200].sum().item() == pytest.approx(0.5)

    latents = torch.zeros(1, 4, 8, 8)
    timesteps, _ = draw_noise(latents, 4000, 1000, torch.Generator().manual_seed(0), later)
    assert (timesteps >= 750).float().mean().item() == pytest.approx(0.5, abs=0.03)
    again, _ = draw_noise(latents, 4000, 1000, torch.Generator().manual_seed(0), later)
    assert torch.equal(timesteps, again)
    uniform, _ = draw_noise(latents, 4000, 1000, torch.Generator().manual_seed(0))
    assert (uniform >= 750).float().mean().item() == pytest.approx(0.25, abs=0.03)


def test_step_b_trains_on_the_biased_timesteps_only(tiny_sd, input_png, tmp_path, monkeypatch):
    """The CLI's bias flags reach step B's draws (and not step A's)."""
    import imagic_lora.diffusion as diffusion
    from test_cli import run_inprocess

    drawn = []
    original = diffusion.draw_noise

    def recording(latents, batch_size, num_train_timesteps, generator, weights=None):
        timesteps, noise = original(latents, batch_size, num_train_timesteps, generator, weights)
        drawn.append((weights is not None, timesteps.tolist()))
        return timesteps, noise
    monkeypatch.setattr(diffusion, "draw_noise", recording)
    assert run_inprocess(tiny_sd, input_png, tmp_path / "out", "--emb_train_steps", "20", "--max_train_steps", "20",
                         "--train_batch_size", "4", "--timestep_bias_strategy", "range",
                         "--timestep_bias_begin", "990", "--timestep_bias_multiplier", "1e9",
                         "--num_seeds", "1", "--etas", "0.5") == 0
    step_a = [t for biased, ts in drawn if not biased for t in ts]
    step_b = [t for biased, ts in drawn if biased for t in ts]
    assert len(step_a) == 80 and len(step_b) == 80
    assert all(t >= 990 for t in step_b)
    assert min(step_a) < 990  # step A keeps the uniform draw


def test_step_a_and_step_b_draw_their_own_batch_sizes(tiny_sd, input_png, tmp_path, monkeypatch):
    """--emb_train_batch_size sets step A's noise draws per step, --train_batch_size step B's; without
    the former, step A follows --train_batch_size."""
    import imagic_lora.diffusion as diffusion
    from test_cli import run_inprocess

    original = diffusion.draw_noise

    def run(out, *flags):
        sizes = []

        def recording(latents, batch_size, *args, **kwargs):
            sizes.append(batch_size)
            return original(latents, batch_size, *args, **kwargs)
        monkeypatch.setattr(diffusion, "draw_noise", recording)
        assert run_inprocess(tiny_sd, input_png, tmp_path / out, "--emb_train_steps", "5", "--max_train_steps", "4",
                             "--train_batch_size", "2", "--num_seeds", "1", "--etas", "0.5", "--no-pick_edit",
                             *flags) == 0
        return sizes

    assert run("apart", "--emb_train_batch_size", "3") == [3] * 5 + [2] * 4
    assert run("same") == [2] * 9


def test_small_unets_train_with_pytorch_convolutions_and_the_flag_comes_back(tiny_sd, input_png, tmp_path,
                                                                            monkeypatch):
    """Steps A and B of a very small UNet on a multi-threaded CPU run without oneDNN (faster there);
    one thread, larger UNets, larger latents and everything after keep PyTorch's default."""
    from types import SimpleNamespace

    import imagic_lora.diffusion as diffusion
    import imagic_lora.runtime as runtime
    from test_cli import run_inprocess

    def unet(channels, dtype=torch.float32):
        return SimpleNamespace(config=SimpleNamespace(block_out_channels=(channels, 2 * channels)), dtype=dtype)

    assert torch.backends.mkldnn.enabled
    threads = torch.get_num_threads()
    try:
        for n, model, latents, expected in [
                (2, unet(32), torch.zeros(1, 4, 16, 16), False), (2, unet(16), torch.zeros(1, 4, 8, 8), False),
                (2, unet(64), torch.zeros(1, 4, 16, 16), True), (2, unet(32), torch.zeros(1, 4, 32, 32), True),
                (1, unet(32), torch.zeros(1, 4, 16, 16), True),
                (2, unet(32, torch.bfloat16), torch.zeros(1, 4, 16, 16), True),
                (2, unet(32), torch.zeros(1, 4, 16, 16, device="meta"), True)]:
            torch.set_num_threads(n)
            with runtime.training_convolutions(model, latents):
                assert torch.backends.mkldnn.enabled is expected, (n, model, latents.shape, latents.device)
            assert torch.backends.mkldnn.enabled
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError):
            with runtime.training_convolutions(unet(32), torch.zeros(1, 4, 16, 16)):
                assert torch.backends.mkldnn.enabled is False
                raise RuntimeError("boom")
        assert torch.backends.mkldnn.enabled
    finally:
        torch.set_num_threads(threads)

    seen = []
    original = diffusion.denoising_loss

    def recording(*args, **kwargs):
        seen.append(torch.backends.mkldnn.enabled)
        return original(*args, **kwargs)
    monkeypatch.setattr(diffusion, "denoising_loss", recording)
    torch.set_num_threads(2)
    try:
        assert run_inprocess(tiny_sd, input_png, tmp_path / "out", "--emb_train_steps", "3", "--max_train_steps",
                             "3", "--num_seeds", "1", "--etas", "0.5") == 0
    finally:
        torch.set_num_threads(threads)
    assert seen == [False] * 6  # the tiny test UNet: 16 channels, 8x8 latents
    assert torch.backends.mkldnn.enabled


def test_a_resumed_learning_rate_schedule_continues_where_it_stopped():
    from imagic_lora.diffusion import make_lr_scheduler

    def rates(start_step, total=12):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=1e-2)
        schedule = make_lr_scheduler("cosine", optimizer, warmup_steps=2, total_steps=total, start_step=start_step)
        out = []
        for _ in range(start_step, total):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return out

    straight = rates(0)
    assert straight[0] == 0.0 and max(straight) == pytest.approx(1e-2) and straight[-1] < 1e-3  # warmup, then decay
    assert rates(5) == straight[5:]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=1e-2)
    assert make_lr_scheduler("constant", optimizer, warmup_steps=0, total_steps=10) is None  # nothing to do
