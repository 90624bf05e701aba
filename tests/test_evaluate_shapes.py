"""The shapes benchmark's bookkeeping: its cases, and reusing an earlier run's rows."""

import json
from argparse import Namespace

import pytest

import imagic_lora.shapes_benchmark as shapes_benchmark


@pytest.fixture(scope="module")
def bench():
    return shapes_benchmark


def test_cases_change_one_attribute_each_kind_in_turn(bench):
    cases = bench.make_cases(8, seed=0)
    assert [c.attribute for c in cases] == ["shape", "color", "size", "background"] * 2
    for case in cases:
        changed = [k for k, v in case.target.attributes().items() if v != case.scene.attributes()[k]]
        assert changed == [case.attribute]
    assert [c.target_prompt for c in bench.make_cases(8, seed=0)] == [c.target_prompt for c in cases]
    assert [c.target_prompt for c in bench.make_cases(8, seed=1)] != [c.target_prompt for c in cases]


def test_version_1_cases_are_the_ones_every_reported_figure_was_measured_on(bench):
    """The benchmark's 60 cases and the 24 tuning cases, as the landed code before version 2 drew them
    (the digest of their captions, spans and centres, computed at ea9fa84)."""
    import hashlib
    cases = bench.make_cases(60, 0) + bench.make_cases(24, 1000)
    rows = [(c.attribute, c.scene.caption, c.target.caption, round(c.scene.span, 9), round(c.scene.cx, 9),
             round(c.scene.cy, 9), round(c.target.span, 9), round(c.target.cx, 9), round(c.target.cy, 9), c.seed)
            for c in cases]
    assert hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16] == "59fa8bf70c704260"


def test_version_2_adds_a_fifth_kind_the_direction_of_a_triangle(bench):
    cases = bench.make_cases(75, seed=0, world=2)
    assert [c.attribute for c in cases] == ["shape", "color", "size", "background", "direction"] * 15
    for case in cases:
        before, after = case.scene.attributes(), case.target.attributes()
        changed = [k for k in {*before, *after} if before.get(k) != after.get(k)]
        if case.attribute == "shape":  # a triangle gains or loses its direction with its shape
            assert set(changed) - {"direction"} == {"shape"}
            assert (case.target.shape == "triangle") == (case.target.direction is not None)
        else:
            assert changed == [case.attribute], case
        if case.attribute == "direction":
            assert case.scene.shape == "triangle" and "pointing" in case.target_prompt
            assert (case.scene.cx, case.scene.cy, case.scene.span) == (case.target.cx, case.target.cy,
                                                                        case.target.span)
    assert len({c.target.direction for c in cases if c.attribute == "direction"}) == 4
    assert {c.world for c in cases} == {2} and {c.world for c in bench.make_cases(5, seed=0)} == {1}


def test_version_2_needs_a_model_that_knows_its_words(bench):
    with pytest.raises(SystemExit, match="--world 2: .* does not know down, left, pointing, right, up"):
        bench.check_world(str(bench.BUNDLED_MODEL), 2)
    bench.check_world(str(bench.BUNDLED_MODEL), 1)
    bench.check_world(str(bench.BUNDLED_MODEL_V2), 2)  # the bundled version-2 model, the default for --world 2
    assert bench.parse_args(["--world", "2", "--output_dir", "x"]).model == str(bench.BUNDLED_MODEL_V2)
    assert bench.parse_args(["--output_dir", "x"]).model == str(bench.BUNDLED_MODEL)


def test_kinds_keep_their_cases_as_in_the_full_run(bench):
    cases = bench.make_cases(20, seed=1000, world=2)
    direction = bench.select_kinds(cases, ["direction"], 2)
    assert [c.index for c in direction] == [4, 9, 14, 19]
    assert all(c.scene.shape == "triangle" and c.target.direction != c.scene.direction for c in direction)
    assert [c.index for c in bench.select_kinds(cases, ["size", "color"], 2)] == [1, 2, 6, 7, 11, 12, 16, 17]
    with pytest.raises(SystemExit, match="--kinds: world version 1 has no edit of kind direction"):
        bench.select_kinds(bench.make_cases(4, seed=0), ["direction"], 1)


