"""The suite file format as a pydantic schema; `validate_suite` turns any violation into one `SuiteError`.

A suite file is one JSON object, `SuiteSpec` below. Unknown fields are refused (a typo cannot pass silently),
numbers must be finite JSON numbers (no strings, no booleans), counts JSON integers. Example:

    {"name": "paper3", "description": "free text", "observed_group_size": 8, "heldout_size": 200,
     "defaults": {"steps": 720, "batch_size": 32, "group_size": 8, "max_rounds": 10, "seeds": 5, "record_every": 1},
     "tasks": [{"name": "countdown", "start_accuracy": 0.2, "zero_gradient_rate": 0.3, "observed_at_accuracy": 0.7,
                "ceiling_accuracy": 0.95, "format_rate": 0.6, "learning_speed": 1.0, "grpo_accuracy": 0.75,
     "pool_size": 10000}],
     "transfer": [[1.0]]}

Instead of "tasks" (and "transfer") a suite may give a "recipe" (`RecipeSpec`) that generates many tasks.
"families" (optional, with "tasks") names task families, e.g. {"countdown": ["countdown-easy", ...], ...}: every
task in exactly one family, by its name; a recipe's families come from its family_size. The family rule
(mt-grpo-family) reads them.
"pool_size" (optional, on every task or on none) makes the training prompts a finite pool drawn once per seed; the
pools of all tasks hold at most MAX_POOL_PROMPTS (10,000,000) prompts together.
What the loader solves from the observables is in suites.py (`solve_task`).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

T = TypeVar("T")


class SuiteError(ValueError):
    """A malformed suite: the message names the field path, the value and what was expected."""


def _present(value: Any) -> Any:
    if value is None:
        raise ValueError("expected a value, got null (leave the field out instead)")
    return value


Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]  # a finite JSON number (an integer is fine)
Unit = Annotated[Number, Field(ge=0.0, le=1.0)]
OpenUnit = Annotated[Number, Field(gt=0.0, lt=1.0)]
Effect = Annotated[Number, Field(ge=-1.0, le=1.0)]  # an entry of the transfer matrix
Count = Annotated[int, Strict(), Field(ge=1)]
Omittable = Annotated[T | None, BeforeValidator(_present)]  # may be left out, but not given as null


def _ordered(value: tuple[float, float]) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"expected [low, high] with low <= high, got low {value[0]} above high {value[1]}")
    return value


MAX_POOL_PROMPTS = 10_000_000  # of all tasks' pools together: the simulator keeps about 50 bytes per prompt


def _pool_cap(value: int) -> int:
    if value > MAX_POOL_PROMPTS:
        raise ValueError(
            f"expected at most {MAX_POOL_PROMPTS} prompts (the simulator keeps about 50 bytes per prompt in "
            f"memory), got {value}"
        )
    return value


PoolSize = Annotated[int, Strict(), Field(ge=1), AfterValidator(_pool_cap)]
UnitRange = Annotated[tuple[Unit, Unit], AfterValidator(_ordered)]  # [low, high]
OpenUnitRange = Annotated[tuple[OpenUnit, OpenUnit], AfterValidator(_ordered)]
Start = Annotated[Number, Field(gt=0.0, le=1.0)]  # a start accuracy of 0 has no finite skill
StartRange = Annotated[tuple[Start, Start], AfterValidator(_ordered)]
Speed = Annotated[Number, Field(ge=1e-9, le=1e9)]
SpeedRange = Annotated[tuple[Speed, Speed], AfterValidator(_ordered)]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class SuiteDefaults:
    """The run settings the suite was calibrated at (each may be left out)."""

    steps: Count = 720
    batch_size: Count = 32
    group_size: Count = 8
    max_rounds: Annotated[int, Strict(), Field(ge=0)] = 10
    seeds: Count = 5
    record_every: Count = 1


class TaskSpec(_Schema):
    """One task, given by observables (the spread and start skill are solved from them)."""

    name: Annotated[str, Field(min_length=1)]
    start_accuracy: Unit  # accuracy of the initial policy; must also lie in (0, ceiling_accuracy)
    zero_gradient_rate: Unit  # strict rate (all N correct or all N wrong) ...
    observed_at_accuracy: Unit  # ... observed when the task's accuracy was this; in (0, ceiling_accuracy)
    ceiling_accuracy: Annotated[Number, Field(gt=0.0, le=1.0)]  # 1 - fraction of unsolvable prompts
    format_rate: OpenUnit  # P(wrong answer is in the right format) at the start
    learning_speed: Annotated[Number, Field(ge=0.0)]  # eta_k of the policy model (calibrated, see docs/benchmarks.md)
    grpo_accuracy: Omittable[Unit] = None  # accuracy uniform GRPO reaches at the defaults (calibration target)
    pool_size: Omittable[PoolSize] = None  # a finite training pool of this many prompts (left out: fresh prompts)

    @field_validator("grpo_accuracy")
    @classmethod
    def _below_ceiling(cls, value: float, info: ValidationInfo) -> float:
        ceiling = info.data.get("ceiling_accuracy")
        if ceiling is not None and value > ceiling:
            raise ValueError(f"expected at most ceiling_accuracy={ceiling}, got {value}")
        return value


class RecipeSpec(_Schema):
    """Generated tasks in families of `family_size`; each [low, high] is drawn uniformly (learning_speed
    log-uniformly); zero_gradient_excess places the solvable prompts' start zero-gradient rate between its minimum
    (all prompts equally hard) and 1; transfer_within / transfer_across fill the transfer matrix."""

    num_tasks: Count
    seed: Annotated[int, Strict(), Field(ge=0)]
    family_size: Count
    ceiling_accuracy: UnitRange
    start_accuracy: StartRange  # high end below ceiling_accuracy's low end
    zero_gradient_excess: UnitRange
    format_rate: OpenUnitRange
    learning_speed: SpeedRange
    transfer_within: Effect
    transfer_across: Effect

    @field_validator("start_accuracy")
    @classmethod
    def _below_ceiling(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        ceiling = info.data.get("ceiling_accuracy")
        if ceiling is not None and value[1] >= ceiling[0]:
            raise ValueError(f"expected the high end below ceiling_accuracy's low end {ceiling[0]}, got {value[1]}")
        return value


class SuiteSpec(_Schema):
    """A suite file: exactly one of `tasks` (with an optional K x K `transfer`) or `recipe`."""

    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    observed_group_size: Annotated[int, Strict(), Field(ge=2)]  # N at which the zero-gradient rates were observed
    heldout_size: Count = 200  # held-out prompts per task (expected accuracy over them)
    defaults: SuiteDefaults = SuiteDefaults()
    tasks: Omittable[Annotated[list[TaskSpec], Field(min_length=1)]] = None
    recipe: Omittable[RecipeSpec] = None
    transfer: Omittable[list[list[Effect]]] = None  # row k = effect on task k; ones on the diagonal
    families: Omittable[dict[str, Annotated[list[str], Field(min_length=1)]]] = None  # family -> its task names

    @field_validator("tasks")
    @classmethod
    def _distinct_names(cls, tasks: list[TaskSpec]) -> list[TaskSpec]:
        names = [t.name for t in tasks]
        dup = sorted({x for x in names if names.count(x) > 1})
        if dup:
            raise ValueError(f"expected distinct task names, got duplicate name(s) {dup}")
        pooled = [t.name for t in tasks if t.pool_size is not None]
        if pooled and len(pooled) != len(tasks):
            fresh = [t.name for t in tasks if t.pool_size is None]
            raise ValueError(f"expected pool_size on every task or on none, got it on {pooled} but not on {fresh}")
        total = sum(t.pool_size or 0 for t in tasks)
        if total > MAX_POOL_PROMPTS:
            raise ValueError(
                f"expected pool sizes that add up to at most {MAX_POOL_PROMPTS} prompts (the simulator keeps about "
                f"50 bytes per prompt in memory), got {total}"
            )
        return tasks

    @field_validator("transfer")
    @classmethod
    def _square_with_unit_diagonal(cls, rows: list[list[float]], info: ValidationInfo) -> list[list[float]]:
        if info.data.get("recipe") is not None:
            raise ValueError("a recipe suite builds its own transfer matrix; remove 'transfer'")
        tasks = info.data.get("tasks")
        if tasks is None:
            return rows
        k = len(tasks)
        if len(rows) != k or any(len(r) != k for r in rows):
            raise ValueError(f"expected a {k} x {k} list of lists (one row per task), got {rows}")
        for i in range(k):
            if rows[i][i] != 1.0:
                raise ValueError(f"expected 1 on the diagonal (a task's own gradient), got [{i}][{i}] = {rows[i][i]}")
        return rows

    @field_validator("families")
    @classmethod
    def _each_task_in_one_family(cls, families: dict[str, list[str]], info: ValidationInfo) -> dict[str, list[str]]:
        if info.data.get("recipe") is not None:
            raise ValueError("a recipe suite's families come from its family_size; remove 'families'")
        tasks = info.data.get("tasks")
        if tasks is None:
            return families
        if "" in families:
            raise ValueError(f"expected non-empty family names, got '' among {list(families)}")
        names = [t.name for t in tasks]
        listed = [(f, x) for f, members in families.items() for x in members]
        unknown = sorted({x for _, x in listed if x not in names})
        if unknown:
            raise ValueError(f"expected task names of this suite ({names}), got unknown name(s) {unknown}")
        seen: dict[str, list[str]] = {}
        for f, x in listed:
            seen.setdefault(x, []).append(f)
        twice = {x: fs for x, fs in seen.items() if len(fs) > 1}
        if twice:
            raise ValueError(f"expected every task in exactly one family, got task(s) in several: {twice}")
        missing = [x for x in names if x not in seen]
        if missing:
            raise ValueError(f"expected every task in exactly one family, got task(s) in none: {missing}")
        return families

    @model_validator(mode="before")
    @classmethod
    def _tasks_or_recipe(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("tasks" in data) == ("recipe" in data):
            got = "both" if "tasks" in data else "neither"
            raise ValueError(f"expected exactly one of 'tasks' (a list) or 'recipe' (a generator), got {got}")
        return data


# -- pydantic's errors as SuiteError --------------------------------------------------------------------------
def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the object (model or dataclass) found at `loc` inside a suite."""
    cls: Any = SuiteSpec
    for part in loc:
        if isinstance(part, str):
            cls = _object_type(cls.__pydantic_fields__[part].annotation)
    return list(cls.__pydantic_fields__)


