"""Bad input (issue 19, "Bad input"): one error naming the setting, the value and what was expected, before any
warm-up, model build or run starts."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch

from mtgrpo_backends.cli import main
from mtgrpo_backends.torch.checkpoint import load_checkpoint, save_checkpoint
from mtgrpo_backends.torch.config import TrainConfig
from mtgrpo_backends.torch.model import CharGPT, CharGPTConfig
from mtgrpo_backends.torch.state import make_state
from mtgrpo_backends.torch.tasks import CharTokenizer, Suite, _add, _family, _reverse, _sort, get_suite
from tests.test_cli_errors import BENCH, DEMO, TRAIN, refused
from tests.test_cli_errors import checkpoint as checkpoint  # the fixture


@pytest.mark.parametrize("base", [DEMO, BENCH])
@pytest.mark.parametrize("value", [",", " , "])
def test_a_list_flag_without_values_is_refused(base: list[str], value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*base, "--methods", value]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # refused before the warm-up or any run (defaults are not run instead)
    assert "Error parsing --methods: expected at least one value" in " ".join(err.split())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*TRAIN, "--selection.exploration", "0.3"], "--selection.exploration 0.3: used only when prompts are skipped"),
        ([*TRAIN, "--pool-size", "9", "--selection.max-skips", "2"], "--selection.max-skips 2: used only when"),
        ([*BENCH, "--selection.min-retry", "0.1"], "--selection.min-retry 0.1: used only when prompts are skipped"),
        ([*BENCH, "--suite", "paper3-pool", "--selection.exploration", "0.2"], "expected --selection.skip history"),
        ([*TRAIN, "--selection.skip", "history", "--selection.exploration", "0.2"], "set --pool-size > 0"),
        ([*TRAIN, "--selection.exploration", "1.5"], "--selection.exploration 1.5: exploration must be in (0.0, 1.0)"),
        ([*BENCH, "--selection.exploration", "1.5"], "--selection.exploration 1.5: exploration must be in (0.0, 1.0)"),
        ([*BENCH, "--sampler.carry-over", "1"], "method 'grpo' with --sampler.carry-over 1: carry_over=1 needs a"),
        ([*DEMO, "--sampler.carry-over", "1"], "method 'grpo' with --sampler.carry-over 1: carry_over=1 needs a"),
    ],
)
def test_selection_and_sampler_settings_that_nothing_would_use(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(capsys, argv, message)


def test_a_pool_size_beyond_the_prompt_space_is_refused_without_generating(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = Suite._distinct

    def no_training_set(self: Suite, k: int, size: int, *args: Any) -> Any:
        assert args[-1] != "pool_size", "the refusal must come from the count of prompts, not from generating"
        return original(self, k, size, *args)

    monkeypatch.setattr(Suite, "_distinct", no_training_set)
    message = "task 'reverse-easy' yields fewer than pool_size=200000 distinct prompts outside the held-out sets: it "
    message += "has 10000 distinct prompts, 200 of them held out; expected pool_size <= 9800"
    for base in (TRAIN, DEMO):
        refused(capsys, [*base, "--pool-size", "200000"], message)
    tiny9 = [*TRAIN, "--suite", "tiny9", "--batch-size", "9"]
    refused(capsys, [*tiny9, "--pool-size", "7901"], "'add-easy' yields fewer than pool_size=7901")
    with pytest.raises(ValueError, match="expected pool_size <= 7900 for suite 'tiny9'"):
        get_suite("tiny9").training_set(0, 7901)  # add-easy: 90 x 90 pairs of two-digit numbers


@pytest.mark.parametrize(
    ("family", "digits", "count"),
    [
        (("reverse", _reverse), 1, 10),
        (("reverse", _reverse), 2, 100),
        (("sort", _sort), 2, 100),
        (("add", _add), 1, 81),
    ],
)
def test_the_prompt_space_is_counted_right(family: tuple[str, Any], digits: int, count: int) -> None:
    task = _family(*family, (digits,) * 3)[0]
    assert task.prompts == count
    suite = Suite(task.name, (task,), warmup_steps=0, eval_size=task.prompts // 4)
    capacity = task.prompts - suite.eval_size
    assert len(suite.training_set(0, capacity)) == capacity  # exactly the count: every prompt is reachable
    with pytest.raises(ValueError, match=f"expected pool_size <= {capacity} for suite '{task.name}'"):
        suite.training_set(0, capacity + 1)


def test_a_suite_pool_too_large_for_memory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = (resources.files("mtgrpo_backends.simulated") / "suites" / "paper3-pool.json").read_text()
    data = json.loads(raw)
    data["tasks"][0]["pool_size"] = 10**12
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(data))
    code = main([*BENCH, "--suite", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "tasks[0].pool_size: expected at most 10000000 prompts" in err and "got 1000000000000" in err
    for t in data["tasks"]:
        t["pool_size"] = 4_000_000
    path.write_text(json.dumps(data))
    assert main([*BENCH, "--suite", str(path)]) == 2
    assert "pool sizes that add up to at most 10000000 prompts" in capsys.readouterr().err


def _forged(source: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    payload = torch.load(source, weights_only=True)
    edit(payload)
    path = tmp_path / "forged.pt"
    torch.save(payload, path)
    return path


def _truncate(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda payload: payload.update({key: payload[key][: len(payload[key]) // 2]})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_truncate("controller"), "entry 'controller' is not valid JSON ("),
        (lambda p: p.pop("config"), "holds no 'config' entry; expected a checkpoint written by mtgrpo train"),
        (lambda p: p.update(step=5), "entry 'step' is 5 but entry 'history' (one row per step trained) holds 0 rows"),
        (lambda p: p.update(step=2, history=[{}, {}]), "entry 'step' is 2 but the controller's state (entry"),
        (lambda p: p.update(step=-1), "entry 'step' must be an integer >= 0, got -1"),
    ],
)
def test_a_truncated_or_forged_torch_checkpoint_is_refused(
    checkpoint: Path,
    tmp_path: Path,
    edit: Callable[[dict[str, Any]], None],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    forged = _forged(checkpoint, tmp_path, edit)
    refused(capsys, [*TRAIN, "--resume", str(forged)], f"--resume '{forged}'")
    refused(capsys, [*TRAIN, "--resume", str(forged)], message)


def test_a_truncated_prompt_pool_entry_is_refused(tmp_path: Path) -> None:
    config = TrainConfig(steps=1, batch_size=3, group_size=2, minibatches=1, eval_samples=1, pool_size=4)
    suite, tokenizer = get_suite("tiny3"), CharTokenizer()
    state = make_state(config, CharGPT(CharGPTConfig(vocab_size=tokenizer.vocab_size)), suite, tokenizer)
    save_checkpoint(tmp_path / "run.pt", state, config, suite)
    forged = _forged(tmp_path / "run.pt", tmp_path, _truncate("prompt_pool"))
    fresh = make_state(config, CharGPT(CharGPTConfig(vocab_size=tokenizer.vocab_size)), suite, tokenizer)
    with pytest.raises(ValueError, match=r"checkpoint '.*forged.pt': entry 'prompt_pool' is not valid JSON"):
        load_checkpoint(forged, fresh, config, suite)
