"""The common per-run record every backend returns, and what a backend supplies: run one method with one seed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray


@dataclass
class RunRecord:
    """One method run with one seed. T training steps, K tasks, E evaluations.

    eval_steps (E,): training steps done at each evaluation (0 = before training); accuracy (E, K): held-out
    accuracy per task there. weights, shares (T, K): the task weights z used at each step and the realized
    post-filter batch shares (zeros for an empty batch). Per step (T,): rounds of the batch conversation, generated
    groups, generated rollouts, trained groups (the batch), and budget_exhausted (the round budget ended the
    conversation before the batch was complete).
    metrics: backend scalars the table shows (e.g. steps/s); log: backend JSON kept in results.json.
    """

    method: str
    seed: int
    eval_steps: NDArray[np.int64]
    accuracy: NDArray[np.float64]
    weights: NDArray[np.float64]
    shares: NDArray[np.float64]
    rounds: NDArray[np.int64]
    generated: NDArray[np.int64]
    rollouts: NDArray[np.int64]
    trained: NDArray[np.int64]
    budget_exhausted: NDArray[np.bool_]
    wall_s: float
    metrics: dict[str, float] = field(default_factory=dict)
    log: dict[str, Any] | None = None
    seconds: NDArray[np.float64] | None = None  # (T,) wall-clock at the end of each step, where the backend has one

    def __post_init__(self) -> None:
        t, k = self.weights.shape
        e = self.eval_steps.shape[0]
        if self.accuracy.shape != (e, k) or self.shares.shape != (t, k):
            raise ValueError(
                f"run {self.method!r} seed {self.seed}: accuracy {self.accuracy.shape} must be (E={e}, K={k}) and "
                f"shares {self.shares.shape} must be (T={t}, K={k})"
            )
        for name in ("rounds", "generated", "rollouts", "trained", "budget_exhausted", "seconds"):
            if getattr(self, name) is not None and getattr(self, name).shape != (t,):
                raise ValueError(f"run {self.method!r} seed {self.seed}: {name} must have shape ({t},)")
        if e == 0 or self.eval_steps[0] != 0 or np.any(np.diff(self.eval_steps) <= 0) or self.eval_steps[-1] > t:
            raise ValueError(f"eval_steps must rise from 0 to at most {t}, got {self.eval_steps.tolist()}")

    @property
    def steps(self) -> int:
        return int(self.weights.shape[0])

    @property
    def final_accuracy(self) -> NDArray[np.float64]:
        return np.asarray(self.accuracy[-1], dtype=np.float64)

    @property
    def rollouts_at_evals(self) -> NDArray[np.int64]:
        """Cumulative generated rollouts when each evaluation was taken (E,)."""
        cumulative = np.concatenate([[0], np.cumsum(self.rollouts)])
        return np.asarray(cumulative[self.eval_steps], dtype=np.int64)

    def within_budget(self, rollouts: int) -> int:
        """Index of the last evaluation taken with at most `rollouts` generated rollouts (0 at least)."""
        return int(np.flatnonzero(self.rollouts_at_evals <= rollouts)[-1])

    def within_seconds(self, seconds: float) -> int:
        """Index of the last evaluation taken within `seconds` of wall-clock (0 at least); needs `seconds`."""
        if self.seconds is None:
            raise ValueError(f"run {self.method!r} seed {self.seed} has no clock (seconds is None)")
        at = np.concatenate([[0.0], self.seconds])[self.eval_steps]
        return int(np.flatnonzero(at <= seconds)[-1])


class Runner(Protocol):
    """What a backend supplies to the harness: a picklable callable that runs one method with one seed.

    steps: training steps of every run (for the progress bar). start_method: how worker processes start
    ("fork", or "spawn" where the backend holds threads, e.g. torch). on_step is called after every step.
    """

    @property
    def steps(self) -> int: ...

    @property
    def start_method(self) -> Literal["fork", "spawn"]: ...

    def __call__(self, method: str, seed: int, on_step: Callable[[], None] | None = None) -> RunRecord: ...