def _object_type(annotation: Any) -> Any:
    if hasattr(annotation, "__pydantic_fields__"):
        return annotation
    found = [c for c in map(_object_type, getattr(annotation, "__args__", ())) if c is not None]
    return found[0] if found else None


def _describe(err: Any) -> str:
    kind, loc, value = err["type"], tuple(err["loc"]), err["input"]
    if kind == "missing":
        return "missing required field"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"unknown field (value {value!r}); allowed fields are {_fields_at(loc[:-1])}"
    if kind in ("model_type", "dataclass_type"):
        return f"expected a JSON object, got {value!r}"
    if kind == "tuple_type" or err.get("ctx", {}).get("field_type") == "Tuple":
        return f"expected [low, high], got {value!r}"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {value!r}"


def _path(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def validate_suite(data: Any, source: str = "suite") -> SuiteSpec:
    """The validated suite; SuiteError with one line per problem (field path: what was expected, got what)."""
    try:
        return SuiteSpec.model_validate(data)
    except ValidationError as err:
        name = data.get("name") if isinstance(data, dict) else None
        where = f"suite {name!r}" if isinstance(name, str) and name else source
        lines = [f"{where}{_path(tuple(e['loc']))}: {_describe(e)}" for e in err.errors()]
        raise SuiteError("\n".join(lines)) from None
