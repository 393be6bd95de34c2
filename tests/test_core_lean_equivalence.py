"""Second round of issue 19 item 8: the functions rewritten for the lean default's step time decide exactly as the
code they replaced (verbatim copies of the old code here, or in test_core_speed_equivalence, as the reference)."""

from __future__ import annotations

import numpy as np
import pytest

from mtgrpo_core.sampling import joint_planner
from tests.test_core_speed_equivalence import _case, _reference_joint_requests


@pytest.mark.parametrize("seed", range(2))
def test_joint_requests_that_grow_rows_decide_as_the_full_table(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The greedy grows only rows whose uncomputed gains it may still take: plans that grew rows once or more
    (narrow first widths) are the full table's plans."""
    grows: list[int] = []
    grow = joint_planner._FillTable.grow

    def counting(self, tasks, width):  # type: ignore[no-untyped-def]
        grows[-1] += 1
        grow(self, tasks, width)

    monkeypatch.setattr(joint_planner._FillTable, "grow", counting)
    rng = np.random.default_rng([19, 80, seed])
    for _ in range(600):
        deficit, alpha, beta, confidence, cap = _case(rng)
        grows.append(0)
        got = joint_planner.joint_requests(deficit, alpha, beta, confidence, cap)
        want = _reference_joint_requests(deficit, alpha, beta, confidence, cap)
        assert np.array_equal(got, want), (deficit, alpha, beta, confidence, cap)
    assert sum(g >= 2 for g in grows) >= 50  # rows grew after the first grid in many plans
