"""MT-GRPO's trainers for verl's three v1 trainer modes: sync, colocate_async and separate_async.

One verl step is one controller step (Algorithm 1). `prepare_step` submits nothing: the replay buffer's first
`sample()` of the step draws every round from the prompt pool with the current weights and submits it through
`_submit_rows` (in the async modes, after reporting the groups requested ahead at an earlier step, and before
submitting the next ahead request). After verl's update (all `parameter_sync_step` mini-batches) the step's facts
(every reported rollout's reward; each trained row's advantage and, if the rule needs I_k, its clipped surrogate
around the update) go through the core's signal path, and `end_step` makes the next weights. The controller, the
prompt pool and the groups kept or in flight are saved with every checkpoint.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, cast

import numpy as np
import transfer_queue as tq
import verl
from numpy.typing import NDArray
from omegaconf import OmegaConf
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.trainer_base import PPOTrainer
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
from verl.trainer.ppo.v1.trainer_separate_async import PPOTrainerSeparateAsync
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.utils.dataset.rl_dataset import collate_fn
from verl.utils.debug import marked_timer

from mtgrpo_backends.verl import checkpoint
from mtgrpo_backends.verl.batch_rows import SurrogateSettings, read_rows
from mtgrpo_backends.verl.config import check_trainer_config, check_verl_version, surrogate_level
from mtgrpo_backends.verl.groups import PARTITION
from mtgrpo_backends.verl.metrics import signal_metrics
from mtgrpo_backends.verl.replay_buffer import MTGRPOReplayBuffer
from mtgrpo_backends.verl.step_facts import row_groups, step_facts
from mtgrpo_core import check_needs

check_verl_version(verl.__version__)
logger = logging.getLogger(__name__)
PROVIDED_SIGNALS = ("improvement", "mean_abs_advantage")


def dataset_tasks(dataset: Any, task_field: str) -> list[Any]:
    """Each row's task, read from the dataset's table (verl's RLHFDataset keeps it in `.dataframe`)."""
    table: Any = getattr(dataset, "dataframe", None)
    columns = list(getattr(table, "column_names", []) or [])
    if task_field not in columns:
        raise ValueError(
            f"the training data has no field {task_field!r} (mtgrpo.task_field) naming each row's task "
            f"(columns: {columns}); add it to data.train_files or set mtgrpo.task_field"
        )
    return list(table[task_field])


class MTGRPOTrainerMixin(PPOTrainer):
    """What MT-GRPO changes in each of verl's v1 trainers; `trainer_class` picks the trainer by mode."""

    def __init__(self, config: Any) -> None:
        check_trainer_config(config)
        super().__init__(config)
        if not isinstance(self.replay_buffer, MTGRPOReplayBuffer):
            raise TypeError(f"replay buffer is {type(self.replay_buffer).__name__}, expected MTGRPOReplayBuffer")

    @property
    def buffer(self) -> MTGRPOReplayBuffer:
        return cast(MTGRPOReplayBuffer, self.replay_buffer)

    def _init_dataloader(self) -> None:
        super()._init_dataloader()
        self.attach_dataset()

    def attach_dataset(self) -> None:
        """Build the controller and prompt pool over the training data; refuse a rule this backend cannot serve."""
        settings = self.buffer.settings
        rollout_n = int(self.config.actor_rollout_ref.rollout.n)
        row_tasks = dataset_tasks(self.train_dataset, settings.task_field)
        self.buffer.attach(row_tasks, int(self.config.data.train_batch_size), rollout_n, self._submit_rows)
        ctrl = self.buffer.controller
        assert ctrl is not None
        check_needs(ctrl.needs, PROVIDED_SIGNALS, type(ctrl.rule).__name__, "verl")
        self._surrogate = self._surrogate_settings() if "improvement" in ctrl.needs else None

    def _surrogate_settings(self) -> SurrogateSettings:
        actor = self.config.actor_rollout_ref.actor
        default_clip = OmegaConf.select(actor, "clip_ratio", default=0.2)
        low = OmegaConf.select(actor, "clip_ratio_low", default=None)
        high = OmegaConf.select(actor, "clip_ratio_high", default=None)
        return SurrogateSettings(
            temperature=float(self.config.actor_rollout_ref.rollout.temperature),
            clip_low=float(default_clip if low is None else low),
            clip_high=float(default_clip if high is None else high),
            level=surrogate_level(self.config),
        )

    def _submit_rows(self, rows: NDArray[np.int64]) -> list[str]:
        """Register dataset rows as prompt groups in TransferQueue and dispatch their generation."""
        batch_dict = collate_fn([self.train_dataset[int(i)] for i in rows])
        batch_dict["uid"] = np.array([str(uuid.uuid4()) for _ in range(rows.shape[0])], dtype=object)
        batch = tu.get_tensordict(batch_dict)
        tu.assign_non_tensor_data(batch, "global_steps", self.global_steps)
        self._submit_batch_to_rollout(batch)
        return [str(u) for u in batch_dict["uid"]]

    def prepare_step(self) -> dict[str, Any]:
        """Nothing up front: `MTGRPOReplayBuffer.sample()` submits each round of the step itself."""
        return {}

    def step(self, metrics: dict[str, Any], timing_raw: dict[str, Any]) -> KVBatchMeta:
        batch = super().step(metrics, timing_raw)
        with marked_timer("mtgrpo_signals", timing_raw):
            metrics.update(self.end_controller_step(batch))
        return batch

    def end_controller_step(self, batch: KVBatchMeta) -> dict[str, float]:
        """The step's facts through the core's signal path, then `end_step`; returns the per-task metrics."""
        record = self.buffer.take_step()
        ctrl = self.buffer.controller
        assert ctrl is not None
        rows = read_rows(batch, self.actor_rollout_wg, self._surrogate)
        groups = row_groups(batch.keys, record.uid_index())
        facts = step_facts(
            record.group_task, record.rewards, record.fresh, groups, rows.advantage, rows.valid, rows.surrogate
        )
        ctrl.end_step(facts)
        assert ctrl.last_signals is not None
        return signal_metrics(self.buffer.task_names, ctrl.last_signals)

    def _save_checkpoint(self) -> None:
        """MT-GRPO's state first, then verl's files (verl marks the folder as the latest last)."""
        folder = checkpoint.step_folder(self.config.trainer, self.global_steps)
        checkpoint.save(folder, self.buffer.state_dict())
        super()._save_checkpoint()

    def _load_checkpoint(self) -> None:
        """Restore MT-GRPO's state from the folder verl will resume, before verl loads anything: a checkpoint
        without it, or of other tasks or another method, is refused with the model untouched. The groups kept or
        requested ahead at the checkpoint stay if verl restored them in TransferQueue (async modes), else all are
        released with a warning."""
        found = checkpoint.resume_folder(self.config.trainer)
        if found is not None:
            folder, step = found
            self.buffer.load_state_dict(checkpoint.read(folder, step), f"checkpoint {folder!r}")
        super()._load_checkpoint()
        if found is None:
            return
        held = self.buffer.held_uids()
        restored = self.trainer_mode != "sync"  # verl saves TransferQueue with the checkpoint in its async modes
        queued = set((tq.kv_list(partition_id=PARTITION) or {}).get(PARTITION, {})) if restored else set()
        missing = [uid for uid in held if uid not in queued]
        if missing:
            self.buffer.release_held()
            logger.warning(
                "mtgrpo: %d groups kept or requested ahead at step %d are dropped: %d of them are not in "
                "TransferQueue after the restart (verl saves it only in its async modes)",
                len(held),
                found[1],
                len(missing),
            )
        if restored:
            self.buffer.clear_unheld()


class MTGRPOTrainer(MTGRPOTrainerMixin, PPOTrainerSync):
    """verl's sync trainer with MT-GRPO: the synchronous conversation, one step per controller step."""


class MTGRPOColocateAsyncTrainer(MTGRPOTrainerMixin, PPOTrainerColocateAsync):
    """verl's colocate_async trainer with MT-GRPO's streaming mode: the ahead request is submitted before verl
    aborts and sleeps the rollout replicas, and generates under the new weights once they resume."""


class MTGRPOSeparateAsyncTrainer(MTGRPOTrainerMixin, PPOTrainerSeparateAsync):
    """verl's separate_async trainer with MT-GRPO's streaming mode: the ahead request generates on the standalone
    replicas while the step trains (across the step's weight sync), and the batch trains in parameter_sync_step
    mini-batches."""


TRAINERS: dict[str, type[MTGRPOTrainerMixin]] = {
    "sync": MTGRPOTrainer,
    "colocate_async": MTGRPOColocateAsyncTrainer,
    "separate_async": MTGRPOSeparateAsyncTrainer,
}


def trainer_class(mode: str) -> type[MTGRPOTrainerMixin]:
    """The MT-GRPO trainer of `trainer.v1.trainer_mode`."""
    if mode not in TRAINERS:
        raise ValueError(f"trainer.v1.trainer_mode is {mode!r}, expected one of {sorted(TRAINERS)}")
    return TRAINERS[mode]
