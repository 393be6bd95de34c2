"""What one controller step generated in the TRL backend, and which of its groups fill the training batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_backends.trl.carried_rows import GroupRows
from mtgrpo_core.sampling.sampler import Batch, BatchBuilder


@dataclass
class StepData:
    """Chunk outputs of one step and its generated groups (their payloads, in report order), tasks and rewards.
    The sampler numbers the groups (keys unique across steps, as carry-over needs)."""

    outputs: list[dict[str, Any]] = field(default_factory=list)
    local_rows: list[int] = field(default_factory=list)
    fillers: list[int] = field(default_factory=list)
    groups: list[GroupRows] = field(default_factory=list)
    group_task: list[int] = field(default_factory=list)
    rewards: list[NDArray[np.float64]] = field(default_factory=list)

    def report(self, builder: BatchBuilder, tasks: NDArray[np.int64], rewards: NDArray[np.float64]) -> None:
        """Book the groups of the last chunk output (tasks (n,), rewards (n, N)) and report them to `builder`, each
        with its payload; the sampler assigns their keys."""
        chunk = len(self.outputs) - 1
        groups = [GroupRows(int(t), chunk, pos) for pos, t in enumerate(tasks.tolist())]
        keys = builder.report_arrays(tasks, rewards=rewards, payloads=groups)
        for group, key in zip(groups, keys.tolist(), strict=True):
            group.key = int(key)
        self.groups += groups
        self.group_task += tasks.tolist()
        self.rewards.append(rewards)

    def batch_groups(self, batch: Batch, size: int) -> tuple[list[GroupRows], list[int], int]:
        """The payloads of the training batch (the selected groups, fresh and carried, then unselected ones of this
        step as inert top-up to `size` groups), their tasks, and how many are selected."""
        chosen: list[GroupRows] = list(batch.payloads or ())
        if len(chosen) != len(batch):
            raise RuntimeError(f"the batch hands back {len(chosen)} payloads for its {len(batch)} groups")
        taken = set(chosen)
        inert = [g for g in self.groups if g not in taken][: size - len(chosen)]
        if len(chosen) + len(inert) != size:
            raise RuntimeError(f"only {len(chosen) + len(inert)} groups generated for a batch of {size}")
        tasks = [*batch.tasks.tolist(), *(g.task for g in inert)]
        return chosen + inert, tasks, len(chosen)

    def is_first_chunk_in_order(self, groups: list[GroupRows]) -> bool:
        """True when `groups` are exactly the one chunk's groups, in order, without filler groups."""
        return groups == self.groups and len(self.outputs) == 1 and self.fillers[0] == 0

    def picks(self, groups: list[GroupRows], group_size: int) -> list[tuple[int, int]]:
        """(chunk, row) of every rollout of this step's `groups`, group by group."""
        return [(g.chunk, g.pos * group_size + j) for g in groups for j in range(group_size)]
