"""The pipelined PyTorch loop (sampler.steps_ahead >= 1): the worker generates the next batches' groups with this
step's policy while the update runs; they are trained one step later against their generating log-probabilities,
a run is reproducible given its seed, and a checkpoint with groups in flight resumes bit for bit."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mtgrpo_backends.cli import main
from mtgrpo_backends.torch import loop
from mtgrpo_backends.torch.config import TrainConfig
from mtgrpo_backends.torch.loop import train, train_step
from mtgrpo_backends.torch.model import CharGPT, completion_logprobs
from mtgrpo_backends.torch.rollout import GeneratedGroup, training_tensors
from mtgrpo_backends.torch.state import make_state
from tests.test_torch_loop import TINY, TOK, _config, _suite


def _pipelined(steps: int, method: str = "mt-grpo:0.2", ahead: int = 1, carry: int = 1) -> TrainConfig:
    config = _config(method, steps=steps)
    config.sampler = replace(config.sampler, steps_ahead=ahead, carry_over=carry)
    return config


def _logp(model: torch.nn.Module, groups: list[GeneratedGroup]) -> torch.Tensor:
    ids, mask, start = training_tensors(groups, TOK.pad_id, "cpu")
    with torch.no_grad():
        return completion_logprobs(model, ids, mask, start)


def test_ahead_groups_are_trained_a_step_later_against_their_generating_log_probs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _pipelined(5)
    state = make_state(config, CharGPT(TINY, seed=0), _suite(), TOK)
    seen: list[tuple[torch.Tensor, list[GeneratedGroup], torch.Tensor]] = []

    def spy(pre_logp: torch.Tensor, chosen: list[GeneratedGroup], n: int) -> torch.Tensor:
        old = generating(pre_logp, chosen, n)
        seen.append((pre_logp, chosen, old))
        return old

    generating = loop._generating_logprobs
    monkeypatch.setattr(loop, "_generating_logprobs", spy)
    before = [p.detach().clone() for p in state.model.parameters()]
    snapshots: dict[int, torch.nn.Module] = {}
    stale = 0
    for step in range(5):
        snapshots[step] = copy.deepcopy(state.model)  # the policy of this step, which generates its ahead groups
        row = train_step(state, config, _suite(), TOK)
        assert np.isfinite(row["loss"]) and sum(row["realized_counts"]) == 4
        held = _held(state)  # collected before the step ends, held by the controller until the next one
        assert set(held) == {step}
        groups = held[step]
        width = groups[0].completions.shape[1]  # one generation: one width
        want = _logp(snapshots[step], groups)[:, :width]
        torch.testing.assert_close(torch.cat([g.old_logp for g in groups if g.old_logp is not None]), want)
        pre, chosen, old = seen[-1]
        for j, g in enumerate(chosen):
            if g.old_logp is None:
                continue
            stale += 1
            rows = old[j * 4 : (j + 1) * 4, : g.old_logp.shape[1]]
            assert torch.equal(rows, g.old_logp)  # trained against the stored log-probs, not the current policy's
            assert not torch.equal(rows, pre[j * 4 : (j + 1) * 4, : g.old_logp.shape[1]])
        if step >= 1:
            assert row["mean_staleness"] > 0
    assert stale > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, state.model.parameters(), strict=True))


def _held(state: Any) -> dict[int, list[GeneratedGroup]]:
    """The groups generated ahead that the controller holds, by version (the step that generated them)."""
    payloads = state.controller.kept_payloads()
    held: dict[int, list[GeneratedGroup]] = {}
    for entry in state.controller.state_dict()["sampler"]["carry"]["held"]:
        held.setdefault(entry["version"], []).extend(payloads[key] for key in entry["keys"])
    return held


def _same_run(a: Any, b: Any) -> None:
    assert a.controller.state_dict() == b.controller.state_dict()
    for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(x, y)

    def strip(history: list[dict[str, Any]]) -> str:  # as JSON text: NaN (a task not generated) equals itself
        return json.dumps([{k: x for k, x in row.items() if k != "seconds"} for row in history])

    assert strip(a.history) == strip(b.history) and a.evals == b.evals
    assert torch.equal(a.worker.generator.get_state(), b.worker.generator.get_state())


@pytest.mark.parametrize(("method", "ahead"), [("mt-grpo:0.2", 1), ("dapo", 2)])
def test_a_resume_with_groups_in_flight_continues_bit_for_bit(tmp_path: Path, method: str, ahead: int) -> None:
    whole = train(_pipelined(5, method, ahead, ahead), CharGPT(TINY, seed=0), _suite(), TOK)
    _same_run(train(_pipelined(5, method, ahead, ahead), CharGPT(TINY, seed=0), _suite(), TOK), whole)
    ckpt = tmp_path / "run.pt"
    first = train(_pipelined(2, method, ahead, ahead), CharGPT(TINY, seed=0), _suite(), TOK, checkpoint=ckpt)
    assert sorted(_held(first)) == list(range(2 - ahead, 2))  # generated, held until their step
    saved = torch.load(ckpt, weights_only=True)
    held = json.loads(saved["controller"])["sampler"]["carry"]["held"]
    assert {h["version"] for h in held} == set(range(2 - ahead, 2))
    assert {k for h in held for k in h["keys"]} <= {key for key, _ in saved["kept"]}  # their groups, as payloads
    _same_run(train(_pipelined(5, method, ahead, ahead), CharGPT(TINY, seed=0), _suite(), TOK, resume=ckpt), whole)


def test_a_checkpoint_without_its_groups_in_flight_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.pt"
    train(_pipelined(2), CharGPT(TINY, seed=0), _suite(), TOK, checkpoint=ckpt)
    payload = torch.load(ckpt, weights_only=True)
    held = {k for h in json.loads(payload["controller"])["sampler"]["carry"]["held"] for k in h["keys"]}
    kept = payload["kept"]
    payload["kept"] = [[key, group] for key, group in kept if key not in held]  # lost the groups generated ahead
    torch.save(payload, ckpt)
    with pytest.raises(ValueError, match=r"entry 'controller' does not load \(state\['held'\]\[0\]\['payloads'\]"):
        train(_pipelined(4), CharGPT(TINY, seed=0), _suite(), TOK, resume=ckpt)
    payload["kept"] = kept
    payload["ahead_generator"] = None
    torch.save(payload, ckpt)
    with pytest.raises(ValueError, match="holds no 'ahead_generator' entry, but this run generates ahead"):
        train(_pipelined(4), CharGPT(TINY, seed=0), _suite(), TOK, resume=ckpt)


@pytest.mark.parametrize(
    ("method", "ahead", "carry", "message"),
    [
        ("mt-grpo:0.2", 2, None, "steps_ahead=2 needs carry_over >= 2"),
        ("grpo", 1, None, "steps_ahead=1 needs carry_over >= 1"),
    ],
)
def test_streaming_without_a_long_enough_age_bound_is_refused(
    method: str, ahead: int, carry: int | None, message: str
) -> None:
    config = _config(method)
    config.sampler = replace(config.sampler, steps_ahead=ahead, carry_over=carry)
    with pytest.raises(ValueError, match=message):
        make_state(config, CharGPT(TINY, seed=0), _suite(), TOK)


def test_the_cli_names_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--quiet", "--sampler.steps-ahead", "2"]) == 2
    assert "with --sampler.steps-ahead 2: steps_ahead=2 needs carry_over >= 2" in capsys.readouterr().err
    assert main(["train", "--quiet", "--sampler.steps-ahead", "-1"]) == 2
    assert "steps_ahead must be >= 0, got -1" in capsys.readouterr().err
