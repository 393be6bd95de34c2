"""Bad verl `mtgrpo` settings are refused when the settings are built (before any Ray task starts), naming the key;
a truncated or incomplete mtgrpo_state.json is refused naming the file and the field (issue 19, "Bad input")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")

from mtgrpo_backends.verl import checkpoint
from mtgrpo_backends.verl.config import MTGRPOSettings, check_trainer_config
from mtgrpo_backends.verl.replay_buffer import MTGRPOReplayBuffer
from tests.test_verl_config import _compose


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"tasks": "gsm8k"}, TypeError, "mtgrpo.tasks must be a list of task names, got the string 'gsm8k'; for one"),
        ({"rule_kwargs": {"lr": -1.0}}, ValueError, "mtgrpo.rule_kwargs {'lr': -1.0} (method 'mt-grpo:0.2'): lr must"),
        ({"rule_kwargs": {"alpha": 0.5}}, ValueError, "mtgrpo.rule_kwargs {'alpha': 0.5} (method 'mt-grpo:0.2'): "),
        (
            {"sampler": {"carry_over": 0, "max_rounds": -1}},
            ValueError,
            "mtgrpo.sampler.max_rounds -1: max_rounds must be >= 0",
        ),
        ({"sampler": {"carry_over": 0, "planner": "psychic"}}, ValueError, "planner must be one of"),
    ],
)
def test_bad_settings_are_refused_when_built(settings: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as raised:
        MTGRPOSettings.from_config(settings)
    assert message in str(raised.value)


def test_hydra_string_tasks_are_refused_and_a_list_of_one_is_fine() -> None:
    with pytest.raises(TypeError, match=r"for one task write mtgrpo\.tasks=\[gsm8k\]"):
        MTGRPOSettings.from_config(_compose("mtgrpo.tasks=gsm8k").mtgrpo)
    assert MTGRPOSettings.from_config(_compose("mtgrpo.tasks=[gsm8k]").mtgrpo).tasks == ("gsm8k",)


def test_the_trainer_config_check_uses_verls_batch_and_group_size() -> None:
    with pytest.raises(ValueError, match=r"data\.train_batch_size=1 is below the 2 tasks of mtgrpo\.tasks"):
        check_trainer_config(_compose("data.train_batch_size=1"))
    with pytest.raises(ValueError, match=r"group_size must be >= 2 when filtering='lenient' .*, got 1 \(B=4, N=1\)"):
        check_trainer_config(_compose("data.train_batch_size=4", "actor_rollout_ref.rollout.n=1"))
    check_trainer_config(_compose("data.train_batch_size=4", "actor_rollout_ref.rollout.n=2"))


def _state_file(tmp_path: Path, text: str) -> str:
    folder = tmp_path / "global_step_3"
    folder.mkdir()
    (folder / checkpoint.STATE_FILE).write_text(text)
    return str(folder)


def test_a_truncated_state_file_is_refused_naming_it(tmp_path: Path) -> None:
    text = json.dumps({"format": 1, "tasks": ["a"], "controller": {"step": 3}, "prompt_pool": {}})
    folder = _state_file(tmp_path, text[:40])
    with pytest.raises(ValueError, match=r"global_step_3/mtgrpo_state\.json is not valid JSON \(.*truncated"):
        checkpoint.read(folder, 3)


def test_a_state_file_without_a_field_is_refused_naming_it(tmp_path: Path) -> None:
    folder = _state_file(tmp_path, json.dumps({"format": 1, "tasks": ["a"], "prompt_pool": {}}))
    with pytest.raises(ValueError, match=r"mtgrpo_state\.json: field 'controller' must be the controller's state"):
        checkpoint.read(folder, 3)


@pytest.mark.parametrize(
    "ahead",
    [
        {"0": ["u1"]},
        [[0, ["u1", "u2"], [0]]],  # a task per uid
        [[0, ["u1"], [2]]],  # task ids < K
        [[1, ["u1"], [0]], [1, ["u2"], [1]]],  # versions increase
        [["0", ["u1"], [0]]],
    ],
)
def test_a_state_with_bad_ahead_requests_is_refused_and_changes_nothing(ahead: Any) -> None:
    buffer = MTGRPOReplayBuffer("colocate_async", {}, 8, "drop", {"tasks": ["a", "b"], "sampler": {"steps_ahead": 1}})
    buffer.attach(["a", "b"] * 4, 4, 2, lambda rows: [])
    state = buffer.state_dict()
    with pytest.raises(ValueError, match=r"the state: 'ahead' must be a list of \[version, \[uid, \.\.\.\], \[task"):
        buffer.load_state_dict({**state, "ahead": ahead})
    assert buffer.state_dict() == state
    with pytest.raises(ValueError, match=r"'ahead' holds \[1, 1\] groups per task in flight but the controller awaits"):
        buffer.load_state_dict({**state, "ahead": [[0, ["u1", "u2"], [1, 0]]]})  # nothing was requested ahead
    assert buffer.state_dict() == state
