"""Carry-over in MTGRPOTrainer: kept groups are trained one step later against their generating policy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mtgrpo_backends.trl.checkpoint_state import KEPT_FILE, STATE_FILE
from tests.test_trl_trainer import GROUP, Recorder, make_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CARRY = {"method": "mt-grpo:0.2"}  # the default: joint planner, carry-over 1


class RatioRecorder(Recorder):
    """Also records, per loss call, each row's staleness and its old log-probability minus the current policy's
    (measured before the update on that batch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gaps: list[tuple[np.ndarray, np.ndarray]] = []
        self.kept_after: list[dict[int, Any]] = []  # the controller's kept payloads after each step's batch

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        out = super()._generate_and_score_completions(inputs)
        if self._training():
            self.kept_after.append(dict(self.controller.kept_payloads()))
        return out

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        if "mtgrpo_row" in inputs:
            batch = self.batches[-1]
            staleness = dict(zip(batch.keys.tolist(), np.asarray(batch.staleness).tolist(), strict=True))
            keys = (inputs["mtgrpo_row"] // GROUP).tolist()
            mask = inputs["completion_mask"]
            trained = mask.sum(1) > 0
            gap = ((inputs["old_per_token_logps"] - self._policy_logps(inputs)).abs() * mask).amax(1)
            stale = np.array([staleness.get(k, 0) for k in keys])
            self.gaps.append((stale[trained.numpy()], gap[trained].numpy()))
        return super()._compute_loss(model, inputs)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RatioRecorder:
    out = tmp_path_factory.mktemp("carry")
    trainer = make_trainer(out, recorder=RatioRecorder, max_steps=5, save_strategy="steps", save_steps=1, **CARRY)
    trainer.train()
    return trainer


def test_carried_groups_are_trained_once_within_the_bound_against_their_generating_policy(run: RatioRecorder) -> None:
    batches = run.batches
    assert sum(int((b.staleness > 0).sum()) for b in batches) > 0, "no group was carried: the test shows nothing"
    trained: set[int] = set()
    for step, batch in enumerate(batches):
        keys = batch.keys.tolist()
        assert not trained & set(keys), "a group was trained twice"
        trained |= set(keys)
        carried = [k for k, s in zip(keys, batch.staleness.tolist(), strict=True) if s > 0]
        assert (batch.staleness <= 1).all()
        if step:
            assert set(carried) <= set(batches[step - 1].kept.tolist())
    stale = np.concatenate([s for s, _ in run.gaps])
    gap = np.concatenate([g for _, g in run.gaps])
    assert gap[stale == 0].max() < 1e-5  # a fresh group's ratio starts at 1, as in TRL
    assert gap[stale > 0].min() > 1e-4  # a carried one is measured against the policy one update earlier
    assert not hasattr(run, "_kept")  # no store of its own: the controller holds the kept groups' payloads
    for batch, kept in zip(batches, run.kept_after, strict=True):
        assert sorted(kept) == sorted(batch.kept.tolist())
        for key, payload in kept.items():  # each kept group's rows, with the generating log-probabilities
            assert payload.key == key and payload.rows is not None
            assert payload.rows["completion_ids"].shape[0] == GROUP and "old_per_token_logps" in payload.rows
    logged = [h for h in run.state.log_history if "loss" in h]
    assert [h["mtgrpo/carried_groups"] for h in logged] == [float(b.report.carried_counts.sum()) for b in batches]
    for h, b in zip(logged, batches, strict=True):  # a task trained only from carried groups is flagged
        only = (b.report.realized_counts > 0) & (b.report.generated == 0)
        assert [h[f"mtgrpo/carried_only/{n}"] for n in run.task_names] == only.astype(float).tolist()
        assert h["mtgrpo/carried_only_step"] == float(b.report.generated.sum() == 0)


def test_resume_restores_the_kept_rows_and_continues_exactly(run: RatioRecorder, tmp_path: Path) -> None:
    for step in range(1, 5):
        kept_file = Path(str(run.args.output_dir)) / f"checkpoint-{step}" / KEPT_FILE.format(rank=0)
        assert kept_file.exists() == bool(len(run.batches[step - 1].kept))
    step = _step_with_kept_groups(run)
    resumed = make_trainer(tmp_path / "resumed", recorder=RatioRecorder, max_steps=5, **CARRY)
    resumed.train(resume_from_checkpoint=str(Path(str(run.args.output_dir)) / f"checkpoint-{step}"))
    assert [b.keys.tolist() for b in resumed.batches] == [b.keys.tolist() for b in run.batches[step:]]
    for (s1, g1), (s2, g2) in zip(resumed.gaps, run.gaps[step:], strict=True):
        np.testing.assert_array_equal(s1, s2)
        np.testing.assert_allclose(g1, g2, atol=1e-6)


def _step_with_kept_groups(run: RatioRecorder) -> int:
    steps = [s for s in range(1, 5) if len(run.batches[s - 1].kept)]
    assert steps, "no step kept a group: the resume tests show nothing"
    return steps[0]


def test_a_checkpoint_without_its_kept_rows_is_refused(run: RatioRecorder, tmp_path: Path) -> None:
    step = _step_with_kept_groups(run)
    copy = tmp_path / f"checkpoint-{step}"
    shutil.copytree(Path(str(run.args.output_dir)) / f"checkpoint-{step}", copy)
    (copy / KEPT_FILE.format(rank=0)).unlink()
    resumed = make_trainer(tmp_path / "resumed", max_steps=5, **CARRY)
    with pytest.raises(FileNotFoundError, match=r"keeps .* groups for carry-over but has no mtgrpo_kept_rows_rank0"):
        resumed.train(resume_from_checkpoint=str(copy))


def test_kept_rows_of_another_size_or_an_older_state_format_are_refused(run: RatioRecorder, tmp_path: Path) -> None:
    step = _step_with_kept_groups(run)
    copy = tmp_path / f"checkpoint-{step}"
    shutil.copytree(Path(str(run.args.output_dir)) / f"checkpoint-{step}", copy)
    rows = torch.load(copy / KEPT_FILE.format(rank=0), weights_only=True)
    key = next(iter(rows))
    torch.save({**rows, key: {n: t[:-1] for n, t in rows[key].items()}}, copy / KEPT_FILE.format(rank=0))
    resumed = make_trainer(tmp_path / "resumed", max_steps=5, **CARRY)
    with pytest.raises(ValueError, match=rf"kept rows of group {key} hold {GROUP - 1} rollouts"):
        resumed.train(resume_from_checkpoint=str(copy))
    state = json.loads((copy / STATE_FILE).read_text())
    (copy / STATE_FILE).write_text(json.dumps({**state, "format": 2}))  # the trainer kept its own rows then
    with pytest.raises(ValueError, match=r"state format 2, written when the trainer kept carried groups' rows"):
        resumed.train(resume_from_checkpoint=str(copy))
