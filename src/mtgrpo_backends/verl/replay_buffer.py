"""`MTGRPOReplayBuffer`: verl's v1 replay buffer whose training batch is the controller's batch conversation.

verl's sync trainer calls `sample()` after scoring. Here `sample()` runs one controller step's RP-SAMPLER
conversation: each round's per-task request is drawn from the core's prompt pool, submitted for generation by the
trainer (`attach`), awaited in TransferQueue, rewarded from `rm_scores` and reported with its uid as the payload;
failed groups count as uninformative. The batch is the groups the core hands back (fresh and, with carry-over,
kept from earlier steps); the groups it keeps stay in TransferQueue for a later step and every other group of the
step is cleared. Validation (`partition_id="val"`) is verl's own sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

from mtgrpo_backends.verl.config import MTGRPOSettings
from mtgrpo_backends.verl.groups import PARTITION, read_rewards, wait_terminal
from mtgrpo_backends.verl.metrics import batch_metrics
from mtgrpo_core import Controller, PromptPool
from mtgrpo_core.prompts.pool import task_ids_of
from mtgrpo_core.sampling.sampler import Batch

Submit = Callable[[NDArray[np.int64]], list[str]]
STATE_FORMAT = 2


@dataclass(frozen=True)
class StepRecord:
    """What one step trains on: the G groups generated this step, in report order, then the batch's groups kept
    from earlier steps. uids (G,), group_task (G,), rewards (G, N) with NaN rows for failed and carried groups,
    fresh (G,) whether a group's rollouts were generated (and finished) this step, and the batch."""

    uids: list[str]
    group_task: NDArray[np.int64]
    rewards: NDArray[np.float64]
    fresh: NDArray[np.bool_]
    batch: Batch

    def uid_index(self) -> dict[str, int]:
        return {uid: g for g, uid in enumerate(self.uids)}


