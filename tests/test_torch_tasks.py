"""The character-level task suite: generators, the reward protocol, held-out sets, tokenizer and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from mtgrpo_backends.torch.tasks import (
    SUITE_TASKS,
    TASKS,
    CharTokenizer,
    Problem,
    RewardError,
    Suite,
    Task,
    get_suite,
    left_pad,
    score,
)
from mtgrpo_backends.torch.warmup import noisy_answer


def _digits_of(prompt: str) -> str:
    return prompt.split(":", 1)[1].rstrip("=")


@pytest.mark.parametrize("name", list(TASKS))
def test_generators_give_right_answers_and_fit_max_new_tokens(name: str) -> None:
    task = TASKS[name]
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = task.make(rng)
        body = _digits_of(p.prompt)
        if name.startswith("reverse"):
            assert p.answer == body[::-1]
        elif name.startswith("sort"):
            assert p.answer == "".join(sorted(body))
        else:  # little-endian addition: reverse every number back to read it
            a, b = (int(x[::-1]) for x in body.split("+"))
            assert int(p.answer[::-1]) == a + b
        assert len(f"[{p.answer}]") + 1 <= task.max_new_tokens  # the end token fits too


@pytest.mark.parametrize("name", ["reverse-easy", "sort-medium", "add-easy"])
def test_reward_protocol_correct_formatted_wrong(name: str) -> None:
    p = TASKS[name].make(np.random.default_rng(1))
    wrong = str((int(p.answer[0]) + 1) % 10) + p.answer[1:]
    assert score(TASKS[name], p, f"[{p.answer}]") == 1.0
    assert score(TASKS[name], p, f"[{wrong}]") == 0.1
    for bad in ("", p.answer, f"[{p.answer}", f"[{p.answer}]]", f" [{p.answer}]", "[]", "[12a]", f"[{p.answer}]7"):
        assert score(TASKS[name], p, bad) == 0.0, bad


def test_suites_shapes_and_unknown_suite() -> None:
    tiny3, tiny9 = get_suite("tiny3"), get_suite("tiny9")
    assert tiny3.num_tasks == 3 and len({n.split("-")[0] for n in tiny3.task_names}) == 3
    assert tiny9.num_tasks == 9 and len({n.split("-")[0] for n in tiny9.task_names}) == 3
    assert set(SUITE_TASKS) == {"tiny3", "tiny9"}
    with pytest.raises(ValueError, match=r"suite must be one of \['tiny3', 'tiny9'\], got 'tiny4'"):
        get_suite("tiny4")


def test_held_out_sets_are_fixed_distinct_and_never_sampled_for_training() -> None:
    a, b = get_suite("tiny3"), get_suite("tiny3")
    assert a.eval_sets == b.eval_sets
    for k in range(a.num_tasks):
        prompts = {p.prompt for p in a.eval_sets[k]}
        assert len(prompts) == a.eval_size == 200
        train = a.sample(k, 500, np.random.default_rng(k))
        assert not prompts & {p.prompt for p in train}


def test_sample_refuses_a_task_without_room_outside_the_held_out_set() -> None:
    tiny = Task("one-digit", lambda rng: Problem(f"rev:{int(rng.integers(0, 10))}=", "0"), max_new_tokens=4)
    with pytest.raises(ValueError, match="fewer than eval_size=20 distinct prompts"):
        Suite("tiny", (tiny,), warmup_steps=0, eval_size=20)
    suite = Suite("tiny", (tiny,), warmup_steps=0, eval_size=10)
    with pytest.raises(ValueError, match="found only 0 of 3 prompts outside the held-out set"):
        suite.sample(0, 3, np.random.default_rng(0))


def test_failing_reward_function_names_task_prompt_and_completion() -> None:
    def broken(problem: Problem, completion: str) -> float:
        raise KeyError("boom")

    task = Task("broken-task", TASKS["reverse-easy"].make, 7, reward=broken)
    p = Problem("rev:1234=", "4321")
    with pytest.raises(RewardError, match=r"task 'broken-task'.*'rev:1234='.*completion '\[99\]'.*boom"):
        score(task, p, "[99]")
    nan_task = Task("nan-task", TASKS["reverse-easy"].make, 7, reward=lambda p, c: float("nan"))
    with pytest.raises(RewardError, match=r"nan-task.*reward is nan"):
        score(nan_task, p, "[1]")


def test_tokenizer_round_trip_eos_and_unknown_character() -> None:
    tok = CharTokenizer()
    ids = tok.encode("add:12+34=[46]")
    assert tok.decode([*ids, tok.eos_id, *tok.encode("999")]) == "add:12+34=[46]"
    assert tok.decode([tok.pad_id, *ids]) == "add:12+34=[46]"
    assert min(ids) >= 2 and max(ids) < tok.vocab_size
    with pytest.raises(ValueError, match=r"'A'.*not in the alphabet"):
        tok.encode("rev:A")
    with pytest.raises(ValueError, match="must not repeat"):
        CharTokenizer("aab")


def test_left_pad() -> None:
    ids, mask = left_pad([[5, 6], [7], [8, 9, 10]], pad_id=0)
    assert ids.tolist() == [[0, 5, 6], [0, 0, 7], [8, 9, 10]]
    assert mask.tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 1]]


def test_noisy_answer_changes_digits_only_at_the_given_rate() -> None:
    rng = np.random.default_rng(0)
    assert noisy_answer("12345", 0.0, rng) == "12345"
    changed = [sum(a != b for a, b in zip("0" * 10, noisy_answer("0" * 10, 0.3, rng), strict=True)) for _ in range(400)]
    # a digit is redrawn with probability 0.3 and then differs with probability 0.9: 2.7 of 10 on average
    assert 2.4 < np.mean(changed) < 3.0
    assert all(c.isdigit() for c in noisy_answer("0" * 10, 1.0, rng))
