"""mtgrpo_core: framework-agnostic pieces of MT-GRPO (numpy only, never torch).

Task-weighting rules, improvement signals, the ratio-preserving sampler with acceptance-aware resampling, group
advantages, metrics, and a controller that runs the algorithm's decisions without owning the policy.
"""

from mtgrpo_core.acceptance import BetaFilterRate, EMAFilterRate, KnownFilterRate, plan_requests
from mtgrpo_core.advantages import (
    ADVANTAGE_ESTIMATORS,
    group_advantages,
    ragged_group_advantages,
    ragged_zero_gradient_mask,
    token_level_advantages,
    zero_gradient_mask,
)
from mtgrpo_core.controller import Controller
from mtgrpo_core.methods import METHOD_NAMES, MethodSpec, parse_method
from mtgrpo_core.metrics import (
    average_accuracy,
    delta_m_percent,
    realized_shares,
    share_distance,
    steps_to_threshold,
    worst_task_accuracy,
)
from mtgrpo_core.protocols import TaskSignals, WeightingRule
from mtgrpo_core.sampler import (
    Batch,
    BatchBuilder,
    BatchReport,
    GroupReport,
    RatioPreservingSampler,
    Request,
    run_batch,
)
from mtgrpo_core.sampler_config import SamplerConfig
from mtgrpo_core.signals import (
    RewardChangeImprovement,
    mean_abs_advantage_per_task,
    task_accuracy,
    task_improvement,
    task_rewards,
)
from mtgrpo_core.tasks import PromptPool, TaskRegistry
from mtgrpo_core.weighting_rules import FixedRule, IWURule, MinimaxRule, SECRule, UniformRule

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "METHOD_NAMES",
    "Batch",
    "BatchBuilder",
    "BatchReport",
    "BetaFilterRate",
    "Controller",
    "EMAFilterRate",
    "FixedRule",
    "GroupReport",
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
    "TaskRegistry",
    "TaskSignals",
    "UniformRule",
    "WeightingRule",
    "average_accuracy",
    "delta_m_percent",
    "group_advantages",
    "mean_abs_advantage_per_task",
    "parse_method",
    "plan_requests",
    "ragged_group_advantages",
    "ragged_zero_gradient_mask",
    "realized_shares",
    "run_batch",
    "share_distance",
    "steps_to_threshold",
    "task_accuracy",
    "task_improvement",
    "task_rewards",
    "token_level_advantages",
    "worst_task_accuracy",
    "zero_gradient_mask",
]
