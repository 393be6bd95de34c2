"""Algorithm 1 without the policy: the controller holds a weighting rule, the sampler and its estimates.

Per step: `begin_step()` hands out the batch conversation built from the current weights; after the caller's
policy update, `end_step(signals)` takes the per-task rewards J_k (and improvements I_k) and makes the next weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import checks as v
from mtgrpo_core.methods import parse_method
from mtgrpo_core.protocols import TaskSignals, WeightingRule
from mtgrpo_core.sampler import BatchBuilder, RatioPreservingSampler
from mtgrpo_core.sampler_config import SamplerConfig


class Controller:
    """Runs MT-GRPO's decisions (or a baseline's) for a trainer that owns generation and gradients."""

    def __init__(self, rule: WeightingRule, sampler: RatioPreservingSampler, method: str = "custom") -> None:
        if not isinstance(rule, WeightingRule):
            missing = "" if hasattr(rule, "needs") else " (it lacks `needs`, the set of optional signals it reads)"
            raise TypeError(f"rule must satisfy the WeightingRule protocol, got {type(rule).__name__}{missing}")
        if rule.num_tasks != sampler.num_tasks:
            raise ValueError(f"rule has {rule.num_tasks} tasks but the sampler has {sampler.num_tasks}")
        self.rule = rule
        self.sampler = sampler
        self.method = method
        self.improvement_reduce: str | None = None  # a method's own I_k reduction (reference presets: "sum")
        self.minibatch_updates = False  # one weight update per mini-batch (reference presets; needs update_minibatches)
        self.step = 0
        self._check_weights(rule.weights, "initial weights")

    @classmethod
    def from_method(
        cls,
        method: str,
        num_tasks: int,
        batch_size: int,
        group_size: int,
        seed: int = 0,
        rule_kwargs: Mapping[str, Any] | None = None,
        **sampler_overrides: Any,
    ) -> Controller:
        """Build a named configuration ("mt-grpo:0.2", "dapo", ...; see mtgrpo_core.methods).

        rule_kwargs go to the rule's constructor (e.g. lr, improvement_clip); sampler_overrides to SamplerConfig.
        """
        spec = parse_method(method)
        num_tasks = v.positive_int("num_tasks", num_tasks)
        spec.check_sampler_overrides(dict(sampler_overrides))  # a reference preset refuses or warns by name
        settings = {**spec.sampler_settings, **sampler_overrides}
        config = SamplerConfig(batch_size=batch_size, group_size=group_size, **settings)
        rule = spec.build_rule(num_tasks, **dict(rule_kwargs or {}))
        ctrl = cls(rule, RatioPreservingSampler(num_tasks, config, seed=seed), method=spec.name)
        ctrl.improvement_reduce = spec.improvement_reduce
        ctrl.minibatch_updates = spec.minibatch_updates
        return ctrl

    @property
    def num_tasks(self) -> int:
        return self.rule.num_tasks

    @property
    def weights(self) -> NDArray[np.float64]:
        """Task weights z used for the next batch."""
        return self.rule.weights

    @property
    def needs(self) -> frozenset[str]:
        """The optional signals end_step needs ("improvement", "mean_abs_advantage"): the rule's `needs`."""
        return frozenset(self.rule.needs)

    def begin_step(self) -> BatchBuilder:
        """Algorithm 1, line 1: the RP-SAMPLER conversation for this step's batch."""
        return self.sampler.begin(self.weights, self.step)

    def end_step(self, signals: TaskSignals) -> NDArray[np.float64]:
        """Algorithm 1, line 4: next weights from this step's signals; advances the step counter."""
        if not isinstance(signals, TaskSignals):
            raise TypeError(f"signals must be a TaskSignals, got {type(signals).__name__}")
        if signals.num_tasks != self.num_tasks:
            raise ValueError(f"signals cover {signals.num_tasks} tasks, expected {self.num_tasks}")
        missing = sorted(n for n in self.needs if getattr(signals, n) is None)
        if missing:
            raise ValueError(
                f"rule {type(self.rule).__name__} needs signals {missing}, but they are None: measure them "
                "(StepFacts surrogate values for improvement, sample advantages for mean_abs_advantage)"
            )
        guard = self.sampler.guard
        if guard is not None and guard.barren.any():  # the rule does not chase a task that yields no signal
            signals = replace(signals, present=signals.present & ~guard.barren)
        weights = self._update_rule(signals)
        self._check_weights(weights, f"weights after step {self.step}")
        self.step += 1
        return weights

    def _update_rule(self, signals: TaskSignals) -> NDArray[np.float64]:
        if not self.minibatch_updates:
            return self.rule.update(signals)
        per_minibatch = getattr(self.rule, "update_minibatches", None)
        if per_minibatch is None:
            rule = type(self.rule).__name__
            raise TypeError(f"method {self.method!r} updates once per mini-batch, which rule {rule} cannot")
        if signals.improvement_steps is None:
            raise ValueError(
                f"method {self.method!r} updates the weights once per PPO mini-batch (the reference code): measure "
                "the surrogate around each mini-batch's optimizer step (StepFacts.surrogate_minibatch)"
            )
        return cast(NDArray[np.float64], per_minibatch(signals, signals.improvement_steps))

    def _check_weights(self, weights: Any, what: str) -> None:
        try:
            v.simplex("weights", weights, self.num_tasks)
        except (TypeError, ValueError) as err:
            raise ValueError(f"rule {type(self.rule).__name__} returned invalid {what}: {err}") from err

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "controller",
            "num_tasks": self.num_tasks,
            "method": self.method,
            "step": self.step,
            "rule": self.rule.state_dict(),
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state of the same method and K; a refused state leaves the controller unchanged."""
        v.state_matches(state, "controller", self.num_tasks)
        if state.get("method") != self.method:
            raise ValueError(f"state['method'] is {state.get('method')!r}, expected {self.method!r}")
        missing = [key for key in ("step", "rule", "sampler") if key not in state]
        if missing:
            raise ValueError(f"state lacks {missing}: not a complete controller state")
        step = v.positive_int("state['step']", state["step"], minimum=0)
        backup = self.state_dict()
        try:
            self.rule.load_state_dict(state["rule"])
            self.sampler.load_state_dict(state["sampler"])
        except Exception:
            self.rule.load_state_dict(backup["rule"])
            self.sampler.load_state_dict(backup["sampler"])
            raise
        self.step = step
