"""Simulated multi-task policy, benchmark suites and the `mtgrpo bench` driver (no torch needed)."""

from mtgrpo_backends.simulated.policy import Groups, SimulatedPolicy, TaskModel, zero_gradient_probability
from mtgrpo_backends.simulated.suites import Suite, SuiteError, builtin_suites, load_suite, suite_from_dict

__all__ = [
    "Groups",
    "SimulatedPolicy",
    "Suite",
    "SuiteError",
    "TaskModel",
    "builtin_suites",
    "load_suite",
    "suite_from_dict",
    "zero_gradient_probability",
]
