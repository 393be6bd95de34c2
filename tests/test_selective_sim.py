"""Finite prompt pools in the simulator: prompts keep their difficulty, the pool suites, skipping in bench runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.special import expit

from mtgrpo_backends.cli import main
from mtgrpo_backends.simulated import bench
from mtgrpo_backends.simulated.policy import zero_gradient_probability
from mtgrpo_backends.simulated.pool_feed import Skip
from mtgrpo_backends.simulated.suites import SuiteError, load_suite, suite_from_dict

N = 8


def test_pool_prompts_keep_their_own_difficulty_as_skill_moves() -> None:
    suite = load_suite("paper3-pool")
    policy = suite.policy(seed=0, group_size=N)
    assert policy.pool_task.size == 30_000 and np.bincount(policy.pool_task).tolist() == [10_000] * 3
    rows = np.array([5, 10_003, 29_999, 5])
    first = policy.generate_rows(rows)
    order = np.argsort(first.prompt, kind="stable")
    assert sorted(first.prompt.tolist()) == sorted(rows.tolist())
    policy.skill = policy.skill + 3.0  # a much better policy
    later = policy.generate_rows(rows)
    back = np.argsort(later.prompt, kind="stable")
    np.testing.assert_array_equal(later.offset[back], first.offset[order])  # the same prompts, the same offsets
    np.testing.assert_array_equal(later.solvable[back], first.solvable[order])
    np.testing.assert_allclose(
        later.prob[back], expit(policy.skill[later.task[back]] + later.offset[back]) * later.solvable[back]
    )
    arc = np.flatnonzero(policy.pool_task == 2)
    p = policy.informative_probability(arc, "strict")
    impossible = ~policy._pool_solvable[arc]
    assert 0.1 < impossible.mean() < 0.2 and (p[impossible] == 0).all()  # an impossible prompt stays impossible
    prob = expit(policy.skill[2] + policy._pool_offset[arc]) * ~impossible
    np.testing.assert_allclose(p, 1 - zero_gradient_probability(prob, N, policy.format_rate[2], "strict"))
    expected = policy.expected_rewards(arc[:50])
    assert expected.shape == (50, N) and np.allclose((expected == 1.0).mean(axis=1), np.round(prob[:50] * N) / N)


def test_pool_suites_are_the_paper_suites_with_a_finite_pool() -> None:
    for name, size in (("paper3", 10_000), ("paper9", 25_000)):
        base, pooled = load_suite(name), load_suite(f"{name}-pool")
        assert pooled.tasks == base.tasks and np.array_equal(pooled.transfer, base.transfer)
        assert pooled.pool_sizes == (size,) * base.num_tasks and base.pool_sizes is None
    data = json.loads((Path(bench.__file__).parent / "suites" / "paper3-pool.json").read_text())
    data["tasks"][1].pop("pool_size")
    with pytest.raises(
        SuiteError, match=r"tasks: expected pool_size on every task or on none, got it on \['countdown', 'arc'\]"
    ):
        suite_from_dict(data)
    data["tasks"][1]["pool_size"] = 0
    with pytest.raises(SuiteError, match=r"tasks\[1\].pool_size: input should be greater than or equal to 1"):
        suite_from_dict(data)


def _runner(skip: Skip, suite: str = "paper3-pool", steps: int = 12, **kw: Any) -> bench.SimulatedRunner:
    return bench.SimulatedRunner(
        load_suite(suite), steps, batch_size=16, group_size=N, max_rounds=3, filter="strict", skip=skip, **kw
    )


def test_strict_filter_reaches_the_methods_that_filter_only() -> None:
    runner = _runner("none")
    assert runner.controller("dapo", 0).sampler.config.filtering == "strict"
    assert runner.controller("mt-grpo:0.2", 0).sampler.config.filtering == "strict"
    assert runner.controller("grpo", 0).sampler.config.filtering == "none"
    assert _runner("none", sampler={"filtering": "lenient"}).controller("dapo", 0).sampler.config.filtering == "lenient"


@pytest.mark.parametrize("skip", ["none", "history", "oracle"])
def test_pool_runs_are_deterministic_and_report_their_skips(skip: Skip) -> None:
    runner = _runner(skip, steps=60)
    a, b = runner("mt-grpo:0.2", 1), runner("mt-grpo:0.2", 1)
    for field in ("accuracy", "weights", "rounds", "generated"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.metrics["gen/used"] == pytest.approx(a.generated.sum() / a.trained.sum())
    assert a.log is not None and sum(a.log["handed_out"]) == a.generated.sum()
    if skip == "none":
        assert set(a.metrics) == {"gen/used", "steps/h", "mean age"} and sum(a.log["skipped"]) == 0
    else:
        assert {"retried", "skipped/out", "skip error"} <= set(a.metrics)


def test_skipping_needs_a_finite_pool(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"skip='history' needs a suite with a finite prompt pool"):
        _runner("history", suite="paper3")
    assert main(["bench", "--steps", "2", "--selection.skip", "oracle", "--quiet"]) == 2
    assert "--selection.skip oracle: suite 'paper3' draws fresh prompts" in capsys.readouterr().err
    args = ["bench", "--suite", "paper3-pool", "--steps", "2", "--quiet", "--selection.skip", "history"]
    assert main([*args, "--selection.min-retry", "2"]) == 2
    assert "--selection.min-retry 2.0: min_retry must be in [0.0, 1.0], got 2.0" in capsys.readouterr().err
    assert main([*args, "--selection.max-skips", "0"]) == 2  # as SelectionConfig(max_skips=0) in every backend
    assert "--selection.max-skips 0: max_skips must be >= 1, got 0" in capsys.readouterr().err


def test_bench_cli_runs_a_pool_suite_with_skipping(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--suite", "paper3-pool", "--steps", "8", "--seeds", "0", "--methods", "mt-grpo:0.2,dapo"]
    assert (
        main([*args, "--filter", "strict", "--selection.skip", "history", "--selection.max-skips", "3", "--quiet"]) == 0
    )
    text = capsys.readouterr().out
    assert "strict filter, skip history" in text and "gen/used" in text and "skip error" in text
