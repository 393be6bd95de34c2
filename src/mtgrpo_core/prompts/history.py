"""Per-prompt history and the rule that skips prompts whose last group was uninformative (docs/selective.md).

A prompt's last group is informative (the sampler's filter keeps it), all-correct or all-wrong (it drops it).
GRESO (Zheng et al. 2025, arXiv 2506.02177) observed that a prompt uninformative once is likely to be so again;
`HistorySkip` passes over such a prompt (a candidate) at its turn in the pool's pass, unless a coin retries it. The
retry probability of task k is set before every draw from the task's share c_k of candidates, so that retries
make up the target share `exploration` of what the task hands out:

    retries / handed out = c_k t_k / (1 - c_k + c_k t_k) = exploration
    =>  t_k = exploration (1 - c_k) / ((1 - exploration) c_k)   (retries per candidate met)

The coin retries with r_k >= min_retry (default 0.01), so no prompt is skipped forever (with probability 1).
`max_skips` (default None) adds a hard bound: a candidate passed over that many times in a row is handed out at
its next turn; those forced retries count toward t_k: with f_k the candidates' share at the bound, the coin
retries with r_k = (t_k - f_k) / (1 - f_k), clipped to [min_retry, 1]. The rule adapts as the history fills (no
retries while no prompt has a history) and needs no step size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_core import checks as v
from mtgrpo_core.advantages import zero_gradient_mask

UNSEEN, INFORMATIVE, ALL_CORRECT, ALL_WRONG = 0, 1, 2, 3
OUTCOMES = ("unseen", "informative", "all-correct", "all-wrong")
MAX_SKIPS = 255  # the skip counter is a uint8
RETRY_DISCOUNT = 0.98  # per retried group: the retry statistics remember about the last 50 groups of a class


def group_outcomes(
    rewards: ArrayLike, filtering: Literal["lenient", "strict"] = "lenient", correct_reward: float = 1.0
) -> NDArray[np.uint8]:
    """Outcome of each group of rewards (P, N) -> (P,) codes: INFORMATIVE where `filtering` keeps the group (the
    sampler's `zero_gradient_mask`), else ALL_CORRECT (every reward == correct_reward) or ALL_WRONG."""
    r = v.finite_array("rewards", rewards, ndim=2)
    zero = zero_gradient_mask(r, filtering, correct_reward)
    all_correct = (r == correct_reward).all(axis=1)
    return np.where(~zero, INFORMATIVE, np.where(all_correct, ALL_CORRECT, ALL_WRONG)).astype(np.uint8)


@dataclass(frozen=True)
class SelectionConfig:
    """Settings of selective rollouts on a `PromptPool`.

    exploration: target share of a task's handed-out prompts that retry a prompt last seen uninformative, in (0, 1).
    min_retry: floor of the retry probability, in [0, 1].
    max_skips: a prompt passed over this many times in a row is handed out at its next turn (1 to 255); None: never
        forced (with min_retry 0 a prompt may then be skipped forever).
    filtering, correct_reward: the sampler's filter, which decides whether a reported group was informative.
    """

    exploration: float = 0.1
    min_retry: float = 0.01
    max_skips: int | None = None
    filtering: Literal["lenient", "strict"] = "lenient"
    correct_reward: float = 1.0

    def __post_init__(self) -> None:
        v.real_in_range("exploration", self.exploration, 0.0, 1.0, low_open=True, high_open=True)
        v.real_in_range("min_retry", self.min_retry, 0.0, 1.0)
        if self.max_skips is not None:
            v.positive_int("max_skips", self.max_skips)
            if self.max_skips > MAX_SKIPS:
                raise ValueError(f"max_skips must be <= {MAX_SKIPS} (or None: never forced), got {self.max_skips}")
        v.choice("filtering", self.filtering, ("lenient", "strict"))
        v.real_in_range("correct_reward", self.correct_reward)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PromptHistory:
    """Per row of the dataset: the last outcome (uint8 code) and mean reward (float32, NaN = never reported) of its
    group, the passes-over since it was last handed out (uint8) and the pool draw at which it was last handed out
    (int32, -1 = never): 10 bytes a row."""

    def __init__(self, num_rows: int) -> None:
        n = v.positive_int("num_rows", num_rows)
        self.outcome = np.zeros(n, dtype=np.uint8)
        self.reward = np.full(n, np.nan, dtype=np.float32)
        self.skips = np.zeros(n, dtype=np.uint8)
        self.seen = np.full(n, -1, dtype=np.int32)

    @property
    def nbytes(self) -> int:
        return int(self.outcome.nbytes + self.reward.nbytes + self.skips.nbytes + self.seen.nbytes)

    def uninformative(self, rows: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Rows whose last reported group was all-correct or all-wrong."""
        return np.asarray(self.outcome[rows] >= ALL_CORRECT)

    def handed_out(self, rows: NDArray[np.int64], draw: int) -> None:
        self.seen[rows] = draw
        self.skips[rows] = 0

    def passed_over(self, rows: NDArray[np.int64]) -> None:
        self.skips[rows] = np.minimum(self.skips[rows].astype(np.int64) + 1, MAX_SKIPS)

    def state_dict(self) -> dict[str, Any]:
        """JSON-native lists; a reward never reported is None (JSON null)."""
        reward = [None if x != x else x for x in self.reward.tolist()]
        outcome, skips, seen = self.outcome.tolist(), self.skips.tolist(), self.seen.tolist()
        return {"outcome": outcome, "reward": reward, "skips": skips, "seen": seen}

    @classmethod
    def from_state(cls, state: Any, num_rows: int, draws: int) -> PromptHistory:
        """A history from `state_dict()` output, every entry checked against the dataset's rows and the draws."""
        fields = ("outcome", "reward", "skips", "seen")
        if not isinstance(state, Mapping):
            raise TypeError(
                f"state['history'] must be a mapping with keys {list(fields)} (PromptHistory.state_dict()), got "
                f"{v._show(state)} of type {type(state).__name__}"
            )
        missing = [name for name in fields if name not in state]
        if missing:
            raise ValueError(f"state['history'] has no {missing}; expected keys {list(fields)}, got {sorted(state)}")
        history = cls(num_rows)
        limits = {"outcome": (0, len(OUTCOMES) - 1), "skips": (0, MAX_SKIPS), "seen": (-1, draws - 1)}
        for name, (low, high) in limits.items():
            arr = v.int_array(f"state['history']['{name}']", state[name], ndim=1)
            if arr.shape[0] != num_rows or (arr.size and (arr.min() < low or arr.max() > high)):
                raise ValueError(
                    f"state['history']['{name}'] must hold {num_rows} ints (one per row) in [{low}, {high}], got "
                    f"{arr.shape[0]} in [{arr.min() if arr.size else '-'}, {arr.max() if arr.size else '-'}]"
                )
            getattr(history, name)[:] = arr
        reported_unseen = np.flatnonzero((history.outcome != UNSEEN) & (history.seen < 0))
        if reported_unseen.size:
            row = int(reported_unseen[0])
            raise ValueError(
                f"state['history'] row {row} has outcome {OUTCOMES[history.outcome[row]]!r} but seen -1: a row is "
                "reported only after it was handed out; expected seen >= 0 where an outcome is recorded"
            )
        reward = state["reward"]
        if not isinstance(reward, (list, tuple)) or len(reward) != num_rows:
            raise ValueError(f"state['history']['reward'] must hold {num_rows} numbers or None (one per row)")
        values = v.as_float_array("state['history']['reward']", [np.nan if x is None else x for x in reward], ndim=1)
        if np.isinf(values).any() or (np.isnan(values) != (history.outcome == UNSEEN)).any():
            raise ValueError("state['history']['reward'] must be finite where an outcome is recorded, None elsewhere")
        history.reward[:] = values
        return history


class RetryStats:
    """What retried prompts gave, per task and last-seen class (all-correct, all-wrong): discounted sums (factor
    RETRY_DISCOUNT per group) of groups, mean reward, accuracy and informative groups. Retries are a seeded random
    subset of the class, so these estimate what a skipped prompt of the class would give now: the stand-in of a
    skipped prompt (`stand_in`), and its informative share is the skip rule's error as a trainer can observe it."""

    FIELDS = ("groups", "reward", "accuracy", "informative")

    def __init__(self, num_tasks: int) -> None:
        self.sums = np.zeros((len(self.FIELDS), num_tasks, 2))

    def add(self, tasks: NDArray[np.int64], last: NDArray[np.uint8], values: NDArray[np.float64]) -> None:
        """Groups of retried rows: task (n,), last-seen class (n,), values (3, n): reward, accuracy, informative."""
        cls = last.astype(np.int64) - ALL_CORRECT
        for k, c in {(int(a), int(b)) for a, b in zip(tasks, cls, strict=True)}:
            pick = (tasks == k) & (cls == c)
            age = RETRY_DISCOUNT ** np.arange(int(pick.sum()) - 1, -1, -1)  # the latest group weighs 1
            self.sums[:, k, c] = self.sums[:, k, c] * RETRY_DISCOUNT ** pick.sum() + np.concatenate(
                [[age.sum()], values[:, pick] @ age]
            )

    def estimate(self) -> NDArray[np.float64]:
        """(3, K, 2): reward, accuracy and informative share per task and class; NaN where nothing was retried."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(self.sums[1:] / self.sums[0])

    def stand_in(
        self, tasks: NDArray[np.int64], last: NDArray[np.uint8], own: NDArray[np.float32]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(mean reward, accuracy) standing in for skipped rows: the estimate of the row's task and class, or before
        any retry of the class the row's own last group (accuracy 1 if it was all-correct, else 0). NaN for a row
        not last seen uninformative (no class)."""
        n = tasks.shape[0]
        reward, accuracy = np.full(n, np.nan), np.full(n, np.nan)
        known = last >= ALL_CORRECT
        est = self.estimate()
        cls = last[known].astype(np.int64) - ALL_CORRECT
        reward[known], accuracy[known] = est[0][tasks[known], cls], est[1][tasks[known], cls]
        fresh = known & np.isnan(reward)
        reward[fresh] = own[fresh]
        accuracy[fresh] = (last[fresh] == ALL_CORRECT).astype(np.float64)
        return reward, accuracy

    def state_dict(self) -> list[Any]:
        return list(self.sums.tolist())

    @classmethod
    def from_state(cls, value: Any, num_tasks: int) -> RetryStats:
        """Stats from `state_dict()` output: (4, K, 2) finite sums, groups >= 0, accuracy and informative in [0,
        groups] (they are discounted counts of the same groups), everything 0 where no group was recorded. The
        reward sums may be negative (so may rewards)."""
        arr = v.finite_array("state['retry_stats']", value, ndim=3)
        if arr.shape != (len(cls.FIELDS), num_tasks, 2):
            raise ValueError(
                f"state['retry_stats'] must be {len(cls.FIELDS)} x {num_tasks} x 2 sums (fields {list(cls.FIELDS)} x "
                f"tasks x last-seen class all-correct, all-wrong), got shape {arr.shape}"
            )
        groups = arr[0]
        slack = 1e-9 * np.maximum(groups, 1.0)  # the sums are accumulated in floating point
        checks = {
            "groups": (groups < 0, "a discounted count >= 0"),
            "reward": ((groups <= 0) & (arr[1] != 0), "0 where the class has no group"),
            "accuracy": ((arr[2] < 0) | (arr[2] > groups + slack), "in [0, groups]: a discounted count of groups"),
            "informative": ((arr[3] < 0) | (arr[3] > groups + slack), "in [0, groups]: a discounted count of groups"),
        }
        for f, (name, (bad, expected)) in enumerate(checks.items()):
            if bad.any():
                k, c = (int(i) for i in np.argwhere(bad)[0])
                raise ValueError(
                    f"state['retry_stats'] field {name!r} of task {k}, class {OUTCOMES[ALL_CORRECT + c]!r} is "
                    f"{float(arr[f, k, c])!r} (groups {float(groups[k, c])!r}); expected {expected}"
                )
        stats = cls(num_tasks)
        stats.sums = arr.copy()
        return stats


class SkipRule(Protocol):
    """Decides which rows, met in this order in task `task`'s pass, a draw passes over (True = skip). `uniform`
    holds one seeded U[0, 1) number per row. The pool still hands out a row skipped max_skips times in a row. A rule
    may also define `stand_ins(rows, tasks, group_size) -> (task, reward)` for the rows it passed over (the
    simulator's oracle knows their expected rewards); `PromptPool.take` uses it instead of the history's estimates."""

    def skip(
        self, task: int, rows: NDArray[np.int64], uniform: NDArray[np.float64], history: PromptHistory
    ) -> NDArray[np.bool_]: ...


class HistorySkip:
    """Pass over rows last seen uninformative unless uniform < r_k (module docstring); r_k from the task's rows."""

    def __init__(self, config: SelectionConfig, task_rows: list[NDArray[np.int64]]) -> None:
        self.config = config
        self._task_rows = task_rows

    def retry_probability(self, task: int, history: PromptHistory) -> float:
        """r_k = (t_k - f_k) / (1 - f_k), clipped to [min_retry, 1], with t_k = exploration (1 - c_k) / ((1 -
        exploration) c_k) the retry rate per candidate met that the target needs and f_k the candidates' share at
        max_skips (handed out anyway); 1 while the task has no candidate."""
        rows = self._task_rows[task]
        candidate = history.uninformative(rows)
        share = float(candidate.mean())
        if share == 0.0:
            return 1.0
        e, bound = self.config.exploration, self.config.max_skips
        need = e * (1.0 - share) / ((1.0 - e) * share)
        forced = 0.0 if bound is None else float((history.skips[rows[candidate]] >= bound).mean())
        rate = (need - forced) / (1.0 - forced) if forced < 1.0 else 1.0
        return float(np.clip(rate, self.config.min_retry, 1.0))

    def skip(
        self, task: int, rows: NDArray[np.int64], uniform: NDArray[np.float64], history: PromptHistory
    ) -> NDArray[np.bool_]:
        return history.uninformative(rows) & (uniform >= self.retry_probability(task, history))
