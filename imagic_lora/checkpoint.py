"""Resumable runs: checkpoints as safetensors + JSON (never pickles).

A checkpoint is a folder with ``tensors.safetensors`` and ``state.json``: any nested structure of
dicts, lists, numbers, strings and tensors (an optimiser's ``state_dict``, a generator's state,
LoRA weights, e_opt) is split into the two, and put back together bit for bit. Folders are
written under a temporary name and renamed, so a kill during a save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

_TENSOR = "__tensor__"
_ITEMS = "__items__"
_TUPLE = "__tuple__"


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor], seen: dict[int, str] | None = None) -> Any:
    seen = {} if seen is None else seen
    if isinstance(obj, torch.Tensor):
        # One tensor referenced twice (bitsandbytes shares its quantisation maps between
        # parameters) is stored once; distinct tensors are copied so none share storage.
        if id(obj) not in seen:
            seen[id(obj)] = key = f"t{len(tensors)}"
            tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: seen[id(obj)]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not {_TENSOR, _ITEMS, _TUPLE} & set(obj):
            return {k: _flatten(v, f"{path}.{k}", tensors, seen) for k, v in obj.items()}
        # Non-string keys (an optimiser's parameter indices) keep their type as [key, value] pairs.
        return {_ITEMS: [[k, _flatten(v, f"{path}.{k}", tensors, seen)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [_flatten(v, f"{path}[{i}]", tensors, seen) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{path}[{i}]", tensors, seen) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint {path} of type {type(obj).__name__}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _ITEMS in obj:
            return {k: _unflatten(v, tensors) for k, v in obj[_ITEMS]}
        if _TUPLE in obj:
            return tuple(_unflatten(v, tensors) for v in obj[_TUPLE])
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(folder: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` to ``folder`` atomically; return the folder."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(payload, "", tensors)
    save_file(tensors, tmp / "tensors.safetensors")
    (tmp / "state.json").write_text(json.dumps(structure))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def load_checkpoint(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    return _unflatten(json.loads((folder / "state.json").read_text()), load_file(folder / "tensors.safetensors"))


class CheckpointStore:
    """Checkpoints of one edit: ``phase-A``, ``B-step-000050`` ...; keeps the newest ``limit`` of B."""

    def __init__(self, root: str | os.PathLike, limit: int | None = None):
        self.root = Path(root)
        self.limit = limit

    def path(self, name: str) -> Path:
        return self.root / name

    def has(self, name: str) -> bool:
        return (self.path(name) / "state.json").is_file()

    def save(self, name: str, payload: dict) -> Path:
        folder = save_checkpoint(self.path(name), payload)
        if self.limit and name.startswith("B-step-"):
            for old in self.b_steps()[:-self.limit]:
                shutil.rmtree(self.path(f"B-step-{old:06d}"), ignore_errors=True)
        return folder

    def load(self, name: str) -> dict:
        return load_checkpoint(self.path(name))

    def load_intact(self, name: str) -> dict | None:
        """The checkpoint ``name``, or None when it is missing or cannot be read whole (a torn or
        corrupt file: said once, as a warning)."""
        if not self.has(name):
            return None
        try:
            return self.load(name)
        except Exception as e:  # safetensors, JSON or file errors: this checkpoint is unusable
            logger.warning("checkpoint %s is unreadable (%s: %s); not used", self.path(name), type(e).__name__,
                           str(e).splitlines()[0] if str(e) else "")
            return None

    def b_steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        steps = [int(m.group(1)) for p in self.root.iterdir() if (m := re.fullmatch(r"B-step-(\d+)", p.name))
                 and (p / "state.json").is_file()]
        return sorted(steps)

    def latest_b(self) -> str | None:
        steps = self.b_steps()
        return f"B-step-{steps[-1]:06d}" if steps else None
