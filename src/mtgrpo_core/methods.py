"""The paper's methods and baselines as named configurations (one string builds a controller), and the registry
of weighting rules they name.

"grpo"                uniform weights, no filtering
"dapo"                uniform weights, dynamic sampling without the ratio constraint (first B informative)
"sec-grpo"            SEC bandit weights, no filtering
"sec-dapo"            SEC bandit weights, DAPO dynamic sampling
"iwu-only[:lam]"      IWU weights, DAPO dynamic sampling (ablation: IWU without RPS)
"rps-only"            uniform weights, RP-SAMPLER (ablation: RPS with fixed uniform z)
"mt-grpo[:lam]"       IWU weights + RP-SAMPLER (the paper's method; lam defaults to 0.2)
"mt-grpo-scaled[:lam]" IWU with I_k and J_k on a common scale (weighting.scaled) + RP-SAMPLER (lam 2)
"mt-grpo-family[:lam]" IWU over task families, then within each family (weighting.scaled; the rule needs each
                      task's family: the simulator passes the suite's) + RP-SAMPLER (lam 0.2)
"mt-grpo-paper[:lam]" IWU + RP-SAMPLER with the paper's Algorithm 2 as written: paper planner, strictly on-policy
"mt-grpo-noinfl[:lam]" IWU + the paper's Algorithm 2 without acceptance-aware inflation (ablation)
"minimax"             reward-only minimax weights (Eq. 6-7) + RP-SAMPLER
"minimax-reg[:eta]"   regularised reward-only weights (Subroutine 2) + RP-SAMPLER (eta defaults to 0.01)
"mt-grpo-ref[:lam]"   the paper's reference code, 3-task scripts (reference/presets.py, docs/fidelity.md)
"mt-grpo-ref9[:lam]"  the paper's reference code, 9-task scripts; "dapo-ref", "dapo-ref9", "grpo-ref" its baselines
"module:Class"        a user's WeightingRule class, built as Class(num_tasks), with RP-SAMPLER

Every method with the ratio constraint plans lean (beyond the paper, docs/sampler.md): the joint planner (the whole
batch completes in one round with probability 0.9) with carry-over of informative surplus for one step, request
caps M_acc = 25 and M_os = 6, and at most 3 B prompts generated per step. "mt-grpo-paper", "mt-grpo-noinfl" and
the reference presets keep the paper planner, strictly on-policy, without a per-step cap; `--sampler.planner paper
--sampler.carry-over 0 --sampler.oversample 3 --sampler.max-inflation 5 --sampler.generation-cap 0` gives any
method the paper's Algorithm 2.

Rules are built by name through `build_rule`, in the manner of verl's `register_adv_est` (built in: "iwu",
"iwu-ref" (the reference code's variant: `reference.scoring.ReferenceIWURule`), "iwu-scaled"
(`weighting.scaled.ScaledIWURule`), "iwu-family" (`weighting.scaled.FamilyIWURule`), "minimax", "sec", "uniform",
"fixed"); a name of the form "package.module:Class" imports a user's rule that is not registered.

    @register_rule("my-rule")
    class MyRule: ...            # constructed as MyRule(num_tasks, **kwargs)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mtgrpo_core import checks as v
from mtgrpo_core.protocols import SIGNAL_NEEDS, WeightingRule
from mtgrpo_core.reference.presets import REFERENCE_PRESETS, ReferencePreset
from mtgrpo_core.reference.scoring import ReferenceIWURule
from mtgrpo_core.weighting.rules import FixedRule, IWURule, MinimaxRule, SECRule, UniformRule
from mtgrpo_core.weighting.scaled import SCALED_DEFAULT_LAM, FamilyIWURule, ScaledIWURule

# the built-in rules; `register_rule` adds more
RULES: dict[str, type[Any]] = {
    "iwu": IWURule,
    "iwu-ref": ReferenceIWURule,
    "iwu-scaled": ScaledIWURule,
    "iwu-family": FamilyIWURule,
    "minimax": MinimaxRule,
    "uniform": UniformRule,
    "fixed": FixedRule,
    "sec": SECRule,
}
T = TypeVar("T", bound=type[Any])


def register_rule(name: str) -> Callable[[T], T]:
    """Class decorator: make `name` build this rule; a name is registered once."""

    def decorate(cls: T) -> T:
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"rule name must be a non-empty string without ':', got {name!r}")
        if name in RULES and RULES[name] is not cls:
            raise ValueError(f"rule name {name!r} is already registered to {RULES[name].__name__}")
        RULES[name] = cls
        return cls

    return decorate


def rule_class(name: str) -> type[Any]:
    """The class registered under `name`, or imported from "module:Class"."""
    if not isinstance(name, str):
        raise TypeError(f"rule must be a name string such as 'iwu' or 'module:Class', got {name!r}")
    if name in RULES:
        return RULES[name]
    module_name, sep, class_name = name.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(f"rule must be one of {sorted(RULES)} or 'module:Class', got {name!r}")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"rule {name!r}: cannot import {class_name!r} from {module_name!r} ({err})") from err
    if not isinstance(cls, type):
        raise TypeError(f"rule {name!r} must name a class, got {type(cls).__name__}")
    return cls


def build_rule(name: str, num_tasks: int, **kwargs: Any) -> WeightingRule:
    """Construct rule `name` as cls(num_tasks, **kwargs) and check that it satisfies WeightingRule."""
    cls = rule_class(name)
    try:
        rule = cls(num_tasks, **kwargs)
    except TypeError as err:
        raise TypeError(f"rule {name!r} ({cls.__name__}) refused arguments {kwargs}: {err}") from err
    if not hasattr(rule, "needs"):
        raise TypeError(
            f"rule {name!r} ({cls.__name__}) has no `needs` attribute: declare which optional signals it reads, "
            f"e.g. needs = frozenset() or frozenset({{'improvement'}}) (known: {list(SIGNAL_NEEDS)})"
        )
    if not isinstance(rule, WeightingRule):
        raise TypeError(f"rule {name!r} ({cls.__name__}) does not satisfy the WeightingRule protocol")
    return rule


_DAPO = {"filtering": "lenient", "ratio_constraint": False, "acceptance_aware": False}
_GRPO = {"filtering": "none"}
_PAPER: dict[str, Any] = {"filtering": "lenient", "ratio_constraint": True, "acceptance_aware": True}
# the lean default (issue: every rollout counts): joint planner + one step of carry-over, caps that rarely bind,
# and at most 3 B prompts generated per step (issue 20: a step time a trainer can plan)
LEAN: dict[str, Any] = {
    **_PAPER,
    "planner": "joint",
    "confidence": 0.9,
    "carry_over": 1,
    "max_inflation": 25.0,
    "oversample": 6.0,
    "generation_cap": 3.0,
}

# name -> (rule, name of its numeric argument or None, default of that argument, sampler settings)
_TABLE: dict[str, tuple[str, str | None, float | None, dict[str, Any]]] = {
    "grpo": ("uniform", None, None, _GRPO),
    "dapo": ("uniform", None, None, _DAPO),
    "sec-grpo": ("sec", None, None, _GRPO),
    "sec-dapo": ("sec", None, None, _DAPO),
    "iwu-only": ("iwu", "lam", 0.2, _DAPO),
    "rps-only": ("uniform", None, None, LEAN),
    "mt-grpo": ("iwu", "lam", 0.2, LEAN),
    "mt-grpo-scaled": ("iwu-scaled", "lam", SCALED_DEFAULT_LAM, LEAN),
    "mt-grpo-family": ("iwu-family", "lam", 0.2, LEAN),
    "mt-grpo-paper": ("iwu", "lam", 0.2, _PAPER),
    "mt-grpo-noinfl": ("iwu", "lam", 0.2, {**_PAPER, "acceptance_aware": False}),
    "minimax": ("minimax", None, None, LEAN),
    "minimax-reg": ("minimax", "eta", 0.01, LEAN),
    **{n: (p.rule, p.arg, p.default, dict(p.sampler_settings)) for n, p in REFERENCE_PRESETS.items()},
}
METHOD_NAMES: tuple[str, ...] = tuple(_TABLE)


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method string: which rule with which arguments, and the sampler settings it implies.

    preset: the reference code's preset (`reference_presets`) for the "*-ref" methods, else None. Its rule
    arguments are in rule_kwargs; `build_rule` also takes `actor_lr` (the I_k clip scales with it) and warns
    about or refuses overrides by name; `check_sampler_overrides` does the same for sampler settings.
    """

    name: str
    rule: str
    rule_kwargs: dict[str, Any] = field(default_factory=dict)
    sampler_settings: dict[str, Any] = field(default_factory=dict)
    preset: ReferencePreset | None = None

    @property
    def improvement_reduce(self) -> str | None:
        """The I_k reduction the method was tuned with ("sum" for the reference presets); None: the backend's."""
        return None if self.preset is None else self.preset.improvement_reduce

    @property
    def minibatch_updates(self) -> bool:
        """True for methods that update the weights once per PPO mini-batch (the reference IWU presets)."""
        return self.preset is not None and self.preset.minibatch_updates

    def build_rule(self, num_tasks: int, **overrides: Any) -> WeightingRule:
        """Construct the weighting rule for K tasks; `overrides` go to the rule's constructor."""
        if self.preset is None:
            return build_rule(self.rule, num_tasks, **{**self.rule_kwargs, **overrides})
        return build_rule(self.rule, num_tasks, **self.preset.rule_arguments(num_tasks, self.rule_kwargs, overrides))

    def check_sampler_overrides(self, overrides: dict[str, Any]) -> None:
        """Refuse (or warn about, where the released scripts vary it) a sampler setting that overrides one of a
        reference preset's; other methods accept any override."""
        if self.preset is not None:
            self.preset.check_sampler_overrides(overrides)


