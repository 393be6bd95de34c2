"""Pure functions of the task-weighting subroutines (PAPER.md "Task weights"), one per subroutine.

Task weights are z = softmax(xi) over logits xi in R^K. Every function takes and returns plain numpy arrays
and keeps no state; the classes in `weighting.rules` hold the state and call these.

Absent tasks (present[k] False: no rollouts of task k this step) get g_k = 0, and the weighted mean inside the
gradient is taken over the present tasks only, with their weights renormalised to sum 1. Entries of absent
tasks are never read (they may be NaN), so no NaN can reach the logits. When no task is present (or every
present task has weight exactly 0) the gradient is all zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mtgrpo_core import checks as v

ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8


def stable_softmax(logits: ArrayLike, temperature: float = 1.0) -> NDArray[np.float64]:
    """z = softmax(logits / temperature), shifted by the maximum so that no finite input overflows.

    logits: shape (K,), finite. Returns shape (K,), finite, >= 0, summing to 1 up to rounding.
    """
    xi = v.finite_array("logits", logits, ndim=1)
    if xi.size == 0:
        raise ValueError("logits must have at least one entry, got an empty vector")
    t = v.real_in_range("temperature", temperature, 0.0, low_open=True)
    return _softmax(xi, t)


def _softmax(xi: NDArray[np.float64], t: float = 1.0) -> NDArray[np.float64]:
    """`stable_softmax` of checked arguments (finite float64 logits, t > 0): the rules' own state."""
    # The shift can only overflow towards -inf, whose exp is 0; the maximum entry maps to exp(0) = 1.
    with np.errstate(over="ignore"):
        e = np.exp((xi - xi.max()) / t)
    return np.asarray(e / e.sum(), dtype=np.float64)


def _present_mask(present: ArrayLike, num_tasks: int) -> NDArray[np.bool_]:
    mask = np.asarray(present)
    if mask.dtype != np.bool_ or mask.shape != (num_tasks,):
        raise ValueError(
            f"present must be a bool array of shape ({num_tasks},), got dtype {mask.dtype} shape {mask.shape}"
        )
    return mask


def _centred_gradient(
    weights: ArrayLike, values: ArrayLike, present: ArrayLike, values_name: str
) -> NDArray[np.float64]:
    """g_k = z_k (u_k - sum_j zbar_j u_j) at present tasks, 0 at absent ones; zbar = z renormalised over them.

    This is the gradient wrt xi of sum_k z_k u_k, restricted to the present tasks.
    """
    z = v.simplex("weights", weights)
    u = v.as_float_array(values_name, values, ndim=1)
    if u.shape != z.shape:
        raise ValueError(f"{values_name} must have shape {z.shape} (one per task), got {u.shape}")
    mask = _present_mask(present, z.shape[0])
    v.finite_array(f"{values_name} at present tasks", u[mask])
    return _centred(z, u, mask)


def _centred(z: NDArray[np.float64], u: NDArray[np.float64], mask: NDArray[np.bool_]) -> NDArray[np.float64]:
    """`_centred_gradient` of checked arguments: z on the simplex, u (K,) finite where mask (bool (K,))."""
    u_present = u[mask]
    g = np.zeros_like(z)
    total = float(z[mask].sum())
    if total > 0.0:
        zbar = z[mask] / total
        g[mask] = z[mask] * (u_present - float(np.dot(zbar, u_present)))
    return g


def minimax_gradient(weights: ArrayLike, reward: ArrayLike, present: ArrayLike) -> NDArray[np.float64]:
    """Eq. 6-7 (strict worst-task update): g_k = z_k (J_k - sum_j z_j J_j), absent tasks excluded.

    weights: z, shape (K,) on the simplex; reward: J, shape (K,), finite at present tasks;
    present: bool (K,). Descending g moves weight to tasks below the weighted mean reward.
    """
    return _centred_gradient(weights, reward, present, "reward")


def iwu_score(improvement: ArrayLike, reward: ArrayLike, lam: float) -> NDArray[np.float64]:
    """Subroutine 1 score: s_k = I_k + lambda J_k, elementwise over shape (K,).

    NaN entries (absent tasks) stay NaN; `iwu_gradient` never reads them.
    """
    lam_ = v.real_in_range("lam", lam, 0.0)
    i = v.as_float_array("improvement", improvement, ndim=1)
    j = v.as_float_array("reward", reward, ndim=1)
    if i.shape != j.shape:
        raise ValueError(f"improvement and reward must have the same shape, got {i.shape} and {j.shape}")
    return np.asarray(i + lam_ * j, dtype=np.float64)


