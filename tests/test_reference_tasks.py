"""The reference-faithful task suite: prompts in the reference data's format, and the reference's scorings.

The formats below were read from the reference's data/combined/test_*.parquet and train_countdown.parquet
(rsshyam/MT-GRPO; docs/fidelity.md); the scoring cases are the disagreements listed in issue 14.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtgrpo_backends.trl.reasoning_tasks import REFERENCE_TEST_TASKS, build_dataset, gym_config
from mtgrpo_backends.trl.reference_prompts import reference_prompt
from mtgrpo_backends.trl.rewards import (
    countdown_correct_reference,
    extract_boxed_literal,
    reference_reward,
    score_response,
)
from mtgrpo_core.protocols import CORRECT, FORMATTED, UNFORMATTED

_HEAD = re.escape(
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer."
    "\nUser: "
)
_TAIL = re.escape("\nAssistant: Let me solve this step by step.")
_FORMAT = {
    "countdown": re.compile(
        _HEAD + r"Using the numbers \[(?P<numbers>\d+(?:, \d+)*)\], create an equation that equals (?P<target>\d+)\. "
        r"You can only use basic arithmetic operations \(\+, -, \*, /\) and each number should be used exactly "
        r"once\. Return the final answer in \\boxed\{\}, for example \\boxed\{\(1 \+ 2\) / 3\}\." + _TAIL
    ),
    "zebra": re.compile(
        _HEAD + r"This is a logic puzzle\. There are (?P<size>\d) houses .*?\n\n(?:\d+\. [^\n]+\n)+\n"
        r"What is Name of the person who lives in House 1\? Provide only the name of the person as your final "
        r"answer and put in in \\boxed\{\}, for example: \\boxed\{Alice\}\." + _TAIL,
        re.DOTALL,
    ),
    "arc1d": re.compile(
        _HEAD + r"Find the common rule that maps an input grid to an output grid, given the examples below\.\n\n"
        r"(?:Example \d:\nInput:  [\d ]+\nOutput: [\d ]+\n\n){3}Below is a test input grid\. Predict the "
        r"corresponding output grid by applying the rule you found\. Describe how you derived the rule and your "
        r"overall reasoning process in detail before you submit your answer\. Your final answer must be placed in "
        r"\\boxed\{\} and should be just the test output grid itself\.\n\nInput:\n(?P<grid>\d+(?: \d+)*)" + _TAIL
    ),
}
# the reference's first countdown test row, verbatim
_REFERENCE_COUNTDOWN_ROW = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer.\n"
    "User: Using the numbers [8, 73, 96], create an equation that equals 841. You can only use basic arithmetic "
    "operations (+, -, *, /) and each number should be used exactly once. Return the final answer in \\boxed{}, "
    "for example \\boxed{(1 + 2) / 3}.\nAssistant: Let me solve this step by step."
)
_LEVEL_SIZE = {"easy": 0, "medium": 1, "hard": 2, "very_hard": 3}


def test_reference_countdown_prompt_is_the_reference_row_verbatim() -> None:
    assert reference_prompt("countdown", "", [8, 73, 96], 841) == _REFERENCE_COUNTDOWN_ROW


def test_zebra_and_arc_questions_get_the_reference_endings() -> None:
    gym_zebra = "This is a logic puzzle.\n\n1. Bob is in the first house.\n\nWhat is Name of the person who lives in "
    zebra = reference_prompt("zebra", gym_zebra + "House 1?? Provide only the name of the person as your final answer.")
    assert zebra.endswith(
        "House 1? Provide only the name of the person as your final answer and put in in \\boxed{}, for example: "
        "\\boxed{Alice}.\nAssistant: Let me solve this step by step."
    )
    gym_arc = "Rule. Your final answer should be just the test output grid itself.\n\nInput:\n1 2"
    arc = reference_prompt("arc1d", gym_arc)
    assert "Rule. Your final answer must be placed in \\boxed{} and should be just the test output grid" in arc
    with pytest.raises(RuntimeError, match="no longer ends with"):
        reference_prompt("zebra", "What is Name of the person who lives in House 1?")
    with pytest.raises(ValueError, match="needs numbers and a target"):
        reference_prompt("countdown", "", [1, 2])


def _check_row(row: dict[str, Any]) -> None:
    """One generated row against the reference's format and against its own columns."""
    family, level = row["task"].split("-", 1)
    match = _FORMAT[family].fullmatch(row["prompt"])
    assert match is not None, row["prompt"]
    assert row["split"] == "test"
    if family == "countdown":
        assert [int(n) for n in match["numbers"].split(", ")] == row["numbers"]
        assert len(row["numbers"]) == 3 + _LEVEL_SIZE[level] and all(1 <= n <= 100 for n in row["numbers"])
        assert int(match["target"]) == row["target"] and 1 <= row["target"] <= 1000
    elif family == "zebra":
        size = 3 + _LEVEL_SIZE[level]
        assert int(match["size"]) == size and row["prompt"].count("\n - ") == size
    else:
        length = 10 * (1 + _LEVEL_SIZE[level])
        assert len(match["grid"].split()) == length == len(row["answer"].split())
    assert score_response(row["task"], f"\\boxed{{{row['answer']}}}", **_fields(row), scoring="reference-test") == 1


