"""A character-level multi-task suite a few-hundred-k-parameter transformer learns on a CPU.

Three families at three levels: reverse digits, sort digits, add two numbers. A prompt such as `rev:4821=`
is answered in brackets and closed by the end token: `[1284]<eos>`. Reward protocol of the paper: 1.0 for the
right answer, 0.1 for a well-formatted wrong answer (`[`, digits, `]`, nothing else), 0 otherwise.
Held-out evaluation sets are fixed by the suite's seed, and training prompts never repeat them.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import checks as v
from mtgrpo_core.protocols import CORRECT, FORMATTED, UNFORMATTED

ALPHABET = "0123456789+-*=:,[]() abcdefghijklmnopqrstuvwxyz"
_ANSWER = re.compile(r"\[([0-9]+)\]")


class CharTokenizer:
    """Characters of ALPHABET plus a padding token (id 0) and an end token (id 1)."""

    pad_id = 0
    eos_id = 1

    def __init__(self, alphabet: str = ALPHABET) -> None:
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet must not repeat characters, got {alphabet!r}")
        self.alphabet = alphabet
        self._ids = {c: i + 2 for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 2

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; a character outside the alphabet is refused."""
        try:
            return [self._ids[c] for c in text]
        except KeyError as err:
            raise ValueError(f"text {text!r} holds {err.args[0]!r}, which is not in the alphabet") from err

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` up to (not including) the first end token; padding is skipped."""
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i != self.pad_id:
                out.append(self.alphabet[i - 2])
        return "".join(out)


@dataclass(frozen=True)
class Problem:
    """One prompt of a task and its reference answer."""

    prompt: str
    answer: str


RewardFn = Callable[[Problem, str], float]


def bracket_reward(problem: Problem, completion: str) -> float:
    """The paper's protocol: 1.0 if `[answer]`, 0.1 if `[digits]` with other digits, 0 otherwise."""
    match = _ANSWER.fullmatch(completion)
    if match is None:
        return UNFORMATTED
    return CORRECT if match.group(1) == problem.answer else FORMATTED


@dataclass(frozen=True)
class Task:
    """A task: a problem generator, a reward function and the longest completion it needs (end token included).

    prompts: how many distinct prompts `make` can produce (None: not known; a training set is then generated until
    it is complete or 20 draws per prompt found too few), so that a training set larger than that is refused at once.
    """

    name: str
    make: Callable[[np.random.Generator], Problem]
    max_new_tokens: int
    reward: RewardFn = bracket_reward
    prompts: int | None = None


class RewardError(RuntimeError):
    """A task's reward function raised or returned a non-finite value."""


def score(task: Task, problem: Problem, completion: str) -> float:
    """Reward of one completion; a reward function that raises or returns a non-finite value is reported as a
    RewardError naming the task, the prompt and the completion."""
    try:
        value = float(task.reward(problem, completion))
        if not math.isfinite(value):
            raise ValueError(f"reward is {value!r}")
    except Exception as err:
        raise RewardError(
            f"reward function of task {task.name!r} failed on prompt {problem.prompt!r}, "
            f"completion {completion!r}: {err!r}"
        ) from err
    return value


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, size=n))


def _reverse(rng: np.random.Generator, n: int) -> Problem:
    s = _digits(rng, n)
    return Problem(f"rev:{s}=", s[::-1])


def _sort(rng: np.random.Generator, n: int) -> Problem:
    s = _digits(rng, n)
    return Problem(f"sort:{s}=", "".join(sorted(s)))


def _add(rng: np.random.Generator, n: int) -> Problem:
    """Two n-digit numbers and their sum, all written least-significant digit first (so carries flow forward)."""
    a, b = (int(x) for x in rng.integers(10 ** (n - 1), 10**n, size=2))
    return Problem(f"add:{str(a)[::-1]}+{str(b)[::-1]}=", str(a + b)[::-1])


def _family(name: str, make: Callable[..., Problem], sizes: tuple[int, int, int]) -> list[Task]:
    """Easy/medium/hard tasks of one family; completions are `[answer]` plus the end token. Distinct prompts: 10^n
    digit strings (reverse, sort), (9 * 10^(n-1))^2 ordered pairs of n-digit numbers (add)."""
    tasks = []
    for level, n in zip(("easy", "medium", "hard"), sizes, strict=True):
        answer_len = n + 1 if name == "add" else n
        prompts = (9 * 10 ** (n - 1)) ** 2 if name == "add" else 10**n
        tasks.append(Task(f"{name}-{level}", functools.partial(make, n=n), answer_len + 3, prompts=prompts))
    return tasks


TASKS: dict[str, Task] = {
    t.name: t
    for t in _family("reverse", _reverse, (4, 6, 8))
    + _family("sort", _sort, (4, 6, 8))
    + _family("add", _add, (2, 3, 4))
}


@dataclass(frozen=True)
class Suite:
    """Tasks trained together, the supervised warm-up length (a design choice) and fixed held-out sets."""

    name: str
    tasks: tuple[Task, ...]
    warmup_steps: int
    warmup_noise: float = 0.0
    warmup_target: float = 0.0
    warmup_ceiling: float = 1.0  # a task at or above it at a warm-up check leaves the demonstration mix
    eval_size: int = 200
    eval_seed: int = 20260205
    eval_sets: tuple[tuple[Problem, ...], ...] = field(init=False, repr=False)
    _held_out: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError(f"suite {self.name!r} needs at least one task, got none")
        v.positive_int("eval_size", self.eval_size)
        v.positive_int("warmup_steps", self.warmup_steps, minimum=0)
        v.real_in_range("warmup_noise", self.warmup_noise, 0.0, 1.0)
        v.real_in_range("warmup_target", self.warmup_target, 0.0, 1.0)
        v.real_in_range("warmup_ceiling", self.warmup_ceiling, 0.0, 1.0, low_open=True)
        if self.warmup_ceiling <= self.warmup_target:
            raise ValueError(
                f"warmup_ceiling must be above warmup_target={self.warmup_target}, got {self.warmup_ceiling}"
            )
        sets = tuple(self._draw_eval(k) for k in range(len(self.tasks)))
        object.__setattr__(self, "eval_sets", sets)
        object.__setattr__(self, "_held_out", frozenset(p.prompt for s in sets for p in s))

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def _draw_eval(self, k: int) -> tuple[Problem, ...]:
        return self._distinct(k, self.eval_size, np.random.default_rng([self.eval_seed, k]), frozenset(), "eval_size")

    def _distinct(
        self, k: int, size: int, rng: np.random.Generator, exclude: frozenset[str], what: str
    ) -> tuple[Problem, ...]:
        seen: dict[str, Problem] = {}
        for _ in range(20 * size):
            p = self.tasks[k].make(rng)
            if p.prompt not in exclude:
                seen.setdefault(p.prompt, p)
            if len(seen) == size:
                return tuple(seen.values())
        raise ValueError(
            f"task {self.tasks[k].name!r} yields fewer than {what}={size} distinct prompts"
            + (" outside the held-out sets" if exclude else "")
        )

    def check_pool_size(self, size: int) -> None:
        """Refuse a training set of `size` prompts per task that some task cannot give, from each task's count of
        distinct prompts (Task.prompts) less its held-out set, without generating any."""
        v.positive_int("pool_size", size)
        for task, held_out in zip(self.tasks, self.eval_sets, strict=True):
            if task.prompts is not None and size > task.prompts - len(held_out):
                raise ValueError(
                    f"task {task.name!r} yields fewer than pool_size={size} distinct prompts outside the held-out "
                    f"sets: it has {task.prompts} distinct prompts, {len(held_out)} of them held out; expected "
                    f"pool_size <= {task.prompts - len(held_out)} for suite {self.name!r}"
                )

    def training_set(self, k: int, size: int) -> tuple[Problem, ...]:
        """`size` distinct training problems of task k, none from a held-out set: a fixed dataset of the suite (the
        same for every run seed; a run's seed orders it)."""
        self.check_pool_size(size)
        rng = np.random.default_rng([self.eval_seed, 1, k])
        return self._distinct(k, size, rng, self._held_out, "pool_size")

    def sample(self, k: int, count: int, rng: np.random.Generator) -> list[Problem]:
        """`count` training problems of task k, none of them from a held-out set."""
        out: list[Problem] = []
        for _ in range(100 * count + 100):
            if len(out) == count:
                return out
            p = self.tasks[k].make(rng)
            if p.prompt not in self._held_out:
                out.append(p)
        if len(out) == count:
            return out
        raise ValueError(
            f"task {self.tasks[k].name!r} found only {len(out)} of {count} prompts outside the held-out set"
        )


# name -> (tasks, warm-up step cap, warm-up noise, warm-up target, warm-up ceiling). Design, measured
# (docs/results.md): addition is the hardest family for a small model and is learned last, in a sharp jump whose
# onset moves by hundreds of steps with the seed and even the CPU thread count. So the warm-up stops at the first
# check (every 25 steps) where every task reaches the target temperature-1 accuracy on training prompts, early in
# that jump, instead of at a fixed step; the demonstrations' digit noise keeps the tasks learned earlier from
# saturating before RL. tiny9 (nine levels, issue: every level starts between 5% and 60%): a task that reaches the
# ceiling at a check leaves the demonstration mix, so the batch goes to the tasks still below the target.
SUITE_TASKS: dict[str, tuple[tuple[str, ...], int, float, float, float]] = {
    "tiny3": (("reverse-easy", "sort-medium", "add-easy"), 3000, 0.1, 0.1, 1.0),
    "tiny9": (tuple(TASKS), 6000, 0.1, 0.05, 0.6),
}


def get_suite(name: str) -> Suite:
    """A built-in suite by name."""
    v.choice("suite", name, tuple(SUITE_TASKS))
    names, warmup_steps, noise, target, ceiling = SUITE_TASKS[name]
    tasks = tuple(TASKS[n] for n in names)
    return Suite(name, tasks, warmup_steps, warmup_noise=noise, warmup_target=target, warmup_ceiling=ceiling)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Left-pad token rows to one width: ids and mask (1 = real token), both int64 (R, width)."""
    width = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = r
            mask[i, width - len(r) :] = 1
    return ids, mask
