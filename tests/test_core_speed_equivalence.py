"""Functions rewritten for speed (issue 19, item 8) make exactly the decisions of the versions they replaced.

Each `_reference_*` below is a verbatim copy of the code before the rewrite, kept here only as the reference; the
fuzz loops (seeded) require identical outputs over thousands of random inputs, extreme posteriors included.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.special import betaln

from mtgrpo_core import Controller, StepFacts, checks, signals
from mtgrpo_core.protocols import TaskSignals
from mtgrpo_core.reference.scoring import ReferenceIWURule
from mtgrpo_core.sampling import joint_planner
from mtgrpo_core.sampling.acceptance import fill_cdf
from mtgrpo_core.sampling.batch import KeyLedger, as_key_array, common_key_dtype
from mtgrpo_core.sampling.joint_planner import joint_requests
from mtgrpo_core.weighting import functions as wf
from mtgrpo_core.weighting.rules import IWURule

# --- references: the code as it was before the rewrite ---------------------------------------------------------

_LOG_NEVER = -1e6


def _reference_fill_cdf(
    deficit: NDArray[np.int64], alpha: NDArray[np.float64], beta: NDArray[np.float64], width: int
) -> NDArray[np.float64]:
    d = deficit.astype(np.float64)[:, None]
    a = alpha[:, None]
    c = beta[:, None]
    f = np.arange(max(width - 1, 0), dtype=np.float64)[None, :]
    log_ratio = np.log((d + f) * (c + f) / ((f + 1.0) * (a + d + c + f)))
    log_pmf0 = betaln(a + d, c) - betaln(a, c)
    log_pmf = log_pmf0 + np.concatenate((np.zeros_like(d), np.cumsum(log_ratio, axis=1)), axis=1)
    return np.asarray(np.cumsum(np.exp(log_pmf), axis=1))


def _reference_joint_requests(
    deficit: NDArray[np.int64],
    alpha: NDArray[np.float64],
    beta: NDArray[np.float64],
    confidence: float,
    max_per_task: NDArray[np.int64],
) -> NDArray[np.int64]:
    r = np.zeros_like(deficit)
    need = np.flatnonzero(deficit > 0)
    if need.size == 0:
        return r
    d, cap = deficit[need], np.maximum(max_per_task[need], deficit[need])
    span = cap - d
    width = int(span.max()) + 1
    within = np.arange(width)[None, :] <= span[:, None]
    with np.errstate(divide="ignore"):
        logp = np.maximum(np.log(np.minimum(_reference_fill_cdf(d, alpha[need], beta[need], width), 1.0)), _LOG_NEVER)
    at_cap = logp[np.arange(need.size), span]
    goal = math.log(confidence)
    likeliest = np.argsort(-at_cap, kind="stable")
    hopeless = np.ones(need.size, dtype=np.bool_)
    hopeless[likeliest[np.cumsum(at_cap[likeliest]) >= goal]] = False
    best = np.where(hopeless, span, 0).astype(np.int64)
    target = goal - float(logp[~hopeless, 0].sum())
    if target > 0:
        gains = np.minimum.accumulate(np.diff(logp, axis=1), axis=1)
        gains[~within[:, 1:] | hopeless[:, None]] = -np.inf
        order = np.argsort(-gains.ravel(), kind="stable")
        usable = int(np.isfinite(gains).sum())
        taken = np.cumsum(gains.ravel()[order[:usable]])
        count = min(int(np.searchsorted(taken, target)) + 1, usable)
        extra = np.bincount(order[:count] // (width - 1), minlength=need.size)
        best = best + extra.astype(np.int64)
    r[need] = d + best
    return r


# --- random planner inputs ------------------------------------------------------------------------------------


def _posterior(rng: np.random.Generator, k: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Beta posteriors as the estimators make them, and extreme ones."""
    kind = rng.integers(5)
    if kind == 0:  # BetaFilterRate after a few steps: prior 1 + discounted counts
        return 1.0 + rng.uniform(0, 200, k) * rng.random(k), 1.0 + rng.uniform(0, 200, k) * rng.random(k)
    if kind == 1:  # posterior_of an EMA estimate: a confident Beta (accept 1 gives beta 1e-6)
        accept = np.clip(rng.choice([rng.uniform(0, 1), 1.0, 1e-6]) * rng.uniform(0.0, 1.0, k) ** 0.2, 1e-6, 1.0)
        accept[rng.random(k) < 0.2] = 1.0
        return 1e6 * accept, 1e6 * (1.0 - accept) + 1e-6
    if kind == 2:  # anything from tiny to huge, log-uniform
        return 10.0 ** rng.uniform(-6, 9, k), 10.0 ** rng.uniform(-6, 9, k)
    if kind == 3:  # hardly ever accepts: the fill probability underflows over much of the range
        return 10.0 ** rng.uniform(-6, 0, k), 10.0 ** rng.uniform(3, 9, k)
    return 10.0 ** rng.uniform(-1, 4, k), 10.0 ** rng.uniform(-1, 4, k)


