"""`MTGRPOTrainer`: GRPOTrainer with MT-GRPO task weighting and ratio-preserving dynamic sampling.

One generation batch is one controller step (Algorithm 1). Inside `_generate_and_score_completions` the rows the
dataloader prefetched are set aside; the controller's requests are drawn from per-task prompt pools with the
current weights (zero lag), generated and scored by GRPOTrainer itself in chunks of at most one generation batch,
reported to RP-SAMPLER, and the selected groups become the training batch. After the optimizer step(s) on that
batch the controller takes J_k (all rollouts of the step, before filtering) and I_k (Eq. 8, measured) and makes the
next weights. Every decision uses only TRL's gathered rewards and seeded generators, so processes agree.
"""

from __future__ import annotations

import os
from dataclasses import replace
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

from mtgrpo_backends.torch.ops import sequence_surrogate
from mtgrpo_backends.trl import checkpoint_state
from mtgrpo_backends.trl.batch_assembly import collect_rows
from mtgrpo_backends.trl.carried_rows import GroupRows, Rows, assemble
from mtgrpo_backends.trl.checkpoint_state import STATE_FILE, PendingStep
from mtgrpo_backends.trl.config import MTGRPOConfig
from mtgrpo_backends.trl.eval_signals import EvalSignals, check_eval_datasets
from mtgrpo_backends.trl.prompt_source import build_pool
from mtgrpo_backends.trl.step_data import StepData
from mtgrpo_backends.trl.step_facts import step_facts, with_surrogate
from mtgrpo_backends.trl.step_log import drop_absent, log_batch, log_selection, log_signals
from mtgrpo_core import RewardChangeImprovement, check_needs, with_stand_ins
from mtgrpo_core.sampling.sampler import Batch

SUPPORTED_TRL = (Version("1.16.0"), Version("1.17.0"))
__all__ = ["STATE_FILE", "MTGRPOTrainer", "check_trl_version"]


def check_trl_version(version: str) -> None:
    """Refuse a TRL release outside the supported range (the trainer overrides TRL internals)."""
    low, high = SUPPORTED_TRL
    if not low <= Version(version) < high:
        raise ImportError(
            f"mtgrpo_backends.trl supports trl>={low},<{high} (it overrides GRPOTrainer internals); found trl "
            f"{version}. Install a supported release: pip install 'trl>={low},<{high}'"
        )


