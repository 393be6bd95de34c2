"""MT-GRPO's part of a TRL checkpoint, exact at any optimizer step.

A controller step is one generation batch, which may span several optimizer steps (`steps_per_generation`,
`num_iterations`). A checkpoint written in the middle of one holds, besides TRL's own files:
- `mtgrpo_state.json` (main process): the task names, the controller, the prompt-pool cursors, the reward-change
  fallback state and, mid-batch, the step's pending facts (StepFacts arrays and the surrogate rows measured so far)
  with TRL's micro-step counter;
- `mtgrpo_generation_batch_rank<r>.pt` (every process, mid-batch only): TRL's buffered generation batch
  (`_buffered_inputs`, this process's slices), so that the resumed run trains on the very same tensors instead of
  regenerating them. Saving the tensors (rather than replaying generation from saved RNG states) is exact with any
  generation backend (vLLM included) and costs no generation time; its size is one local generation batch of ids,
  masks and per-token log-probabilities (about 1.6 MB per process for 64 rollouts of 1024 tokens; docs/trl.md);
- `mtgrpo_kept_rows_rank<r>.pt` (every process, with carry-over when groups are kept): by key, the rows of the groups
  the controller keeps for later steps, with their generating log-probabilities (their payloads, `carried_rows.py`);
  they go back to the controller through `Controller.load_state_dict(state, kept_payloads)`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, cast

import numpy as np
import torch
from numpy.typing import NDArray
from transformers.trainer_utils import get_last_checkpoint

from mtgrpo_backends.state_file import read_state_file
from mtgrpo_backends.trl.carried_rows import GroupRows, Rows
from mtgrpo_backends.trl.config import MTGRPOConfig
from mtgrpo_core import Controller, PromptPool, RewardChangeImprovement, StepFacts


class CheckpointedTrainer(Protocol):
    """What a checkpoint reads and restores of `trl.trainer.MTGRPOTrainer` (named here, not imported: the trainer
    imports this module)."""

    _pending: PendingStep | None
    _step: int
    _buffered_inputs: Any

    @property
    def cfg(self) -> MTGRPOConfig: ...
    @property
    def controller(self) -> Controller: ...
    @property
    def prompt_pool(self) -> PromptPool: ...
    @property
    def task_names(self) -> list[str]: ...
    @property
    def _group_size(self) -> int: ...
    @property
    def _reward_change(self) -> RewardChangeImprovement | None: ...
    @property
    def accelerator(self) -> Any: ...
    @property
    def args(self) -> Any: ...
    @property
    def num_iterations(self) -> int: ...


STATE_FILE = "mtgrpo_state.json"
BUFFER_FILE = "mtgrpo_generation_batch_rank{rank}.pt"
KEPT_FILE = "mtgrpo_kept_rows_rank{rank}.pt"
STATE_FORMAT = 3  # 3: keys assigned by the sampler, kept groups' rows held by the controller (as payloads)
_INT_FACTS = frozenset({"rollout_task", "sample_task", "surrogate_task", "surrogate_minibatch"})


@dataclass
class PendingStep:
    """The current step's facts, waiting for the surrogate values measured after each of its optimizer steps."""

    facts: StepFacts
    surrogate_rows: list[NDArray[np.float64]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-native form; floats round-trip exactly (json writes the shortest exact repr)."""
        facts = {f.name: _listed(getattr(self.facts, f.name)) for f in fields(StepFacts)}
        return {"facts": facts, "surrogate_rows": [rows.tolist() for rows in self.surrogate_rows]}

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> PendingStep:
        arrays: dict[str, Any] = {
            name: None if value is None else np.asarray(value, np.int64 if name in _INT_FACTS else np.float64)
            for name, value in state["facts"].items()
        }
        rows = [np.asarray(r, dtype=np.float64).reshape(-1, 4) for r in state["surrogate_rows"]]
        return cls(StepFacts(**arrays), rows)


def _listed(value: Any) -> list[Any] | None:
    return None if value is None else np.asarray(value).tolist()


def check_tasks(saved: list[str], current: list[str], where: str) -> None:
    """Refuse a resume whose tasks differ from the checkpoint's (names, order or count), naming both lists."""
    if saved == current:
        return
    fix = (
        f"set MTGRPOConfig.tasks={saved!r} (the weights are kept in that order)"
        if sorted(saved) == sorted(current)
        else "resume with the same tasks, or start a new run"
    )
    raise ValueError(
        f"{where} was trained on tasks {saved} ({len(saved)}, in weight order) but this trainer has tasks "
        f"{current} ({len(current)}): the per-task state would move to other tasks; {fix}"
    )


def _generate_every(trainer: CheckpointedTrainer) -> int:
    return cast(int, trainer.cfg.steps_per_generation) * trainer.num_iterations


def state_dict(trainer: CheckpointedTrainer) -> dict[str, Any]:
    """The JSON-native MT-GRPO state of a trainer (see the module docstring)."""
    state: dict[str, Any] = {
        "format": STATE_FORMAT,
        "tasks": list(trainer.task_names),
        "controller": trainer.controller.state_dict(),
        "prompt_pool": trainer.prompt_pool.state_dict(),
        "pending": None,
    }
    if trainer._reward_change is not None:
        state["reward_change"] = trainer._reward_change.state_dict()
    if trainer._pending is not None:
        state["pending"] = {
            "trl_step": trainer._step,
            "generate_every": _generate_every(trainer),
            "steps_per_generation": trainer.cfg.steps_per_generation,
            "num_processes": trainer.accelerator.num_processes,
            **trainer._pending.to_json(),
        }
    return state


def check_fields(state: Any, where: str) -> None:
    """Refuse a state that is not a JSON object with the controller's and the prompt pool's states, naming the
    missing or mistyped field."""
    if not isinstance(state, dict):
        raise ValueError(f"{where}: {STATE_FILE} must hold a JSON object, got {type(state).__name__}")
    for key in ("controller", "prompt_pool"):
        if not isinstance(state.get(key), dict):
            got = "no such field" if key not in state else f"{type(state[key]).__name__}"
            raise ValueError(
                f"{where}: field {key!r} of {STATE_FILE} must be the {key.replace('_', ' ')}'s state (an object), "
                f"got {got}"
            )


def check_sampler_settings(trainer: CheckpointedTrainer, state: dict[str, Any], where: str) -> None:
    """Refuse a state whose sampler was built with other settings (carry_over, filtering, ...), naming each
    setting that differs with both values."""
    saved = (state["controller"].get("sampler") or {}).get("config")
    now = (trainer.controller.state_dict().get("sampler") or {}).get("config")
    if not isinstance(saved, dict) or not isinstance(now, dict) or saved == now:
        return  # a malformed sampler state is refused by the controller itself
    differ = [key for key in dict.fromkeys([*saved, *now]) if saved.get(key, "unset") != now.get(key, "unset")]
    listed = "; ".join(
        f"{key} {saved.get(key, 'unset')!r} in the checkpoint, {now.get(key, 'unset')!r} now" for key in differ
    )
    raise ValueError(
        f"{where} was written with other sampler settings: {listed}; resume with the checkpoint's settings (the "
        "MTGRPOConfig fields of the same names, or the method's), or start a new run"
    )


def check_compatible(trainer: CheckpointedTrainer, state: dict[str, Any], where: str) -> None:
    """Refuse a state of other tasks or sampler settings, or one saved inside a generation batch under other
    generation settings."""
    check_fields(state, where)
    saved = state.get("tasks", state["prompt_pool"].get("task_names"))  # format 1 had only the pool's
    check_tasks(list(saved or []), list(trainer.task_names), where)
    fmt = state.get("format", 1)
    if (not isinstance(fmt, int) or fmt < STATE_FORMAT) and _carry(state) is not None:
        raise ValueError(
            f"{where} has state format {fmt!r}, written when the trainer kept carried groups' rows "
            f"and keys itself; format {STATE_FORMAT} (the controller holds them) is needed to resume with carry-over: "
            "resume with the mtgrpo version that wrote it, or start a new run"
        )
    pending = state.get("pending")
    if pending is not None:
        settings = {
            "steps_per_generation * num_iterations": (pending["generate_every"], _generate_every(trainer)),
            "steps_per_generation": (pending["steps_per_generation"], trainer.cfg.steps_per_generation),
            "number of processes": (pending["num_processes"], trainer.accelerator.num_processes),
        }
        changed = {name: pair for name, pair in settings.items() if pair[0] != pair[1]}
        if changed:
            raise ValueError(
                f"{where} was saved in the middle of a generation batch (micro-step {pending['trl_step']}); "
                f"resuming it needs the same settings, but (saved, now) = {changed}; resume from a checkpoint "
                f"whose global step is a multiple of {pending['generate_every']}, or keep the settings"
            )
    check_sampler_settings(trainer, state, where)


def _carry(state: dict[str, Any]) -> Any:
    """The sampler's carry-over state inside a trainer state (None without carry-over)."""
    return (state["controller"].get("sampler") or {}).get("carry")


def kept_payloads(
    trainer: CheckpointedTrainer, state: dict[str, Any], kept_rows: Mapping[int, Rows] | None, where: str
) -> dict[int, GroupRows] | None:
    """The payloads of the groups the state's controller keeps, from their rows by key (`save`'s file), on the
    trainer's device; rows of other groups or sizes are refused (a missing group: by the controller)."""
    if kept_rows is None:
        return None
    if not isinstance(kept_rows, Mapping):
        raise ValueError(f"{where}: kept rows must map each kept key to its rows, got {type(kept_rows).__name__}")
    carry = _carry(state) or {}
    tasks = dict(zip(carry.get("keys", []), carry.get("tasks", []), strict=False))
    payloads: dict[int, GroupRows] = {}
    for key, rows in kept_rows.items():
        names = sorted(rows) if isinstance(rows, dict) else []
        count = int(rows["completion_ids"].shape[0]) if "completion_ids" in names else 0
        if key not in tasks or count != trainer._group_size or "old_per_token_logps" not in names:
            raise ValueError(
                f"{where}: kept rows of group {key!r} hold {count} rollouts with {names}; expected one of the kept "
                f"groups {sorted(tasks)[:8]} with {trainer._group_size} rollouts and old_per_token_logps"
            )
        device = trainer.accelerator.device
        payloads[key] = GroupRows(int(tasks[key]), key=key, rows={n: t.to(device) for n, t in rows.items()})
    return payloads


def load_state_dict(
    trainer: CheckpointedTrainer,
    state: dict[str, Any],
    where: str = "the state",
    kept_rows: Mapping[int, Rows] | None = None,
) -> None:
    """Restore `state_dict`'s state, with the rows of its kept groups by key (carry-over); a refused state leaves
    the trainer unchanged."""
    check_compatible(trainer, state, where)
    pending = state.get("pending")
    payloads = kept_payloads(trainer, state, kept_rows, where)
    before, held = state_dict(trainer), trainer.controller.kept_payloads()
    try:
        trainer.controller.load_state_dict(state["controller"], payloads)
        trainer.prompt_pool.load_state_dict(state["prompt_pool"])
        if trainer._reward_change is not None:
            trainer._reward_change.load_state_dict(state["reward_change"])
        trainer._pending = None if pending is None else PendingStep.from_json(pending)
    except Exception:
        trainer.controller.load_state_dict(before["controller"], held)
        trainer.prompt_pool.load_state_dict(before["prompt_pool"])
        if trainer._reward_change is not None:
            trainer._reward_change.load_state_dict(before["reward_change"])
        raise
    if pending is not None:
        trainer._step = int(pending["trl_step"])


def save(trainer: CheckpointedTrainer, folder: str) -> None:
    """Write the state (main process) and, mid generation batch, every process's buffered batch."""
    if trainer.args.should_save:
        with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(state_dict(trainer), f)
    if trainer._pending is not None and trainer._buffered_inputs is not None:
        os.makedirs(folder, exist_ok=True)
        buffered = [{k: _to_cpu(v) for k, v in part.items()} for part in trainer._buffered_inputs]
        torch.save(buffered, os.path.join(folder, BUFFER_FILE.format(rank=trainer.accelerator.process_index)))
    kept: dict[int, GroupRows] = trainer.controller.kept_payloads()
    if kept:
        os.makedirs(folder, exist_ok=True)
        rows = {int(key): {n: _to_cpu(t) for n, t in (group.rows or {}).items()} for key, group in kept.items()}
        torch.save(rows, os.path.join(folder, KEPT_FILE.format(rank=trainer.accelerator.process_index)))


def _to_cpu(value: Any) -> Any:
    return value.detach().to("cpu").clone() if isinstance(value, torch.Tensor) else value


def check(trainer: CheckpointedTrainer, checkpoint: str | bool) -> None:
    """Refuse a checkpoint `load` would refuse, before TRL loads anything (`True`: the last one in output_dir)."""
    folder: Any = checkpoint
    if folder is True:
        folder = get_last_checkpoint(str(trainer.args.output_dir))  # type: ignore[no-untyped-call]
    if isinstance(folder, str):  # None: TRL says that output_dir holds no checkpoint
        _read(trainer, folder)


def _read(trainer: CheckpointedTrainer, checkpoint: str) -> dict[str, Any]:
    path = os.path.join(checkpoint, STATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {checkpoint!r} has no {STATE_FILE}: it was not written by MTGRPOTrainer")
    state = read_state_file(path, f"checkpoint {checkpoint!r}: {STATE_FILE}")
    check_compatible(trainer, state, f"checkpoint {checkpoint!r}")
    name = BUFFER_FILE.format(rank=trainer.accelerator.process_index)
    if state.get("pending") is not None and not os.path.exists(os.path.join(checkpoint, name)):
        raise FileNotFoundError(
            f"checkpoint {checkpoint!r} was saved in the middle of a generation batch but has no {name} (the "
            "batch being trained); copy the whole checkpoint folder, or resume from one at the end of a batch"
        )
    kept = KEPT_FILE.format(rank=trainer.accelerator.process_index)
    keys = (_carry(state) or {}).get("keys") or []
    if keys and not os.path.exists(os.path.join(checkpoint, kept)):
        raise FileNotFoundError(
            f"checkpoint {checkpoint!r} keeps {len(keys)} groups for carry-over but has no {kept} (their rows and "
            "generating log-probabilities); copy the whole checkpoint folder"
        )
    return state


def load(trainer: CheckpointedTrainer, checkpoint: str) -> None:
    """Restore what `save` wrote into `checkpoint`; refuses a checkpoint not written by MTGRPOTrainer."""
    state = _read(trainer, checkpoint)
    buffered: list[dict[str, Any]] | None = None
    if state.get("pending") is not None:
        device = trainer.accelerator.device  # loaded on the CPU first: torch.load cannot map to every device name
        name = os.path.join(checkpoint, BUFFER_FILE.format(rank=trainer.accelerator.process_index))
        parts = torch.load(name, map_location="cpu", weights_only=True)
        buffered = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in part.items()} for part in parts]
    kept_rows = None
    if (_carry(state) or {}).get("keys"):
        name = os.path.join(checkpoint, KEPT_FILE.format(rank=trainer.accelerator.process_index))
        kept_rows = torch.load(name, map_location="cpu", weights_only=True)
    load_state_dict(trainer, state, f"checkpoint {checkpoint!r}", kept_rows)
    if buffered is not None:
        trainer._buffered_inputs = cast(Any, buffered)  # TRL declares it None until its first generation
