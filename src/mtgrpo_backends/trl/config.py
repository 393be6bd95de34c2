"""`MTGRPOConfig`: TRL's GRPOConfig plus the MT-GRPO controller settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

from trl.trainer.grpo_config import GRPOConfig

from mtgrpo_core.methods import parse_method
from mtgrpo_core.settings import SamplerSettings, SelectionSettings, Settings

IMPROVEMENT_SIGNALS: tuple[str, ...] = ("surrogate", "reward-change")


def _from_json(name: str, value: Any, example: str) -> Any:
    """A dict field given as JSON text (the command line passes JSON), parsed; bad JSON is refused naming it."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{name} {value!r} is not valid JSON ({err}); expected a JSON object such as {example}"
        ) from None


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
    sampler: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Sampler settings (mtgrpo_core.settings.SamplerSettings; a dict or JSON, e.g. "
            "{'max_rounds': 2, 'carry_over': 0}); unset ones keep the method's, then the default (docs/sampler.md)."
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
    improvement_reduce: str | None = field(
        default=None,
        metadata={
            "help": "I_k over a task's samples: 'mean' or 'sum' (the reference code's); unset: the method's own "
            "(mean; the reference presets sum and refuse mean)."
        },
    )
    correct_reward: float = field(default=1.0, metadata={"help": "Reward that counts as a correct answer."})

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[no-untyped-call]
        parse_method(self.method)
        if not isinstance(self.task_column, str) or not self.task_column:
            raise ValueError(f"task_column must be a non-empty string, got {self.task_column!r}")
        if isinstance(self.tasks, str):  # list("easy") would be five one-letter tasks
            raise TypeError(
                f"tasks must be a list of task names, got the string {self.tasks!r}; for one task write "
                f"tasks=[{self.tasks!r}]"
            )
        if self.tasks is not None:
            names = list(self.tasks)
            if not names or len(set(names)) != len(names) or not all(isinstance(t, str) for t in names):
                raise ValueError(f"tasks must be a non-empty list of distinct strings, got {self.tasks!r}")
            self.tasks = names
        self.rule_kwargs = _from_json("rule_kwargs", self.rule_kwargs, '{"lr": 0.025}')  # the command line: JSON
        if self.rule_kwargs is not None and not isinstance(self.rule_kwargs, dict):
            raise TypeError(f"rule_kwargs must be a dict or JSON object, got {self.rule_kwargs!r}")
        # kept JSON-native (TrainingArguments serialises its fields): the settings given, checked by the core
        self.sampler = SamplerSettings.from_mapping(self.sampler or {}, "sampler").given()
        if self.sampler.get("steps_ahead"):
            raise ValueError(
                f"sampler {{'steps_ahead': {self.sampler['steps_ahead']!r}}}: TRL's GRPOTrainer generates inside the "
                "step, so nothing can be generated while it trains (docs/trl.md, Asynchronous generation); leave "
                "steps_ahead unset, or use the PyTorch loop or verl for the streaming mode"
            )
        if self.selection is not None:
            self.selection = SelectionSettings.from_mapping(self.selection, "selection").given()
        if self.improvement not in IMPROVEMENT_SIGNALS:
            raise ValueError(f"improvement must be one of {list(IMPROVEMENT_SIGNALS)}, got {self.improvement!r}")
        generate_every = cast(int, self.steps_per_generation) * self.num_iterations  # set by GRPOConfig
        if generate_every % self.gradient_accumulation_steps != 0:
            raise ValueError(
                f"steps_per_generation * num_iterations ({generate_every}) must be a multiple of "
                f"gradient_accumulation_steps ({self.gradient_accumulation_steps}): a controller step is one "
                "generation batch and must end on an optimizer step"
            )
        self._check_controller_settings()

    @property
    def settings(self) -> Settings:
        """The algorithm's settings (mtgrpo_core.settings), checked by the core when built."""
        return Settings(
            self.method,
            SamplerSettings.from_mapping(self.sampler or {}),
            dict(cast(dict[str, Any], self.rule_kwargs or {})),
            None if self.selection is None else SelectionSettings.from_mapping(self.selection),
            cast(Any, self.improvement_reduce),
            self.correct_reward,
        )

    def _check_controller_settings(self) -> None:
        """Build the method's rule, controller and selection once, as the trainer will, so that a setting they
        refuse is refused here (when the config is built), naming the field; the task count is the dataset's,
        so it is taken from `tasks` when given (else 1)."""
        group_size = cast(int, self.num_generations)
        batch_size = cast(int, self.generation_batch_size) // group_size
        num_tasks = 1 if self.tasks is None else len(self.tasks)
        if batch_size < num_tasks:
            raise ValueError(
                f"generation_batch_size={self.generation_batch_size} holds {batch_size} groups of "
                f"num_generations={group_size}, fewer than the {num_tasks} tasks: the per-task quotas do not fit; "
                f"use generation_batch_size >= {num_tasks * group_size}"
            )
        controller = self.settings.check(num_tasks, batch_size, group_size)
        if controller.sampler.config.filtering != "none" and (
            self.scale_rewards == "batch" or self.multi_objective_aggregation != "sum_then_normalize"
        ):
            raise ValueError(
                f"method {self.method!r} filters groups, which changes batch-level reward statistics: use "
                f"scale_rewards 'group' or 'none' (got {self.scale_rewards!r}) and multi_objective_aggregation "
                f"'sum_then_normalize' (got {self.multi_objective_aggregation!r})"
            )
        if controller.sampler.carry is not None and self.use_vllm:
            raise ValueError(
                f"carry_over={controller.sampler.config.carry_over} (method {self.method!r}) with use_vllm: carried "
                "rows would need vLLM's importance-sampling correction against their own generating policy, which "
                "is not supported; set sampler={'carry_over': 0}"
            )
