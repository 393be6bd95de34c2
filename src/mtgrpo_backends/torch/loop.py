"""The reference multi-task GRPO training loop, CleanRL style: one step reads top to bottom.

    rollout + score   sample the prompts the controller asks for, N completions each, reward them
    filter / sample   the controller's batch conversation (RP-SAMPLER, DAPO dynamic sampling, or plain GRPO)
    advantage         group advantages on the selected groups
    update            several mini-batch steps of the clipped surrogate (clip-higher)
    surrogate         per-sequence surrogate before and after the update (for I_k, Eq. 8), if the rule needs it
    weights           the step's facts -> controller.end_step (the core's signal path: J, accuracy, I, mean |A|)
    log               per-task rewards, zero-gradient rates, batch shares, timings; held-out accuracy every eval

Works with every controller method string and any causal LM returning logits for (input_ids, attention_mask).
All randomness comes from explicit generators held in `TrainState`, which a checkpoint saves whole: a resumed
run continues exactly as an uninterrupted one would (bit for bit on CPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtgrpo_backends.torch import ops
from mtgrpo_backends.torch.checkpoint import load_checkpoint, save_checkpoint
from mtgrpo_backends.torch.config import TrainConfig
from mtgrpo_backends.torch.model import completion_logprobs
from mtgrpo_backends.torch.rollout import GeneratedGroup, evaluate, generate_groups
from mtgrpo_backends.torch.state import TrainState, make_state
from mtgrpo_backends.torch.tasks import CharTokenizer, Problem, Suite, left_pad
from mtgrpo_core import StepFacts, with_stand_ins


class _Timer:
    """Wall-clock seconds per phase (a step whose batch is all carried over generates nothing: 0 s)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"generate": 0.0, "update": 0.0, "core": 0.0}
        self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._t
        self._t = now


