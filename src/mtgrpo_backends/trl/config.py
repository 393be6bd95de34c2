"""`MTGRPOConfig`: TRL's GRPOConfig plus the MT-GRPO controller settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

from trl.trainer.grpo_config import GRPOConfig

from mtgrpo_core.methods import parse_method
from mtgrpo_core.signals import DEFAULT_IMPROVEMENT_REDUCE, IMPROVEMENT_REDUCTIONS

IMPROVEMENT_SIGNALS: tuple[str, ...] = ("surrogate", "reward-change")


@dataclass
class MTGRPOConfig(GRPOConfig):
    """GRPOConfig with task weighting and ratio-preserving dynamic sampling (see docs/trl.md).

    One generation batch is one controller step: B = generation_batch_size // num_generations prompt groups.
    Sampler fields left at None take the method's setting, then SamplerConfig's default.
    """

    method: str = field(
        default="mt-grpo:0.2",
        metadata={"help": "Controller method: 'mt-grpo:0.2', 'dapo', 'grpo', 'sec-dapo', ... (mtgrpo_core.methods)."},
    )
    task_column: str = field(default="task", metadata={"help": "Dataset column that names each row's task."})
    tasks: list[str] | None = field(
        default=None,
        metadata={"help": "Task names in weight order; None takes the sorted distinct values of task_column."},
    )
    oversample: float | None = field(default=None, metadata={"help": "M_os: a round requests M_os * B prompts."})
    max_rounds: int | None = field(default=None, metadata={"help": "N_rs: resampling rounds after the first."})
    max_inflation: float | None = field(default=None, metadata={"help": "M_acc: cap of the inflation m_k."})
    filtering: str | None = field(
        default=None, metadata={"help": "Zero-gradient filter: 'lenient', 'strict' or 'none' (None: the method's)."}
    )
    targets: str | None = field(default=None, metadata={"help": "'multinomial' (the paper's) or 'apportion'."})
    planner: str | None = field(
        default=None, metadata={"help": "Request planning: 'paper', or beyond the paper 'posterior' or 'joint'."}
    )
    confidence: float | None = field(
        default=None,
        metadata={"help": "Probability target: per task (posterior planner) or of the whole batch (joint planner)."},
    )
    guard_floor: float | None = field(
        default=None, metadata={"help": "No-signal guard floor (0 turns it off; docs/sampler.md); None: 0.02."}
    )
    guard_probe: int | None = field(
        default=None, metadata={"help": "No-signal guard: probe groups per step of a barren task; None: ceil(B / K)."}
    )
    carry_over: int | None = field(
        default=None,
        metadata={
            "help": "Carry-over: keep informative surplus groups for up to this many later steps, trained with the "
            "clipped ratio against the policy that generated them (0: strictly on-policy; docs/sampler.md)."
        },
    )
    selection: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Selective rollouts (docs/selective.md): None keeps no per-prompt history; a dict (or JSON) of "
            "SelectionConfig settings, e.g. {} or {'exploration': 0.1}, skips prompts last seen uninformative."
        },
    )
    rule_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments of the weighting rule, e.g. {'lr': 0.025, 'weight_decay': 1e-5}."},
    )
    improvement: str = field(
        default="surrogate",
        metadata={
            "help": "I_k source: 'surrogate' (Eq. 8, one extra forward pass per optimizer step) or "
            "'reward-change' (the documented approximation, no extra pass)."
        },
    )
    improvement_reduce: str = field(
        default=DEFAULT_IMPROVEMENT_REDUCE,
        metadata={"help": "I_k over a task's samples: 'mean' (default) or 'sum' (the reference code's)."},
    )
    correct_reward: float = field(default=1.0, metadata={"help": "Reward that counts as a correct answer."})

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[no-untyped-call]
        parse_method(self.method)
        if not isinstance(self.task_column, str) or not self.task_column:
            raise ValueError(f"task_column must be a non-empty string, got {self.task_column!r}")
        if self.tasks is not None:
            names = list(self.tasks)
            if not names or len(set(names)) != len(names) or not all(isinstance(t, str) for t in names):
                raise ValueError(f"tasks must be a non-empty list of distinct strings, got {self.tasks!r}")
            self.tasks = names
        if isinstance(self.rule_kwargs, str):  # the command line passes JSON
            self.rule_kwargs = json.loads(self.rule_kwargs)
        if isinstance(self.selection, str):
            self.selection = json.loads(self.selection)
        if self.selection is not None and not isinstance(self.selection, dict):
            raise TypeError(f"selection must be None, a dict or a JSON object, got {self.selection!r}")
        if self.rule_kwargs is not None and not isinstance(self.rule_kwargs, dict):
            raise TypeError(f"rule_kwargs must be a dict or JSON object, got {self.rule_kwargs!r}")
        if self.improvement_reduce not in IMPROVEMENT_REDUCTIONS:
            raise ValueError(
                f"improvement_reduce must be one of {list(IMPROVEMENT_REDUCTIONS)}, got {self.improvement_reduce!r}"
            )
        if self.improvement not in IMPROVEMENT_SIGNALS:
            raise ValueError(f"improvement must be one of {list(IMPROVEMENT_SIGNALS)}, got {self.improvement!r}")
        generate_every = cast(int, self.steps_per_generation) * self.num_iterations  # set by GRPOConfig
        if generate_every % self.gradient_accumulation_steps != 0:
            raise ValueError(
                f"steps_per_generation * num_iterations ({generate_every}) must be a multiple of "
                f"gradient_accumulation_steps ({self.gradient_accumulation_steps}): a controller step is one "
                "generation batch and must end on an optimizer step"
            )

    def sampler_overrides(self) -> dict[str, Any]:
        """The sampler settings given here (None means: keep the method's or SamplerConfig's default)."""
        names = (
            "oversample",
            "max_rounds",
            "max_inflation",
            "filtering",
            "targets",
            "planner",
            "confidence",
            "guard_floor",
            "guard_probe",
            "carry_over",
        )
        chosen = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        return {**chosen, "correct_reward": self.correct_reward}
