"""A documented model of wall-clock time for the simulator (docs/benchmarks.md, "The clock"), so that a benchmark
reports time beside steps and generation, and compares synchronous training with the streaming mode.

Rollout lengths are long-tailed: L = min(max_tokens, median_tokens * exp(tail * Z)), Z ~ Normal(0, 1), drawn
independently per rollout from the clock's own seeded generator (the policy's randomness is untouched, so a run
with the clock decides exactly as one without it). Two resources work side by side:
- the generator is one continuous-batching engine (`Engine`): every rollout not finished yet, of any request,
  decodes at min(decode_tps, generation_tps / active) tokens per second (the engine's throughput shared by the
  active rollouts, at most one sequence's decode speed), so a request alone takes at least sum(L) /
  generation_tps and at least max(L) / decode_tps (the straggler every round waits for), and requests that
  overlap share the engine (one's long tail runs beside the other's rollouts);
- the trainer's update of a batch takes rollouts * E[L] / training_tps (forward, backward and log-prob passes).
Synchronous training alternates: each round's request, then the update. In the streaming mode the ahead request
starts when the update starts (the generator holds its own copy of the policy) and a step starts when the update
before it is done and the ahead groups it reports have finished generating; its shortfall rounds share the
engine with ahead requests still generating.
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

    def mean_tokens(self) -> float:
        """E[L] of the truncated log-normal length (closed form)."""
        from scipy.stats import norm

        mu, s, cap = np.log(self.median_tokens), self.tail, np.log(self.max_tokens)
        if s == 0:
            return float(min(self.median_tokens, self.max_tokens))
        below = np.exp(mu + s * s / 2) * norm.cdf((cap - mu - s * s) / s)
        return float(below + self.max_tokens * norm.sf((cap - mu) / s))


class Engine:
    """A continuous-batching generator shared by every request: all unfinished rollouts decode together, each at
    min(decode_tps, generation_tps / active) tokens per second. Requests arrive in time order; a request's finish
    time is found when asked (rollouts that arrive later, before it finishes, slow it down).

    All active rollouts advance at one speed, so each is a threshold on a shared progress counter (progress at its
    arrival + its length) and they finish in threshold order."""

    def __init__(self, model: ClockModel) -> None:
        self.model = model
        self.time = 0.0  # the engine's clock
        self.progress = 0.0  # tokens each active rollout has decoded since the engine started
        self._thresholds = np.zeros(0)  # of the active rollouts, ascending
        self._last: dict[int, float] = {}  # request -> threshold of its longest rollout (open requests)
        self._done: dict[int, float] = {}  # request -> when its last rollout finished

    def submit(self, request: int, lengths: NDArray[np.float64], at: float) -> None:
        """Request `request`'s rollouts of `lengths` tokens arrive at `at` (no earlier than the last arrival)."""
        self._advance(at)
        if lengths.shape[0] == 0:
            self._done[request] = max(at, self.time)
            return
        thresholds = self.progress + lengths
        self._thresholds = np.sort(np.concatenate([self._thresholds, thresholds]))
        self._last[request] = float(thresholds.max())

    def finished(self, request: int) -> float:
        """When `request`'s last rollout is done (the engine runs until then)."""
        if request in self._last:
            self._advance(self._finish_times()[np.searchsorted(self._thresholds, self._last[request])])
        return self._done[request]

    def _finish_times(self) -> NDArray[np.float64]:
        """When each active rollout finishes if nothing else arrives."""
        h = self._thresholds
        speed = np.minimum(self.model.decode_tps, self.model.generation_tps / np.arange(h.shape[0], 0, -1))
        return self.time + np.cumsum(np.diff(h, prepend=self.progress) / speed)

    def _advance(self, to: float) -> None:
        """Run the engine until `to`: the rollouts done by then leave, the others progress (a rollout ending at the
        engine's own time leaves too: its finish time can equal it to the last bit)."""
        if to < self.time:
            return
        h, times = self._thresholds, self._finish_times()
        k = int(np.searchsorted(times, to, side="right"))  # rollouts done by `to`
        for request, threshold in list(self._last.items()):
            if k and threshold <= h[k - 1]:
                self._done[request] = float(times[np.searchsorted(h, threshold)])
                del self._last[request]
        start, base = (float(times[k - 1]), float(h[k - 1])) if k else (self.time, self.progress)
        rest = h.shape[0] - k
        speed = min(self.model.decode_tps, self.model.generation_tps / rest) if rest else 0.0
        self.progress, self.time, self._thresholds = base + speed * (to - start), to, h[k:]


class Clock:
    """Simulated seconds of one run: the trainer's time `now` and the generation engine."""

    def __init__(self, model: ClockModel, seed: int) -> None:
        self.model = model
        self._rng = np.random.default_rng([v.positive_int("seed", seed, minimum=0), 21])
        self._mean_tokens = model.mean_tokens()
        self.now = 0.0
        self.engine = Engine(model)
        self._requests = 0

    def submit(self, rollouts: int) -> int:
        """A generation request of `rollouts` rollouts issued now; returns its ticket."""
        self._requests += 1
        self.engine.submit(self._requests, self.model.lengths(self._rng, rollouts), self.now)
        return self._requests

    def finished(self, ticket: int) -> float:
        """When the request of `ticket` is done."""
        return self.engine.finished(ticket)

    def wait(self, until: float) -> None:
        """The trainer waits until `until` (groups it needs finish generating)."""
        self.now = max(self.now, until)

    def train(self, rollouts: int) -> None:
        """The update of a batch of `rollouts` rollouts."""
        self.now += rollouts * self._mean_tokens / self.model.training_tps