check_trl_version(trl.__version__)


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
        self.controller = cfg.settings.controller(num_tasks, self._batch_groups, self._group_size, cfg.seed)
        filtering = self.controller.sampler.config.filtering != "none"
        if filtering and (cfg.scale_rewards == "batch" or cfg.multi_objective_aggregation != "sum_then_normalize"):
            raise ValueError(
                f"method {cfg.method!r} filters groups, which changes batch-level reward statistics: use "
                f"scale_rewards 'group' or 'none' (got {cfg.scale_rewards!r}) and multi_objective_aggregation "
                f"'sum_then_normalize' (got {cfg.multi_objective_aggregation!r})"
            )
        self.prompt_pool = build_pool(cfg, values, self.task_names, self.controller.sampler.config.filtering)
        check_needs(
            self.controller.needs,
            ("improvement", "mean_abs_advantage"),
            type(self.controller.rule).__name__,
            f"trl (improvement={cfg.improvement!r})",
        )
        needs_improvement = "improvement" in self.controller.needs
        self._wants_surrogate = needs_improvement and cfg.improvement == "surrogate"
        self._reward_change = (
            RewardChangeImprovement(num_tasks) if needs_improvement and cfg.improvement == "reward-change" else None
        )
        if self.eval_dataset is not None:
            check_eval_datasets(self.eval_dataset, cfg.task_column, self.task_names)
        self._eval_signals = EvalSignals(self.task_names, cfg.correct_reward)
        self._pending: PendingStep | None = None
        self._last_rewards: NDArray[np.float64] | None = None
        self._capturing = False
        self._captured_logps: torch.Tensor | None = None
        self._micro_batches: list[tuple[dict[str, Any], torch.Tensor]] = []
        self._carries = self.controller.sampler.carry is not None  # kept groups' rows: in their payloads
        if self._carries and self.use_vllm:
            raise ValueError(
                f"carry_over={self.controller.sampler.config.carry_over} with use_vllm: carried rows would need "
                "vLLM's importance-sampling correction against their own generating policy, which is not supported; "
                "set sampler={'carry_over': 0}"
            )
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
        data = StepData()
        while (request := builder.next_request()) is not None:
            picked = self.prompt_pool.take(request.counts, self._group_size)  # the pool books stand-ins and counts
            rows, tasks = picked.rows, picked.tasks
            seed = np.random.SeedSequence([self.cfg.seed, self.controller.step, request.round])
            order = np.random.default_rng(seed).permutation(rows.shape[0])  # report order decides DAPO's pick
            rows, tasks = rows[order], tasks[order]
            for start in range(0, rows.shape[0], self._batch_groups):
                part = slice(start, start + self._batch_groups)
                chunk_rows, chunk_tasks = rows[part], tasks[part]
                rewards = self._generate_chunk(data, chunk_rows, chunk_tasks)
                if self.prompt_pool.selection is not None:
                    self.prompt_pool.report(chunk_rows, rewards)
                data.report(builder, chunk_tasks, rewards)  # each group with its payload (carried_rows.py)
        batch = builder.finish()
        self.last_batch = batch
        output = self._assemble(data, batch)
        self._record_step(data, batch, output)
        return output

    def _generate_chunk(self, data: StepData, rows: NDArray[np.int64], tasks: NDArray[np.int64]) -> NDArray[np.float64]:
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
        weights = self.reward_weights.to(per_func.device).unsqueeze(0)
        total = (per_func * weights).nansum(dim=1).masked_fill(torch.isnan(per_func).all(dim=1), torch.nan)
        if not self._training():  # evaluation: keep each rollout's task and reward for the per-task eval metrics
            ids = self._eval_signals.task_ids([row.get(self.cfg.task_column) for row in inputs])
            tasks = gather(torch.as_tensor(ids, device=per_func.device)).cpu().numpy()
            self._eval_signals.add(tasks, total.double().cpu().numpy())
        else:
            bad = ~torch.isfinite(total)
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
    def _assemble(self, data: StepData, batch: Batch) -> dict[str, Any]:
        """GRPOTrainer's batch from the selected groups, topped up to B groups with inert (masked) groups."""
        group, procs, index = self._group_size, self.accelerator.num_processes, self.accelerator.process_index
        groups, tasks, selected = data.batch_groups(batch, self._batch_groups)
        row_task = torch.tensor([t for t in tasks for _ in range(group)])
        row_id = torch.tensor([g.key * group + j for g in groups for j in range(group)])
        per_proc = len(groups) * group // procs
        mine = slice(index * per_proc, (index + 1) * per_proc)
        device = self.accelerator.device
        if not self._carries and selected == len(groups) and data.is_first_chunk_in_order(groups):
            output = dict(data.outputs[0])  # GRPOTrainer's own batch: every group kept, in order
        else:
            full = self._batch_rows(data, groups)
            rows_inert = torch.zeros(len(groups) * group, dtype=torch.bool, device=device)
            rows_inert[selected * group :] = True
            full["completion_mask"] = full["completion_mask"].masked_fill(rows_inert.unsqueeze(1), 0)
            full["advantages"] = full["advantages"].masked_fill(rows_inert, 0.0)
            loss_mask = full["completion_mask"] * full.get("tool_mask", 1)
            output = {key: t[mine] for key, t in full.items()}
            output["num_items_in_batch"] = loss_mask.sum()
        output["mtgrpo_task"] = row_task[mine].to(device)
        output["mtgrpo_row"] = row_id[mine].to(device)
        return output

    def _batch_rows(self, data: StepData, groups: list[GroupRows]) -> Rows:
        """Every row of `groups` on this process, in order; with carry-over, carried groups bring their own rows and
        groups kept this step get theirs, with generating log-probabilities, in their payloads (carried_rows.py)."""
        pad_id, multiple = int(self._tokenizer.pad_token_id), cast(int | None, self.pad_to_multiple_of)
        kept = [g for g in self.controller.kept_payloads().values() if g.rows is None] if self._carries else []
        fresh = [g for g in dict.fromkeys([*groups, *kept]) if g.rows is None]
        picks = data.picks(fresh, self._group_size)
        rows = collect_rows(data.outputs, data.local_rows, picks, pad_id, multiple, self.accelerator) if picks else {}
        if not self._carries:
            return rows
        return assemble(groups, kept, rows, fresh, self._policy_logps, self._group_size, pad_id, multiple)

    def _policy_logps(self, rows: Rows) -> torch.Tensor:
        """Per-token log-probabilities of rows' completions under the current policy, without gradients."""
        model, cfg = cast(Any, self.model), self.cfg
        input_ids = torch.cat([rows["prompt_ids"], rows["completion_ids"]], dim=1)
        attention = torch.cat([rows["prompt_mask"], rows["completion_mask"]], dim=1)
        with torch.no_grad(), disable_gradient_checkpointing(model, cast(Any, cfg.gradient_checkpointing_kwargs)):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                model, input_ids, attention, rows["completion_ids"].size(1), batch_size=cfg.per_device_train_batch_size
            )
        return cast(torch.Tensor, logps)

    # -- per-step signals and logging -----------------------------------------------------------------------
    def _record_step(self, data: StepData, batch: Batch, output: dict[str, Any]) -> None:
        """Log the sampler's view of the step and keep its facts (every rollout; every trained sample and its
        advantage, gathered from all processes) for the signal path at the end of the step."""
        log_batch(
            self._metrics["train"],
            self.task_names,
            batch.report,
            self._batch_groups - len(batch),
            self._group_size,
            self.accelerator.is_main_process,
        )
        self._metrics["train"]["mtgrpo/filler_groups"].append(float(sum(data.fillers)))
        columns = [output["mtgrpo_row"], output["advantages"].reshape(-1), output["mtgrpo_task"]]
        rows = gather(torch.stack([c.double() for c in columns], 1)).cpu().numpy()
        facts = step_facts(
            np.asarray(data.group_task, dtype=np.int64),
            np.concatenate(data.rewards) if data.rewards else np.zeros((0, self._group_size)),  # all carried
            rows[:, 2].astype(np.int64),
            rows[:, 0].astype(np.int64),
            rows[:, 1],
            np.asarray(batch.keys, dtype=np.int64),
        )
        drawn = self.prompt_pool.end_step()
        facts = with_stand_ins(facts, [drawn.stand_in_task], [drawn.stand_in_reward])
        if self.prompt_pool.selection is not None:
            fresh = len(data.group_task) * self._group_size
            rollouts = np.asarray(facts.rollout_task)
            log_selection(self._metrics["train"], self.task_names, drawn.skipped_tasks, rollouts, fresh)
        self._pending = PendingStep(facts)

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
        rows = []
        for inputs, before_logps in self._micro_batches:
            after_logps = self._policy_logps(inputs)
            mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)
            old = inputs.get("old_per_token_logps")
            old = before_logps if old is None else old
            surrogate = [
                sequence_surrogate(
                    logps,
                    old,
                    inputs["advantages"],
                    mask,
                    clip_low=self.epsilon_low,
                    clip_high=self.epsilon_high,
                    level=self.importance_sampling_level,
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
        facts = pending.facts
        if self._wants_surrogate:
            facts = with_surrogate(facts, pending.surrogate_rows)
        signals = self.controller.signals(facts)
        if self._reward_change is not None:  # the documented approximation of I_k, from the signal path's J_k
            signals = replace(signals, improvement=self._reward_change.update(signals.reward))
        self.controller.end_step(signals)
        assert self.controller.last_signals is not None  # with carried-only tasks' J_k filled in
        log_signals(self._metrics["train"], self.task_names, self.controller.last_signals, self._reward_change is None)

    # -- evaluation and logs --------------------------------------------------------------------------------
    def evaluation_loop(self, *args: Any, metric_key_prefix: str = "eval", **kwargs: Any) -> Any:
        """TRL's evaluation, then the per-task eval reward and accuracy of all its rollouts in its metrics, under
        its prefix (`eval_mtgrpo/...`; `eval_<set>_mtgrpo/...` for each of a dict of eval datasets; Trainer passes
        the prefix by name)."""
        self._eval_signals.reset()
        output = super().evaluation_loop(*args, **{**kwargs, "metric_key_prefix": metric_key_prefix})
        per_task = self._eval_signals.metrics(metric_key_prefix)
        return output._replace(metrics={**(output.metrics or {}), **per_task})

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        drop_absent(self._metrics["train" if self._training() else "eval"])  # no None for an absent value
        super().log(logs, start_time)

    # -- checkpoints (exact at any optimizer step: checkpoint_state.py) ------------------------------------
    def mtgrpo_state_dict(self) -> dict[str, Any]:
        """The MT-GRPO state saved with each checkpoint (JSON-native): tasks, controller, prompt pools,
        improvement fallback and, in the middle of a generation batch, the step's pending facts."""
        return checkpoint_state.state_dict(self)

    def load_mtgrpo_state_dict(self, state: dict[str, Any], kept_rows: dict[int, Rows] | None = None) -> None:
        """Restore `mtgrpo_state_dict`'s state, with its kept groups' rows by key; a refused state changes nothing."""
        checkpoint_state.load_state_dict(self, state, kept_rows=kept_rows)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        if resume_from_checkpoint:  # refuse a checkpoint of other tasks or settings before TRL loads anything
            checkpoint_state.check(self, resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)  # type: ignore[no-untyped-call]
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        checkpoint_state.save(self, folder)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[no-untyped-call]
        if checkpoint is not None:
            checkpoint_state.load(self, checkpoint)
