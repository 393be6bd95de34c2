"""The verl backend's fact collector on tests/test_signal_path.py's fixed step gives the same TaskSignals as every
other backend (a failed group, verl's padding rows and a row without response tokens are not samples)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")

from mtgrpo_backends.verl.step_facts import row_groups, step_facts
from mtgrpo_core import step_signals
from tests.test_signal_path import GROUP_TASK, REWARDS, TRAINED, N, _fixed_step, _reference, _same


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_verl_facts_give_the_reference_signals(reduce: str) -> None:
    adv, before, after = _fixed_step()
    uids = [f"u{g}" for g in range(len(GROUP_TASK) + 1)]  # one more group: generated, failed
    group_task = np.append(GROUP_TASK, 1)
    rewards = np.vstack([REWARDS, np.full(N, np.nan)])
    finished = np.arange(len(uids)) < len(GROUP_TASK)
    keys = [f"{uids[g]}_{j}_0" for g in TRAINED for j in range(N)] + ["pad_0_0", f"{uids[5]}_0_1"]
    groups = row_groups(keys, {uid: g for g, uid in enumerate(uids)})
    assert groups.tolist() == [g for g in TRAINED for _ in range(N)] + [-1, 5]
    valid = np.ones(len(keys), dtype=bool)
    valid[-1] = False  # an output without response tokens
    row_adv = np.concatenate([adv.ravel(), [0.0, 0.3]])
    surrogate = (np.concatenate([before.ravel(), [0.0, 0.0]]), np.concatenate([after.ravel(), [0.0, 9.0]]))
    facts = step_facts(group_task, rewards, finished, groups, row_adv, valid, surrogate)
    want = step_signals(_reference(), 3, improvement_reduce=reduce)
    assert _same(step_signals(facts, 3, improvement_reduce=reduce), want)
