"""Property tests of what ships (issue 19, item 9): hypothesis drives `Controller.from_method("mt-grpo:0.2")` with
the methods' lean default (`methods.LEAN`: joint planner at q 0.9, carry-over 1, M_acc 25, M_os 6, a generation
cap of 3 B prompts per step, the no-signal guard on), with and without selective rollouts on a `PromptPool`,
through several steps of the real conversation (begin_step, next_request / report_arrays, finish,
end_step(StepFacts)). A seeded simulated trainer keeps the data of kept groups as the README asks; the test keeps
its own books of every key and checks each step's batch against them (see `_Books`). K, B, N, the weights (a lam
and a few warm-up steps move them), the per-task informative rates (0 included: a task that never gives signal,
which the guard must take out) and the pool are drawn.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from mtgrpo_core import Controller, PromptPool, StepFacts
from mtgrpo_core.methods import LEAN
from mtgrpo_core.prompts.history import SelectionConfig
from mtgrpo_core.prompts.pool import Selection
from mtgrpo_core.sampling.sampler import Batch, BatchBuilder

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
METHOD = "mt-grpo:0.2"
WINDOW = math.ceil(math.log(1e-3) / math.log(1 - 0.02))  # the guard's window at its defaults (docs: 342 groups)
RATES = [0.0, 0.05, 0.3, 0.7, 1.0]  # informative share of a task's groups; 0: a task that never gives signal


@dataclass(frozen=True)
class Case:
    k: int
    batch_size: int
    group_size: int
    lam: float
    logits: tuple[float, ...]  # the IWU rule's starting logits (z = softmax): the first weights, drawn
    rates: tuple[float, ...]
    seed: int
    steps: int
    snapshot: int  # the JSON round trip is taken before this step
    rows_per_task: tuple[int, ...]
    max_skips: int | None
    phase: str  # where in the step the round trip is taken: "between" steps, or inside the "conversation"
    cut: int  # "conversation": after this many rounds were reported (or just before finish when fewer)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    k = draw(st.sampled_from([1, 2, 3, 4, 5, 9]))
    rates = draw(st.lists(st.sampled_from(RATES), min_size=k, max_size=k))
    steps = draw(st.integers(2, 5))
    return Case(
        k=k,
        batch_size=draw(st.integers(-(-k // 3), 64)),  # the default cap, 3 B prompts, needs one per task
        group_size=draw(st.integers(2, 6)),
        lam=draw(st.sampled_from([0.0, 0.2, 1.0])),
        logits=tuple(draw(st.lists(st.floats(-4.0, 4.0), min_size=k, max_size=k))),
        rates=tuple(rates),
        seed=draw(st.integers(0, 2**16)),
        steps=steps,
        snapshot=draw(st.integers(1, steps - 1)),
        rows_per_task=tuple(draw(st.lists(st.integers(3, 60), min_size=k, max_size=k))),
        max_skips=draw(st.sampled_from([None, 1, 3])),
        phase=draw(st.sampled_from(["between", "conversation"])),
        cut=draw(st.integers(0, 2)),
    )


def _controller(case: Case) -> Controller:
    ctrl = Controller.from_method(
        f"mt-grpo:{case.lam}", num_tasks=case.k, batch_size=case.batch_size, group_size=case.group_size, seed=case.seed
    )
    config = ctrl.sampler.config
    for name, value in LEAN.items():  # what ships: the method's own sampler settings, nothing overridden
        assert getattr(config, name) == value, (name, getattr(config, name), value)
    assert ctrl.sampler.guard is not None and ctrl.sampler.carry is not None
    return ctrl


def _started(case: Case) -> Controller:
    """The controller with the drawn starting weights, set through its public state (as a resumed run's)."""
    ctrl = _controller(case)
    state = ctrl.state_dict()
    ctrl.load_state_dict({**state, "rule": {**state["rule"], "logits": list(case.logits)}})
    z = np.exp(np.asarray(case.logits) - max(case.logits))
    np.testing.assert_allclose(ctrl.weights, z / z.sum(), rtol=1e-12)
    return ctrl


class Trainer:
    """A seeded trainer: generates groups (rewards 0/1, informative with its row's or task's rate), numbers them
    with a counter, keeps the data of every group it may still train, and reports a step's facts. With a pool
    (selection), each request's rows come from `pool.select`, the outcomes go back with `pool.report`, and the
    skipped prompts' stand-ins join the step's rollouts. Its state is plain data (copied for the twin)."""

    def __init__(self, case: Case, pool: PromptPool | None, row_rate: NDArray[np.float64] | None) -> None:
        self.rates = np.asarray(case.rates, dtype=np.float64)
        self.n = case.group_size
        self.seed = case.seed
        self.pool = pool
        self.row_rate = row_rate
        self.next_key = 0
        self.data: dict[int, tuple[int, NDArray[np.float64]]] = {}  # key -> (task, rewards) of groups not freed
        self.step_task: list[NDArray[np.int64]] = []
        self.step_reward: list[NDArray[np.float64]] = []
        self.stand_task: list[NDArray[np.int64]] = []
        self.stand_reward: list[NDArray[np.float64]] = []
        self.draws: list[Selection] = []  # this step's pool selections (for the pool's checks)

    def generate(self, counts: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.next_key, 0x7E57]))
        if self.pool is None:
            tasks = np.repeat(np.arange(counts.shape[0]), counts)
            p = self.rates[tasks]
        else:
            picked = self.pool.select(counts)
            self.draws.append(picked)
            tasks = picked.tasks
            assert self.row_rate is not None
            p = self.row_rate[picked.rows]
        n = tasks.shape[0]
        informative = rng.random(n) < p
        rewards = (rng.random((n, self.n)) < 0.5).astype(np.float64)
        rewards[informative, 0], rewards[informative, 1] = 1.0, 0.0
        flat = ~informative
        rewards[flat] = (rng.random(int(flat.sum())) < 0.5).astype(np.float64)[:, None]
        keys = np.arange(self.next_key, self.next_key + n, dtype=np.int64)
        self.next_key += n
        self.data.update({int(key): (int(t), r) for key, t, r in zip(keys, tasks, rewards, strict=True)})
        self.step_task.append(np.repeat(tasks, self.n))
        self.step_reward.append(rewards.ravel())
        if self.pool is not None:
            self.pool.report(picked.rows, rewards)
            stand_task, stand_reward = picked.stand_ins(self.n)
            self.stand_task.append(stand_task)
            self.stand_reward.append(stand_reward)
        order = rng.permutation(n)  # reports in any order, in two parts
        return tasks[order], keys[order], rewards[order]

    def update(self, batch: Batch) -> StepFacts:
        """Train the batch (fresh and carried groups alike, from the kept data), free trained and released groups."""
        assert batch.released is not None
        rewards = np.array([self.data[int(key)][1] for key in batch.keys]).reshape(len(batch), self.n)
        tasks = np.array([self.data[int(key)][0] for key in batch.keys], dtype=np.int64)
        np.testing.assert_array_equal(tasks, batch.tasks)  # the batch names the task each group was reported with
        if batch.rewards is not None:
            np.testing.assert_array_equal(rewards, batch.rewards)
        for key in [*batch.keys.tolist(), *batch.released.tolist()]:
            del self.data[int(key)]  # a KeyError here: the batch trains or frees a group the trainer no longer has
        advantage = (rewards - rewards.mean(axis=1, keepdims=True)).ravel()
        before = np.zeros(advantage.shape)
        after = 0.01 * np.abs(advantage) * (1.0 + np.repeat(tasks, self.n))
        rollout_task = np.concatenate([*self.step_task, *self.stand_task, np.zeros(0, np.int64)])
        rollout_reward = np.concatenate([*self.step_reward, *self.stand_reward, np.zeros(0)])
        self.step_task, self.step_reward, self.stand_task, self.stand_reward = [], [], [], []
        facts = StepFacts(
            rollout_task=rollout_task if self.pool is not None else None,  # None: the controller takes its own
            rollout_reward=rollout_reward if self.pool is not None else None,
            sample_task=np.repeat(tasks, self.n),
            sample_advantage=advantage,
            surrogate_before=before,
            surrogate_after=after,
        )
        return facts

    def snapshot(self) -> dict[str, Any]:
        return {"next_key": self.next_key, "data": copy.deepcopy(self.data)}

    def restore(self, state: dict[str, Any]) -> None:
        self.next_key, self.data = state["next_key"], copy.deepcopy(state["data"])


