"""The one prompt pool: seeded passes per task, identical on every rank, resumable, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtgrpo_core import PromptPool
from mtgrpo_core.prompts.pool import task_ids_of

TASKS = ["easy", "medium", "hard"]


def test_pool_is_seeded_and_covers_each_task_once_per_pass() -> None:
    tasks = np.array([0, 1, 0, 1, 0, 2, 0])
    pool, twin = PromptPool(tasks, TASKS, 7), PromptPool(tasks, TASKS, 7)
    rows, ids = pool.draw([2, 0, 1])
    np.testing.assert_array_equal(ids, [0, 0, 2])
    more, _ = pool.draw([2, 0, 0])
    assert sorted([*rows[:2].tolist(), *more.tolist()]) == [0, 2, 4, 6]  # a full pass over task 0's rows
    np.testing.assert_array_equal(twin.draw([4, 0, 1])[0][:4], [*rows[:2], *more])
    restored = PromptPool(tasks, TASKS, 7)
    restored.load_state_dict(json.loads(json.dumps(pool.state_dict())))
    np.testing.assert_array_equal(restored.draw([3, 2, 0])[0], pool.draw([3, 2, 0])[0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=3, max_size=30), st.lists(st.integers(0, 9), min_size=3, max_size=3))
def test_every_row_is_drawn_once_per_pass(row_tasks: list[int], counts: list[int]) -> None:
    row_tasks = [*row_tasks, 0, 1, 2]
    pool = PromptPool(row_tasks, TASKS, 0)
    per_task = np.bincount(row_tasks, minlength=3)
    drawn = [pool.draw([int(per_task[k]) if j == k else 0 for j in range(3)])[0] for k in range(3)]
    for k in range(3):
        assert sorted(drawn[k].tolist()) == np.flatnonzero(np.array(row_tasks) == k).tolist()
    rows, ids = pool.draw(counts)
    assert np.array_equal(np.array(row_tasks)[rows], ids) and np.bincount(ids, minlength=3).tolist() == counts


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no rows for tasks \['hard'\]"):
        PromptPool([0, 1], TASKS)
    with pytest.raises(ValueError, match=r"row_tasks holds unknown task id 3"):
        PromptPool([0, 1, 2, 3], TASKS)
    pool = PromptPool([0, 1, 2], TASKS)
    with pytest.raises(ValueError, match=r"counts must be 3 non-negative ints \(one per task\), got \[1, -1, 0\]"):
        pool.draw([1, -1, 0])
    with pytest.raises(ValueError, match="a pool of other tasks"):
        pool.load_state_dict(PromptPool([0, 1, 2], ["a", "b", "c"]).state_dict())
    with pytest.raises(ValueError, match=r"state\['cursor'\] must be 3 non-negative ints"):
        pool.load_state_dict({**pool.state_dict(), "cursor": [0, -1, 0]})
    with pytest.raises(ValueError, match=r"train column holds 'arc' at row 1, which is not in tasks"):
        task_ids_of(["easy", "arc"], TASKS, "train column")