def _case(
    rng: np.random.Generator,
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64], float, NDArray[np.int64]]:
    k = int(rng.choice([1, 2, 3, 9, 20, 60, 300]))
    top = int(rng.choice([3, 10, 30] if k == 300 else [3, 30, 120, 400]))
    deficit = rng.integers(0, top + 1, k).astype(np.int64)
    deficit[rng.random(k) < 0.2] = 0
    alpha, beta = _posterior(rng, k)
    inflation = float(rng.choice([1.0, 1.5, 5.0, 25.0, rng.uniform(1.0, 30.0)]))
    cap = np.ceil(deficit * inflation).astype(np.int64)
    if rng.random() < 0.2:  # caps below the deficit (the planner lifts them) and uneven caps
        cap = (cap * rng.uniform(0.0, 1.5, k)).astype(np.int64)
    confidence = float(rng.choice([0.5, 0.9, 0.99, 1 - 1e-9, 1e-6, rng.uniform(1e-3, 1.0 - 1e-12)]))
    return deficit, alpha, beta, confidence, cap


# --- the comparisons ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_joint_requests_decides_exactly_as_before(seed: int) -> None:
    rng = np.random.default_rng([19, 8, seed])
    for _ in range(750):
        deficit, alpha, beta, confidence, cap = _case(rng)
        want = _reference_joint_requests(deficit, alpha, beta, confidence, cap)
        got = joint_requests(deficit, alpha, beta, confidence, cap)
        assert got.dtype == want.dtype and np.array_equal(got, want), (deficit, alpha, beta, confidence, cap)


def test_joint_requests_decides_exactly_as_before_on_a_lean_default_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner's inputs along simulated runs of the lean default (K = 9 and K = 60)."""
    calls: list[tuple] = []

    def recording(*args):  # type: ignore[no-untyped-def]
        calls.append(tuple(np.copy(a) if isinstance(a, np.ndarray) else a for a in args))
        return joint_requests(*args)

    monkeypatch.setattr(joint_planner.JointPlanner, "requests", staticmethod(recording))
    for k, b in ((9, 256), (60, 512)):
        ctrl = Controller.from_method("mt-grpo:0.2", k, b, 8, 0)
        rng = np.random.default_rng(k)
        p = rng.uniform(0.02, 0.98, size=k)
        key = 0
        for _ in range(25):
            builder = ctrl.begin_step()
            while (req := builder.next_request()) is not None:
                tasks = rng.permutation(np.repeat(np.arange(k), req.counts))
                rewards = (rng.random((tasks.size, 8)) < p[tasks, None]).astype(float)
                builder.report_arrays(tasks, np.arange(key, key + tasks.size), rewards=rewards)
                key += tasks.size
            batch = builder.finish()
            st = np.repeat(batch.tasks, 8)
            before = rng.normal(size=st.size)
            ctrl.end_step(
                StepFacts(
                    sample_task=st,
                    sample_advantage=rng.normal(size=st.size),
                    surrogate_before=before,
                    surrogate_after=before + 0.01,
                )
            )
    monkeypatch.undo()
    assert len(calls) > 50
    for args in calls:
        assert np.array_equal(joint_requests(*args), _reference_joint_requests(*args))


