"""Known, harmless messages of the libraries, silenced where they are logged, for the known cases only.

Each filter drops one message of one logger when it says exactly what is known to be harmless here;
every other message of those loggers, and every other logger, is untouched.
"""

from __future__ import annotations

import logging


class _Drop(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not all(fragment in message for fragment in self.fragments)


#: logger -> the messages dropped, each given by the fragments it contains, all of them.
KNOWN = {
    # bitsandbytes looks for optional 4-bit CPU kernels on import; 8-bit AdamW never uses them. Why the load
    # fails varies: no `kernels` package; with it (transformers >= 5.25 requires it), a hub kernel refused as
    # untrusted, or not in the cache of an offline machine. Whatever the reason, the kernel is not needed.
    "bitsandbytes.backends.cpu.ops": (("Failed to load CPU gemm_4bit_forward from kernels-community",),),
    # The kernels package, asked for that kernel offline, says it skips the hub's trust check.
    "kernels._internals.hf_hub": (("Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
                                   "offline mode"),),
    # transformers falls back to the PIL image processors without torchvision; no pipeline here uses them.
    "transformers.utils.import_utils": (("requires torchvision (not installed); falling back to",),),
}

_installed: set[str] = set()


def silence_known_messages() -> None:
    """Install the filters (idempotent): call before the libraries are imported."""
    for name, messages in KNOWN.items():
        if name not in _installed:
            for fragments in messages:
                logging.getLogger(name).addFilter(_Drop(*fragments))
            _installed.add(name)


def no_text_encoder_lora_note() -> logging.Filter:
    """A filter for diffusers' loaders while loading a UNet-only LoRA: its note that the text encoder has
    no LoRA keys says what an imagic-lora artifact is, not a problem."""
    return _Drop("No LoRA keys associated to", "found with the prefix")
