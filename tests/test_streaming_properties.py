"""Property tests of the streaming mode (issue 21, item 1): hypothesis drives `RatioPreservingSampler` with
`steps_ahead` >= 1 through many steps of the real conversation: begin, the reports of earlier ahead requests (with
their version, after a drawn delay, sometimes past the age bound), shortfall rounds, finish, ahead (or ahead as the
step begins, before its reports). The test keeps
its own books of every key (`_Books`) and checks each step: exactly B groups in the target ratio when the supply
allowed it, no group trained twice, no group older than carry_over, every group trained, kept or freed exactly once,
and the same decisions from a sampler restored from JSON with ahead requests in flight. The held path (groups
reported through `Controller.report_ahead` as soon as generated, or between steps when late, and held by the core
until their due step, across a JSON resume) decides exactly as reports made inside the step."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from mtgrpo_core import Controller, FixedRule, RatioPreservingSampler, SamplerConfig, StepFacts
from mtgrpo_core.sampling.sampler import Batch

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = {
    "joint": {"planner": "joint"},
    "posterior": {"planner": "posterior"},
    "dapo": {"ratio_constraint": False, "acceptance_aware": False},
    "grpo": {"filtering": "none"},
}


@dataclass(frozen=True)
class Case:
    k: int
    batch_size: int
    kind: str
    steps_ahead: int
    carry_over: int
    rates: tuple[float, ...]  # informative share of a task's groups
    delays: tuple[int, ...]  # steps between an ahead request and its report, cycled (> carry_over: too old)
    seed: int
    steps: int
    snapshot: int
    early: bool  # ahead() as the step begins, before its reports (else after finish())


@st.composite
def cases(draw: st.DrawFn) -> Case:
    k = draw(st.integers(1, 5))
    ahead = draw(st.integers(1, 3))
    carry = ahead + draw(st.integers(0, 2))
    return Case(
        k=k,
        batch_size=draw(st.integers(k, 40)),
        kind=draw(st.sampled_from(sorted(KINDS))),
        steps_ahead=ahead,
        carry_over=carry,
        rates=tuple(draw(st.lists(st.sampled_from([0.1, 0.3, 0.7, 1.0]), min_size=k, max_size=k))),
        delays=tuple(draw(st.lists(st.integers(1, carry + 1), min_size=1, max_size=4))),
        seed=draw(st.integers(0, 2**16)),
        steps=draw(st.integers(3, 9)),
        snapshot=draw(st.integers(1, 8)),
        early=draw(st.booleans()),
    )


@dataclass
class _Books:
    """The test's own record of every group: its task, step of generation, informative flag and fate."""

    born: dict[int, int] = field(default_factory=dict)
    informative: dict[int, bool] = field(default_factory=dict)
    alive: set[int] = field(default_factory=set)  # reported, not yet trained or freed
    trained: set[int] = field(default_factory=set)


