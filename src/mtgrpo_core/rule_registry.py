"""Weighting rules by name, in the manner of verl's `register_adv_est`: method strings, `mtgrpo bench` and every
backend build rules through `build_rule`.

    @register_rule("my-rule")
    class MyRule: ...            # constructed as MyRule(num_tasks, **kwargs)

A name of the form "package.module:Class" imports that class (a user's rule that is not registered).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from mtgrpo_core.protocols import SIGNAL_NEEDS, WeightingRule
from mtgrpo_core.reference_scoring import ReferenceIWURule
from mtgrpo_core.weighting_rules import FixedRule, IWURule, MinimaxRule, SECRule, UniformRule

# the built-in rules; `register_rule` adds more
RULES: dict[str, type[Any]] = {
    "iwu": IWURule,
    "iwu-ref": ReferenceIWURule,
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
