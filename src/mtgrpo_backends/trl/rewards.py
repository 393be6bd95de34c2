"""Reward protocols for Countdown, Zebra puzzles and ARC-1D: the paper's (default) and the reference code's.

Named scorings (``SCORINGS``), each 1.0 for a correct answer, 0 without an answer:

- ``"paper"`` (default): 0.1 for a boxed answer that is wrong. The answer is the last complete
  ``\\boxed{...}`` on the last non-empty line of the response; a box on an earlier line does not count. Only
  ``"\\n"`` (and so ``"\\r\\n"``) ends a line: U+2028, a form feed or a lone ``"\\r"`` does not. Zebra and
  ARC-1D compare the answer with the reference after ``lower()`` / ``strip()`` (exact match, so an ARC grid must
  keep the single spaces between cells). Countdown parses the answer as an arithmetic expression of
  ``+ - * /``, unary minus and parentheses (no code is evaluated), evaluates it with exact fractions and
  checks that it equals the target and uses each given number exactly once.
- ``"reference-train"`` / ``"reference-test"``: the reference code's scorer (rsshyam/MT-GRPO; docs/fidelity.md),
  a boxed wrong answer worth 0.1 / 0.0. The answer is read from the literal last ``"\\n"`` segment (after a
  trailing newline that segment is empty: no answer), at its last ``\\boxed``. Countdown is checked as the
  reference checks it: the digit runs of the answer are the given numbers, it holds only digits, ``+ - * / .
  ( )`` and whitespace, and its Python value is within 1e-5 of the target (so ``**``, ``//``, unary plus and
  decimals count). ``reference_reward`` picks train or test scoring from each row's ``split`` column.
"""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from mtgrpo_core.protocols import CORRECT, FORMATTED, UNFORMATTED

FAMILIES: tuple[str, ...] = ("countdown", "zebra", "arc1d")
MAX_EXPRESSION_CHARS = 256
# reference Countdown check: a power whose exact integer value would exceed this many bits is taken as wrong
# (the reference's eval computes it, and can hang on 8**73**96)
MAX_POWER_BITS = 100_000
REFERENCE_TOLERANCE = 1e-5
_BOX = "\\boxed{"
_REFERENCE_CHARS = re.compile(r"[\d+\-*/().\s]+")
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def family_of(task: str) -> str:
    """The family of a task name such as ``"countdown-medium"`` (the part before the first ``-``)."""
    family = str(task).split("-", 1)[0]
    if family not in FAMILIES:
        raise ValueError(f"task must start with one of {list(FAMILIES)} (e.g. 'zebra-easy'), got {task!r}")
    return family


