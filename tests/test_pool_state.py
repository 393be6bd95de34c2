"""A prompt pool's state with selection is validated fully and refused whole, each error naming field and value."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from mtgrpo_core import PromptPool
from mtgrpo_core.prompts.history import SelectionConfig

ROWS = [0] * 20 + [1] * 20
CONFIG = SelectionConfig(exploration=0.3, filtering="strict")


def _pool(reward: float = 0.0) -> PromptPool:
    """A pool after some draws whose uninformative rows were retried; wrong rollouts earn `reward`."""
    pool = PromptPool(ROWS, ["a", "b"], 1, CONFIG)
    rng = np.random.default_rng(0)
    for _ in range(15):
        rows = pool.select([8, 8]).rows
        p = np.where(rows % 4 == 0, 0.5, 0.0)  # a quarter informative, the rest all-wrong
        pool.report(rows, np.where(rng.random((rows.size, 4)) < p[:, None], 1.0, reward))
    assert pool.retry_stats is not None and pool.retry_stats.sums[0].sum() > 0, "nothing retried: shows nothing"
    return pool


def _refused(state: dict[str, Any], error: type[Exception], message: str) -> None:
    target = _pool()
    before = json.dumps(target.state_dict())
    with pytest.raises(error, match=message):
        target.load_state_dict(state)
    assert json.dumps(target.state_dict()) == before  # nothing half-applied


def _stats(state: dict[str, Any], field: int, task: int, cls: int, value: float) -> dict[str, Any]:
    stats = json.loads(json.dumps(state["retry_stats"]))
    stats[field][task][cls] = value
    return {**state, "retry_stats": stats}


def test_a_history_that_is_not_a_mapping_or_lacks_a_field_is_refused() -> None:
    state = json.loads(json.dumps(_pool().state_dict()))
    _refused(
        {**state, "history": []}, TypeError, r"state\['history'\] must be a mapping with keys .* got \[\] of type list"
    )
    _refused({**state, "history": None}, TypeError, r"state\['history'\] must be a mapping .* got None")
    no_seen = {k: v for k, v in state["history"].items() if k != "seen"}
    _refused({**state, "history": no_seen}, ValueError, r"state\['history'\] has no \['seen'\]; expected keys")
    unseen = json.loads(json.dumps(state["history"]))
    row = int(np.flatnonzero(np.array(unseen["outcome"]) > 0)[0])
    unseen["seen"][row] = -1
    _refused(
        {**state, "history": unseen}, ValueError, rf"state\['history'\] row {row} has outcome '[a-z-]+' but seen -1"
    )
    _refused(
        {k: v for k, v in state.items() if k != "cursor"},
        ValueError,
        r"state\['cursor'\] must be 2 non-negative ints, got \[\]",
    )


def test_negative_or_inconsistent_retry_stats_are_refused_by_field_task_and_class() -> None:
    state = json.loads(json.dumps(_pool().state_dict()))
    sums = np.array(state["retry_stats"])
    k, c = (int(i) for i in np.argwhere(sums[0] > 0)[0])
    cls = ["all-correct", "all-wrong"][c]
    _refused(
        _stats(state, 0, k, c, -1.0),
        ValueError,
        rf"state\['retry_stats'\] field 'groups' of task {k}, class '{cls}' is -1.0 .*expected a discounted count >= 0",
    )
    _refused(_stats(state, 2, k, c, -0.5), ValueError, rf"field 'accuracy' of task {k}, class '{cls}' is -0.5")
    too_many = float(sums[0, k, c]) + 1.0
    _refused(_stats(state, 3, k, c, too_many), ValueError, r"field 'informative' .* expected in \[0, groups\]")
    empty = np.argwhere(sums[0] == 0)
    assert empty.size, "every class was retried: the last check shows nothing"
    ek, ec = (int(i) for i in empty[0])
    _refused(_stats(state, 1, ek, ec, 0.5), ValueError, r"field 'reward' .* is 0.5 \(groups 0.0\); expected 0 where")
    _refused({**state, "retry_stats": [[[0.0]]]}, ValueError, r"retry_stats'\] must be 4 x 2 x 2 sums")


def test_negative_reward_sums_are_a_valid_state() -> None:
    """Rewards may be negative, so may the retry statistics' reward sums; such a state round trips."""
    pool = _pool(reward=-1.0)
    assert pool.retry_stats is not None and (pool.retry_stats.sums[1] < 0).any()
    resumed = PromptPool(ROWS, ["a", "b"], 1, CONFIG)
    resumed.load_state_dict(json.loads(json.dumps(pool.state_dict())))
    assert resumed.state_dict() == pool.state_dict()
    a, b = pool.select([8, 8]), resumed.select([8, 8])
    assert a.rows.tolist() == b.rows.tolist() and a.stand_ins(4)[1].tolist() == b.stand_ins(4)[1].tolist()
