"""MT-GRPO inside Hugging Face TRL: switch `GRPOTrainer`/`GRPOConfig` to `MTGRPOTrainer`/`MTGRPOConfig`.

Importing this package checks the installed TRL release (supported: >=1.16,<1.17). See docs/trl.md.
"""

from mtgrpo_backends.trl.config import MTGRPOConfig
from mtgrpo_backends.trl.reasoning_tasks import PAPER_TASKS_3, PAPER_TASKS_9, REFERENCE_TEST_TASKS, build_dataset
from mtgrpo_backends.trl.rewards import paper_reward, reference_reward, score_response
from mtgrpo_backends.trl.trainer import MTGRPOTrainer

__all__ = [
    "PAPER_TASKS_3",
    "PAPER_TASKS_9",
    "REFERENCE_TEST_TASKS",
    "MTGRPOConfig",
    "MTGRPOTrainer",
    "build_dataset",
    "paper_reward",
    "reference_reward",
    "score_response",
]
