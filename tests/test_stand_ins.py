"""Stand-in rollouts of skipped prompts (`Selection.stand_ins`): unbiased for J_k and accuracy, within the rewards'
range, seeded by (pool seed, draw). benchmarks/bench_stand_ins.py prints the same measure over more seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.typing import NDArray

from mtgrpo_core import PromptPool
from mtgrpo_core.prompts.history import SelectionConfig
from mtgrpo_core.prompts.pool import Selection

N = 8
FORMAT = 0.1  # reward of a wrong, well-formatted rollout (half of the wrong ones)


def _rewards(p: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float64]:
    correct = rng.random((p.size, N)) < p[:, None]
    return np.where(correct, 1.0, np.where(rng.random(correct.shape) < 0.5, FORMAT, 0.0))


def test_stand_ins_match_the_true_j_and_accuracy_of_a_pool_with_known_pass_rates() -> None:
    """Per-prompt pass rates p_i are fixed and known (true accuracy p_i, true mean reward p_i + 0.05 (1 - p_i)); the
    stand-ins of the prompts skipped over 250 steps are compared with the truth of those prompts, per task. Rounding
    the correct count to the nearest (the old stand-ins) is off by about 0.024 here: J_k on the easy task (0.95
    became all correct), accuracy on the hard one."""
    rng = np.random.default_rng(0)
    rows = 3000
    p = np.concatenate([rng.beta(3.0, 0.3, rows), rng.beta(0.4, 1.5, rows)])  # mostly easy; mostly hard
    true_j = p + FORMAT * 0.5 * (1.0 - p)
    pool = PromptPool(np.repeat([0, 1], rows), ["easy", "hard"], 0, SelectionConfig(filtering="strict"))
    sums = np.zeros((5, 2))  # stand-in reward, stand-in accuracy, true J, true accuracy (per group), groups
    for step in range(300):
        picked = pool.select([256, 256])
        pool.report(picked.rows, _rewards(p[picked.rows], rng))
        task, reward = picked.stand_ins(N)
        assert ((reward >= 0.0) & (reward <= 1.0)).all(), "a stand-in reward left the range of the rewards seen"
        if step < 50:  # warm-up: the class estimates fill
            continue
        known = ~np.isnan(picked.skipped_reward)
        skipped, skipped_task = picked.skipped[known], picked.skipped_tasks[known]
        sums += [
            np.bincount(task, weights=reward, minlength=2) / N,
            np.bincount(task, weights=reward == 1.0, minlength=2) / N,
            np.bincount(skipped_task, weights=true_j[skipped], minlength=2),
            np.bincount(skipped_task, weights=p[skipped], minlength=2),
            np.bincount(skipped_task, minlength=2),
        ]
    assert sums[4].min() > 10_000, "too few prompts skipped: the test shows nothing"
    bias = (sums[:2] - sums[2:4]) / sums[4]
    assert np.abs(bias[0]).max() <= 0.005, f"J_k bias per task {bias[0]}"
    assert np.abs(bias[1]).max() <= 0.005, f"accuracy bias per task {bias[1]}"


@pytest.mark.parametrize("accuracy", [0.0, 0.05, 0.33, 0.5, 0.7, 0.95, 1.0])
def test_an_estimate_becomes_rollouts_with_its_mean_and_accuracy_in_expectation(accuracy: float) -> None:
    """Rewards 1 (correct), -1 or 0.4 (wrong, equally likely): the estimate's mean is a - 0.3 (1 - a), and every
    stand-in reward is 1 (correct) or -0.3 (the mean of the wrong ones), so none leaves [-1, 1]."""
    n, groups = 8, 20_000
    mean = accuracy + (1.0 - accuracy) * (-1.0 + 0.4) / 2
    picked = Selection(
        rows=np.zeros(0, np.int64),
        tasks=np.zeros(0, np.int64),
        retried=np.zeros(0, np.bool_),
        skipped=np.arange(groups),
        skipped_tasks=np.zeros(groups, np.int64),
        skipped_reward=np.full(groups, mean),
        skipped_accuracy=np.full(groups, accuracy),
        draw_seed=(3, 7),
    )
    task, reward = picked.stand_ins(n)
    assert task.shape == reward.shape == (groups * n,)
    assert reward.mean() == pytest.approx(mean, abs=0.005)
    assert (reward == 1.0).mean() == pytest.approx(accuracy, abs=0.005)
    assert set(np.round(reward, 12).tolist()) <= {1.0, -0.3}
    per_group = (reward.reshape(groups, n) == 1.0).sum(axis=1)  # floor(a N) or one more
    assert per_group.min() >= np.floor(accuracy * n) and per_group.max() <= np.ceil(accuracy * n)


def test_stand_ins_with_another_correct_reward_count_only_it_as_correct() -> None:
    picked = Selection(
        rows=np.zeros(0, np.int64),
        tasks=np.zeros(0, np.int64),
        retried=np.zeros(0, np.bool_),
        skipped=np.arange(4),
        skipped_tasks=np.array([0, 1, 1, 0]),
        skipped_reward=np.array([2.0, 0.5, 1.0, np.nan]),  # the last was not last seen uninformative: no stand-in
        skipped_accuracy=np.array([1.0, 0.25, 0.5, np.nan]),
        draw_seed=(0, 0),
    )
    task, reward = picked.stand_ins(4, correct_reward=2.0)
    assert task.tolist() == [0] * 4 + [1] * 8
    assert reward[:4].tolist() == [2.0] * 4  # all correct
    assert reward[4:8].tolist() == [2.0, 0.0, 0.0, 0.0]  # a N = 1 exactly: one correct, the others (0.5 - 0.5) / 0.75
    assert reward[8:].tolist() == [2.0, 2.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="group_size must be >= 1, got 0"):
        picked.stand_ins(0)
    with pytest.raises(TypeError, match="correct_reward must be a real number, got 'x'"):
        picked.stand_ins(4, correct_reward="x")  # type: ignore[arg-type]


def _stand_ins_after(pool: PromptPool, rng: np.random.Generator, steps: int) -> list[list[float]]:
    out = []
    for _ in range(steps):
        picked = pool.select([40])
        out.append(picked.stand_ins(N)[1].tolist())
        pool.report(picked.rows, _rewards(np.full(picked.rows.size, 0.5) * (picked.rows % 3 != 0), rng))
    return out


def test_stand_ins_are_seeded_by_pool_seed_and_draw_and_survive_a_resume() -> None:
    config = SelectionConfig(exploration=0.3, filtering="strict")
    a, b = PromptPool(np.zeros(60, np.int64), ["t"], 5, config), PromptPool(np.zeros(60, np.int64), ["t"], 5, config)
    first = _stand_ins_after(a, np.random.default_rng(1), 20)
    assert first == _stand_ins_after(b, np.random.default_rng(1), 20)  # ranks agree
    assert sum(len(s) for s in first) > 0, "nothing skipped: the test shows nothing"
    resumed = PromptPool(np.zeros(60, np.int64), ["t"], 5, config)
    resumed.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert _stand_ins_after(resumed, np.random.default_rng(2), 10) == _stand_ins_after(a, np.random.default_rng(2), 10)
    picked = a.select([40])
    assert picked.draw_seed == (5, 30)
    assert picked.stand_ins(N)[1].tolist() == picked.stand_ins(N)[1].tolist()  # every call gives the same
