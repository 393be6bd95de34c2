"""The verl backend's streaming mode (`mtgrpo.sampler.steps_ahead`, verl's async trainers): the uids of the requests
submitted ahead, in flight in TransferQueue until their rows are awaited and reported, and a step's batch dealt into
the `parameter_sync_step` mini-batches that verl's `sample()` calls ask for one by one."""

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
    """The uids of ahead requests submitted and not reported yet, oldest first. The controller counts what is in
    flight and says which versions a step takes in (`Controller.ahead_due`), but only verl knows the uids its rows
    will arrive under in TransferQueue, and they arrive while verl trains: the replay buffer awaits them in the next
    `sample()` and reports each version whole, in submission order (the batch then does not depend on arrival
    timing)."""

    def __init__(self) -> None:
        self._requests: list[AheadRequest] = []

    def __len__(self) -> int:
        return sum(len(r.uids) for r in self._requests)

    def add(self, request: AheadRequest) -> None:
        self._requests.append(request)

    def pop(self, version: int) -> AheadRequest:
        """Remove and return the request of `version` (the controller names it due: `Controller.ahead_due`)."""
        found = [r for r in self._requests if r.version == version]
        if not found:
            raise RuntimeError(
                f"the controller awaits the ahead request of step {version}, but no such request was submitted "
                f"(submitted: {[r.version for r in self._requests]})"
            )
        self._requests = [r for r in self._requests if r.version != version]
        return found[0]

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
