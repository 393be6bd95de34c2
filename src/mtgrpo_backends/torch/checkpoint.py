"""Checkpoints of the reference loop: everything a run changes, so that a resumed run continues bit for bit."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mtgrpo_backends.torch.config import TrainConfig
from mtgrpo_backends.torch.rollout import GeneratedGroup
from mtgrpo_backends.torch.state import TrainState
from mtgrpo_backends.torch.tasks import Suite

CHECKPOINT_FORMAT = "mtgrpo-torch-train/3"


def _group_payload(key: int, g: GeneratedGroup) -> dict[str, Any]:
    """A kept group (carry-over) as tensors and plain values, so that a checkpoint loads with weights_only."""
    return {
        "key": key,
        "task": g.task,
        "prompt": list(g.prompt),
        "completions": g.completions,
        "masks": g.masks,
        "rewards": torch.from_numpy(g.rewards.copy()),
        "old_logp": g.old_logp,
    }


def _group_from(p: dict[str, Any]) -> tuple[int, GeneratedGroup]:
    group = GeneratedGroup(p["task"], p["prompt"], p["completions"], p["masks"], p["rewards"].numpy(), p["old_logp"])
    return int(p["key"]), group


def save_checkpoint(path: Path | str, state: TrainState, config: TrainConfig, suite: Suite) -> None:
    """Model, optimizer, controller, RNG states, step and logs, written atomically."""
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
        "next_key": state.next_key,
        "kept": [_group_payload(k, g) for k, g in state.kept.items()],
        "history": state.history,
        "evals": state.evals,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path | str, state: TrainState, config: TrainConfig, suite: Suite) -> None:
    """Restore `state` from a checkpoint of the same suite and method; anything else is refused."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} is not a {CHECKPOINT_FORMAT} checkpoint")
    for key, want in (("suite", suite.name), ("tasks", suite.task_names), ("method", config.method)):
        if payload[key] != want:
            raise ValueError(
                f"checkpoint {str(path)!r} was written for {key} {payload[key]!r}, but this run uses {want!r}"
            )
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.controller.load_state_dict(json.loads(payload["controller"]))
    state.prompt_rng.bit_generator.state = payload["prompt_rng"]
    state.generator.set_state(payload["generator"])
    if state.ref_model is not None and payload["ref_model"] is not None:
        state.ref_model.load_state_dict(payload["ref_model"])
    state.step = int(payload["step"])
    state.next_key = int(payload["next_key"])
    state.kept = dict(_group_from(p) for p in payload["kept"])
    state.history = list(payload["history"])
    state.evals = list(payload["evals"])
