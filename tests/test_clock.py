"""The simulator's clock (issue 21 item 2): the generation model's bounds, the mean length, and what the streaming
mode does to a run's time and decisions."""

from __future__ import annotations

import numpy as np
import pytest

from mtgrpo_backends.simulated.bench import SimulatedRunner
from mtgrpo_backends.simulated.clock import ClockModel, Engine
from mtgrpo_backends.simulated.suites import load_suite


def _alone(model: ClockModel, lengths: np.ndarray) -> float:
    """Seconds a lone request takes: between consecutive finishes (lengths sorted) the `active` rollouts left
    advance together at min(decode_tps, generation_tps / active) tokens per second."""
    ordered = np.sort(lengths)
    speed = np.minimum(model.decode_tps, model.generation_tps / np.arange(ordered.shape[0], 0, -1))
    return float((np.diff(ordered, prepend=0.0) / speed).sum())


@pytest.mark.parametrize("rollouts", [1, 8, 256, 2048, 20_000])
def test_a_request_takes_between_its_throughput_and_straggler_bounds_and_their_sum(rollouts: int) -> None:
    model = ClockModel()
    lengths = model.lengths(np.random.default_rng(rollouts), rollouts)
    engine = Engine(model)
    engine.submit(1, lengths, at=0.0)
    seconds = engine.finished(1)
    assert seconds == pytest.approx(_alone(model, lengths), rel=1e-9)
    throughput, straggler = lengths.sum() / model.generation_tps, lengths.max() / model.decode_tps
    assert max(throughput, straggler) - 1e-9 <= seconds <= throughput + straggler + 1e-9


def test_the_mean_length_is_the_truncated_lognormal_mean() -> None:
    model = ClockModel(median_tokens=700.0, tail=1.1, max_tokens=3000.0)
    draws = model.lengths(np.random.default_rng(0), 400_000)
    assert model.mean_tokens() == pytest.approx(draws.mean(), rel=0.01)
    assert ClockModel(tail=0.0, median_tokens=10.0, max_tokens=5.0).mean_tokens() == 5.0


def test_the_engine_shares_itself_between_requests() -> None:
    model = ClockModel()
    rng = np.random.default_rng(0)
    first, second = model.lengths(rng, 256), model.lengths(rng, 2048)
    alone = Engine(model)
    alone.submit(1, first, at=3.0)
    assert alone.finished(1) == pytest.approx(3.0 + _alone(model, first))
    shared = Engine(model)
    shared.submit(1, first, at=0.0)
    shared.submit(2, second, at=10.0)  # arrives while the first request's rollouts decode: both slow down
    both = sorted([shared.finished(2), shared.finished(1)])
    assert _alone(model, first) < shared.finished(1)
    assert both[1] == pytest.approx(max(shared.finished(1), shared.finished(2)))
    serial = _alone(model, first) + _alone(model, second)
    assert max(both) < 10.0 + serial  # overlapping requests finish sooner than one after the other
    total = (first.sum() + second.sum()) / model.generation_tps
    assert max(both) >= total - 1e-9  # but never faster than the engine's throughput
    empty = Engine(model)
    empty.submit(1, np.zeros(0), at=5.0)
    assert empty.finished(1) == 5.0


