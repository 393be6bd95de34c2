"""A task trained only from carried groups keeps its place in the weight update (Controller.end_step): it has no
fresh rollout, so it takes the J_k and accuracy last measured for it; the I_k measured on its carried rows counts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtgrpo_core import Controller, StepFacts
from tests.test_readme_example import _Trainer


def _run(steps: int) -> int:
    ctrl = Controller.from_method("mt-grpo:0.2", num_tasks=3, batch_size=32, group_size=8, seed=0)
    trainer = _Trainer(seed=0)
    measured = np.full(3, np.nan)
    filled = 0
    for _ in range(steps):
        builder = ctrl.begin_step()
        while (request := builder.next_request()) is not None:
            tasks, rewards, data = trainer.generate(request.counts)
            builder.report_arrays(tasks, rewards=rewards, payloads=data)
        batch = builder.finish()
        ctrl.end_step(StepFacts(**trainer.update_policy(batch)))
        signals = ctrl.last_signals
        assert signals is not None
        trained = np.bincount(batch.tasks, minlength=3) > 0
        fresh = batch.report.generated > 0
        carried_only = trained & ~fresh
        assert signals.present[trained & ~np.isnan(measured)].all()  # every trained task counts
        np.testing.assert_array_equal(signals.reward[carried_only], measured[carried_only])  # its last J_k
        assert not signals.present[~trained & ~fresh].any()
        measured[fresh] = signals.reward[fresh]
        filled += int(carried_only.sum())
    return filled


def test_tasks_trained_from_carried_groups_keep_their_signal() -> None:
    assert _run(40) > 0, "no step trained a task only from carried groups: the test does not exercise the rule"


def test_measured_signals_survive_a_state_round_trip_and_bad_ones_are_refused() -> None:
    ctrl = Controller.from_method("mt-grpo:0.2", num_tasks=3, batch_size=32, group_size=8, seed=0)
    trainer = _Trainer(seed=0)
    builder = ctrl.begin_step()
    while (request := builder.next_request()) is not None:
        tasks, rewards, data = trainer.generate(request.counts)
        builder.report_arrays(tasks, rewards=rewards, payloads=data)
    ctrl.end_step(StepFacts(**trainer.update_policy(builder.finish())))
    state = json.loads(json.dumps(ctrl.state_dict()))
    twin = Controller.from_method("mt-grpo:0.2", num_tasks=3, batch_size=32, group_size=8, seed=0)
    twin.load_state_dict(state, ctrl.kept_payloads())
    assert twin.state_dict() == ctrl.state_dict()
    for bad in ([[0.1, 0.2], [None, None, None]], [[0.1, "x", 0.3], [0.1, 0.2, 0.3]], [[float("inf")] * 3] * 2):
        with pytest.raises(ValueError, match=r"state\['measured'\]"):
            twin.load_state_dict({**state, "measured": bad}, ctrl.kept_payloads())
    assert twin.state_dict() == ctrl.state_dict()  # refused whole


def test_a_reduction_that_contradicts_a_reference_preset_is_refused() -> None:
    with pytest.raises(ValueError, match=r"improvement_reduce='mean' contradicts method 'mt-grpo-ref'"):
        Controller.from_method("mt-grpo-ref", num_tasks=3, batch_size=32, group_size=8, improvement_reduce="mean")
    assert Controller.from_method("mt-grpo-ref", 3, 32, 8).improvement_reduce == "sum"
    assert Controller.from_method("mt-grpo:0.2", 3, 32, 8, improvement_reduce="sum").improvement_reduce == "sum"
    with pytest.raises(ValueError, match=r"improvement_reduce must be one of \['mean', 'sum'\], got 'avg'"):
        Controller.from_method("mt-grpo:0.2", 3, 32, 8, improvement_reduce="avg")


def test_a_refused_end_step_changes_nothing_and_the_step_can_end_again(monkeypatch: pytest.MonkeyPatch) -> None:
    ctrl = Controller.from_method("mt-grpo:0.2", num_tasks=3, batch_size=32, group_size=8, seed=0)
    trainer = _Trainer(seed=0)
    for step in range(3):
        builder = ctrl.begin_step()
        while (request := builder.next_request()) is not None:
            tasks, rewards, data = trainer.generate(request.counts)
            builder.report_arrays(tasks, rewards=rewards, payloads=data)
        facts = StepFacts(**trainer.update_policy(builder.finish()))
        before = json.dumps(ctrl.state_dict())
        if step == 2:
            real = ctrl.rule.update

            def refuse(signals: object) -> object:
                raise ValueError("refused by the rule")

            monkeypatch.setattr(ctrl.rule, "update", refuse)
            with pytest.raises(ValueError, match="refused by the rule"):
                ctrl.end_step(facts)
            assert json.dumps(ctrl.state_dict()) == before  # measured J_k, pending batch, step: as they were
            monkeypatch.setattr(ctrl.rule, "update", real)
        ctrl.end_step(facts)
    assert ctrl.step == 3
