"""The core holds the kept groups: groups are reported with opaque payloads (and keys the sampler assigns), the
batch hands back the payloads of the groups to train (fresh and carried) and to free, and the controller keeps the
payloads of kept groups between steps; a checkpoint saves `kept_payloads()` and hands them back when loading."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from mtgrpo_core import Controller


def _step(ctrl: Controller, rng: np.random.Generator, rate: float = 0.5) -> tuple[Any, list[int]]:
    """One conversation; each group's payload is a dict naming its key, so the test can follow it."""
    builder = ctrl.begin_step()
    reported: list[int] = []
    while (request := builder.next_request()) is not None:
        tasks = np.repeat(np.arange(ctrl.num_tasks), request.counts)
        rewards = (rng.random((tasks.size, 4)) < rate).astype(float)
        payloads = [{"row": i} for i in range(tasks.size)]
        keys = builder.report_arrays(tasks, rewards=rewards, payloads=payloads)
        for payload, key in zip(payloads, keys.tolist(), strict=True):
            payload["key"] = key
        reported += keys.tolist()
    return builder.finish(), reported


def test_keys_are_assigned_across_steps_and_payloads_come_back_with_their_groups() -> None:
    ctrl = Controller.from_method("mt-grpo:0.2", num_tasks=3, batch_size=12, group_size=4, seed=0)
    rng = np.random.default_rng(0)
    seen: list[int] = []
    kept_before: dict[int, Any] = {}
    carried_any = False
    for _ in range(6):
        batch, reported = _step(ctrl, rng)
        assert not set(reported) & set(seen) and reported == sorted(reported)  # a counter across steps
        seen += reported
        assert batch.payloads is not None and [p["key"] for p in batch.payloads] == batch.keys.tolist()
        for key, payload, stale in zip(batch.keys.tolist(), batch.payloads, batch.staleness.tolist(), strict=True):
            if stale:  # a carried group comes back with the payload it was reported with
                assert kept_before[key] is payload
                carried_any = True
        assert batch.released_payloads is not None
        assert [p["key"] for p in batch.released_payloads] == batch.released.tolist()
        kept_before = ctrl.kept_payloads()
        assert sorted(kept_before) == sorted(batch.kept.tolist())
        ctrl.end_step(_facts(batch))
    assert carried_any, "no group was carried: the test shows nothing"


def _facts(batch: Any) -> Any:
    from mtgrpo_core import StepFacts

    m = len(batch) * 4
    zeros = np.zeros(m)
    return StepFacts(
        sample_task=np.repeat(batch.tasks, 4), sample_advantage=zeros, surrogate_before=zeros, surrogate_after=zeros
    )


def test_a_checkpoint_restores_the_kept_payloads_and_the_key_counter() -> None:
    ctrl = Controller.from_method("mt-grpo:0.2", num_tasks=3, batch_size=12, group_size=4, seed=0)
    rng = np.random.default_rng(1)
    while True:
        batch, _ = _step(ctrl, rng)
        ctrl.end_step(_facts(batch))
        if len(batch.kept):
            break
    state, held = json.loads(json.dumps(ctrl.state_dict())), ctrl.kept_payloads()
    twin = Controller.from_method("mt-grpo:0.2", num_tasks=3, batch_size=12, group_size=4, seed=0)
    before = twin.state_dict()
    with pytest.raises(ValueError, match=r"pass the payload of each kept key .* missing keys"):
        twin.load_state_dict(state)
    with pytest.raises(ValueError, match=r"unexpected keys \[-1\]"):
        twin.load_state_dict(state, {**held, -1: "stray"})
    assert twin.state_dict() == before  # refused whole
    twin.load_state_dict(state, held)
    assert twin.state_dict() == ctrl.state_dict() and twin.kept_payloads() == held
    a, _ = _step(ctrl, np.random.default_rng(2))
    b, _ = _step(twin, np.random.default_rng(2))
    assert a.keys.tolist() == b.keys.tolist() and a.payloads == b.payloads


def test_bad_payloads_are_refused_and_change_nothing() -> None:
    ctrl = Controller.from_method("dapo", num_tasks=2, batch_size=4, group_size=2, seed=0)
    builder = ctrl.begin_step()
    request = builder.next_request()
    assert request is not None
    tasks = np.repeat(np.arange(2), request.counts)
    rewards = np.tile([0.0, 1.0], (tasks.size, 1))
    for bad in (["one"], "abc", 3):
        with pytest.raises(ValueError, match=rf"payloads must be a sequence of {tasks.size} objects"):
            builder.report_arrays(tasks, rewards=rewards, payloads=bad)  # type: ignore[arg-type]
    keys = builder.report_arrays(tasks, rewards=rewards, payloads=list(range(tasks.size)))
    assert keys.tolist() == list(range(tasks.size))  # the refused reports used no key


def test_release_kept_forgets_the_kept_groups_and_keeps_their_keys_retired() -> None:
    """A trainer that lost its kept data (verl after a restart) releases them: the next batch is planned without
    them, and a kept key reported again is refused."""
    ctrl = Controller.from_method("mt-grpo:0.2", num_tasks=3, batch_size=12, group_size=4, seed=0)
    rng = np.random.default_rng(1)
    kept: dict[int, Any] = {}
    for _ in range(6):
        batch, _ = _step(ctrl, rng)
        ctrl.end_step(_facts(batch))
        kept = ctrl.kept_payloads()
        if kept:
            break
    assert kept, "nothing was kept: the test shows nothing"
    assert ctrl.release_kept() == kept and ctrl.kept_payloads() == {}
    assert ctrl.sampler.carry is not None and len(ctrl.sampler.carry.offer()) == 0  # the next step offers none
    builder = ctrl.begin_step()
    with pytest.raises(ValueError, match="were trained or released at the last step"):
        builder.report_arrays([0], list(kept)[:1], rewards=[[0.0, 1.0, 0.0, 1.0]])
    with pytest.raises(RuntimeError, match="inside a step"):
        ctrl.release_kept()
