"""Benchmark suites: simulated tasks described by observable quantities, stored as JSON.

Suite file format (one JSON object; unknown fields are refused so that a typo cannot pass silently):

    {
      "name": "paper3",
      "description": "free text",
      "observed_group_size": 8,          # N at which the zero-gradient rates below were observed
      "heldout_size": 200,               # held-out prompts per task (expected accuracy over them)
      "defaults": {"steps": 720, "batch_size": 32, "group_size": 8, "max_rounds": 10, "seeds": 5,
                   "record_every": 1},   # optional; these are the values shown
      "tasks": [
        {"name": "countdown",
         "start_accuracy": 0.2,          # accuracy of the initial policy
         "zero_gradient_rate": 0.3,      # strict rate (all N correct or all N wrong) ...
         "observed_at_accuracy": 0.7,    # ... observed when the task's accuracy was this
         "ceiling_accuracy": 0.95,       # accuracy the task saturates at (1 - fraction of unsolvable prompts)
         "format_rate": 0.6,             # P(wrong answer is in the right format) at the start
         "learning_speed": 1.0,          # eta_k of the policy model (calibrated, see docs/benchmarks.md)
         "grpo_accuracy": 0.75}          # optional: accuracy uniform GRPO reaches at the defaults (calibration)
      ],
      "transfer": [[1, 0.1], [0, 1]]     # optional K x K matrix, row k = effect on task k; ones on the diagonal
    }

Instead of "tasks" (and "transfer") a suite may give a "recipe" that generates many tasks; see `RECIPE_FIELDS`.
The solvable prompts' logit spread and the start skill are solved from the observables (`solve_task`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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

MAX_SPREAD = 20.0
_NODES = norm.ppf((np.arange(500) + 0.5) / 500)  # quantiles of N(0, 1) for population averages

TOP_FIELDS = ("name", "description", "observed_group_size", "heldout_size", "defaults", "tasks", "transfer", "recipe")
TASK_FIELDS = (
    "name",
    "start_accuracy",
    "zero_gradient_rate",
    "observed_at_accuracy",
    "ceiling_accuracy",
    "format_rate",
    "learning_speed",
    "grpo_accuracy",
)
DEFAULT_FIELDS = ("steps", "batch_size", "group_size", "max_rounds", "seeds", "record_every")
# recipe: tasks in families of `family_size`; each range [low, high] is drawn uniformly (learning_speed
# log-uniformly); zero_gradient_excess places the solvable prompts' start zero-gradient rate between its minimum
# (all prompts equally hard) and 1; transfer_within / transfer_across fill the transfer matrix.
RECIPE_FIELDS = (
    "num_tasks",
    "seed",
    "family_size",
    "start_accuracy",
    "zero_gradient_excess",
    "ceiling_accuracy",
    "format_rate",
    "learning_speed",
    "transfer_within",
    "transfer_across",
)


class SuiteError(ValueError):
    """A malformed suite: the message names the field and the problem."""


@dataclass(frozen=True)
class SuiteDefaults:
    steps: int = 720
    batch_size: int = 32
    group_size: int = 8
    max_rounds: int = 10
    seeds: int = 5
    record_every: int = 1


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

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def policy(self, seed: int, group_size: int) -> SimulatedPolicy:
        """A fresh simulated policy for one run."""
        return SimulatedPolicy(list(self.tasks), self.transfer, group_size, self.heldout_size, seed)


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


# -- loading ------------------------------------------------------------------------------------------------
def _number(where: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise SuiteError(f"{where}: expected a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise SuiteError(f"{where}: {value} must lie in [{low}, {high}]")
    return float(value)


def _integer(where: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SuiteError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _fields(where: str, obj: Any, allowed: tuple[str, ...], required: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise SuiteError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise SuiteError(f"{where}: unknown field(s) {unknown}; allowed fields are {list(allowed)}")
    missing = [f for f in required if f not in obj]
    if missing:
        raise SuiteError(f"{where}: missing required field(s) {missing}")
    return obj


def _range(where: str, value: Any, low: float, high: float) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise SuiteError(f"{where}: expected [low, high], got {value!r}")
    a, b = (_number(f"{where}[{i}]", x, low, high) for i, x in enumerate(value))
    if a > b:
        raise SuiteError(f"{where}: low {a} is above high {b}")
    return a, b


def _task(where: str, obj: Any, group_size: int) -> tuple[TaskModel, float | None]:
    t = _fields(where, obj, TASK_FIELDS, TASK_FIELDS[:-1])
    name = t["name"]
    if not isinstance(name, str) or not name:
        raise SuiteError(f"{where}.name: expected a non-empty string, got {name!r}")
    ceiling = _number(f"{where}.ceiling_accuracy", t["ceiling_accuracy"], 0.0, 1.0)
    if ceiling == 0.0:
        raise SuiteError(f"{where}.ceiling_accuracy: must be > 0, got 0")
    start = _number(f"{where}.start_accuracy", t["start_accuracy"], 0.0, 1.0)
    rate = _number(f"{where}.zero_gradient_rate", t["zero_gradient_rate"], 0.0, 1.0)
    at = _number(f"{where}.observed_at_accuracy", t["observed_at_accuracy"], 0.0, 1.0)
    fmt = _number(f"{where}.format_rate", t["format_rate"], 0.0, 1.0)
    if not 0.0 < fmt < 1.0:
        raise SuiteError(f"{where}.format_rate: must lie strictly between 0 and 1, got {fmt}")
    speed = _number(f"{where}.learning_speed", t["learning_speed"], 0.0)
    grpo = _number(f"{where}.grpo_accuracy", t["grpo_accuracy"], 0.0, ceiling) if "grpo_accuracy" in t else None
    skill, spread, unsolvable = solve_task(where, start, rate, at, ceiling, group_size)
    return TaskModel(name, skill, spread, unsolvable, fmt, speed), grpo


def _transfer(where: str, value: Any, k: int) -> NDArray[np.float64]:
    if not isinstance(value, list) or len(value) != k or not all(isinstance(r, list) and len(r) == k for r in value):
        raise SuiteError(f"{where}: expected a {k} x {k} list of lists (one row per task)")
    t = np.array([[_number(f"{where}[{i}][{j}]", x, -1.0, 1.0) for j, x in enumerate(r)] for i, r in enumerate(value)])
    off = np.flatnonzero(np.diag(t) != 1.0)
    if off.size:
        i = int(off[0])
        raise SuiteError(f"{where}[{i}][{i}]: diagonal entries must be 1 (a task's own gradient), got {t[i, i]}")
    return t


def _recipe(where: str, obj: Any, group_size: int) -> tuple[list[TaskModel], NDArray[np.float64]]:
    r = _fields(where, obj, RECIPE_FIELDS, RECIPE_FIELDS)
    k = _integer(f"{where}.num_tasks", r["num_tasks"])
    rng = np.random.default_rng(_integer(f"{where}.seed", r["seed"], minimum=0))
    family = _integer(f"{where}.family_size", r["family_size"])
    start = _range(f"{where}.start_accuracy", r["start_accuracy"], 0.0, 1.0)
    excess = _range(f"{where}.zero_gradient_excess", r["zero_gradient_excess"], 0.0, 1.0)
    ceiling = _range(f"{where}.ceiling_accuracy", r["ceiling_accuracy"], 0.0, 1.0)
    fmt = _range(f"{where}.format_rate", r["format_rate"], 0.0, 1.0)
    speed = _range(f"{where}.learning_speed", r["learning_speed"], 1e-9, 1e9)
    within = _number(f"{where}.transfer_within", r["transfer_within"], -1.0, 1.0)
    across = _number(f"{where}.transfer_across", r["transfer_across"], -1.0, 1.0)
    if start[1] >= ceiling[0]:
        raise SuiteError(f"{where}.start_accuracy: high end {start[1]} must be below ceiling_accuracy's low end")
    if not (fmt[0] > 0.0 and fmt[1] < 1.0):
        raise SuiteError(f"{where}.format_rate: must lie strictly between 0 and 1, got {list(fmt)}")
    tasks = []
    for i in range(k):
        c = rng.uniform(*ceiling)
        a = rng.uniform(*start)
        a_s = a / c
        low = a_s**group_size + (1 - a_s) ** group_size
        high = population_zero_gradient(skill_for_accuracy(a_s, MAX_SPREAD), MAX_SPREAD, group_size)
        zg = (1 - c) + c * (low + rng.uniform(*excess) * (high - low))
        eta = float(np.exp(rng.uniform(np.log(speed[0]), np.log(speed[1]))))
        skill, spread, u = solve_task(f"{where} task {i}", a, zg, a, c, group_size)
        tasks.append(TaskModel(f"task{i:03d}", skill, spread, u, rng.uniform(*fmt), eta))
    fam = np.arange(k) // family
    transfer = np.where(fam[:, None] == fam[None, :], within, across)
    np.fill_diagonal(transfer, 1.0)
    return tasks, transfer


def suite_from_dict(data: Any, source: str = "suite") -> Suite:
    """Build a Suite from a parsed JSON object; SuiteError naming the field on any problem."""
    d = _fields(source, data, TOP_FIELDS, ("name", "observed_group_size"))
    name = d["name"]
    if not isinstance(name, str) or not name:
        raise SuiteError(f"{source}.name: expected a non-empty string, got {name!r}")
    where = f"suite {name!r}"
    n_obs = _integer(f"{where}.observed_group_size", d["observed_group_size"], minimum=2)
    if ("tasks" in d) == ("recipe" in d):
        raise SuiteError(f"{where}: give exactly one of 'tasks' (a list) or 'recipe' (a generator)")
    grpo: tuple[float | None, ...] = ()
    if "recipe" in d:
        if "transfer" in d:
            raise SuiteError(f"{where}.transfer: a recipe suite builds its own transfer matrix; remove 'transfer'")
        tasks, transfer = _recipe(f"{where}.recipe", d["recipe"], n_obs)
    else:
        if not isinstance(d["tasks"], list) or not d["tasks"]:
            raise SuiteError(f"{where}.tasks: expected a non-empty list of task objects")
        parsed = [_task(f"{where}.tasks[{i}]", t, n_obs) for i, t in enumerate(d["tasks"])]
        tasks = [p[0] for p in parsed]
        grpo = tuple(p[1] for p in parsed)
        names = [t.name for t in tasks]
        dup = sorted({x for x in names if names.count(x) > 1})
        if dup:
            raise SuiteError(f"{where}.tasks: duplicate task name(s) {dup}")
        k = len(tasks)
        transfer = _transfer(f"{where}.transfer", d["transfer"], k) if "transfer" in d else np.eye(k)
    defaults = _fields(f"{where}.defaults", d.get("defaults", {}), DEFAULT_FIELDS, ())
    settings = {
        f: _integer(f"{where}.defaults.{f}", x, minimum=0 if f == "max_rounds" else 1) for f, x in defaults.items()
    }
    description = d.get("description", "")
    if not isinstance(description, str):
        raise SuiteError(f"{where}.description: expected a string, got {description!r}")
    heldout = _integer(f"{where}.heldout_size", d.get("heldout_size", 200))
    return Suite(name, description, tuple(tasks), transfer, heldout, SuiteDefaults(**settings), grpo)


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
