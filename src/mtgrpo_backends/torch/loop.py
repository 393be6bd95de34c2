"""The reference multi-task GRPO training loop, CleanRL style: one file, one step reads top to bottom.

    rollout + score   sample the prompts the controller asks for, N completions each, reward them
    filter / sample   the controller's batch conversation (RP-SAMPLER, DAPO dynamic sampling, or plain GRPO)
    advantage         group advantages on the selected groups
    update            several mini-batch steps of the clipped surrogate (clip-higher)
    improvement       per-task surrogate after minus before the update (Eq. 8), only if the rule needs it
    weights           controller.end_step(J, I, mean |A|) -> next task weights
    log               per-task rewards, zero-gradient rates, batch shares, timings; held-out accuracy every eval

Works with every controller method string and any causal LM returning logits for (input_ids, attention_mask).
All randomness comes from explicit generators held in `TrainState`, which a checkpoint saves whole: a resumed
run continues exactly as an uninterrupted one would (bit for bit on CPU).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtgrpo_backends.torch import ops
from mtgrpo_backends.torch.model import check_vocab, completion_logprobs, sample
from mtgrpo_backends.torch.tasks import CORRECT, WRONG, CharTokenizer, Problem, RewardError, Suite, left_pad, score
from mtgrpo_core import Controller, TaskSignals
from mtgrpo_core import _validate as v

CHECKPOINT_FORMAT = "mtgrpo-torch-train/1"


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class TrainConfig:
    """Hyperparameters of one run; each field's metadata carries its help text (the CLI shows it)."""

    suite: str = _help("task suite: tiny3 or tiny9", "tiny3")
    method: str = _help("controller method, e.g. grpo, dapo, sec-dapo, mt-grpo:0.2", "mt-grpo:0.2")
    steps: int = _help("training steps (batches)", 200)
    seed: int = _help("seed of the controller, prompt sampling and generation", 0)
    batch_size: int = _help("B: prompts (groups) per training batch", 32)
    group_size: int = _help("N: completions per prompt", 8)
    lr: float = _help("Adam learning rate of the policy", 1e-4)
    minibatches: int = _help("optimizer steps per batch (the batch is split into this many mini-batches)", 4)
    epochs: int = _help("passes over the batch per step", 1)
    clip_low: float = _help("ratio clip below 1 (paper 0.2)", 0.2)
    clip_high: float = _help("ratio clip above 1 (clip-higher, paper 0.28)", 0.28)
    aggregation: str = _help("loss aggregation: token-mean or seq-mean", "token-mean")
    advantage: str = _help("group advantage estimator: grpo, dr_grpo or rloo", "grpo")
    improvement_reduce: str = _help(
        "I_k over task k's sequences: mean (independent of the batch share) or sum (the reference code's)", "mean"
    )
    kl_coef: float = _help("coefficient of KL(pi || initial policy), k3 estimator; paper 0", 0.0)
    max_grad_norm: float = _help("gradient-norm clip of the policy update", 1.0)
    temperature: float = _help("sampling temperature of the rollouts", 1.0)
    eval_every: int = _help("held-out evaluation every this many steps (and at start and end)", 25)
    eval_temperature: float = _help("temperature of the held-out evaluation (0 = greedy)", 1.0)
    eval_samples: int = _help("completions per held-out prompt when eval_temperature > 0", 4)
    reward_errors_as_zero: bool = _help("count a reward function that raises as reward 0 (counted in the log)", False)
    device: str = _help("torch device, e.g. cpu or cuda", "cpu")
    sampler: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "overrides of the sampler config (oversample, max_rounds, ...)"}
    )

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "group_size", "minibatches", "epochs", "eval_every", "eval_samples"):
            v.positive_int(name, getattr(self, name), minimum=0 if name == "steps" else 1)
        v.positive_int("seed", self.seed, minimum=0)
        v.real_in_range("lr", self.lr, 0.0, low_open=True)
        v.real_in_range("temperature", self.temperature, 0.0, low_open=True)
        v.real_in_range("eval_temperature", self.eval_temperature, 0.0)
        v.real_in_range("max_grad_norm", self.max_grad_norm, 0.0, low_open=True)
        v.choice("aggregation", self.aggregation, ops.AGGREGATIONS)
        v.choice("advantage", self.advantage, ops.ADVANTAGE_METHODS)
        v.choice("improvement_reduce", self.improvement_reduce, ("mean", "sum"))
        if self.minibatches > self.batch_size * self.group_size:
            raise ValueError(f"minibatches must be <= batch_size * group_size, got {self.minibatches}")


