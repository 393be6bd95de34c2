"""The verl backend's streaming mode (`mtgrpo.sampler.steps_ahead`, verl's async trainers): the requests generated
ahead, in flight in TransferQueue until the step that reports them, and a step's batch dealt into the
`parameter_sync_step` mini-batches that verl's `sample()` calls ask for one by one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class AheadRequest:
    """The groups one `BatchBuilder.ahead()` request submitted at controller step `version`: uids (n,) and their
    task ids (n,), in submission order (the report order)."""

    version: int
    uids: tuple[str, ...]
    tasks: NDArray[np.int64]


class AheadQueue:
    """Ahead requests in flight, oldest first; each is reported whole at the step `steps_ahead` after its version."""

    def __init__(self) -> None:
        self._requests: list[AheadRequest] = []

    def __len__(self) -> int:
        return sum(len(r.uids) for r in self._requests)

    def add(self, request: AheadRequest) -> None:
        self._requests.append(request)

    def due(self, step: int, steps_ahead: int) -> list[AheadRequest]:
        """Remove and return the requests to report at controller step `step` (version <= step - steps_ahead)."""
        due = [r for r in self._requests if r.version <= step - steps_ahead]
        self._requests = self._requests[len(due) :]
        return due

    def uids(self) -> list[str]:
        return [uid for r in self._requests for uid in r.uids]

    def counts(self, num_tasks: int) -> NDArray[np.int64]:
        """Groups in flight per task."""
        tasks = [r.tasks for r in self._requests]
        return np.bincount(np.concatenate(tasks), minlength=num_tasks) if tasks else np.zeros(num_tasks, np.int64)

    def clear(self) -> None:
        self._requests = []

    def state(self) -> list[list[Any]]:
        """JSON-native: [[version, [uid, ...], [task, ...]], ...]."""
        return [[r.version, list(r.uids), r.tasks.tolist()] for r in self._requests]

    def load(self, state: Any, num_tasks: int, where: str) -> None:
        """Restore `state()`; an entry that is not [version, uids, tasks] of one length (task ids < num_tasks,
        versions increasing) is refused and changes nothing."""
        requests, last = [], -1
        for entry in state if isinstance(state, list) else [state]:
            ok = isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], int) and entry[0] > last
            uids, tasks = (entry[1], entry[2]) if ok else ([], [])
            ok = ok and isinstance(uids, list) and all(isinstance(u, str) for u in uids)
            ok = ok and isinstance(tasks, list) and len(tasks) == len(uids) > 0
            ok = ok and all(isinstance(k, int) and 0 <= k < num_tasks for k in tasks)
            if not ok:
                raise ValueError(
                    f"{where}: 'ahead' must be a list of [version, [uid, ...], [task, ...]] with increasing versions, "
                    f"one task id (< {num_tasks}) per uid; got the entry {entry!r}"
                )
            requests.append(AheadRequest(entry[0], tuple(uids), np.asarray(tasks, dtype=np.int64)))
            last = entry[0]
        self._requests = requests


def mini_batches(
    payloads: Sequence[Any], tasks: NDArray[np.int64], staleness: NDArray[np.int64], parts: int
) -> list[list[str]]:
    """The batch's groups dealt into `parts` mini-batches, each in the batch's task ratio (each task's groups split
    within one of even) and of sizes within one of each other: the groups in task order, oldest first within a
    task, dealt round-robin (the oldest groups train in the first mini-batch)."""
    order = np.lexsort((-staleness, tasks))
    return [[str(payloads[i]) for i in order[j::parts]] for j in range(parts)]
