"""The no-signal guard inside TRL: a task that always scores 0 is only probed once recognised, so steps stop
spending the round budget on it; the log names it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.test_trl_trainer import GROUP, TASKS, make_trainer, toy_reward


def dead_hard(completions: list[str], task: list[str], **kw: Any) -> list[float]:
    """toy_reward, except that task "hard" never scores."""
    return [0.0 if t == "hard" else r for r, t in zip(toy_reward(completions, task, **kw), task, strict=True)]


def test_a_task_that_always_scores_zero_is_only_probed(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, reward=dead_hard, max_steps=8, sampler={"guard_floor": 0.2, "max_rounds": 4})
    trainer.train()
    hard = TASKS.index("hard")
    reports = [b.report for b in trainer.batches]
    first = next(i for i, r in enumerate(reports) if hard in r.barren_tasks)
    probe = -(-4 // len(TASKS))  # ceil(B / K) with B = 16 rows / GROUP rollouts = 4 groups
    for r in reports[first:]:
        assert r.generated[hard] == probe and r.weights[hard] == 0.0 and not r.budget_exhausted
    logged = [h for h in trainer.state.log_history if "mtgrpo/barren/hard" in h]
    assert logged[first]["mtgrpo/barren/hard"] == 1.0 and logged[0]["mtgrpo/barren/hard"] == 0.0
    assert all(h["mtgrpo/generated_rollouts"] == h["mtgrpo/generated_groups"] * GROUP for h in logged)