class MTGRPOReplayBuffer(ReplayBuffer):
    """Named by `trainer.v1.sampler.custom_sampler`; `sampler_kwargs` is the `mtgrpo` config group."""

    def __init__(
        self,
        trainer_mode: str,
        trainer_config: Any,
        max_off_policy_threshold: int | None,
        max_off_policy_strategy: str,
        sampler_kwargs: Any,
        refill_fn: Callable[[int], int] | None = None,
    ) -> None:
        if trainer_mode != "sync":
            raise ValueError(f"trainer.v1.trainer_mode is {trainer_mode!r}; MTGRPOReplayBuffer needs 'sync'")
        self.settings = MTGRPOSettings.from_config(sampler_kwargs)
        super().__init__(
            trainer_mode,
            trainer_config,
            max_off_policy_threshold,
            max_off_policy_strategy,
            sampler_kwargs,
            poll_interval=self.settings.poll_interval,
            refill_fn=refill_fn,
        )
        self.controller: Controller | None = None
        self.pool: PromptPool | None = None
        self.task_names: list[str] = []
        self._submit: Submit | None = None
        self._pending: StepRecord | None = None
        self.released_at_resume = 0  # groups kept at the checkpoint a resume could not train (their data was lost)

    def attach(self, row_tasks: Sequence[Any], batch_size: int, group_size: int, submit: Submit) -> None:
        """Build the controller and prompt pool for a dataset whose row i has task row_tasks[i].

        submit(rows) registers those dataset rows in TransferQueue, dispatches their generation and returns
        their uids (the trainer's `_submit_rows`; a test's fake producer).
        """
        s = self.settings
        names = list(s.tasks) if s.tasks is not None else sorted({str(t) for t in row_tasks})
        if batch_size < len(names):
            raise ValueError(
                f"data.train_batch_size={batch_size} is below the {len(names)} tasks: the per-task quotas do not "
                f"fit; use data.train_batch_size >= {len(names)}"
            )
        ids = task_ids_of(row_tasks, names, f"dataset field {s.task_field!r} (mtgrpo.task_field)")
        self.pool = PromptPool(ids, names, s.seed)
        self.controller = s.settings.controller(len(names), batch_size, group_size, s.seed)
        self.task_names, self._submit = names, submit

    def _attached(self) -> tuple[Controller, PromptPool, Submit]:
        if self.controller is None or self.pool is None or self._submit is None:
            raise RuntimeError(
                "MTGRPOReplayBuffer.sample() before attach(): run it with mtgrpo_backends.verl.MTGRPOTrainer "
                "(python -m mtgrpo_backends.verl.main), which attaches the dataset"
            )
        return self.controller, self.pool, self._submit

    def _sync(self) -> tuple[set[str], set[str], set[str]]:
        self._sync_metadata_from_transfer_queue()
        p = PARTITION
        return self.finished_keys[p], self.failure_keys[p], self.pending_keys[p] | self.running_keys[p]

    def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[KVBatchMeta, dict[str, Any]]:
        """One controller step's batch (partition "train"); verl's own sampling for validation."""
        if partition_id != PARTITION:
            return super().sample(global_steps, partition_id, batch_size)  # type: ignore[no-any-return]
        ctrl, pool, submit = self._attached()
        group_size = ctrl.sampler.config.group_size
        if batch_size != ctrl.sampler.config.batch_size:
            raise ValueError(
                f"sample() asked for {batch_size} groups; the controller was built for "
                f"{ctrl.sampler.config.batch_size} (data.train_batch_size)"
            )
        builder = ctrl.begin_step()
        uids: list[str] = []
        tasks, rewards, finished = [], [], []
        while (request := builder.next_request()) is not None:
            rows, row_tasks = pool.draw(request.counts)
            seed = np.random.SeedSequence([self.settings.seed, ctrl.step, request.round])
            order = np.random.default_rng(seed).permutation(rows.shape[0])  # report order decides DAPO's pick
            rows, row_tasks = rows[order], row_tasks[order]
            new = list(submit(rows))
            if len(new) != rows.shape[0] or len(set(new) | set(uids)) != len(new) + len(uids):
                raise RuntimeError(f"submit returned {len(new)} uids for {rows.shape[0]} rows, or repeated uids")
            what = f"step {global_steps} round {request.round}"
            wait_terminal(new, self._sync, self.settings.round_timeout_s, self.poll_interval, what)
            result = read_rewards(new, self.finished_keys[PARTITION], list(self.partitions[PARTITION]), group_size)
            ok = result.finished
            if ok.any():
                builder.report_arrays(row_tasks[ok], rewards=result.rewards[ok], payloads=_picked(new, ok))
            if not ok.all():  # a failed group gives no gradient signal: uninformative
                failed_count = int((~ok).sum())
                builder.report_arrays(
                    row_tasks[~ok], informative=np.zeros(failed_count, np.bool_), payloads=_picked(new, ~ok)
                )
            uids += new
            tasks.append(row_tasks)
            rewards.append(result.rewards)
            finished.append(ok)
        batch = builder.finish()
        chosen = [str(uid) for uid in batch.payloads or ()]
        if not chosen:
            raise RuntimeError(
                f"step {global_steps}: no informative group in {builder.num_tasks} tasks after "
                f"{batch.report.rounds} rounds; raise mtgrpo.sampler.max_rounds or check the reward function"
            )
        self._clear_groups(PARTITION, {str(uid) for uid in batch.released_payloads or ()})  # kept groups stay
        self._pending = _record(uids, tasks, rewards, finished, batch)
        meta = self._materialize_batch(PARTITION, chosen, dict(self.partitions[PARTITION]))
        failed = sum(int((~ok).sum()) for ok in finished)
        return meta, batch_metrics(self.task_names, batch.report, batch_size - len(chosen), failed)

    def take_step(self) -> StepRecord:
        """The record of the last `sample()`, handed out once (the trainer turns it into StepFacts)."""
        if self._pending is None:
            raise RuntimeError("take_step() without a sample() of partition 'train' since the last take_step()")
        record, self._pending = self._pending, None
        return record

    def state_dict(self) -> dict[str, Any]:
        """JSON-native: the task names, the controller (with the uids of the groups it keeps) and the prompt-pool
        cursors."""
        ctrl, pool, _ = self._attached()
        return {
            "format": STATE_FORMAT,
            "tasks": list(self.task_names),
            "controller": ctrl.state_dict(),
            "kept_uids": [[key, uid] for key, uid in ctrl.kept_payloads().items()],
            "prompt_pool": pool.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], where: str = "the state") -> None:
        """Restore `state_dict`; refuses other tasks, and a refused state changes nothing."""
        ctrl, pool, _ = self._attached()
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{where} has format {state.get('format')!r}, expected {STATE_FORMAT}")
        if list(state.get("tasks", [])) != self.task_names:
            raise ValueError(
                f"{where} was trained on tasks {state.get('tasks')} but this run has tasks {self.task_names} (in "
                "weight order); set mtgrpo.tasks to the saved list, or start a new run"
            )
        kept = state.get("kept_uids")
        if not isinstance(kept, list) or not all(isinstance(p, list) and len(p) == 2 for p in kept):
            raise ValueError(f"{where}: 'kept_uids' must be a list of [key, uid] pairs, got {kept!r}")
        before, held = ctrl.state_dict(), ctrl.kept_payloads()
        ctrl.load_state_dict(state["controller"], {key: uid for key, uid in kept})
        try:
            pool.load_state_dict(state["prompt_pool"])
        except Exception:
            ctrl.load_state_dict(before, held)
            raise
        # TransferQueue does not survive a restart: the groups kept at the checkpoint are gone with it
        self.released_at_resume = len(ctrl.release_kept())


def _picked(uids: list[str], mask: NDArray[np.bool_]) -> list[str]:
    return [uid for uid, ok in zip(uids, mask.tolist(), strict=True) if ok]


def _record(
    uids: list[str],
    tasks: list[NDArray[np.int64]],
    rewards: list[NDArray[np.float64]],
    finished: list[NDArray[np.bool_]],
    batch: Batch,
) -> StepRecord:
    """This step's groups, then the batch's carried ones (their task from the batch; no rollouts this step)."""
    carried = np.flatnonzero(batch.staleness > 0) if batch.staleness is not None else np.zeros(0, np.int64)
    payloads = batch.payloads or ()
    width = rewards[0].shape[1] if rewards else 0
    return StepRecord(
        uids + [str(payloads[i]) for i in carried],
        np.concatenate([*tasks, batch.tasks[carried]]),
        np.concatenate([*rewards, np.full((carried.size, width), np.nan)]),
        np.concatenate([*finished, np.zeros(carried.size, np.bool_)]),
        batch,
    )
