"""The prompt pool: which rows of a finite multi-task dataset a request of per-task counts generates.

Each task's rows are visited in passes; pass e of task k is a permutation seeded by (seed, k, e), so every process
draws the same rows without communication, and the state is one cursor per task. Every backend with a finite
dataset draws through this one pool. With `selection` (a `SelectionConfig`) the pool also keeps a per-prompt
history, fed by `report`, and a skip rule passes over prompts at their turn (docs/selective.md); a draw still
hands out exactly the requested count of every task.

A trainer's step: `take(counts, N)` for each request (the rows to generate), `report(rows, rewards)` for what came
back, and `end_step()` for what the step's draws leave: the stand-in rollouts of the prompts passed over (to join
the step's rollouts, `with_stand_ins`) and per-task counts for the log. No backend draws stand-ins itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_core import checks as v
from mtgrpo_core.prompts.history import (
    ALL_CORRECT,
    INFORMATIVE,
    HistorySkip,
    PromptHistory,
    RetryStats,
    SelectionConfig,
    SkipRule,
    group_outcomes,
)


def task_ids_of(values: Sequence[Any], tasks: Sequence[str], what: str = "task column") -> NDArray[np.int64]:
    """Map each row's task name to its id (position in `tasks`), refusing names not in `tasks`."""
    index = {name: k for k, name in enumerate(tasks)}
    ids = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        if value not in index:
            raise ValueError(f"{what} holds {value!r} at row {row}, which is not in tasks {list(tasks)}")
        ids[row] = index[value]
    return ids


DRAW_COUNTS: tuple[str, ...] = ("handed_out", "retried", "retried_informative", "skipped")


@dataclass(frozen=True)
class StepDraws:
    """What one step's draws leave (`PromptPool.end_step`). stand_in_task, stand_in_reward: the rollouts standing
    in for the prompts passed over (N per prompt last seen uninformative, `Selection.stand_ins`, or the skip rule's
    own), for the step's facts. skipped_rows, skipped_tasks: the prompts passed over. counts: per task, prompts
    handed out, retried (handed out although last seen uninformative), retried that came back informative, and
    passed over."""

    stand_in_task: NDArray[np.int64]
    stand_in_reward: NDArray[np.float64]
    skipped_rows: NDArray[np.int64]
    skipped_tasks: NDArray[np.int64]
    counts: dict[str, list[int]]


STAND_IN_STREAM = 0x5354414E  # "STAN": stand-ins draw from SeedSequence([seed, STAND_IN_STREAM, draw])


