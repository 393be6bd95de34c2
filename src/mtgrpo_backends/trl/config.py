"""`MTGRPOConfig`: TRL's GRPOConfig plus the MT-GRPO controller settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, cast

from trl.trainer.grpo_config import GRPOConfig

from mtgrpo_core.controller import Controller
from mtgrpo_core.methods import parse_method
from mtgrpo_core.prompts.history import SelectionConfig
from mtgrpo_core.signals import IMPROVEMENT_REDUCTIONS

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
        self.selection = _from_json("selection", self.selection, '{"exploration": 0.1}')
        if self.selection is not None and not isinstance(self.selection, dict):
            raise TypeError(f"selection must be None, a dict or a JSON object, got {self.selection!r}")
        if self.rule_kwargs is not None and not isinstance(self.rule_kwargs, dict):
            raise TypeError(f"rule_kwargs must be a dict or JSON object, got {self.rule_kwargs!r}")
        if self.improvement_reduce is not None and self.improvement_reduce not in IMPROVEMENT_REDUCTIONS:
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
        self._check_controller_settings()

    def _check_controller_settings(self) -> None:
        """Build the method's rule, sampler config and selection once, as the trainer will, so that a setting they
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
        spec = parse_method(self.method)
        rule_kwargs = dict(cast(dict[str, Any], self.rule_kwargs or {}))
        try:
            if "num_tasks" in rule_kwargs:
                raise ValueError("num_tasks comes from the tasks, not from rule_kwargs")
            spec.build_rule(num_tasks, **rule_kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"rule_kwargs {rule_kwargs!r} (method {self.method!r}): {err}") from None
        overrides = self.sampler_overrides()
        try:
            controller = Controller.from_method(self.method, num_tasks, batch_size, group_size, **overrides)
        except (TypeError, ValueError) as err:
            given = ", ".join(f"{k}={x!r}" for k, x in overrides.items())
            raise ValueError(f"method {self.method!r} with {given}: {err}") from None
        filtering = controller.sampler.config.filtering
        if filtering != "none" and (
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
                "is not supported; set carry_over=0"
            )
        if self.selection is not None:
            self._check_selection(filtering)

    def _check_selection(self, filtering: str) -> None:
        """The selection settings as the prompt pool will take them: the filter and the correct reward are the
        method's and this config's, not selection keys."""
        assert isinstance(self.selection, dict)
        fixed = sorted({"filtering", "correct_reward"} & set(self.selection))
        if fixed:
            raise ValueError(
                f"selection {self.selection!r} sets {fixed}: the pool classifies groups with the sampler's filter and "
                "correct reward; set MTGRPOConfig.filtering / MTGRPOConfig.correct_reward instead"
            )
        if filtering == "none":
            raise ValueError(f"selection needs a method that filters groups; {self.method!r} does not")
        known = sorted(f.name for f in fields(SelectionConfig) if f.name not in ("filtering", "correct_reward"))
        unknown = sorted(set(self.selection) - set(known))
        if unknown:
            raise ValueError(f"selection {self.selection!r}: unknown keys {unknown}; expected keys among {known}")
        try:
            SelectionConfig(filtering=cast(Any, filtering), correct_reward=self.correct_reward, **self.selection)
        except (TypeError, ValueError) as err:
            raise ValueError(f"selection {self.selection!r}: {err}") from None

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
