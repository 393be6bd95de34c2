"""Per-prompt history and selective draws of the core's PromptPool: bookkeeping, the skip rule, resume, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtgrpo_core import PromptPool
from mtgrpo_core.prompts.history import (
    ALL_CORRECT,
    ALL_WRONG,
    INFORMATIVE,
    HistorySkip,
    PromptHistory,
    SelectionConfig,
    group_outcomes,
)

NAMES = ["a", "b"]
ROWS = [0, 0, 0, 0, 1, 1]  # task a: rows 0-3, task b: rows 4-5
STRICT = SelectionConfig(exploration=1e-6, min_retry=0.0, max_skips=2, filtering="strict")
GROUPS = {
    "correct": [1.0] * 8,
    "wrong": [0.0] * 8,
    "mixed": [1.0] * 4 + [0.1] * 4,
    "formatted": [0.1] * 8,
}


def _rewards(*kinds: str) -> np.ndarray:
    return np.array([GROUPS[k] for k in kinds])


def test_outcomes_follow_the_samplers_filters() -> None:
    r = _rewards("correct", "wrong", "mixed", "formatted")
    assert group_outcomes(r, "strict").tolist() == [ALL_CORRECT, ALL_WRONG, INFORMATIVE, ALL_WRONG]
    lenient = group_outcomes(np.vstack([r, [[0.1] * 4 + [0.0] * 4]]), "lenient")
    assert lenient.tolist() == [ALL_CORRECT, ALL_WRONG, INFORMATIVE, ALL_WRONG, INFORMATIVE]


def test_history_bookkeeping_on_a_hand_worked_sequence() -> None:
    # pass orders of seed 3: task a [3, 2, 1, 0], [2, 0, 1, 3], [1, 2, 3, 0], [0, 3, 2, 1]; task b [4, 5], [4, 5]
    pool = PromptPool(ROWS, NAMES, 3, STRICT)
    first = pool.select([4, 2])
    assert first.rows.tolist() == [3, 2, 1, 0, 4, 5] and first.skipped.size == 0  # no history: plain pass 0
    pool.report(first.rows, _rewards("correct", "correct", "wrong", "mixed", "mixed", "formatted"))
    h = pool.history
    assert h is not None
    assert h.outcome.tolist() == [INFORMATIVE, ALL_WRONG, ALL_CORRECT, ALL_CORRECT, INFORMATIVE, ALL_WRONG]
    np.testing.assert_allclose(h.reward, [0.55, 0.0, 1.0, 1.0, 0.55, 0.1], rtol=1e-6)
    # pass 1 of a: row 2 was all-correct (passed over), row 0 informative (handed out)
    second = pool.select([1, 0])
    assert (second.rows.tolist(), second.skipped.tolist()) == ([0], [2])
    assert h.skips.tolist() == [0, 0, 1, 0, 0, 0] and h.seen.tolist() == [1, 0, 0, 0, 0, 0]
    # the rest of pass 1 (rows 1, 3) and pass 2 (rows 1, 2) are passed over; that is one pass's worth of skips, so
    # row 3 is handed out (a retry) and then row 0
    third = pool.select([2, 0])
    assert (third.rows.tolist(), third.skipped.tolist(), third.retried.tolist()) == ([3, 0], [1, 3, 1, 2], [1, 0])
    assert h.skips.tolist() == [0, 2, 2, 0, 0, 0] and h.seen.tolist() == [2, 0, 0, 2, 0, 0]
    np.testing.assert_allclose(third.skipped_reward, [0.0, 1.0, 0.0, 1.0], rtol=1e-6)  # no retry seen yet: own
    assert third.skipped_accuracy.tolist() == [0.0, 1.0, 0.0, 1.0]
    # the retried all-correct row 3 comes back informative: the class estimate replaces the rows' own groups
    pool.report([3], _rewards("mixed"))
    assert h.outcome[3] == INFORMATIVE and pool.retry_stats is not None
    est = pool.retry_stats.estimate()
    assert est[:, 0, 0].tolist() == pytest.approx([0.55, 0.5, 1.0]) and np.isnan(est[:, 0, 1]).all()
    fourth = pool.select([2, 1])  # pass 3 of a: [0, 3, 2, 1]; rows 2 and 1 were passed over twice: forced
    assert (fourth.rows.tolist(), fourth.skipped.size) == ([0, 3, 4], 0)
    fifth = pool.select([1, 0])
    assert (fifth.rows.tolist(), fifth.retried.tolist()) == ([2], [True])


def test_stand_ins_carry_the_class_estimate_as_groups() -> None:
    pool = PromptPool([0, 0, 0], ["a"], 0, STRICT)
    pool.report(pool.select([3]).rows, _rewards("correct", "correct", "correct"))
    picked = pool.select([1])
    assert picked.skipped.size == 3 and picked.retried.tolist() == [True]  # one pass's worth, then a retry
    task, reward = picked.stand_ins(4)
    assert task.tolist() == [0] * 12 and reward.tolist() == [1.0] * 12
    pool.report(picked.rows, _rewards("mixed"))  # the retry flipped: accuracy 0.5, mean reward 0.55
    again = pool.select([1])
    _, reward = again.stand_ins(4)
    assert reward[:4].tolist() == pytest.approx([1.0, 1.0, 0.1, 0.1])


def test_a_pool_without_reports_draws_what_the_plain_pool_draws() -> None:
    plain, selective = PromptPool(ROWS, NAMES, 9), PromptPool(ROWS, NAMES, 9, SelectionConfig())
    for counts in ([3, 1], [0, 4], [7, 2]):
        np.testing.assert_array_equal(selective.draw(counts)[0], plain.draw(counts)[0])


def test_the_default_pool_is_unchanged() -> None:
    """Draws and state of the pool without selection, as the pool drew them before history existed."""
    pool = PromptPool([0, 1, 2, 0, 1, 2, 0, 0, 1], ["a", "b", "c"], 5)
    drawn = [pool.draw(c)[0].tolist() for c in ([2, 1, 1], [3, 2, 0], [4, 4, 4])]
    assert drawn == [[7, 3, 1, 5], [6, 0, 0, 8, 4], [7, 3, 6, 7, 4, 1, 8, 4, 2, 2, 5, 5]]
    assert pool.state_dict() == {
        "kind": "prompt_pool",
        "num_tasks": 3,
        "task_names": ["a", "b", "c"],
        "seed": 5,
        "cursor": [9, 7, 5],
    }
    assert pool.history is None


def _run(pool: PromptPool, steps: int, rng: np.random.Generator) -> list[list[int]]:
    """Draw and report `steps` times; rewards depend on the row only, so twins see the same reports."""
    out = []
    for _ in range(steps):
        counts = rng.integers(0, 4, size=pool.num_tasks)
        rows, _ = pool.draw(counts)
        kinds = ["correct", "wrong", "mixed"]
        pool.report(rows, _rewards(*[kinds[int(r) % 3] for r in rows]) if rows.size else np.zeros((0, 8)))
        out.append(rows.tolist())
    return out


def test_ranks_agree_and_a_resumed_pool_continues_identically() -> None:
    rows = [0, 1, 0, 1, 0, 1, 1, 0, 0, 1, 0]
    a, b = PromptPool(rows, NAMES, 4, STRICT), PromptPool(rows, NAMES, 4, STRICT)
    assert _run(a, 12, np.random.default_rng(0)) == _run(b, 12, np.random.default_rng(0))
    resumed = PromptPool(rows, NAMES, 4, STRICT)
    resumed.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert resumed.state_dict() == a.state_dict()
    assert _run(resumed, 12, np.random.default_rng(1)) == _run(a, 12, np.random.default_rng(1))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(0, 2), min_size=1, max_size=40),
    st.lists(st.lists(st.integers(0, 6), min_size=3, max_size=3), min_size=1, max_size=12),
    st.integers(1, 4),
)
def test_every_request_is_met_and_no_prompt_is_skipped_forever(
    tasks: list[int], requests: list[list[int]], max_skips: int
) -> None:
    row_tasks = np.array([*tasks, 0, 1, 2])
    config = SelectionConfig(exploration=0.01, min_retry=0.0, max_skips=max_skips, filtering="strict")
    pool = PromptPool(row_tasks, ["x", "y", "z"], 0, config)
    for counts in requests * 4:
        picked = pool.select(counts)
        assert np.bincount(picked.tasks, minlength=3).tolist() == counts  # skipping never leaves a task short
        assert (row_tasks[picked.rows] == picked.tasks).all()
        assert (row_tasks[picked.skipped] == picked.skipped_tasks).all()
        assert pool.history is not None and pool.history.skips.max() <= max_skips  # never more in a row
        pool.report(picked.rows, np.zeros((picked.rows.size, 8)))  # every group all-wrong: all are candidates
    # every row is met once a pass: a draw that walks max_skips + 2 passes' worth holds max_skips + 1 whole passes,
    # so every row is handed out in it
    final = pool.select((max_skips + 2) * np.bincount(row_tasks, minlength=3))
    assert set(final.rows.tolist()) == set(range(row_tasks.size))


def test_with_the_default_floor_every_prompt_comes_back() -> None:
    pool = PromptPool(np.zeros(100, dtype=np.int64), ["a"], 2, SelectionConfig(exploration=1e-4, filtering="strict"))
    first = pool.select([100])
    candidates = first.rows[:20]  # all-wrong; the other 80 informative, so a draw never runs out of prompts
    pool.report(first.rows, np.where(np.isin(first.rows, candidates)[:, None], 0.0, np.array(GROUPS["mixed"])))
    retried = np.concatenate([(p := pool.select([400])).rows[p.retried] for _ in range(250)])
    assert set(retried.tolist()) == set(candidates.tolist())  # each retried at some turn (min_retry 0.01 a turn)


def test_retries_hold_the_target_exploration_share() -> None:
    n = 4000
    config = SelectionConfig(exploration=0.2, min_retry=0.0, max_skips=None, filtering="strict")
    pool = PromptPool(np.zeros(n, dtype=np.int64), ["a"], 1, config)
    first = pool.select([n])
    uninformative = first.rows % 4 != 0  # three quarters all-wrong, one quarter informative
    pool.report(first.rows, np.where(uninformative[:, None], 0.0, np.array(GROUPS["mixed"])[None, :]))
    retried = handed = 0
    for _ in range(40):
        picked = pool.select([50])
        retried, handed = retried + int(picked.retried.sum()), handed + picked.rows.size
    assert isinstance(pool._rule, HistorySkip) and pool.history is not None
    assert pool._rule.retry_probability(0, pool.history) == pytest.approx(0.2 * 0.25 / (0.8 * 0.75))
    assert retried / handed == pytest.approx(0.2, abs=0.04)


def test_memory_of_100000_prompts() -> None:
    pool = PromptPool(np.arange(100_000) % 3, ["a", "b", "c"], 0, SelectionConfig())
    assert pool.history is not None and pool.history.nbytes == 1_000_000  # 10 bytes a row
    row_index = sum(r.nbytes for r in pool._rows)
    assert pool.history.nbytes + row_index + pool._row_task.nbytes <= 2_000_000  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("exploration", 0.0, r"exploration must be in \(0.0, 1.0\), got 0.0"),
        ("exploration", 1.0, r"exploration must be in \(0.0, 1.0\), got 1.0"),
        ("min_retry", -0.1, r"min_retry must be in \[0.0, 1.0\], got -0.1"),
        ("max_skips", 0, r"max_skips must be >= 1, got 0"),
        ("max_skips", 256, r"max_skips must be <= 255 \(or None: never forced\), got 256"),
        ("filtering", "none", r"filtering must be one of \['lenient', 'strict'\], got 'none'"),
    ],
)
def test_settings_out_of_range_are_refused_by_name(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SelectionConfig(**{field: value})  # type: ignore[arg-type]


def test_reports_of_rows_never_handed_out_are_refused() -> None:
    pool = PromptPool(ROWS, NAMES, 0, STRICT)
    rows = pool.select([1, 0]).rows
    with pytest.raises(ValueError, match=r"rows holds 4, which this pool never handed out"):
        pool.report([int(rows[0]), 4], _rewards("correct", "wrong"))
    with pytest.raises(ValueError, match=r"rows holds 6, which is not a row of this dataset \(rows 0 to 5\)"):
        pool.report([6], _rewards("correct"))
    with pytest.raises(ValueError, match="rows and rewards must have the same length, got 1 and 2"):
        pool.report(rows, _rewards("correct", "wrong"))
    assert pool.history is not None and (pool.history.outcome == 0).all()  # refused reports changed nothing
    with pytest.raises(ValueError, match="this pool keeps no history"):
        PromptPool(ROWS, NAMES).report(rows, _rewards("correct"))
    with pytest.raises(ValueError, match="skip_rule needs selection"):
        PromptPool(ROWS, NAMES, 0, None, HistorySkip(STRICT, []))


def test_a_state_of_another_dataset_or_setting_is_refused_whole() -> None:
    pool = PromptPool(ROWS, NAMES, 0, STRICT)
    _run(pool, 3, np.random.default_rng(0))
    state = pool.state_dict()
    cases = [
        (PromptPool([*ROWS, 1], NAMES, 0, STRICT), state, r"state\['num_rows'\] is 6, expected 7"),
        (PromptPool([0, 0, 0, 1, 1, 0], NAMES, 0, STRICT), state, r"state\['rows_digest'\] is .* another dataset"),
        (PromptPool(ROWS, NAMES, 0, SelectionConfig()), state, r"state\['selection'\] is"),
        (PromptPool(ROWS, NAMES), state, "state holds a prompt history, but this pool keeps none"),
        (PromptPool(ROWS, NAMES, 0, STRICT), PromptPool(ROWS, NAMES).state_dict(), "state holds no prompt history"),
    ]
    for target, bad, message in cases:
        with pytest.raises(ValueError, match=message):
            target.load_state_dict(bad)
    history = state["history"]
    broken = [
        ({**history, "outcome": history["outcome"][:-1]}, r"\['outcome'\] must hold 6 ints"),
        ({**history, "seen": [99] * 6}, r"\['seen'\] must hold 6 ints \(one per row\) in \[-1, "),
        ({**history, "reward": [None] * 6}, r"\['reward'\] must be finite where an outcome is recorded"),
    ]
    target = PromptPool(ROWS, NAMES, 0, STRICT)
    before = target.state_dict()
    for value, message in broken:
        with pytest.raises(ValueError, match=message):
            target.load_state_dict({**state, "history": value})
    with pytest.raises(ValueError, match=r"retry_stats'\] must be 4 x 2 x 2 sums"):
        target.load_state_dict({**state, "retry_stats": [[[0.0]]]})
    assert target.state_dict() == before  # nothing half-applied


def test_history_rows_are_checked() -> None:
    with pytest.raises(ValueError, match="num_rows must be >= 1, got 0"):
        PromptHistory(0)
