#!/usr/bin/env python
"""The automatic pick of two shapes benchmark runs, paired over the cases they share.

    python scripts/compare_picks.py new/shapes_benchmark.json old/shapes_benchmark.json
    python scripts/compare_picks.py run.json run.json --method_a sweep --method_b default

Prints each run's share of cases whose picked edit (edit.png) is edited and in place, the difference with a
95% paired bootstrap interval over cases (10,000 resamples, seed 0: the same cases drawn for both runs), the
difference by kind of edit, and the cases only one run got right. Each run's own interval is in its report;
two runs of the same cases share their easy and hard cases, so the paired interval is the narrower, honest one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagic_lora.shapes_benchmark import AUTO, paired_difference, picked_right  # noqa: E402


def picking_method(run: dict, flag: str, name: str | None) -> str:
    """``name``, or the run's only method with an automatically picked edit."""
    methods = [m for m in run["cases"][0]["methods"]
               if any(r["setting"] == AUTO for r in run["cases"][0]["methods"][m]["records"])]
    if name is not None:
        if name not in methods:
            raise SystemExit(f"{flag} {name!r}: the run's methods with a pick are {methods}")
        return name
    if len(methods) != 1:
        raise SystemExit(f"the run has {len(methods)} methods with a pick ({methods}); name one with {flag}")
    return methods[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_a", help="A shapes_benchmark.json (scripts/evaluate_shapes.py's output).")
    p.add_argument("run_b", help="The run to compare it with, on the same cases (same --seed and --world).")
    p.add_argument("--method_a", default=None, help="run_a's method (default: its only one with a pick).")
    p.add_argument("--method_b", default=None, help="run_b's method (default: its only one with a pick).")
    args = p.parse_args(argv)
    runs = [json.loads(Path(path).read_text()) for path in (args.run_a, args.run_b)]
    for flag, run in zip(("run_a", "run_b"), runs):
        if not run.get("cases"):
            raise SystemExit(f"{flag}: no cases in {getattr(args, flag)}")
    methods = [picking_method(run, f"--method_{x}", name)
               for run, x, name in zip(runs, "ab", (args.method_a, args.method_b))]
    worlds = [run["meta"].get("world", 1) for run in runs]
    if worlds[0] != worlds[1]:
        raise SystemExit(f"run_a is of world version {worlds[0]}, run_b of {worlds[1]}: not the same cases")
    right = [picked_right(run["cases"], m) for run, m in zip(runs, methods)]
    inputs = [{c["case"]: c["input"] + " -> " + c["target"] for c in run["cases"]} for run in runs]
    shared = set(right[0]) & set(right[1])
    differ = [c for c in sorted(shared) if inputs[0][c] != inputs[1][c]]
    if differ:
        raise SystemExit(f"case {differ[0]} is not the same edit in both runs (other --seed?): "
                         f"{inputs[0][differ[0]]!r} / {inputs[1][differ[0]]!r}")
    d = paired_difference(*right)
    print(f"a = {args.run_a} ({methods[0]}), b = {args.run_b} ({methods[1]}), {d['n']} cases in common")
    print(f"the pick edited and in place: a {d['a']} of {d['n']} ({d['a'] / d['n']:.0%}), "
          f"b {d['b']} ({d['b'] / d['n']:.0%}); a - b = {100 * d['difference']:+.0f} points "
          f"(95% paired bootstrap: {100 * d['interval'][0]:+.0f} to {100 * d['interval'][1]:+.0f})")
    kinds = {c["case"]: c["attribute"] for c in runs[0]["cases"]}
    for kind in dict.fromkeys(kinds[c] for c in sorted(shared)):
        cases = [c for c in sorted(shared) if kinds[c] == kind]
        a, b = (sum(r[c] for c in cases) for r in right)
        print(f"  {kind}: a {a} / b {b} of {len(cases)}")
    print(f"right in a only: {d['only_a'] or 'none'}; in b only: {d['only_b'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
