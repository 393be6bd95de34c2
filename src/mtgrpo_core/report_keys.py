"""The caller-side keys reported in one batch: integers only, returned exactly as reported, duplicates refused.

Key dtype rule. A numpy integer array keeps its dtype; a sequence of Python (or numpy) ints becomes int64, or
uint64 when a key exceeds 2**63 - 1 and none is negative. The keys of one batch come back in numpy's promotion of
the reported dtypes (uint8 and int8 reports give int16), so every key comes back with its exact value. Where
numpy's promotion would leave the integers (a signed dtype with uint64 promotes to float64), the batch keeps int64
if every key fits in it, else uint64 if no key is negative; a batch holding both a negative key and a key
>= 2**63 fits no numpy integer dtype and is refused. Booleans, floats, strings and other objects are refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_core import checks as v

KeyArray = NDArray[np.integer[Any]]

_INT64 = np.iinfo(np.int64)
_UINT64 = np.iinfo(np.uint64)
_EXPECTED = "integers (a numpy integer array, or a sequence of Python ints within int64 or uint64)"


def as_key_array(name: str, keys: Any) -> KeyArray:
    """`keys` as a 1-D numpy integer array holding exactly the reported values (see the module's dtype rule)."""
    if hasattr(keys, "__array__"):  # numpy arrays (and array-likes such as tensors) keep their integer dtype
        arr = np.asarray(keys)
        if arr.ndim != 1:
            raise ValueError(f"{name} must have 1 dimension(s), got shape {arr.shape}")
        if np.issubdtype(arr.dtype, np.integer):
            return arr
        if arr.size and arr.dtype != object:
            raise TypeError(f"{name} must hold {_EXPECTED}, got dtype {arr.dtype} (first key {arr[0]!r})")
        keys = arr.tolist()
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        raise TypeError(f"{name} must be a 1-D sequence of {_EXPECTED}, got {v._show(keys)}")
    items = list(keys)
    for i, key in enumerate(items):
        if isinstance(key, bool | np.bool_) or not isinstance(key, int | np.integer):
            raise TypeError(f"{name} must hold {_EXPECTED}, got {key!r} of type {type(key).__name__} at index {i}")
    if not items:
        return np.zeros(0, dtype=np.int64)
    low, high = int(min(items)), int(max(items))
    if low < _INT64.min or high > _UINT64.max:
        bad = low if low < _INT64.min else high
        raise ValueError(f"{name} holds {bad}, outside every numpy integer dtype; expected {_EXPECTED}")
    if high <= _INT64.max:
        return np.array(items, dtype=np.int64)
    if low >= 0:
        return np.array([int(k) for k in items], dtype=np.uint64)
    raise ValueError(_mix_message(name, low, high))


def _mix_message(name: str, negative: int, large: int) -> str:
    return (
        f"{name} mixes the negative key {negative} with the key {large} >= 2**63 in one batch; no numpy integer "
        "dtype holds both: expected keys that all fit in int64 or all fit in uint64"
    )


def common_key_dtype(name: str, a: KeyArray, b: KeyArray) -> np.dtype[Any]:
    """The dtype that holds every key of a and b exactly (the module's rule), or a ValueError naming both keys."""
    dtype = np.promote_types(a.dtype, b.dtype)
    if np.issubdtype(dtype, np.integer):
        return dtype
    unsigned, signed = (a, b) if a.dtype == np.uint64 else (b, a)  # numpy leaves the integers only with uint64
    if unsigned.size == 0 or int(unsigned.max()) <= _INT64.max:
        return np.dtype(np.int64)
    if signed.size == 0 or int(signed.min()) >= 0:
        return np.dtype(np.uint64)
    raise ValueError(_mix_message(name, int(signed.min()), int(unsigned.max())))


class KeyLedger:
    """Integer keys of one batch in report order; duplicates are found with sorted arrays, not a Python set."""

    def __init__(self) -> None:
        self._chunks: list[KeyArray] = []
        self._sorted: KeyArray | None = None  # None until the first non-empty report fixes a dtype

    @property
    def dtype(self) -> np.dtype[Any]:
        """The dtype the batch's keys come back in (int64 while nothing has been reported)."""
        return np.dtype(np.int64) if self._sorted is None else self._sorted.dtype

    def add(self, name: str, keys: Any) -> KeyArray:
        """Validate new keys against each other and all earlier ones; return them as an array (not yet stored)."""
        arr = as_key_array(name, keys)
        if arr.size == 0 or self._sorted is None:
            fresh = arr
            dtype = arr.dtype
            seen = np.zeros(0, dtype=dtype)
        else:
            dtype = common_key_dtype(name, self._sorted, arr)
            fresh = arr.astype(dtype)
            seen = self._sorted.astype(dtype)
        ordered = np.sort(fresh)
        pos = np.searchsorted(seen, ordered)
        clash = pos < seen.shape[0]
        clash[clash] = seen[pos[clash]] == ordered[clash]
        if (ordered[1:] == ordered[:-1]).any() or clash.any():
            self._raise_duplicate(name, fresh.tolist(), set(seen.tolist()))
        return fresh

    def commit(self, arr: KeyArray) -> None:
        """Store keys returned by `add` once the whole report has been accepted."""
        if arr.size == 0:
            return
        self._chunks.append(arr)
        if self._sorted is None:
            self._sorted = np.sort(arr)
        else:
            self._sorted = np.sort(np.concatenate((self._sorted.astype(arr.dtype), arr)))

    def take(self, idx: NDArray[np.int64]) -> KeyArray:
        """Keys at report positions idx, in the batch's key dtype."""
        if not self._chunks:
            return np.zeros(0, dtype=np.int64)[idx]
        dtype = self.dtype
        return np.concatenate([c.astype(dtype) for c in self._chunks])[idx]

    @staticmethod
    def _raise_duplicate(name: str, items: list[int], seen: set[int]) -> None:
        local: set[int] = set()
        for key in items:
            if key in seen or key in local:
                raise ValueError(f"{name} holds {key!r}, reported twice in this batch; expected keys unique per batch")
            local.add(key)