@dataclass(frozen=True)
class Selection:
    """One draw: rows and tasks handed out (task by task), `retried` (rows: handed out although last seen
    uninformative), and the rows passed over with their tasks and the (mean reward, accuracy) standing in for each
    (`RetryStats.stand_in`; NaN for a row not last seen uninformative). `draw_seed` is (pool seed, draw number):
    it seeds the stand-ins, so they are the same on every rank and after a resume."""

    rows: NDArray[np.int64]
    tasks: NDArray[np.int64]
    retried: NDArray[np.bool_]
    skipped: NDArray[np.int64]
    skipped_tasks: NDArray[np.int64]
    skipped_reward: NDArray[np.float64]
    skipped_accuracy: NDArray[np.float64]
    draw_seed: tuple[int, int]

    def stand_ins(self, group_size: int, correct_reward: float = 1.0) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """(task, reward) of stand-in rollouts for the skipped rows last seen uninformative, N = group_size per row.
        Appended to a step's rollouts (StepFacts), they keep J_k and accuracy a measure of the task rather than of
        the prompts the rule let through (docs/selective.md).

        A row's estimate is (mean reward m, accuracy a), accuracy being the share of rollouts == correct_reward
        (`signals.task_accuracy`). Its group holds C rollouts of correct_reward and N - C of w = (m - a
        correct_reward) / (1 - a), the estimate's mean reward of the rollouts that were not correct. C is a N
        rounded at random, floor(a N) + Bernoulli(a N - floor(a N)), so E[C] = a N: the accuracy is unbiased,
        and as w does not depend on C, so is the mean reward (E[C correct_reward + (N - C) w] / N = m). Every
        reward is correct_reward or the (discounted) mean of rewards that were seen, so none leaves their range.
        Rounding a N to the nearest count instead biases both (0.95 became N correct rollouts, mean reward 1), and
        fitting w to the rounded count gives rewards outside the range (0.33 with N = 8: -0.07). Fractional
        rewards alone cannot carry the accuracy, which counts whole rollouts. The coins come from
        SeedSequence([seed, STAND_IN_STREAM, draw]) (`draw_seed`): the same stand-ins on every rank, after a
        resume and at every call.
        """
        n = v.positive_int("group_size", group_size)
        target = v.real_in_range("correct_reward", correct_reward)
        known = ~np.isnan(self.skipped_reward)
        reward, accuracy = self.skipped_reward[known], np.clip(self.skipped_accuracy[known], 0.0, 1.0)
        seed, draw = self.draw_seed
        coins = np.random.default_rng(np.random.SeedSequence([seed, STAND_IN_STREAM, draw])).random(reward.size)
        expected = accuracy * n
        correct = np.floor(expected) + (coins < expected - np.floor(expected))
        with np.errstate(invalid="ignore", divide="ignore"):
            wrong = np.where(accuracy < 1.0, (reward - accuracy * target) / (1.0 - accuracy), target)
        wrong = np.where(wrong == target, np.nextafter(target, -np.inf), wrong)  # a wrong rollout never counts correct
        rollouts = np.where(np.arange(n)[None, :] < correct[:, None], target, wrong[:, None])
        return np.repeat(self.skipped_tasks[known], n), rollouts.ravel()


