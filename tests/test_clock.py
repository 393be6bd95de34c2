"""The simulator's clock (issue 21 item 2): the generation model's bounds, the mean length, and what the streaming
mode does to a run's time and decisions."""

from __future__ import annotations

import numpy as np
import pytest

from mtgrpo_backends.simulated.bench import SimulatedRunner
from mtgrpo_backends.simulated.clock import Clock, ClockModel
from mtgrpo_backends.simulated.suites import load_suite


@pytest.mark.parametrize("rollouts", [1, 8, 256, 2048, 20_000])
def test_a_request_takes_between_its_throughput_and_straggler_bounds_and_their_sum(rollouts: int) -> None:
    model = ClockModel()
    lengths = model.lengths(np.random.default_rng(rollouts), rollouts)
    seconds = model.decode_seconds(lengths)
    throughput, straggler = lengths.sum() / model.generation_tps, lengths.max() / model.decode_tps
    assert max(throughput, straggler) - 1e-9 <= seconds <= throughput + straggler + 1e-9


def test_the_mean_length_is_the_truncated_lognormal_mean() -> None:
    model = ClockModel(median_tokens=700.0, tail=1.1, max_tokens=3000.0)
    draws = model.lengths(np.random.default_rng(0), 400_000)
    assert model.mean_tokens() == pytest.approx(draws.mean(), rel=0.01)
    assert ClockModel(tail=0.0, median_tokens=10.0, max_tokens=5.0).mean_tokens() == 5.0


def test_the_generator_serves_one_request_at_a_time() -> None:
    clock = Clock(ClockModel(), seed=0)
    first = clock.generate(64, start=0.0)
    second = clock.generate(64, start=0.0)  # queued behind the first
    assert 0.0 < first < second
    assert clock.generate(0, start=5.0) == 5.0


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
