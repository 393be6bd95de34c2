"""Test helper: a caller that answers sampler requests with groups accepted at known per-task rates."""

from __future__ import annotations

import numpy as np

from mtgrpo_core.sampling.sampler import BatchBuilder, Request


class AcceptanceCaller:
    """Generates groups whose informativeness is Bernoulli(1 - filter_rate[k]); keys count up from first_key
    (carry-over needs keys unique across steps: a caller per step starts where the last one stopped)."""

    def __init__(self, filter_rate: np.ndarray, seed: int, first_key: int = 0) -> None:
        self.filter_rate = np.asarray(filter_rate, dtype=np.float64)
        self.rng = np.random.default_rng(seed)
        self.next_key = first_key
        self.informative: dict[int, bool] = {}

    def answer(self, builder: BatchBuilder, request: Request) -> None:
        tasks = np.repeat(np.arange(request.counts.shape[0]), request.counts)
        keys = np.arange(self.next_key, self.next_key + tasks.shape[0])
        self.next_key += tasks.shape[0]
        info = self.rng.random(tasks.shape[0]) >= self.filter_rate[tasks]
        self.informative.update(zip(keys.tolist(), info.tolist(), strict=True))
        order = self.rng.permutation(tasks.shape[0])  # reports arrive in any order, in two chunks
        half = order.shape[0] // 2
        for part in (order[:half], order[half:]):
            builder.report_arrays(tasks[part], keys[part], informative=info[part])

    def run(self, builder: BatchBuilder):  # type: ignore[no-untyped-def]
        while (request := builder.next_request()) is not None:
            self.answer(builder, request)
        return builder.finish()
