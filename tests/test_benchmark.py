"""The speed/memory benchmark's CPU smoke mode (tiny models): it runs and reports every field.
Its numbers are not speed claims; GPU figures live in docs/BENCHMARKS.md."""

from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
import sys

from conftest import ROOT


def test_tiny_benchmark_reports_phases_and_ratios(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--tiny", "--models", "sd15",
                           "--variants", "defaults", "recommended", "paper_full", "--max_measured_steps", "3",
                           "--output", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    runs = {r["variant"]: r for r in report["results"]}
    for variant in ("defaults", "recommended", "paper_full"):
        run = runs[variant]
        assert {"encode", "A", "B", "C", "pick", "save"} <= set(run["phases"])
        assert run["phases"]["B"]["steps"] == 3 and run["phases"]["B"]["steps_per_s"] > 0
        assert run["phases"]["A"]["tflops"] > 0
    # The paper's 1000 + 1500 steps are measured over 3 and extrapolated; ours too (100/200 > 3).
    assert runs["paper_full"]["phases"]["B"]["extrapolated"] is True
    assert runs["paper_full"]["schedule"] == {"emb_train_steps": 1000, "max_train_steps": 1500}
    assert runs["recommended"]["trainable_parameters"] < runs["paper_full"]["trainable_parameters"]
    # What a user gets with no flags: the model's preset (shapes for the tiny model) and its whole sweep.
    from imagic_lora.presets import SHAPES  # the tiny models get the shapes preset, as the bundled one
    assert runs["defaults"]["schedule"] == {k: SHAPES.values[k] for k in ("emb_train_steps", "max_train_steps")}
    table = out.with_suffix(".md").read_text()
    assert "| sd15 | recommended |" in table and "x less" in table and "smoke test" in table



def test_the_gpu_check_asks_only_for_variants_and_models_that_exist():
    """scripts/gpu_check.sh runs where no CI does: its benchmark calls must name what benchmark.py offers, the
    speed levers included."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from benchmark import MODELS, VARIANTS
    script = (ROOT / "scripts" / "gpu_check.sh").read_text().replace("\\\n", " ")
    calls = [shlex.split(line) for line in script.splitlines() if "scripts/benchmark.py" in line]
    asked = {"--variants": set(), "--models": set()}
    for words in calls:
        for flag in asked:
            start = words.index(flag) + 1
            asked[flag] |= set(itertools.takewhile(lambda w: not w.startswith("-"), words[start:]))
    assert calls and asked["--models"] <= set(MODELS) and asked["--variants"] <= set(VARIANTS)
    assert {"defaults", "paper_full", "compiled", "cuda_graphs"} <= asked["--variants"]
    # The check runs the GPU tier without the levers' test, the levers step runs that test alone.
    gpu_tests = re.findall(r"^def (test_\w+)", (ROOT / "tests" / "test_gpu.py").read_text(), re.M)
    levers = [t for t in gpu_tests if "levers" in t]
    assert len(gpu_tests) > 1 and levers == ["test_the_gpu_speed_levers_give_the_same_edit"]
    assert '-k "not levers"' in script and "-k levers" in script