def _run(cases, methods, etas=(0.0, 1.0)):
    results = [{"case": c.index, "attribute": c.attribute, "input": c.scene.caption, "target": c.target_prompt,
                "methods": {m: {"records": [{"setting": e, "seed": 0, "success": True, "place": m == "a",
                                             "both": m == "a"} for e in etas], "wall_s": 1.0} for m in methods}}
               for c in cases]
    meta = {"num_seeds": 1, "etas": list(etas), "strengths": [0.5], "command": "python scripts/evaluate_shapes.py",
            "methods": {m: ["--flag", m] for m in methods}, "cli_defaults": {"emb_train_steps": 300}}
    return results, meta


def test_reuse_takes_the_methods_not_run_and_only_those(bench, tmp_path):
    cases = bench.make_cases(4, seed=0)
    old_results, meta = _run(cases, ["a", "b", "c"])
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"meta": meta, "cases": old_results}))
    new_results, _ = _run(cases, ["a"])
    new_results[0]["methods"]["a"]["records"][0]["place"] = False  # this run's own rows stay its own
    args = Namespace(num_seeds=1, etas=[0.0, 1.0], strengths=[0.5])
    reused = bench.merge_reused(new_results, earlier, args)
    assert reused["methods"] == ["b", "c"] and reused["flags"] == {"b": ["--flag", "b"], "c": ["--flag", "c"]}
    assert all(set(r["methods"]) == {"a", "b", "c"} for r in new_results)
    assert new_results[0]["methods"]["a"]["records"][0]["place"] is False
    assert bench.summarise(new_results)["b"]["settings"]["1.0"]["n"] == 4


def test_reuse_refuses_other_cases_or_settings(bench, tmp_path):
    old_results, meta = _run(bench.make_cases(4, seed=0), ["a", "b"])
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"meta": meta, "cases": old_results}))
    other_cases, _ = _run(bench.make_cases(4, seed=5), ["a"])
    with pytest.raises(SystemExit, match="another case"):
        bench.merge_reused(other_cases, earlier, Namespace(num_seeds=1, etas=[0.0, 1.0], strengths=[0.5]))
    same_cases, _ = _run(bench.make_cases(4, seed=0), ["a"])
    with pytest.raises(SystemExit, match="etas"):
        bench.merge_reused(same_cases, earlier, Namespace(num_seeds=1, etas=[0.0, 0.8], strengths=[0.5]))
    with pytest.raises(SystemExit, match="world 1, this run with 2"):
        bench.merge_reused(same_cases, earlier, Namespace(num_seeds=1, etas=[0.0, 1.0], strengths=[0.5], world=2))
    with pytest.raises(SystemExit, match="edit_seed_offset"):  # the same cases, the edits drawn otherwise
        bench.merge_reused(same_cases, earlier, Namespace(num_seeds=1, etas=[0.0, 1.0], strengths=[0.5],
                                                          edit_seed_offset=500))


def test_the_edit_seed_offset_moves_the_edits_seed_not_the_case(bench, tmp_path):
    class RecordingCli:  # stands in for the CLI's entry point only, to read what it is asked to run
        argv = None

        def main(self, argv):
            RecordingCli.argv = argv
            return 1

    case = bench.make_cases(1, seed=0)[0]
    for offset in (0, 500):
        with pytest.raises(RuntimeError, match="failed on case 0"):
            bench.run_imagic(RecordingCli(), case, tmp_path / "in.png", [], [0.0, 1.0], 2, tmp_path, (32, 32),
                             seed_offset=offset)
        argv = RecordingCli.argv
        assert argv[argv.index("--seed") + 1] == str(case.seed + offset)
        assert argv[argv.index("--target_prompt") + 1] == case.target_prompt


