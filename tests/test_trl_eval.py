"""Per-task evaluation in MTGRPOTrainer: `eval_mtgrpo/reward/<task>` and `eval_mtgrpo/accuracy/<task>`.

The eval rollouts' rewards go through the core's signal path (`StepFacts` -> `step_signals`), so the values must
equal the mean reward and the share of correct rewards of each task's eval rollouts; a task without eval rows is
left out of the log (not None).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.test_trl_trainer import Recorder, make_trainer, toy_dataset


class EvalRecorder(Recorder):
    """Keeps every eval rollout's task and reward as TRL scored it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_rollouts: list[tuple[str, float]] = []

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> torch.Tensor:
        per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if not self._training():
            self.eval_rollouts += list(zip([row["task"] for row in inputs], per_func[:, 0].tolist(), strict=True))
        return per_func


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_per_task_eval_metrics_in_a_run(tmp_path: Path) -> None:
    evaluation = toy_dataset(("easy", "mid"), rows=8)  # no "hard" rows: its eval metrics must be left out
    trainer = make_trainer(
        tmp_path,
        recorder=EvalRecorder,
        eval_dataset=evaluation,
        max_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        per_device_eval_batch_size=8,
    )
    trainer.train()
    assert isinstance(trainer, EvalRecorder)
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evals) == 1 and len(trainer.eval_rollouts) == 8 * 4  # every eval row, num_generations each
    logged = evals[0]
    for name in ("easy", "mid"):
        rewards = np.array([r for t, r in trainer.eval_rollouts if t == name])
        assert math.isclose(logged[f"eval_mtgrpo/reward/{name}"], rewards.mean(), rel_tol=1e-12)
        assert math.isclose(logged[f"eval_mtgrpo/accuracy/{name}"], float(np.mean(rewards == 1.0)), rel_tol=1e-12)
    assert not [k for k in logged if k.endswith("/hard")]
    for h in trainer.state.log_history:
        assert all(v is not None for k, v in h.items() if "mtgrpo/" in k)
    # train metrics keep their names and never mix with eval ones
    train = [h for h in trainer.state.log_history if "loss" in h]
    assert all("mtgrpo/reward/easy" in h and not any(k.startswith("eval_") for k in h) for h in train)


def test_each_eval_set_of_a_dict_logs_under_its_own_prefix(tmp_path: Path) -> None:
    sets = {"first": toy_dataset(("easy",), rows=4), "second": toy_dataset(("mid",), rows=4)}
    trainer = make_trainer(
        tmp_path,
        eval_dataset=sets,  # type: ignore[arg-type]
        max_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        per_device_eval_batch_size=8,
    )
    trainer.train()
    metrics = {k: v for h in trainer.state.log_history for k, v in h.items() if k.startswith("eval_")}
    assert {"eval_first_mtgrpo/reward/easy", "eval_second_mtgrpo/reward/mid"} <= set(metrics)
    assert not [k for k in metrics if k.startswith("eval_mtgrpo/")]  # no shared key that both sets would write
    assert not [k for k in metrics if k.startswith("eval_first_") and k.endswith("/mid")]
    assert not [k for k in metrics if k.startswith("eval_second_") and k.endswith("/easy")]


def test_eval_dataset_without_task_column_or_with_other_tasks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"eval_dataset has no task column 'task'.*per-task eval"):
        make_trainer(tmp_path, eval_dataset=toy_dataset().remove_columns("task"))
    with pytest.raises(ValueError, match=r"eval_dataset column 'task' holds 'other' at row 1, which is not in tasks"):
        make_trainer(tmp_path, eval_dataset=toy_dataset(("easy", "other"), rows=4))
    with pytest.raises(ValueError, match=r"eval_dataset\['b'\] has no task column"):
        make_trainer(tmp_path, eval_dataset={"a": toy_dataset(), "b": toy_dataset().remove_columns("task")})
