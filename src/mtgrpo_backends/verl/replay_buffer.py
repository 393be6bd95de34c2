"""`MTGRPOReplayBuffer`: verl's v1 replay buffer whose training batch is the controller's batch conversation.

verl's trainers call `sample()` after scoring. Here the first `sample()` of a step runs one controller step's
RP-SAMPLER conversation: in streaming mode (verl's async trainers) the groups requested ahead that the step takes
in (`Controller.ahead_due`) are awaited and reported to the controller (`report_ahead`), which hands them to the
step's conversation with their version; then each round's per-task request is drawn from the core's
prompt pool, submitted for generation by the trainer (`attach`), awaited in TransferQueue, rewarded from
`rm_scores` and reported with its uid as the payload; failed groups count as uninformative. The batch is the groups
the core hands back (fresh, ahead and kept from earlier steps); in streaming mode the groups of `ahead()` are
submitted at once, to generate while the batch trains. Groups kept or in flight stay in TransferQueue and every
other group of the step is cleared. With `parameter_sync_step` p > 1 (separate_async) the batch is dealt into p
mini-batches in the task ratio, one per `sample()` call. Validation (`partition_id="val"`) is verl's own sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import transfer_queue as tq
from numpy.typing import NDArray
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

from mtgrpo_backends.verl.config import TRAINER_MODES, MTGRPOSettings
from mtgrpo_backends.verl.groups import PARTITION, read_rewards, wait_terminal
from mtgrpo_backends.verl.metrics import batch_metrics, streaming_metrics
from mtgrpo_backends.verl.streaming import AheadQueue, AheadRequest, mini_batches
from mtgrpo_core import Controller, PromptPool
from mtgrpo_core.prompts.pool import task_ids_of
from mtgrpo_core.sampling.sampler import Batch, BatchBuilder

Submit = Callable[[NDArray[np.int64]], list[str]]
Report = Callable[..., Any]  # BatchBuilder.report_arrays, or Controller.report_ahead with its version bound
STATE_FORMAT = 2


@dataclass(frozen=True)
class StepRecord:
    """What one step trains on: the G groups reported this step (ahead ones, then the rounds'), in report order,
    then the batch's groups kept from earlier steps. uids (G,), group_task (G,), rewards (G, N) with NaN rows for
    failed and carried groups, fresh (G,) whether a group's rollouts were reported (finished) this step, and the
    batch."""

    uids: list[str]
    group_task: NDArray[np.int64]
    rewards: NDArray[np.float64]
    fresh: NDArray[np.bool_]
    batch: Batch

    def uid_index(self) -> dict[str, int]:
        return {uid: g for g, uid in enumerate(self.uids)}


@dataclass
class _Reports:
    """The groups reported in one step's conversation, in report order."""

    uids: list[str] = field(default_factory=list)
    tasks: list[NDArray[np.int64]] = field(default_factory=list)
    rewards: list[NDArray[np.float64]] = field(default_factory=list)
    finished: list[NDArray[np.bool_]] = field(default_factory=list)

    def failed(self) -> int:
        return sum(int((~ok).sum()) for ok in self.finished)


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
        if trainer_mode not in TRAINER_MODES:
            raise ValueError(f"trainer.v1.trainer_mode is {trainer_mode!r}; MTGRPOReplayBuffer runs {TRAINER_MODES}")
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
        self.mini_batches = int(trainer_config.get("parameter_sync_step", 1) or 1)
        self.controller: Controller | None = None
        self.pool: PromptPool | None = None
        self.task_names: list[str] = []
        self.ahead = AheadQueue()
        self._submit: Submit | None = None
        self._group_size = 0
        self._pending: StepRecord | None = None
        self._held: list[KVBatchMeta] = []  # the step's later mini-batches
        self._held_step = -1

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
        controller = s.settings.controller(len(names), batch_size, group_size, s.seed)
        if bool(controller.sampler.config.steps_ahead) != (self.trainer_mode != "sync"):
            raise ValueError(
                f"trainer.v1.trainer_mode={self.trainer_mode!r} with mtgrpo.sampler.steps_ahead="
                f"{controller.sampler.config.steps_ahead}: the async modes need steps_ahead >= 1, sync needs 0"
            )
        self.pool = PromptPool(ids, names, s.seed)
        self.controller = controller
        self.task_names, self._submit, self._group_size = names, submit, group_size

    def _attached(self) -> tuple[Controller, PromptPool, Submit]:
        if self.controller is None or self.pool is None or self._submit is None:
            raise RuntimeError(
                "MTGRPOReplayBuffer.sample() before attach(): run it with mtgrpo_backends.verl's trainers "
                "(python -m mtgrpo_backends.verl.main), which attach the dataset"
            )
        return self.controller, self.pool, self._submit

    def _sync(self) -> tuple[set[str], set[str], set[str]]:
        self._sync_metadata_from_transfer_queue()
        p = PARTITION
        return self.finished_keys[p], self.failure_keys[p], self.pending_keys[p] | self.running_keys[p]

    def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[KVBatchMeta, dict[str, Any]]:
        """One controller step's batch (partition "train"), or its next mini-batch; verl's own sampling for
        validation."""
        if partition_id != PARTITION:
            return super().sample(global_steps, partition_id, batch_size)  # type: ignore[no-any-return]
        ctrl, pool, submit = self._attached()
        full = ctrl.sampler.config.batch_size
        if batch_size * self.mini_batches != full:
            raise ValueError(
                f"sample() asked for {batch_size} groups; the controller was built for {full} (data.train_batch_size) "
                f"in {self.mini_batches} mini-batches (parameter_sync_step)"
            )
        if self._held:
            if global_steps != self._held_step:
                raise RuntimeError(f"step {global_steps} began with mini-batches of step {self._held_step} unused")
            return self._held.pop(0), {}
        reports = _Reports()
        for version in ctrl.ahead_due():  # the controller holds them and hands them to begin_step
            due = self.ahead.pop(version)
            what = f"step {global_steps}: the ahead request of controller step {version}"
            self._report(partial(ctrl.report_ahead, version), reports, list(due.uids), due.tasks, what)
        builder = ctrl.begin_step()
        while (request := builder.next_request()) is not None:
            rows, row_tasks = self._draw(pool, request.counts, ctrl.step, request.round)
            new = self._submitted(submit, rows, reports.uids)
            what = f"step {global_steps} round {request.round}"
            self._report(builder.report_arrays, reports, new, row_tasks, what)
        batch = builder.finish()
        chosen = [str(uid) for uid in batch.payloads or ()]
        if len(chosen) < self.mini_batches:
            raise RuntimeError(
                f"step {global_steps}: {len(chosen)} informative groups in {builder.num_tasks} tasks after "
                f"{batch.report.rounds} rounds, for {self.mini_batches} mini-batches (parameter_sync_step); raise "
                "mtgrpo.sampler.max_rounds or check the reward function"
            )
        requested = self._submit_ahead(builder, pool, submit, ctrl.step) if self.trainer_mode != "sync" else None
        self._clear_groups(PARTITION, {str(uid) for uid in batch.released_payloads or ()})  # kept groups stay
        self._pending = _record(reports, batch)
        metrics = batch_metrics(self.task_names, batch.report, full - len(chosen), reports.failed())
        if requested is not None:
            metrics.update(streaming_metrics(self.task_names, batch, requested, len(self.ahead)))
        assert batch.staleness is not None
        snapshot = dict(self.partitions[PARTITION])
        parts = mini_batches(chosen, batch.tasks, batch.staleness, self.mini_batches)
        first, *self._held = [self._materialize_batch(PARTITION, part, snapshot) for part in parts]
        self._held_step = global_steps
        return first, metrics

    def _draw(
        self, pool: PromptPool, counts: NDArray[np.int64], step: int, round_: int, ahead: bool = False
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Prompts of a request, in a seeded order (the report order decides DAPO's pick)."""
        rows, row_tasks = pool.draw(counts)
        seed = np.random.SeedSequence([self.settings.seed, step, round_, *([1] if ahead else [])])
        order = np.random.default_rng(seed).permutation(rows.shape[0])
        return rows[order], row_tasks[order]

    def _submitted(self, submit: Submit, rows: NDArray[np.int64], seen: list[str]) -> list[str]:
        new = list(submit(rows))
        if len(new) != rows.shape[0] or len(set(new) | set(seen)) != len(new) + len(seen):
            raise RuntimeError(f"submit returned {len(new)} uids for {rows.shape[0]} rows, or repeated uids")
        return new

    def _report(self, report: Report, reports: _Reports, uids: list[str], tasks: NDArray[np.int64], what: str) -> None:
        """Await the groups' terminal status and report them (`builder.report_arrays` or `ctrl.report_ahead` of
        their version; a failed group as uninformative)."""
        wait_terminal(uids, self._sync, self.settings.round_timeout_s, self.poll_interval, what)
        result = read_rewards(uids, self.finished_keys[PARTITION], list(self.partitions[PARTITION]), self._group_size)
        ok = result.finished
        if ok.any():
            report(tasks[ok], rewards=result.rewards[ok], payloads=_picked(uids, ok))
        if not ok.all():  # a failed group gives no gradient signal: uninformative
            failed = np.zeros(int((~ok).sum()), np.bool_)
            report(tasks[~ok], informative=failed, payloads=_picked(uids, ~ok))
        reports.uids += uids
        reports.tasks.append(tasks)
        reports.rewards.append(result.rewards)
        reports.finished.append(ok)

    def _submit_ahead(self, builder: BatchBuilder, pool: PromptPool, submit: Submit, step: int) -> int:
        """Submit the groups of `builder.ahead()` now, to generate while the batch trains; returns how many."""
        request = builder.ahead()
        if request is None:
            return 0
        rows, row_tasks = self._draw(pool, request.counts, step, request.round, ahead=True)
        uids = self._submitted(submit, rows, self.ahead.uids())
        self.ahead.add(AheadRequest(request.version, tuple(uids), row_tasks))
        return len(uids)

    def take_step(self) -> StepRecord:
        """The record of the last step's conversation, handed out once, after its last mini-batch (the trainer turns
        it into StepFacts)."""
        if self._pending is None or self._held:
            raise RuntimeError("take_step() before the step's sample() calls of partition 'train' were all made")
        record, self._pending = self._pending, None
        return record

    def held_uids(self) -> list[str]:
        """The groups kept for a later step or requested ahead (in TransferQueue until they are reported)."""
        ctrl, _, _ = self._attached()
        return [str(uid) for uid in ctrl.kept_payloads().values()] + self.ahead.uids()

    def release_held(self) -> None:
        """Forget the groups kept or requested ahead: their data was lost (`Controller.release_kept`)."""
        ctrl, _, _ = self._attached()
        ctrl.release_kept()
        self.ahead.clear()

    def clear_unheld(self) -> None:
        """Clear every training group and trajectory that is not held (after a resume: verl's TransferQueue
        checkpoint also holds the rows of the batch trained at the checkpointed step)."""
        self._sync_metadata_from_transfer_queue()
        held = set(self.held_uids())
        keys = [*self.prompt_global_steps[PARTITION], *self.partitions[PARTITION]]
        stale = [key for key in keys if key.split("_")[0] not in held]
        if stale:
            tq.kv_clear(keys=stale, partition_id=PARTITION)

    def state_dict(self) -> dict[str, Any]:
        """JSON-native: the task names, the controller (with the uids of the groups it keeps), the ahead requests in
        flight and the prompt-pool cursors."""
        ctrl, pool, _ = self._attached()
        return {
            "format": STATE_FORMAT,
            "tasks": list(self.task_names),
            "controller": ctrl.state_dict(),
            "kept_uids": [[key, uid] for key, uid in ctrl.kept_payloads().items()],
            "ahead": self.ahead.state(),
            "prompt_pool": pool.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], where: str = "the state") -> None:
        """Restore `state_dict` (the kept and ahead groups included: `release_held` forgets them when their data is
        gone); refuses other tasks, and a refused state changes nothing."""
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
        ahead = AheadQueue()
        ahead.load(state.get("ahead", []), len(self.task_names), where)
        before, held = ctrl.state_dict(), ctrl.kept_payloads()
        ctrl.load_state_dict(state["controller"], {key: uid for key, uid in kept})
        try:
            awaited = ctrl.sampler.carry.in_flight() if ctrl.sampler.carry is not None else 0
            if not np.array_equal(ahead.counts(len(self.task_names)), awaited):
                raise ValueError(
                    f"{where}: 'ahead' holds {ahead.counts(len(self.task_names)).tolist()} groups per task in flight "
                    f"but the controller awaits {np.asarray(awaited).tolist()}: the file was edited or mixed"
                )
            pool.load_state_dict(state["prompt_pool"])
        except Exception:
            ctrl.load_state_dict(before, held)
            raise
        self.ahead = ahead


def _picked(uids: list[str], mask: NDArray[np.bool_]) -> list[str]:
    return [uid for uid, ok in zip(uids, mask.tolist(), strict=True) if ok]


def _record(reports: _Reports, batch: Batch) -> StepRecord:
    """This step's reported groups, then the batch's carried ones (their task from the batch; no rollouts this
    step)."""
    reported = set(reports.uids)
    payloads = [str(uid) for uid in batch.payloads or ()]
    carried = [i for i, uid in enumerate(payloads) if uid not in reported]
    width = reports.rewards[0].shape[1] if reports.rewards else 0
    return StepRecord(
        reports.uids + [payloads[i] for i in carried],
        np.concatenate([*reports.tasks, batch.tasks[carried]]),
        np.concatenate([*reports.rewards, np.full((len(carried), width), np.nan)]),
        np.concatenate([*reports.finished, np.zeros(len(carried), np.bool_)]),
        batch,
    )
