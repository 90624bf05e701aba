"""The command line: ``imagic-lora``, ``python -m imagic_lora`` and ``accelerate launch scripts/imagic_lora.py``."""

from __future__ import annotations

import gc
import logging
import sys

from .config import parse_args
from .errors import ImagicInputError
from .interrupt import stop_with_launcher
from .quiet import silence_known_messages


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, then run (the heavy libraries load only after the flags parsed)."""
    logging.basicConfig(format="%(name)s: %(message)s", level=logging.INFO)
    cfg = parse_args(argv)
    try:  # what needs no model, before the heavy libraries load (a second at most)
        cfg.validate(check_image=False, complete=False)
    except ImagicInputError as e:
        print(f"imagic_lora: error: {e}", file=sys.stderr)
        return 2
    silence_known_messages()  # before the libraries that log them are imported
    from .runner import run
    return run(cfg)


def entry() -> None:
    """The console command's entry point."""
    stop_with_launcher()
    status = main()
    # The interpreter's last garbage collections walk every object torch, diffusers and transformers
    # made (about 1 s on 2 CPU cores); frozen, they are skipped. Nothing left open needs a finaliser.
    gc.freeze()
    sys.exit(status)
