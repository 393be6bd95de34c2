"""Task registry: task names <-> ids, and per-task prompt pools sampled without replacement inside an epoch."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import _validate as v


class PromptPool:
    """Indices 0..size-1 of one task's prompts, drawn without replacement inside an epoch.

    When an epoch runs out, a recycling pool starts a new epoch (a fresh permutation); a non-recycling pool
    raises instead. Randomness comes from the Generator passed to `draw`, so ranks that share it agree.
    """

    def __init__(self, size: int, recycle: bool = True, name: str = "task") -> None:
        self.size = v.positive_int(f"size of prompt pool {name!r}", size)
        self.recycle = recycle
        self.name = name
        self.epoch = 0
        self._order: NDArray[np.int64] | None = None
        self._position = 0

    @property
    def remaining(self) -> int:
        """Prompts left in the current epoch."""
        return self.size if self._order is None else self.size - self._position

    def draw(self, n: int, rng: np.random.Generator) -> NDArray[np.int64]:
        """n prompt indices; within an epoch no index repeats."""
        n = v.positive_int("n", n, minimum=0)
        out: list[NDArray[np.int64]] = []
        while n > 0:
            if self._order is None or self._position == self.size:
                if self._order is not None and not self.recycle:
                    raise ValueError(
                        f"task {self.name!r} ran out of prompts: all {self.size} were used and recycle=False"
                    )
                if self._order is not None:
                    self.epoch += 1
                self._order = rng.permutation(self.size).astype(np.int64)
                self._position = 0
            take = min(n, self.size - self._position)
            out.append(self._order[self._position : self._position + take])
            self._position += take
            n -= take
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def state_dict(self) -> dict[str, Any]:
        order = None if self._order is None else self._order.copy()
        return {"size": self.size, "epoch": self.epoch, "order": order, "position": self._position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("size") != self.size:
            raise ValueError(f"state['size'] is {state.get('size')!r}, expected {self.size} for task {self.name!r}")
        self.epoch = int(state["epoch"])
        self._order = None if state["order"] is None else np.array(state["order"], dtype=np.int64)
        self._position = int(state["position"])


class TaskRegistry:
    """Named tasks with ids 0..K-1 in the given order, each with a prompt pool."""

    def __init__(self, sizes: Mapping[str, int], recycle: bool = True) -> None:
        if not sizes:
            raise ValueError("sizes must name at least one task, got an empty mapping")
        for name in sizes:
            if not isinstance(name, str) or not name:
                raise TypeError(f"task names must be non-empty strings, got {name!r}")
        self.names: tuple[str, ...] = tuple(sizes)
        self._ids = {name: i for i, name in enumerate(self.names)}
        self.pools = [PromptPool(sizes[name], recycle=recycle, name=name) for name in self.names]

    def __len__(self) -> int:
        return len(self.names)

    def id(self, name: str) -> int:
        """The id of a task name; unknown names list the valid ones."""
        try:
            return self._ids[name]
        except (KeyError, TypeError):
            raise ValueError(f"task {name!r} is not in the configured task list {list(self.names)}") from None

    def ids(self, names: Iterable[str]) -> NDArray[np.int64]:
        return np.array([self.id(n) for n in names], dtype=np.int64)

    def draw(self, counts: Sequence[int] | NDArray[np.int64], rng: np.random.Generator) -> list[NDArray[np.int64]]:
        """For each task k, counts[k] prompt indices from its pool."""
        c = v.int_array("counts", counts, ndim=1)
        if c.shape[0] != len(self):
            raise ValueError(f"counts must have {len(self)} entries (one per task), got {c.shape[0]}")
        return [pool.draw(int(n), rng) for pool, n in zip(self.pools, c, strict=True)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "task_registry",
            "num_tasks": len(self),
            "names": list(self.names),
            "pools": [p.state_dict() for p in self.pools],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        v.state_matches(state, "task_registry", len(self))
        if list(state["names"]) != list(self.names):
            raise ValueError(f"state['names'] is {list(state['names'])}, expected {list(self.names)}")
        for pool, s in zip(self.pools, state["pools"], strict=True):
            pool.load_state_dict(s)