class PromptPool:
    """Draws dataset row indices per task without replacement within a pass over the task's rows.

    row_tasks: (rows,) task id of each dataset row; task_names: the K task names (ids are positions).
    selection: keep a per-prompt history and skip by it (None, the default: no history, no skipping).
    skip_rule: replaces the history rule (e.g. the simulator's oracle); needs `selection`.
    """

    KIND = "prompt_pool"

    def __init__(
        self,
        row_tasks: ArrayLike,
        task_names: Sequence[str],
        seed: int = 0,
        selection: SelectionConfig | None = None,
        skip_rule: SkipRule | None = None,
    ) -> None:
        self.task_names = list(task_names)
        self._k = v.positive_int("number of task_names", len(self.task_names))
        self.seed = v.positive_int("seed", seed, minimum=0)
        ids = v.task_ids("row_tasks", row_tasks, self._k)
        self._rows = [np.flatnonzero(ids == k) for k in range(self._k)]
        empty = [self.task_names[k] for k in range(self._k) if self._rows[k].size == 0]
        if empty:
            raise ValueError(f"the dataset has no rows for tasks {empty}; every configured task needs prompts")
        self._cursor = np.zeros(self._k, dtype=np.int64)
        if selection is not None and not isinstance(selection, SelectionConfig):
            raise TypeError(f"selection must be a SelectionConfig or None, got {type(selection).__name__}")
        if skip_rule is not None and selection is None:
            raise ValueError("skip_rule needs selection (a SelectionConfig): the pool keeps no history without it")
        self.selection = selection
        self._digest = hashlib.sha256(ids.astype("<i8").tobytes()).hexdigest()[:16]
        self._draws = 0
        self.history = PromptHistory(ids.shape[0]) if selection is not None else None
        self.retry_stats = RetryStats(self._k) if selection is not None else None
        self._row_task = ids.astype(np.min_scalar_type(self._k - 1)) if selection is not None else None
        self._rule: SkipRule | None = None
        if selection is not None:
            self._rule = skip_rule if skip_rule is not None else HistorySkip(selection, self._rows)
        self._step: list[Any] = []  # this step's Selections and stand-ins (take), until end_step
        self._step_counts = {name: np.zeros(self._k, dtype=np.int64) for name in DRAW_COUNTS}
        self._retrying: set[int] = set()  # rows handed out as retries, until reported

    @property
    def num_tasks(self) -> int:
        return self._k

    @property
    def num_rows(self) -> int:
        return int(sum(r.size for r in self._rows))

    def _rng(self, task: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, task, epoch]))

    def _order(self, task: int, epoch: int) -> NDArray[np.int64]:
        return self._rows[task][self._rng(task, epoch).permutation(self._rows[task].size)]

    def _pass(self, task: int, epoch: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Pass `epoch` of a task: its rows in `_order`'s order and one seeded uniform number per position."""
        rng = self._rng(task, epoch)
        order = self._rows[task][rng.permutation(self._rows[task].size)]
        return order, rng.random(order.size)

    def _counts(self, counts: ArrayLike) -> NDArray[np.int64]:
        c = v.int_array("counts", counts, ndim=1)
        if c.shape[0] != self._k or (c < 0).any():
            raise ValueError(f"counts must be {self._k} non-negative ints (one per task), got {c.tolist()}")
        return c

    def draw(self, counts: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Row indices for counts[k] prompts of each task k -> (rows, task ids), task by task."""
        if self.selection is not None:
            picked = self.select(counts)
            return picked.rows, picked.tasks
        c = self._counts(counts)
        rows, tasks = [], []
        for k in range(self._k):
            size = self._rows[k].size
            start, stop = int(self._cursor[k]), int(self._cursor[k] + c[k])
            epochs = range(start // size, (stop - 1) // size + 1) if stop > start else range(0)
            order = np.concatenate([self._order(k, e) for e in epochs]) if epochs else np.zeros(0, np.int64)
            offset = epochs[0] * size if epochs else 0
            rows.append(order[start - offset : stop - offset])
            tasks.append(np.full(int(c[k]), k, dtype=np.int64))
            self._cursor[k] = stop
        return np.concatenate(rows), np.concatenate(tasks)

    def take(self, counts: ArrayLike, group_size: int) -> Selection:
        """A request's draw (`select` with selection, else `draw` with nothing passed over), booked for `end_step`:
        with selection the stand-ins of the prompts passed over (N = group_size rollouts each; a skip rule with a
        `stand_ins(rows, tasks, group_size)` method gives its own) and the per-task counts."""
        n = v.positive_int("group_size", group_size)
        if self.selection is None:
            rows, tasks = self.draw(counts)
            self._step_counts["handed_out"] += np.bincount(tasks, minlength=self._k)
            none, empty = np.zeros(0, np.int64), np.zeros(0)
            return Selection(rows, tasks, np.zeros(rows.size, np.bool_), none, none, empty, empty, (self.seed, -1))
        picked = self.select(counts)
        own = getattr(self._rule, "stand_ins", None)
        stand_ins = (
            own(picked.skipped, picked.skipped_tasks, n) if own else picked.stand_ins(n, self.selection.correct_reward)
        )
        self._step.append((picked, *stand_ins))
        self._step_counts["handed_out"] += np.bincount(picked.tasks, minlength=self._k)
        self._step_counts["retried"] += np.bincount(picked.tasks[picked.retried], minlength=self._k)
        self._step_counts["skipped"] += np.bincount(picked.skipped_tasks, minlength=self._k)
        self._retrying.update(picked.rows[picked.retried].tolist())
        return picked

    def end_step(self) -> StepDraws:
        """What this step's `take`s left (see StepDraws); starts the next step's account."""
        parts, counts = self._step, {name: c.tolist() for name, c in self._step_counts.items()}
        self._step = []
        for c in self._step_counts.values():
            c[:] = 0

        def joined(i: int, dtype: type) -> NDArray[Any]:
            return np.concatenate([np.zeros(0, dtype=dtype), *(p[i] for p in parts)])

        return StepDraws(
            stand_in_task=joined(1, np.int64),
            stand_in_reward=joined(2, np.float64),
            skipped_rows=np.concatenate([np.zeros(0, np.int64), *(p[0].skipped for p in parts)]),
            skipped_tasks=np.concatenate([np.zeros(0, np.int64), *(p[0].skipped_tasks for p in parts)]),
            counts=counts,
        )

    def select(self, counts: ArrayLike) -> Selection:
        """Like `draw`, with the skip rule: walk each task's pass from its cursor, hand out the rows the rule does not
        pass over until counts[k] are out. One draw passes over at most one pass's worth of a task's rows, and a row
        passed over max_skips times in a row is handed out, so every request is met in full."""
        if self.history is None or self._rule is None or self.selection is None or self.retry_stats is None:
            raise ValueError("select needs a pool built with selection (a SelectionConfig)")
        c = self._counts(counts)
        parts = [self._walk(k, int(c[k]), self.history, self._rule) for k in range(self._k)]
        rows, skipped = np.concatenate([p[0] for p in parts]), np.concatenate([p[2] for p in parts])
        history = self.history
        history.handed_out(rows, self._draws)
        self._draws += 1
        skipped_tasks = np.repeat(np.arange(self._k), [p[2].size for p in parts])
        reward, accuracy = self.retry_stats.stand_in(skipped_tasks, history.outcome[skipped], history.reward[skipped])
        return Selection(
            rows=rows,
            tasks=np.repeat(np.arange(self._k), c),
            retried=np.concatenate([p[1] for p in parts]),
            skipped=skipped,
            skipped_tasks=skipped_tasks,
            skipped_reward=reward,
            skipped_accuracy=accuracy,
            draw_seed=(self.seed, self._draws - 1),
        )

    def _walk(
        self, k: int, need: int, history: PromptHistory, rule: SkipRule
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64]]:
        """Task k's part of `select`: (rows handed out, which of them were candidates, rows passed over)."""
        max_skips = self.selection.max_skips if self.selection is not None else None
        size, pos = self._rows[k].size, int(self._cursor[k])
        budget = size  # skips left in this draw
        taken, retried, passed = [np.zeros(0, np.int64)], [np.zeros(0, np.bool_)], [np.zeros(0, np.int64)]
        while need > 0:
            epoch, offset = divmod(pos, size)
            order, uniform = self._pass(k, epoch)
            stop = min(size, offset + need + budget)
            rows = order[offset:stop]
            skip = rule.skip(k, rows, uniform[offset:stop], history)
            if max_skips is not None:
                skip &= history.skips[rows] < max_skips
            skip &= np.cumsum(skip) <= budget
            filled = np.cumsum(~skip)
            end = int(np.searchsorted(filled, need)) + 1 if filled[-1] >= need else rows.size
            out, over = rows[:end][~skip[:end]], rows[:end][skip[:end]]
            history.passed_over(over)
            taken.append(out)
            retried.append(history.uninformative(out))
            passed.append(over)
            need, budget, pos = need - out.size, budget - over.size, pos + end
        self._cursor[k] = pos
        return np.concatenate(taken), np.concatenate(retried), np.concatenate(passed)

    def report(self, rows: ArrayLike, rewards: ArrayLike) -> None:
        """Record the outcome of each row's group of rewards (n, N), classified by the selection's filter. Rows the
        pool never handed out are refused; a refused report changes nothing."""
        if self.history is None or self.selection is None or self.retry_stats is None or self._row_task is None:
            raise ValueError("report needs a pool built with selection (a SelectionConfig): this pool keeps no history")
        r = v.int_array("rows", rows, ndim=1)
        if r.size == 0:
            return
        if r.min() < 0 or r.max() >= self.num_rows:
            bad = int(r[(r < 0) | (r >= self.num_rows)][0])
            raise ValueError(f"rows holds {bad}, which is not a row of this dataset (rows 0 to {self.num_rows - 1})")
        never = r[self.history.seen[r] < 0]
        if never.size:
            raise ValueError(f"rows holds {int(never[0])}, which this pool never handed out: report only drawn rows")
        rewards_arr = v.finite_array("rewards", rewards, ndim=2)
        v.same_length("rows", r, "rewards", rewards_arr)
        cfg = self.selection
        outcome = group_outcomes(rewards_arr, cfg.filtering, cfg.correct_reward)
        mean, accuracy = rewards_arr.mean(axis=1), (rewards_arr == cfg.correct_reward).mean(axis=1)
        last = self.history.outcome[r]
        retry = last >= ALL_CORRECT
        values = np.stack([mean, accuracy, (outcome == INFORMATIVE).astype(np.float64)])[:, retry]
        self.retry_stats.add(self._row_task[r[retry]].astype(np.int64), last[retry], values)
        self.history.outcome[r] = outcome
        self.history.reward[r] = mean
        if self._retrying:  # retries booked by `take` that came back informative
            back = np.isin(r, list(self._retrying)) & (outcome == INFORMATIVE)
            self._step_counts["retried_informative"] += np.bincount(self._row_task[r[back]], minlength=self._k)
            self._retrying.difference_update(r.tolist())

    def state_dict(self) -> dict[str, Any]:
        """JSON-native state: the seed, the task names and one cursor per task; with selection also the dataset's
        size and digest, the selection settings, the number of draws and the per-row history."""
        state: dict[str, Any] = {
            "kind": self.KIND,
            "num_tasks": self._k,
            "task_names": list(self.task_names),
            "seed": self.seed,
            "cursor": self._cursor.tolist(),
        }
        if self.history is not None and self.selection is not None and self.retry_stats is not None:
            state.update(
                num_rows=self.num_rows,
                rows_digest=self._digest,
                selection=self.selection.to_dict(),
                draws=self._draws,
                history=self.history.state_dict(),
                retry_stats=self.retry_stats.state_dict(),
            )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state of a pool with the same task names (and with selection: the same dataset rows and
        settings); anything else is refused, nothing half-applied."""
        v.state_matches(state, self.KIND, self._k)
        if list(state.get("task_names", [])) != self.task_names:
            raise ValueError(
                f"state['task_names'] is {state.get('task_names')!r}, expected {self.task_names}: a pool of other tasks"
            )
        seed = v.positive_int("state['seed']", state.get("seed"), minimum=0)
        cursor = v.int_array("state['cursor']", state.get("cursor", []), ndim=1)
        if cursor.shape[0] != self._k or (cursor < 0).any():
            raise ValueError(f"state['cursor'] must be {self._k} non-negative ints, got {cursor.tolist()}")
        loaded = self._load_history(state)
        self.seed, self._cursor = seed, cursor.copy()
        if loaded is not None:
            self.history, self.retry_stats, self._draws = loaded

    def _load_history(self, state: Mapping[str, Any]) -> tuple[PromptHistory, RetryStats, int] | None:
        if self.selection is None:
            if "history" in state:
                raise ValueError("state holds a prompt history, but this pool keeps none (build it with selection)")
            return None
        if "history" not in state:
            raise ValueError("state holds no prompt history (saved by a pool without selection); expected one")
        expected = {"num_rows": self.num_rows, "rows_digest": self._digest, "selection": self.selection.to_dict()}
        for key, want in expected.items():
            if state.get(key) != want:
                raise ValueError(f"state[{key!r}] is {state.get(key)!r}, expected {want!r}: a state of another dataset")
        draws = v.positive_int("state['draws']", state.get("draws"), minimum=0)
        history = PromptHistory.from_state(state["history"], self.num_rows, draws)
        return history, RetryStats.from_state(state.get("retry_stats"), self._k), draws
