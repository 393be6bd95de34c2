"""Argument checks shared by every public entry point of the core and the backends (a public module).

Each check raises ValueError or TypeError whose message names the argument, the bad value and what was
expected. Nothing is clipped or repaired here: a bad input is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

SIMPLEX_ATOL = 1e-6


def _show(value: Any) -> str:
    """Short repr of a value for an error message."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def as_float_array(name: str, value: ArrayLike, ndim: int | None = None) -> NDArray[np.float64]:
    """Convert to a float64 array, refusing non-numeric input and a wrong number of dimensions."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be numeric array-like, got {_show(value)}") from err
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    return arr


def finite_array(name: str, value: ArrayLike, ndim: int | None = None) -> NDArray[np.float64]:
    """A float64 array whose entries are all finite (no NaN, no inf)."""
    arr = as_float_array(name, value, ndim)
    if np.isfinite(arr).all():
        return arr
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.argwhere(bad)[0]
        where = tuple(int(i) for i in idx)
        raise ValueError(
            f"{name} must be finite, got {float(arr[tuple(idx)])!r} at index {where if len(where) > 1 else where[0]}"
        )
    return arr


def int_array(name: str, value: ArrayLike, ndim: int | None = None) -> NDArray[np.int64]:
    """An int64 array; floats with a fractional part are refused, not truncated."""
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype} ({_show(value)})")
    arr = arr.astype(np.int64)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    return arr


def task_ids(name: str, value: ArrayLike, num_tasks: int) -> NDArray[np.int64]:
    """A 1-D array of task ids in [0, num_tasks)."""
    ids = int_array(name, value, ndim=1)
    if ids.size and (ids.min() < 0 or ids.max() >= num_tasks):
        bad = ids[(ids < 0) | (ids >= num_tasks)][0]
        raise ValueError(f"{name} holds unknown task id {int(bad)}; expected ids in [0, {num_tasks})")
    return ids


def same_length(name_a: str, a: NDArray[Any], name_b: str, b: NDArray[Any]) -> None:
    """Refuse two arrays whose first dimensions differ."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} and {name_b} must have the same length, got {a.shape[0]} and {b.shape[0]}")


def simplex(name: str, value: ArrayLike, num_tasks: int | None = None) -> NDArray[np.float64]:
    """A probability vector: 1-D, finite, >= 0 and summing to 1 (within SIMPLEX_ATOL)."""
    z = finite_array(name, value, ndim=1)
    if num_tasks is not None and z.shape[0] != num_tasks:
        raise ValueError(f"{name} must have {num_tasks} entries (one per task), got {z.shape[0]}")
    if z.size == 0:
        raise ValueError(f"{name} must have at least one entry, got an empty vector")
    if (z < 0).any():
        raise ValueError(f"{name} must be >= 0, got {float(z.min())!r} at index {int(np.argmin(z))}")
    total = float(z.sum())
    if abs(total - 1.0) > SIMPLEX_ATOL:
        raise ValueError(f"{name} must sum to 1 (within {SIMPLEX_ATOL}), got sum {total!r}")
    return z


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """An int (not bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {_show(value)} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {int(value)}")
    return int(value)


def real_in_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number in [low, high] (either end may be open or absent)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {_show(value)} of type {type(value).__name__}")
    x = float(value)
    lo_bracket = "(" if low_open else "["
    hi_bracket = ")" if high_open else "]"
    expected = f"{lo_bracket}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi_bracket}"
    if not np.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x!r}")
    if low is not None and (x < low or (low_open and x == low)):
        raise ValueError(f"{name} must be in {expected}, got {x!r}")
    if high is not None and (x > high or (high_open and x == high)):
        raise ValueError(f"{name} must be in {expected}, got {x!r}")
    return x


def choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    """One of a fixed set of strings."""
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {_show(value)}")
    return str(value)


def state_matches(state: Any, kind: str, num_tasks: int) -> None:
    """Refuse a state dict written by another kind of object or for another number of tasks."""
    if not hasattr(state, "get"):
        raise TypeError(f"state must be a mapping, got {type(state).__name__}")
    got_kind = state.get("kind")
    if got_kind != kind:
        raise ValueError(f"state['kind'] is {got_kind!r}, expected {kind!r}: a state dict of another object")
    got_k = state.get("num_tasks")
    if got_k != num_tasks:
        raise ValueError(f"state['num_tasks'] is {got_k!r}, expected {num_tasks}: a state dict for another K")


def one_per_group(name: str, items: Any, n: int) -> tuple[Any, ...]:
    """A sequence (not a string) of n opaque objects, one per reported group, as a tuple."""
    if isinstance(items, str | bytes) or not isinstance(items, Sequence) or len(items) != n:
        shown = type(items).__name__ if not isinstance(items, Sequence) else f"{len(items)} items"
        raise ValueError(f"{name} must be a sequence of {n} objects (one per group), got {shown}")
    return tuple(items)


def state_keys(state: Mapping[str, Any], name: str, dtype_name: str) -> NDArray[np.integer[Any]]:
    """state[name] as an array of state[dtype_name], an integer dtype; every entry must be an int (a float such as
    3.0 or 3.5, a bool or a string is refused, not truncated)."""
    raw, dtype_value = state.get(name, []), state.get(dtype_name, "int64")
    try:
        dtype = np.dtype(dtype_value)
    except TypeError as err:
        raise ValueError(f"state[{dtype_name!r}] is {dtype_value!r}, expected a numpy integer dtype name") from err
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"state[{dtype_name!r}] is {dtype_value!r}, expected a numpy integer dtype name")
    items = raw.tolist() if isinstance(raw, np.ndarray) else raw
    if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple)):
        raise TypeError(f"state[{name!r}] must be a list of integers, got {_show(raw)}")
    for i, key in enumerate(items):
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
            raise TypeError(
                f"state[{name!r}] must hold integers, got {key!r} of type {type(key).__name__} at index {i}"
            )
    try:
        keys = np.array(items, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"state[{name!r}] do not fit state[{dtype_name!r}] {dtype_value!r}: {err}") from err
    if keys.ndim != 1:
        raise ValueError(f"state[{name!r}] must be a list of integers, got shape {keys.shape}")
    return keys
