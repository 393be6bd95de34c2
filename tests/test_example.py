"""The worked example: its numbers against an independent hand computation in plain Python floats."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "iwu_by_hand.py"
_spec = importlib.util.spec_from_file_location("iwu_by_hand", SCRIPT)
assert _spec is not None and _spec.loader is not None
example = importlib.util.module_from_spec(_spec)
sys.modules["iwu_by_hand"] = example  # dataclasses look their module up by name
_spec.loader.exec_module(example)


def hand_computation() -> list[tuple[int, float, float, float]]:
    """(step, g, xi, z) per task and step, math only: s = clip(I) + 0.2 J, g = z (s - zbar.s), xi -= g."""
    steps = [
        ([0.60, 0.30, 0.20], [0.25, 0.05, 0.00]),
        ([0.65, 0.33, 0.21], [0.08, 0.04, 0.01]),
        ([0.68, 0.36, 0.23], [0.06, 0.05, 0.02]),
        ([math.nan, 0.38, 0.25], [math.nan, 0.03, 0.03]),  # countdown absent
    ]
    xi = [0.0, 0.0, 0.0]
    z = [1 / 3, 1 / 3, 1 / 3]
    out = [(0, math.nan, 0.0, 1 / 3)] * 3
    for step, (j, i) in enumerate(steps, start=1):
        live = [k for k in range(3) if not math.isnan(j[k])]
        s = {k: max(-0.2, min(0.2, i[k])) + 0.2 * j[k] for k in live}
        mass = sum(z[k] for k in live)
        mean = sum(z[k] / mass * s[k] for k in live)
        g = [z[k] * (s[k] - mean) if k in live else 0.0 for k in range(3)]
        xi = [xi[k] - 1.0 * g[k] for k in range(3)]
        e = [math.exp(x) for x in xi]
        z = [x / sum(e) for x in e]
        out += [(step, g[k], xi[k], z[k]) for k in range(3)]
    return out


def test_rows_match_the_hand_computation() -> None:
    rows = example.worked_example()
    expected = hand_computation()
    assert len(rows) == len(expected) == 15
    for row, (step, g, xi, z) in zip(rows, expected, strict=True):
        assert row.step == step
        if step > 0:
            assert row.gradient == pytest.approx(g, abs=1e-12)
        assert row.logit == pytest.approx(xi, abs=1e-12)
        assert row.weight == pytest.approx(z, abs=1e-12)


def test_first_step_by_hand() -> None:
    """Uniform start: s = (0.2 + 0.12, 0.05 + 0.06, 0 + 0.04), mean 0.47 / 3, g = (s - mean) / 3."""
    rows = [r for r in example.worked_example() if r.step == 1]
    assert [r.clipped for r in rows] == [0.2, 0.05, 0.0]  # countdown's 0.25 clipped to 0.2
    assert [r.score for r in rows] == pytest.approx([0.32, 0.11, 0.04], abs=1e-15)
    assert [r.gradient for r in rows] == pytest.approx([0.49 / 9, -0.14 / 9, -0.35 / 9], abs=1e-15)
    assert [r.logit for r in rows] == pytest.approx([-0.49 / 9, 0.14 / 9, 0.35 / 9], abs=1e-15)


def test_absent_task_and_the_direction_of_the_weights() -> None:
    rows = example.worked_example()
    countdown = [r for r in rows if r.task == "countdown"]
    assert math.isnan(countdown[4].reward) and countdown[4].gradient == 0.0
    assert countdown[4].logit == countdown[3].logit  # absent: plain step leaves its logit alone
    final = {r.task: r.weight for r in rows if r.step == 4}
    assert final["arc"] > final["zebra"] > final["countdown"]  # weak, non-improving arc gains weight
    assert sum(final.values()) == pytest.approx(1.0, abs=1e-12)


def test_module_runs_and_prints_the_table() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True, timeout=60).stdout
    assert "| step | task | J | I | clip(I) | s | g | xi | z |" in out
    assert "| 1 | countdown | 0.60 | 0.25 | 0.20 | 0.320 | +0.05444 | -0.05444 | 0.31542 |" in out
    assert out.strip().endswith(example.format_table(example.worked_example()).splitlines()[-1])