@pytest.mark.parametrize(("name", "value"), [("tail", -0.1), ("decode_tps", 0.0), ("median_tokens", float("nan"))])
def test_bad_clock_rates_are_refused(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        ClockModel(**{name: value})


def _runner(**sampler: int) -> SimulatedRunner:
    return SimulatedRunner(load_suite("paper3"), 40, 32, 8, 10, sampler=sampler)


def test_streaming_grpo_trains_the_same_groups_in_less_time() -> None:
    """GRPO generates the same B groups a step either way; ahead they are one step old and generated while the
    previous batch trains, so the run takes less simulated time."""
    sync, ahead = _runner()("grpo", 0), _runner(steps_ahead=1, carry_over=1)("grpo", 0)
    assert sync.seconds is not None and ahead.seconds is not None
    assert np.all(np.diff(ahead.seconds) > 0)
    assert ahead.seconds[-1] < sync.seconds[-1]
    assert sync.metrics["mean age"] == 0.0
    assert ahead.metrics["mean age"] == pytest.approx(39 / 40)  # every batch but the first was generated ahead
    assert np.array_equal(sync.trained, ahead.trained)
    assert ahead.generated.sum() == sync.generated.sum()


def test_the_clock_leaves_a_synchronous_run_unchanged() -> None:
    """The clock draws lengths from its own generator: two runs that differ only in the clock's rates decide the
    same and differ only in time."""
    a = _runner()("mt-grpo:0.2", 1)
    b = SimulatedRunner(load_suite("paper3"), 40, 32, 8, 10, clock=ClockModel(decode_tps=80.0))("mt-grpo:0.2", 1)
    assert np.array_equal(a.accuracy, b.accuracy) and np.array_equal(a.generated, b.generated)
    assert a.seconds is not None and b.seconds is not None and b.seconds[-1] < a.seconds[-1]


def _reference_finish_times(model: ClockModel, arrivals: list[tuple[float, np.ndarray]]) -> list[float]:
    """One event at a time: the active rollouts' remaining tokens, the next finish or arrival, all advance."""
    t, left, owner, done = 0.0, np.zeros(0), np.zeros(0, dtype=int), {}
    pending = sorted(range(len(arrivals)), key=lambda i: arrivals[i][0])
    while pending or left.size:
        speed = min(model.decode_tps, model.generation_tps / left.size) if left.size else 0.0
        finish = t + left.min() / speed if left.size else np.inf
        arrive = arrivals[pending[0]][0] if pending else np.inf
        step_to = min(finish, arrive)
        left = left - speed * (step_to - t)
        t = step_to
        if arrive <= finish:
            i = pending.pop(0)
            left, owner = (
                np.concatenate([left, arrivals[i][1]]),
                np.concatenate([owner, np.full(arrivals[i][1].size, i)]),
            )
        gone = left <= 1e-9
        for i in set(owner[gone].tolist()):
            if not (owner[~gone] == i).any():
                done[i] = t
        left, owner = left[~gone], owner[~gone]
    return [done[i] for i in range(len(arrivals))]


@pytest.mark.parametrize("seed", range(20))
def test_the_engine_matches_an_event_by_event_reference(seed: int) -> None:
    model = ClockModel(decode_tps=40.0, generation_tps=2_000.0)
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0, 60, size=rng.integers(1, 5)))
    arrivals = [(float(t), model.lengths(rng, int(rng.integers(1, 300)))) for t in times]
    engine = Engine(model)
    for i, (at, lengths) in enumerate(arrivals):
        engine.submit(i, lengths, at)
    got = [engine.finished(i) for i in rng.permutation(len(arrivals))]
    order = list(rng.permutation(len(arrivals)))
    engine2 = Engine(model)
    for i, (at, lengths) in enumerate(arrivals):
        engine2.submit(i, lengths, at)
    want = _reference_finish_times(model, arrivals)
    assert [engine2.finished(i) for i in order] == pytest.approx([want[i] for i in order], rel=1e-9)
    assert sorted(got) == pytest.approx(sorted(want), rel=1e-9)


def test_a_request_ending_at_the_engines_own_time_is_done_then() -> None:
    """Float ties: a run with requests issued as steps begin (bench_streaming's "begin" modes) left a request whose
    last rollout's threshold equalled the engine's progress to the last bit (17851.015594426142); asking when it
    finished raised KeyError instead of answering the engine's time."""
    engine = Engine(ClockModel())
    engine.submit(1, np.array([300.0, 500.0]), at=0.0)
    engine.submit(2, np.array([400.0]), at=0.0)
    done = engine.finished(2)
    engine._thresholds = np.concatenate([[engine.progress], engine._thresholds])  # a rollout of 3 ending now
    engine._last[3] = engine.progress
    assert engine.finished(3) == engine.time >= done
    assert engine.finished(1) > done


def test_the_simulator_refuses_an_unknown_ahead_schedule() -> None:
    suite = load_suite("paper3")
    with pytest.raises(ValueError, match="ahead_at"):
        SimulatedRunner(suite, 4, 8, 4, 2, ahead_at="later")  # type: ignore[arg-type]


def test_asking_ahead_as_the_step_begins_overlaps_requests_on_paper3() -> None:
    """steps_ahead 1 with each request issued as its step begins: two requests share the engine, so more steps fit
    in an hour than when each is issued after finish() (docs/benchmarks.md, "Streaming")."""
    suite = load_suite("paper3")
    base = SimulatedRunner(suite, 30, 32, 8, 10, sampler={"steps_ahead": 1, "carry_over": 2})
    after = base("mt-grpo:0.2", 0)
    early = SimulatedRunner(suite, 30, 32, 8, 10, sampler={"steps_ahead": 1, "carry_over": 2}, ahead_at="begin")
    begun = early("mt-grpo:0.2", 0)
    assert after.seconds is not None and begun.seconds is not None
    assert begun.seconds[-1] < 0.8 * after.seconds[-1]
