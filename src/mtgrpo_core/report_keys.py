"""The caller-side keys reported in one batch: duplicates are refused; integer keys stay numpy arrays."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray


def _object_array(items: Sequence[Hashable]) -> NDArray[Any]:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out


class KeyLedger:
    """Keys of one batch in report order. Integer arrays take a vectorised path; any other hashable keys a set."""

    def __init__(self) -> None:
        self._chunks: list[NDArray[Any]] = []
        self._sorted_ints = np.zeros(0, dtype=np.int64)
        self._objects: set[Hashable] | None = None

    def add(self, keys: Sequence[Hashable] | NDArray[Any]) -> NDArray[Any]:
        """Validate new keys against each other and all earlier ones; return them as an array (not yet stored)."""
        if isinstance(keys, np.ndarray) and keys.ndim == 1 and np.issubdtype(keys.dtype, np.integer):
            arr: NDArray[Any] = keys.astype(np.int64)
        else:
            arr = _object_array(keys.tolist() if isinstance(keys, np.ndarray) else list(keys))
        if arr.dtype == np.int64 and self._objects is None:
            uniq = np.unique(arr)
            pos = np.searchsorted(self._sorted_ints, uniq)
            clash = pos < self._sorted_ints.shape[0]
            clash[clash] = self._sorted_ints[pos[clash]] == uniq[clash]
            if uniq.shape[0] != arr.shape[0] or clash.any():
                self._raise_duplicate(arr.tolist(), set(self._sorted_ints.tolist()))
            return arr
        if self._objects is None:
            self._objects = set(self._sorted_ints.tolist())
        items = arr.tolist()
        fresh = set(items)
        if len(fresh) != len(items) or not fresh.isdisjoint(self._objects):
            self._raise_duplicate(items, self._objects)
        return arr

    def commit(self, arr: NDArray[Any]) -> None:
        """Store keys returned by `add` once the whole report has been accepted."""
        self._chunks.append(arr)
        if self._objects is not None:
            self._objects.update(arr.tolist())
        else:
            self._sorted_ints = np.sort(np.concatenate((self._sorted_ints, arr)))

    def take(self, idx: NDArray[np.int64]) -> NDArray[Any]:
        """Keys at report positions idx (int64 array if every key was an integer array, else object array)."""
        if not self._chunks:
            return np.zeros(0, dtype=np.int64)
        if any(c.dtype == object for c in self._chunks):
            return np.concatenate([c.astype(object) for c in self._chunks])[idx]
        return np.concatenate(self._chunks)[idx]

    @staticmethod
    def _raise_duplicate(items: list[Any], seen: set[Hashable]) -> None:
        local: set[Hashable] = set()
        for key in items:
            if key in seen or key in local:
                raise ValueError(f"group key {key!r} reported twice in this batch; keys must be unique per batch")
            local.add(key)