def test_report_shows_the_automatic_pick_beside_the_etas(bench, tmp_path):
    """The 'auto' row (one pick per case) is summarised, drawn as a line in the plot, and reported
    beside the recommended eta; it never stands in for an eta in the comparisons."""
    cases = bench.make_cases(4, seed=0)
    results, meta = _run(cases, ["imagic_lora", "sdedit"], etas=(0.0, 0.8))
    for i, r in enumerate(results):
        for record in r["methods"]["sdedit"]["records"]:
            record["success"] = False  # no strength reaches our success; only sdedit's 'auto' row would
        r["methods"]["imagic_lora"]["records"].append({"setting": bench.AUTO, "seed": 0, "picked_eta": 0.8,
                                                       "success": True, "place": i < 3, "both": i < 3})
        r["methods"]["sdedit"]["records"].append({"setting": bench.AUTO, "seed": 0, "success": True,
                                                  "place": True, "both": True})
    summary = bench.summarise(results)
    assert summary["imagic_lora"]["settings"]["auto"] == {"success": 1.0, "place": 0.75, "both": 0.75, "n": 4}
    meta.update(num_cases=4, device="CPU", torch="t", diffusers="d", model="m", recommended_eta=0.8)
    bench.write_markdown(tmp_path / "r.md", summary, meta)
    text = (tmp_path / "r.md").read_text()
    assert "| imagic_lora (automatic pick, one image per case) | auto | 100% | 75% | **75%** |" in text
    assert "| sdedit | 0.0 (its most success) | 0% |" in text  # sdedit's own 'auto' is not a strength
    bench.write_plot(tmp_path / "r.png", summary)
    assert (tmp_path / "r.png").stat().st_size > 0


def test_the_report_sets_the_pick_against_a_person_with_intervals(bench, tmp_path):
    """Per case: the pick is right when its AUTO record is; a person when any candidate is (eta 0, the
    reconstruction, never counts). The interval brackets the rate and is a bootstrap over cases."""
    cases = bench.make_cases(10, seed=0)
    results, meta = _run(cases, ["imagic_lora"], etas=(0.0, 0.8, 1.0))
    for i, r in enumerate(results):
        records = r["methods"]["imagic_lora"]["records"]
        records[0]["both"] = True  # eta 0 right everywhere: must not count for the person
        records[1]["both"] = i < 8  # a right candidate in 8 of 10 cases
        records[2]["both"] = False
        records.append({"setting": bench.AUTO, "seed": 0, "success": True, "place": True, "both": i < 5})
    summary = bench.summarise(results)
    v = summary["imagic_lora"]["pick_against_person"]
    assert (v["n"], v["pick"], v["person"]) == (10, 5, 8)
    assert v["pick_interval"][0] < 0.5 < v["pick_interval"][1] and v["person_interval"][1] <= 1.0
    assert v["pick_interval"] == bench.bootstrap_interval([i < 5 for i in range(10)])  # seeded: repeatable
    assert bench.bootstrap_interval([True] * 6) == [1.0, 1.0]
    kind = cases[0].attribute
    assert v["by_kind"][kind] == {"pick": sum(i < 5 for i, c in enumerate(cases) if c.attribute == kind),
                                  "person": sum(i < 8 for i, c in enumerate(cases) if c.attribute == kind),
                                  "n": sum(c.attribute == kind for c in cases)}
    meta.update(num_cases=10, device="CPU", torch="t", diffusers="d", model="m", recommended_eta=0.8)
    bench.write_markdown(tmp_path / "r.md", summary, meta)
    text = (tmp_path / "r.md").read_text()
    lo, hi = v["pick_interval"]
    assert f"| imagic_lora | **50% (5 of 10; {lo:.0%}-{hi:.0%})** | 80% (8 of 10;" in text
    results_without_pick, _ = _run(cases, ["a"])
    assert bench.summarise(results_without_pick)["a"]["pick_against_person"] is None


