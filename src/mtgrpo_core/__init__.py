"""mtgrpo_core: framework-agnostic pieces of MT-GRPO (numpy only, never torch).

Task-weighting rules, improvement signals, the ratio-preserving sampler with acceptance-aware resampling, group
advantages, metrics, and a controller that runs the algorithm's decisions without owning the policy.
"""

from mtgrpo_core.advantages import (
    ADVANTAGE_ESTIMATORS,
    group_advantages,
    ragged_group_advantages,
    ragged_zero_gradient_mask,
    token_level_advantages,
    zero_gradient_mask,
)
from mtgrpo_core.controller import Controller
from mtgrpo_core.methods import METHOD_NAMES, RULES, MethodSpec, build_rule, parse_method, register_rule
from mtgrpo_core.metrics import (
    average_accuracy,
    delta_m_percent,
    realized_shares,
    share_distance,
    steps_to_threshold,
    worst_task_accuracy,
)
from mtgrpo_core.prompts.history import SelectionConfig
from mtgrpo_core.prompts.pool import PromptPool, Selection
from mtgrpo_core.protocols import SIGNAL_NEEDS, TaskSignals, WeightingRule
from mtgrpo_core.sampling import joint_planner as _joint_planner  # noqa: F401  (registers the "joint" planner)
from mtgrpo_core.sampling.acceptance import BetaFilterRate, EMAFilterRate, KnownFilterRate, plan_requests
from mtgrpo_core.sampling.config import SamplerConfig
from mtgrpo_core.sampling.sampler import (
    Batch,
    BatchBuilder,
    BatchReport,
    RatioPreservingSampler,
    Request,
)
from mtgrpo_core.signals import (
    DEFAULT_IMPROVEMENT_REDUCE,
    RewardChangeImprovement,
    StepFacts,
    check_needs,
    mean_abs_advantage_per_task,
    step_signals,
    task_accuracy,
    task_improvement,
    task_rewards,
    with_stand_ins,
)
from mtgrpo_core.weighting.rules import FixedRule, IWURule, MinimaxRule, SECRule, UniformRule
from mtgrpo_core.weighting.scaled import ScaledIWURule

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "DEFAULT_IMPROVEMENT_REDUCE",
    "METHOD_NAMES",
    "RULES",
    "SIGNAL_NEEDS",
    "Batch",
    "BatchBuilder",
    "BatchReport",
    "BetaFilterRate",
    "Controller",
    "EMAFilterRate",
    "FixedRule",
    "IWURule",
    "KnownFilterRate",
    "MethodSpec",
    "MinimaxRule",
    "PromptPool",
    "RatioPreservingSampler",
    "Request",
    "RewardChangeImprovement",
    "SECRule",
    "SamplerConfig",
    "ScaledIWURule",
    "Selection",
    "SelectionConfig",
    "StepFacts",
    "TaskSignals",
    "UniformRule",
    "WeightingRule",
    "average_accuracy",
    "build_rule",
    "check_needs",
    "delta_m_percent",
    "group_advantages",
    "mean_abs_advantage_per_task",
    "parse_method",
    "plan_requests",
    "ragged_group_advantages",
    "ragged_zero_gradient_mask",
    "realized_shares",
    "register_rule",
    "share_distance",
    "step_signals",
    "steps_to_threshold",
    "task_accuracy",
    "task_improvement",
    "task_rewards",
    "token_level_advantages",
    "with_stand_ins",
    "worst_task_accuracy",
    "zero_gradient_mask",
]
