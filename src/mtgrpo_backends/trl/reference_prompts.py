"""The reference code's prompts (rsshyam/MT-GRPO, read from its data/combined/*.parquet; docs/fidelity.md).

Raw text for the base model, no chat template: a fixed preamble, ``User:`` with the question and its family's
box instruction (with an example), and ``Assistant: Let me solve this step by step.`` Countdown is worded by
the reference (listing the operators), Zebra and ARC-1D are reasoning-gym's questions with the final-answer
sentence replaced by the reference's.
"""

from __future__ import annotations

from collections.abc import Sequence

PREAMBLE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer."
)
ASSISTANT_START = "Let me solve this step by step."
# Countdown targets of the reference data: 1-1000 (41-52% below 100 per level), numbers 1-100
COUNTDOWN_TARGETS: tuple[int, int] = (1, 1000)
COUNTDOWN_VALUES: tuple[int, int] = (1, 100)

_ZEBRA_GYM_END = "? Provide only the name of the person as your final answer."
_ZEBRA_END = (
    "? Provide only the name of the person as your final answer and put in in \\boxed{}, for example: \\boxed{Alice}."
)
_ARC_GYM_SENTENCE = "Your final answer should be just the test output grid itself."
_ARC_SENTENCE = "Your final answer must be placed in \\boxed{} and should be just the test output grid itself."


def wrap(question: str) -> str:
    """The reference's prompt around a question: preamble, ``User:``, ``Assistant:`` and its opening words."""
    return f"{PREAMBLE}\nUser: {question}\nAssistant: {ASSISTANT_START}"


def countdown_question(numbers: Sequence[int], target: int) -> str:
    """The reference's Countdown question: the numbers in the given order, the four operators, a boxed example."""
    listed = ", ".join(str(int(n)) for n in numbers)
    return (
        f"Using the numbers [{listed}], create an equation that equals {int(target)}. You can only use basic "
        "arithmetic operations (+, -, *, /) and each number should be used exactly once. Return the final answer "
        "in \\boxed{}, for example \\boxed{(1 + 2) / 3}."
    )


def zebra_question(gym_question: str) -> str:
    """reasoning-gym's Zebra question with the reference's ending (one ``?``, box instruction, ``\\boxed{Alice}``)."""
    body = gym_question.rstrip()
    if not body.endswith(_ZEBRA_GYM_END):
        raise RuntimeError(f"reasoning-gym's zebra question no longer ends with {_ZEBRA_GYM_END!r}: {body[-80:]!r}")
    return body[: -len(_ZEBRA_GYM_END)].rstrip("?") + _ZEBRA_END


def arc_question(gym_question: str) -> str:
    """reasoning-gym's ARC-1D question with the reference's final-answer sentence (box, just the output grid)."""
    if gym_question.count(_ARC_GYM_SENTENCE) != 1:
        raise RuntimeError(f"reasoning-gym's arc_1d question no longer holds {_ARC_GYM_SENTENCE!r} once")
    return gym_question.rstrip().replace(_ARC_GYM_SENTENCE, _ARC_SENTENCE)


def reference_prompt(family: str, gym_question: str, numbers: Sequence[int] = (), target: int | None = None) -> str:
    """The whole reference prompt of one item: Countdown from `numbers` and `target`, the others from the question."""
    if family == "countdown":
        if target is None:
            raise ValueError(f"a countdown prompt needs numbers and a target, got {list(numbers)!r} and None")
        return wrap(countdown_question(numbers, target))
    if family == "zebra":
        return wrap(zebra_question(gym_question))
    if family == "arc1d":
        return wrap(arc_question(gym_question))
    raise ValueError(f"family must be 'countdown', 'zebra' or 'arc1d', got {family!r}")