def test_a_report_of_some_kinds_names_only_those(bench, tmp_path):
    cases = bench.select_kinds(bench.make_cases(10, seed=1000, world=2), ["direction"], 2)
    results, meta = _run(cases, ["imagic_lora"], etas=(0.0, 0.8))
    meta.update(num_cases=len(cases), world=2, kinds=["direction"], device="CPU", torch="t", diffusers="d",
                model="m", recommended_eta=0.8)
    bench.write_markdown(tmp_path / "r.md", bench.summarise(results), meta)
    text = (tmp_path / "r.md").read_text()
    assert "2 seeded cases of world version 2 (2 each of direction edits)" in text
    assert "| method | eta / strength | success | place kept | both | both: direction |" in text


def _with_pick(results, method, right):
    for r, ok in zip(results, right):
        r["methods"][method]["records"].append({"setting": shapes_benchmark.AUTO, "seed": 0, "success": ok,
                                                "place": ok, "both": ok})
    return results


def test_two_runs_picks_are_compared_paired_over_their_cases(bench, tmp_path, capsys):
    """a - b over the shared cases with a paired bootstrap: runs that differ on the same 2 of 20 cases give
    an interval tighter than either run's own; the script reads both JSONs and refuses other cases."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import compare_picks

    cases = bench.make_cases(20, seed=0)
    a, meta = _run(cases, ["sweep"])
    b, _ = _run(cases, ["default"])
    _with_pick(a, "sweep", [i < 12 for i in range(20)])
    _with_pick(b, "default", [i < 10 for i in range(20)])
    d = bench.paired_difference(bench.picked_right(a, "sweep"), bench.picked_right(b, "default"))
    assert (d["n"], d["a"], d["b"], d["only_a"], d["only_b"]) == (20, 12, 10, [10, 11], [])
    assert d["difference"] == pytest.approx(0.1) and 0.0 <= d["interval"][0] < 0.1 < d["interval"][1] <= 0.25
    own = bench.bootstrap_interval([i < 12 for i in range(20)])
    assert d["interval"][1] - d["interval"][0] < own[1] - own[0]
    with pytest.raises(ValueError, match="no automatically picked edit"):
        bench.picked_right(_run(cases, ["x"])[0], "x")

    paths = []
    for name, results in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({"meta": {**meta, "world": 1}, "cases": results}))
    assert compare_picks.main([str(p) for p in paths]) == 0
    out = capsys.readouterr().out
    assert "a 12 of 20 (60%), b 10 (50%); a - b = +10 points (95% paired bootstrap: +0 to" in out
    assert "right in a only: [10, 11]; in b only: none" in out
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"meta": {**meta, "world": 1},
                                 "cases": _with_pick(_run(bench.make_cases(20, seed=1), ["default"])[0], "default",
                                                     [True] * 20)}))
    with pytest.raises(SystemExit, match="case 0 is not the same edit in both runs"):
        compare_picks.main([str(paths[0]), str(other)])
    with pytest.raises(SystemExit, match="--method_b 'nope'"):
        compare_picks.main([str(paths[0]), str(paths[1]), "--method_b", "nope"])


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/task"), reason="reads children from /proc (Linux)")
def test_a_terminated_benchmark_takes_its_worker_processes_with_it():
    """SIGTERM to the parent of map_in_processes ends the spawned workers too (they used to run on, orphaned)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    def children(pid):
        found = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
        return found

    def alive(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
        except FileNotFoundError:
            return False

    parent = subprocess.Popen([sys.executable, "-c", "import time\nfrom imagic_lora.shapes_benchmark import "
                               "map_in_processes\nmap_in_processes(time.sleep, [300, 300], 2)"])
    try:
        deadline = time.time() + 120
        workers = []
        while len(workers) < 2 and time.time() < deadline and parent.poll() is None:
            time.sleep(0.5)
            workers = [c for c in children(parent.pid)
                       if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()] if alive(parent.pid) else []
        assert len(workers) == 2, "the two workers never started"
        time.sleep(2)  # let them reach time.sleep
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) != 0
        deadline = time.time() + 30
        while any(alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(alive(w) for w in workers), "a worker outlived the terminated benchmark"
    finally:
        if parent.poll() is None:
            parent.kill()
        for w in workers if "workers" in locals() else []:
            if alive(w):
                os.kill(w, signal.SIGKILL)
