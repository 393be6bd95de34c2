"""The README's embedding example, run as written: the simulated policy stands behind `generate` and
`update_policy`. With the reference preset the weights must be the reference rule's (I_k summed, one update per
mini-batch) although the example never names a reduction."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mtgrpo_backends.simulated.policy import Groups
from mtgrpo_backends.simulated.suites import load_suite
from mtgrpo_core import Controller, StepFacts, step_signals
from mtgrpo_core.methods import parse_method

README = Path(__file__).resolve().parents[1] / "README.md"
STEPS = 12


def _example() -> str:
    text = README.read_text()
    section = text[text.index("## Embedding the sampler") :]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    return block.group(1)


class _Trainer:
    """generate / update_policy over the simulated policy: each group's payload is its row of Groups."""

    def __init__(self, seed: int) -> None:
        self.policy = load_suite("paper3").policy(seed, 8)
        self.batches: list[Any] = []
        self.step_rollouts: list[tuple[np.ndarray, np.ndarray]] = []  # every rollout of each step, for the replay
        self._generated: list[Groups] = []

    def generate(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Groups]]:
        groups = self.policy.generate(counts)
        self._generated.append(groups)
        return groups.task, groups.rewards, [groups.take([i]) for i in range(len(groups))]

    def update_policy(self, batch: Any) -> dict[str, np.ndarray]:
        self.batches.append(batch)
        fresh = Groups.concat(self._generated) if self._generated else Groups.empty(8)
        self.step_rollouts.append((np.repeat(fresh.task, 8), fresh.rewards.ravel()))
        self._generated = []
        trained = Groups.concat(list(batch.payloads)) if len(batch) else Groups.empty(8)
        advantage, before, after = self.policy.train_step(trained)
        n = advantage.shape[1]
        return {
            "sample_task": np.repeat(trained.task, n),
            "sample_advantage": advantage.ravel(),
            "surrogate_before": before.ravel(),
            "surrogate_after": after.ravel(),
            "surrogate_minibatch": np.zeros(before.size, dtype=np.int64),  # one optimizer step per batch
        }


def _run(method: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Controller, _Trainer, list[StepFacts]]:
    code = _example()
    assert '"mt-grpo:0.2"' in code and "end_step(StepFacts(" in code
    facts: list[StepFacts] = []
    real = Controller.end_step

    def spy(self: Controller, step: Any) -> Any:
        facts.append(step)
        return real(self, step)

    monkeypatch.setattr(Controller, "end_step", spy)
    trainer = _Trainer(seed=0)
    scope: dict[str, Any] = {
        "num_steps": STEPS,
        "generate": trainer.generate,
        "update_policy": trainer.update_policy,
    }
    exec(compile(code.replace('"mt-grpo:0.2"', repr(method)), str(README), "exec"), scope)
    return scope["ctrl"], trainer, facts


def test_the_example_is_at_most_25_lines() -> None:
    assert len(_example().strip().splitlines()) <= 25


@pytest.mark.filterwarnings("ignore:method 'mt-grpo-ref' sets max_rounds")
def test_example_with_the_reference_preset_gives_the_reference_rules_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    ctrl, trainer, facts = _run("mt-grpo-ref", monkeypatch)
    assert len(facts) == STEPS and ctrl.step == STEPS

    def replay(reduce: str) -> np.ndarray:
        twin: Any = parse_method("mt-grpo-ref").build_rule(3)
        for f, (task, reward) in zip(facts, trainer.step_rollouts, strict=True):
            signals = step_signals(replace(f, rollout_task=task, rollout_reward=reward), 3, improvement_reduce=reduce)
            twin.update_minibatches(signals, signals.improvement_steps)
        return np.asarray(twin.weights)

    np.testing.assert_allclose(ctrl.weights, replay("sum"), rtol=0, atol=1e-12)
    assert np.abs(ctrl.weights - replay("mean")).sum() > 1e-3  # the reduction matters: a mean would be caught


def test_example_with_the_lean_default_carries_over_and_fills_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    ctrl, trainer, facts = _run("mt-grpo:0.2", monkeypatch)
    batches = trainer.batches
    assert ctrl.step == STEPS and len(facts) == STEPS
    assert all(len(b) == 32 for b in batches if not b.report.budget_exhausted)
    staleness = np.concatenate([b.staleness for b in batches])
    assert staleness.max() == 1 and (staleness == 1).any()  # carried groups were trained, one step old
    trained = np.concatenate([b.keys for b in batches])
    assert np.unique(trained).size == trained.size  # no group trained twice
    assert not np.allclose(ctrl.weights, 1 / 3)