@pytest.mark.parametrize("seed", range(2))
def test_fill_cdf_is_unchanged(seed: int) -> None:
    rng = np.random.default_rng([19, 9, seed])
    for _ in range(300):
        deficit, alpha, beta, _, _ = _case(rng)
        need = deficit > 0
        width = int(rng.integers(1, 400))
        got = fill_cdf(deficit[need], alpha[need], beta[need], width)
        want = _reference_fill_cdf(deficit[need], alpha[need], beta[need], width)
        assert np.array_equal(got, want, equal_nan=True)


# --- the IWU rule's steps (the rule's own state no longer re-checked at every call) ------------------------------


def _reference_iwu_update_minibatches(rule: IWURule, signals: TaskSignals, improvements: np.ndarray) -> np.ndarray:
    """IWURule.update_minibatches as it was: every step through the checked public functions."""
    s = signals
    rows = np.asarray(improvements, dtype=np.float64)
    reward, scored, average = rule.reward_term.evaluate(s)
    checks.finite_array("improvements at present tasks", rows[:, s.present])
    if not s.present.any():
        return rule.weights
    logits, adam = rule._logits, rule._adam
    for improvement in np.where(s.present, rows, 0.0):
        if rule.improvement_clip is not None:
            improvement = np.clip(improvement, -rule.improvement_clip, rule.improvement_clip)
        score = wf.iwu_score(improvement, reward, rule.lam)
        g = _ref_finite("gradient", wf.iwu_gradient(wf.stable_softmax(logits), score, scored))
        if rule.optimizer == "sgd":
            logits = wf.regularised_step(logits, g, rule.lr, rule.lr * rule.weight_decay)
        else:
            decoupled = not rule.coupled_decay
            logits, adam = wf.adamw_step(logits, g, adam, rule.lr, rule.weight_decay, decoupled=decoupled)
        logits = _ref_finite("logits", logits)
    rule._logits, rule._adam = logits, adam
    rule.reward_term.commit(average)
    rule._z = wf.stable_softmax(rule._logits)
    return rule.weights


def _ref_finite(name: str, arr: np.ndarray) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise ValueError(
            f"this step would make the {name} non-finite: the signals are too large for float64 "
            "(keep |reward|, |improvement| below about 1e307); the rule was left unchanged"
        )
    return arr


