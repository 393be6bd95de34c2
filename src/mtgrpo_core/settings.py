"""The algorithm's settings as one typed object, `Settings`, that every backend nests and the core checks once.

`Settings` holds the method, the sampler settings a user may give (`SamplerSettings`), the weighting rule's
arguments, selective rollouts (`SelectionSettings`), and the signals' I_k reduction and correct reward. A backend
adds only what is its own (where the tasks, B and N come from). Every refusal names the setting by its path in
`Settings` (`sampler.max_rounds`); a backend puts its own prefix in front (`mtgrpo.` in verl, `--` on the command
line), so the same bad value gets the same message everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar

from mtgrpo_core import checks as v
from mtgrpo_core.controller import Controller
from mtgrpo_core.methods import parse_method
from mtgrpo_core.prompts.history import SelectionConfig
from mtgrpo_core.sampling.config import SamplerConfig
from mtgrpo_core.signals import IMPROVEMENT_REDUCTIONS

Label = Callable[[str], str]
T = TypeVar("T")


def _given(settings: Any, cls: type[Any]) -> dict[str, Any]:
    """The settings of cls (a subclass may add its own) that are not None."""
    return {f.name: getattr(settings, f.name) for f in fields(cls) if getattr(settings, f.name) is not None}


def _from_mapping(cls: type[T], value: Any, where: str) -> T:
    """cls from an instance, a mapping or JSON text of one; unknown keys are refused by name."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} {value!r} is not valid JSON ({err}); expected a JSON object") from None
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must be a mapping (or JSON object) of settings, got {value!r}")
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; expected keys among {known}")
    return cls(**dict(value))


@dataclass(frozen=True)
class SamplerSettings:
    """RP-SAMPLER settings (SamplerConfig). Unset ones keep the method's setting, then SamplerConfig's default; B
    and N come from the trainer, the correct reward from `Settings.correct_reward`."""

    oversample: float | None = None
    """M_os: a paper-planner round requests M_os * B prompts; other planners: the cap of a round's total / B
    (unset: the method's: 6 lean, else 3)"""
    max_rounds: int | None = None
    """N_rs: resampling rounds after the first request (unset: the method's, else 10)"""
    max_inflation: float | None = None
    """M_acc: cap of the inflation m_k (paper planner) or of a task's request / its deficit (other planners)
    (unset: the method's: 25 lean, else 5)"""
    filtering: Literal["lenient", "strict", "none"] | None = None
    """zero-gradient filter: lenient (all-equal rewards), strict (all-correct/all-wrong), none (plain GRPO)
    (unset: the method's)"""
    targets: Literal["multinomial", "apportion"] | None = None
    """per-task target counts: multinomial (the paper's draw) or apportion (systematic rounding) (unset: the
    method's, else apportion)"""
    planner: str | None = None
    """request planner: paper, or beyond the paper posterior or joint (docs/sampler.md) (unset: the method's:
    joint lean, else paper)"""
    confidence: float | None = None
    """probability target: per task (posterior planner) or of the whole batch in one round (joint planner)
    (unset: 0.9)"""
    guard_floor: float | None = None
    """no-signal guard: informative rate below which a long dry run makes a task barren (0: guard off; unset:
    0.02)"""
    guard_probe: int | None = None
    """no-signal guard: probe groups per step of a barren task (unset: ceil(B / K))"""
    carry_over: int | None = None
    """steps an informative group generated but not needed may wait to be trained (0: strictly on-policy; unset:
    the method's: 1 lean, else 0)"""
    generation_cap: float | None = None
    """at most this times B prompts generated per step, rounds and guard probes included (0: no cap; else >= 1);
    a short step fills from other tasks' surplus and is reported capped (unset: the method's: 3 lean, else 0)"""
    steps_ahead: int | None = None
    """streaming mode: the groups of the batch steps_ahead steps later are generated while a batch trains (needs
    carry-over >= steps_ahead, the age bound; docs/sampler.md) (unset: 0, synchronous)"""

    def given(self) -> dict[str, Any]:
        """The settings given, as SamplerConfig keywords."""
        return _given(self, SamplerSettings)

    def check(self, label: Label = lambda name: f"sampler.{name}") -> None:
        """Each setting given, alone, by SamplerConfig's own checks; refusals name it with `label(name)`."""
        for name, value in self.given().items():
            try:
                alone: dict[str, Any] = {"planner": "joint"} if name == "carry_over" else {}  # such a planner
                if name == "steps_ahead":
                    long_enough = value if isinstance(value, int) and value > 0 else 0  # the age bound it needs
                    alone = {"planner": "joint", "carry_over": long_enough}
                SamplerConfig(batch_size=1, group_size=2, **{**alone, name: value})
            except (TypeError, ValueError) as err:
                raise ValueError(f"{label(name)} {value!r}: {err}") from None

    @classmethod
    def from_mapping(cls, value: Any, where: str = "sampler") -> SamplerSettings:
        return _from_mapping(cls, value, where)