def extract_boxed(response: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` on the last non-empty line ("\\n" ends a line), else None."""
    line = next((line for line in reversed(response.split("\n")) if line.strip()), None)
    if line is None:
        return None
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


def extract_boxed_literal(response: str) -> str | None:
    """The reference's answer: in the text after the last "\\n", from its last ``\\boxed`` to the first ``}``
    that closes the braces opened since; the content when that reads ``\\boxed{...}``, else None.

    The reference falls back to a last ``\\fbox`` when there is no ``\\boxed``, but then never accepts it, so
    that case is None here directly.
    """
    line = response.rsplit("\n", 1)[-1]
    start = line.rfind(_BOX[:-1])
    if start < 0:
        return None
    depth = 0
    for pos in range(start, len(line)):
        if line[pos] == "{":
            depth += 1
        elif line[pos] == "}":
            depth -= 1
            if depth == 0:
                box = line[start : pos + 1]
                return box[len(_BOX) : -1] if box.startswith(_BOX) else None
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


def _power_bits(base: Any, exponent: Any) -> int:
    """A lower bound of the bits of an integer power's exact value (0 for other powers)."""
    if type(base) is not int or type(exponent) is not int:
        return 0
    return exponent * (abs(base).bit_length() - 1)


def _python_value(node: ast.AST) -> Any:
    """What Python's eval gives for a tree of literals, ``+ - * / // **``, unary ``+ -`` and ``()``."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple) and not node.elts:
        return ()
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        signs = []  # a chain of signs (eval takes thousands) is applied in a loop, not by recursion
        while isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            signs.append(_UNARY[type(node.op)])
            node = node.operand
        value = _python_value(node)
        for sign in reversed(signs):
            value = sign(value)
        return value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _python_value(node.left), _python_value(node.right)
        if isinstance(node.op, ast.Pow) and _power_bits(left, right) > MAX_POWER_BITS:
            raise OverflowError(f"{left} ** {right} exceeds {MAX_POWER_BITS} bits")
        return _BINARY[type(node.op)](left, right)
    raise ValueError(f"not allowed in a countdown expression: {ast.dump(node)[:60]}")


def countdown_correct_reference(expression: str, numbers: Sequence[int], target: int) -> bool:
    """The reference's Countdown check: digit runs == numbers (as multisets), only the allowed characters, and
    the Python value within 1e-5 of `target`. The expression is parsed, never run; a power past
    ``MAX_POWER_BITS`` bits counts as wrong where the reference would compute (or hang on) it."""
    try:
        if sorted(int(run) for run in re.findall(r"\d+", expression)) != sorted(int(n) for n in numbers):
            return False
        if _REFERENCE_CHARS.fullmatch(expression) is None:
            return False
        value = _python_value(ast.parse(expression.lstrip(" \t"), mode="eval").body)  # eval strips these too
        return bool(abs(value - target) < REFERENCE_TOLERANCE)
    except (SyntaxError, ValueError, TypeError, ArithmeticError, RecursionError, MemoryError):
        return False


@dataclass(frozen=True)
class Scoring:
    """One named scoring: where the answer is read, how Countdown is checked, what a wrong boxed answer earns."""

    extract: Callable[[str], str | None]
    countdown: Callable[[str, Sequence[int], int], bool]
    formatted: float


SCORINGS: dict[str, Scoring] = {
    "paper": Scoring(extract_boxed, countdown_correct, FORMATTED),
    "reference-train": Scoring(extract_boxed_literal, countdown_correct_reference, FORMATTED),
    "reference-test": Scoring(extract_boxed_literal, countdown_correct_reference, UNFORMATTED),
}


def score_response(
    task: str,
    response: str,
    answer: str | None = None,
    numbers: Sequence[int] | None = None,
    target: int | None = None,
    scoring: str = "paper",
) -> float:
    """Reward of one response under a named scoring (`SCORINGS`): `numbers`/`target` for countdown, `answer`
    otherwise."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {list(SCORINGS)}, got {scoring!r}")
    rules = SCORINGS[scoring]
    family = family_of(task)
    boxed = rules.extract(response)
    if boxed is None:
        return UNFORMATTED
    if family == "countdown":
        if numbers is None or target is None:
            raise ValueError(f"countdown task {task!r} needs numbers and target, got {numbers!r}, {target!r}")
        correct = rules.countdown(boxed, numbers, int(target))
    else:
        if answer is None:
            raise ValueError(f"task {task!r} needs the reference answer, got None")
        correct = boxed.strip().lower() == str(answer).strip().lower()
    return CORRECT if correct else rules.formatted


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
    return _score_rows(completions, task, answer, numbers, target, ["paper"] * len(completions))


def reference_reward(
    completions: Sequence[Any],
    task: Sequence[str],
    answer: Sequence[str | None],
    split: Sequence[str] | None = None,
    numbers: Sequence[Sequence[int] | None] | None = None,
    target: Sequence[int | None] | None = None,
    **_: Any,
) -> list[float]:
    """TRL reward function with the reference code's scoring: "reference-train" for rows whose ``split`` column
    is "train", "reference-test" for "test" (the reference picks by its data source's name)."""
    if split is None:
        raise ValueError(
            "reference_reward needs the dataset's 'split' column ('train' or 'test'), as written by "
            "build_dataset(suite='reference')"
        )
    bad = sorted({str(s) for s in split} - {"train", "test"})
    if bad:
        raise ValueError(f"split column must hold 'train' or 'test', got {bad}")
    return _score_rows(completions, task, answer, numbers, target, [f"reference-{s}" for s in split])


def _score_rows(
    completions: Sequence[Any],
    task: Sequence[str],
    answer: Sequence[str | None],
    numbers: Sequence[Sequence[int] | None] | None,
    target: Sequence[int | None] | None,
    scorings: Sequence[str],
) -> list[float]:
    """Each completion scored with its row's fields and scoring name."""
    n = len(completions)
    nums = numbers if numbers is not None else [None] * n
    targets = target if target is not None else [None] * n
    rows = zip(completions, task, answer, nums, targets, scorings, strict=True)
    return [score_response(t, _text(c), a, ns, tg, sc) for c, t, a, ns, tg, sc in rows]
