"""MT-GRPO inside verl's v1 trainers: `MTGRPOReplayBuffer` runs the controller's batch conversation in `sample()`
(the streaming mode under verl's async trainers), MT-GRPO's trainers (`trainer_class(trainer_mode)`) close each step
with the signal path; launch with `python -m mtgrpo_backends.verl.main`.

Importing this package checks the installed verl release (supported: >=0.9.1,<0.10). See docs/verl.md.
"""

from mtgrpo_backends.verl.config import MTGRPOSettings, check_trainer_config
from mtgrpo_backends.verl.replay_buffer import MTGRPOReplayBuffer, StepRecord
from mtgrpo_backends.verl.trainer import (
    MTGRPOColocateAsyncTrainer,
    MTGRPOSeparateAsyncTrainer,
    MTGRPOTrainer,
    trainer_class,
)

__all__ = [
    "MTGRPOColocateAsyncTrainer",
    "MTGRPOReplayBuffer",
    "MTGRPOSeparateAsyncTrainer",
    "MTGRPOSettings",
    "MTGRPOTrainer",
    "StepRecord",
    "check_trainer_config",
    "trainer_class",
]
