"""imagic-lora's ComfyUI nodes: "Load Imagic Edit".

Install: copy or symlink this folder into ``ComfyUI/custom_nodes/`` and restart ComfyUI. The node takes a
MODEL, an artifact folder and an eta; it applies the edit's LoRA through ComfyUI's own LoRA loading and
gives the patched MODEL and the CONDITIONING at that eta, plus e_tgt and e_opt as CONDITIONINGs for
ComfyUI's ConditioningAverage (conditioning_to = target, conditioning_from = optimized, strength = eta), and
the input image the run started from (for VAEEncode when the edit was drawn at a strength below 1).
"""

from .imagic_edit import edit_conditionings, input_image, read_artifact, recommended


class LoadImagicEdit:
    """An imagic-lora edit artifact: its LoRA on the model, its embeddings as conditionings."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The base model the edit was made on."}),
            "artifact_folder": ("STRING", {"default": "", "tooltip": "The edit's folder (imagic_config.json in it)."}),
            "eta": ("FLOAT", {"default": -1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                              "tooltip": "Interpolation weight: 0 gives the input back, the edit grows with eta, "
                                         ">1 extrapolates. -1: the eta the run picked."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                                   "tooltip": "The LoRA's strength (1: as trained)."}),
        }}

    # Outputs are appended, never reordered: saved workflows link to them by index.
    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING", "CONDITIONING", "INT", "IMAGE")
    RETURN_NAMES = ("model", "conditioning", "target", "optimized", "seed", "image")
    OUTPUT_TOOLTIPS = ("The model with the edit's LoRA.", "The edit's conditioning at eta.",
                       "e_tgt: the target text's conditioning (eta 1).",
                       "e_opt: the optimised conditioning (eta 0, the input back).",
                       "The seed of the edit the run picked.",
                       "The input image the run edited (images/input.png): VAEEncode it and start "
                       "KSamplerAdvanced at steps - int(steps x strength) to draw as a run at --strength below 1 "
                       "did.")
    FUNCTION = "load"
    CATEGORY = "imagic-lora"
    DESCRIPTION = "Loads an imagic-lora edit: its LoRA and the Imagic conditionings."

    def load(self, model, artifact_folder, eta, strength):
        import comfy.sd  # ComfyUI's own LoRA loading

        artifact = read_artifact(artifact_folder)
        picked_eta, seed = recommended(artifact["config"])
        at_eta, target, optimized = edit_conditionings(artifact, picked_eta if eta == -1.0 else eta)
        patched, _ = comfy.sd.load_lora_for_models(model, None, artifact["lora"], strength, 0)
        return (patched, at_eta, target, optimized, seed, input_image(artifact_folder, artifact["config"]))


NODE_CLASS_MAPPINGS = {"LoadImagicEdit": LoadImagicEdit}
NODE_DISPLAY_NAME_MAPPINGS = {"LoadImagicEdit": "Load Imagic Edit"}
