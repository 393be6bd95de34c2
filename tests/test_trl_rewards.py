"""The paper's reward protocol on hand-written responses, and the reasoning-gym task suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtgrpo_backends.trl.reasoning_tasks import PAPER_TASKS_9, build_dataset, gym_config, parse_task
from mtgrpo_backends.trl.rewards import (
    countdown_correct,
    extract_boxed,
    paper_reward,
    score_response,
)
from mtgrpo_core.protocols import CORRECT, FORMATTED, UNFORMATTED


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("so the answer is \\boxed{bob}", "bob"),
        ("\\boxed{a}\nthen \\boxed{b} and \\boxed{c}\n\n", "c"),
        ("\\boxed{(1+2)*{3}}", "(1+2)*{3}"),
        ("\\boxed{bob}\nI am done.", None),
        ("\\boxed{bob}\r\nI am done.", None),
        ("\\boxed{bob}\r\n\r\n \t\n", "bob"),  # blank lines after the answer are skipped
        ("\\boxed{bob}\u2028I am done.", "bob"),  # only "\n" ends a line: not U+2028,
        ("\\boxed{bob}\x0cI am done.", "bob"),  # a form feed,
        ("\\boxed{bob}\rI am done.", "bob"),  # or a lone carriage return
        ("\\boxed{bob}\n\u2028\n", "bob"),  # a line of whitespace is empty
        ("\\boxed{unclosed", None),
        ("no box at all", None),
        ("", None),
    ],
)
def test_extract_boxed_takes_the_last_box_on_the_last_non_empty_line(response: str, expected: str | None) -> None:
    assert extract_boxed(response) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("71 + 33 + 12 = 116\n\\boxed{71 + 33 + 12}", CORRECT),
        ("\\boxed{(71 - 12) + 33 + 12 * 0 + 12}", FORMATTED),  # 12 used three times, 0 not given
        ("\\boxed{71 + 33 + 33}", FORMATTED),  # 33 reused, 12 missing
        ("\\boxed{71 + 33}", FORMATTED),  # 12 missing
        ("\\boxed{71 + 33 + 12 + 0}", FORMATTED),  # a number that was not given
        ("\\boxed{71 * 33 / 12}", FORMATTED),  # all numbers once, wrong value
        ("\\boxed{-12 + 71 + 33 + 24}", FORMATTED),
        ("\\boxed{12 - -104}", FORMATTED),
        ("\\boxed{__import__('os').system('true')}", FORMATTED),  # parsed, never run
        ("\\boxed{71 + 33 + 12}\nthat was it", UNFORMATTED),  # boxed on an earlier line
        ("71 + 33 + 12", UNFORMATTED),
    ],
)
def test_countdown_checks_arithmetic_and_each_number_once(response: str, expected: float) -> None:
    assert score_response("countdown-easy", response, numbers=[71, 33, 12], target=116) == expected


def test_countdown_exact_fractions_division_by_zero_and_unary_minus() -> None:
    assert countdown_correct("(6 / 4) * 2", [6, 4, 2], 3)  # needs exact 1.5, not integer division
    assert not countdown_correct("6 / (2 - 2) + 4", [6, 2, 2, 4], 3)
    assert countdown_correct("-1 + 72 * (89 - 77) / 1", [1, 72, 1, 77, 89], 863)  # reasoning-gym's own style
    assert not countdown_correct("2 ** 3", [2, 3], 8)
    assert not countdown_correct("1.5 * 2", [1.5, 2], 3)  # type: ignore[list-item]
    assert not countdown_correct("(" * 300 + "1" + ")" * 300, [1], 1)  # too long: refused, not evaluated


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Reasoning...\n\\boxed{Bob}", CORRECT),
        ("\\boxed{  bob }  \n", CORRECT),
        ("\\boxed{alice}", FORMATTED),
        ("\\boxed{bob}\nFinal answer above.", UNFORMATTED),
        ("The person is bob.", UNFORMATTED),
    ],
)
def test_zebra_exact_match_after_lower_strip(response: str, expected: float) -> None:
    assert score_response("zebra-medium", response, answer="bob") == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("\\boxed{0 0 7 0}", CORRECT),
        ("grid:\n\\boxed{ 0 0 7 0 }", CORRECT),
        ("\\boxed{0  0 7 0}", FORMATTED),  # a double space is not the grid
        ("\\boxed{0070}", FORMATTED),
        ("\\boxed{0, 0, 7, 0}", FORMATTED),
        ("\\boxed{0 0 7 0}\n", CORRECT),
        ("\\boxed{0 0 7 0}\nDone", UNFORMATTED),
    ],
)
def test_arc_grid_spacing_must_match(response: str, expected: float) -> None:
    assert score_response("arc1d-hard", response, answer="0 0 7 0") == expected


def test_paper_reward_scores_mixed_rows_and_conversations() -> None:
    completions = [
        [{"role": "assistant", "content": "\\boxed{71 + 33 + 12}"}],
        "\\boxed{carol}",
        "no answer",
    ]
    rewards = paper_reward(
        completions,
        task=["countdown-easy", "zebra-easy", "arc1d-easy"],
        answer=["71 + 33 + 12", "bob", "1 2"],
        numbers=[[71, 33, 12], [], []],
        target=[116, None, None],
        trainer_state=None,
    )
    assert rewards == [CORRECT, FORMATTED, UNFORMATTED]


def test_bad_task_names_and_missing_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="task must start with one of"):
        score_response("sudoku-easy", "\\boxed{1}", answer="1")
    with pytest.raises(ValueError, match="needs numbers and target"):
        score_response("countdown-easy", "\\boxed{1 + 2}")
    with pytest.raises(ValueError, match="needs the reference answer"):
        score_response("zebra-easy", "\\boxed{bob}")
    with pytest.raises(ValueError, match="'<family>-<level>'"):
        parse_task("zebra-extreme")


def test_difficulty_settings_follow_the_paper() -> None:
    assert gym_config("countdown-hard") == {"min_numbers": 5, "max_numbers": 5}
    assert gym_config("zebra-medium") == {"num_people": 4, "num_characteristics": 4}
    assert gym_config("arc1d-easy") == {"min_size": 10, "max_size": 10}
    assert gym_config("countdown-very_hard") == {"min_numbers": 6, "max_numbers": 6}  # the reference's test level
    assert len(PAPER_TASKS_9) == 9 and not any(t.endswith("very_hard") for t in PAPER_TASKS_9)


def test_dataset_rows_are_seeded_boxed_and_scored_correct_by_their_own_answers(tmp_path: Path) -> None:
    tasks = ["countdown-easy", "countdown-medium", "zebra-easy", "arc1d-easy", "arc1d-hard"]
    ds = build_dataset(tasks, size=4, seed=5, chat=False, cache_dir=tmp_path)
    assert ds.num_rows == 20 and ds["task"] == [t for t in tasks for _ in range(4)]
    assert all(p.rstrip().endswith("\\boxed{} on the last line.") for p in ds["prompt"])
    answers = [f"Let me think.\n\\boxed{{{a}}}" for a in ds["answer"]]
    cols = {k: ds[k] for k in ("task", "answer", "numbers", "target")}
    assert paper_reward(answers, **cols) == [CORRECT] * 20
    assert len(list(tmp_path.iterdir())) == len(tasks)  # one cache file per task
    again = build_dataset(tasks, size=4, seed=5, chat=False, cache_dir=tmp_path)
    assert again.to_list() == ds.to_list()
    fresh = build_dataset(["arc1d-easy"], size=4, seed=5, chat=True)
    assert fresh["prompt"][0] == [{"role": "user", "content": ds["prompt"][12]}]
    test_split = build_dataset(["arc1d-easy"], size=4, seed=5, split="test", chat=False)
    assert set(test_split["prompt"]).isdisjoint(ds["prompt"][12:16])


def test_build_dataset_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size must be"):
        build_dataset(["arc1d-easy"], size=0)
    with pytest.raises(ValueError, match="split must be"):
        build_dataset(["arc1d-easy"], size=2, split="val")
    with pytest.raises(ValueError, match="distinct task names"):
        build_dataset(["arc1d-easy", "arc1d-easy"], size=2)
