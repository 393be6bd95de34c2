"""Benchmark suites: simulated tasks described by observable quantities, stored as JSON.

The file format is the schema in suite_schema.py (`SuiteSpec`); this module solves each task's model from the
validated observables (`solve_task`), generates recipe suites, and loads shipped or user suite files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import norm

from mtgrpo_backends.simulated.policy import SimulatedPolicy, TaskModel
from mtgrpo_backends.simulated.suite_schema import RecipeSpec, SuiteDefaults, validate_suite
from mtgrpo_backends.simulated.suite_schema import SuiteError as SuiteError  # re-exported: part of this API

MAX_SPREAD = 20.0
_NODES = norm.ppf((np.arange(500) + 0.5) / 500)  # quantiles of N(0, 1) for population averages


@dataclass(frozen=True)
class Suite:
    """A frozen set of simulated tasks and the run settings the suite was calibrated at."""

    name: str
    description: str
    tasks: tuple[TaskModel, ...]
    transfer: NDArray[np.float64]
    heldout_size: int
    defaults: SuiteDefaults
    grpo_accuracy: tuple[float | None, ...] = ()
    pool_sizes: tuple[int, ...] | None = None  # prompts of each task's finite training pool (None: fresh prompts)
    families: tuple[int, ...] | None = None  # each task's family index (None: the suite names no families)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def policy(self, seed: int, group_size: int) -> SimulatedPolicy:
        """A fresh simulated policy for one run."""
        return SimulatedPolicy(list(self.tasks), self.transfer, group_size, self.heldout_size, seed, self.pool_sizes)


def population_accuracy(skill: float, spread: float) -> float:
    """Mean of sigmoid(skill + spread * x) over x ~ Normal(0, 1) (solvable prompts only)."""
    return float(expit(skill + spread * _NODES).mean())


def population_zero_gradient(skill: float, spread: float, group_size: int) -> float:
    """Mean strict zero-gradient probability p^N + (1-p)^N over the solvable prompts."""
    p = expit(skill + spread * _NODES)
    return float((p**group_size + (1 - p) ** group_size).mean())


def skill_for_accuracy(accuracy: float, spread: float) -> float:
    """The skill logit at which the solvable prompts' mean accuracy equals `accuracy` (in (0, 1))."""
    return float(brentq(lambda s: population_accuracy(s, spread) - accuracy, -60.0, 60.0, xtol=1e-10))


def solve_task(
    where: str,
    start_accuracy: float,
    zero_gradient_rate: float,
    observed_at_accuracy: float,
    ceiling_accuracy: float,
    group_size: int,
) -> tuple[float, float, float]:
    """(skill, spread, unsolvable) that reproduce the observables; SuiteError naming `where` if impossible.

    The unsolvable fraction is 1 - ceiling. Among solvable prompts the accuracy at observation is
    observed_at_accuracy / ceiling and the zero-gradient rate (rate - unsolvable) / ceiling (unsolvable prompts
    always give all-wrong groups). The spread is the one that yields that rate at that accuracy; the start skill
    then gives start_accuracy with the same spread.
    """
    u = 1.0 - ceiling_accuracy
    for field, acc in (("start_accuracy", start_accuracy), ("observed_at_accuracy", observed_at_accuracy)):
        if not 0.0 < acc < ceiling_accuracy:
            raise SuiteError(f"{where}.{field}: {acc} must lie in (0, ceiling_accuracy={ceiling_accuracy})")
    a_obs = observed_at_accuracy / ceiling_accuracy
    zg = (zero_gradient_rate - u) / ceiling_accuracy
    low = a_obs**group_size + (1 - a_obs) ** group_size
    high = population_zero_gradient(skill_for_accuracy(a_obs, MAX_SPREAD), MAX_SPREAD, group_size)
    if not low <= zg <= high:
        lo_rate, hi_rate = u + ceiling_accuracy * low, u + ceiling_accuracy * high
        raise SuiteError(
            f"{where}.zero_gradient_rate: {zero_gradient_rate} is unreachable at observed_at_accuracy="
            f"{observed_at_accuracy}, ceiling_accuracy={ceiling_accuracy}, N={group_size}: expected a rate in "
            f"[{lo_rate:.4f}, {hi_rate:.4f}]"
        )

    def gap(spread: float) -> float:
        return population_zero_gradient(skill_for_accuracy(a_obs, spread), spread, group_size) - zg

    spread = 0.0 if gap(0.0) >= 0 else float(brentq(gap, 0.0, MAX_SPREAD, xtol=1e-8))
    skill = skill_for_accuracy(start_accuracy / ceiling_accuracy, spread)
    return skill, spread, u