def _fields(row: dict[str, Any]) -> dict[str, Any]:
    return {"answer": row["answer"], "numbers": row["numbers"], "target": row["target"]}


def test_generated_reference_prompts_follow_the_reference_format() -> None:
    countdown = [t for t in REFERENCE_TEST_TASKS if t.startswith("countdown")]
    arc = [t for t in REFERENCE_TEST_TASKS if t.startswith("arc1d")]
    rows = build_dataset(countdown, size=40, seed=3, split="test", suite="reference").to_list()
    small = [*arc, "zebra-easy", "zebra-medium"]
    rows += build_dataset(small, size=3, seed=3, split="test", suite="reference").to_list()
    rows += build_dataset(["zebra-very_hard"], size=1, seed=3, split="test", suite="reference").to_list()
    for row in rows:
        _check_row(row)
    targets = [row["target"] for row in rows if row["target"] is not None]
    assert len(targets) == 160 and 0.25 < sum(t < 100 for t in targets) / 160 < 0.75  # reference: 41-52% per level


def test_reference_suite_settings_and_refusals() -> None:
    assert gym_config("countdown-very_hard", "reference") == {
        "min_numbers": 6,
        "max_numbers": 6,
        "min_target": 1,
        "max_target": 1000,
        "min_value": 1,
        "max_value": 100,
    }
    assert gym_config("zebra-very_hard") == {"num_people": 6, "num_characteristics": 6}
    assert gym_config("arc1d-very_hard") == {"min_size": 40, "max_size": 40}
    assert len(REFERENCE_TEST_TASKS) == 12
    with pytest.raises(ValueError, match="chat=True with suite='reference'"):
        build_dataset(["arc1d-easy"], size=1, suite="reference", chat=True)
    with pytest.raises(ValueError, match=r"suite must be one of \['paper', 'reference'\], got 'verl'"):
        build_dataset(["arc1d-easy"], size=1, suite="verl")


def test_reference_rows_are_cached_apart_and_carry_their_split(tmp_path: Any) -> None:
    train = build_dataset(["arc1d-easy"], size=2, seed=1, cache_dir=tmp_path, suite="reference")
    plain = build_dataset(["arc1d-easy"], size=2, seed=1, cache_dir=tmp_path, chat=False)
    assert train["split"] == ["train", "train"] and "split" not in plain.column_names
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "arc1d-easy-train-seed1-n2-reference.jsonl",
        "arc1d-easy-train-seed1-n2-text.jsonl",
    ]
    assert build_dataset(["arc1d-easy"], size=2, seed=1, cache_dir=tmp_path, suite="reference").to_list() == (
        train.to_list()
    )


