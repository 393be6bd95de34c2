"""Rollouts of the reference loop: N sampled completions per prompt, scored; and the held-out evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mtgrpo_backends.torch.model import completion_logprobs, sample
from mtgrpo_backends.torch.tasks import CharTokenizer, Problem, RewardError, Suite, left_pad, score
from mtgrpo_core import checks as v
from mtgrpo_core.protocols import CORRECT, UNFORMATTED


@dataclass
class GeneratedGroup:
    """One prompt group: its task, prompt ids, N completions with masks, and their rewards."""

    task: int
    prompt: list[int]
    completions: torch.Tensor  # (N, C) token ids
    masks: torch.Tensor  # (N, C)
    rewards: np.ndarray  # (N,)
    old_logp: torch.Tensor | None = None  # (N, C): the generating policy's log-probs, kept for carry-over


def training_tensors(groups: list[GeneratedGroup], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor, int]:
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


def store_logprobs(
    model: torch.nn.Module, groups: list[GeneratedGroup], pad_id: int, temperature: float, device: str
) -> None:
    """Give each group `model`'s log-probs of its completions (one forward pass over them): the generating policy's,
    against which the group is trained at a later step (carried over, or generated ahead)."""
    if not groups:
        return
    ids, mask, start = training_tensors(groups, pad_id, device)
    with torch.no_grad():
        logp = completion_logprobs(model, ids, mask, start, temperature).cpu()
    n = groups[0].completions.shape[0]
    for j, g in enumerate(groups):
        g.old_logp = logp[j * n : (j + 1) * n, : g.completions.shape[1]].clone()


def generate_groups(
    model: torch.nn.Module,
    suite: Suite,
    tokenizer: CharTokenizer,
    problems: list[tuple[int, Problem]],
    n: int,
    temperature: float,
    generator: torch.Generator | None,
    errors_as_zero: bool = False,
) -> tuple[list[GeneratedGroup], int]:
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
                rewards[i], failures = UNFORMATTED, failures + 1
        sl = slice(g * n, (g + 1) * n)
        groups.append(GeneratedGroup(k, prompts[g], comp[sl], comp_mask[sl], rewards))
    return groups, failures


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
