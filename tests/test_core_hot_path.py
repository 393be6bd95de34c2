"""Validation off the hot path (issue 19, item 8): the paths that stopped re-checking what the core produced decide
and refuse exactly as the code they replaced, kept here verbatim as the reference; seeded fuzz loops."""

from __future__ import annotations

from functools import partial

import numpy as np

from mtgrpo_core import StepFacts, checks, step_signals
from mtgrpo_core.protocols import TaskSignals
from mtgrpo_core.sampling.batch import KeyLedger, common_key_dtype
from mtgrpo_core.sampling.carry_pool import CarryPool
from mtgrpo_core.signals import (
    mean_abs_advantage_per_task,
    minibatch_improvement,
    task_accuracy,
    task_improvement,
    task_rewards,
)


def _outcome(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except (TypeError, ValueError) as err:
        return (type(err), str(err))


def _reference_step_signals(facts, num_tasks, improvement_reduce="mean", correct_reward=1.0):  # type: ignore[no-untyped-def]
    """step_signals before it checked each array once (verbatim): the public per-signal functions in turn."""
    if not isinstance(facts, StepFacts):
        raise TypeError(f"facts must be a StepFacts, got {type(facts).__name__}")
    k = checks.positive_int("num_tasks", num_tasks)
    if facts.rollout_task is None or facts.rollout_reward is None:
        raise ValueError(
            "facts.rollout_task and facts.rollout_reward are needed (every rollout generated this step); "
            "Controller.end_step fills them in from the batch conversation when both are None"
        )
    reward, _ = task_rewards(facts.rollout_reward, facts.rollout_task, k)
    accuracy = task_accuracy(facts.rollout_reward, facts.rollout_task, k, correct_reward)
    mean_abs = None
    if facts.sample_advantage is not None:
        if facts.sample_task is None:
            raise ValueError("facts.sample_task is None but facts.sample_advantage is given: pass both")
        mean_abs = mean_abs_advantage_per_task(facts.sample_advantage, facts.sample_task, k)
    improvement = steps = None
    measured = (facts.surrogate_before is not None, facts.surrogate_after is not None)
    if any(measured):
        if not all(measured):
            raise ValueError("facts.surrogate_before and facts.surrogate_after must be given together")
        task = facts.sample_task if facts.surrogate_task is None else facts.surrogate_task
        if task is None:
            raise ValueError("facts.surrogate_task (or facts.sample_task) is needed with the surrogate values")
        assert facts.surrogate_before is not None and facts.surrogate_after is not None
        improvement = task_improvement(facts.surrogate_before, facts.surrogate_after, task, k, improvement_reduce)
        if facts.surrogate_minibatch is not None and np.size(facts.surrogate_minibatch) == 0:
            steps = np.zeros((1, k))  # nothing trained: one update with I_k = 0, as `update` would take
        elif facts.surrogate_minibatch is not None:
            steps = minibatch_improvement(
                facts.surrogate_before, facts.surrogate_after, task, facts.surrogate_minibatch, k, improvement_reduce
            )
    elif facts.surrogate_minibatch is not None:
        raise ValueError("facts.surrogate_minibatch is given without facts.surrogate_before and surrogate_after")
    return TaskSignals.build(
        reward=reward,
        present=~np.isnan(reward),
        improvement=improvement,
        mean_abs_advantage=mean_abs,
        accuracy=accuracy,
        improvement_steps=steps,
    )


def _same(got, want) -> bool:  # type: ignore[no-untyped-def]
    if isinstance(want, tuple) or isinstance(got, tuple):
        return got == want
    fields = ("present", "reward", "improvement", "mean_abs_advantage", "accuracy", "improvement_steps")
    same = [
        np.array_equal(getattr(got, f), getattr(want, f), equal_nan=True)
        for f in fields
        if getattr(want, f) is not None
    ]
    return all(same) and got.untrained == want.untrained


def test_step_signals_decides_and_refuses_as_the_per_signal_functions() -> None:
    rng = np.random.default_rng([19, 13])
    for _ in range(1500):
        k = int(rng.choice([1, 3, 9, 50]))
        n, m = int(rng.integers(1, 200)), int(rng.integers(0, 200))
        arrays = {
            "rollout_task": rng.integers(0, k, n),
            "rollout_reward": rng.choice([0.0, 0.1, 1.0], n),
            "sample_task": rng.integers(0, k, m),
            "sample_advantage": rng.normal(size=m),
            "surrogate_before": rng.normal(size=m) * float(rng.choice([1.0, 1e300])),
        }
        with np.errstate(over="ignore"):
            arrays["surrogate_after"] = arrays["surrogate_before"] + rng.normal(size=m) * float(
                rng.choice([1e-3, 1e307])
            )
        if rng.random() < 0.1:  # finite before and after whose difference overflows
            arrays["surrogate_before"] = np.where(rng.random(m) < 0.5, -1.5e308, arrays["surrogate_before"])
            arrays["surrogate_after"] = -arrays["surrogate_before"]
        if rng.random() < 0.2:
            arrays["surrogate_task"] = rng.integers(0, k, m)
        if rng.random() < 0.1:
            arrays["surrogate_minibatch"] = rng.integers(0, 3, m)
        for _ in range(int(rng.integers(0, 3))):  # corruptions: a missing array, a bad value, a wrong length
            name = str(rng.choice(sorted(arrays)))
            kind = rng.integers(4)
            if kind == 0 and name not in ("rollout_task", "rollout_reward"):
                arrays[name] = None
            elif kind == 1 and arrays[name] is not None and np.size(arrays[name]):
                bad = np.asarray(arrays[name], dtype=np.float64).copy()
                bad[int(rng.integers(bad.size))] = float(rng.choice([np.nan, np.inf, k, -1, 0.5]))
                arrays[name] = bad
            elif kind == 2 and arrays[name] is not None:
                arrays[name] = np.asarray(arrays[name])[:-1]
            elif arrays[name] is not None:
                arrays[name] = np.asarray(arrays[name]).tolist()
        facts = StepFacts(**arrays)
        reduce = str(rng.choice(["mean", "sum"])) if rng.random() < 0.95 else "max"
        correct = float(rng.choice([1.0, 0.1])) if rng.random() < 0.95 else float("nan")
        with np.errstate(over="ignore", invalid="ignore"):
            want = _outcome(partial(_reference_step_signals, facts, k, reduce, correct))
            got = _outcome(partial(step_signals, facts, k, improvement_reduce=reduce, correct_reward=correct))
        assert _same(got, want), (got, want)


def test_batch_keys_joined_once_follow_every_report() -> None:
    rng = np.random.default_rng([19, 14])
    for _ in range(300):
        ledger, chunks = KeyLedger(), []
        for _ in range(int(rng.integers(1, 6))):
            dtype = rng.choice([np.int64, np.int16, np.uint16, np.uint64])
            keys = ledger.add(
                "keys", np.unique(rng.integers(0, 100, int(rng.integers(0, 6)))).astype(dtype) + 100 * len(chunks)
            )
            ledger.commit(keys)
            chunks.append(keys)
            want = np.concatenate([c.astype(ledger.dtype) for c in chunks if c.size] or [np.zeros(0, np.int64)])
            got = ledger.take(np.arange(want.size))
            assert got.dtype == want.dtype and np.array_equal(got, want)


def test_retired_keys_are_refused_as_with_isin() -> None:
    rng = np.random.default_rng([19, 15])
    dtypes = [np.int64, np.int32, np.int8, np.uint8, np.uint64]
    for _ in range(3000):
        retired, keys = (
            rng.integers(-40 if d != np.uint8 and d != np.uint64 else 0, 120, int(rng.integers(0, 12))).astype(d)
            for d in (dtypes[int(rng.integers(5))], dtypes[int(rng.integers(5))])
        )
        if rng.random() < 0.2:  # keys >= 2**63: with a negative key no common dtype (the Python-int fallback)
            keys = np.array([2**63 + int(x) for x in rng.integers(0, 9, 4)], dtype=np.uint64)
        pool = CarryPool(2, 1)
        pool.store(np.zeros(0, np.int64), np.zeros(0, np.int64), None, np.zeros(0, np.int64), retired)
        try:
            dtype = common_key_dtype("keys", keys, retired)
            again = keys[np.isin(keys.astype(dtype), retired.astype(dtype))].tolist()
        except ValueError:
            again = [x for x in keys.tolist() if x in set(retired.tolist())]
        got = _outcome(partial(pool.refuse_retired, keys))
        if again and retired.size:
            assert isinstance(got, tuple) and got[1].startswith(f"keys {again[:5]} were trained or released"), got
        else:
            assert got is None, got
