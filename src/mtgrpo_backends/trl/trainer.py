"""`MTGRPOTrainer`: GRPOTrainer with MT-GRPO task weighting and ratio-preserving dynamic sampling.

One generation batch is one controller step (Algorithm 1). Inside `_generate_and_score_completions` the rows the
dataloader prefetched are set aside; the controller's requests are drawn from per-task prompt pools with the
current weights (zero lag), generated and scored by GRPOTrainer itself in chunks of at most one generation batch,
reported to RP-SAMPLER, and the selected groups become the training batch. After the optimizer step(s) on that
batch the controller takes J_k (all rollouts of the step, before filtering) and I_k (Eq. 8, measured) and makes the
next weights. Every decision uses only TRL's gathered rewards and seeded generators, so processes agree.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import trl
from accelerate.utils import gather
from datasets import Dataset
from numpy.typing import NDArray
from packaging.version import Version
from transformers import TrainerCallback
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.grpo_trainer import GRPOTrainer

from mtgrpo_backends.trl.batch_assembly import gather_rows, take_rows
from mtgrpo_backends.trl.config import MTGRPOConfig
from mtgrpo_backends.trl.prompt_pool import TaskPromptPool, task_ids_of_column
from mtgrpo_backends.trl.state_io import load_state, save_state
from mtgrpo_backends.trl.surrogate import sequence_surrogate
from mtgrpo_core import Controller, TaskSignals
from mtgrpo_core.sampler import Batch
from mtgrpo_core.signals import RewardChangeImprovement, task_accuracy, task_improvement

SUPPORTED_TRL = (Version("1.16.0"), Version("1.17.0"))
STATE_FILE = "mtgrpo_state.json"
logger = logging.getLogger(__name__)


def check_trl_version(version: str) -> None:
    """Refuse a TRL release outside the supported range (the trainer overrides TRL internals)."""
    low, high = SUPPORTED_TRL
    if not low <= Version(version) < high:
        raise ImportError(
            f"mtgrpo_backends.trl supports trl>={low},<{high} (it overrides GRPOTrainer internals); found trl "
            f"{version}. Install a supported release: pip install 'trl>={low},<{high}'"
        )


check_trl_version(trl.__version__)


@dataclass
class _StepData:
    """What one controller step generated: chunk outputs and, per group, its chunk, position, task, rewards."""

    outputs: list[dict[str, Any]] = field(default_factory=list)
    local_rows: list[int] = field(default_factory=list)
    fillers: list[int] = field(default_factory=list)
    group_chunk: list[int] = field(default_factory=list)
    group_pos: list[int] = field(default_factory=list)
    group_task: list[int] = field(default_factory=list)
    rewards: list[NDArray[np.float64]] = field(default_factory=list)


@dataclass
class _PendingSignals:
    """Signals of the current step waiting for the end of its optimizer step(s)."""

    reward: NDArray[np.float64]
    mean_abs_advantage: NDArray[np.float64] | None
    surrogate_rows: list[NDArray[np.float64]] = field(default_factory=list)


class _StepEndHook(TrainerCallback):
    """Calls the trainer back after every optimizer step (before logging and checkpointing)."""

    def __init__(self, trainer: MTGRPOTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.trainer._after_optimizer_step()
        return control


class MTGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose batches follow MT-GRPO's task weights; configure it with `MTGRPOConfig`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, MTGRPOConfig):
            raise TypeError(f"args must be an MTGRPOConfig, got {type(self.args).__name__}")
        cfg = self.cfg
        dataset = self.train_dataset
        if not isinstance(dataset, Dataset):
            raise TypeError(f"train_dataset must be a map-style datasets.Dataset, got {type(dataset).__name__}")
        if cfg.task_column not in dataset.column_names:
            raise ValueError(
                f"train_dataset has no task column {cfg.task_column!r} (columns: {dataset.column_names}); add one "
                "or set MTGRPOConfig.task_column"
            )
        values = dataset[cfg.task_column]
        self.task_names: list[str] = list(cfg.tasks) if cfg.tasks is not None else sorted(set(values))
        num_tasks = len(self.task_names)
        self._group_size: int = cast(int, self.num_generations)
        self._batch_groups: int = cast(int, cfg.generation_batch_size) // self._group_size
        if self._batch_groups < num_tasks:
            raise ValueError(
                f"generation_batch_size={cfg.generation_batch_size} holds {self._batch_groups} groups of "
                f"num_generations={self._group_size}, fewer than the {num_tasks} tasks: the per-task quotas do "
                f"not fit; use generation_batch_size >= {num_tasks * self._group_size}"
            )
        self.controller = Controller.from_method(
            cfg.method,
            num_tasks=num_tasks,
            batch_size=self._batch_groups,
            group_size=self._group_size,
            seed=cfg.seed,
            rule_kwargs=cast(dict[str, Any] | None, cfg.rule_kwargs),
            **cfg.sampler_overrides(),
        )
        filtering = self.controller.sampler.config.filtering != "none"
        if filtering and (cfg.scale_rewards == "batch" or cfg.multi_objective_aggregation != "sum_then_normalize"):
            raise ValueError(
                f"method {cfg.method!r} filters groups, which changes batch-level reward statistics: use "
                f"scale_rewards 'group' or 'none' (got {cfg.scale_rewards!r}) and multi_objective_aggregation "
                f"'sum_then_normalize' (got {cfg.multi_objective_aggregation!r})"
            )
        self.prompt_pool = TaskPromptPool(
            task_ids_of_column(values, self.task_names, cfg.task_column), num_tasks, cfg.seed, self.task_names
        )
        self._wants_surrogate = self.controller.needs_improvement and cfg.improvement == "surrogate"
        self._reward_change = (
            RewardChangeImprovement(num_tasks)
            if self.controller.needs_improvement and cfg.improvement == "reward-change"
            else None
        )
        self._pending: _PendingSignals | None = None
        self._last_rewards: NDArray[np.float64] | None = None
        self._capturing = False
        self._captured_logps: torch.Tensor | None = None
        self._micro_batches: list[tuple[dict[str, Any], torch.Tensor]] = []
        self.last_batch: Batch | None = None
        self.add_callback(_StepEndHook(self))

    @property
    def cfg(self) -> MTGRPOConfig:
        """The trainer's arguments (an MTGRPOConfig)."""
        return cast(MTGRPOConfig, self.args)

    def _training(self) -> bool:
        return bool(getattr(self.model, "training", False))

    # -- generation: the controller's batch conversation ----------------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if not self._training():
            return super()._generate_and_score_completions(inputs)
        builder = self.controller.begin_step()
        data = _StepData()
        while (request := builder.next_request()) is not None:
            rows, tasks = self.prompt_pool.draw(request.counts)
            seed = np.random.SeedSequence([self.cfg.seed, self.controller.step, request.round])
            order = np.random.default_rng(seed).permutation(rows.shape[0])  # report order decides DAPO's pick
            rows, tasks = rows[order], tasks[order]
            for start in range(0, rows.shape[0], self._batch_groups):
                part = slice(start, start + self._batch_groups)
                chunk_rows, chunk_tasks = rows[part], tasks[part]
                rewards = self._generate_chunk(data, chunk_rows, chunk_tasks)
                first = len(data.group_task)
                data.group_chunk += [len(data.outputs) - 1] * chunk_rows.shape[0]
                data.group_pos += list(range(chunk_rows.shape[0]))
                data.group_task += chunk_tasks.tolist()
                data.rewards.append(rewards)
                builder.report_arrays(chunk_tasks, list(range(first, len(data.group_task))), rewards=rewards)
        batch = builder.finish()
        self.last_batch = batch
        output = self._assemble(data, batch)
        self._record_step(data, batch)
        return output

    def _generate_chunk(
        self, data: _StepData, rows: NDArray[np.int64], tasks: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        """Generate and score N rollouts of each row with GRPOTrainer; this process takes its slice of rows."""
        group, procs = self._group_size, self.accelerator.num_processes
        columns = cast(Dataset, self.train_dataset)[rows.tolist()]
        prompts = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
        fillers = 0
        while (len(prompts) + fillers) * group % procs:
            fillers += 1  # whole groups so that every process gets the same number of rows; never reported
        prompts += [prompts[-1]] * fillers
        expanded = [dict(p) for p in prompts for _ in range(group)]
        local_rows = len(expanded) // procs
        index = self.accelerator.process_index
        output = super()._generate_and_score_completions(expanded[index * local_rows : (index + 1) * local_rows])
        data.outputs.append(output)
        data.local_rows.append(local_rows)
        data.fillers.append(fillers)
        assert self._last_rewards is not None
        return self._last_rewards[: rows.shape[0] * group].reshape(rows.shape[0], group)

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> torch.Tensor:
        """GRPOTrainer's gathered rewards, kept (combined as GRPOTrainer combines them) for the controller."""
        per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._training():
            weights = self.reward_weights.to(per_func.device).unsqueeze(0)
            total = (per_func * weights).nansum(dim=1)
            bad = torch.isnan(per_func).all(dim=1) | ~torch.isfinite(total)
            if bad.any():
                row = int(bad.nonzero()[0, 0])
                local = row - self.accelerator.process_index * len(inputs)
                task = inputs[local].get(self.cfg.task_column) if 0 <= local < len(inputs) else "?"
                raise ValueError(
                    f"reward functions {self.reward_func_names} gave no finite reward for rollout {row} (task "
                    f"{task!r}, rewards {per_func[row].tolist()}); MT-GRPO needs a finite reward for every rollout"
                )
            self._last_rewards = total.double().cpu().numpy()
        return per_func  # type: ignore[no-any-return]

    # -- the training batch ---------------------------------------------------------------------------------
    def _assemble(self, data: _StepData, batch: Batch) -> dict[str, Any]:
        """GRPOTrainer's batch from the selected groups, topped up to B groups with inert (masked) groups."""
        group, procs, index = self._group_size, self.accelerator.num_processes, self.accelerator.process_index
        chosen = [int(k) for k in batch.keys]
        taken = set(chosen)
        inert = [g for g in range(len(data.group_task)) if g not in taken][: self._batch_groups - len(chosen)]
        groups = chosen + inert
        if len(groups) != self._batch_groups:
            raise RuntimeError(f"only {len(groups)} groups generated for a batch of {self._batch_groups}")
        final = [(data.group_chunk[g], data.group_pos[g] * group + j) for g in groups for j in range(group)]
        row_task = torch.tensor([data.group_task[g] for g in groups for _ in range(group)])
        row_id = torch.tensor([g * group + j for g in groups for j in range(group)])
        per_proc = len(final) // procs
        mine = slice(index * per_proc, (index + 1) * per_proc)
        device = self.accelerator.device
        if not inert and len(data.outputs) == 1 and data.fillers[0] == 0 and groups == sorted(groups):
            output = dict(data.outputs[0])  # GRPOTrainer's own batch: every group kept, in order
        else:
            full = self._collect(data, final)
            rows_inert = torch.zeros(len(final), dtype=torch.bool, device=device)
            rows_inert[len(chosen) * group :] = True
            full["completion_mask"] = full["completion_mask"].masked_fill(rows_inert.unsqueeze(1), 0)
            full["advantages"] = full["advantages"].masked_fill(rows_inert, 0.0)
            loss_mask = full["completion_mask"] * full.get("tool_mask", 1)
            output = {key: t[mine] for key, t in full.items()}
            output["num_items_in_batch"] = loss_mask.sum()
        output["mtgrpo_task"] = row_task[mine].to(device)
        output["mtgrpo_row"] = row_id[mine].to(device)
        return output

    def _collect(self, data: _StepData, final: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """All rows of `final` ((chunk, global row) in batch order) on this process, in that order."""
        pad_id = int(self._tokenizer.pad_token_id)
        multiple = cast(int | None, self.pad_to_multiple_of)
        procs = self.accelerator.num_processes
        if procs == 1:
            return take_rows(data.outputs, final, pad_id, multiple)
        owner = [r // data.local_rows[c] for c, r in final]
        order = [i for q in range(procs) for i in range(len(final)) if owner[i] == q]
        me = self.accelerator.process_index
        local = [(final[i][0], final[i][1] % data.local_rows[final[i][0]]) for i in order if owner[i] == me]
        counts = [owner.count(q) for q in range(procs)]
        gathered = gather_rows(take_rows(data.outputs, local, pad_id, multiple), counts, self.accelerator, pad_id)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return {key: t[inverse.to(t.device)] for key, t in gathered.items()}

    # -- per-step signals and logging -----------------------------------------------------------------------
    def _record_step(self, data: _StepData, batch: Batch) -> None:
        report = batch.report
        num_tasks, group = self.controller.num_tasks, self._group_size
        rewards = np.concatenate(data.rewards)
        row_tasks = np.repeat(np.asarray(data.group_task), group)
        accuracy = task_accuracy(rewards.ravel(), row_tasks, num_tasks, self.cfg.correct_reward)
        with np.errstate(invalid="ignore", divide="ignore"):
            filtered = np.where(report.generated > 0, 1.0 - report.informative / report.generated, np.nan)
        metrics = self._metrics["train"]
        for k, name in enumerate(self.task_names):
            metrics[f"mtgrpo/weight/{name}"].append(float(report.weights[k]))
            metrics[f"mtgrpo/reward/{name}"].append(float(report.mean_reward[k]))
            metrics[f"mtgrpo/accuracy/{name}"].append(float(accuracy[k]))
            metrics[f"mtgrpo/filtered_ratio/{name}"].append(float(filtered[k]))
            metrics[f"mtgrpo/batch_share/{name}"].append(float(report.realized_shares[k]))
        shortfall = self._batch_groups - len(batch)
        metrics["mtgrpo/rounds"].append(float(report.rounds))
        metrics["mtgrpo/generated_groups"].append(float(report.generated.sum()))
        metrics["mtgrpo/shortfall_groups"].append(float(shortfall))
        metrics["mtgrpo/filler_groups"].append(float(sum(data.fillers)))
        if report.budget_exhausted and self.accelerator.is_main_process:
            logger.warning(
                "MT-GRPO step %d: round budget spent after %d rounds; training on %d informative groups of %d "
                "(short tasks: %s); the rest of the batch is masked out of the loss",
                self.controller.step,
                report.rounds,
                len(batch),
                self._batch_groups,
                [self.task_names[k] for k in report.short_tasks],
            )
        mean_abs = None
        if self.controller.needs_advantage:
            mean_abs = self._mean_abs_advantage(batch)
        self._pending = _PendingSignals(reward=report.mean_reward.copy(), mean_abs_advantage=mean_abs)

    def _mean_abs_advantage(self, batch: Batch) -> NDArray[np.float64]:
        """SEC's r_k: mean |A| over task k's groups in the batch, with GRPOTrainer's advantage formula; NaN for a
        task without a group in the batch (TaskSignals records it as 0, as SEC's reference code does)."""
        assert batch.rewards is not None
        r = batch.rewards
        centred = r - r.mean(axis=1, keepdims=True)
        if self.scale_rewards == "group":
            centred = centred / (r.std(axis=1, ddof=1, keepdims=True) + 1e-4)
        num_tasks = self.controller.num_tasks
        sums = np.bincount(batch.tasks, weights=np.abs(centred).mean(axis=1), minlength=num_tasks)
        counts = np.bincount(batch.tasks, minlength=num_tasks)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    # -- the improvement signal I_k (Eq. 8) -----------------------------------------------------------------
    def _get_per_token_logps_and_entropies(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        result = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        if self._capturing:
            self._captured_logps = result[0].detach()
        return result

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        capture = self._wants_surrogate and self._training() and "mtgrpo_task" in inputs
        self._capturing = capture
        try:
            loss = super()._compute_loss(model, inputs)  # type: ignore[no-untyped-call]
        finally:
            self._capturing = False
        if capture and self._captured_logps is not None:
            self._micro_batches.append((inputs, self._captured_logps))
            self._captured_logps = None
        return loss  # type: ignore[no-any-return]

    def _measure_surrogate(self) -> None:
        """Per-sample surrogate before (the training forward) and after this optimizer step, all processes."""
        cfg = self.cfg
        model = cast(Any, self.model)
        rows = []
        for inputs, before_logps in self._micro_batches:
            prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
            input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
            attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            with torch.no_grad(), disable_gradient_checkpointing(model, cast(Any, cfg.gradient_checkpointing_kwargs)):
                after_logps, _, _ = self._get_per_token_logps_and_entropies(
                    model, input_ids, attention, completion_ids.size(1), batch_size=cfg.per_device_train_batch_size
                )
            mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)
            old = inputs.get("old_per_token_logps")
            old = before_logps if old is None else old
            surrogate = [
                sequence_surrogate(
                    logps,
                    old,
                    inputs["advantages"],
                    mask,
                    self.epsilon_low,
                    self.epsilon_high,
                    self.importance_sampling_level,
                )
                for logps in (before_logps, after_logps)
            ]
            valid = (mask.sum(-1) > 0).float()
            rows.append(torch.stack([*surrogate, inputs["mtgrpo_task"].float(), valid], dim=1).float())
        self._micro_batches.clear()
        if rows and self._pending is not None:
            self._pending.surrogate_rows.append(gather(torch.cat(rows)).double().cpu().numpy())

    def _after_optimizer_step(self) -> None:
        """After each optimizer step: measure I_k's surrogate; at the end of the generation batch, update z."""
        if self._wants_surrogate:
            self._measure_surrogate()
        generate_every = cast(int, self.cfg.steps_per_generation) * self.num_iterations
        if self._pending is None or self._step % generate_every != 0:
            return
        pending, self._pending = self._pending, None
        improvement = None
        if self._reward_change is not None:
            improvement = self._reward_change.update(pending.reward)
        elif self._wants_surrogate:
            rows = np.concatenate(pending.surrogate_rows) if pending.surrogate_rows else np.zeros((0, 4))
            rows = rows[rows[:, 3] > 0]
            # summed over each task's samples as in the reference code; NaN for a task with no trained sample
            improvement = task_improvement(
                rows[:, 0], rows[:, 1], rows[:, 2].astype(np.int64), self.controller.num_tasks
            )
        if improvement is not None:
            for k, name in enumerate(self.task_names):
                self._metrics["train"][f"mtgrpo/improvement/{name}"].append(float(improvement[k]))
        signals = TaskSignals.build(
            reward=pending.reward, improvement=improvement, mean_abs_advantage=pending.mean_abs_advantage
        )
        self.controller.end_step(signals)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def mtgrpo_state_dict(self) -> dict[str, Any]:
        """The MT-GRPO state saved with each checkpoint: controller, prompt pools, improvement fallback."""
        state = {"controller": self.controller.state_dict(), "prompt_pool": self.prompt_pool.state_dict()}
        if self._reward_change is not None:
            state["reward_change"] = self._reward_change.state_dict()
        return state

    def load_mtgrpo_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `mtgrpo_state_dict` returned."""
        self.controller.load_state_dict(state["controller"])
        self.prompt_pool.load_state_dict(state["prompt_pool"])
        if self._reward_change is not None:
            self._reward_change.load_state_dict(state["reward_change"])

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)  # type: ignore[no-untyped-call]
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            save_state(os.path.join(folder, STATE_FILE), self.mtgrpo_state_dict())

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[no-untyped-call]
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"checkpoint {checkpoint!r} has no {STATE_FILE}: it was not written by MTGRPOTrainer"
            )
        self.load_mtgrpo_state_dict(load_state(path))
