"""The comparison harness on synthetic records: equal-budget accuracy, Delta_m%, the pool, JSON and the table."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from mtgrpo_backends.harness import Outcome, RunRecord, format_table, plot_curves, run_many, summarize, write_json


def _record(method: str, seed: int, per_step: int, acc: list[list[float]], steps: int = 4, k: int = 2) -> RunRecord:
    """A run with evaluations at 0, 2, 4 and `per_step` generated groups of 8 rollouts per step."""
    z = np.full((steps, k), 1.0 / k)
    return RunRecord(
        method=method,
        seed=seed,
        eval_steps=np.array([0, 2, 4]),
        accuracy=np.array(acc, dtype=np.float64),
        weights=z,
        shares=z.copy(),
        rounds=np.ones(steps, dtype=np.int64),
        generated=np.full(steps, per_step, dtype=np.int64),
        rollouts=np.full(steps, 8 * per_step, dtype=np.int64),
        trained=np.full(steps, 4, dtype=np.int64),
        budget_exhausted=np.zeros(steps, dtype=bool),
        wall_s=0.1,
    )


def test_equal_budget_takes_each_run_at_its_last_evaluation_within_the_smallest_total() -> None:
    cheap = _record("grpo", 0, 4, [[0.1, 0.2], [0.2, 0.3], [0.3, 0.4]])  # 32 rollouts per step, 128 in all
    costly = _record("dapo", 0, 8, [[0.1, 0.2], [0.4, 0.5], [0.6, 0.7]])  # 64 per step: 128 reached at step 2
    summary = summarize([cheap, costly], reference="grpo")
    assert summary["budget"] == {"rollouts": 128, "method": "grpo", "seed": 0}
    dapo = summary["methods"]["dapo"]
    assert dapo["budget"]["step"]["mean"] == 2 and dapo["budget"]["worst"]["mean"] == pytest.approx(0.4)
    assert dapo["worst"]["mean"] == pytest.approx(0.6) and dapo["average"]["mean"] == pytest.approx(0.65)
    assert summary["methods"]["grpo"]["budget"]["step"]["mean"] == 4
    # Delta_m% vs grpo at equal steps: (100 / 2) * (0.3 / 0.3 + 0.3 / 0.4); at equal budget: vs grpo at step 4
    assert dapo["delta_m"]["mean"] == pytest.approx(50 * (1 + 0.75))
    assert dapo["budget"]["delta_m"]["mean"] == pytest.approx(50 * (0.1 / 0.3 + 0.1 / 0.4))
    text = format_table(summary, ["a", "b"])
    assert "equal budget: 128 generated rollouts (the fewest of any run: grpo, seed 0)" in text
    assert "Δm% vs grpo" in text and "step@budget" in text


def test_delta_m_is_left_out_when_a_reference_accuracy_is_zero() -> None:
    ref = _record("dapo", 0, 4, [[0.0, 0.2], [0.0, 0.3], [0.0, 0.4]])
    other = _record("mt", 0, 4, [[0.1, 0.2], [0.2, 0.3], [0.3, 0.4]])
    assert summarize([ref, other])["methods"]["mt"]["delta_m"] is None


def test_record_refuses_inconsistent_shapes() -> None:
    good = _record("grpo", 0, 4, [[0.1, 0.2], [0.2, 0.3], [0.3, 0.4]])
    with pytest.raises(ValueError, match=r"rounds must have shape \(4,\)"):
        RunRecord(**{**good.__dict__, "rounds": np.ones(3, dtype=np.int64)})
    with pytest.raises(ValueError, match="eval_steps must rise from 0"):
        RunRecord(**{**good.__dict__, "eval_steps": np.array([1, 2, 4])})


@dataclass(frozen=True)
class FakeRunner:
    """A picklable Runner: accuracy rises with the seed; `stop_at` presses Ctrl-C in that job."""

    steps: int = 4
    start_method: Literal["fork", "spawn"] = "fork"
    stop_at: tuple[str, int] | None = None

    def __call__(self, method: str, seed: int, on_step: Callable[[], None] | None = None) -> RunRecord:
        if (method, seed) == self.stop_at:
            raise KeyboardInterrupt
        for _ in range(self.steps):
            if on_step is not None:
                on_step()
        a = 0.1 * (seed + 1)
        return _record(method, seed, 4, [[a, a], [a, a], [a, a]], self.steps)


@pytest.mark.parametrize("workers", [1, 2])
def test_pool_returns_runs_in_job_order_and_counts_every_step(workers: int) -> None:
    jobs = [("b", 1), ("a", 0), ("b", 0)]
    ticks: list[int] = []
    out = run_many(FakeRunner(), jobs, workers, ticks.append)
    assert [(r.method, r.seed) for r in out.records] == jobs and not out.interrupted
    assert sum(ticks) == 12


def test_interrupt_keeps_the_finished_runs() -> None:
    out = run_many(FakeRunner(stop_at=("a", 1)), [("a", 0), ("a", 1), ("a", 2)], workers=1)
    assert out.interrupted and [r.seed for r in out.records] == [0]


def test_json_keeps_every_curve_and_thins_weights(tmp_path: Path) -> None:
    runs = [_record("grpo", s, 4, [[0.1, 0.2], [0.2, 0.3], [0.3, 0.4]]) for s in (0, 1)]
    write_json(tmp_path / "r.json", ["a", "b"], {"x": 1}, Outcome(runs), summarize(runs), record_every=3)
    doc = json.loads((tmp_path / "r.json").read_text())
    run = doc["methods"]["grpo"]["runs"][1]
    assert run["record_steps"] == [0, 3] and len(run["weights"]) == 2 and run["rollouts_at_evals"] == [0, 64, 128]
    assert doc["methods"]["grpo"]["summary"]["worst"]["mean"] == pytest.approx(0.3) and doc["settings"] == {"x": 1}


def test_figure_with_many_tasks_draws_quantiles(tmp_path: Path) -> None:
    k = 13
    acc = np.linspace(0.1, 0.5, 3 * k).reshape(3, k).tolist()
    plot_curves(tmp_path / "f.png", [f"t{j}" for j in range(k)], [_record("grpo", 0, 4, acc, k=k)], "many")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_figure_title_is_wrapped_to_the_figure_width() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtgrpo_backends.harness.plots import fit_title

    title = "tiny3: 120 steps per run from one warm start (1050 warm-up steps); held-out accuracy " * 2
    for width_in in (3.6, 8.8):  # the demo's figure with one method and with three
        fig = plt.figure(figsize=(width_in, 6.6))
        text = fit_title(fig, title.strip(), fontsize=10)
        assert text.get_window_extent().width <= fig.bbox.width
        assert text.get_text().split() == title.split() and "\n" in text.get_text()
        plt.close(fig)
    fig = plt.figure(figsize=(8.8, 6.6))
    assert fit_title(fig, "tiny3: short", fontsize=10).get_text() == "tiny3: short"
    plt.close(fig)
