"""imagic-lora: Imagic (Kawar et al., CVPR 2023) with LoRA, for one real image and one target text.

The public helpers load lazily, so ``import imagic_lora`` stays cheap:
``edit_image(input_image, target_prompt, output_dir)`` runs a whole edit (``ImagicRecipe`` is the recipe
behind it: setup, edit, cleanup; ``ImagicConfig`` its settings); ``load_edit(pipe, folder)`` loads an edit
artifact into a stock pipeline; ``generate_image`` and ``generate_sweep`` make images from its
embeddings; ``interpolate`` is Imagic's step C mix.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "ImagicConfig": "config", "ImagicRecipe": "recipe", "edit_image": "recipe",
    "load_edit": "artifact", "read_edit": "artifact", "ImagicEdit": "artifact",
    "generate_image": "generate", "generate_sweep": "generate",
    "interpolate": "conditioning", "PromptEmbeds": "conditioning", "encode_prompt": "conditioning",
    "optimize_embedding": "embedding", "finetune": "finetune", "add_lora": "lora",
    "load_pipeline": "models",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'imagic_lora' has no attribute {name!r}")