class Driver:
    """A seeded trainer: generates groups informative at known rates, reports ahead groups after their delay."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.rng = np.random.default_rng(case.seed)
        self.next_key = 0
        self.books = _Books()
        self.due: list[tuple[int, int, NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]] = []
        self.n_ahead = 0

    def generate(
        self, counts: NDArray[np.int64], step: int
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
        tasks = self.rng.permutation(np.repeat(np.arange(counts.shape[0]), counts))
        keys = np.arange(self.next_key, self.next_key + tasks.shape[0])
        self.next_key += tasks.shape[0]
        info = self.rng.random(tasks.shape[0]) < np.array(self.case.rates)[tasks]
        for key, ok in zip(keys.tolist(), info.tolist(), strict=True):
            self.books.born[key], self.books.informative[key] = step, ok
        return tasks, keys, info

    def step(self, sampler: RatioPreservingSampler, weights: NDArray[np.float64], t: int) -> Batch:
        builder = sampler.begin(weights, t)
        ahead = builder.ahead() if self.case.early else None
        now = [d for d in self.due if d[0] <= t]
        self.due = [d for d in self.due if d[0] > t]
        for _, version, tasks, keys, info in now:
            builder.report_arrays(tasks, keys, informative=info, version=version)
            self.books.alive |= set(keys.tolist())
        while (request := builder.next_request()) is not None:
            assert request.version == t
            tasks, keys, info = self.generate(request.counts, t)
            builder.report_arrays(tasks, keys, informative=info)
            self.books.alive |= set(keys.tolist())
        batch = builder.finish()
        ahead = ahead if self.case.early else builder.ahead()
        if ahead is not None:
            assert ahead.version == t
            delay = self.case.delays[self.n_ahead % len(self.case.delays)]
            self.n_ahead += 1
            tasks, keys, info = self.generate(ahead.counts, t)
            self.due.append((t + delay, t, tasks, keys, info))
        return batch


def _sampler(case: Case) -> RatioPreservingSampler:
    config = SamplerConfig(
        case.batch_size,
        4,
        carry_over=case.carry_over,
        steps_ahead=case.steps_ahead,
        max_rounds=20,
        **KINDS[case.kind],  # type: ignore[arg-type]
    )
    return RatioPreservingSampler(case.k, config, seed=case.seed)


def _check(case: Case, batch: Batch, t: int, books: _Books) -> None:
    keys = batch.keys.tolist()
    assert batch.staleness is not None and batch.released is not None and batch.kept is not None
    assert not books.trained & set(keys), "a group was trained twice"
    assert set(keys) <= books.alive
    assert [t - books.born[k] for k in keys] == batch.staleness.tolist()
    assert batch.staleness.max(initial=0) <= case.carry_over, "a group older than the age bound was trained"
    if case.kind != "grpo":
        assert all(books.informative[k] for k in keys)
    if not batch.report.budget_exhausted:
        assert len(batch) == case.batch_size
        if case.kind in ("joint", "posterior"):
            assert np.array_equal(batch.report.realized_counts, batch.report.target_counts)
    books.trained |= set(keys)
    books.alive -= set(keys) | set(batch.released.tolist())
    assert books.alive == set(batch.kept.tolist()), "every reported group is trained, kept or freed"
    assert all(t + 1 - books.born[k] <= case.carry_over for k in books.alive)


@given(cases())
@SETTINGS
def test_streaming_keeps_the_samplers_guarantees(case: Case) -> None:
    sampler, driver = _sampler(case), Driver(case)
    weights = np.random.default_rng(case.seed + 1).dirichlet(np.ones(case.k), size=case.steps)
    weights = np.maximum(weights, 0.01) / np.maximum(weights, 0.01).sum(axis=1, keepdims=True)
    for t in range(case.steps):
        _check(case, driver.step(sampler, weights[t], t), t, driver.books)


@given(cases())
@SETTINGS
def test_streaming_is_deterministic_and_resumes_exactly_with_groups_in_flight(case: Case) -> None:
    """Two samplers given the same reports decide the same; a sampler restored from a JSON state saved between
    steps (ahead requests in flight, groups kept) decides as the one that went on."""
    weights = np.full(case.k, 1.0 / case.k)
    first, second = _sampler(case), _sampler(case)
    drivers = [Driver(case), Driver(case)]
    for t in range(case.steps):
        if t == min(case.snapshot, case.steps - 1):
            state = json.loads(json.dumps(second.state_dict()))
            second = _sampler(case)
            second.load_state_dict(state)
        a = drivers[0].step(first, weights, t)
        b = drivers[1].step(second, weights, t)
        assert a.keys.tolist() == b.keys.tolist()
        assert a.staleness is not None and b.staleness is not None
        assert a.staleness.tolist() == b.staleness.tolist()
        assert first.state_dict() == second.state_dict()


class HeldDriver(Driver):
    """The same trainer on the held path: an ahead request's groups go to `Controller.report_ahead` right after
    generation (in two parts) when their delay is steps_ahead, else between steps, before the step they join."""

    def step_held(self, ctrl: Controller, t: int) -> Batch:
        for _, version, tasks, keys, info in [d for d in self.due if d[0] <= t]:
            ctrl.report_ahead(version, tasks, keys, informative=info, payloads=[f"k{k}" for k in keys.tolist()])
        self.due = [d for d in self.due if d[0] > t]
        builder = ctrl.begin_step()
        while (request := builder.next_request()) is not None:
            tasks, keys, info = self.generate(request.counts, t)
            builder.report_arrays(tasks, keys, informative=info)
        batch = builder.finish()
        ahead = builder.ahead()
        if ahead is not None:
            delay = self.case.delays[self.n_ahead % len(self.case.delays)]
            self.n_ahead += 1
            tasks, keys, info = self.generate(ahead.counts, t)
            if delay > self.case.steps_ahead:
                self.due.append((t + delay, t, tasks, keys, info))
            for part in (
                (slice(0, tasks.size // 2), slice(tasks.size // 2, None)) if delay == self.case.steps_ahead else ()
            ):
                pay = [f"k{k}" for k in keys[part].tolist()]
                ctrl.report_ahead(t, tasks[part], keys[part], informative=info[part], payloads=pay)
        ctrl.end_step(StepFacts(rollout_task=np.zeros(0, np.int64), rollout_reward=np.zeros(0)))
        return batch


@given(cases())
@SETTINGS
def test_groups_held_by_the_core_decide_as_groups_reported_in_the_step(case: Case) -> None:
    delays = tuple(max(d, case.steps_ahead) for d in case.delays)  # none before its due step
    case = replace(case, delays=delays, early=False)  # the held driver asks ahead() after finish()
    ctrl = Controller(FixedRule(case.k, np.full(case.k, 1.0 / case.k)), _sampler(case))
    sampler, in_step, held = _sampler(case), Driver(case), HeldDriver(case)
    for t in range(case.steps):
        if t == min(case.snapshot, case.steps - 1):  # resume from JSON with held groups and their payloads
            state, payloads = json.loads(json.dumps(ctrl.state_dict())), ctrl.kept_payloads()
            ctrl = Controller(FixedRule(case.k, np.full(case.k, 1.0 / case.k)), _sampler(case))
            ctrl.load_state_dict(state, payloads)
        a, b = in_step.step(sampler, ctrl.weights, t), held.step_held(ctrl, t)
        _check(case, a, t, in_step.books)
        for got, want in [(b.keys, a.keys), (b.staleness, a.staleness), (b.kept, a.kept), (b.released, a.released)]:
            assert np.asarray(got).tolist() == np.asarray(want).tolist()
        assert all(
            p is None or p == f"k{k}" for p, k in zip(b.payloads or [None] * len(b), b.keys.tolist(), strict=True)
        )
    assert ctrl.sampler.state_dict()["carry"]["in_flight"] == sampler.state_dict()["carry"]["in_flight"]
