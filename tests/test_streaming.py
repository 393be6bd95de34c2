"""The streaming mode (issue 21, item 1): ahead requests fill later batches, and bad input gets a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtgrpo_core import Controller, KnownFilterRate, RatioPreservingSampler, SamplerConfig
from mtgrpo_core.settings import SamplerSettings, Settings

RATES = np.array([0.30, 0.15, 0.70])  # filter rates
WEIGHTS = np.array([0.46, 0.11, 0.43])


def _sampler(ahead: int = 1, carry: int = 1, **kw: object) -> RatioPreservingSampler:
    config = SamplerConfig(32, 8, planner="joint", carry_over=carry, steps_ahead=ahead, oversample=6.0, **kw)  # type: ignore[arg-type]
    return RatioPreservingSampler(3, config, seed=0, estimator=KnownFilterRate(RATES))


def _groups(rng: np.random.Generator, counts: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tasks = np.repeat(np.arange(3), counts)
    keys = np.arange(first, first + tasks.shape[0])
    return tasks, keys, rng.random(tasks.shape[0]) >= RATES[tasks]


@pytest.mark.parametrize("ahead", [1, 2])
def test_ahead_groups_fill_the_batches_and_shortfall_rounds_are_rare(ahead: int) -> None:
    """In steady state nearly every trained group was generated ahead (staleness >= 1, at most carry_over) and most
    steps ask for nothing while the batch waits; the realized counts are the targets."""
    sampler, rng = _sampler(ahead, carry=ahead), np.random.default_rng(1)
    due: dict[int, list[tuple[int, tuple[np.ndarray, ...]]]] = {}
    key, stale, trained, quiet = 0, 0, 0, 0
    for t in range(80):
        builder = sampler.begin(WEIGHTS, t)
        for version, (tasks, keys, info) in due.pop(t, []):
            builder.report_arrays(tasks, keys, informative=info, version=version)
        rounds = 0
        while (request := builder.next_request()) is not None:
            rounds += 1
            tasks, keys, info = _groups(rng, request.counts, key)
            key += tasks.shape[0]
            builder.report_arrays(tasks, keys, informative=info)
        batch = builder.finish()
        assert np.array_equal(batch.report.realized_counts, batch.report.target_counts)
        assert batch.staleness is not None and batch.staleness.max() <= ahead
        if (request := builder.ahead()) is not None:
            groups = _groups(rng, request.counts, key)
            key += groups[0].shape[0]
            due.setdefault(t + ahead, []).append((t, groups))
        if t >= 10:
            stale += int((batch.staleness >= 1).sum())
            trained += len(batch)
            quiet += rounds == 0
    assert stale / trained > 0.9
    assert quiet / 70 > 0.6


def test_a_report_older_than_the_age_bound_is_freed_not_trained() -> None:
    sampler, rng = _sampler(), np.random.default_rng(0)
    builder = sampler.begin(WEIGHTS, 0)
    while (request := builder.next_request()) is not None:
        builder.report_arrays(*_groups(rng, request.counts, 0)[:2], informative=np.ones(request.total, bool))
    builder.finish()
    request = builder.ahead()
    assert request is not None and request.version == 0
    tasks, keys, _ = _groups(rng, request.counts, 10_000)
    builder = sampler.begin(WEIGHTS, 2)  # two steps later: staleness 2 > carry_over 1
    builder.report_arrays(tasks, keys, informative=np.ones(tasks.shape[0], bool), version=0)
    while (request := builder.next_request()) is not None:
        t2, k2, i2 = _groups(rng, request.counts, 20_000)
        builder.report_arrays(t2, k2, informative=i2)
    batch = builder.finish()
    assert batch.released is not None and set(keys.tolist()) <= set(batch.released.tolist())
    assert not set(keys.tolist()) & set(batch.keys.tolist())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"steps_ahead": -1, "carry_over": 1}, ValueError, "steps_ahead must be >= 0, got -1"),
        ({"steps_ahead": 1.5, "carry_over": 2}, TypeError, "steps_ahead must be an int, got 1.5"),
        ({"steps_ahead": 2, "carry_over": 1, "planner": "joint"}, ValueError, "steps_ahead=2 needs carry_over >= 2"),
        ({"steps_ahead": 1, "carry_over": 1, "planner": "paper"}, ValueError, "got planner='paper'"),
    ],
)
def test_bad_streaming_settings_are_refused(kwargs: dict[str, object], error: type, message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        SamplerConfig(32, 8, **kwargs)  # type: ignore[arg-type]


def test_dapo_and_grpo_take_a_buffer_only_in_streaming_mode() -> None:
    SamplerConfig(32, 8, filtering="none", carry_over=1, steps_ahead=1)
    SamplerConfig(32, 8, ratio_constraint=False, carry_over=2, steps_ahead=1)
    with pytest.raises(ValueError, match="DAPO and plain GRPO keep groups only as the buffer of the streaming mode"):
        SamplerConfig(32, 8, filtering="none", carry_over=1)


def _first_step(sampler: RatioPreservingSampler) -> tuple[object, np.ndarray]:
    """Step 0 to its ahead request; returns the request and the next free key."""
    rng = np.random.default_rng(3)
    builder = sampler.begin(WEIGHTS, 0)
    while (request := builder.next_request()) is not None:
        tasks, keys, info = _groups(rng, request.counts, 0)
        builder.report_arrays(tasks, keys, informative=info)
    builder.finish()
    request = builder.ahead()
    assert request is not None
    return request, np.repeat(np.arange(3), request.counts)


def test_reports_of_versions_never_issued_or_reported_twice_are_refused_and_change_nothing() -> None:
    sampler = _sampler()
    _, tasks = _first_step(sampler)
    keys = np.arange(50_000, 50_000 + tasks.shape[0])
    info = np.ones(tasks.shape[0], bool)
    builder = sampler.begin(WEIGHTS, 1)
    with pytest.raises(ValueError, match=r"version 2 is later than this step \(1\)"):
        builder.report_arrays(tasks, keys, informative=info, version=2)
    with pytest.raises(TypeError, match="version must be an int"):
        builder.report_arrays(tasks, keys, informative=info, version=0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"for version 0, whose ahead request awaits only"):
        builder.report_arrays(
            np.concatenate([tasks, tasks[:1]]),
            np.arange(60_000, 60_000 + tasks.shape[0] + 1),
            informative=np.ones(tasks.shape[0] + 1, bool),
            version=0,
        )
    builder.report_arrays(tasks, keys, informative=info, version=0)
    with pytest.raises(
        ValueError, match=r"version 0 has no ahead request awaiting reports \(versions in flight: \[\]\)"
    ):
        builder.report_arrays(tasks[:1], np.array([70_000]), informative=info[:1], version=0)
    with pytest.raises(ValueError, match="keys"):  # the same group again, as this step's
        builder.report_arrays(tasks[:1], keys[:1], informative=info[:1])


def test_earlier_versions_need_the_streaming_mode() -> None:
    sampler = RatioPreservingSampler(3, SamplerConfig(32, 8, planner="joint", carry_over=1), seed=0)
    builder = sampler.begin(WEIGHTS, 3)
    with pytest.raises(ValueError, match="version 1 is an earlier step than this one \\(3\\), but steps_ahead is 0"):
        builder.report_arrays([0], [0], informative=[True], version=1)
    builder.report_arrays([], [], informative=np.zeros(0, bool), version=3)  # this step's own version is fine
    while (request := builder.next_request()) is not None:
        n = request.total
        builder.report_arrays(
            np.repeat(np.arange(3), request.counts), np.arange(1, n + 1), informative=np.ones(n, bool)
        )
    builder.finish()
    with pytest.raises(ValueError, match="ahead\\(\\) needs the streaming mode"):
        builder.ahead()


def test_ahead_comes_once_per_step() -> None:
    early = _sampler().begin(WEIGHTS, 0)
    early.ahead()  # before finish(): the early request
    with pytest.raises(ValueError, match="once per step"):
        early.ahead()
    sampler = _sampler()
    _first_step(_sampler())
    sampler2 = _sampler()
    _first_step(sampler2)
    with pytest.raises(ValueError, match="version 0 has no ahead"):  # a fresh sampler never issued version 0
        b = sampler.begin(WEIGHTS, 1)
        b.report_arrays([0], [99], informative=[True], version=0)


def test_a_state_with_ahead_requests_in_flight_round_trips_and_bad_ones_are_refused() -> None:
    sampler = _sampler()
    request, tasks = _first_step(sampler)
    state = json.loads(json.dumps(sampler.state_dict()))
    assert state["carry"]["in_flight"] == {"0": request.counts.tolist()}  # type: ignore[attr-defined]
    restored = _sampler()
    restored.load_state_dict(state)
    assert restored.state_dict() == sampler.state_dict()
    restored.begin(WEIGHTS, 1).report_arrays(
        tasks, np.arange(9_000, 9_000 + tasks.shape[0]), informative=np.ones(tasks.shape[0], bool), version=0
    )
    for bad, message in [
        ({"x": [1, 2, 3]}, "has version 'x', expected a non-negative integer string"),
        ({"0": [1, 2]}, "must be 3 non-negative counts"),
        ({"0": [0, 0, 0]}, "not all 0"),
        ([1, 2, 3], "must be a mapping of version -> counts"),
    ]:
        broken = json.loads(json.dumps(state))
        broken["carry"]["in_flight"] = bad
        with pytest.raises((TypeError, ValueError), match=message):
            _sampler().load_state_dict(broken)


def test_release_kept_forgets_the_ahead_requests_in_flight() -> None:
    ctrl = Controller.from_method("mt-grpo", 3, 32, 8, steps_ahead=1)
    rng = np.random.default_rng(0)
    builder = ctrl.begin_step()
    while (request := builder.next_request()) is not None:
        tasks = np.repeat(np.arange(3), request.counts)
        builder.report_arrays(tasks, rewards=(rng.random((tasks.shape[0], 8)) < 0.5).astype(float))
    builder.finish()
    assert builder.ahead() is not None
    ctrl._open = None  # the step ended without signals (a crash): release_kept is called between steps
    ctrl.release_kept()
    assert ctrl.sampler.carry is not None and not ctrl.sampler.carry.in_flight().any()


def test_settings_take_steps_ahead_and_name_it_when_refused() -> None:
    ctrl = Settings("mt-grpo", SamplerSettings(steps_ahead=1)).controller(3, 32, 8)
    assert ctrl.sampler.config.steps_ahead == 1
    with pytest.raises(ValueError, match=r"sampler\.steps_ahead -1: steps_ahead must be >= 0"):
        Settings("mt-grpo", SamplerSettings(steps_ahead=-1))
    with pytest.raises(ValueError, match=r"steps_ahead=2 needs carry_over >= 2"):
        Settings("mt-grpo", SamplerSettings(steps_ahead=2)).check(3, 32, 8)


@pytest.mark.parametrize("early", [False, True])
def test_the_cap_covers_a_steps_own_rounds_and_ahead_request_not_the_ahead_groups_it_receives(early: bool) -> None:
    """Per step, the prompts it asks for (rounds and ahead request, asked after finish() or as the step begins)
    stay within the generation cap; the ahead groups reported to it were charged to the step that asked (they
    count in its report's `generated`, not in its cap)."""
    sampler, rng = _sampler(ahead=1, carry=2, generation_cap=1.5), np.random.default_rng(5)  # 48 prompts (B = 32)
    due: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    key = 0
    for t in range(40):
        builder = sampler.begin(WEIGHTS, t)
        ahead = builder.ahead() if early else None
        for tasks, keys, info in due:
            builder.report_arrays(tasks, keys, informative=info, version=t - 1)
        received = sum(d[0].shape[0] for d in due)
        own = 0
        while (request := builder.next_request()) is not None:
            own += request.total
            tasks, keys, info = _groups(rng, request.counts, key)
            key += tasks.shape[0]
            builder.report_arrays(tasks, keys, informative=info)
        batch = builder.finish()
        assert int(batch.report.generated.sum()) == received + own
        ahead = ahead if early else builder.ahead()
        asked = own + (0 if ahead is None else ahead.total)
        assert asked <= 48
        due = [] if ahead is None else [_groups(rng, ahead.counts, key)]
        key += 0 if ahead is None else ahead.total
