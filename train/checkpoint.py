"""Training checkpoints without pickles: every tensor of a nested state (models, optimizers) goes into
one safetensors file, everything else (numbers, strings, structure) into a JSON file beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _split(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_split(k, f"{prefix}.k{i}", tensors), _split(v, f"{prefix}.{i}", tensors)] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_join(k, tensors): _join(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_join(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj["tuple"] else items
    return obj


def save_state(folder: str | Path, state: dict[str, Any]) -> None:
    """Write state.safetensors + state.json atomically (temporary names, then rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    structure = _split(state, "s", tensors)
    save_file(tensors, folder / "state.safetensors.tmp")
    (folder / "state.json.tmp").write_text(json.dumps(structure))
    os.replace(folder / "state.safetensors.tmp", folder / "state.safetensors")
    os.replace(folder / "state.json.tmp", folder / "state.json")


def load_state(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    tensors = load_file(folder / "state.safetensors")
    return _join(json.loads((folder / "state.json").read_text()), tensors)