_CD = {"numbers": [8, 73, 96], "target": 841}
_ALL = ("paper", "reference-train", "reference-test")


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # (paper, reference-train, reference-test)
        ("\\boxed{96 * 8 + 73}", (CORRECT, CORRECT, CORRECT)),
        ("\\boxed{96 * 8 + 73}\n", (CORRECT, UNFORMATTED, UNFORMATTED)),  # trailing newline: empty last segment
        ("\\boxed{96 * 8 + 73}\n\n  \n", (CORRECT, UNFORMATTED, UNFORMATTED)),  # trailing blank lines
        ("\\boxed{96 * 8 + 73}\r\n", (CORRECT, UNFORMATTED, UNFORMATTED)),
        ("\\boxed{96 * 8 + 73}\u2028and that is it", (CORRECT, CORRECT, CORRECT)),  # U+2028 ends no line
        ("\\boxed{96 * 8 + 73}\x0cand that is it", (CORRECT, CORRECT, CORRECT)),  # nor does a form feed
        ("\\boxed{96 * 8 + 73}\rand that is it", (CORRECT, CORRECT, CORRECT)),  # nor a lone carriage return
        ("\\boxed{96 * 8 + 73}\r\nand that is it", (UNFORMATTED, UNFORMATTED, UNFORMATTED)),
        ("\\boxed{96 * 8 + 74}", (FORMATTED, FORMATTED, UNFORMATTED)),  # boxed, wrong: test rows give 0
        ("\\boxed{96 * 8 + 73} and \\boxed{96", (CORRECT, UNFORMATTED, UNFORMATTED)),  # last box unclosed
        ("\\boxed{96 * 8 + 73} \\boxed", (CORRECT, UNFORMATTED, UNFORMATTED)),
        ("\\boxed {96 * 8 + 73}", (UNFORMATTED, UNFORMATTED, UNFORMATTED)),
        ("\\fbox{96 * 8 + 73}", (UNFORMATTED, UNFORMATTED, UNFORMATTED)),
        ("\\boxed{+96 * 8 + 73}", (FORMATTED, CORRECT, CORRECT)),  # unary plus
        ("\\boxed{96 * 8 + 73 + 0 ** 0 - 1}", (FORMATTED, FORMATTED, UNFORMATTED)),  # 0 was not given
        ("\\boxed{096 * 8 + 73}", (FORMATTED, FORMATTED, UNFORMATTED)),  # a leading zero is a SyntaxError
        ("\\boxed{96 * 8 + 73.}", (FORMATTED, CORRECT, CORRECT)),  # a float literal
        ("\\boxed{-(-96 * 8) + 73}", (CORRECT, CORRECT, CORRECT)),
        ("\\boxed{96 * 8 + 73 * ()}", (FORMATTED, FORMATTED, UNFORMATTED)),
        ("\\boxed{8**73**96}", (FORMATTED, FORMATTED, UNFORMATTED)),  # the reference's eval never returns here
    ],
)
def test_scorings_on_the_issue_disagreement_cases(response: str, expected: tuple[float, ...]) -> None:
    start = time.perf_counter()
    assert tuple(score_response("countdown-easy", response, **_CD, scoring=s) for s in _ALL) == expected
    assert time.perf_counter() - start < 1.0


