"""The paper's reference code as named method presets of the existing pieces (docs/fidelity.md).

The reference code is github rsshyam/MT-GRPO, a verl fork: verl/verl/utils/auto_curriculum/priority_decay.py (the
task weights), verl/verl/trainer/ppo/ray_trainer.py (generation, filtering, resampling), verl/verl/workers/actor/
dp_actor.py (the per-mini-batch improvement), scripts/exp-1 (3 tasks) and scripts/exp-2 (9 tasks). Every choice
below is an option of a weighting rule, the sampler or the filter-rate estimator: nothing is reimplemented.

    "mt-grpo-ref[:lam]"   scripts/exp-1/main/run_mt-grpo_*.sh (3 tasks; lam defaults to 0.2)
    "mt-grpo-ref9[:lam]"  scripts/exp-2/main/run_mt-grpo_*.sh (9 tasks; lam defaults to 0.1)
    "dapo-ref", "dapo-ref9", "grpo-ref"   the baselines' scripts (run_dapo.sh, run_grpo.sh)

A preset's settings can be overridden only where the released scripts themselves vary them (weight decay, the
I_k clip, the resampling rounds, inflation, the filter), with a `ReferencePresetWarning` naming each; overriding
any other setting of the preset is refused (use the plain method instead).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mtgrpo_core import checks as v
from mtgrpo_core.sampling.acceptance import EMAFilterRate
from mtgrpo_core.sampling.planners import PLANNER_REGISTRY, PaperPlanner, register_planner

REFERENCE_ACTOR_LR = 1e-6  # actor_rollout_ref.actor.optim.lr in every script; the I_k clip scales with it
REFERENCE_FILTER_ALPHA = 0.1  # 1 - dynamic_rollouts.filtered_ratio_decay_rate 0.9 (ppo_trainer.yaml; no script sets it)
REFERENCE_PLANNER = "paper-ref"


class ReferencePresetWarning(UserWarning):
    """A reference preset was combined with a setting that overrides one of its own."""


def reference_filter_rate(num_tasks: int) -> EMAFilterRate:
    """The reference's filtered-ratio estimate: rho <- 0.9 rho + 0.1 observed, rho = 0 at the start
    (priority_decay.py `update_filtered_ratio`), i.e. `EMAFilterRate(alpha=0.1, initial=0.0)`."""
    return EMAFilterRate(num_tasks, alpha=REFERENCE_FILTER_ALPHA, initial=0.0)


def reference_max_rounds(max_num_gen_batches: int) -> int:
    """N_rs (resampling rounds after the first) from `algorithm.filter_groups.max_num_gen_batches`, which counts
    the first generation round (ray_trainer.py `fit`: generate while num_gen_batches < max): 10 -> 9, 2 -> 1."""
    return v.positive_int("max_num_gen_batches", max_num_gen_batches) - 1


def reference_improvement_clip(delta_threshold: float = 0.1, actor_lr: float = REFERENCE_ACTOR_LR) -> float:
    """The clip c of I_k: delta_threshold * (actor_lr / 1e-6) (priority_decay.py `calculate_delta`; the
    threshold is 0.1 unless a script sets `trainer.sec.bandit.delta_threshold`)."""
    threshold = v.real_in_range("delta_threshold", delta_threshold, 0.0, low_open=True)
    return threshold * (v.real_in_range("actor_lr", actor_lr, 0.0, low_open=True) / REFERENCE_ACTOR_LR)


if REFERENCE_PLANNER not in PLANNER_REGISTRY:  # the paper's rounds with the reference's estimate
    register_planner(REFERENCE_PLANNER, PaperPlanner.from_config, estimator=reference_filter_rate)

# Where each setting comes from (messages and docs/fidelity.md name these).
SOURCES: dict[str, str] = {
    "lr": "trainer.sec.bandit.lr=0.025",
    "optimizer": "torch.optim.Adam on the weight logits in priority_decay.py",
    "coupled_decay": "torch.optim.Adam([w], weight_decay=gamma): coupled L2 in priority_decay.py",
    "weight_decay": "trainer.sec.bandit.gamma",
    "improvement_clip": "calculate_delta: delta_threshold * actor lr / 1e-6",
    "reward_signal": "bias_metric='batch_acc', lambda_bias_type='add'",
    "reward_decay": "batch_acc_decay_rate=0.5",
    "score_absent": "every arm enters the softmax gradient (priority_decay.py update)",
    "filtering": "trainer.pure_acc_filter (ray_trainer.py fit)",
    "ratio_constraint": "trainer.sec.bandit.ensure_famo_ratio",
    "acceptance_aware": "trainer.sec.bandit.efficient_sampling.enabled",
    "max_rounds": "algorithm.filter_groups.max_num_gen_batches - 1",
    "oversample": "trainer.rejection_sample_multiplier=3.0",
    "max_inflation": "efficient_sampling.mult_max=5.0",
    "targets": "np.random.choice of each prompt's task (sample_arms)",
    "planner": "filtered_ratio_decay_rate=0.9 from 0",
    "guard_floor": "no no-signal guard in the reference",
    "carry_over": "no carry-over in the reference",
    "generation_cap": "no per-step generation cap in the reference (max_num_gen_batches bounds the rounds)",
}
TUNABLE: frozenset[str] = frozenset({"weight_decay", "improvement_clip", "max_rounds", "acceptance_aware", "filtering"})

_IWU: dict[str, Any] = {
    "lr": 0.025,
    "optimizer": "adamw",
    "coupled_decay": True,
    "reward_signal": "accuracy_ema",
    "reward_decay": 0.5,
    "score_absent": True,
}
_COMMON: dict[str, Any] = {
    "oversample": 3.0,
    "max_inflation": 5.0,
    "targets": "multinomial",
    "planner": REFERENCE_PLANNER,
    "guard_floor": 0.0,
    "carry_over": 0,
    "generation_cap": 0.0,
}
# 3 tasks: pure_acc_filter default True (strict), max_num_gen_batches=10; 9 tasks: pure_acc_filter=False, 2.
_EXP1: dict[str, Any] = {**_COMMON, "filtering": "strict", "max_rounds": reference_max_rounds(10)}
_EXP2: dict[str, Any] = {**_COMMON, "filtering": "lenient", "max_rounds": reference_max_rounds(2)}


@dataclass(frozen=True)
class ReferencePreset:
    """One released script family: its rule and arguments, its sampler settings, and what may be overridden."""

    name: str
    plain: str  # the library's method of the same design, for changes the preset refuses
    experiment: str
    num_tasks: int | None  # K of the experiment (None: both)
    sibling: str | None  # the preset of the other experiment
    rule: str
    arg: str | None = None
    default: float | None = None
    rule_kwargs: Mapping[str, Any] = field(default_factory=dict)
    sampler_settings: Mapping[str, Any] = field(default_factory=dict)
    delta_threshold: float | None = None
    improvement_reduce: str | None = None
    minibatch_updates: bool = False  # one weight update per PPO mini-batch (dp_actor.py), not one per step

    def rule_arguments(self, num_tasks: int, base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The rule's constructor arguments: the preset's (base), the I_k clip for `actor_lr` if given, then the
        caller's overrides, each checked (warned or refused by name)."""
        given = dict(overrides)
        kwargs = dict(base)
        if "actor_lr" in given:
            actor_lr = given.pop("actor_lr")
            if self.delta_threshold is None:
                raise TypeError(f"method {self.name!r} has no I_k clip, so actor_lr={actor_lr!r} does not apply")
            kwargs["improvement_clip"] = reference_improvement_clip(self.delta_threshold, actor_lr)
        self._check(given, kwargs, "rule_kwargs")
        if self.sibling is not None and num_tasks != self.num_tasks:
            twin = REFERENCE_PRESETS[self.sibling]
            if num_tasks == twin.num_tasks:
                warnings.warn(
                    f"method {self.name!r} reproduces {self.experiment}; the reference's {num_tasks}-task scripts "
                    f"({twin.experiment}) are method {twin.name!r}",
                    ReferencePresetWarning,
                    stacklevel=4,
                )
        return {**kwargs, **given}

    def check_sampler_overrides(self, overrides: Mapping[str, Any]) -> None:
        """Warn about (TUNABLE) or refuse each sampler setting that overrides one of the preset's."""
        self._check(dict(overrides), self.sampler_settings, "sampler settings")

    def _check(self, given: Mapping[str, Any], preset: Mapping[str, Any], where: str) -> None:
        for name, value in given.items():
            if name == self.arg or name not in preset or value == preset[name]:
                continue
            said = f"method {self.name!r} sets {name}={preset[name]!r} ({SOURCES.get(name, self.experiment)})"
            if name not in TUNABLE:
                raise ValueError(
                    f"{said}, which every released script shares; {where} give {name}={value!r}. "
                    f"Use method {self.plain!r} to change it"
                )
            warnings.warn(
                f"{said}; {where} give {name}={value!r}, which is used: the run no longer reproduces "
                f"{self.experiment} as released",
                ReferencePresetWarning,
                stacklevel=5,
            )