def iwu_gradient(weights: ArrayLike, score: ArrayLike, present: ArrayLike) -> NDArray[np.float64]:
    """Subroutine 1 gradient: g_k = z_k (s_k - sum_j z_j s_j), absent tasks excluded.

    weights: z (K,) on the simplex; score: s (K,) from `iwu_score`, finite at present tasks;
    present: bool (K,).
    Descending g moves weight to tasks that are both weak and not improving.
    """
    return _centred_gradient(weights, score, present, "score")


def regularised_step(logits: ArrayLike, grad: ArrayLike, lr: float, eta: float) -> NDArray[np.float64]:
    """Subroutine 2: xi <- xi - beta g - eta xi (eta in [0, 1) shrinks the logits toward uniform weights);
    eta = 0 is the plain step of Eq. 6-7 and Subroutine 1, xi <- xi - beta g. Shapes (K,).

    The paper prints "+ eta xi" but describes dampening logit growth; shrinkage is the intended sign.
    """
    xi, g = _logits_and_grad(logits, grad)
    beta = v.real_in_range("lr", lr, 0.0, low_open=True)
    eta_ = v.real_in_range("eta", eta, 0.0, 1.0, high_open=True)
    return _regularised(xi, g, beta, eta_)


def _regularised(xi: NDArray[np.float64], g: NDArray[np.float64], beta: float, eta_: float) -> NDArray[np.float64]:
    """`regularised_step` of checked arguments (finite xi and g of one shape, beta > 0, eta in [0, 1))."""
    return np.asarray(xi - beta * g - eta_ * xi, dtype=np.float64)


@dataclass(frozen=True)
class AdamWState:
    """Explicit AdamW state for the logits: step count, first moment, root of the second moment.

    exp_avg_rms holds sqrt(v) rather than v (torch's exp_avg_sq) so that squaring a huge gradient cannot
    overflow: sqrt(beta2 v + (1 - beta2) g^2) is computed as hypot(sqrt(beta2) sqrt(v), sqrt(1 - beta2) |g|).
    """

    step: int
    exp_avg: NDArray[np.float64]
    exp_avg_rms: NDArray[np.float64]

    @staticmethod
    def zeros(num_tasks: int) -> AdamWState:
        """The state before the first step."""
        k = v.positive_int("num_tasks", num_tasks)
        return AdamWState(0, np.zeros(k), np.zeros(k))


def adamw_step(
    logits: ArrayLike,
    grad: ArrayLike,
    state: AdamWState,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = ADAMW_BETAS,
    eps: float = ADAMW_EPS,
    decoupled: bool = True,
) -> tuple[NDArray[np.float64], AdamWState]:
    """The AdamW step on xi used in the paper's experiments (Section "Task weights", lr 0.025, wd 1e-5).

    Same update as torch.optim.AdamW (decoupled weight decay, bias-corrected moments, eps added to the
    corrected root second moment): xi <- xi (1 - lr wd) - lr mhat / (sqrt(vhat) + eps).
    decoupled=False is torch.optim.Adam(weight_decay=wd) instead, the paper's reference code
    (priority_decay.py): coupled L2, g <- g + wd xi before the moments, and no separate shrinkage.
    Returns the new logits and the new state; the inputs are not modified.
    """
    xi, g = _logits_and_grad(logits, grad)
    lr_, wd, b1, b2, eps_ = _adamw_settings(lr, weight_decay, betas, eps)
    if not isinstance(state, AdamWState):
        raise TypeError(f"state must be an AdamWState, got {type(state).__name__}")
    for name, arr in (("state.exp_avg", state.exp_avg), ("state.exp_avg_rms", state.exp_avg_rms)):
        if arr.shape != xi.shape:
            raise ValueError(f"{name} must have shape {xi.shape} like the logits, got {arr.shape}")
    if not isinstance(decoupled, bool):
        raise TypeError(f"decoupled must be a bool, got {v._show(decoupled)}")
    return _adamw(xi, g, state, lr_, wd, b1, b2, eps_, decoupled)


