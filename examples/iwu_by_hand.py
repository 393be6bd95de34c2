"""Worked example: four hand-traceable IWU steps (Subroutine 1) on three tasks of the paper's flavour.

Run it with `python examples/iwu_by_hand.py`. The per-step rewards J and improvements I are illustrative inputs
chosen by hand, not measurements: countdown is easy and improves fast; arc has a high zero-gradient rate, so
few of its prompts carry gradient and it barely improves. The rule is `IWURule` with the paper's plain step
(optimizer "sgd", no weight decay) so every number can be checked with a calculator:

    s_k = clip(I_k, -c, c) + lam J_k,   g_k = z_k (s_k - sum_j z_j s_j),   xi <- xi - lr g,   z = softmax(xi).

Step 4 has no countdown rollouts (absent task): g = 0 there and the mean is taken over zebra and arc.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mtgrpo_core.protocols import TaskSignals
from mtgrpo_core.weighting import functions as wf
from mtgrpo_core.weighting.rules import IWURule

LAM = 0.2
LR = 1.0
CLIP = 0.2


@dataclass(frozen=True)
class ExampleTask:
    """One task of the example: its name, character and share of zero-gradient prompt groups."""

    name: str
    character: str
    zero_gradient_rate: float


TASKS = (
    ExampleTask("countdown", "easy, improves fast", 0.20),
    ExampleTask("zebra", "medium", 0.45),
    ExampleTask("arc", "high zero-gradient rate", 0.80),
)

NAN = math.nan
# (J per task, I per task) for steps 1..4; NaN marks an absent task. Countdown's 0.25 is clipped to 0.2.
STEPS: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((0.60, 0.30, 0.20), (0.25, 0.05, 0.00)),
    ((0.65, 0.33, 0.21), (0.08, 0.04, 0.01)),
    ((0.68, 0.36, 0.23), (0.06, 0.05, 0.02)),
    ((NAN, 0.38, 0.25), (NAN, 0.03, 0.03)),
)


@dataclass(frozen=True)
class ExampleRow:
    """One task after one step (step 0: the start). NaN marks what does not exist (step 0, absent task)."""

    step: int
    task: str
    reward: float
    improvement: float
    clipped: float
    score: float
    gradient: float
    logit: float
    weight: float


def worked_example() -> list[ExampleRow]:
    """Run the four steps with the real `IWURule` and return one row per (step, task), step 0 first."""
    rule = IWURule(len(TASKS), lam=LAM, lr=LR, optimizer="sgd", weight_decay=0.0, improvement_clip=CLIP)
    z0 = rule.weights
    rows = [ExampleRow(0, t.name, NAN, NAN, NAN, NAN, NAN, 0.0, float(z0[k])) for k, t in enumerate(TASKS)]
    for step, (reward, improvement) in enumerate(STEPS, start=1):
        j, i = np.array(reward), np.array(improvement)
        present = ~np.isnan(j)
        clipped = np.clip(np.where(present, i, 0.0), -CLIP, CLIP)
        score = wf.iwu_score(clipped, np.where(present, j, 0.0), LAM)
        grad = wf.iwu_gradient(rule.weights, score, present)
        clipped, score = np.where(present, clipped, NAN), np.where(present, score, NAN)
        rule.update(TaskSignals.build(reward=j, improvement=i))
        xi, z = rule.logits, rule.weights
        for k, t in enumerate(TASKS):
            values = (j[k], i[k], clipped[k], score[k], grad[k], xi[k], z[k])
            rows.append(ExampleRow(step, t.name, *(float(x) for x in values)))
    return rows


def format_table(rows: list[ExampleRow]) -> str:
    """The rows as a Markdown table; '-' marks a value that does not exist (step 0, absent task)."""

    def cell(x: float, fmt: str) -> str:
        return "-" if math.isnan(x) else format(x, fmt)

    lines = [
        "| step | task | J | I | clip(I) | s | g | xi | z |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        values = (
            cell(r.reward, ".2f"),
            cell(r.improvement, ".2f"),
            cell(r.clipped, ".2f"),
            cell(r.score, ".3f"),
            cell(r.gradient, "+.5f"),
            cell(r.logit, "+.5f"),
            cell(r.weight, ".5f"),
        )
        lines.append(f"| {r.step} | {r.task} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main() -> int:
    """Print the tasks, the settings and the table."""
    for t in TASKS:
        print(f"{t.name:10s} {t.character:26s} zero-gradient rate {t.zero_gradient_rate:.2f}")
    print(f"IWU (Subroutine 1), plain step: lam={LAM}, lr={LR}, improvement clip={CLIP}, weight decay 0\n")
    print(format_table(worked_example()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
