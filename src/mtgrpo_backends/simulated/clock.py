"""A documented model of wall-clock time for the simulator (docs/benchmarks.md, "The clock"), so that a benchmark
reports time beside steps and generation, and compares synchronous training with the streaming mode.

Rollout lengths are long-tailed: L = min(max_tokens, median_tokens * exp(tail * Z)), Z ~ Normal(0, 1), drawn
independently per rollout from the clock's own seeded generator (the policy's randomness is untouched, so a run
with the clock decides exactly as one without it). Two resources work side by side:
- the generator runs one request at a time, first come first served, as a continuous-batching engine: every
  rollout of the request not finished yet decodes at min(decode_tps, generation_tps / active) tokens per second
  (the engine's throughput shared by the active rollouts, at most one sequence's decode speed), so a request takes
  at least sum(L) / generation_tps and at least max(L) / decode_tps (the straggler every round waits for);
- the trainer's update of a batch takes rollouts * E[L] / training_tps (forward, backward and log-prob passes).
Synchronous training alternates: each round's request, then the update. In the streaming mode the ahead request
starts when the update starts (the generator holds its own copy of the policy) and a step starts when the update
before it is done and the ahead groups it reports have finished generating.
The defaults describe a 7B model on one 8-GPU node (vLLM-class generation, FSDP-class training); they were set from
those rates before any streaming result was seen and are not fitted to anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import checks as v


@dataclass(frozen=True)
class ClockModel:
    """Rates of the clock (see the module docstring): tokens per rollout and tokens per second."""

    median_tokens: float = 512.0
    tail: float = 0.8
    max_tokens: float = 4096.0
    generation_tps: float = 20_000.0
    decode_tps: float = 40.0
    training_tps: float = 12_000.0

    def __post_init__(self) -> None:
        for name in ("median_tokens", "max_tokens", "generation_tps", "decode_tps", "training_tps"):
            v.real_in_range(name, getattr(self, name), 0.0, low_open=True)
        v.real_in_range("tail", self.tail, 0.0)

    def lengths(self, rng: np.random.Generator, rollouts: int) -> NDArray[np.float64]:
        """Token lengths of `rollouts` rollouts."""
        return np.minimum(self.max_tokens, self.median_tokens * np.exp(self.tail * rng.standard_normal(rollouts)))

    def decode_seconds(self, lengths: NDArray[np.float64]) -> float:
        """Seconds until the last rollout is done: between consecutive finishes (lengths sorted) the `active`
        rollouts left advance together at min(decode_tps, generation_tps / active) tokens per second."""
        ordered = np.sort(lengths)
        active = np.arange(ordered.shape[0], 0, -1)
        speed = np.minimum(self.decode_tps, self.generation_tps / active)
        return float((np.diff(ordered, prepend=0.0) / speed).sum())

    def mean_tokens(self) -> float:
        """E[L] of the truncated log-normal length (closed form)."""
        from scipy.stats import norm

        mu, s, cap = np.log(self.median_tokens), self.tail, np.log(self.max_tokens)
        if s == 0:
            return float(min(self.median_tokens, self.max_tokens))
        below = np.exp(mu + s * s / 2) * norm.cdf((cap - mu - s * s) / s)
        return float(below + self.max_tokens * norm.sf((cap - mu) / s))


class Clock:
    """Simulated seconds of one run: the trainer's time `now` and the time the generator is free."""

    def __init__(self, model: ClockModel, seed: int) -> None:
        self.model = model
        self._rng = np.random.default_rng([v.positive_int("seed", seed, minimum=0), 21])
        self._mean_tokens = model.mean_tokens()
        self.now = 0.0
        self.generator_free = 0.0

    def generate(self, rollouts: int, start: float) -> float:
        """Queue a request of `rollouts` rollouts on the generator at `start`; returns when it is done."""
        if rollouts == 0:
            return start
        begin = max(start, self.generator_free)
        self.generator_free = begin + self.model.decode_seconds(self.model.lengths(self._rng, rollouts))
        return self.generator_free

    def wait(self, until: float) -> None:
        """The trainer waits until `until` (groups it needs finish generating)."""
        self.now = max(self.now, until)

    def train(self, rollouts: int) -> None:
        """The update of a batch of `rollouts` rollouts."""
        self.now += rollouts * self._mean_tokens / self.model.training_tps
