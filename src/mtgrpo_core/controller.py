"""Algorithm 1 without the policy: the controller holds a weighting rule, the sampler and its estimates.

Per step: `begin_step()` hands out the batch conversation built from the current weights; after the caller's
policy update, `end_step(facts)` turns what the step observed into the per-task signals (J_k, accuracy, I_k with
the method's reduction, SEC's r_k) and makes the next weights. No trainer chooses a reduction or a filter value.
In streaming mode the trainer reports the groups of an ahead request as soon as they are generated
(`report_ahead`); the controller holds them, with their payloads, and reports them at the step they are due at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_core import checks as v
from mtgrpo_core.advantages import reported_groups
from mtgrpo_core.methods import parse_method
from mtgrpo_core.protocols import TaskSignals, WeightingRule
from mtgrpo_core.sampling.batch import KeyArray, as_key_array
from mtgrpo_core.sampling.carry_pool import HeldGroups
from mtgrpo_core.sampling.config import SamplerConfig
from mtgrpo_core.sampling.sampler import BatchBuilder, RatioPreservingSampler
from mtgrpo_core.signals import DEFAULT_IMPROVEMENT_REDUCE, IMPROVEMENT_REDUCTIONS, StepFacts, step_signals


class Controller:
    """Runs MT-GRPO's decisions (or a baseline's) for a trainer that owns generation and gradients.

    improvement_reduce: how I_k sums a task's per-sample surrogate change ("mean"; the reference presets "sum").
    minibatch_updates: one weight update per PPO mini-batch (the reference presets; the rule's update_minibatches).
    """

    def __init__(
        self,
        rule: WeightingRule,
        sampler: RatioPreservingSampler,
        method: str = "custom",
        *,
        improvement_reduce: str = DEFAULT_IMPROVEMENT_REDUCE,
        minibatch_updates: bool = False,
    ) -> None:
        if not isinstance(rule, WeightingRule):
            missing = "" if hasattr(rule, "needs") else " (it lacks `needs`, the set of optional signals it reads)"
            raise TypeError(f"rule must satisfy the WeightingRule protocol, got {type(rule).__name__}{missing}")
        if rule.num_tasks != sampler.num_tasks:
            raise ValueError(f"rule has {rule.num_tasks} tasks but the sampler has {sampler.num_tasks}")
        self.rule = rule
        self.sampler = sampler
        self.method = method
        self.improvement_reduce = v.choice("improvement_reduce", improvement_reduce, IMPROVEMENT_REDUCTIONS)
        self.minibatch_updates = bool(minibatch_updates)
        self.step = 0
        self.last_signals: TaskSignals | None = None  # what the last end_step applied (after the fill-ins)
        self._measured = np.full((2, rule.num_tasks), np.nan)  # last measured J_k and accuracy per task
        self._open: BatchBuilder | None = None
        self._trained: NDArray[np.int64] | None = None  # groups per task of a finished batch awaiting end_step
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
        improvement_reduce: str | None = None,
        **sampler_overrides: Any,
    ) -> Controller:
        """Build a named configuration ("mt-grpo:0.2", "dapo", ...; see mtgrpo_core.methods).

        rule_kwargs go to the rule's constructor (e.g. lr, improvement_clip); sampler_overrides to SamplerConfig.
        improvement_reduce: None takes the method's own ("sum" for the reference presets, else "mean"); a value
        that contradicts a reference preset's is refused.
        """
        spec = parse_method(method)
        num_tasks = v.positive_int("num_tasks", num_tasks)
        reduce = _method_reduce(spec.name, spec.improvement_reduce, improvement_reduce)
        spec.check_sampler_overrides(dict(sampler_overrides))  # a reference preset refuses or warns by name
        settings = {**spec.sampler_settings, **sampler_overrides}
        config = SamplerConfig(batch_size=batch_size, group_size=group_size, **settings)
        rule = spec.build_rule(num_tasks, **dict(rule_kwargs or {}))
        sampler = RatioPreservingSampler(num_tasks, config, seed=seed)
        return cls(rule, sampler, spec.name, improvement_reduce=reduce, minibatch_updates=spec.minibatch_updates)

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
        """Algorithm 1, line 1: the RP-SAMPLER conversation for this step's batch. In streaming mode the ahead
        groups held for it (`report_ahead`) are reported first, each with its version, oldest version first."""
        builder = self.sampler.begin(self.weights, self.step)
        carry, ahead = self.sampler.carry, self.sampler.config.steps_ahead
        for h in carry.due(self.step - ahead) if ahead and carry is not None else ():
            builder.report_arrays(h.tasks, h.keys, h.rewards, h.informative, h.payloads, h.version)
        self._open = builder
        return builder

    def report_ahead(
        self,
        version: int,
        tasks: ArrayLike,
        keys: ArrayLike | None = None,
        rewards: ArrayLike | None = None,
        informative: ArrayLike | None = None,
        payloads: Sequence[Any] | None = None,
    ) -> KeyArray:
        """Streaming mode: report groups answering the `ahead()` request of step `version` as soon as they are
        generated, in one or several parts, before the step they are due at (version + steps_ahead) begins (or,
        between steps, after it: they then enter the next step). The controller holds them, payloads included
        (`kept_payloads`, `state_dict`), and that step's `begin_step()` reports them exactly as
        `builder.report_arrays(..., version=version)` would there. Arguments and checks as `report_arrays`;
        keys None numbers the groups now. A refused report changes nothing. Returns the keys."""
        carry, ahead, cfg = self.sampler.carry, self.sampler.config.steps_ahead, self.sampler.config
        if not ahead or carry is None:
            raise ValueError("report_ahead needs the streaming mode: SamplerConfig.steps_ahead >= 1")
        version = v.positive_int("version", version, minimum=0)
        if self._open is not None and version + ahead <= self.step:
            raise ValueError(
                f"version {version} is due at step {version + ahead} and step {self.step} has begun: report these "
                f"groups to its builder (builder.report_arrays(..., version={version}))"
            )
        t = v.task_ids("tasks", tasks, self.num_tasks)
        n = self.sampler.keys.next
        key_arr = as_key_array("keys", np.arange(n, n + t.shape[0], dtype=np.int64) if keys is None else keys)
        v.same_length("tasks", t, "keys", key_arr)
        if np.unique(key_arr).shape[0] != key_arr.shape[0]:
            raise ValueError(f"keys holds a key twice: {key_arr.tolist()[:8]}; expected one distinct key per group")
        if self._open is not None:
            self._open.unused_keys(key_arr)  # not reported (or carried) in the open step
        r, info = reported_groups(t.shape[0], cfg.group_size, rewards, informative, cfg.filtering, cfg.correct_reward)
        held = None if payloads is None else v.one_per_group("payloads", payloads, t.shape[0])
        carry.hold(HeldGroups(version, t, key_arr, r, None if r is not None else info, held))
        self.sampler.keys.next += t.shape[0] if keys is None else 0
        return key_arr

    def ahead_due(self) -> dict[int, NDArray[np.int64]]:
        """Streaming mode: the ahead requests that step `step` takes in (the open step, else the one `begin_step()`
        starts next): version -> groups per task not reported yet (all 0 when every group is held). A trainer
        waits for them before `begin_step()` (`report_ahead`), or reports late ones to the builder. Empty
        without the streaming mode."""
        carry, ahead = self.sampler.carry, self.sampler.config.steps_ahead
        return carry.awaiting(self.step - ahead) if ahead and carry is not None else {}

    def signals(self, facts: StepFacts) -> TaskSignals:
        """The step's per-task signals from its facts (the one signal path), with this method's I_k reduction and
        the sampler's correct_reward for accuracy. Rollouts left None in the facts are the step's reported ones
        (`BatchBuilder.rollouts`). `end_step(facts)` calls it; a trainer that logs or adjusts the signals (then
        passes them to `end_step`) calls it too."""
        if facts.rollout_task is None and facts.rollout_reward is None and self._open is not None:
            reported = self._open.rollouts()
            if reported is None:
                raise ValueError(
                    "facts.rollout_task/rollout_reward are None and the step's groups were reported without rewards "
                    "(informative=...): pass every rollout's task and reward in the facts"
                )
            facts = replace(facts, rollout_task=reported[0], rollout_reward=reported[1])
        return step_signals(
            facts,
            self.num_tasks,
            improvement_reduce=self.improvement_reduce,
            correct_reward=self.sampler.config.correct_reward,
        )

    def end_step(self, step: StepFacts | TaskSignals) -> NDArray[np.float64]:
        """Algorithm 1, line 4: next weights from this step's facts (or signals the caller computed); advances the
        step counter. A task trained only from carried groups keeps its signal (`_carried_tasks_measured`)."""
        if isinstance(step, StepFacts):
            signals = self.signals(step)
        elif isinstance(step, TaskSignals):
            signals = step
        else:
            raise TypeError(f"end_step takes the step's StepFacts (or TaskSignals), got {type(step).__name__}")
        if signals.num_tasks != self.num_tasks:
            raise ValueError(f"signals cover {signals.num_tasks} tasks, expected {self.num_tasks}")
        if "acceptance" in self.needs and signals.acceptance is None:  # the sampler's estimate, this step's included
            signals = replace(signals, acceptance=1.0 - self.sampler.estimator.filter_rate)
        missing = sorted(n for n in self.needs if getattr(signals, n) is None)
        if missing:
            raise ValueError(
                f"rule {type(self.rule).__name__} needs signals {missing}, but they are None: measure them "
                "(StepFacts surrogate values for improvement, sample advantages for mean_abs_advantage)"
            )
        signals, measured = self._carried_tasks_measured(signals)
        guard = self.sampler.guard
        if guard is not None and guard.barren.any():  # the rule does not chase a task that yields no signal
            signals = replace(signals, present=signals.present & ~guard.barren)
        weights = self._update_rule(signals)
        self._check_weights(weights, f"weights after step {self.step}")
        self._measured, self._open, self._trained = measured, None, None  # the step is over: commit
        self.last_signals = signals
        self.step += 1
        return weights

    def _carried_tasks_measured(self, signals: TaskSignals) -> tuple[TaskSignals, NDArray[np.float64]]:
        """Beyond the paper (carry-over): a task whose batch share this step came only from carried groups has no
        fresh rollout, hence no J_k, yet it was trained (its I_k and r_k are measured). It keeps its place in the
        weight update with the J_k and accuracy last measured for it (the step that generated its carried groups,
        at most max_staleness steps old) instead of dropping out (docs/signals.md). Returns the signals and the
        last measured J_k and accuracy with this step's, which end_step keeps once the rule accepted the step."""
        present = signals.present
        measured = self._measured.copy()
        measured[0, present] = signals.reward[present]
        if signals.accuracy is not None:
            measured[1, present] = signals.accuracy[present]
        trained = self._pending_trained()
        if trained is None:
            return signals, measured
        fill = ~present & (trained > 0) & ~np.isnan(measured[0])
        if signals.accuracy is not None:
            fill &= ~np.isnan(measured[1])
        if not fill.any():
            return signals, measured
        reward, accuracy = signals.reward.copy(), None if signals.accuracy is None else signals.accuracy.copy()
        reward[fill] = measured[0, fill]
        if accuracy is not None:
            accuracy[fill] = measured[1, fill]
        filled = TaskSignals.build(
            reward=reward,
            present=present | fill,
            improvement=signals.improvement,
            mean_abs_advantage=signals.mean_abs_advantage,
            accuracy=accuracy,
            improvement_steps=signals.improvement_steps,
        )
        return replace(filled, acceptance=signals.acceptance), measured

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

    def _pending_trained(self) -> NDArray[np.int64] | None:
        """Groups per task in the batch finished this step (None before finish): from the open conversation, or
        from a state saved between finish() and end_step()."""
        if self._open is not None and self._open.report is not None:
            return self._open.report.realized_counts
        return self._trained

    def state_dict(self) -> dict[str, Any]:
        """JSON-native; between finish() and end_step() it also holds the finished batch's groups per task, so a
        restored controller ends the step as this one would."""
        trained = self._pending_trained()
        return {
            "kind": "controller",
            "num_tasks": self.num_tasks,
            "method": self.method,
            "step": self.step,
            "measured": [[None if np.isnan(x) else float(x) for x in row] for row in self._measured],
            "pending_trained": None if trained is None else trained.tolist(),
            "rule": self.rule.state_dict(),
            "sampler": self.sampler.state_dict(),
        }

    def kept_payloads(self) -> dict[int, Any]:
        """The payloads of the groups kept for the next step and of the ahead groups held for their due step
        (`report_ahead`), by key (empty without carry-over or payloads): a checkpoint saves them beside
        `state_dict()` and hands them back to `load_state_dict`."""
        return self.sampler.carry.payloads() if self.sampler.carry is not None else {}

    def release_kept(self) -> dict[int, Any]:
        """Forget the groups kept for the next step, the held ahead groups and the ahead requests in flight, for a
        trainer that has lost their data (verl after a restart: TransferQueue does not survive it); the next batch
        is planned without them. Returns the kept and held groups' payloads by key."""
        if self._open is not None:
            raise RuntimeError("release_kept() inside a step: call it between end_step() and begin_step()")
        return self.sampler.carry.release() if self.sampler.carry is not None else {}

    def load_state_dict(self, state: Mapping[str, Any], kept_payloads: Mapping[int, Any] | None = None) -> None:
        """Restore a state of the same method and K (with `kept_payloads()` as saved, when the kept or held groups
        were reported with payloads); a refused state leaves the controller unchanged."""
        v.state_matches(state, "controller", self.num_tasks)
        if state.get("method") != self.method:
            raise ValueError(f"state['method'] is {state.get('method')!r}, expected {self.method!r}")
        missing = [key for key in ("step", "measured", "rule", "sampler") if key not in state]
        if missing:
            raise ValueError(f"state lacks {missing}: not a complete controller state")
        step = v.positive_int("state['step']", state["step"], minimum=0)
        measured = _measured_from_state(state["measured"], self.num_tasks)
        pending = state.get("pending_trained")
        if pending is not None:
            pending = v.int_array("state['pending_trained']", pending, ndim=1)
            if pending.shape != (self.num_tasks,) or (pending < 0).any():
                raise ValueError(
                    f"state['pending_trained'] must be {self.num_tasks} non-negative counts, got {pending.tolist()}"
                )
        backup, held = self.state_dict(), self.kept_payloads()
        try:
            self.rule.load_state_dict(state["rule"])
            self.sampler.load_state_dict(state["sampler"], kept_payloads)
        except Exception:
            self.rule.load_state_dict(backup["rule"])
            self.sampler.load_state_dict(backup["sampler"], held)
            raise
        self.step = step
        self._measured = measured
        self._open, self._trained = None, pending


def _method_reduce(method: str, preset_reduce: str | None, given: str | None) -> str:
    """The I_k reduction of a run: the given one, or the method's own; a contradiction of a preset is refused."""
    if given is None:
        return preset_reduce or DEFAULT_IMPROVEMENT_REDUCE
    given = v.choice("improvement_reduce", given, IMPROVEMENT_REDUCTIONS)
    if preset_reduce is not None and given != preset_reduce:
        raise ValueError(
            f"improvement_reduce={given!r} contradicts method {method!r}, whose reference code measures I_k with "
            f"{preset_reduce!r}: leave improvement_reduce unset"
        )
    return given


def _measured_from_state(value: Any, num_tasks: int) -> NDArray[np.float64]:
    """state['measured']: two rows (J_k, accuracy) of num_tasks numbers or None (never measured)."""
    rows = value if isinstance(value, list) and len(value) == 2 else None
    if rows is None or any(not isinstance(r, list) or len(r) != num_tasks for r in rows):
        raise ValueError(f"state['measured'] must be 2 lists of {num_tasks} numbers or None, got {value!r}")
    assert rows is not None
    numbers = [[x for x in r if x is not None] for r in rows]
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x) for r in numbers for x in r):
        raise ValueError(f"state['measured'] must hold finite numbers or None, got {value!r}")
    return np.array([[np.nan if x is None else float(x) for x in r] for r in rows], dtype=np.float64)
