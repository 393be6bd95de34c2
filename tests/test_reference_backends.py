"""The reference IWU presets in the torch loop and TRL: one weight update per PPO mini-batch (optimizer step),
each from that mini-batch's I_k measured around its own step, through the core's signal path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mtgrpo_backends.torch.loop import train_step
from mtgrpo_backends.torch.model import CharGPT
from mtgrpo_backends.torch.state import make_state
from mtgrpo_core import Controller, TaskSignals
from mtgrpo_core.methods import parse_method
from tests.test_torch_loop import TINY, TOK, _config, _suite
from tests.test_trl_trainer import make_trainer

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:method 'mt-grpo-ref' sets max_rounds"),  # tiny runs use 2 rounds
]


def _spy(ctrl: Controller) -> list[TaskSignals]:
    """Record the signals every end_step applies (the controller still does its real work)."""
    seen: list[TaskSignals] = []
    real = ctrl.end_step

    def end_step(step: Any) -> Any:
        weights = real(step)
        assert ctrl.last_signals is not None
        seen.append(ctrl.last_signals)
        return weights

    ctrl.end_step = end_step  # type: ignore[method-assign]
    return seen


def _check(ctrl: Controller, seen: list[TaskSignals], states: list[dict[str, Any]], steps: int) -> None:
    """Each step's weights are one update_minibatches over `steps` rows, from the state before that step."""
    assert seen and all(s.improvement_steps is not None and s.improvement_steps.shape == (steps, 3) for s in seen)
    twin, later = parse_method(ctrl.method).build_rule(3), parse_method(ctrl.method).build_rule(3)
    for signals, state, after in zip(seen, states, [*states[1:], ctrl.state_dict()], strict=True):
        twin.load_state_dict(state["rule"])
        later.load_state_dict(after["rule"])
        rule: Any = twin
        np.testing.assert_array_equal(rule.update_minibatches(signals, signals.improvement_steps), later.weights)


def test_torch_loop_updates_the_weights_once_per_mini_batch() -> None:
    config = _config("mt-grpo-ref:0.2", steps=2, minibatches=2, epochs=2)
    state = make_state(config, CharGPT(TINY, seed=0), _suite(), TOK)
    seen, states = _spy(state.controller), []
    for _ in range(2):
        states.append(state.controller.state_dict())
        train_step(state, config, _suite(), TOK)
    _check(state.controller, seen, states, steps=4)  # 2 epochs x 2 mini-batches


def test_trl_updates_the_weights_once_per_optimizer_step(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, method="mt-grpo-ref:0.2", max_steps=4, steps_per_generation=2)
    seen, states = _spy(trainer.controller), trainer.states_before
    trainer.train()
    _check(trainer.controller, seen, states, steps=2)