def _adamw_settings(
    lr: float, weight_decay: float, betas: tuple[float, float] = ADAMW_BETAS, eps: float = ADAMW_EPS
) -> tuple[float, float, float, float, float]:
    """`adamw_step`'s scalar arguments, checked: (lr, weight_decay, beta1, beta2, eps)."""
    lr_ = v.real_in_range("lr", lr, 0.0, low_open=True)
    wd = v.real_in_range("weight_decay", weight_decay, 0.0)
    b1 = v.real_in_range("betas[0]", betas[0], 0.0, 1.0, high_open=True)
    b2 = v.real_in_range("betas[1]", betas[1], 0.0, 1.0, high_open=True)
    eps_ = v.real_in_range("eps", eps, 0.0, low_open=True)
    return lr_, wd, b1, b2, eps_


def _adamw(
    xi: NDArray[np.float64],
    g: NDArray[np.float64],
    state: AdamWState,
    lr_: float,
    wd: float,
    b1: float,
    b2: float,
    eps_: float,
    decoupled: bool,
) -> tuple[NDArray[np.float64], AdamWState]:
    """`adamw_step` of checked arguments (finite xi and g of the state's shape, settings from `_adamw_settings`)."""
    shrink = 1.0 - lr_ * wd
    if not decoupled:
        g, shrink = g + wd * xi, 1.0
    step = state.step + 1
    m = b1 * state.exp_avg + (1.0 - b1) * g
    rms = np.hypot(np.sqrt(b2) * state.exp_avg_rms, np.sqrt(1.0 - b2) * np.abs(g))
    denom = rms / np.sqrt(1.0 - b2**step) + eps_
    new_xi = xi * shrink - (lr_ / (1.0 - b1**step)) * m / denom
    return np.asarray(new_xi, dtype=np.float64), AdamWState(step, m, rms)


def accuracy_average(average: ArrayLike, accuracy: ArrayLike, present: ArrayLike, decay: float) -> NDArray[np.float64]:
    """Moving average of per-task accuracy, a_k <- decay a_k + (1 - decay) acc_k at present tasks, shapes (K,).

    The reward term of the IWU score in the paper's reference code (`batch_acc`, `update_batch_acc` in
    priority_decay.py, decay 0.5, a_k = 0 before the first observation). Absent tasks keep a_k; their accuracy
    entries are never read (they may be NaN). decay 0 is the step's accuracy.
    """
    a = v.finite_array("average", average, ndim=1)
    acc = v.as_float_array("accuracy", accuracy, ndim=1)
    if acc.shape != a.shape:
        raise ValueError(f"accuracy must have shape {a.shape} (one per task), got {acc.shape}")
    mask = _present_mask(present, a.shape[0])
    seen = v.finite_array("accuracy at present tasks", acc[mask])
    if ((seen < 0) | (seen > 1)).any():
        raise ValueError(f"accuracy must be in [0, 1] at present tasks, got {seen.tolist()}")
    d = v.real_in_range("decay", decay, 0.0, 1.0, high_open=True)
    out = a.copy()
    out[mask] = d * a[mask] + (1.0 - d) * seen
    return out


def sec_update(q_values: ArrayLike, reward: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """SEC bandit (Chen et al. 2025) value update: Q <- (1 - alpha) Q + alpha r, shapes (K,).

    r_k is task k's mean |advantage| this step; the reference code gives unsampled tasks r_k = 0, so callers
    pass 0 there. Sampling weights are then `stable_softmax(Q, temperature)`.
    """
    q = v.finite_array("q_values", q_values, ndim=1)
    r = v.finite_array("reward", reward, ndim=1)
    if r.shape != q.shape:
        raise ValueError(f"reward must have shape {q.shape} (one per task), got {r.shape}")
    a = v.real_in_range("alpha", alpha, 0.0, 1.0, low_open=True)
    return np.asarray((1.0 - a) * q + a * r, dtype=np.float64)


def _logits_and_grad(logits: ArrayLike, grad: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    xi = v.finite_array("logits", logits, ndim=1)
    g = v.finite_array("grad", grad, ndim=1)
    if g.shape != xi.shape:
        raise ValueError(f"grad must have shape {xi.shape} like the logits, got {g.shape}")
    return xi, g
