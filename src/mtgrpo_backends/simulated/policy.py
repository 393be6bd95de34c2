"""A simulated multi-task policy that learns from the batches the real controller builds.

Model (all randomness from numpy Generators seeded explicitly):
- Task k has a skill logit s_k and a population of prompts of heterogeneous difficulty: a fraction u_k of prompts
  is unsolvable (p = 0: the accuracy ceiling is 1 - u_k); a solvable prompt has a logit offset o ~ Normal(0,
  spread_k) and success probability p = sigmoid(s_k + o). Training prompts are fresh draws from the population
  (the skill is shared by all prompts of a task, nothing is memorised per prompt), or, with a finite pool
  (`pool_sizes`), rows of a training set drawn once per seed: each row keeps its own offset and solvability for
  the whole run, so a prompt that was impossible stays impossible and a hard one stays hard as the skill moves.
- A rollout is correct with probability p; a wrong rollout is in the right format with probability
  f_k = sigmoid(phi_k). Rewards follow the paper: 1.0 correct, 0.1 wrong but formatted, 0 otherwise. A group of N
  rollouts is zero-gradient under the strict filter with probability p^N + (1-p)^N.
- Training step: GRPO advantages A on the batch's groups, then one gradient step of the batch-mean policy-gradient
  objective on the policy's own parameters. With the log-probabilities of this model the gradient wrt the
  correctness logit of a prompt is sum_j A_j (c_j - p) and wrt the format logit sum_j A_j (1 - c_j)(m_j - f)
  (c: correct, m: formatted). Only groups that reached the batch contribute; a zero-gradient group has A = 0.
  Per-task gradients are spread by a transfer matrix T (T_kk = 1; T_kj > 0 positive, < 0 negative transfer from
  training task j to task k) and scaled by the task's learning speed eta_k:
  ds_k = eta_k sum_j T_kj g_j;  dphi_k = eta_k h_k with h_k the task's own format gradient.
- Held-out accuracy: the EXPECTED accuracy over a fixed held-out set of prompts drawn once per seed (no rollout
  sampling noise; the finite set keeps the prompt-sampling noise of a real test set).
- Groups kept from an earlier step (carry-over) are trained as PPO trains them: each rollout's gradient is
  weighted by the importance ratio r = pi_current(y) / pi_generating(y) and is zero where the clipped surrogate
  min(r A, clip(r, 1-e_lo, 1+e_hi) A) is clipped; a fresh group has r = 1 exactly.
- Surrogate values for I_k (Eq. 8): `train_step` returns, for every rollout of the batch, the clipped surrogate
  before the update (r = 1 for a fresh group: the value is A) and after it; the core's signal path reduces them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit, logit

from mtgrpo_core import checks as v
from mtgrpo_core.advantages import group_advantages
from mtgrpo_core.protocols import CORRECT, FORMATTED, UNFORMATTED

CLIP_LOW = 0.2
CLIP_HIGH = 0.28  # DAPO's clip-higher, as in the paper's runs


@dataclass(frozen=True)
class TaskModel:
    """Parameters of one simulated task (see the module docstring for their meaning)."""

    name: str
    skill: float
    spread: float
    unsolvable: float
    format_rate: float
    speed: float

    def __post_init__(self) -> None:
        v.real_in_range(f"task {self.name!r} skill", self.skill)
        v.real_in_range(f"task {self.name!r} spread", self.spread, 0.0)
        v.real_in_range(f"task {self.name!r} unsolvable", self.unsolvable, 0.0, 1.0, high_open=True)
        v.real_in_range(f"task {self.name!r} format_rate", self.format_rate, 0.0, 1.0, low_open=True, high_open=True)
        v.real_in_range(f"task {self.name!r} speed", self.speed, 0.0)


_FRESH = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Groups:
    """Generated prompt groups: task (n,), solvable (n,), offset (n,), prob and format_prob (n,) at generation (the
    generating policy's), correct and formatted (n, N) bool, prompt (n,): the pool row (-1: a fresh prompt)."""

    task: NDArray[np.int64]
    solvable: NDArray[np.bool_]
    offset: NDArray[np.float64]
    prob: NDArray[np.float64]
    format_prob: NDArray[np.float64]
    correct: NDArray[np.bool_]
    formatted: NDArray[np.bool_]
    prompt: NDArray[np.int64] = field(default_factory=lambda: _FRESH)  # left out: -1 for every group

    def __post_init__(self) -> None:
        if self.prompt is _FRESH:
            object.__setattr__(self, "prompt", np.full(self.task.shape, -1, dtype=np.int64))

    @property
    def rewards(self) -> NDArray[np.float64]:
        """The paper's reward protocol, shape (n, N)."""
        return np.where(self.correct, CORRECT, np.where(self.formatted, FORMATTED, UNFORMATTED))

    def __len__(self) -> int:
        return int(self.task.shape[0])

    def rollouts(self) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Task and reward of every rollout, group by group: (n N,) each."""
        return np.repeat(self.task, self.correct.shape[1]), self.rewards.ravel()

    def take(self, index: ArrayLike) -> Groups:
        i = np.asarray(index, dtype=np.int64)
        return Groups(*(getattr(self, f)[i] for f in _GROUP_FIELDS))

    @staticmethod
    def empty(group_size: int) -> Groups:
        """No groups (rollout columns of width group_size)."""
        flat, bools, ints = np.zeros(0), np.zeros((0, group_size), dtype=np.bool_), np.zeros(0, dtype=np.int64)
        return Groups(ints, np.zeros(0, dtype=np.bool_), flat, flat, flat, bools, bools, ints)

    @staticmethod
    def concat(parts: list[Groups]) -> Groups:
        return Groups(*(np.concatenate([getattr(p, f) for p in parts]) for f in _GROUP_FIELDS))


_GROUP_FIELDS = ("task", "solvable", "offset", "prob", "format_prob", "correct", "formatted", "prompt")


def zero_gradient_probability(
    prob: ArrayLike, group_size: int, format_rate: ArrayLike = 1.0, filter: str = "strict"
) -> NDArray[np.float64]:
    """P(a group of N rollouts has zero gradient) for prompts of success probability p.

    strict (by accuracy): p^N + (1-p)^N. lenient (all rewards equal): p^N + ((1-p) f)^N + ((1-p)(1-f))^N.
    """
    p = np.asarray(prob, dtype=np.float64)
    n = v.positive_int("group_size", group_size)
    v.choice("filter", filter, ("strict", "lenient"))
    if filter == "strict":
        return np.asarray(p**n + (1 - p) ** n)
    f = np.asarray(format_rate, dtype=np.float64)
    return np.asarray(p**n + ((1 - p) * f) ** n + ((1 - p) * (1 - f)) ** n)


class SimulatedPolicy:
    """K simulated tasks with skills that respond to GRPO steps on the batches they are given."""

    def __init__(
        self,
        tasks: list[TaskModel],
        transfer: ArrayLike | None = None,
        group_size: int = 8,
        heldout_size: int = 200,
        seed: int = 0,
        pool_sizes: Sequence[int] | None = None,
    ) -> None:
        if not tasks or not all(isinstance(t, TaskModel) for t in tasks):
            raise TypeError(f"tasks must be a non-empty list of TaskModel, got {tasks!r}")
        self.tasks = list(tasks)
        k = len(tasks)
        self.group_size = v.positive_int("group_size", group_size, minimum=2)
        t = np.eye(k) if transfer is None else v.finite_array("transfer", transfer, ndim=2)
        if t.shape != (k, k) or not np.allclose(np.diag(t), 1.0):
            raise ValueError(f"transfer must be a ({k}, {k}) matrix with ones on the diagonal, got {t.tolist()}")
        self.transfer = t
        self._speed = np.array([x.speed for x in tasks])
        self._spread = np.array([x.spread for x in tasks])
        self._unsolvable = np.array([x.unsolvable for x in tasks])
        self.skill = np.array([x.skill for x in tasks])
        self.format_logit = logit(np.array([x.format_rate for x in tasks]))
        seeds = np.random.SeedSequence(v.positive_int("seed", seed, minimum=0)).spawn(3)
        heldout = np.random.default_rng(seeds[0])
        h = v.positive_int("heldout_size", heldout_size)
        self._heldout_offset = heldout.standard_normal((k, h)) * self._spread[:, None]
        self._heldout_solvable = heldout.random((k, h)) >= self._unsolvable[:, None]
        self._rng = np.random.default_rng(seeds[1])
        self.pool_task = np.zeros(0, dtype=np.int64)  # the finite training set, task-major (empty: fresh prompts)
        self._pool_offset, self._pool_solvable = np.zeros(0), np.zeros(0, dtype=np.bool_)
        if pool_sizes is not None:
            sizes = [v.positive_int(f"pool_sizes[{i}]", n) for i, n in enumerate(pool_sizes)]
            if len(sizes) != k:
                raise ValueError(f"pool_sizes must hold {k} sizes (one per task), got {len(sizes)}")
            pool = np.random.default_rng(seeds[2])
            self.pool_task = np.repeat(np.arange(k), sizes)
            self._pool_offset = pool.standard_normal(self.pool_task.size) * self._spread[self.pool_task]
            self._pool_solvable = pool.random(self.pool_task.size) >= self._unsolvable[self.pool_task]

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def format_rate(self) -> NDArray[np.float64]:
        return np.asarray(expit(self.format_logit))

    def heldout_accuracy(self) -> NDArray[np.float64]:
        """Expected accuracy per task over the fixed held-out prompt set, shape (K,)."""
        p = expit(self.skill[:, None] + self._heldout_offset) * self._heldout_solvable
        return np.asarray(p.mean(axis=1))

    def generate(self, counts: ArrayLike) -> Groups:
        """Draw counts[k] fresh prompts of task k and N rollouts of each, in random order (like a shuffled
        generation batch: DAPO's truncation keeps the first informative groups in report order)."""
        c = v.int_array("counts", counts, ndim=1)
        if c.shape[0] != self.num_tasks or (c < 0).any():
            raise ValueError(f"counts must be {self.num_tasks} non-negative ints, got {c.tolist()}")
        rng = self._rng
        task = rng.permutation(np.repeat(np.arange(self.num_tasks), c))
        n = task.shape[0]
        solvable = rng.random(n) >= self._unsolvable[task]
        offset = rng.standard_normal(n) * self._spread[task]
        return self._rollouts(task, solvable, offset, np.full(n, -1, dtype=np.int64))

    def generate_rows(self, rows: ArrayLike) -> Groups:
        """N rollouts of each pool row (a PromptPool draw over `pool_task`), in random order."""
        r = v.int_array("rows", rows, ndim=1)
        if r.size and (r.min() < 0 or r.max() >= self.pool_task.size):
            raise ValueError(f"rows must be rows of the training pool, in [0, {self.pool_task.size}), got {r.tolist()}")
        r = r[self._rng.permutation(r.size)]
        return self._rollouts(self.pool_task[r], self._pool_solvable[r], self._pool_offset[r], r)

    def informative_probability(self, rows: NDArray[np.int64], filter: str) -> NDArray[np.float64]:
        """P(a group of pool row r is kept by `filter`) under the current policy, for each row."""
        task = self.pool_task[rows]
        prob = expit(self.skill[task] + self._pool_offset[rows]) * self._pool_solvable[rows]
        return 1.0 - zero_gradient_probability(prob, self.group_size, self.format_rate[task], filter)

    def expected_rewards(self, rows: NDArray[np.int64]) -> NDArray[np.float64]:
        """A group at expectation for each pool row, (n, N): round(p N) correct rollouts, the others at the expected
        reward of a wrong one (the oracle's stand-in for a prompt it skipped)."""
        task = self.pool_task[rows]
        prob = expit(self.skill[task] + self._pool_offset[rows]) * self._pool_solvable[rows]
        wrong = FORMATTED * self.format_rate[task] + UNFORMATTED * (1.0 - self.format_rate[task])
        correct = np.arange(self.group_size)[None, :] < np.round(prob * self.group_size)[:, None]
        return np.where(correct, CORRECT, wrong[:, None])

    def _rollouts(
        self, task: NDArray[np.int64], solvable: NDArray[np.bool_], offset: NDArray[np.float64], prompt: NDArray[Any]
    ) -> Groups:
        prob = expit(self.skill[task] + offset) * solvable
        format_prob = self.format_rate[task]
        draws = self._rng.random((2, task.shape[0], self.group_size))
        correct = draws[0] < prob[:, None]
        formatted = ~correct & (draws[1] < format_prob[:, None])
        return Groups(task, solvable, offset, prob, format_prob, correct, formatted, prompt)

    def train_step(self, batch: Groups) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """One GRPO step on the batch's groups. Returns, per rollout (n, N), the advantage A and the clipped
        surrogate before and after the update (before = A for a fresh group)."""
        k = self.num_tasks
        if len(batch) == 0:
            empty = np.zeros((0, self.group_size))
            return empty, empty, empty
        adv = group_advantages(batch.rewards, method="grpo")
        ratio = self._ratio(batch)  # 1 for fresh groups
        low, high = 1.0 - CLIP_LOW, 1.0 + CLIP_HIGH
        active = ((adv > 0) & (ratio < high)) | ((adv < 0) & (ratio > low))  # where the clipped surrogate has slope
        weight = np.where(active, adv * ratio, 0.0)
        p_cur = (expit(self.skill[batch.task] + batch.offset) * batch.solvable)[:, None]
        f_cur = self.format_rate[batch.task][:, None]
        grad_s = (weight * (batch.correct - p_cur)).sum(axis=1)
        grad_phi = (weight * ~batch.correct * (batch.formatted - f_cur)).sum(axis=1)
        rows = len(batch) * self.group_size  # the loss is the mean over the batch's rollouts
        g_s = np.bincount(batch.task, weights=grad_s, minlength=k) / rows
        g_phi = np.bincount(batch.task, weights=grad_phi, minlength=k) / rows
        before = np.minimum(ratio * adv, np.clip(ratio, low, high) * adv)
        self.skill = self.skill + self._speed * (self.transfer @ g_s)
        self.format_logit = self.format_logit + self._speed * g_phi
        after_ratio = self._ratio(batch)
        return adv, before, np.minimum(after_ratio * adv, np.clip(after_ratio, low, high) * adv)

    def _ratio(self, batch: Groups) -> NDArray[np.float64]:
        """pi_current(y) / pi_generating(y) for every rollout of the batch, shape (n, N). Branches for outcomes of
        probability 0 (a wrong answer at p = 1, a correct one at an unsolvable prompt) are never selected."""
        p_old = batch.prob[:, None]
        p_new = (expit(self.skill[batch.task] + batch.offset) * batch.solvable)[:, None]
        f_new = self.format_rate[batch.task][:, None]
        f_o = batch.format_prob[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            correct = np.where(p_old > 0, p_new / p_old, 1.0)
            wrong = (1 - p_new) / (1 - p_old)
            fmt = np.where(batch.formatted, f_new / f_o, (1 - f_new) / (1 - f_o))
        return np.asarray(np.where(batch.correct, correct, wrong * fmt))
