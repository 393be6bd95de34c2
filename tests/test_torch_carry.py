"""Carry-over in the PyTorch loop: kept groups store the generating policy's log-probabilities and are trained with
the clipped ratio against them; without carry-over nothing is kept and nothing changes."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mtgrpo_backends.torch.config import TrainConfig
from mtgrpo_backends.torch.loop import train, train_step
from mtgrpo_backends.torch.model import CharGPT, completion_logprobs
from mtgrpo_backends.torch.rollout import training_tensors
from mtgrpo_backends.torch.state import make_state
from tests.test_torch_loop import TINY, TOK, _config, _suite


def test_kept_groups_carry_the_generating_policys_log_probs_and_are_trained_once() -> None:
    config = _config("mt-grpo:0.2", steps=8)
    config.sampler = replace(config.sampler, planner="joint", carry_over=1)
    state = make_state(config, CharGPT(TINY, seed=0), _suite(), TOK)
    trained_carried = 0
    for _ in range(8):
        snapshot = copy.deepcopy(state.model)
        kept_before = set(state.controller.kept_payloads())
        row = train_step(state, config, _suite(), TOK)
        trained_carried += sum(row["carried_counts"])
        assert set(state.controller.kept_payloads()).isdisjoint(
            kept_before
        )  # staleness bound 1: a kept group waits one step at most
        for group in (
            state.controller.kept_payloads().values()
        ):  # kept this step: log-probs of the policy before this step's update
            assert group.old_logp is not None and group.old_logp.shape == group.completions.shape
            ids, mask, start = training_tensors([group], TOK.pad_id, "cpu")
            with torch.no_grad():
                want = completion_logprobs(snapshot, ids, mask, start, config.temperature)
            torch.testing.assert_close(group.old_logp, want[:, : group.completions.shape[1]])
    assert trained_carried > 0


def test_without_carry_over_nothing_is_kept() -> None:
    config = _config("mt-grpo-paper:0.2", steps=3)
    state = make_state(config, CharGPT(TINY, seed=0), _suite(), TOK)
    for _ in range(3):
        row = train_step(state, config, _suite(), TOK)
        assert state.controller.kept_payloads() == {} and sum(row["carried_counts"]) == 0


def test_resume_with_kept_groups_continues_bit_for_bit(tmp_path: Path) -> None:
    def config(steps: int) -> TrainConfig:
        c = _config("mt-grpo:0.2", steps=steps)
        c.sampler = replace(c.sampler, planner="joint", carry_over=1)
        return c

    whole = train(config(4), CharGPT(TINY, seed=0), _suite(), TOK)
    ckpt = tmp_path / "run.pt"
    for steps in (1, 2, 3):  # the first checkpoint that holds kept groups
        first = train(config(steps), CharGPT(TINY, seed=0), _suite(), TOK, checkpoint=ckpt)
        if first.controller.kept_payloads():
            break
    assert first.controller.kept_payloads(), "no checkpoint held kept groups: the test would mean nothing"
    resumed = train(config(4), CharGPT(TINY, seed=0), _suite(), TOK, resume=ckpt)
    assert resumed.controller.state_dict() == whole.controller.state_dict()
    for a, b in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(a, b)


def _zero_for_add(problem, completion: str) -> float:  # type: ignore[no-untyped-def]
    """The add task never scores (a task without signal); the others as in the loop tests."""
    return 0.0 if "+" in problem.prompt else (1.0 if completion[:1].isdigit() else 0.0)


def test_a_task_without_signal_is_only_probed_in_the_loop() -> None:
    config = _config("mt-grpo:0.2", steps=10)
    config.sampler = replace(config.sampler, guard_floor=0.2)  # a short window (31 groups) keeps the test fast
    suite = _suite(reward=_zero_for_add)
    dead = [t.name for t in suite.tasks].index("add-easy")
    state = make_state(config, CharGPT(TINY, seed=0), suite, TOK)
    rows = [train_step(state, config, suite, TOK) for _ in range(10)]
    barren = [i for i, r in enumerate(rows) if dead in r["barren_tasks"]]
    assert barren, "the dead task was never recognised"
    for r in rows[barren[0] :]:
        assert r["generated"][dead] <= 2 and r["sampling_weights"][dead] == 0.0  # probes only: ceil(B / K) = 2 groups
        assert sum(r["realized_counts"]) == 4 or r["budget_exhausted"]


def test_a_checkpoint_without_its_kept_groups_is_refused(tmp_path: Path) -> None:
    config = _config("mt-grpo:0.2", steps=6)
    config.sampler = replace(config.sampler, planner="joint", carry_over=1)
    ckpt = tmp_path / "run.pt"
    for steps in (1, 2, 3):  # the first checkpoint that holds kept groups
        config.steps = steps
        if train(config, CharGPT(TINY, seed=0), _suite(), TOK, checkpoint=ckpt).controller.kept_payloads():
            break
    payload = torch.load(ckpt, weights_only=False)
    assert payload["kept"], "no checkpoint held kept groups: the test would mean nothing"
    payload["kept"] = []  # a checkpoint that lost the kept groups' data and log-probabilities
    torch.save(payload, ckpt)
    config.steps = 6
    with pytest.raises(ValueError, match=r"entry 'controller' does not load .*pass the payload of each kept key"):
        train(config, CharGPT(TINY, seed=0), _suite(), TOK, resume=ckpt)
