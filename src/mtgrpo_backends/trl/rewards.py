"""The paper's reward protocol for Countdown, Zebra puzzles and ARC-1D.

1.0 for a correct answer, 0.1 for an answer in the right format that is wrong, 0 otherwise. The answer is
the last complete ``\\boxed{...}`` on the last non-empty line of the response; a box on an earlier line does
not count. Zebra and ARC-1D compare the answer with the reference after ``lower()`` / ``strip()`` (exact
match, so an ARC grid must keep the single spaces between cells). Countdown parses the answer as an
arithmetic expression of ``+ - * /``, unary minus and parentheses (no code is evaluated), evaluates it with
exact fractions and checks that it equals the target and uses each given number exactly once.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from mtgrpo_core.reward_protocol import CORRECT, FORMATTED, UNFORMATTED

FAMILIES: tuple[str, ...] = ("countdown", "zebra", "arc1d")
MAX_EXPRESSION_CHARS = 256
_BOX = "\\boxed{"


def family_of(task: str) -> str:
    """The family of a task name such as ``"countdown-medium"`` (the part before the first ``-``)."""
    family = str(task).split("-", 1)[0]
    if family not in FAMILIES:
        raise ValueError(f"task must start with one of {list(FAMILIES)} (e.g. 'zebra-easy'), got {task!r}")
    return family


def extract_boxed(response: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` on the last non-empty line, else None."""
    lines = response.rstrip().splitlines()
    if not lines:
        return None
    line = lines[-1]
    start = line.rfind(_BOX)
    while start >= 0:
        depth, pos = 1, start + len(_BOX)
        while pos < len(line) and depth:
            depth += {"{": 1, "}": -1}.get(line[pos], 0)
            pos += 1
        if depth == 0:
            return line[start + len(_BOX) : pos - 1]
        start = line.rfind(_BOX, 0, start)
    return None


def _evaluate(node: ast.AST, literals: list[int]) -> Fraction:
    """Exact value of a tree of int literals, + - * / and unary minus; appends the literals it uses."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        literals.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):  # reasoning-gym writes "-1 + ..."
        return -_evaluate(node.operand, literals)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        left, right = _evaluate(node.left, literals), _evaluate(node.right, literals)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        return left / right  # ZeroDivisionError is handled by the caller
    raise ValueError(f"not allowed in a countdown expression: {ast.dump(node)[:60]}")


def countdown_correct(expression: str, numbers: Sequence[int], target: int) -> bool:
    """True if `expression` evaluates exactly to `target` using each of `numbers` exactly once."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        return False
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        literals: list[int] = []
        value = _evaluate(tree.body, literals)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return False
    return Counter(literals) == Counter(int(n) for n in numbers) and value == target


def score_response(
    task: str,
    response: str,
    answer: str | None = None,
    numbers: Sequence[int] | None = None,
    target: int | None = None,
) -> float:
    """Reward of one response (paper's protocol): `numbers`/`target` for countdown, `answer` otherwise."""
    family = family_of(task)
    boxed = extract_boxed(response)
    if boxed is None:
        return UNFORMATTED
    if family == "countdown":
        if numbers is None or target is None:
            raise ValueError(f"countdown task {task!r} needs numbers and target, got {numbers!r}, {target!r}")
        correct = countdown_correct(boxed, numbers, int(target))
    else:
        if answer is None:
            raise ValueError(f"task {task!r} needs the reference answer, got None")
        correct = boxed.strip().lower() == str(answer).strip().lower()
    return CORRECT if correct else FORMATTED


def _text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a conversation whose last message holds the answer."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"completion must be a string or a list of messages, got {type(completion).__name__}")


def paper_reward(
    completions: Sequence[Any],
    task: Sequence[str],
    answer: Sequence[str | None],
    numbers: Sequence[Sequence[int] | None] | None = None,
    target: Sequence[int | None] | None = None,
    **_: Any,
) -> list[float]:
    """TRL reward function (columns arrive as keyword lists): the paper's protocol for every row's task."""
    n = len(completions)
    nums = numbers if numbers is not None else [None] * n
    targets = target if target is not None else [None] * n
    return [
        score_response(t, _text(c), a, ns, tg)
        for c, t, a, ns, tg in zip(completions, task, answer, nums, targets, strict=True)
    ]