@dataclass
class _Books:
    """The test's own account of every key: what each step offered, reported, trained, kept and released."""

    k: int
    batch_size: int
    kept: dict[int, int] = field(default_factory=dict)  # key -> task, kept by the last step (offered to this one)
    trained: set[int] = field(default_factory=set)
    released: set[int] = field(default_factory=set)
    dry: NDArray[np.int64] | None = None  # per task, groups generated since its last informative one

    def __post_init__(self) -> None:
        self.dry = np.zeros(self.k, dtype=np.int64)

    def check_step(
        self,
        ctrl_weights: NDArray[np.float64],
        reported: dict[int, tuple[int, bool]],
        requests: list[NDArray[np.int64]],
        batch: Batch,
        max_rounds: int,
    ) -> None:
        b, k = self.batch_size, self.k
        report = batch.report
        assert batch.staleness is not None and batch.kept is not None and batch.released is not None
        keys, kept, released = batch.keys.tolist(), batch.kept.tolist(), batch.released.tolist()
        offered = self.kept
        # every key trained once, reported this step or carried, never after it was trained or released
        assert len(set(keys)) == len(keys), "a key twice in one batch"
        assert not set(keys) & self.trained, f"keys trained twice: {sorted(set(keys) & self.trained)[:5]}"
        assert not set(keys) & self.released, f"keys trained after release: {sorted(set(keys) & self.released)[:5]}"
        assert set(keys) <= set(reported) | set(offered), "a trained key was neither reported nor carried"
        # the step's groups (reported and offered) split into trained, kept and released, each exactly once
        everything = set(reported) | set(offered)
        assert not set(reported) & set(offered)
        assert sorted(keys + kept + released) == sorted(everything)
        # never a group without signal trained or kept; carry-over 1: only this step's groups are kept
        informative = {key for key, (_, info) in reported.items() if info} | set(offered)
        assert set(keys) <= informative and set(kept) <= informative
        assert set(kept) <= set(reported), "a carried group was kept a second step (carry_over is 1)"
        assert set(offered) <= set(keys) | set(released), "a kept group neither trained nor released the next step"
        # staleness: 0 for this step's groups, 1 for carried ones, within carry_over
        stale = batch.staleness.tolist()
        assert all(s == (1 if key in offered else 0) for key, s in zip(keys, stale, strict=True))
        assert max(stale, default=0) <= 1
        # the report books what the test saw
        tasks_of = {key: t for key, (t, _) in reported.items()} | offered
        np.testing.assert_array_equal(batch.tasks, [tasks_of[key] for key in keys])
        generated = np.bincount([t for t, _ in reported.values()], minlength=k)
        fresh_info = np.bincount([t for t, info in reported.values() if info], minlength=k)
        carried = np.bincount(list(offered.values()), minlength=k)
        supply = fresh_info + carried
        np.testing.assert_array_equal(report.generated, generated)
        np.testing.assert_array_equal(report.informative, fresh_info)
        np.testing.assert_array_equal(report.accepted, supply)
        np.testing.assert_array_equal(np.sum(requests, axis=0) if requests else np.zeros(k), generated)
        np.testing.assert_array_equal(report.realized_counts, np.bincount(batch.tasks, minlength=k))
        assert report.carried_counts is not None and report.kept_counts is not None
        np.testing.assert_array_equal(report.carried_counts, np.bincount(batch.tasks[batch.staleness > 0], minlength=k))
        np.testing.assert_array_equal(report.kept_counts, np.bincount([tasks_of[key] for key in kept], minlength=k))
        assert report.rounds == len(requests) <= 1 + max_rounds
        # the generation cap: at most ceil(3 B) prompts a step; a cut request leaves none of it unused
        cap = math.ceil(LEAN["generation_cap"] * b)
        assert generated.sum() <= cap and (not report.capped or generated.sum() == cap)
        # the guard, replayed from the test's own dry runs: barren after WINDOW uninformative groups in a row
        assert self.dry is not None
        barren = self.dry >= WINDOW
        if barren.all():
            barren[:] = False  # every task barren: the guard steps aside
        assert report.barren_tasks == tuple(np.flatnonzero(barren).tolist())
        aimed = np.where(barren, 0.0, ctrl_weights)
        aimed = aimed / aimed.sum() if barren.any() and aimed.sum() > 0 else ctrl_weights
        np.testing.assert_allclose(report.weights, aimed, rtol=0, atol=1e-12)
        probe = -(-b // k)
        np.testing.assert_array_equal(report.target_counts[barren], 0)
        np.testing.assert_array_equal(generated[barren], probe)  # probes only: requested once, never resampled
        self.dry = np.where(fresh_info > 0, 0, self.dry + generated)
        # shares: apportioned targets sum to B within one group of B w_k; realized == targets when complete
        targets = report.target_counts
        assert targets.sum() == b
        assert (np.abs(targets - b * report.weights) < 1).all(), (targets, b * report.weights)
        short = supply < targets
        assert report.budget_exhausted == bool(short.any()), "budget_exhausted does not say whether supply ran short"
        assert len(batch) == min(b, int(supply.sum()))
        assert (report.realized_counts >= np.minimum(targets, supply)).all()
        if not report.budget_exhausted:
            assert len(batch) == b
            np.testing.assert_array_equal(report.realized_counts, targets)
        else:
            spent = report.rounds == 1 + max_rounds or report.capped
            assert spent, "a short batch before the round budget or the generation cap was spent"
            assert report.short_tasks == tuple(np.flatnonzero(report.realized_counts < targets).tolist())
        # books for the next step
        self.trained |= set(keys)
        self.released |= set(released)
        self.kept = {key: tasks_of[key] for key in kept}


def _pool(case: Case, selection: bool) -> tuple[PromptPool | None, NDArray[np.float64] | None]:
    if not selection:
        return None, None
    row_tasks = np.repeat(np.arange(case.k), case.rows_per_task)
    rng = np.random.default_rng(case.seed)
    rates = np.asarray(case.rates)[row_tasks]
    # prompts differ: about half of a task's rows are informative at twice its rate (capped), the rest never
    row_rate = np.where(rng.random(row_tasks.shape[0]) < 0.5, np.minimum(1.0, 2 * rates), 0.0)
    row_rate = np.where(rates >= 1.0, 1.0, row_rate)
    config = SelectionConfig(max_skips=case.max_skips)
    return PromptPool(row_tasks, [f"t{k}" for k in range(case.k)], case.seed, config), row_rate


class _PoolBooks:
    """The pool's invariants, from its documented passes (pass e of task k: the task's rows permuted by
    default_rng(SeedSequence([seed, k, e]))): each draw hands out exactly the counts asked, walks its cursor over
    consecutive pass positions (every position handed out or passed over once, so no row twice within a pass), and
    passes a row over at most max_skips times in a row."""

    def __init__(self, pool: PromptPool, row_tasks: NDArray[np.int64], max_skips: int | None) -> None:
        self.pool = pool
        self.row_tasks = row_tasks
        self.rows = [np.flatnonzero(row_tasks == k) for k in range(pool.num_tasks)]
        self.cursor = np.zeros(pool.num_tasks, dtype=np.int64)
        self.max_skips = max_skips
        self.run = np.zeros(row_tasks.shape[0], dtype=np.int64)  # passes-over in a row, per row

    def walk(self, k: int, start: int, stop: int) -> list[int]:
        size = self.rows[k].size
        out: list[int] = []
        for epoch in range(start // size, (stop - 1) // size + 1) if stop > start else []:
            order = self.rows[k][
                np.random.default_rng(np.random.SeedSequence([self.pool.seed, k, epoch])).permutation(size)
            ]
            lo, hi = max(start - epoch * size, 0), min(stop - epoch * size, size)
            out += order[lo:hi].tolist()
        return out

    def check_draw(self, counts: NDArray[np.int64], picked: Selection) -> None:
        k_all = self.pool.num_tasks
        np.testing.assert_array_equal(picked.tasks, np.repeat(np.arange(k_all), counts))
        np.testing.assert_array_equal(self.row_tasks[picked.rows], picked.tasks)
        np.testing.assert_array_equal(self.row_tasks[picked.skipped], picked.skipped_tasks)
        cursor = np.asarray(self.pool.state_dict()["cursor"], dtype=np.int64)
        for k in range(k_all):
            handed, passed = picked.rows[picked.tasks == k], picked.skipped[picked.skipped_tasks == k]
            assert passed.size <= self.rows[k].size, "a draw passed over more than one pass of a task's rows"
            assert cursor[k] - self.cursor[k] == handed.size + passed.size
            walked = self.walk(k, int(self.cursor[k]), int(cursor[k]))
            assert sorted(walked) == sorted(handed.tolist() + passed.tolist()), "a pass position lost or repeated"
        self.cursor = cursor
        self.run[picked.skipped] += 1
        self.run[picked.rows] = 0
        if self.max_skips is not None:
            assert self.run.max(initial=0) <= self.max_skips, "a row passed over more than max_skips times in a row"


@dataclass
class _Run:
    ctrl: Controller
    trainer: Trainer
    pool: PromptPool | None


def _step(
    run: _Run,
    books: _Books | None,
    pool_books: _PoolBooks | None,
    inside: Callable[[int | None], None] | None = None,
) -> list[Any]:
    """One step of the real conversation; returns what a twin must reproduce. `inside(i)` is called after round i's
    reports and with None just before finish."""
    ctrl, trainer = run.ctrl, run.trainer
    weights = ctrl.weights.copy()
    builder: BatchBuilder = ctrl.begin_step()
    requests: list[NDArray[np.int64]] = []
    reported: dict[int, tuple[int, bool]] = {}
    while (request := builder.next_request()) is not None:
        requests.append(request.counts.copy())
        trainer.draws = []
        tasks, keys, rewards = trainer.generate(request.counts)
        if pool_books is not None:
            (picked,) = trainer.draws
            pool_books.check_draw(request.counts, picked)
        for part in np.array_split(np.arange(len(keys)), 2):  # two reports (an empty one is refused, see below)
            if part.size:
                builder.report_arrays(tasks[part], keys[part], rewards=rewards[part])
        informative = rewards.min(axis=1) != rewards.max(axis=1)
        reported.update({int(key): (int(t), bool(i)) for key, t, i in zip(keys, tasks, informative, strict=True)})
        if inside is not None:
            inside(len(requests) - 1)
    if inside is not None:
        inside(None)
    batch = builder.finish()
    if books is not None:
        books.check_step(weights, reported, requests, batch, ctrl.sampler.config.max_rounds)
    facts = trainer.update(batch)
    ctrl.end_step(facts)
    assert np.isclose(ctrl.weights.sum(), 1.0) and (ctrl.weights >= 0).all()
    report = batch.report
    return [
        [r.tolist() for r in requests],
        batch.keys.tolist(),
        batch.staleness.tolist() if batch.staleness is not None else None,
        batch.kept.tolist() if batch.kept is not None else None,
        batch.released.tolist() if batch.released is not None else None,
        report.target_counts.tolist(),
        report.barren_tasks,
        ctrl.weights.tolist(),
    ]


def _snapshot(run: _Run) -> dict[str, Any]:
    """The run's state through JSON (the controller's and the pool's) and the trainer's own (its counter and data)."""
    state = json.loads(json.dumps({"ctrl": run.ctrl.state_dict(), "pool": run.pool and run.pool.state_dict()}))
    return {**state, "trainer": run.trainer.snapshot()}


def _twin(case: Case, snapshot: dict[str, Any]) -> _Run:
    """A fresh controller (and pool, and trainer) loaded from a snapshot."""
    ctrl = _controller(case)
    ctrl.load_state_dict(snapshot["ctrl"])
    pool, row_rate = _pool(case, snapshot["pool"] is not None)
    if pool is not None:
        pool.load_state_dict(snapshot["pool"])
    trainer = Trainer(case, pool, row_rate)
    trainer.restore(snapshot["trainer"])
    return _Run(ctrl, trainer, pool)


def _inside(case: Case, run: _Run, start: dict[str, Any], twins: list[_Run]) -> Callable[[int | None], None]:
    """The round trip inside the conversation (before finish): the controller's state there is still the step's
    start (the conversation's progress is not in it), so a controller restored from it replays the step from
    begin_step; the trainer restores its own step-start state (counter, kept data, pool)."""

    def take(round_index: int | None) -> None:
        if not twins and (round_index is None or round_index >= case.cut):
            mid = json.loads(json.dumps(run.ctrl.state_dict()))
            assert json.dumps(mid) == json.dumps(start["ctrl"]), "the conversation changed the controller's state"
            twins.append(_twin(case, {**start, "ctrl": mid}))

    return take


def _drive(case: Case, selection: bool) -> None:
    pool, row_rate = _pool(case, selection)
    run = _Run(_started(case), Trainer(case, pool, row_rate), pool)
    books = _Books(case.k, case.batch_size)
    pool_books = None
    if pool is not None:
        row_tasks = np.repeat(np.arange(case.k), case.rows_per_task)
        pool_books = _PoolBooks(pool, row_tasks, case.max_skips)
    twins: list[_Run] = []
    for step in range(case.steps):
        inside = None
        if step == case.snapshot:
            start = _snapshot(run)
            if case.phase == "between":
                twins.append(_twin(case, start))
            else:
                inside = _inside(case, run, start, twins)
        seen = _step(run, books, pool_books, inside)
        for twin in twins:
            assert _step(twin, None, None) == seen, f"the restored run diverged at step {step}"
    (twin,) = twins
    assert json.dumps(twin.ctrl.state_dict()) == json.dumps(run.ctrl.state_dict())
    if pool is not None:
        assert twin.pool is not None and json.dumps(twin.pool.state_dict()) == json.dumps(pool.state_dict())


def test_an_empty_report_with_rewards_is_accepted_like_one_with_informative() -> None:
    ctrl = Controller.from_method(METHOD, num_tasks=1, batch_size=1, group_size=2, seed=0)
    builder = ctrl.begin_step()
    assert builder.next_request() is not None
    builder.report_arrays(np.zeros(0, np.int64), np.zeros(0, np.int64), informative=np.zeros(0, np.bool_))
    builder.report_arrays(np.zeros(0, np.int64), np.zeros(0, np.int64), rewards=np.zeros((0, 2)))


@SETTINGS
@given(cases())
def test_the_default_keeps_its_promises(case: Case) -> None:
    _drive(case, selection=False)


@SETTINGS
@given(cases())
def test_the_default_with_selection_keeps_its_promises(case: Case) -> None:
    _drive(case, selection=True)


def test_a_round_trip_between_finish_and_end_step_continues_identically() -> None:
    """Where a trainer checkpoints during its update (TRL's `pending` step): the restored controller ends the step
    with the same facts, rollouts included (it has no open conversation to take them from)."""
    case = Case(
        k=3, batch_size=8, group_size=4, lam=0.2, logits=(0.0, 0.0, 0.0), rates=(0.3, 0.7, 1.0), seed=0, steps=4,
        snapshot=0, rows_per_task=(3, 3, 3), max_skips=None, phase="update", cut=0,
    )  # fmt: skip
    run = _Run(_controller(case), Trainer(case, None, None), None)
    for step in range(case.steps):
        builder = run.ctrl.begin_step()
        while (request := builder.next_request()) is not None:
            builder.report_arrays(*run.trainer.generate(request.counts))
        batch = builder.finish()
        twin = _twin(case, _snapshot(run))
        rollouts = builder.rollouts()
        assert rollouts is not None
        facts = replace(run.trainer.update(batch), rollout_task=rollouts[0], rollout_reward=rollouts[1])
        twin.trainer.update(batch)
        run.ctrl.end_step(facts)
        twin.ctrl.end_step(facts)
        carried_only = (batch.report.realized_counts > 0) & (batch.report.generated == 0)
        assert run.ctrl.weights.tolist() == twin.ctrl.weights.tolist(), (
            f"step {step}: weights {run.ctrl.weights} uninterrupted, {twin.ctrl.weights} after the round trip; "
            f"tasks trained only from carried groups: {np.flatnonzero(carried_only).tolist()}"
        )
        assert json.dumps(run.ctrl.state_dict()) == json.dumps(twin.ctrl.state_dict())