@dataclass
class TrainState:
    """Everything a run changes: a checkpoint holds all of it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    controller: Controller
    prompt_rng: np.random.Generator
    generator: torch.Generator
    ref_model: torch.nn.Module | None = None
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)


def make_state(config: TrainConfig, model: torch.nn.Module, suite: Suite, tokenizer: CharTokenizer) -> TrainState:
    """Fresh state: controller for the method, Adam on the model, generators seeded by config.seed."""
    model.to(config.device).eval()  # dropout off during RL: rollouts, old and new log-probs use one policy
    check_vocab(model, tokenizer.vocab_size)
    controller = Controller.from_method(
        config.method, suite.num_tasks, config.batch_size, config.group_size, seed=config.seed, **config.sampler
    )
    return TrainState(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=config.lr),
        controller=controller,
        prompt_rng=np.random.default_rng([config.seed, 2]),
        generator=torch.Generator(device=config.device).manual_seed(config.seed),
        ref_model=copy.deepcopy(model).eval().requires_grad_(False) if config.kl_coef > 0 else None,
    )


@dataclass
class _Group:
    task: int
    prompt: list[int]
    completions: torch.Tensor  # (N, C) token ids
    masks: torch.Tensor  # (N, C)
    rewards: np.ndarray  # (N,)


class _Timer:
    """Wall-clock seconds per phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._t
        self._t = now


def generate_groups(
    model: torch.nn.Module,
    suite: Suite,
    tokenizer: CharTokenizer,
    problems: list[tuple[int, Problem]],
    n: int,
    temperature: float,
    generator: torch.Generator | None,
    errors_as_zero: bool = False,
) -> tuple[list[_Group], int]:
    """N completions for each (task, problem), scored; returns the groups and the count of failed rewards."""
    if not problems:
        return [], 0
    device = next(model.parameters()).device
    prompts = [tokenizer.encode(p.prompt) for _, p in problems]
    ids, mask = left_pad([row for row in prompts for _ in range(n)], tokenizer.pad_id)
    max_new = max(suite.tasks[k].max_new_tokens for k, _ in problems)
    model.eval()
    comp, comp_mask = sample(
        model,
        torch.from_numpy(ids).to(device),
        torch.from_numpy(mask).to(device),
        max_new,
        tokenizer.eos_id,
        tokenizer.pad_id,
        temperature,
        generator,
    )
    rows = comp.cpu().tolist()
    groups, failures = [], 0
    for g, (k, problem) in enumerate(problems):
        task = suite.tasks[k]
        rewards = np.empty(n)
        for i in range(n):
            text = tokenizer.decode(rows[g * n + i][: task.max_new_tokens])
            try:
                rewards[i] = score(task, problem, text)
            except RewardError as err:
                if not errors_as_zero:
                    raise RewardError(f"{err} (set reward_errors_as_zero to count such failures as 0)") from err
                rewards[i], failures = WRONG, failures + 1
        sl = slice(g * n, (g + 1) * n)
        groups.append(_Group(k, prompts[g], comp[sl], comp_mask[sl], rewards))
    return groups, failures


def _training_tensors(groups: list[_Group], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor, int]:
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


