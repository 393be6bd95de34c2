"""MT-GRPO's part of a verl checkpoint: `global_step_<t>/mtgrpo_state.json` (controller and prompt-pool state).

verl's sync trainer does not checkpoint the replay buffer, so the trainer writes this file itself, before verl's
own files (verl writes `latest_checkpointed_iteration.txt` last, so a resumable folder always holds it). On resume
the folder verl would load is found by verl's own rules, and a folder without this file is refused before any
model state is loaded.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from omegaconf import OmegaConf
from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path

from mtgrpo_backends.state_file import read_state_file

STATE_FILE = "mtgrpo_state.json"


def step_folder(trainer_config: Any, global_steps: int) -> str:
    """The folder verl saves step `global_steps` into."""
    return os.path.join(str(trainer_config.default_local_dir), f"global_step_{global_steps}")


def resume_folder(trainer_config: Any) -> tuple[str, int] | None:
    """The checkpoint folder verl's `_load_checkpoint` will load (trainer.resume_mode) and its global step, or None
    (fresh start). A `trainer.resume_from_path` that does not end in `global_step_<N>` or does not exist is refused
    naming the setting, before verl reads it."""
    mode = OmegaConf.select(trainer_config, "resume_mode", default="auto")
    if mode == "disable":
        return None
    if mode == "auto":
        folder = str(trainer_config.default_local_dir)
        latest = find_latest_ckpt_path(folder if os.path.isabs(folder) else os.path.join(os.getcwd(), folder))
        return None if latest is None else (str(latest), _step_of(str(latest), "the latest checkpoint"))
    if mode == "resume_path":
        value = OmegaConf.select(trainer_config, "resume_from_path", default=None)
        setting = f"trainer.resume_from_path={value!r}"
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"{setting} with trainer.resume_mode=resume_path: expected the path of a checkpoint folder, "
                "<trainer.default_local_dir>/global_step_<N>"
            )
        step = _step_of(value, setting)
        path = value if os.path.isabs(value) else os.path.join(os.getcwd(), value)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"{setting}: no such folder ({path}); expected an existing checkpoint folder "
                "<trainer.default_local_dir>/global_step_<N> written by this run, or trainer.resume_mode=auto / "
                "disable"
            )
        return path, step
    raise ValueError(f"trainer.resume_mode is {mode!r}, expected 'auto', 'disable' or 'resume_path'")


def _step_of(path: str, what: str) -> int:
    """The global step verl reads from a checkpoint path: the digits after its last `global_step_`."""
    match = re.search(r"global_step_(\d+)$", path)
    if match is None:
        raise ValueError(
            f"{what}: expected the path of one checkpoint folder, ending in global_step_<N> with no trailing '/' "
            "(verl reads the step to resume from the path's end), e.g. checkpoints/my_run/global_step_100"
        )
    return int(match.group(1))


def save(folder: str, state: dict[str, Any]) -> None:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, STATE_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)


def read(folder: str, global_steps: int) -> dict[str, Any]:
    """The state saved at step `global_steps` in folder; refuses a folder without it or of another step."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"checkpoint {folder!r} has no {STATE_FILE}: it was not written by the MT-GRPO trainer, and resuming "
            "without the controller's weights and prompt cursors would restart MT-GRPO from scratch; resume a "
            "checkpoint of this run, or set trainer.resume_mode=disable to start a new run"
        )
    state = read_state_file(path, path)
    for key in ("controller", "prompt_pool"):
        if not isinstance(state.get(key), dict):
            got = "no such field" if key not in state else type(state[key]).__name__
            raise ValueError(
                f"{path}: field {key!r} must be the {key.replace('_', ' ')}'s state (an object), got {got}"
            )
    saved_step = state["controller"].get("step")
    if saved_step != global_steps:
        raise ValueError(
            f"{path} holds the controller after {saved_step!r} steps but the checkpoint is of global step "
            f"{global_steps}: the file was copied from another checkpoint"
        )
    return state
