"""The verl trainer's checkpoints: the controller and prompt-pool state round-trips through verl's own save and
load, and a checkpoint without it (or of other tasks) is refused before verl loads any model state."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")

from hydra import compose, initialize_config_module
from torchdata.stateful_dataloader import StatefulDataLoader
from verl.trainer.ppo.checkpoint_callback import build_checkpoint_callback

from mtgrpo_backends.verl.checkpoint import STATE_FILE
from mtgrpo_backends.verl.main import CONFIG_NAME
from mtgrpo_backends.verl.trainer import MTGRPOTrainer
from mtgrpo_core import StepFacts

ROW_TASKS = ["a", "b", "c"] * 4


class FakeActor:
    """Records verl's checkpoint calls; the model state itself is not under test."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def save_checkpoint(self, local_path: str, *args: Any, **kwargs: Any) -> None:
        os.makedirs(local_path, exist_ok=True)
        self.calls.append("save")

    def load_checkpoint(self, local_path: str, **kwargs: Any) -> None:
        self.calls.append("load")


def _trainer(folder: Path, tasks: str = "[a,b,c]", resume: str = "auto", *extra: str) -> MTGRPOTrainer:
    overrides = [
        *extra,
        "mtgrpo.method=minimax",
        f"mtgrpo.tasks={tasks}",
        "data.train_batch_size=6",
        "actor_rollout_ref.rollout.n=2",
    ]
    overrides += [f"trainer.default_local_dir={folder}", f"trainer.resume_mode={resume}"]
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        config = compose(CONFIG_NAME, overrides=overrides)
    trainer = MTGRPOTrainer.__new__(MTGRPOTrainer)
    trainer.config, trainer.trainer_mode, trainer.use_critic = config, "sync", False
    trainer.checkpoint_callback = build_checkpoint_callback(config)
    trainer.replay_buffer = trainer._build_replay_buffer()
    trainer.buffer.attach(ROW_TASKS, 6, 2, lambda rows: [])
    trainer.actor_rollout_wg = FakeActor()
    trainer.train_dataloader = StatefulDataLoader(list(range(12)), batch_size=6)
    return trainer


def _advance(trainer: MTGRPOTrainer, steps: int) -> None:
    """Run controller steps without generation: draw prompts, report rewards, end the step."""
    ctrl, pool = trainer.buffer.controller, trainer.buffer.pool
    assert ctrl is not None and pool is not None
    rng = np.random.default_rng(0)
    for _ in range(steps):
        builder = ctrl.begin_step()
        while (request := builder.next_request()) is not None:
            rows, task = pool.draw(request.counts)
            reward = (rng.random((task.shape[0], 2)) < 0.5).astype(float)
            builder.report_arrays(task, rewards=reward, payloads=[f"uid-{uuid.uuid4().hex}" for _ in rows])
        builder.finish()
        ctrl.end_step(StepFacts())  # the rollouts: the conversation's reports


def test_state_round_trips_through_verls_save_and_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trainer = _trainer(tmp_path)
    ctrl = trainer.buffer.controller
    assert ctrl is not None
    step = 0
    while step < 10 and (step == 0 or not ctrl.kept_payloads()):  # until carry-over keeps a group for next step
        _advance(trainer, 1)
        step += 1
    trainer.global_steps = step
    trainer._save_checkpoint()
    saved = trainer.buffer.state_dict()
    assert json.loads((tmp_path / f"global_step_{step}" / STATE_FILE).read_text()) == saved
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == str(step)

    resumed = _trainer(tmp_path)
    with caplog.at_level(logging.WARNING):
        resumed._load_checkpoint()
    assert resumed.global_steps == step and resumed.actor_rollout_wg.calls == ["load"]
    state = resumed.buffer.state_dict()
    assert state["prompt_pool"] == saved["prompt_pool"] and state["tasks"] == saved["tasks"]
    assert state["controller"]["rule"] == saved["controller"]["rule"]
    assert resumed.buffer.controller is not None and resumed.buffer.controller.step == step
    # the sync trainer's TransferQueue does not survive a restart: the kept groups are released, and said so
    kept = len(saved["kept_uids"])
    assert kept and state["kept_uids"] == [] and resumed.buffer.held_uids() == []
    assert f"mtgrpo: {kept} groups kept or requested ahead at step {step} are dropped" in caplog.text


def test_a_checkpoint_without_mtgrpo_state_is_refused_before_verl_loads_anything(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    _advance(trainer, 1)
    trainer.global_steps = 1
    trainer._save_checkpoint()
    (tmp_path / "global_step_1" / STATE_FILE).unlink()
    resumed = _trainer(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"has no mtgrpo_state\.json.*trainer\.resume_mode=disable"):
        resumed._load_checkpoint()
    assert resumed.actor_rollout_wg.calls == []
    fresh = _trainer(tmp_path, resume="disable")
    fresh._load_checkpoint()  # a new run ignores the folder
    assert fresh.global_steps == 0 and fresh.buffer.controller is not None and fresh.buffer.controller.step == 0


def test_a_checkpoint_of_other_tasks_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    _advance(trainer, 2)
    trainer.global_steps = 2
    trainer._save_checkpoint()
    other = _trainer(tmp_path, tasks="[c,b,a]")
    before = other.buffer.state_dict()
    with pytest.raises(
        ValueError, match=r"trained on tasks \['a', 'b', 'c'\] but this run has tasks \['c', 'b', 'a'\]"
    ):
        other._load_checkpoint()
    assert other.buffer.state_dict() == before and other.actor_rollout_wg.calls == []


def test_a_state_file_of_another_step_is_refused(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    _advance(trainer, 2)
    trainer.global_steps = 1  # the controller is two steps in: not the state of global step 1
    trainer._save_checkpoint()
    with pytest.raises(ValueError, match="controller after 2 steps but the checkpoint is of global step 1"):
        _trainer(tmp_path)._load_checkpoint()


def test_a_resume_path_verl_cannot_read_is_refused_naming_the_setting(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    _advance(trainer, 1)
    trainer.global_steps = 1
    trainer._save_checkpoint()
    refused = [
        ("my_run", ValueError, r"trainer\.resume_from_path='.*/my_run': expected .* ending in global_step_<N>"),
        ("global_step_1/", ValueError, r"resume_from_path='.*/global_step_1/': .*with no trailing '/'"),
        ("global_step_x", ValueError, r"resume_from_path='.*/global_step_x': expected"),
        ("global_step_7", FileNotFoundError, r"resume_from_path='.*/global_step_7': no such folder .*expected an"),
    ]
    resumed = _trainer(tmp_path, "[a,b,c]", "resume_path")
    for path, error, message in refused:
        resumed.config.trainer.resume_from_path = f"{tmp_path}/{path}"
        with pytest.raises(error, match=message):
            resumed._load_checkpoint()
    assert resumed.actor_rollout_wg.calls == [] and resumed.buffer.controller.step == 0  # type: ignore[union-attr]
    resumed.config.trainer.resume_from_path = f"{tmp_path}/global_step_1"
    resumed._load_checkpoint()
    assert resumed.global_steps == 1 and resumed.actor_rollout_wg.calls == ["load"]
