"""Checkpoints of the reference loop: everything a run changes, so that a resumed run continues bit for bit.

A resumed run continues with its checkpoint's settings: only `steps` (the total to reach) and `eval_every` may
differ. Any other setting that differs (a seed, a learning rate, a sampler or rule option) is refused with both
values, since the restored generators, optimizer and controller would silently keep the checkpoint's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtgrpo_backends.torch.config import TrainConfig
from mtgrpo_backends.torch.rollout import GeneratedGroup
from mtgrpo_backends.torch.state import TrainState
from mtgrpo_backends.torch.tasks import Suite
from mtgrpo_core.prompts.history import SelectionConfig

CHECKPOINT_FORMAT = "mtgrpo-torch-train/4"  # 4: groups generated ahead held by the controller (in 'kept')
RESUMABLE_CHANGES = ("steps", "eval_every")  # settings a resumed run may change
_GROUP_TENSORS = ("completions", "masks", "rewards", "old_logp")


def _group_to_dict(group: GeneratedGroup) -> dict[str, Any]:
    out: dict[str, Any] = {"task": int(group.task), "prompt": [int(t) for t in group.prompt]}
    for name in _GROUP_TENSORS:
        value = getattr(group, name, None)
        out[name] = torch.from_numpy(np.asarray(value)) if isinstance(value, np.ndarray) else value
    return out


def _group_from_dict(saved: dict[str, Any]) -> GeneratedGroup:
    fields = {f.name for f in dataclasses.fields(GeneratedGroup)}
    values = {k: v for k, v in saved.items() if k in fields and v is not None}
    values["rewards"] = saved["rewards"].numpy()
    return GeneratedGroup(**values)


def save_checkpoint(path: Path | str, state: TrainState, config: TrainConfig, suite: Suite) -> None:
    """Model, optimizer, controller, RNG states, the controller's groups kept for later steps or generated ahead
    (its payloads), the generation worker's generator, step and logs, written atomically."""
    kept: dict[int, GeneratedGroup] = state.controller.kept_payloads()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "suite": suite.name,
        "tasks": suite.task_names,
        "method": config.method,
        "config": asdict(config),
        "step": state.step,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "controller": json.dumps(state.controller.state_dict()),  # the controller's own JSON-native state
        "prompt_rng": state.prompt_rng.bit_generator.state,
        "generator": state.generator.get_state(),
        "ref_model": None if state.ref_model is None else state.ref_model.state_dict(),
        "kept": [[int(key), _group_to_dict(group)] for key, group in kept.items()],
        "ahead_generator": None if state.worker is None else state.worker.generator.get_state(),
        "prompt_pool": None if state.training_set is None else json.dumps(state.training_set.pool.state_dict()),
        "history": state.history,
        "evals": state.evals,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _reason(err: Exception) -> str:
    """One short line saying why torch.load failed (its own messages run to several lines)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if first.startswith("Weights only load failed"):
        first = "not a file torch.save wrote with tensors and plain Python values only"
    if len(first) > 100:
        first = first[:97] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def read_checkpoint(path: Path | str, name: str = "checkpoint") -> dict[str, Any]:
    """The payload of a checkpoint file; a missing, empty or unreadable file, or one that is not a checkpoint of
    this loop, is refused with a ValueError that starts with `name` and the path."""
    path = Path(path)
    where = f"{name} {str(path)!r}"
    if not path.exists():
        raise ValueError(f"{where}: no such file (expected a checkpoint written by mtgrpo train --checkpoint)")
    if not path.is_file():
        raise ValueError(f"{where}: expected a checkpoint file, but that is not a regular file")
    if path.stat().st_size == 0:
        raise ValueError(f"{where}: the file is empty (expected a checkpoint written by mtgrpo train --checkpoint)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds (EOFError, UnpicklingError, RuntimeError, IndexError)
        raise ValueError(f"{where}: not a {CHECKPOINT_FORMAT} checkpoint (torch.load: {_reason(err)})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{where}: not a {CHECKPOINT_FORMAT} checkpoint (found format {found!r})")
    return payload


SELECTION_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SelectionConfig)}


def _setting_flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """Flat {flag: value} of a TrainConfig dict: sampler, rule and selection options as --sampler.x, --rule.x,
    --selection.x, each only where set (a selection setting at its default counts as unset); --selection.skip
    says whether the run skips prompts."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if key == "selection":
            flat["--selection.skip"] = "none" if value is None else "history"
        if key in ("sampler", "rule", "selection") and isinstance(value, dict):
            unset = SELECTION_DEFAULTS if key == "selection" else {}
            given = {k: x for k, x in value.items() if x is not None and unset.get(k, unset) != x}
            flat.update({f"--{key}.{k.replace('_', '-')}": x for k, x in given.items()})
        elif key != "selection":
            flat[_setting_flag(key)] = value
    return flat


