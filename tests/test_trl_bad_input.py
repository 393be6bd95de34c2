"""Bad MTGRPOConfig settings are refused when the config is built, naming the field, the value and what was
expected; a checkpoint's mtgrpo_state.json that is truncated, lacks a field or was written with other sampler
settings is refused naming the file, the field and both values (issue 19, "Bad input")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

from mtgrpo_backends.trl import MTGRPOConfig
from mtgrpo_backends.trl import checkpoint_state as ckpt
from tests.test_trl_trainer import make_trainer

BASE: dict[str, Any] = {
    "output_dir": "unused",
    "report_to": [],
    "use_cpu": True,
    "bf16": False,
    "per_device_train_batch_size": 8,
}
BASE |= {"num_generations": 2}


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"tasks": "easy"}, TypeError, "tasks must be a list of task names, got the string 'easy'; for one task write"),
        ({"selection": "{exploration: 0.1}"}, ValueError, "selection '{exploration: 0.1}' is not valid JSON (Expect"),
        ({"rule_kwargs": "{'lr': 0.1}"}, ValueError, "rule_kwargs \"{'lr': 0.1}\" is not valid JSON"),
        (
            {"selection": {"filtering": "strict"}},
            ValueError,
            "selection sets ['filtering']: the pool classifies",
        ),
        ({"selection": {"correct_reward": 0.5}}, ValueError, "set sampler.filtering / correct_reward instead"),
        ({"selection": {"explore": 0.2}}, ValueError, "unknown keys ['explore']; expected keys among ['exploration'"),
        ({"selection": {"exploration": 1.5}}, ValueError, "selection.exploration 1.5: exploration must be in"),
        (
            {"method": "grpo", "selection": {}},
            ValueError,
            "'grpo': selection needs a method that filters",
        ),
        ({"rule_kwargs": {"lr": -1.0}}, ValueError, "rule_kwargs {'lr': -1.0} (method 'mt-grpo:0.2'): lr must be in"),
        (
            {"rule_kwargs": {"num_tasks": 3}},
            ValueError,
            "rule_kwargs sets num_tasks: the task count comes",
        ),
        ({"method": "grpo", "sampler": {"carry_over": 1}}, ValueError, "method 'grpo' with sampler.carry_over 1: carr"),
        ({"sampler": {"max_rounds": -1}}, ValueError, "sampler.max_rounds -1: max_rounds must be >= 0, got -1"),
        ({"sampler": {"planer": "joint"}}, ValueError, "sampler has unknown keys ['planer']; expected keys among"),
        ({"tasks": ["a", "b", "c", "d", "e"]}, ValueError, "holds 4 groups of num_generations=2, fewer than the 5"),
        ({"scale_rewards": "batch"}, ValueError, "method 'mt-grpo:0.2' filters groups, which changes batch-level"),
    ],
)
def test_bad_settings_are_refused_when_the_config_is_built(
    settings: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        MTGRPOConfig(**BASE, **settings)
    assert message in str(raised.value)


def test_json_settings_are_parsed_and_checked() -> None:
    config = MTGRPOConfig(**BASE, selection='{"exploration": 0.2}', rule_kwargs='{"lr": 0.01}', tasks=["easy"])
    assert config.selection == {"exploration": 0.2} and config.rule_kwargs == {"lr": 0.01}
    assert config.tasks == ["easy"]


@pytest.fixture
def trainer_and_state(tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    trainer = make_trainer(tmp_path / "run", method="mt-grpo:0.2")  # carry-over 1 (the lean default)
    return trainer, ckpt.state_dict(trainer)


def _write(folder: Path, text: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ckpt.STATE_FILE).write_text(text)
    return str(folder)


def test_a_truncated_state_file_is_refused_naming_it(
    trainer_and_state: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    trainer, state = trainer_and_state
    text = json.dumps(state)
    folder = _write(tmp_path / "checkpoint-1", text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"checkpoint '.*checkpoint-1': mtgrpo_state.json is not valid JSON \("):
        ckpt.check(trainer, folder)


def test_a_state_file_without_a_field_is_refused_naming_it(
    trainer_and_state: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    trainer, state = trainer_and_state
    state.pop("controller")
    folder = _write(tmp_path / "checkpoint-1", json.dumps(state))
    with pytest.raises(ValueError, match=r"field 'controller' of mtgrpo_state\.json must be the controller's state"):
        ckpt.check(trainer, folder)


def test_a_resume_with_another_carry_over_names_the_setting_and_both_values(
    trainer_and_state: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    trainer, state = trainer_and_state
    state["controller"]["sampler"]["config"]["carry_over"] = 0
    folder = _write(tmp_path / "checkpoint-1", json.dumps(state))
    with pytest.raises(ValueError) as raised:
        ckpt.check(trainer, folder)
    message = str(raised.value)
    assert "was written with other sampler settings: carry_over 0 in the checkpoint, 1 now; resume with" in message
    assert "{" not in message  # the differing setting, not two whole config dicts
    with pytest.raises(ValueError, match="carry_over 0 in the checkpoint, 1 now"):
        ckpt.load_state_dict(trainer, state)
