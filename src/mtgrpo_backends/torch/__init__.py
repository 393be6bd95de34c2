"""Plain PyTorch backend: tensor ops, a character-level task suite, a small GPT, warm-up and the reference loop."""

from mtgrpo_backends.torch.checkpoint import load_checkpoint, save_checkpoint
from mtgrpo_backends.torch.config import TrainConfig
from mtgrpo_backends.torch.loop import train
from mtgrpo_backends.torch.model import CharGPT, CharGPTConfig, check_vocab, completion_logprobs, sample
from mtgrpo_backends.torch.ops import (
    clipped_surrogate_loss,
    group_advantages,
    sequence_surrogate,
)
from mtgrpo_backends.torch.rollout import evaluate
from mtgrpo_backends.torch.state import TrainState
from mtgrpo_backends.torch.tasks import SUITE_TASKS, TASKS, CharTokenizer, Problem, RewardError, Suite, Task, get_suite
from mtgrpo_backends.torch.warmup import WarmStart, warm_started_model, warm_up

__all__ = [
    "SUITE_TASKS",
    "TASKS",
    "CharGPT",
    "CharGPTConfig",
    "CharTokenizer",
    "Problem",
    "RewardError",
    "Suite",
    "Task",
    "TrainConfig",
    "TrainState",
    "WarmStart",
    "check_vocab",
    "clipped_surrogate_loss",
    "completion_logprobs",
    "evaluate",
    "get_suite",
    "group_advantages",
    "load_checkpoint",
    "sample",
    "save_checkpoint",
    "sequence_surrogate",
    "train",
    "warm_started_model",
    "warm_up",
]