def parse_method(text: str) -> MethodSpec:
    """Parse "name" or "name:value" (e.g. "mt-grpo:0.2", "minimax-reg:0.01") or a user's "module:Class"."""
    if not isinstance(text, str):
        raise TypeError(f"method must be a string such as 'mt-grpo:0.2', got {text!r}")
    name, sep, arg = text.strip().lower().partition(":")
    if name not in _TABLE:
        if sep and arg and not _is_number(arg):  # "module:Class", a user rule
            return MethodSpec(name=text.strip(), rule=text.strip(), sampler_settings=dict(LEAN))
        raise ValueError(
            f"method must be one of {list(METHOD_NAMES)} (optionally ':value'), or 'module:Class' naming a "
            f"WeightingRule class, got {text!r}"
        )
    rule, arg_name, default, settings = _TABLE[name]
    preset = REFERENCE_PRESETS.get(name)
    kwargs: dict[str, Any] = {} if preset is None else dict(preset.rule_kwargs)
    if arg_name is None:
        if arg:
            raise ValueError(f"method {name!r} takes no ':value' argument, got {text!r}")
    else:
        try:
            value = float(arg) if arg else default
        except ValueError as err:
            raise ValueError(f"method {text!r}: {arg_name} must be a number, got {arg!r}") from err
        assert value is not None
        kwargs[arg_name] = v.real_in_range(f"{arg_name} of method {text!r}", value, 0.0, None)
    return MethodSpec(text.strip().lower(), rule, kwargs, dict(settings), preset)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
