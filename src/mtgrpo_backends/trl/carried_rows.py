"""Carry-over in TRL: each reported group's payload, and the rows of the groups the controller keeps.

The trainer reports every group with a `GroupRows` payload (where its rows are in the step's chunk outputs) and
keeps no store of its own: the controller holds the payloads of kept groups between steps and hands them back in
`batch.payloads`. Once a step is selected, each group the controller kept that step gets its own rows, with the
generating policy's per-token log-probabilities as `old_per_token_logps` (TRL's own where it computed them,
otherwise one forward pass without gradients over the rows the step trains or keeps: the policy has not changed
since generation). A carried group is then trained with TRL's clipped ratio against the policy that generated it; a
fresh group's ratio starts at 1, as in TRL. The rows are gathered from all processes, so every process's payload
holds the group whole and any process can take it into its slice of the next batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mtgrpo_backends.trl.batch_assembly import take_rows

Rows = dict[str, torch.Tensor]


@dataclass(eq=False)  # compared and hashed by identity: two groups are never the same group
class GroupRows:
    """The payload of one reported group: its task and key (the sampler's), where its rows are in the step that
    generated it (chunk output, position), and its own rows (N, group by group) once the controller keeps it."""

    task: int
    chunk: int = -1
    pos: int = -1
    key: int = -1
    rows: Rows | None = None


def assemble(
    groups: Sequence[GroupRows],
    kept: Sequence[GroupRows],
    fresh: Rows,
    fresh_groups: Sequence[GroupRows],
    logps: Callable[[Rows], torch.Tensor],
    group_size: int,
    pad_token_id: int,
    pad_to_multiple_of: int | None,
) -> Rows:
    """The rows of `groups` in that order, re-padded to common widths: this step's from `fresh` (the gathered rows
    of `fresh_groups`, group by group), carried ones from their own rows. Each group of `kept` (kept this step, one
    of `fresh_groups`) gets its own rows, with `old_per_token_logps`.

    logps: the current policy's per-token log-probabilities of rows (used when TRL computed none).
    """
    if fresh_groups and "old_per_token_logps" not in fresh:
        fresh = {**fresh, "old_per_token_logps": logps(fresh)}
    at = {g: i for i, g in enumerate(fresh_groups)}
    for group in kept:
        start = at[group] * group_size
        group.rows = {name: t[start : start + group_size].clone() for name, t in fresh.items()}
    sources: list[Rows] = [fresh] if fresh_groups else []
    where = {g: (0, i) for i, g in enumerate(fresh_groups)}
    for group in groups:
        if group not in where and group.rows is not None:
            where[group] = (len(sources), 0)
            sources.append(group.rows)
    missing = [g.key for g in groups if g not in where]
    if missing:
        raise RuntimeError(
            f"groups {missing[:5]} are carried by the sampler but their payloads hold no rows or generating "
            "log-probabilities; resume from a checkpoint of this run, which stores them"
        )
    picks = [(where[g][0], where[g][1] * group_size + j) for g in groups for j in range(group_size)]
    return take_rows(sources, picks, pad_token_id, pad_to_multiple_of)
