"""Step C's automatic pick (imagic_lora.pick): the rule, the classifier's properties on a tiny model,
its verdicts on the bundled model's renders, and the LoRA switched off only while scoring."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from PIL import Image

from imagic_lora import shapes
from imagic_lora.conditioning import encode_prompt, unconditional_embeds
from imagic_lora.config import BUNDLED_MODEL
from imagic_lora.diffusion import encode_image_latents
from imagic_lora.images import pil_to_tensor
from imagic_lora.lora import add_lora
from imagic_lora.models import load_pipeline, training_noise_scheduler
from imagic_lora.pick import (PLACE_SHIFT, _extent_shifts, choose, extent_centres, extent_shifts, pick_edit,
                               pick_record, score_timesteps, structure_distances, text_scores)

ATTN = ["to_q", "to_k", "to_v", "to_out.0"]


# The first three tests are step 2 of the rule (no shifts, or no in-place candidate beats the input);
# step 1 has its own tests below.
def test_choose_takes_the_nearest_of_the_edited():
    # scores: 0.1 is the best; 0.06 and 0.05 are >= half of it; 0.04 and -1 are not.
    pick = choose([0.04, 0.1, 0.06, -1.0, 0.05], [0.0, 0.9, 0.5, 0.1, 0.7], keep_fraction=0.5)
    assert pick.kept == [False, True, True, False, True] and pick.in_place is None
    assert pick.index == 2  # nearest among the kept, not the nearest overall (index 0)
    assert choose([0.04, 0.1, 0.06], [0.0, 0.9, 0.5], keep_fraction=0.3).index == 0
    assert choose([0.04, 0.1, 0.06], [0.0, 0.9, 0.5], keep_fraction=1.0).index == 1


def test_choose_measures_edited_from_the_inputs_own_score():
    # The input scores -0.6; the best candidate -0.1: edited means at least -0.35 (half-way).
    scores, distances = [-0.5, -0.25, -0.1, -0.45], [0.1, 0.6, 0.9, 0.05]
    pick = choose(scores, distances, keep_fraction=0.5, reference=-0.6)
    assert pick.kept == [False, True, True, False] and pick.index == 1 and pick.reference == -0.6
    # Against 0 (no reference) no candidate looks edited, so the best score alone would win.
    assert choose(scores, distances, keep_fraction=0.5).index == 2
    # The default fraction (0.6) asks for more: at least -0.6 + 0.6 * 0.5 = -0.3, so -0.28 counts, -0.32 not.
    assert choose([-0.5, -0.32, -0.1, -0.28], distances, reference=-0.6).kept == \
        [False, False, True, True]
    # A candidate that does not beat the input's own score is never counted as edited.
    assert choose([-0.7, -0.65], [0.0, 0.1], reference=-0.6).kept == [False, False]
    assert choose([-0.7, -0.65], [0.0, 0.1], reference=-0.6).index == 1


def test_choose_without_an_edited_candidate_takes_the_best_score():
    pick = choose([-0.3, -0.1, -0.2], [0.0, 0.9, 0.5], shifts=[0.0, 0.5, 0.5])
    assert pick.index == 1 and pick.kept == [False, False, False]
    assert pick.in_place == [True, False, False] and not pick.chosen_in_place  # in place, but not edited
    with pytest.raises(ValueError):
        choose([0.1], [0.1, 0.2])
    with pytest.raises(ValueError):
        choose([0.1, 0.2], [0.1, 0.2], shifts=[0.0])
    with pytest.raises(ValueError):
        choose([], [])


def test_choose_decides_among_the_candidates_in_place_first():
    # A moved edit (shift 0.3) scores far above the rest, as a moved object does under e_opt; in place: a turned
    # triangle (shift 0.02, its outline far from the input's: structure 0.6), an unedited twin of the input (0.03)
    # and a recolour (0.0).
    scores, distances, shifts, reference = [0.9, 0.3, 0.05, 0.28], [0.7, 0.6, 0.03, 0.0], [0.3, 0.02, 0.0, 0.0], -0.1
    # Step 2 alone: the moved one sets the bar (-0.1 + 0.6 * 1.0 = 0.5) and is all that passes it.
    assert choose(scores, distances, reference=reference).index == 0
    assert choose(scores, distances, reference=reference, shifts=shifts, place_shift=0).index == 0
    # Step 1: the best score in place, the turned one, though its outline is the farthest from the input's.
    pick = choose(scores, distances, reference=reference, shifts=shifts)
    assert pick.in_place == [False, True, True, True] and pick.chosen_in_place and pick.index == 1
    assert pick.kept == [False, True, True, True]  # in place and above the input's score
    # The bound is a flag's: at 0.01 only the twin and the recolour are in place, and 0.28 is their best.
    narrow = choose(scores, distances, reference=reference, shifts=shifts, place_shift=0.01)
    assert narrow.index == 3 and narrow.in_place == [False, False, True, True]
    # When no in-place candidate beats the input's own score, step 2 decides among all.
    fallback = choose([0.9, -0.2, -0.3], [0.6, 0.1, 0.2], reference=reference, shifts=[0.3, 0.0, 0.01])
    assert fallback.index == 0 and fallback.kept == [True, False, False]
    assert fallback.in_place == [False, True, True] and not fallback.chosen_in_place
    # The record says which step decided, which candidates were in place and how far each moved.
    record = pick_record(pick, [(0.8, 1, 1.0), (0.8, 2, 1.0), (1.0, 1, 0.8), (1.0, 2, 0.8)], "images/edit.png", "base")
    assert record["chosen_in_place"] is True and (record["eta"], record["seed"], record["strength"]) == (0.8, 2, 1.0)
    assert [c["in_place"] for c in record["candidates"]] == [False, True, True, True]
    assert [c["place_shift"] for c in record["candidates"]] == shifts
    # Ranked: the pick, the other in-place edits by score (0.28, then 0.05), then the moved one.
    assert [tuple(r.values()) for r in record["ranking"]] == \
        [(0.8, 2, 1.0), (1.0, 2, 0.8), (1.0, 1, 0.8), (0.8, 1, 1.0)]
    assert [c["strength"] for c in record["candidates"]] == [1.0, 1.0, 0.8, 0.8]
    record = pick_record(fallback, [(0.8, 1, 1.0), (0.8, 2, 1.0), (1.0, 1, 1.0)], "images/edit.png", "base")
    assert record["chosen_in_place"] is False and [c["in_place"] for c in record["candidates"]] == [False, True, True]
    off = choose(scores, distances, reference=reference)
    record = pick_record(off, [(0.8, 1, 1.0), (0.8, 2, 1.0), (1.0, 1, 0.8), (1.0, 2, 0.8)], "images/edit.png", "base")
    assert record["chosen_in_place"] is False and {c["in_place"] for c in record["candidates"]} == {None}
    assert {c["place_shift"] for c in record["candidates"]} == {None}


def test_choose_at_its_edges():
    # A shift equal to place_shift is in place; an in-place best equal to the input's score is not an edit.
    assert choose([0.5, 0.2], [0.6, 0.25], reference=0.0, shifts=[0.5, PLACE_SHIFT]).index == 1
    tie = choose([0.5, 0.0], [0.6, 0.25], reference=0.0, shifts=[0.5, 0.0])
    assert tie.index == 0 and not tie.chosen_in_place
    # A fraction of 1.0 keeps the best even where rounding puts reference + 1.0 * (best - reference) above it.
    assert choose([0.1 + 0.2], [0.1], reference=-0.1, keep_fraction=1.0).index == 0
    # A non-finite score (an fp16 overflow) counts as the lowest wherever it stands, and is recorded as null.
    nan = float("nan")
    assert choose([nan, 0.3], [0.1, 0.1], reference=-0.1, shifts=[0.0, 0.0]).index == 1
    assert choose([0.3, nan], [0.1, 0.1], reference=-0.1, shifts=[0.0, 0.0]).index == 0
    assert choose([nan, 0.3], [0.1, 0.5], reference=-0.1).index == 1
    record = pick_record(choose([nan, 0.3], [0.1, 0.1], reference=-0.1, shifts=[0.0, 0.0]),
                         [(1.0, 0, 1.0), (1.0, 1, 1.0)],
                         "e.png", "base")
    assert record["candidates"][0]["text_score"] is None and json.loads(json.dumps(record, allow_nan=False))


def test_structure_distance_sees_where_the_edges_are_not_their_colours():
    scene = shapes.Scene("circle", "red", "small", "white", 16, 20, 20)

    def pixels(**change):
        return pil_to_tensor(shapes.render(dataclasses.replace(scene, **change)))

    reference = pixels()
    candidates = torch.cat([reference, pixels(color="blue"), pixels(background="black", color="yellow"),
                            pixels(shape="square"), pixels(size="large", span=32), pixels(cx=26),
                            pixels(cx=44, cy=40), pixels(size="large", span=32, cx=40, cy=40)])
    d = structure_distances(candidates, reference)
    assert d.shape == (8,) and float(d.min()) >= 0.0 and float(d.max()) <= 2.0
    same, recolour, new_background, reshaped, grown, shifted, moved, grown_moved = d.tolist()
    assert same == recolour == new_background == 0.0  # colour and brightness move no edge
    assert reshaped < shifted < grown < grown_moved and grown < moved, d.tolist()
    # The same measure at 4x the resolution: the images are resized to 64 px first.
    big = torch.nn.functional.interpolate(torch.cat([candidates, reference]), scale_factor=4, mode="bilinear")
    torch.testing.assert_close(structure_distances(big[:-1], big[-1:]), d, rtol=0, atol=0.02)
    # A flat image has no edges: it matches another flat image and nothing else.
    flat = torch.zeros((1, 3, 64, 64))
    assert structure_distances(torch.cat([flat, reference]), flat).tolist() == [0.0, 1.0]


def test_the_extent_stays_with_a_triangle_turned_in_place_and_moves_with_a_moved_one():
    """Where structure_distances mixes where with what outline (a large triangle turned in place lies as far
    from its photo's edges as one moved 10 px), the extent's centre tells them apart, on a photo too."""
    scene = shapes.Scene("triangle", "red", "large", "white", 36, 30, 34, "up")
    photo = shapes.render_photo(scene, seed=3)
    turned = [shapes.render(dataclasses.replace(scene, direction=d)) for d in ("left", "down", "right")]
    moved = [shapes.render(dataclasses.replace(scene, cx=scene.cx + 10)),
             shapes.render(dataclasses.replace(scene, cy=scene.cy - 10))]
    recoloured = shapes.render(dataclasses.replace(scene, color="blue", background="black"))
    centres = extent_centres([photo, *turned, *moved, recoloured]) * 64  # in pixels
    shift = (centres[1:] - centres[0]).norm(dim=1).tolist()
    assert max(shift[:3]) <= 2.0 and shift[5] <= 2.0, shift  # turned, recoloured: in place
    assert min(shift[3:5]) >= 9.0, shift  # moved 10 px
    assert abs(centres[0, 0] - scene.cx) <= 1.5 and abs(centres[0, 1] - scene.cy) <= 1.5, centres[0]
    turned_d = structure_distances(torch.cat([pil_to_tensor(i) for i in turned]), pil_to_tensor(photo))
    assert float(turned_d.max()) > 0.25  # the structure distance counts a turned triangle as moved


def test_score_timesteps_cover_the_noisier_half():
    t = score_timesteps(1000, 16)
    assert t.shape == (16,) and int(t.min()) >= 500 and int(t.max()) < 1000
    assert bool((t[1:] > t[:-1]).all())


@pytest.fixture(scope="module")
def tiny(tiny_sd):
    pipe = load_pipeline(str(tiny_sd))
    scheduler = training_noise_scheduler(pipe)
    a = encode_prompt(pipe, "a large blue square on a white background", "cpu")
    b = encode_prompt(pipe, "a small red circle on a black background", "cpu")
    latents = torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    return pipe, scheduler, a, b, latents


def scores(pipe, scheduler, latents, e1, e2, seed=0, **kw):
    return text_scores(pipe.unet, scheduler, latents, e1, e2, generator=torch.Generator().manual_seed(seed),
                       weight_dtype=torch.float32, num_timesteps=8, **kw)


def test_text_scores_are_a_seeded_ratio_or_difference_of_the_two_errors(tiny):
    pipe, scheduler, a, b, latents = tiny
    ab = scores(pipe, scheduler, latents, a, b)  # the default: 1 - err(a) / err(b)
    assert ab.shape == (3,) and ab.dtype == torch.float32 and bool(ab.abs().min() > 0)
    ba = scores(pipe, scheduler, latents, b, a)
    torch.testing.assert_close((1 - ab) * (1 - ba), torch.ones(3))  # err(a)/err(b) x err(b)/err(a)
    difference = scores(pipe, scheduler, latents, a, b, score="difference")  # err(b) - err(a)
    torch.testing.assert_close(scores(pipe, scheduler, latents, b, a, score="difference"), -difference)
    assert torch.equal(torch.sign(difference), torch.sign(ab)) and not torch.allclose(difference, ab)
    with pytest.raises(ValueError, match="score must be one of"):
        scores(pipe, scheduler, latents, a, b, score="sum")
    torch.testing.assert_close(scores(pipe, scheduler, latents, a, a), torch.zeros(3), rtol=0, atol=0)
    torch.testing.assert_close(scores(pipe, scheduler, latents, a, b), ab, rtol=0, atol=0)  # same seed
    assert not torch.equal(scores(pipe, scheduler, latents, a, b, seed=1), ab)
    # the chunking of the UNet batch does not change the result; each candidate is scored on its own
    torch.testing.assert_close(scores(pipe, scheduler, latents, a, b, batch_size=5), ab)
    torch.testing.assert_close(scores(pipe, scheduler, latents[1:2], a, b), ab[1:2])


def test_the_bundled_model_scores_the_render_of_the_target_text_positive():
    """On a model that knows its world, the classifier tells which of two captions an image shows."""
    pipe = load_pipeline(str(BUNDLED_MODEL))
    scheduler = training_noise_scheduler(pipe)
    rng = random.Random(0)
    scenes = [shapes.random_scene(rng, shape="circle", color="blue", size="large", background="white"),
              shapes.random_scene(rng, shape="square", color="red", size="large", background="white"),
              shapes.random_scene(rng, shape="triangle", color="blue", size="small", background="gray")]
    latents = torch.cat([encode_image_latents(pipe.vae, pil_to_tensor(shapes.render_photo(s, seed=i)))
                         for i, s in enumerate(scenes)])
    blue_circle = encode_prompt(pipe, "a large blue circle on a white background", "cpu")
    red_square = encode_prompt(pipe, "a large red square on a white background", "cpu")
    s = text_scores(pipe.unet, scheduler, latents, blue_circle, red_square, generator=torch.Generator().manual_seed(0),
                    weight_dtype=pipe.unet.dtype)
    assert s[0] > 0 > s[1], s.tolist()


def test_unconditional_embeds_are_what_the_pipelines_guidance_contrasts_with(tiny, tmp_path):
    """The pick's default contrast: the empty prompt's embedding (SD), zeros where SDXL forces them."""
    from imagic_lora.tiny import make_tiny_sdxl
    pipe = tiny[0]
    e_null = unconditional_embeds(pipe, "cpu")
    torch.testing.assert_close(e_null.prompt_embeds, encode_prompt(pipe, "", "cpu").prompt_embeds, rtol=0, atol=0)
    assert e_null.pooled_prompt_embeds is None and e_null.prompt_embeds.dtype == torch.float32
    xl = load_pipeline(str(make_tiny_sdxl(tmp_path / "xl")))
    assert xl.config.force_zeros_for_empty_prompt
    z, text = unconditional_embeds(xl, "cpu"), encode_prompt(xl, "", "cpu")
    assert z.prompt_embeds.shape == text.prompt_embeds.shape
    assert z.pooled_prompt_embeds.shape == text.pooled_prompt_embeds.shape
    assert not z.prompt_embeds.any() and not z.pooled_prompt_embeds.any() and text.prompt_embeds.any()


def test_pick_edit_scores_with_the_lora_off_and_turns_it_back_on(tiny):
    pipe, scheduler, a, b, _ = tiny
    from PIL import Image, ImageDraw
    candidates = []
    for colour, box in (("white", (4, 4, 12, 12)), ("blue", (18, 16, 28, 26)), ((40, 40, 40), (10, 8, 20, 18))):
        candidate = Image.new("RGB", (32, 32), colour)
        ImageDraw.Draw(candidate).rectangle(box, fill="red")
        candidates.append(candidate)
    latents = torch.cat([encode_image_latents(pipe.vae, pil_to_tensor(c)) for c in candidates])
    base_scores = text_scores(pipe.unet, scheduler, latents, a, b, generator=torch.Generator().manual_seed(5),
                              weight_dtype=torch.float32)
    x = torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(1))
    add_lora(pipe.unet, rank=4, alpha=8, target_modules=ATTN, seed=0, init_lora_weights=False)
    try:
        with torch.no_grad():
            adapted = pipe.unet(x, torch.tensor([500]), encoder_hidden_states=a.prompt_embeds).sample
        lora_scores = text_scores(pipe.unet, scheduler, latents, a, b, generator=torch.Generator().manual_seed(5),
                                  weight_dtype=torch.float32)
        assert not torch.allclose(lora_scores, base_scores)  # the adapter does change the scores
        input_latents = latents[2:3]
        pick, scored_with = pick_edit(pipe, scheduler, candidates[2], input_latents, candidates, a, b, seed=5,
                                      weight_dtype=torch.float32)
        assert scored_with == "base"
        torch.testing.assert_close(torch.tensor(pick.text_scores), base_scores)
        # distances: the structure distance to the input (here the third candidate) from the PIL images
        expected = structure_distances(torch.cat([pil_to_tensor(c) for c in candidates]), pil_to_tensor(candidates[2]))
        torch.testing.assert_close(torch.tensor(pick.distances), expected)
        assert pick.distances[2] == pytest.approx(0.0, abs=1e-6) and min(pick.distances[:2]) > 0.1
        # the input is scored alongside (with the same noises): its score is the reference
        assert pick.reference == pytest.approx(float(base_scores[2]), abs=1e-6)
        with torch.no_grad():
            after = pipe.unet(x, torch.tensor([500]), encoder_hidden_states=a.prompt_embeds).sample
        torch.testing.assert_close(after, adapted, rtol=0, atol=0)  # the LoRA is back on
    finally:
        pipe.unet.delete_adapters(list(pipe.unet.peft_config))


def _square(x0: int, y0: int, side: int = 12, band: bool = False) -> torch.Tensor:
    """(1, 3, 64, 64) in [-1, 1]: a white frame with a dark square at (x0, y0); ``band``: a dark line along the
    frame's border too, as the model sometimes draws."""
    image = torch.ones(1, 3, 64, 64)
    image[..., y0:y0 + side, x0:x0 + side] = -1.0
    if band:
        image[..., 0, :] = image[..., -1, :] = image[..., :, 0] = image[..., :, -1] = -1.0
    return image


def test_the_extent_without_a_margin_is_the_pick_s_own_extent_shift():
    candidates, reference = torch.cat([_square(30, 10), _square(10, 40)]), _square(10, 10)
    as_pil = [Image.fromarray(((t.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
              for t in torch.cat([candidates, reference])]
    ours = _extent_shifts(candidates, reference, margin=0)
    assert torch.allclose(torch.tensor(ours), torch.tensor(extent_shifts(as_pil[:-1], as_pil[-1])))
    assert abs(ours[0] * 64 - 20) < 1 and abs(ours[1] * 64 - 30) < 1


def test_an_extent_margin_finds_the_object_inside_a_band_along_the_border():
    # The object moved 30 px right and 30 down (42 px); with a band along the border the extent spans the whole
    # frame, whose centre lies 16 px right and 16 down of the input's object (23 px). (replay_pick's rules.)
    moved, reference = _square(40, 40, band=True), _square(10, 10)
    plain = _extent_shifts(moved, reference)[0] * 64
    inside = _extent_shifts(moved, reference, margin=2)[0] * 64
    assert abs(plain - 16 * 2 ** 0.5) < 1.5 and abs(inside - 30 * 2 ** 0.5) < 1.5, (plain, inside)