def train_step(state: TrainState, config: TrainConfig, suite: Suite, tokenizer: CharTokenizer) -> dict[str, Any]:
    """One step of Algorithm 1 with a GRPO update; returns the step's log row."""
    model, ctrl, k_tasks, n = state.model, state.controller, suite.num_tasks, config.group_size
    timer = _Timer()
    weights = ctrl.weights

    # 1. rollout + score inside the controller's batch conversation (filter / sample)
    builder = ctrl.begin_step()
    timer.lap("core")
    pool: dict[int, _Group] = {}
    failures = 0
    while (request := builder.next_request()) is not None:
        timer.lap("core")
        problems = [(k, p) for k in range(k_tasks) for p in suite.sample(k, int(request.counts[k]), state.prompt_rng)]
        # shuffled like a dataset: DAPO keeps the first B informative groups in report order
        problems = [problems[i] for i in state.prompt_rng.permutation(len(problems))]
        groups, failed = generate_groups(
            model, suite, tokenizer, problems, n, config.temperature, state.generator, config.reward_errors_as_zero
        )
        failures += failed
        keys = range(len(pool), len(pool) + len(groups))
        pool.update(zip(keys, groups, strict=True))
        timer.lap("generate")
        builder.report_arrays([g.task for g in groups], list(keys), rewards=np.stack([g.rewards for g in groups]))
    batch = builder.finish()
    report = batch.report

    # 2. advantages of the selected groups
    chosen = [pool[int(key)] for key in batch.keys]
    row_task = torch.tensor([g.task for g in chosen for _ in range(n)], dtype=torch.long, device=config.device)
    rewards = torch.tensor(np.stack([g.rewards for g in chosen]) if chosen else np.zeros((0, n)), device=config.device)
    adv = ops.group_advantages(rewards, config.advantage).reshape(-1).float() if chosen else rewards.reshape(-1)
    timer.lap("core")

    # 3. several mini-batch updates of the clipped surrogate
    stats: dict[str, float] = {"loss": float("nan"), "clip_fraction": float("nan"), "kl": float("nan")}
    improvement = None
    if chosen:
        ids, mask, start = _training_tensors(chosen, tokenizer.pad_id, config.device)
        cmask = mask[:, start:].float()
        with torch.no_grad():
            old_logp = completion_logprobs(model, ids, mask, start, config.temperature)
            ref_logp = None
            if state.ref_model is not None:
                ref_logp = completion_logprobs(state.ref_model, ids, mask, start, config.temperature)
        stats = _update(state, config, ids, mask, start, cmask, old_logp, adv, ref_logp)
        timer.lap("update")

        # 4. improvement I_k: per-task surrogate after minus before the update (Eq. 8)
        if ctrl.needs_improvement:
            with torch.no_grad():
                new_logp = completion_logprobs(model, ids, mask, start, config.temperature)
            clip = {"clip_low": config.clip_low, "clip_high": config.clip_high}
            after = ops.sequence_surrogate(new_logp, old_logp, adv, cmask, **clip)
            before = ops.sequence_surrogate(old_logp, old_logp, adv, cmask, **clip)
            means, counts = ops.task_means(after - before, row_task, k_tasks)
            measured = (means * counts if config.improvement_reduce == "sum" else means).cpu().numpy()
            # a task with rollouts this step but no group in the batch has no measured improvement: 0
            improvement = np.where(np.isnan(report.mean_reward), np.nan, np.nan_to_num(measured))
            timer.lap("update")

    # 5. next task weights from J (all rollouts, before filtering), I and mean |A|
    abs_adv, _ = ops.task_means(adv.abs(), row_task, k_tasks)
    mean_abs_adv = np.where(np.isnan(report.mean_reward), np.nan, np.nan_to_num(abs_adv.cpu().numpy()))
    if improvement is None and ctrl.needs_improvement:  # no group survived the filter: nothing was trained
        improvement = np.where(np.isnan(report.mean_reward), np.nan, 0.0)
    ctrl.end_step(
        TaskSignals.build(reward=report.mean_reward, improvement=improvement, mean_abs_advantage=mean_abs_adv)
    )
    state.step += 1
    timer.lap("core")

    # 6. log
    accuracy = np.full(k_tasks, np.nan)
    for k in range(k_tasks):
        task_rewards = [g.rewards for g in pool.values() if g.task == k]
        if task_rewards:
            accuracy[k] = float((np.concatenate(task_rewards) == CORRECT).mean())
    row = {
        "step": state.step,
        "weights": weights.tolist(),
        "target_counts": report.target_counts.tolist(),
        "realized_counts": report.realized_counts.tolist(),
        "rounds": report.rounds,
        "generated": report.generated.tolist(),
        "zero_gradient_rate": (1.0 - report.informative / np.maximum(report.generated, 1)).tolist(),
        "budget_exhausted": report.budget_exhausted,
        "train_reward": report.mean_reward.tolist(),
        "train_accuracy": accuracy.tolist(),
        "improvement": None if improvement is None else improvement.tolist(),
        "reward_failures": failures,
        **stats,
        "seconds": timer.seconds,
    }
    state.history.append(row)
    return row


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
) -> dict[str, float]:
    """config.epochs passes of config.minibatches clipped-surrogate steps over a shuffled batch."""
    rows = ids.shape[0]
    losses, clips, kls = [], [], []
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
            losses.append(loss)
            clips.append(float(out.clip_fraction))
            kls.append(float(out.kl))
    return {"loss": float(np.mean(losses)), "clip_fraction": float(np.mean(clips)), "kl": float(np.mean(kls))}


