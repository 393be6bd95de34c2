"""Selective rollouts in MTGRPOTrainer: the prompt pool keeps per-prompt history, skips prompts last seen
uninformative, and the rollouts standing in for them reach the step's J_k; the history is checkpointed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.test_trl_trainer import GROUP, Recorder, make_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SELECT = {"method": "mt-grpo:0.2", "sampler": {"filtering": "strict"}, "selection": {"exploration": 0.1}}


class FactsRecorder(Recorder):
    """Also records, per step, the rollouts in its facts and the groups it generated."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counts: list[tuple[int, int]] = []

    def _record_step(self, data: Any, batch: Any, output: dict[str, Any]) -> None:
        super()._record_step(data, batch, output)
        assert self._pending is not None
        self.counts.append((len(np.asarray(self._pending.facts.rollout_task)), len(data.group_task)))


def test_history_is_kept_prompts_are_skipped_and_stand_ins_reach_the_signals(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, recorder=FactsRecorder, max_steps=6, save_strategy="steps", save_steps=3, **SELECT)
    trainer.train()
    stand_ins = [rollouts - GROUP * groups for rollouts, groups in trainer.counts]
    assert min(stand_ins) >= 0 and sum(stand_ins) > 0, "no prompt was skipped: the test shows nothing"
    assert all(s % GROUP == 0 for s in stand_ins)  # each skipped prompt stands in as one group of N rollouts
    logged = [h for h in trainer.state.log_history if "loss" in h]
    names = trainer.task_names
    skipped = [sum(h[f"mtgrpo/skipped_prompts/{n}"] for n in names) for h in logged]
    assert all(sk * GROUP >= s for sk, s in zip(skipped, stand_ins, strict=True))  # stand-ins only for skipped ones
    shares = [h.get(f"mtgrpo/stand_in_share/{n}", 0.0) for h in logged for n in names]
    assert all(0.0 <= x < 1.0 for x in shares) and max(shares) > 0.0
    pool = trainer.prompt_pool
    assert pool.history is not None and pool.selection is not None and pool.selection.filtering == "strict"
    seen = pool.history.outcome != 0  # 0: never reported
    assert seen.sum() > 0
    state = pool.state_dict()
    assert state["history"] is not None
    resumed = make_trainer(tmp_path / "resumed", max_steps=6, **SELECT)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    np.testing.assert_array_equal(resumed.prompt_pool.history.outcome, pool.history.outcome)


def test_selection_needs_a_filtering_method_and_valid_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="with method 'grpo': selection needs a method that filters groups"):
        make_trainer(tmp_path, method="grpo", selection={})
    with pytest.raises(ValueError, match=r"exploration must be in \(0.0, 1.0\), got 1.5"):
        make_trainer(tmp_path, selection={"exploration": 1.5})