@dataclass(frozen=True)
class SelectionSettings:
    """Selective rollouts on a finite prompt pool (SelectionConfig, docs/selective.md); the filter is the method's
    and the correct reward `Settings.correct_reward`."""

    exploration: float | None = None
    """target share of a task's handed-out prompts that retry a prompt last seen uninformative (unset: 0.1)"""
    min_retry: float | None = None
    """floor of the retry probability of a prompt last seen uninformative (unset: 0.01)"""
    max_skips: int | None = None
    """a prompt passed over this many times in a row is handed out at its next turn (1 to 255; unset: never
    forced)"""

    def given(self) -> dict[str, Any]:
        """The settings given, as SelectionConfig keywords."""
        return _given(self, SelectionSettings)

    def check(self, label: Label = lambda name: f"selection.{name}") -> None:
        """Each setting given, by SelectionConfig's own checks; refusals name it with `label(name)`."""
        for name, value in self.given().items():
            try:
                SelectionConfig(**{name: value})
            except (TypeError, ValueError) as err:
                raise ValueError(f"{label(name)} {value!r}: {err}") from None

    def config(self, filtering: str, correct_reward: float) -> SelectionConfig:
        """The prompt pool's SelectionConfig under the sampler's filter and correct reward."""
        if filtering == "none":
            raise ValueError("selection needs a method that filters groups (it skips prompts last seen uninformative)")
        return SelectionConfig(filtering=filtering, correct_reward=correct_reward, **self.given())  # type: ignore[arg-type]

    @classmethod
    def from_mapping(cls, value: Any, where: str = "selection") -> SelectionSettings:
        fixed = sorted({"filtering", "correct_reward"} & set(value)) if isinstance(value, Mapping) else []
        if fixed:
            raise ValueError(
                f"{where} sets {fixed}: the pool classifies groups with the sampler's filter and the correct reward; "
                "set sampler.filtering / correct_reward instead"
            )
        return _from_mapping(cls, value, where)


@dataclass(frozen=True)
class Settings:
    """The algorithm's settings; checked when built, and against B, N and the task count by `check`.

    method: a method string (mtgrpo_core.methods), e.g. "mt-grpo:0.2", "dapo", "grpo".
    sampler: the sampler settings given (SamplerSettings, or a mapping of them).
    rule_kwargs: keyword arguments of the method's weighting rule (e.g. {"lr": 0.025}).
    selection: None keeps no per-prompt history; SelectionSettings (or a mapping) skip prompts last seen
        uninformative (needs a finite prompt pool and a method that filters).
    improvement_reduce: I_k over a task's samples, "mean" or "sum"; None: the method's own.
    correct_reward: the reward that counts as correct (accuracy, the strict filter, the prompt history).
    """

    method: str = "mt-grpo:0.2"
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    rule_kwargs: Mapping[str, Any] = field(default_factory=dict)
    selection: SelectionSettings | None = None
    improvement_reduce: Literal["mean", "sum"] | None = None
    correct_reward: float = 1.0

    def __post_init__(self) -> None:
        parse_method(self.method)
        object.__setattr__(self, "sampler", SamplerSettings.from_mapping(self.sampler))
        if self.selection is not None:
            object.__setattr__(self, "selection", SelectionSettings.from_mapping(self.selection))
        if isinstance(self.rule_kwargs, str) or not isinstance(self.rule_kwargs, Mapping):
            raise TypeError(f"rule_kwargs must be a mapping of the rule's keyword arguments, got {self.rule_kwargs!r}")
        if "num_tasks" in self.rule_kwargs:
            raise ValueError("rule_kwargs sets num_tasks: the task count comes from the tasks, not from rule_kwargs")
        if self.improvement_reduce is not None:
            v.choice("improvement_reduce", self.improvement_reduce, IMPROVEMENT_REDUCTIONS)
        v.real_in_range("correct_reward", self.correct_reward)
        self.sampler.check()
        if self.selection is not None:
            self.selection.check()

    @classmethod
    def from_mapping(cls, value: Any, where: str = "settings") -> Settings:
        """Settings from a mapping (or JSON text) with nested `sampler` and `selection` mappings."""
        return _from_mapping(cls, value, where)

    def sampler_overrides(self) -> dict[str, Any]:
        """SamplerConfig keywords: the sampler settings given and the correct reward."""
        return {**self.sampler.given(), "correct_reward": self.correct_reward}

    def controller(self, num_tasks: int, batch_size: int, group_size: int, seed: int = 0) -> Controller:
        """The method's controller with these settings (Controller.from_method's refusals as they are)."""
        return Controller.from_method(
            self.method,
            num_tasks,
            batch_size,
            group_size,
            seed,
            dict(self.rule_kwargs),
            improvement_reduce=self.improvement_reduce,
            **self.sampler_overrides(),
        )

    def selection_config(self, filtering: str) -> SelectionConfig | None:
        """The prompt pool's SelectionConfig under the sampler's filter (None without selection)."""
        if self.selection is None:
            return None
        try:
            return self.selection.config(filtering, self.correct_reward)
        except ValueError as err:
            raise ValueError(f"selection {self.selection.given()!r} with method {self.method!r}: {err}") from None

    def check(self, num_tasks: int, batch_size: int, group_size: int) -> Controller:
        """Everything that needs the task count, B and N, checked by building the rule, the controller and the
        selection once, as a trainer will; refusals name the setting. Returns the controller built."""
        if batch_size < num_tasks:
            raise ValueError(
                f"the batch holds {batch_size} groups, fewer than the {num_tasks} tasks: the per-task quotas do not "
                f"fit; use a batch of at least {num_tasks} groups"
            )
        spec = parse_method(self.method)
        try:
            spec.build_rule(num_tasks, **dict(self.rule_kwargs))
        except (TypeError, ValueError) as err:
            raise ValueError(f"rule_kwargs {dict(self.rule_kwargs)!r} (method {self.method!r}): {err}") from None
        try:
            ctrl = self.controller(num_tasks, batch_size, group_size)
        except (TypeError, ValueError) as err:
            given = ", ".join(f"sampler.{k} {x!r}" for k, x in self.sampler.given().items())
            raise ValueError(f"method {self.method!r}{' with ' + given if given else ''}: {err}") from None
        self.selection_config(ctrl.sampler.config.filtering)
        return ctrl
