"""What one controller step generated in the TRL backend, and which of its groups fill the training batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core.sampler import Batch


@dataclass
class StepData:
    """Chunk outputs of one step and, per generated group g, its chunk, position, task and rewards. Group g is
    reported with key first_key + g, so keys are unique across steps (carry-over relies on it)."""

    first_key: int
    outputs: list[dict[str, Any]] = field(default_factory=list)
    local_rows: list[int] = field(default_factory=list)
    fillers: list[int] = field(default_factory=list)
    group_chunk: list[int] = field(default_factory=list)
    group_pos: list[int] = field(default_factory=list)
    group_task: list[int] = field(default_factory=list)
    rewards: list[NDArray[np.float64]] = field(default_factory=list)

    def add_chunk(self, tasks: NDArray[np.int64], rewards: NDArray[np.float64]) -> list[int]:
        """Book the groups of the last chunk output (tasks (n,), rewards (n, N)); returns their keys."""
        first = len(self.group_task)
        self.group_chunk += [len(self.outputs) - 1] * tasks.shape[0]
        self.group_pos += list(range(tasks.shape[0]))
        self.group_task += tasks.tolist()
        self.rewards.append(rewards)
        return list(range(self.first_key + first, self.next_key))

    @property
    def next_key(self) -> int:
        """The first key after this step's groups."""
        return self.first_key + len(self.group_task)

    def batch_groups(self, batch: Batch, size: int) -> tuple[list[int], list[int], int]:
        """The keys of the training batch (the selected groups, then unselected ones of this step as inert top-up
        to `size` groups), their tasks, and how many are selected."""
        chosen = [int(k) for k in batch.keys]
        taken = set(chosen)
        spare = [k for k in range(self.first_key, self.next_key) if k not in taken]
        inert = spare[: size - len(chosen)]
        if len(chosen) + len(inert) != size:
            raise RuntimeError(f"only {len(chosen) + len(inert)} groups generated for a batch of {size}")
        tasks = [*batch.tasks.tolist(), *(self.group_task[k - self.first_key] for k in inert)]
        return chosen + inert, tasks, len(chosen)

    def is_first_chunk_in_order(self, keys: list[int]) -> bool:
        """True when `keys` are exactly the one chunk's groups, in order, without filler groups."""
        own = keys == list(range(self.first_key, self.first_key + len(keys)))
        return own and len(self.outputs) == 1 and self.fillers[0] == 0 and len(keys) == len(self.group_task)

    def picks(self, keys: list[int], group_size: int) -> list[tuple[int, int]]:
        """(chunk, row) of every rollout of this step's groups `keys`, group by group."""
        at = [(self.group_chunk[k - self.first_key], self.group_pos[k - self.first_key]) for k in keys]
        return [(chunk, pos * group_size + j) for chunk, pos in at for j in range(group_size)]
