"""mtgrpo.correct_reward reaches the sampler: the strict filter and accuracy read the same value (it used to stay
in the settings, so the strict filter kept 1.0)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("verl")

from mtgrpo_backends.verl.config import MTGRPOSettings


def _informative(correct_reward: float) -> np.ndarray:
    settings = MTGRPOSettings(method="dapo", correct_reward=correct_reward, sampler={"filtering": "strict"})
    ctrl = settings.settings.controller(2, 2, 2)
    assert ctrl.sampler.config.correct_reward == correct_reward
    builder = ctrl.begin_step()
    request = builder.next_request()
    assert request is not None
    tasks = np.repeat(np.arange(2), request.counts)
    builder.report_arrays(tasks, np.arange(tasks.size), rewards=np.tile([0.5, 0.1], (tasks.size, 1)))
    return builder.finish().report.informative


def test_the_strict_filter_uses_mtgrpo_correct_reward() -> None:
    assert _informative(0.5).sum() > 0  # one correct, one wrong: informative
    assert _informative(1.0).sum() == 0  # none correct: all wrong, filtered


def test_correct_reward_in_the_sampler_group_is_refused() -> None:
    with pytest.raises(ValueError, match=r"mtgrpo\.sampler\.correct_reward is 0\.5: set mtgrpo\.correct_reward"):
        MTGRPOSettings(sampler={"correct_reward": 0.5})