def _outcome(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except (TypeError, ValueError) as err:
        return (type(err), str(err))


@pytest.mark.parametrize("seed", range(3))
def test_iwu_rule_steps_exactly_as_before(seed: int) -> None:
    rng = np.random.default_rng([19, 10, seed])
    for _ in range(150):
        k = int(rng.choice([1, 3, 9, 40]))
        options = {
            "lam": float(rng.choice([0.0, 0.2, 3.0])),
            "lr": float(rng.choice([0.025, 1.0, 40.0])),
            "optimizer": str(rng.choice(["adamw", "sgd"])),
            "weight_decay": float(rng.choice([0.0, 1e-5, 0.01])),
            "improvement_clip": None if rng.random() < 0.3 else float(rng.choice([0.2, 5.0])),
            "coupled_decay": bool(rng.random() < 0.3),
            "reward_signal": str(rng.choice(["reward", "accuracy_ema"])),
        }
        options["score_absent"] = options["reward_signal"] == "accuracy_ema" and bool(rng.random() < 0.5)
        new, old = ReferenceIWURule(k, **options), ReferenceIWURule(k, **options)
        scale = float(rng.choice([1.0, 1e3, 1e150, 1e306, 5e307]))
        for _ in range(6):
            present = rng.random(k) < 0.8
            accuracy = np.where(present, rng.random(k), np.nan)
            with np.errstate(over="ignore"):
                reward = np.where(present, np.clip(rng.normal(size=k) * scale, -1.7e308, 1.7e308), np.nan)
                rows = np.clip(rng.normal(size=(int(rng.integers(1, 4)), k)) * scale, -1.7e308, 1.7e308)
            rows[:, ~present] = np.nan
            signals = TaskSignals.build(reward=reward, present=present, improvement=rows[0], accuracy=accuracy)
            batch = rows[:1] if rng.random() < 0.5 else rows
            with np.errstate(over="ignore", invalid="ignore"):
                got = _outcome(
                    partial(new.update, signals)
                    if batch.shape[0] == 1
                    else partial(new.update_minibatches, signals, batch)
                )
                want = _outcome(partial(_reference_iwu_update_minibatches, old, signals, batch))
            if isinstance(want, tuple):
                assert got == want
            else:
                assert np.array_equal(got, want)
            assert new.state_dict() == old.state_dict()


# --- per-task signals (derived values no longer re-checked) -------------------------------------------------------


def _reference_per_task(name, values, task_ids, num_tasks):  # type: ignore[no-untyped-def]
    k = checks.positive_int("num_tasks", num_tasks)
    x = checks.finite_array(name, values, ndim=1)
    ids = checks.task_ids("task_ids", task_ids, k)
    checks.same_length(name, x, "task_ids", ids)
    counts = np.bincount(ids, minlength=k).astype(np.int64)
    sums = np.bincount(ids, weights=x, minlength=k)
    means = np.full(k, np.nan)
    np.divide(sums, counts, out=means, where=counts > 0)
    return means, counts


def _reference_task_accuracy(rewards, task_ids, num_tasks, correct_reward=1.0):  # type: ignore[no-untyped-def]
    target = checks.real_in_range("correct_reward", correct_reward)
    r = checks.finite_array("rewards", rewards, ndim=1)
    return _reference_per_task("rewards", r == target, task_ids, num_tasks)[0]


def _reference_task_improvement(before, after, task_ids, num_tasks, reduce="mean"):  # type: ignore[no-untyped-def]
    b = checks.finite_array("before", before, ndim=1)
    a = checks.finite_array("after", after, ndim=1)
    checks.same_length("before", b, "after", a)
    checks.choice("reduce", reduce, ("mean", "sum"))
    improvement, counts = _reference_per_task("after - before", a - b, task_ids, num_tasks)
    if reduce == "sum":
        improvement = improvement * counts
    return improvement


def _reference_mean_abs(advantages, task_ids, num_tasks):  # type: ignore[no-untyped-def]
    a = checks.finite_array("advantages", advantages, ndim=1)
    return _reference_per_task("|advantages|", np.abs(a), task_ids, num_tasks)[0]


def _same(got, want) -> bool:  # type: ignore[no-untyped-def]
    if isinstance(want, tuple) and len(want) == 2 and isinstance(want[0], type):
        return got == want
    if isinstance(want, tuple):
        return all(_same(g, w) for g, w in zip(got, want, strict=True))
    return bool(np.array_equal(got, want, equal_nan=True))


@pytest.mark.parametrize("seed", range(2))
def test_per_task_signals_and_their_refusals_are_exactly_as_before(seed: int) -> None:
    rng = np.random.default_rng([19, 11, seed])
    for _ in range(1500):
        k = int(rng.choice([1, 3, 9, 50]))
        n = int(rng.integers(0, 300))
        ids: object = rng.integers(0, k, n)
        values = rng.normal(size=n) * float(rng.choice([1.0, 1e300]))
        with np.errstate(over="ignore"):
            other = values + rng.normal(size=n) * float(rng.choice([1e-3, 1e307]))
        bad = rng.integers(12)
        if bad == 0 and n:  # a task id out of range
            ids = np.where(rng.random(n) < 0.1, k, ids)
        elif bad == 1 and n:
            values[int(rng.integers(n))] = float(rng.choice([np.nan, np.inf, -np.inf]))
        elif bad == 2:
            other = other[: max(n - 1, 0)]
        elif bad == 3:
            ids = np.asarray(ids)[: max(n - 1, 0)]
        elif bad == 4:
            ids = np.asarray(ids, dtype=np.float64) + float(rng.choice([0.0, 0.5]))
        elif bad == 5:
            ids = list(np.asarray(ids).tolist())
        elif bad == 6:
            values = (values > 0).tolist()
        elif bad == 7 and n:  # finite before and after whose difference overflows
            values = np.where(rng.random(n) < 0.5, -1.5e308, values)
            other = -np.asarray(values)
        num = k if rng.random() < 0.95 else int(rng.choice([0, -1]))
        reduce = str(rng.choice(["mean", "sum"])) if rng.random() < 0.95 else "max"
        correct = float(rng.choice([1.0, 0.0])) if rng.random() < 0.95 else float("nan")
        with np.errstate(over="ignore", invalid="ignore"):
            for new, old, args in (
                (signals.task_rewards, _reference_per_task, (values, ids, num)),
                (signals.task_accuracy, _reference_task_accuracy, (values, ids, num, correct)),
                (signals.mean_abs_advantage_per_task, _reference_mean_abs, (values, ids, num)),
                (signals.task_improvement, _reference_task_improvement, (values, other, ids, num, reduce)),
            ):
                want = _outcome(partial(old, "rewards", *args) if old is _reference_per_task else partial(old, *args))
                got = _outcome(partial(new, *args))
                assert _same(got, want), (new.__name__, got, want)


# --- report keys (duplicates found by sorting, not np.unique) -----------------------------------------------------


class _ReferenceKeyLedger(KeyLedger):
    def add(self, name: str, keys: object) -> np.ndarray:
        arr = as_key_array(name, keys)
        if arr.size == 0 or self._sorted is None:
            fresh = arr
            dtype = arr.dtype
            seen = np.zeros(0, dtype=dtype)
        else:
            dtype = common_key_dtype(name, self._sorted, arr)
            fresh = arr.astype(dtype)
            seen = self._sorted.astype(dtype)
        uniq = np.unique(fresh)
        pos = np.searchsorted(seen, uniq)
        clash = pos < seen.shape[0]
        clash[clash] = seen[pos[clash]] == uniq[clash]
        if uniq.shape[0] != fresh.shape[0] or clash.any():
            self._raise_duplicate(name, fresh.tolist(), set(seen.tolist()))
        return fresh


@pytest.mark.parametrize("seed", range(2))
def test_report_keys_accept_and_refuse_exactly_as_before(seed: int) -> None:
    rng = np.random.default_rng([19, 12, seed])
    dtypes = [np.int64, np.int32, np.uint8, np.int8, np.uint64]
    for _ in range(400):
        new, old = KeyLedger(), _ReferenceKeyLedger()
        span = int(rng.choice([5, 50, 10**6]))
        for _ in range(int(rng.integers(1, 8))):
            n = int(rng.integers(0, 40))
            dtype = dtypes[int(rng.integers(len(dtypes)))]
            low = 0 if np.issubdtype(dtype, np.unsignedinteger) else -span // 4
            high = min(span, int(np.iinfo(dtype).max))
            keys: object = rng.integers(max(low, int(np.iinfo(dtype).min)), high, n).astype(dtype)
            if rng.random() < 0.2:
                keys = list(np.asarray(keys).tolist())
            got = _outcome(partial(new.add, "keys", keys))
            want = _outcome(partial(old.add, "keys", keys))
            assert _same(got, want)
            if not isinstance(want, tuple):
                new.commit(got)
                old.commit(want)
        assert new.dtype == old.dtype
        assert np.array_equal(
            new.take(np.arange(sum(c.size for c in old._chunks))), old.take(np.arange(sum(c.size for c in old._chunks)))
        )
