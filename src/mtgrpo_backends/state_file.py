"""Reading a backend's JSON state file (TRL's and verl's `mtgrpo_state.json`): a truncated or corrupted file is
refused naming it, before anything is loaded."""

from __future__ import annotations

import json
from typing import Any


def read_state_file(path: str, where: str) -> dict[str, Any]:
    """The JSON object in `path`; `where` names the file in the errors (e.g. "checkpoint 'x': mtgrpo_state.json")."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        state = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{where} is not valid JSON ({err}; {len(text)} characters): the file is truncated or corrupted; resume "
            "from another checkpoint"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{where} must hold a JSON object, got {type(state).__name__}")
    return state
