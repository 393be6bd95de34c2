"""Configuration of the ratio-preserving sampler (paper defaults) and its ablation switches."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from mtgrpo_core import checks as v
from mtgrpo_core.sampling.planners import planner_names
from mtgrpo_core.sampling.targets import COUNT_SCHEMES

FILTERS: tuple[str, ...] = ("lenient", "strict", "none")


MAX_ROUND_PROMPTS = 2**31 - 1  # one round's request, in prompts: far beyond any real batch, safe in int64 arithmetic


@dataclass(frozen=True)
class SamplerConfig:
    """Settings of RP-SAMPLER (Algorithm 2). Defaults follow the paper except where noted.

    batch_size: B, prompts (groups) in the batch that reaches the optimizer.
    group_size: N, rollouts per prompt.
    oversample: M_os, a round requests M_os * B prompts (paper planner).
    max_rounds: N_rs, resampling rounds after the first request (10 for 3 tasks, 2 for 9 in the paper).
    max_inflation: M_acc, cap of the acceptance-aware inflation m_k.
    filtering: "lenient" (drop groups with all-equal rewards), "strict" (drop all-correct / all-wrong by accuracy)
        or "none" (plain GRPO: one request of exactly the target counts, nothing dropped).
    ratio_constraint: True keeps the per-task target counts (RP-SAMPLER); False is plain DAPO dynamic sampling
        (first B informative groups in report order).
    acceptance_aware: inflate requests by m_k (False is the paper's "without inflation" ablation).
    targets: "multinomial" (the paper's draw) or "apportion" (unbiased systematic rounding, beyond the paper) for
        target and request counts.
    planner: "paper" (Multinomial(M_os B, zhat) rounds, EMA filter rates) or "posterior" (requests sized so that
        P(accepted_k >= deficit_k) >= confidence under a Beta posterior, beyond the paper), or any name registered
        with `planners.register_planner`. Used when filtering and ratio_constraint are on; filtering="none" uses
        the no-filter planner and ratio_constraint=False the DAPO planner.
    confidence: probability target: per task (posterior planner), of the whole batch (joint planner).
    guard_floor: the no-signal guard (`targets.NoSignalGuard`, beyond the paper): a task whose last groups were all
        uninformative, more of them in a row than a task with this informative rate shows with probability 0.1%,
        is sampled only by probe groups until one is informative. 0 turns the guard off; it is off without
        filtering.
    guard_probe: groups per step that keep testing a barren task; None: the uniform share ceil(B / K).
    carry_over: steps an informative group that was generated but not needed may wait to be trained
        (`carry_pool`, beyond the paper); 0 (default) is strictly on-policy, as in the paper. A trainer that turns
        it on keeps the generating policy's log-probabilities of every kept group and trains carried groups with
        the clipped importance ratio against them.
    generation_cap: prompts generated per step, rounds and guard probes included, at most generation_cap * B
        (rounded up; carried groups were counted when generated); 0 (default, the paper's) is no cap, else >= 1.
        Each round's request is fitted into what is left by `targets.fair_share`; a step the cap ends short is
        filled from other tasks' informative surplus (step 6) and reported `capped` (beyond the paper).
    correct_reward: reward that counts as correct for the strict filter.
    """

    batch_size: int
    group_size: int
    oversample: float = 3.0
    max_rounds: int = 10
    max_inflation: float = 5.0
    filtering: Literal["lenient", "strict", "none"] = "lenient"
    ratio_constraint: bool = True
    acceptance_aware: bool = True
    targets: Literal["multinomial", "apportion"] = "apportion"
    planner: str = "paper"
    confidence: float = 0.9
    correct_reward: float = 1.0
    guard_floor: float = 0.02
    guard_probe: int | None = None
    carry_over: int = 0
    generation_cap: float = 0.0

    def __post_init__(self) -> None:
        v.positive_int("batch_size", self.batch_size)
        v.positive_int("group_size", self.group_size)
        v.real_in_range("oversample", self.oversample, 1.0, None)
        v.positive_int("max_rounds", self.max_rounds, minimum=0)
        v.real_in_range("max_inflation", self.max_inflation, 1.0, None)
        v.choice("filtering", self.filtering, FILTERS)
        v.choice("targets", self.targets, COUNT_SCHEMES)
        v.choice("planner", self.planner, planner_names())
        v.real_in_range("confidence", self.confidence, 0.0, 1.0, low_open=True, high_open=True)
        v.real_in_range("correct_reward", self.correct_reward)
        v.real_in_range("guard_floor", self.guard_floor, 0.0, 1.0, high_open=True)
        v.positive_int("carry_over", self.carry_over, minimum=0)
        cap = v.real_in_range("generation_cap", self.generation_cap, 0.0, None)
        if 0.0 < cap < 1.0:
            raise ValueError(
                f"generation_cap must be 0 (no cap) or >= 1.0 (B prompts per step, what a batch needs when every "
                f"group is informative), got {cap!r}"
            )
        if self.carry_over and (self.filtering == "none" or not self.ratio_constraint or self.planner == "paper"):
            raise ValueError(
                f"carry_over={self.carry_over} needs a planner that plans from what is still missing (planner "
                f"'posterior' or 'joint', with filtering and the ratio constraint); got planner={self.planner!r}, "
                f"filtering={self.filtering!r}, ratio_constraint={self.ratio_constraint}: carried groups would only "
                "displace fresh ones"
            )
        if self.guard_probe is not None:
            v.positive_int("guard_probe", self.guard_probe, minimum=1)
        for name in ("ratio_constraint", "acceptance_aware"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("oversample", "max_inflation", "generation_cap"):
            requested = getattr(self, name) * self.batch_size
            if requested > MAX_ROUND_PROMPTS:
                raise ValueError(
                    f"{name} * batch_size must be <= {MAX_ROUND_PROMPTS} prompts in one "
                    f"{'step' if name == 'generation_cap' else 'round'}, got "
                    f"{getattr(self, name)!r} * {self.batch_size} = {requested:.3g}"
                )
        if self.filtering != "none" and self.group_size < 2:
            raise ValueError(
                f"group_size must be >= 2 when filtering={self.filtering!r} (a group of one is always "
                f"zero-gradient), got {self.group_size}"
            )

    def cap_prompts(self, num_tasks: int) -> int | None:
        """Prompts one step may generate (None: no cap), refused below one group per task (`num_tasks`)."""
        if not self.generation_cap:
            return None
        cap = math.ceil(self.generation_cap * self.batch_size)
        if cap < num_tasks:
            raise ValueError(
                f"generation_cap {self.generation_cap!r} allows {cap} prompts per step (ceil(cap * B), B = "
                f"{self.batch_size}), fewer than one group per task ({num_tasks} tasks); the minimum is "
                f"{num_tasks / self.batch_size:.6g} (K / B), or 0 for no cap"
            )
        return cap

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-native values (numpy scalars become Python numbers)."""
        return {k: x.item() if isinstance(x, np.generic) else x for k, x in asdict(self).items()}
