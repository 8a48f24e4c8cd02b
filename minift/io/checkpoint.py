"""Atomic training checkpoints: model, optimizer and trainer state, with no pickle anywhere.

    <folder>/model.safetensors      the model's state dict, one tensor per entry
    <folder>/optimizer.safetensors  PyTorch-shaped optimizer state: arrays as tensors named
                                    "state.<idx>.<name>", the rest (numbers, param_groups) as
                                    JSON strings in __metadata__ that point at those tensors
    <folder>/trainer_state.json     step, epoch, seeds, ...; written last

The folder is filled under ``<folder>.tmp-<pid>`` and renamed into place only when complete,
so a crash at any moment leaves the previous checkpoint loadable (see ``atomic.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from minift.io.atomic import atomic_directory, atomic_write
from minift.io.safetensors import SafeFile, load_file, save_file

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer_state.json"
# JSON has no tuples, no int keys and no arrays; these one-key objects stand in for them
_TAGS = ("__tensor__", "__tuple__", "__dict__")


def _is_array(obj: Any) -> bool:
    return hasattr(obj, "shape") and hasattr(obj, "dtype")  # ndarray, NumPy scalar, Tensor


def _encode(obj: Any, path: list[str], tensors: dict[str, Any] | None) -> Any:
    """A JSON-ready copy of ``obj`` that decodes back to an equal structure.

    Arrays move into ``tensors`` under their dotted path and leave ``{"__tensor__": path}``;
    tuples become ``{"__tuple__": [...]}``; dicts with non-string keys (optimizer state is keyed
    by int) become ``{"__dict__": [[key, value], ...]}``.
    """
    where = ".".join(path)
    if _is_array(obj):
        if tensors is None:
            raise TypeError(f"{where}: arrays cannot go into {TRAINER_FILE}; "
                            "keep them in the model or optimizer state")
        if where in tensors:
            raise ValueError(f"two entries of the optimizer state flatten to the name {where!r}")
        tensors[where] = obj
        return {"__tensor__": where}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, [*path, str(i)], tensors) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else {"__tuple__": items}
    if isinstance(obj, Mapping):
        plain = all(isinstance(k, str) for k in obj) and not (len(obj) == 1 and set(obj) & {*_TAGS})
        if plain:
            return {k: _encode(v, [*path, k], tensors) for k, v in obj.items()}
        return {"__dict__": [[_encode(k, [*path, "<key>"], None), _encode(v, [*path, str(k)], tensors)]
                             for k, v in obj.items()]}
    raise TypeError(f"{where}: cannot store a {type(obj).__name__} in a checkpoint")


def _decode(text: str, tensors: Mapping[str, np.ndarray], source: str) -> Any:
    """Inverse of ``_encode`` (after ``json.dumps``)."""
    def hook(obj: dict) -> Any:
        if len(obj) != 1 or next(iter(obj)) not in _TAGS:
            return obj
        (tag, value), = obj.items()
        if tag == "__tuple__":
            return tuple(value)
        if tag == "__dict__":
            return {key: item for key, item in value}
        if value not in tensors:
            raise ValueError(f"{source}: refers to tensor {value!r}, which the file lacks")
        return tensors[value]
    try:
        return json.loads(text, object_hook=hook)
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{source}: not a valid minift checkpoint entry ({e})") from None


def save_checkpoint(folder: str | os.PathLike, model_state: Mapping[str, Any],
                    optimizer_state: Mapping[str, Any] | None,
                    trainer_state: Mapping[str, Any]) -> None:
    """Write a checkpoint folder atomically; the previous one survives until this one is whole.

    Args:
        folder: the checkpoint folder to create or replace.
        model_state: name -> array or Tensor (a state dict).
        optimizer_state: ``{"state": {idx: {name: array or number}}, "param_groups": [...]}``
            as PyTorch's ``optimizer.state_dict()``, or None for no optimizer file.
        trainer_state: JSON-like dict (numbers, strings, lists, tuples, dicts; no arrays).
    """
    # everything is encoded before the disk is touched: bad input leaves no trace
    trainer_text = json.dumps(_encode(trainer_state, ["trainer_state"], None), indent=2)
    optimizer_tensors: dict[str, Any] = {}
    optimizer_meta = None
    if optimizer_state is not None:
        if not all(isinstance(key, str) for key in optimizer_state):
            raise TypeError(f"optimizer_state keys must be strings, got {list(optimizer_state)}")
        optimizer_meta = {key: json.dumps(_encode(value, [key], optimizer_tensors))
                          for key, value in optimizer_state.items()}
    with atomic_directory(folder) as tmp:
        save_file(model_state, tmp / MODEL_FILE)
        if optimizer_meta is not None:
            save_file(optimizer_tensors, tmp / OPTIMIZER_FILE, metadata=optimizer_meta)
        with atomic_write(tmp / TRAINER_FILE, "w") as f:  # last: its presence means complete
            f.write(trainer_text)


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict, dict | None, dict]:
    """``(model_state, optimizer_state, trainer_state)`` as ``save_checkpoint`` was given them.

    Arrays come back as writable NumPy arrays (Tensors as their NumPy values); the structures,
    int keys and tuples included, are rebuilt exactly.
    """
    folder = Path(folder)
    if not (folder / TRAINER_FILE).is_file():
        raise FileNotFoundError(_missing_message(folder))
    model_state = load_file(folder / MODEL_FILE, mmap=False)
    optimizer_state = None
    if (folder / OPTIMIZER_FILE).is_file():
        with SafeFile(folder / OPTIMIZER_FILE, mmap=False) as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
            metadata = f.metadata() or {}
        optimizer_state = {key: _decode(text, tensors, f"{folder / OPTIMIZER_FILE} [{key}]")
                           for key, text in metadata.items()}
    trainer_file = folder / TRAINER_FILE
    trainer_state = _decode(trainer_file.read_text(encoding="utf-8"), {}, str(trainer_file))
    return model_state, optimizer_state, trainer_state


def _missing_message(folder: Path) -> str:
    """Name any complete copy that an interrupted save left beside a missing folder."""
    message = f"no complete checkpoint at {folder} ({TRAINER_FILE} is missing)"
    if folder.parent.is_dir():
        leftovers = [str(p) for kind in ("tmp", "old")
                     for p in sorted(folder.parent.glob(f"{folder.name}.{kind}-*"))
                     if (p / TRAINER_FILE).is_file()]
        if leftovers:
            message += (f"; an interrupted save left complete checkpoint(s) {leftovers}: "
                        f"rename the newest (.tmp-) one to {folder.name}")
    return message