def evaluate(
    model: torch.nn.Module,
    suite: Suite,
    tokenizer: CharTokenizer,
    temperature: float = 1.0,
    samples: int = 4,
    seed: int = 0,
    errors_as_zero: bool = False,
) -> dict[str, Any]:
    """Held-out accuracy per task (reward == 1.0, mean over `samples` completions of every prompt of the suite's
    fixed eval sets), worst-task and average. Uses its own generator: training randomness is not touched."""
    v.positive_int("samples", samples)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    problems = [(k, p) for k in range(suite.num_tasks) for p in suite.eval_sets[k]]
    n = 1 if temperature == 0 else samples
    groups, _ = generate_groups(model, suite, tokenizer, problems, n, temperature, generator, errors_as_zero)
    acc = np.zeros(suite.num_tasks)
    for g in groups:
        acc[g.task] += float((g.rewards == CORRECT).mean())
    acc /= np.array([len(s) for s in suite.eval_sets])
    return {"accuracy": acc.tolist(), "worst": float(acc.min()), "average": float(acc.mean())}


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


def _tensors_in(obj: Any) -> Any:
    """numpy arrays -> tensors, recursively, so a checkpoint loads with torch.load(weights_only=True)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        return {k: _tensors_in(x) for k, x in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tensors_in(x) for x in obj)
    return obj


def _arrays_in(obj: Any) -> Any:
    """Inverse of `_tensors_in`."""
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: _arrays_in(x) for k, x in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_arrays_in(x) for x in obj)
    return obj


def save_checkpoint(path: Path | str, state: TrainState, config: TrainConfig, suite: Suite) -> None:
    """Model, optimizer, controller, RNG states, step and logs, written atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "suite": suite.name,
        "tasks": suite.task_names,
        "method": config.method,
        "config": asdict(config),
        "step": state.step,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "controller": _tensors_in(state.controller.state_dict()),
        "prompt_rng": state.prompt_rng.bit_generator.state,
        "generator": state.generator.get_state(),
        "ref_model": None if state.ref_model is None else state.ref_model.state_dict(),
        "history": state.history,
        "evals": state.evals,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path | str, state: TrainState, config: TrainConfig, suite: Suite) -> None:
    """Restore `state` from a checkpoint of the same suite and method; anything else is refused."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} is not a {CHECKPOINT_FORMAT} checkpoint")
    for key, want in (("suite", suite.name), ("tasks", suite.task_names), ("method", config.method)):
        if payload[key] != want:
            raise ValueError(
                f"checkpoint {str(path)!r} was written for {key} {payload[key]!r}, but this run uses {want!r}"
            )
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.controller.load_state_dict(_arrays_in(payload["controller"]))
    state.prompt_rng.bit_generator.state = payload["prompt_rng"]
    state.generator.set_state(payload["generator"])
    if state.ref_model is not None and payload["ref_model"] is not None:
        state.ref_model.load_state_dict(payload["ref_model"])
    state.step = int(payload["step"])
    state.history = list(payload["history"])
    state.evals = list(payload["evals"])
