"""``python -m imagic_lora``: the command line."""

from .cli import entry

entry()
