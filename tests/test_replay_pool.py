"""scripts/replay_pool.py's rules on hand-made records (no model): what each rule chooses is what its help says."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "replay_pool", Path(__file__).resolve().parents[1] / "scripts" / "replay_pool.py")
replay = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replay)


def record(strength, score, distance, both, reference=0.0, shift=0.0):
    return {"case": 0, "kind": "direction", "strength": strength, "eta": 1.0, "seed": 0, "image": "x.png",
            "edited": both, "place": True, "both": both, "text_score": score, "distance": distance,
            "reference": reference, "extent_shift": shift}


def test_the_ladder_takes_the_lowest_strength_that_edits():
    # Strength 1.0 holds the best score; 0.8's best is 0.6 of the way there, 0.7's only 0.2.
    pool = [record(1.0, 1.0, 0.6, False), record(0.8, 0.6, 0.1, True), record(0.7, 0.2, 0.0, False)]
    assert replay.ladder(0.5, "text_score", "reference")(pool, pool[0]) is pool[1]
    assert replay.ladder(0.1, "text_score", "reference")(pool, pool[0]) is pool[2]
    assert replay.ladder(0.9, "text_score", "reference")(pool, pool[0]) is pool[0]


def test_the_rule_before_went_by_structure():
    # Step 1 by structure: of the two within 0.25 that beat the input, those at 0.9 of the way to their best
    # (0.5), the nearest; the turned edit in place (shift 0, structure 0.4) counts as moved.
    scores, distances = [1.0, 0.5, 0.48, 0.7], [0.6, 0.2, 0.1, 0.4]
    assert replay.choose_by_structure(scores, distances, reference=0.0) == 2
    assert replay.choose_by_structure(scores, distances, reference=0.0, place_keep_fraction=1.0) == 1
    # Off (0), or nothing in place beating the input: pick.choose's step 2 (0.6 of the way to 1.0: the nearest).
    assert replay.choose_by_structure(scores, distances, reference=0.0, place_distance=0) == 3
    assert replay.choose_by_structure(scores, distances, reference=0.6) == 0  # the bar 0.84: only 1.0 passes


def test_the_cli_rule_is_the_pick_and_the_tally_counts_cases_by_kind(tmp_path, capsys):
    # In place by extent (shift 0) and beating the input: step 1 chooses it over the moved one that scores higher,
    # though its outline is far from the input's (structure 0.6, a turned triangle's).
    rows = [record(1.0, 1.0, 0.6, False, shift=0.3), record(0.8, 0.5, 0.6, True)]
    assert replay.cli_rule("text_score", "reference")(rows, rows[0]) is rows[1]
    assert replay.structure_rule("text_score", "reference")(rows, rows[0]) is rows[0]
    cases = {0: rows, 1: [dict(r, case=1, kind="size", both=not r["both"]) for r in rows]}
    assert replay.tally(cases, replay.cli_rule("text_score", "reference"), [1.0, 0.8]) == " 1/2  0 0 0 0 1"
    assert replay.tally(cases, lambda pool, first: pool[0], [1.0]) == " 1/2  0 0 1 0 0"

    # Images for the extent: the input a square at (20, 20); case 0's candidates in place, case 1's first moved.
    from PIL import Image, ImageDraw

    def square(x: int, name: str) -> None:
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).rectangle([x - 6, 14, x + 6, 26], fill="red")
        image.save(tmp_path / name)
    for index, rows_ in cases.items():
        square(20, f"input{index}.png")
        for k, r in enumerate(rows_):
            r["image"] = f"c{index}_{k}.png"
            square(40 if (index, k) == (1, 0) else 20, r["image"])
    cases[1][0]["place"] = False
    (tmp_path / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for rows in cases.values() for r in rows))
    assert replay.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "extent shift tells images in place from moved ones" in out
    # Case 1: the moved candidate (strength 1.0) scores best but is out of place; the CLI's rule takes the other.
    replay.extent_shifts(cases, replay.load_images(tmp_path, cases))
    assert [r["extent_shift"] for r in cases[1]] == [20 / 64, 0.0]
    assert replay.cli_rule("text_score", "reference")(cases[1], cases[1][0]) is cases[1][1]
    person = [line for line in out.splitlines() if "a person (the judge)" in line]
    assert [line.split(":", 1)[1][1:] for line in person] == [  # pools [1.0], [0.8], [1.0, 0.8]
        " 1/2  0 0 1 0 0", " 1/2  0 0 0 0 1", " 2/2  0 0 1 0 1"]