def setting_differences(saved: dict[str, Any], config: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(flag, checkpoint's value, this run's value) of every setting that differs, except RESUMABLE_CHANGES.
    A sampler or rule option set on one side only shows as 'unset' on the other."""
    unset = "unset"
    selection_default = {f"--selection.{k.replace('_', '-')}": x for k, x in SELECTION_DEFAULTS.items()}
    defaults = {_setting_flag(f.name): f.default for f in dataclasses.fields(TrainConfig)} | selection_default
    old, new = _settings(saved), _settings(asdict(config))
    skip = {_setting_flag(k) for k in RESUMABLE_CHANGES}
    out = []
    for key in dict.fromkeys([*old, *new]):
        if key in skip:
            continue
        was = old.get(key, defaults.get(key, unset))
        now = new.get(key, selection_default.get(key, unset))
        if was != now:
            out.append((key, was, now))
    return out


# what save_checkpoint writes, besides format, ref_model, kept and prompt_pool (checked where used)
_ENTRIES: tuple[str, ...] = ("suite", "tasks", "method", "config", "step", "model", "optimizer", "controller")
_ENTRIES += ("prompt_rng", "generator", "history", "evals")


def json_entry(payload: dict[str, Any], key: str, where: str) -> Any:
    """The parsed JSON text of a checkpoint entry (`controller`, `prompt_pool`); a truncated or corrupted one is
    refused naming the file and the entry."""
    text = payload.get(key)
    if not isinstance(text, str):
        raise ValueError(f"{where}: entry {key!r} must be the JSON text the loop wrote, got {type(text).__name__}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{where}: entry {key!r} is not valid JSON ({err}); the checkpoint is truncated or corrupted"
        ) from None


def check_contents(payload: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint that lacks an entry, or whose step disagrees with its log or its controller (a
    checkpoint edited by hand, or cut short), naming the entries and their values."""
    missing = [key for key in _ENTRIES if key not in payload]
    if missing:
        raise ValueError(
            f"{where} holds no {', '.join(map(repr, missing))} entr{'y' if len(missing) == 1 else 'ies'}; expected "
            "a checkpoint written by mtgrpo train --checkpoint, which holds them all (its settings in 'config')"
        )
    if not isinstance(payload["config"], dict):
        raise ValueError(f"{where}: entry 'config' must be the run's settings (a dict), got {payload['config']!r}")
    step, history = payload["step"], payload["history"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{where}: entry 'step' must be an integer >= 0, got {step!r}")
    if not isinstance(history, list) or len(history) != step:
        held = f"{len(history)} rows" if isinstance(history, list) else repr(type(history).__name__)
        raise ValueError(
            f"{where}: entry 'step' is {step} but entry 'history' (one row per step trained) holds {held}; the "
            "checkpoint is inconsistent"
        )
    controller = json_entry(payload, "controller", where)
    trained = controller.get("step") if isinstance(controller, dict) else None
    if trained != step:
        raise ValueError(
            f"{where}: entry 'step' is {step} but the controller's state (entry 'controller') is at step {trained!r}; "
            "the checkpoint is inconsistent"
        )


def check_resumable(
    payload: dict[str, Any], config: TrainConfig, suite: Suite, name: str = "checkpoint", path: Path | str = ""
) -> None:
    """Refuse to resume a checkpoint that is incomplete or inconsistent (check_contents), of another suite, task
    list or method, or with other settings."""
    where = f"{name} {str(path)!r}"
    check_contents(payload, where)
    for key, want in (("suite", suite.name), ("tasks", suite.task_names), ("method", config.method)):
        if payload.get(key) != want:
            raise ValueError(f"{where} was written for {key} {payload.get(key)!r}, but this run uses {want!r}")
    differences = setting_differences(payload["config"], config)
    if differences:
        listed = "; ".join(f"{key} {was!r} in the checkpoint, {now!r} in this run" for key, was, now in differences)
        allowed = " and ".join(_setting_flag(k) for k in RESUMABLE_CHANGES)
        raise ValueError(
            f"{where}: a resumed run keeps its checkpoint's settings, but {listed}; "
            f"resume with the checkpoint's values (only {allowed} may change)"
        )


def load_checkpoint(
    path: Path | str, state: TrainState, config: TrainConfig, suite: Suite, name: str = "checkpoint"
) -> None:
    """Restore `state` from a checkpoint of the same suite, method and settings; anything else is refused."""
    payload = read_checkpoint(path, name)
    check_resumable(payload, config, suite, name, path)
    where = f"{name} {str(path)!r}"
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    kept = {int(key): _group_from_dict(group) for key, group in payload.get("kept", [])}
    try:  # groups the controller keeps for a later step or holds until due come back as their payloads
        state.controller.load_state_dict(json_entry(payload, "controller", where), kept)
    except (TypeError, ValueError, KeyError) as err:
        if str(err).startswith(where):
            raise
        raise ValueError(f"{where}: entry 'controller' does not load ({err})") from None
    if state.worker is not None:
        if payload.get("ahead_generator") is None:
            raise ValueError(f"{where} holds no 'ahead_generator' entry, but this run generates ahead")
        state.worker.generator.set_state(payload["ahead_generator"])
    state.prompt_rng.bit_generator.state = payload["prompt_rng"]
    state.generator.set_state(payload["generator"])
    if state.ref_model is not None and payload["ref_model"] is not None:
        state.ref_model.load_state_dict(payload["ref_model"])
    if state.training_set is not None:  # the finite training set's pool: cursors and per-prompt history
        saved = payload.get("prompt_pool")
        if saved is None:
            raise ValueError(f"{name} {str(path)!r} holds no prompt pool state, but this run draws from a training set")
        try:
            state.training_set.pool.load_state_dict(json_entry(payload, "prompt_pool", where))
        except (TypeError, ValueError, KeyError) as err:
            if str(err).startswith(where):
                raise
            raise ValueError(f"{where}: entry 'prompt_pool' does not load ({err})") from None
    state.step = int(payload["step"])
    state.history = list(payload["history"])
    state.evals = list(payload["evals"])
