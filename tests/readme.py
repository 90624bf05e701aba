"""The README's code blocks, run as a reader runs them (tests/test_readme.py).

A block runs unless the line before it is ``<!-- readme: skip, REASON -->``. Bash blocks run with
``bash -e`` and Python blocks with this interpreter, one after the other in one fresh folder, as a
reader copies them into one terminal: a later block may use what an earlier one wrote.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"(?:<!-- readme: (?P<directive>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)


@dataclass
class Block:
    number: int
    lang: str
    code: str
    skip: str | None  # the reason it is not run, or None


def blocks(text: str) -> list[Block]:
    out = []
    for number, match in enumerate(_BLOCK.finditer(text), start=1):
        directive = (match["directive"] or "").strip()
        skip = directive.split(",", 1)[1].strip() if directive.startswith("skip") else None
        out.append(Block(number, match["lang"], match["code"], skip))
    return out


def run_blocks(folder: Path, readme: Path = ROOT / "README.md", timeout: int = 900) -> list[tuple[Block, str]]:
    """Run every block that is not skipped in ``folder``; return (block, output) per block run. Raises
    AssertionError naming the block and its output when one fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": os.path.dirname(sys.executable) + os.pathsep
           + os.environ.get("PATH", "")}
    ran = []
    for block in blocks(readme.read_text()):
        if block.skip is not None:
            continue
        if block.lang == "bash":
            command = ["bash", "-e", "-c", block.code]
        elif block.lang == "python":
            command = [sys.executable, "-c", block.code]
        else:
            continue  # data (JSON, text), not a command
        proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"README block {block.number} ({block.lang}) failed:\n{block.code}\n{output[-3000:]}"
        ran.append((block, output))
    return ran