def _training_tensors(groups: list[GeneratedGroup], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows of all groups' completions: ids and mask (R, P + C) and the completion start P."""
    n = groups[0].completions.shape[0]
    p_ids, p_mask = left_pad([g.prompt for g in groups for _ in range(n)], pad_id)
    width = max(g.completions.shape[1] for g in groups)
    pad = torch.nn.functional.pad
    c_ids = torch.cat([pad(g.completions, (0, width - g.completions.shape[1]), value=pad_id) for g in groups])
    c_mask = torch.cat([pad(g.masks, (0, width - g.masks.shape[1]), value=0) for g in groups])
    ids = torch.cat([torch.from_numpy(p_ids).to(device), c_ids.to(device)], dim=1)
    mask = torch.cat([torch.from_numpy(p_mask).to(device), c_mask.to(device)], dim=1)
    return ids, mask, p_ids.shape[1]


def step_facts(
    generated: list[GeneratedGroup],
    row_task: torch.Tensor,
    advantages: torch.Tensor,
    before: np.ndarray | None,
    after: np.ndarray | None,
    surrogate_task: np.ndarray | None = None,
    surrogate_minibatch: np.ndarray | None = None,
) -> StepFacts:
    """This loop's facts for the core's signal path: every generated group's rollouts; the trained rows' tasks,
    advantages and per-sequence surrogate before and after the update (None when I_k is not needed), or around
    each mini-batch's optimizer step (with each value's task and mini-batch, for per-mini-batch methods)."""
    return StepFacts(
        rollout_task=np.concatenate([np.full(g.rewards.shape[0], g.task) for g in generated] or [np.zeros(0, int)]),
        rollout_reward=np.concatenate([g.rewards for g in generated] or [np.zeros(0)]),
        sample_task=row_task.cpu().numpy(),
        sample_advantage=advantages.double().cpu().numpy(),
        surrogate_before=before,
        surrogate_after=after,
        surrogate_task=surrogate_task,
        surrogate_minibatch=surrogate_minibatch,
    )


def train_step(state: TrainState, config: TrainConfig, suite: Suite, tokenizer: CharTokenizer) -> dict[str, Any]:
    """One step of Algorithm 1 with a GRPO update; returns the step's log row."""
    model, ctrl, n = state.model, state.controller, config.group_size
    timer = _Timer()
    weights = ctrl.weights

    # 1. rollout + score inside the controller's batch conversation (filter / sample)
    builder = ctrl.begin_step()
    timer.lap("core")
    fresh: list[GeneratedGroup] = []
    failures = 0
    while (request := builder.next_request()) is not None:
        timer.lap("core")
        rows, problems = _draw(state, suite, request.counts, n)
        # shuffled like a dataset: DAPO keeps the first B informative groups in report order
        order = state.prompt_rng.permutation(len(problems))
        problems = [problems[i] for i in order]
        groups, failed = generate_groups(
            model, suite, tokenizer, problems, n, config.temperature, state.generator, config.reward_errors_as_zero
        )
        failures += failed
        if state.training_set is not None and rows is not None and groups:
            state.training_set.report(rows[order], np.stack([g.rewards for g in groups]))
        fresh += groups
        timer.lap("generate")
        scores = np.stack([g.rewards for g in groups]) if groups else np.zeros((0, n))
        builder.report_arrays([g.task for g in groups], rewards=scores, payloads=groups)  # kept ones: held by ctrl
    batch = builder.finish()
    report = batch.report

    # 2. advantages of the selected groups (some may be carried from an earlier step: see carry-over)
    chosen: list[GeneratedGroup] = list(batch.payloads or ())
    row_task = torch.tensor([g.task for g in chosen for _ in range(n)], dtype=torch.long, device=config.device)
    rewards = torch.tensor(np.stack([g.rewards for g in chosen]) if chosen else np.zeros((0, n)), device=config.device)
    adv = ops.group_advantages(rewards, config.advantage).reshape(-1).float() if chosen else rewards.reshape(-1)
    timer.lap("core")

    # 3. several mini-batch updates of the clipped surrogate
    stats: dict[str, float] = {"loss": float("nan"), "clip_fraction": float("nan"), "kl": float("nan")}
    before = after = surrogate_task = minibatch = None
    per_minibatch = "improvement" in ctrl.needs and ctrl.minibatch_updates
    if chosen:
        ids, mask, start = _training_tensors(chosen, tokenizer.pad_id, config.device)
        cmask = mask[:, start:].float()
        with torch.no_grad():
            pre_logp = completion_logprobs(model, ids, mask, start, config.temperature)
            old_logp = _generating_logprobs(pre_logp, chosen, n)
            ref_logp = None
            if state.ref_model is not None:
                ref_logp = completion_logprobs(state.ref_model, ids, mask, start, config.temperature)
        _store_generating_logprobs(state, config, tokenizer)
        stats, measured = _update(state, config, ids, mask, start, cmask, old_logp, adv, ref_logp, per_minibatch)
        timer.lap("update")

        # 4. per-sample surrogate before and after the update, for I_k (Eq. 8), only if the rule needs it
        if measured is not None:  # around each mini-batch's optimizer step (the reference presets)
            before, after, rows, minibatch = measured
            surrogate_task = row_task.cpu().numpy()[rows]
        elif "improvement" in ctrl.needs:
            with torch.no_grad():
                new_logp = completion_logprobs(model, ids, mask, start, config.temperature)
            before, after = (
                ops.sequence_surrogate(logp, old_logp, adv, cmask, clip_low=config.clip_low, clip_high=config.clip_high)
                .double()
                .cpu()
                .numpy()
                for logp in (pre_logp, new_logp)
            )
            timer.lap("update")
    else:
        _store_generating_logprobs(state, config, tokenizer)
        if "improvement" in ctrl.needs:  # no group survived the filter: nothing was trained
            before = after = np.zeros(0)

    # 5. next task weights: the core's signal path turns the step's facts into J, accuracy, I and mean |A|
    facts = step_facts(fresh, row_task, adv, before, after, surrogate_task, minibatch)
    selection: dict[str, Any] | None = None
    if state.training_set is not None and state.training_set.selection is not None:
        stand_task, stand_reward, selection = state.training_set.end_step()
        facts = with_stand_ins(facts, stand_task, stand_reward)  # skipped prompts count in J_k and accuracy
    ctrl.end_step(facts)
    signals = ctrl.last_signals
    assert signals is not None
    state.step += 1
    timer.lap("core")

    # 6. log
    row = {
        "step": state.step,
        "weights": weights.tolist(),
        "sampling_weights": report.weights.tolist(),  # the rule's, with barren tasks at 0 (no-signal guard)
        "target_counts": report.target_counts.tolist(),
        "realized_counts": report.realized_counts.tolist(),
        "rounds": report.rounds,
        "generated": report.generated.tolist(),
        "zero_gradient_rate": (1.0 - report.informative / np.maximum(report.generated, 1)).tolist(),
        "budget_exhausted": report.budget_exhausted,
        "carried_counts": None if report.carried_counts is None else report.carried_counts.tolist(),
        "barren_tasks": list(report.barren_tasks),
        "train_reward": report.mean_reward.tolist(),
        "train_accuracy": None if signals.accuracy is None else signals.accuracy.tolist(),
        "improvement": None if signals.improvement is None else signals.improvement.tolist(),
        "reward_failures": failures,
        "selection": selection,  # per task: handed_out, retried, retried_informative, skipped (None: no skipping)
        **stats,
        "seconds": timer.seconds,
    }
    state.history.append(row)
    return row


def _draw(
    state: TrainState, suite: Suite, counts: np.ndarray, n: int
) -> tuple[np.ndarray | None, list[tuple[int, Problem]]]:
    """Rows (None without a training set) and (task, problem) pairs of a request: fresh prompts at every draw, or
    the finite training set's (skipping by history with selection)."""
    if state.training_set is not None:
        return state.training_set.draw(counts, n)
    return None, [(k, p) for k in range(suite.num_tasks) for p in suite.sample(k, int(counts[k]), state.prompt_rng)]


def _generating_logprobs(pre_logp: torch.Tensor, chosen: list[GeneratedGroup], n: int) -> torch.Tensor:
    """Per-token log-probs of the policy that generated each row: the current one (pre_logp) for this step's
    groups, the stored ones for groups carried from an earlier step (their ratio is then off 1 and clipped)."""
    if all(g.old_logp is None for g in chosen):
        return pre_logp
    old = pre_logp.clone()
    for j, g in enumerate(chosen):
        if g.old_logp is not None:
            old[j * n : (j + 1) * n, : g.old_logp.shape[1]] = g.old_logp.to(old.device)
    return old


def _store_generating_logprobs(state: TrainState, config: TrainConfig, tokenizer: CharTokenizer) -> None:
    """Give each group the controller kept this step its generating policy's log-probs, computed now, before the
    update (one forward pass over them), in the group itself (the controller holds it as the group's payload)."""
    groups = [g for g in state.controller.kept_payloads().values() if g.old_logp is None]
    if not groups:
        return
    ids, mask, start = _training_tensors(groups, tokenizer.pad_id, config.device)
    with torch.no_grad():
        logp = completion_logprobs(state.model, ids, mask, start, config.temperature).cpu()
    n = config.group_size
    for j, g in enumerate(groups):
        g.old_logp = logp[j * n : (j + 1) * n, : g.completions.shape[1]].clone()


def _update(
    state: TrainState,
    config: TrainConfig,
    ids: torch.Tensor,
    mask: torch.Tensor,
    start: int,
    cmask: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    ref_logp: torch.Tensor | None,
    per_minibatch: bool = False,
) -> tuple[dict[str, float], tuple[np.ndarray, ...] | None]:
    """config.epochs passes of config.minibatches clipped-surrogate steps over a shuffled batch. per_minibatch:
    also measure each sample's surrogate before and right after its mini-batch's step -> (before, after, row,
    mini-batch index) arrays, as the reference code does for its per-mini-batch weight updates."""
    rows = ids.shape[0]
    losses, clips, kls = [], [], []
    measured: list[tuple[torch.Tensor, ...]] = []
    for _ in range(config.epochs):
        order = torch.randperm(rows, generator=state.generator, device=state.generator.device).to(ids.device)
        for i, idx in enumerate(order.chunk(config.minibatches)):
            logp = completion_logprobs(state.model, ids[idx], mask[idx], start, config.temperature)
            out = ops.clipped_surrogate_loss(
                logp,
                old_logp[idx],
                adv[idx],
                cmask[idx],
                clip_low=config.clip_low,
                clip_high=config.clip_high,
                aggregation=config.aggregation,
                ref_logp=None if ref_logp is None else ref_logp[idx],
                kl_coef=config.kl_coef,
            )
            loss = float(out.loss.detach())
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"policy loss is {loss} at step {state.step + 1}, mini-batch {i} (method {config.method!r}, "
                    f"lr {config.lr}): the model produced non-finite log-probabilities; lower lr or check the model"
                )
            state.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(out.loss)
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), config.max_grad_norm)
            state.optimizer.step()
            if per_minibatch:
                with torch.no_grad():
                    new = completion_logprobs(state.model, ids[idx], mask[idx], start, config.temperature)
                    low, high = config.clip_low, config.clip_high
                    pair = [
                        ops.sequence_surrogate(lp, old_logp[idx], adv[idx], cmask[idx], clip_low=low, clip_high=high)
                        for lp in (logp.detach(), new)
                    ]
                measured.append((*pair, idx, torch.full_like(idx, len(measured))))
            losses.append(loss)
            clips.append(float(out.clip_fraction))
            kls.append(float(out.kl))
    stats = {"loss": float(np.mean(losses)), "clip_fraction": float(np.mean(clips)), "kl": float(np.mean(kls))}
    if not per_minibatch:
        return stats, None
    columns = [torch.cat([m[i] for m in measured]).cpu().numpy() for i in range(4)]
    return stats, (columns[0].astype(np.float64), columns[1].astype(np.float64), columns[2], columns[3])


def train(
    config: TrainConfig,
    model: torch.nn.Module,
    suite: Suite,
    tokenizer: CharTokenizer,
    *,
    checkpoint: Path | str | None = None,
    resume: Path | str | None = None,
    on_step: Callable[[TrainState, dict[str, Any]], None] | None = None,
) -> TrainState:
    """Run config.steps steps (a resumed run continues up to that total); evaluate every config.eval_every."""
    state = make_state(config, model, suite, tokenizer)
    if resume is not None:
        load_checkpoint(resume, state, config, suite)

    def held_out() -> dict[str, Any]:
        ev = evaluate(
            state.model,
            suite,
            tokenizer,
            config.eval_temperature,
            config.eval_samples,
            config.seed,
            config.reward_errors_as_zero,
        )
        return {"step": state.step, **ev}

    if not state.evals:
        state.evals.append(held_out())
    while state.step < config.steps:
        row = train_step(state, config, suite, tokenizer)
        if state.step % config.eval_every == 0 or state.step == config.steps:
            state.evals.append(held_out())
            if checkpoint is not None:
                save_checkpoint(checkpoint, state, config, suite)
        if on_step is not None:
            on_step(state, row)
    return state
