"""The streaming mode's held path (issue 21): a trainer reports an ahead request's groups as soon as they are
generated (`Controller.report_ahead`); the core holds them, with their payloads and in its JSON state, and reports
them at their due step's `begin_step()` exactly as an in-step report of that version; bad reports and states are
refused whole."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtgrpo_core import BatchBuilder, Controller, FixedRule, StepFacts
from mtgrpo_core.sampling.sampler import Batch
from tests.test_streaming import WEIGHTS, _groups, _sampler


def _controller(ahead: int = 1, carry: int = 1) -> Controller:
    return Controller(FixedRule(3, WEIGHTS), _sampler(ahead, carry))


def _end(ctrl: Controller) -> None:
    ctrl.end_step(StepFacts(rollout_task=np.zeros(0, np.int64), rollout_reward=np.zeros(0)))


def _rounds(builder: BatchBuilder, rng: np.random.Generator, key: int) -> int:
    while (request := builder.next_request()) is not None:
        tasks, keys, info = _groups(rng, request.counts, key)
        key += tasks.shape[0]
        builder.report_arrays(tasks, keys, informative=info, payloads=[f"g{k}" for k in keys.tolist()])
    return key


def _summary(batch: Batch) -> list[object]:
    r = batch.report
    parts = [batch.keys, batch.staleness, batch.kept, batch.released, r.realized_counts, r.generated, r.accepted]
    return [np.asarray(p).tolist() for p in parts] + [batch.payloads, batch.released_payloads]


@pytest.mark.parametrize("ahead", [1, 2])
def test_groups_reported_ahead_enter_their_due_step_as_if_reported_there(ahead: int) -> None:
    """The held path (report_ahead as soon as generated, in two parts, with a JSON resume midway) gives the same
    batches as reporting at the due step; ahead_due names the versions each step takes in."""
    in_step, held = _controller(ahead, ahead), _controller(ahead, ahead)
    rngs, key, due, stale = [np.random.default_rng(4), np.random.default_rng(4)], 0, {}, 0
    for t in range(30):
        if t == 12:  # resume the held path from JSON with held groups and their payloads
            state, payloads = json.loads(json.dumps(held.state_dict())), held.kept_payloads()
            assert bool(state["sampler"]["carry"]["held"]) == bool(due.get(t))
            assert set(payloads) >= {int(k) for _, keys, _ in due.get(t, {}).values() for k in keys}
            held = _controller(ahead, ahead)
            held.load_state_dict(state, payloads)
        assert sorted(held.ahead_due()) == sorted(due.get(t, {}))
        assert all(not counts.any() for counts in held.ahead_due().values())  # every group is held already
        a, b = in_step.begin_step(), held.begin_step()
        for version, (tasks, keys, info) in due.pop(t, {}).items():
            a.report_arrays(tasks, keys, informative=info, payloads=[f"g{k}" for k in keys.tolist()], version=version)
        end = _rounds(a, rngs[0], key)
        assert _rounds(b, rngs[1], key) == end
        batches = a.finish(), b.finish()
        assert _summary(batches[0]) == _summary(batches[1])
        stale += int((np.asarray(batches[1].staleness) >= 1).sum())
        requests = a.ahead(), b.ahead()
        assert (requests[0] is None) == (requests[1] is None)
        key = end
        if requests[0] is not None and requests[1] is not None:
            assert np.array_equal(requests[0].counts, requests[1].counts)
            tasks, keys, info = _groups(rngs[0], requests[0].counts, key)
            rngs[1].random(tasks.shape[0])  # the same draws on both paths
            key += tasks.shape[0]
            half = tasks.shape[0] // 2
            for part in (slice(0, half), slice(half, None)):
                pay = [f"g{k}" for k in keys[part].tolist()]
                held.report_ahead(t, tasks[part], keys[part], informative=info[part], payloads=pay)
            due.setdefault(t + ahead, {})[t] = (tasks, keys, info)
        _end(in_step), _end(held)
    assert in_step.state_dict()["sampler"]["carry"]["in_flight"] == held.state_dict()["sampler"]["carry"]["in_flight"]
    assert stale > 300  # most trained groups were generated ahead


def _held_after_step0(payloads: bool = True, ahead: int = 1) -> tuple[Controller, np.ndarray, np.ndarray]:
    """A controller after step 0 whose ahead request (version 0) is half reported early; returns it, the tasks and
    keys of the other half."""
    ctrl, rng = _controller(ahead=ahead, carry=2), np.random.default_rng(3)
    builder = ctrl.begin_step()
    _rounds(builder, rng, 0)
    builder.finish()
    request = builder.ahead()
    assert request is not None
    tasks = np.repeat(np.arange(3), request.counts)
    keys = np.arange(50_000, 50_000 + tasks.shape[0])
    half = tasks.shape[0] // 2
    rewards = np.tile([0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0], (half, 1))
    ctrl.report_ahead(0, tasks[:half], keys[:half], rewards=rewards, payloads=list(range(half)) if payloads else None)
    _end(ctrl)
    return ctrl, tasks[half:], keys[half:]


def test_bad_ahead_reports_are_refused_and_change_nothing() -> None:
    ctrl, tasks, keys = _held_after_step0()
    kept = next(iter(ctrl.sampler.carry.offer().keys.tolist()))  # type: ignore[union-attr]
    retired = int(ctrl.sampler.carry.state_dict()["retired"][0])  # type: ignore[union-attr]
    info = np.ones(tasks.shape[0], bool)
    before, payloads = ctrl.state_dict(), ctrl.kept_payloads()
    for call, error, message in [
        (lambda: ctrl.report_ahead(1, tasks, keys, informative=info), ValueError, r"version 1 has no ahead request"),
        (lambda: ctrl.report_ahead(-1, tasks, keys, informative=info), ValueError, "version must be >= 0"),
        (
            lambda: ctrl.report_ahead(0, np.concatenate([tasks, tasks]), np.arange(2 * tasks.size), informative=info),
            ValueError,
            r"informative must be a bool array of shape \(\d+,\)",
        ),
        (
            lambda: ctrl.report_ahead(0, np.concatenate([tasks, [0] * 9]), informative=np.ones(tasks.size + 9, bool)),
            ValueError,
            r"groups of task 0 for version 0, whose ahead request awaits only \d+ more",
        ),
        (lambda: ctrl.report_ahead(0, tasks[:2], [7, 7], informative=info[:2]), ValueError, "holds a key twice"),
        (lambda: ctrl.report_ahead(0, tasks[:1], [50_000], informative=info[:1]), ValueError, "already reported"),
        (lambda: ctrl.report_ahead(0, tasks[:1], [kept], informative=info[:1]), ValueError, "kept from an earlier"),
        (lambda: ctrl.report_ahead(0, tasks[:1], [retired], informative=info[:1]), ValueError, "trained or released"),
        (lambda: ctrl.report_ahead(0, tasks, keys, rewards=np.zeros((tasks.size, 3))), ValueError, r"shape \("),
        (
            lambda: ctrl.report_ahead(0, tasks, keys, informative=info, rewards=np.zeros((tasks.size, 8))),
            ValueError,
            "exactly one",
        ),
        (lambda: ctrl.report_ahead(0, tasks, keys, informative=info, payloads=[1]), ValueError, "payloads must be"),
        (lambda: ctrl.report_ahead(0, [5], [1], informative=info[:1]), ValueError, "tasks"),
    ]:
        with pytest.raises(error, match=message):
            call()
        assert ctrl.state_dict() == before and ctrl.kept_payloads() == payloads
    builder = ctrl.begin_step()  # step 1: version 0 is due and the step has begun
    with pytest.raises(ValueError, match=r"version 0 is due at step 1 and step 1 has begun: report these groups"):
        ctrl.report_ahead(0, tasks, keys, informative=info)
    with pytest.raises(ValueError, match=r"reported twice in this batch"):  # a held (now entered) key, again
        builder.report_arrays(tasks[:1], [50_000], informative=info[:1])
    builder.report_arrays(tasks, keys, informative=info, version=0)  # the late half, in the step as before
    assert ctrl.ahead_due() == {}
    with pytest.raises(ValueError, match="report_ahead needs the streaming mode"):
        Controller.from_method("mt-grpo", 3, 32, 8).report_ahead(0, [0], informative=[True])


def test_a_held_key_is_refused_in_a_report_before_its_due_step() -> None:
    ctrl, tasks, keys = _held_after_step0(ahead=2)
    assert {v: c.sum() for v, c in ctrl.sampler.carry.awaiting().items()} == {0: tasks.size}  # type: ignore[union-attr]
    assert ctrl.ahead_due() == {}  # version 0 is due at step 2
    builder = ctrl.begin_step()  # step 1
    with pytest.raises(ValueError, match=r"keys \[50000\] belong to ahead groups already reported"):
        builder.report_arrays(tasks[:1], [50_000], informative=[True], version=0)
    builder.report_arrays(tasks[:1], keys[:1], informative=[True], version=0)  # early, in a step: as before
    ctrl.report_ahead(0, tasks[1:], keys[1:], informative=np.ones(tasks.size - 1, bool))  # due step not begun


def test_held_groups_round_trip_through_json_and_bad_states_are_refused() -> None:
    ctrl, _, _ = _held_after_step0()
    state, payloads = json.loads(json.dumps(ctrl.state_dict())), ctrl.kept_payloads()
    held = state["sampler"]["carry"]["held"]
    assert len(held) == 1 and held[0]["version"] == 0 and held[0]["payloads"] == "held by the trainer"
    fresh = _controller(ahead=1, carry=2)
    blank = fresh.state_dict()
    for edit, passed, message in [
        (lambda h: None, {}, "missing keys"),
        (lambda h: None, {**payloads, -5: "x"}, r"unexpected keys \[-5\]"),
        (lambda h: h.update(version=3), payloads, r"\['version'\] is 3, but state\['in_flight'\] has \[0\]"),
        (lambda h: h.update(tasks=h["tasks"][:-1]), payloads, "must have the same length"),
        (lambda h: h.update(rewards=[r[:3] for r in h["rewards"]]), payloads, r"shape \("),
        (lambda h: h.update(rewards=None), payloads, "exactly one"),
        (lambda h: h.update(keys=[h["keys"][0]] * len(h["keys"])), payloads, "must be distinct"),
        (
            lambda h: h.update(tasks=[0] * len(h["tasks"]), keys=list(range(900, 900 + 99)), rewards=h["rewards"] * 99),
            payloads,
            "same length|more groups of version 0",
        ),
    ]:
        broken = json.loads(json.dumps(state))
        edit(broken["sampler"]["carry"]["held"][0])
        with pytest.raises((TypeError, ValueError), match=message):
            fresh.load_state_dict(broken, passed)
        assert fresh.state_dict() == blank
    fresh.load_state_dict(state, payloads)
    assert fresh.state_dict() == ctrl.state_dict() and fresh.kept_payloads() == payloads


def test_release_kept_frees_the_held_groups_and_returns_their_payloads() -> None:
    ctrl, tasks, keys = _held_after_step0()
    payloads = ctrl.kept_payloads()
    assert set(range(len(ctrl.sampler.carry._held[0].tasks))) <= set(payloads.values())  # type: ignore[union-attr]
    assert ctrl.release_kept() == payloads
    state = ctrl.state_dict()["sampler"]["carry"]
    assert state["held"] == [] and state["in_flight"] == {} and ctrl.kept_payloads() == {}
    assert 50_000 in state["retired"]  # a released key stays used
    with pytest.raises(ValueError, match="version 0 has no ahead request"):
        ctrl.report_ahead(0, tasks, keys, informative=np.ones(tasks.size, bool))
