"""JSON files for controller state: numpy arrays and scalars round-trip exactly, no pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

_ARRAY = "__ndarray__"


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {_ARRAY: obj.tolist(), "dtype": str(obj.dtype), "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a state file")


def _decode(obj: dict[str, Any]) -> Any:
    if _ARRAY in obj:
        return np.array(obj[_ARRAY], dtype=obj["dtype"]).reshape(obj["shape"])
    return obj


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write `state` (dicts, lists, numbers, strings, numpy arrays) as JSON."""
    Path(path).write_text(json.dumps(state, default=_encode), encoding="utf-8")


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by `save_state`, numpy arrays restored with their dtype and shape."""
    state: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"), object_hook=_decode)
    return state