EXP1, EXP2 = "scripts/exp-1 (3 tasks)", "scripts/exp-2 (9 tasks)"


def _iwu(name: str, k: int, sibling: str, lam: float, wd: float, clip: float, inflate: bool) -> ReferencePreset:
    return ReferencePreset(
        name=name,
        plain="mt-grpo",
        experiment=EXP1 if k == 3 else EXP2,
        num_tasks=k,
        sibling=sibling,
        rule="iwu-ref",
        arg="lam",
        default=lam,
        rule_kwargs={**_IWU, "weight_decay": wd, "improvement_clip": reference_improvement_clip(clip)},
        sampler_settings={**(_EXP1 if k == 3 else _EXP2), "ratio_constraint": True, "acceptance_aware": inflate},
        delta_threshold=clip,
        improvement_reduce="sum",
        minibatch_updates=True,
    )


def _dapo(name: str, k: int, sibling: str) -> ReferencePreset:
    settings = {**(_EXP1 if k == 3 else _EXP2), "ratio_constraint": False, "acceptance_aware": False}
    return ReferencePreset(name, "dapo", EXP1 if k == 3 else EXP2, k, sibling, "uniform", sampler_settings=settings)


REFERENCE_PRESETS: dict[str, ReferencePreset] = {
    p.name: p
    for p in (
        # 3 tasks: gamma 1e-5, no delta_threshold (clip 0.1), no efficient_sampling (no inflation).
        _iwu("mt-grpo-ref", 3, "mt-grpo-ref9", lam=0.2, wd=1e-5, clip=0.1, inflate=False),
        # 9 tasks: gamma 1e-4, delta_threshold=0.2 (lambda 0.1, 0.9, 1.2; the lambda 0.3 script keeps 0.1),
        # efficient_sampling on. ensure_famo_ratio_from=10 (no ratio constraint in steps 1-9) is not reproduced.
        _iwu("mt-grpo-ref9", 9, "mt-grpo-ref", lam=0.1, wd=1e-4, clip=0.2, inflate=True),
        _dapo("dapo-ref", 3, "dapo-ref9"),
        _dapo("dapo-ref9", 9, "dapo-ref"),
        # rejection_sample=False: no filter; each prompt's task drawn i.i.d. from the (uniform) weights.
        ReferencePreset(
            "grpo-ref",
            "grpo",
            "scripts/exp-*/main/run_grpo.sh",
            None,
            None,
            "uniform",
            sampler_settings={"filtering": "none", "targets": "multinomial"},
        ),
    )
}
