"""Carry-over in TRL: the rows of groups the sampler keeps for a later step, with the generating policy's
log-probabilities, held whole on every process.

At each step the rows the step trains or keeps get `old_per_token_logps` from the policy that generated them: TRL's
own where it computed them, otherwise one forward pass without gradients over those rows (the policy has not
changed since generation). A carried group is then trained with TRL's clipped ratio against the policy that
generated it; a fresh group's ratio starts at 1, as in TRL. Every process holds the kept rows whole (they are
the same on all processes), so any process can take any of them into its slice of the next batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mtgrpo_backends.trl.batch_assembly import take_rows

Rows = dict[str, torch.Tensor]


class KeptRows:
    """Rows (group_size per group, group by group) of the groups kept for later steps, by key."""

    def __init__(self, group_size: int) -> None:
        self.group_size = group_size
        self.keys: list[int] = []
        self.rows: Rows | None = None

    def assemble(
        self,
        batch_keys: Sequence[int],
        kept_keys: Sequence[int],
        fresh: Rows,
        fresh_keys: Sequence[int],
        logps: Callable[[Rows], torch.Tensor],
        pad_token_id: int,
        pad_to_multiple_of: int | None,
    ) -> Rows:
        """The rows of `batch_keys` in that order; keeps the rows of `kept_keys` for the next step.

        fresh: this step's rows of `fresh_keys` (gathered, group by group); every other key must be held here.
        logps: the current policy's per-token log-probabilities of rows (used when TRL computed none).
        """
        if fresh_keys and "old_per_token_logps" not in fresh:
            fresh = {**fresh, "old_per_token_logps": logps(fresh)}
        sources: list[Rows] = []
        where: dict[int, tuple[int, int]] = {}
        for keys, rows in ((fresh_keys, fresh), (self.keys, self.rows)):
            if keys and rows is not None:
                where.update({int(k): (len(sources), i) for i, k in enumerate(keys)})
                sources.append(rows)
        missing = [k for k in [*batch_keys, *kept_keys] if k not in where]
        if missing:
            raise RuntimeError(
                f"groups {missing[:5]} are carried by the sampler but the trainer holds no rows or generating "
                "log-probabilities for them; resume from a checkpoint of this run, which stores them"
            )

        def picks(keys: Sequence[int]) -> list[tuple[int, int]]:
            n = self.group_size
            return [(where[k][0], where[k][1] * n + j) for k in keys for j in range(n)]

        batch = take_rows(sources, picks(batch_keys), pad_token_id, pad_to_multiple_of)
        kept = take_rows(sources, picks(kept_keys), pad_token_id, pad_to_multiple_of) if kept_keys else None
        self.keys, self.rows = list(kept_keys), kept
        return batch

    def state(self) -> tuple[list[int], Rows | None]:
        """The kept keys and their rows on the CPU (for a checkpoint)."""
        rows = None if self.rows is None else {k: t.detach().to("cpu").clone() for k, t in self.rows.items()}
        return list(self.keys), rows

    def load(self, keys: Sequence[int], rows: Rows | None, device: torch.device) -> None:
        """Restore what `state` returned, on `device`; refuses rows that do not match the keys."""
        count = 0 if rows is None else int(rows["completion_ids"].shape[0])
        if count != len(keys) * self.group_size:
            raise ValueError(
                f"kept rows hold {count} rollouts, expected {len(keys)} kept groups x {self.group_size} rollouts"
            )
        self.keys = [int(k) for k in keys]
        self.rows = None if rows is None else {k: t.to(device) for k, t in rows.items()}
