"""Reading finished prompt groups out of TransferQueue: wait for their terminal status, then their rewards.

verl stores a prompt group as a tag-only key `{uid}` whose `status` becomes "finished" or "failure", and each
output as `{uid}_{session}_{index}` with token-level `rm_scores` (the score on the last response token). A
session's reward is the sum of its final output's `rm_scores` (verl copies the final score to earlier outputs and
computes GRPO advantages from the final output too).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import transfer_queue as tq
from numpy.typing import NDArray

PARTITION = "train"


@dataclass(frozen=True)
class GroupResults:
    """Terminal groups of one round: finished (n,) bool and rewards (n, N), NaN rows where a group failed."""

    finished: NDArray[np.bool_]
    rewards: NDArray[np.float64]


def final_outputs(trajectory_keys: Sequence[str], uids: Sequence[str]) -> dict[str, list[str]]:
    """For each uid, the key of each session's final output, sessions in order."""
    wanted = set(uids)
    final: dict[str, dict[int, tuple[int, str]]] = {uid: {} for uid in uids}
    for key in trajectory_keys:
        uid, session, index = key.rsplit("_", 2)
        if uid in wanted:
            best = final[uid].get(int(session))
            if best is None or best[0] < int(index):
                final[uid][int(session)] = (int(index), key)
    return {uid: [final[uid][s][1] for s in sorted(final[uid])] for uid in uids}


def wait_terminal(
    uids: Sequence[str],
    sync: Callable[[], tuple[set[str], set[str], set[str]]],
    timeout_s: float,
    poll_s: float,
    what: str,
) -> None:
    """Poll `sync() -> (finished, failed, in_flight)` until every uid is finished or failed, or time runs out."""
    wanted = set(uids)
    deadline = time.monotonic() + timeout_s
    while True:
        finished, failed, in_flight = sync()
        missing = wanted - finished - failed
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{what}: {len(missing)} of {len(wanted)} prompt groups not finished after "
                f"mtgrpo.round_timeout_s={timeout_s} s ({len(missing & in_flight)} still pending or running, "
                f"{len(missing - in_flight)} unknown to TransferQueue); check the rollout servers, or raise the timeout"
            )
        time.sleep(poll_s)


def read_rewards(
    uids: Sequence[str], finished: set[str], trajectory_keys: Sequence[str], group_size: int
) -> GroupResults:
    """Rewards of the finished groups among uids; every finished group must hold group_size sessions."""
    done = np.array([uid in finished for uid in uids], dtype=np.bool_)
    rewards = np.full((len(uids), group_size), np.nan)
    outputs = final_outputs(trajectory_keys, [uid for uid, ok in zip(uids, done, strict=True) if ok])
    short = {uid: len(keys) for uid, keys in outputs.items() if len(keys) != group_size}
    if short:
        uid, sessions = next(iter(short.items()))
        raise ValueError(
            f"{len(short)} finished prompt groups do not hold actor_rollout_ref.rollout.n={group_size} sessions "
            f"(group {uid!r} has {sessions}); MT-GRPO needs every group at the configured size (no per-prompt "
            "__rollout_n__)"
        )
    keys = [key for uid in outputs for key in outputs[uid]]
    if keys:
        scores = tq.kv_batch_get(keys=keys, partition_id=PARTITION, select_fields=["rm_scores"])["rm_scores"]
        values = np.array([float(row.sum()) for row in scores], dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"rm_scores hold a non-finite reward ({values[~np.isfinite(values)][0]!r})")
        rewards[done] = values.reshape(-1, group_size)
    return GroupResults(done, rewards)