def test_reference_countdown_accepts_power_floor_division_and_a_tolerance() -> None:
    assert countdown_correct_reference("2 ** 3", [2, 3], 8)
    assert countdown_correct_reference("17 // 2 + 1", [17, 2, 1], 9)
    assert countdown_correct_reference("841 + 1 / (100 * 100 * 100 * 100)", [841, 1, 100, 100, 100, 100], 841)
    assert not countdown_correct_reference("841 + 1 / (10 * 10 * 10)", [841, 1, 10, 10, 10], 841)  # 1e-3 off
    assert not countdown_correct_reference("8 ** 73 ** 96", [8, 73, 96], 841)
    assert countdown_correct_reference("-" * 2000 + "841", [841], 841)  # eval takes 2000 signs; so must we
    assert not countdown_correct_reference("1" * 5000, [int("1" * 20)] * 250, 1)  # Python's digit limit
    assert score_response("countdown-easy", "\\boxed{2 ** 3}", numbers=[2, 3], target=8) == FORMATTED


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("so \\boxed{Bob}", "Bob"),
        ("\\boxed{a}\nthen \\boxed{b} and \\boxed{c}", "c"),
        ("\\boxed{(1+2)*{3}}", "(1+2)*{3}"),
        ("\\boxed{a}}", "a"),
        ("\\boxed}{x}", None),
        ("\\boxed{bob}\n", None),
        ("no box", None),
        ("", None),
    ],
)
def test_literal_extraction_reads_the_last_newline_segment(response: str, expected: str | None) -> None:
    assert extract_boxed_literal(response) == expected


def test_zebra_and_arc_under_the_reference_scorings() -> None:
    assert score_response("zebra-hard", "\\boxed{ ALICE }", answer="alice", scoring="reference-test") == CORRECT
    assert score_response("zebra-hard", "\\boxed{bob}", answer="alice", scoring="reference-test") == UNFORMATTED
    assert score_response("zebra-hard", "\\boxed{bob}", answer="alice", scoring="reference-train") == FORMATTED
    assert score_response("arc1d-easy", "\\boxed{1  2}", answer="1 2", scoring="reference-train") == FORMATTED


def test_reference_reward_picks_the_scoring_from_the_split_column() -> None:
    completions = ["\\boxed{bob}", "\\boxed{bob}", "\\boxed{alice}\n"]
    rows = {"task": ["zebra-easy"] * 3, "answer": ["alice"] * 3, "numbers": [[]] * 3, "target": [None] * 3}
    assert reference_reward(completions, split=["train", "test", "train"], **rows) == [FORMATTED, UNFORMATTED, 0.0]
    with pytest.raises(ValueError, match="needs the dataset's 'split' column"):
        reference_reward(completions, **rows)
    with pytest.raises(ValueError, match=r"split column must hold 'train' or 'test', got \['validation'\]"):
        reference_reward(completions, split=["train", "validation", "test"], **rows)
    with pytest.raises(ValueError, match=r"scoring must be one of \['paper', 'reference-train', 'reference-test'\]"):
        score_response("zebra-easy", "\\boxed{a}", answer="a", scoring="reference")


_LEAF = st.integers(0, 20).map(str) | st.integers(0, 9).map(lambda n: f"{n}.")
_POWER = st.builds("{}{}{}".format, st.integers(0, 9), st.sampled_from(["**", "** -"]), st.integers(0, 3))


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.tuples(children, st.sampled_from(["+", "-", "*", "/", "//"]), children).map(" ".join)
    unary = st.tuples(st.sampled_from(["+", "-"]), children).map("".join)
    return binary | unary | children.map(lambda e: f"({e})")


@settings(max_examples=300, deadline=None)
@given(st.recursive(_LEAF | _POWER, _combine, max_leaves=6), st.integers(-3, 3))
def test_reference_countdown_values_are_pythons(expression: str, offset: int) -> None:
    """The parsed evaluation gives Python's own value (the reference evals the expression)."""
    numbers = [int(run) for run in re.findall(r"\d+", expression)]
    try:
        value = eval(expression, {"__builtins__": {}}, {})  # the oracle: small literals and powers only
    except ArithmeticError:
        value = None
    target = round(value.real) + offset if isinstance(value, (int, float, complex)) and math.isfinite(abs(value)) else 0
    expected = value is not None and abs(value - target) < 1e-5
    assert countdown_correct_reference(expression, numbers, target) == expected
