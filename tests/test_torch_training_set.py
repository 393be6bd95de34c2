"""A finite training set in the PyTorch loop: prompts come from the suite's fixed set through the core's pool; with
selection, prompts last seen uninformative are skipped, stand in for J_k, and the pool's history resumes exactly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mtgrpo_backends.torch import loop
from mtgrpo_backends.torch.checkpoint import save_checkpoint
from mtgrpo_backends.torch.config import TrainConfig
from mtgrpo_backends.torch.loop import train, train_step
from mtgrpo_backends.torch.model import CharGPT
from mtgrpo_backends.torch.state import make_state
from mtgrpo_backends.torch.tasks import get_suite
from mtgrpo_core.settings import SelectionSettings
from tests.test_torch_loop import TINY, TOK, _config, _suite

SIZE = 6  # prompts per task: a request of B = 4 groups comes back to them within a few steps


def _pooled(method: str = "dapo", steps: int = 6, selection: dict | None = None) -> TrainConfig:  # type: ignore[type-arg]
    config = _config(method, steps=steps, pool_size=SIZE, selection=selection)
    config.sampler = replace(config.sampler, filtering="strict")
    return config


def test_training_set_is_fixed_distinct_and_outside_the_held_out_sets() -> None:
    suite = get_suite("tiny3")
    for k in range(suite.num_tasks):
        prompts = [p.prompt for p in suite.training_set(k, 500)]
        assert len(set(prompts)) == 500
        assert not set(prompts) & {p.prompt for s in suite.eval_sets for p in s}
        assert prompts == [p.prompt for p in suite.training_set(k, 500)]  # a dataset: the same for every run
    with pytest.raises(ValueError, match="pool_size=20000 distinct prompts outside the held-out sets"):
        suite.training_set(0, 20_000)  # reverse-easy has 10,000 four-digit prompts: refused by count, at once


def test_a_run_draws_only_its_training_set_and_every_prompt_once_per_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    suite, config = _suite(), _config("grpo", steps=3, pool_size=SIZE)  # grpo: B = 4 groups a step, one request
    state = make_state(config, CharGPT(TINY, seed=0), suite, TOK)
    seen: list[tuple[int, str]] = []
    original = loop.generate_groups

    def spy(model, suite_, tok, problems, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.extend((k, p.prompt) for k, p in problems)
        return original(model, suite_, tok, problems, *args, **kwargs)

    monkeypatch.setattr(loop, "generate_groups", spy)
    for _ in range(3):
        train_step(state, config, suite, TOK)
    allowed = {(k, p.prompt) for k in range(3) for p in suite.training_set(k, SIZE)}
    assert len(seen) == 12 and set(seen) <= allowed
    for k in range(3):  # 12 draws of 3 tasks, 4 per task, within the first pass of 6: no repeats yet
        mine = [p for t, p in seen if t == k]
        assert len(mine) == len(set(mine))


def test_selection_skips_counts_stand_ins_and_logs_per_task(monkeypatch: pytest.MonkeyPatch) -> None:
    suite, config = _suite(), _pooled(selection={"exploration": 0.1})
    state = make_state(config, CharGPT(TINY, seed=0), suite, TOK)
    captured = []
    original = state.controller.end_step

    def spy(facts):  # type: ignore[no-untyped-def]
        captured.append(facts)
        return original(facts)

    monkeypatch.setattr(state.controller, "end_step", spy)
    rows = [train_step(state, config, suite, TOK) for _ in range(6)]
    skipped = 0
    for row, facts in zip(rows, captured, strict=True):
        sel = row["selection"]
        assert sel["handed_out"] == row["generated"]  # every prompt handed out is generated
        assert all(r <= h for r, h in zip(sel["retried"], sel["handed_out"], strict=True))
        assert all(i <= r for i, r in zip(sel["retried_informative"], sel["retried"], strict=True))
        fresh = sum(row["generated"]) * config.group_size
        stand_ins = np.asarray(facts.rollout_task).size - fresh
        assert stand_ins % config.group_size == 0 and stand_ins <= sum(sel["skipped"]) * config.group_size
        skipped += sum(sel["skipped"])
    assert skipped > 0, "nothing was skipped: the test would mean nothing"
    assert any(np.asarray(f.rollout_task).size > sum(r["generated"]) * 4 for r, f in zip(rows, captured, strict=True))


def test_without_a_training_set_the_loop_draws_fresh_prompts_unchanged() -> None:
    suite = _suite()
    runs = [train(_config("dapo", steps=2), CharGPT(TINY, seed=0), suite, TOK) for _ in range(2)]
    assert runs[0].training_set is None and runs[0].history[-1]["selection"] is None
    assert runs[0].controller.state_dict() == runs[1].controller.state_dict()


def test_resume_continues_the_pool_and_its_history_bit_for_bit(tmp_path: Path) -> None:
    suite = _suite()
    whole = train(_pooled(steps=6, selection={}), CharGPT(TINY, seed=0), suite, TOK)
    ckpt = tmp_path / "run.pt"
    train(_pooled(steps=3, selection={}), CharGPT(TINY, seed=0), suite, TOK, checkpoint=ckpt)
    resumed = train(_pooled(steps=6, selection={}), CharGPT(TINY, seed=0), suite, TOK, resume=ckpt)
    assert resumed.training_set is not None and whole.training_set is not None
    assert resumed.training_set.pool.state_dict() == whole.training_set.pool.state_dict()
    assert resumed.controller.state_dict() == whole.controller.state_dict()
    assert [r["selection"] for r in resumed.history] == [r["selection"] for r in whole.history]
    for a, b in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_without_the_pool_state_is_refused(tmp_path: Path) -> None:
    suite, config = _suite(), _pooled(steps=1, selection={})
    state = train(config, CharGPT(TINY, seed=0), suite, TOK)
    ckpt = tmp_path / "run.pt"
    save_checkpoint(ckpt, state, config, suite)
    payload = torch.load(ckpt, weights_only=True)
    payload["prompt_pool"] = None
    torch.save(payload, ckpt)
    with pytest.raises(ValueError, match="holds no prompt pool state"):
        train(_pooled(steps=2, selection={}), CharGPT(TINY, seed=0), suite, TOK, resume=ckpt)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"selection": {}}, "needs a finite training set: set pool_size > 0"),
        ({"pool_size": -1}, "pool_size must be >= 0, got -1"),
        ({"pool_size": 5, "selection": {"exploration": 1.5}}, r"exploration must be in \(0.0, 1.0\), got 1.5"),
        (
            {"pool_size": 5, "selection": {"filtering": "strict"}},
            r"selection sets \['filtering'\]: the pool classifies groups with the sampler's filter",
        ),
        ({"pool_size": 5, "selection": {"skip_rate": 0.5}}, r"selection has unknown keys \['skip_rate'\]"),
    ],
)
def test_bad_training_set_settings_are_refused(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        _config("dapo", **kwargs)


def test_selection_with_a_method_that_does_not_filter_is_refused() -> None:
    with pytest.raises(ValueError, match="with method 'grpo': selection needs a method that filters groups"):
        make_state(_config("grpo", pool_size=SIZE, selection={}), CharGPT(TINY, seed=0), _suite(), TOK)


def test_selection_at_its_defaults_counts_as_unset_and_a_resume_with_others_is_refused(
    tmp_path: Path,
) -> None:
    assert _pooled(selection={}).selection == SelectionSettings()  # the defaults, unset
    suite, ckpt = _suite(), tmp_path / "run.pt"
    train(_pooled(steps=1, selection={}), CharGPT(TINY, seed=0), suite, TOK, checkpoint=ckpt)
    same = _pooled(steps=2, selection={"exploration": 0.1})  # the same settings, spelled differently
    assert train(same, CharGPT(TINY, seed=0), suite, TOK, resume=ckpt).step == 2
    with pytest.raises(ValueError, match=r"--selection\.exploration 0\.1 in the checkpoint, 0\.3 in this run"):
        train(_pooled(steps=2, selection={"exploration": 0.3}), CharGPT(TINY, seed=0), suite, TOK, resume=ckpt)