# -- building ----------------------------------------------------------------------------------------------
def _generate(where: str, r: RecipeSpec, group_size: int) -> tuple[list[TaskModel], NDArray[np.float64]]:
    """The tasks and transfer matrix of a recipe (see `RecipeSpec`)."""
    rng = np.random.default_rng(r.seed)
    tasks = []
    for i in range(r.num_tasks):
        c = rng.uniform(*r.ceiling_accuracy)
        a = rng.uniform(*r.start_accuracy)
        a_s = a / c
        low = a_s**group_size + (1 - a_s) ** group_size
        high = population_zero_gradient(skill_for_accuracy(a_s, MAX_SPREAD), MAX_SPREAD, group_size)
        zg = (1 - c) + c * (low + rng.uniform(*r.zero_gradient_excess) * (high - low))
        eta = float(np.exp(rng.uniform(np.log(r.learning_speed[0]), np.log(r.learning_speed[1]))))
        skill, spread, u = solve_task(f"{where} task {i}", a, zg, a, c, group_size)
        tasks.append(TaskModel(f"task{i:03d}", skill, spread, u, rng.uniform(*r.format_rate), eta))
    fam = np.arange(r.num_tasks) // r.family_size
    transfer = np.where(fam[:, None] == fam[None, :], r.transfer_within, r.transfer_across)
    np.fill_diagonal(transfer, 1.0)
    return tasks, transfer


def suite_from_dict(data: Any, source: str = "suite") -> Suite:
    """Build a Suite from a parsed JSON object; SuiteError naming the field path, value and expectation."""
    spec = validate_suite(data, source)
    where = f"suite {spec.name!r}"
    n_obs = spec.observed_group_size
    if spec.recipe is not None:
        tasks, transfer = _generate(f"{where}.recipe", spec.recipe, n_obs)
        grpo: tuple[float | None, ...] = ()
        pools = None
        families: tuple[int, ...] | None = tuple(i // spec.recipe.family_size for i in range(spec.recipe.num_tasks))
    else:
        assert spec.tasks is not None  # the schema requires exactly one of tasks / recipe
        tasks = []
        for i, t in enumerate(spec.tasks):
            args = (t.start_accuracy, t.zero_gradient_rate, t.observed_at_accuracy, t.ceiling_accuracy, n_obs)
            skill, spread, unsolvable = solve_task(f"{where}.tasks[{i}]", *args)
            tasks.append(TaskModel(t.name, skill, spread, unsolvable, t.format_rate, t.learning_speed))
        grpo = tuple(t.grpo_accuracy for t in spec.tasks)
        sizes = [t.pool_size for t in spec.tasks if t.pool_size is not None]
        pools = tuple(sizes) if sizes else None
        transfer = np.eye(len(tasks)) if spec.transfer is None else np.array(spec.transfer, dtype=np.float64)
        families = None if spec.families is None else _family_of_each(spec.families, [t.name for t in spec.tasks])
    return Suite(
        spec.name, spec.description, tuple(tasks), transfer, spec.heldout_size, spec.defaults, grpo, pools, families
    )


def _family_of_each(families: dict[str, list[str]], names: list[str]) -> tuple[int, ...]:
    """Each task's family index (families in the file's order), from the schema-checked `families` field."""
    index = {name: f for f, members in enumerate(families.values()) for name in members}
    return tuple(index[name] for name in names)


def builtin_suites() -> list[str]:
    """Names of the suites shipped with the package."""
    folder = resources.files("mtgrpo_backends.simulated") / "suites"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_suite(name_or_path: str | Path) -> Suite:
    """A shipped suite by name, or a suite JSON file by path."""
    text = str(name_or_path)
    if text in builtin_suites():
        raw = (resources.files("mtgrpo_backends.simulated") / "suites" / f"{text}.json").read_text()
        source = f"built-in suite {text}"
    elif text.endswith(".json") or Path(text).exists():
        path = Path(text)
        if not path.is_file():
            raise SuiteError(f"suite file {text!r} does not exist")
        raw, source = path.read_text(), text
    else:
        raise ValueError(f"suite must be one of {builtin_suites()} or a path to a .json suite file, got {text!r}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise SuiteError(f"{source}: not valid JSON ({err})") from err
    return suite_from_dict(data, source)
