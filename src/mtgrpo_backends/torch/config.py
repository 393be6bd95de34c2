"""`TrainConfig`: the hyperparameters of one run of the reference loop; each field carries its help text.

`TrainSettings` holds what every run of a comparison shares; `TrainConfig` adds what tells runs apart (suite,
method, seed) and the controller's sampler and rule settings. The command lines (mtgrpo train, mtgrpo demo) are
generated from these fields by tyro, which reads the `help` in each field's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mtgrpo_backends.torch import ops
from mtgrpo_core import checks as v
from mtgrpo_core.advantages import ADVANTAGE_ESTIMATORS
from mtgrpo_core.protocols import CORRECT
from mtgrpo_core.settings import SamplerSettings, SelectionSettings, Settings


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class TrainSettings:
    """Hyperparameters shared by every run of a comparison (checked by TrainConfig)."""

    steps: int = _help("training steps (batches)", 200)
    batch_size: int = _help("B: prompts (groups) per training batch", 32)
    group_size: int = _help("N: completions per prompt", 8)
    lr: float = _help("Adam learning rate of the policy", 1e-4)
    minibatches: int = _help("optimizer steps per batch (the batch is split into this many mini-batches)", 4)
    epochs: int = _help("passes over the batch per step", 1)
    clip_low: float = _help("ratio clip below 1 (paper 0.2)", 0.2)
    clip_high: float = _help("ratio clip above 1 (clip-higher, paper 0.28)", 0.28)
    aggregation: Literal["token-mean", "seq-mean"] = _help("loss aggregation over tokens", "token-mean")
    advantage: str = _help(
        "group advantage estimator: a name in mtgrpo_core.ADVANTAGE_ESTIMATORS (grpo, dr_grpo, rloo, batch_std, or "
        "one added with register_estimator)",
        "grpo",
    )
    improvement_reduce: Literal["mean", "sum"] | None = _help(
        "I_k over task k's sequences: mean (independent of the batch share) or sum (the reference code's); unset: "
        "the method's own (mean; the reference presets sum and refuse mean)",
        None,
    )
    kl_coef: float = _help("coefficient of KL(pi || initial policy), k3 estimator; paper 0", 0.0)
    max_grad_norm: float = _help("gradient-norm clip of the policy update", 1.0)
    temperature: float = _help("sampling temperature of the rollouts", 1.0)
    eval_every: int = _help("held-out evaluation every this many steps (and at start and end)", 25)
    eval_temperature: float = _help("temperature of the held-out evaluation (0 = greedy)", 1.0)
    eval_samples: int = _help("completions per held-out prompt when eval_temperature > 0", 4)
    reward_errors_as_zero: bool = _help("count a reward function that raises as reward 0 (counted in the log)", False)
    device: str = _help("torch device, e.g. cpu or cuda", "cpu")
    pool_size: int = _help(
        "distinct training prompts per task, a fixed set the prompt pool hands out in passes (0: a fresh prompt at "
        "every draw)",
        0,
    )


@dataclass
class TrainConfig(TrainSettings):
    """Hyperparameters of one run; each field's metadata carries its help text (the CLI shows it)."""

    suite: str = _help("task suite: tiny3 or tiny9", "tiny3")
    method: str = _help("controller method, e.g. grpo, dapo, sec-dapo, mt-grpo:0.2", "mt-grpo:0.2")
    seed: int = _help("seed of the controller, prompt sampling and generation", 0)
    sampler: SamplerSettings = field(
        default_factory=SamplerSettings, metadata={"help": "sampler settings (oversample, max_rounds, ...)"}
    )
    rule: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "arguments of the weighting rule (lr, improvement_clip, ...)"}
    )
    selection: SelectionSettings | None = field(
        default=None,
        metadata={
            "help": "skip prompts last seen uninformative (exploration, min_retry, max_skips; the filter is the "
            "method's); needs pool_size > 0 (None: no skipping)"
        },
    )

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "group_size", "minibatches", "epochs", "eval_every", "eval_samples"):
            v.positive_int(name, getattr(self, name), minimum=0 if name == "steps" else 1)
        v.positive_int("seed", self.seed, minimum=0)
        v.real_in_range("lr", self.lr, 0.0, low_open=True)
        v.real_in_range("temperature", self.temperature, 0.0, low_open=True)
        v.real_in_range("eval_temperature", self.eval_temperature, 0.0)
        v.real_in_range("max_grad_norm", self.max_grad_norm, 0.0, low_open=True)
        v.real_in_range("clip_low", self.clip_low, 0.0, 1.0, high_open=True)
        v.real_in_range("clip_high", self.clip_high, 0.0)
        v.real_in_range("kl_coef", self.kl_coef, 0.0)
        v.choice("aggregation", self.aggregation, ops.AGGREGATIONS)
        v.choice("advantage", self.advantage, tuple(ADVANTAGE_ESTIMATORS))
        if self.minibatches > self.batch_size * self.group_size:
            raise ValueError(f"minibatches must be <= batch_size * group_size, got {self.minibatches}")
        v.positive_int("pool_size", self.pool_size, minimum=0)
        self.sampler = self.settings.sampler  # a mapping given becomes SamplerSettings
        self.selection = self.settings.selection
        if self.selection is not None and self.pool_size == 0:
            raise ValueError(
                f"selection {self.selection.given()!r} skips prompts by their history, which needs a finite training "
                "set: set pool_size > 0"
            )

    @property
    def settings(self) -> Settings:
        """The algorithm's settings of this run (mtgrpo_core.settings), checked by the core when built."""
        return Settings(
            self.method,
            self.sampler,
            self.rule,
            self.selection,
            self.improvement_reduce,
            correct_reward=CORRECT,
        )
