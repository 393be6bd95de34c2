"""The simulated policy, the suites and `mtgrpo bench` end to end (through the real controller)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from mtgrpo_backends.cli import main
from mtgrpo_backends.simulated import bench
from mtgrpo_backends.simulated.policy import SimulatedPolicy, TaskModel, zero_gradient_probability
from mtgrpo_backends.simulated.suites import (
    SuiteError,
    builtin_suites,
    load_suite,
    population_accuracy,
    skill_for_accuracy,
    suite_from_dict,
)
from mtgrpo_core.advantages import zero_gradient_mask

N = 8


def _policy(seed: int = 0, transfer: list[list[float]] | None = None, speed: float = 0.05) -> SimulatedPolicy:
    tasks = [
        TaskModel("easy", skill=0.5, spread=1.0, unsolvable=0.05, format_rate=0.6, speed=speed),
        TaskModel("hard", skill=-3.0, spread=4.0, unsolvable=0.2, format_rate=0.4, speed=speed),
    ]
    return SimulatedPolicy(tasks, transfer, group_size=N, seed=seed)


def _within(empirical: float, expected: float, n: int, sigmas: float = 4.0) -> bool:
    return bool(abs(empirical - expected) <= sigmas * np.sqrt(max(expected * (1 - expected), 1e-4) / n))


@pytest.mark.parametrize("filter_name", ["strict", "lenient"])
def test_empirical_zero_gradient_rate_matches_formula(filter_name: Literal["strict", "lenient"]) -> None:
    policy = _policy()
    n = 20_000
    groups = policy.generate([n, n])
    zero = zero_gradient_mask(groups.rewards, filter=filter_name)
    for k in range(2):
        mine = groups.task == k
        expected = zero_gradient_probability(groups.prob[mine], N, policy.format_rate[k], filter_name).mean()
        assert _within(float(zero[mine].mean()), float(expected), n), (k, zero[mine].mean(), expected)
    # heterogeneity matters: the rate exceeds what all prompts at the mean accuracy would give
    hard = groups.task == 1
    at_mean = zero_gradient_probability(groups.prob[hard].mean(), N)
    assert zero_gradient_mask(groups.rewards[hard], filter="strict").mean() > at_mean + 0.2


def test_rewards_follow_the_papers_protocol() -> None:
    policy = _policy()
    groups = policy.generate([5000, 5000])
    r = groups.rewards
    assert set(np.unique(r).tolist()) == {0.0, 0.1, 1.0}
    np.testing.assert_array_equal(r == 1.0, groups.correct)
    assert not groups.correct[~groups.solvable].any()  # unsolvable prompts are never solved
    for k in range(2):
        wrong = ~groups.correct & (groups.task == k)[:, None]
        rate = float((r[wrong] == 0.1).mean())
        assert _within(rate, float(policy.format_rate[k]), int(wrong.sum()))
        solvable = groups.solvable[groups.task == k]
        assert _within(1 - float(solvable.mean()), policy.tasks[k].unsolvable, solvable.size)


def test_only_informative_batch_groups_teach_and_transfer_spreads() -> None:
    policy = _policy(transfer=[[1.0, 0.0], [-0.5, 1.0]])
    groups = policy.generate([400, 0])
    zero = zero_gradient_mask(groups.rewards, filter="lenient")
    before = policy.skill.copy(), policy.format_logit.copy()
    advantage, _, after = policy.train_step(groups.take(np.flatnonzero(zero)))
    np.testing.assert_array_equal(policy.skill, before[0])
    np.testing.assert_array_equal(policy.format_logit, before[1])
    np.testing.assert_array_equal(advantage, 0.0)
    np.testing.assert_array_equal(after, 0.0)
    advantage, _, after = policy.train_step(groups.take(np.flatnonzero(~zero)))
    gain = policy.skill - before[0]
    assert gain[0] > 0
    assert gain[1] == pytest.approx(-0.5 * gain[0])  # negative transfer from task 0 to task 1
    assert (after - advantage).sum() > 0  # the surrogate improved on the trained groups


def test_heldout_accuracy_is_the_expected_accuracy_of_a_fixed_set() -> None:
    a, b = _policy(seed=3), _policy(seed=3)
    np.testing.assert_array_equal(a.heldout_accuracy(), b.heldout_accuracy())
    acc = a.heldout_accuracy()
    assert abs(acc[0] - 0.95 * population_accuracy(0.5, 1.0)) < 0.05  # 200 held-out prompts
    a.skill = a.skill + 1.0
    assert (a.heldout_accuracy() > acc).all()


def test_solved_suite_task_reproduces_its_observables() -> None:
    suite = load_suite("paper3")
    raw = json.loads((Path(bench.__file__).parent / "suites" / "paper3.json").read_text())
    policy = suite.policy(seed=0, group_size=N)
    n = 20_000
    for k, spec in enumerate(raw["tasks"]):
        task = suite.tasks[k]
        start = policy.generate(np.eye(len(suite.tasks), dtype=np.int64)[k] * n)
        assert _within(float(start.correct.mean()), spec["start_accuracy"], n * N // 20)
        policy.skill[k] = skill_for_accuracy(spec["observed_at_accuracy"] / spec["ceiling_accuracy"], task.spread)
        seen = policy.generate(np.eye(len(suite.tasks), dtype=np.int64)[k] * n)
        strict = zero_gradient_mask(seen.rewards, filter="strict").mean()
        assert _within(float(strict), spec["zero_gradient_rate"], n), (spec["name"], strict)


def test_runs_are_deterministic_per_seed() -> None:
    suite = load_suite("paper3")
    runner = bench.SimulatedRunner(suite, steps=15, batch_size=16, group_size=N, max_rounds=3)
    a, b = runner("mt-grpo:0.2", 1), runner("mt-grpo:0.2", 1)
    for field in ("accuracy", "weights", "shares", "rounds", "generated"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    c = runner("mt-grpo:0.2", 2)
    assert not np.array_equal(a.weights, c.weights)


def _suite_dict() -> dict[str, Any]:
    return {
        "name": "mine",
        "observed_group_size": 8,
        "tasks": [
            {"name": "a", "start_accuracy": 0.2, "zero_gradient_rate": 0.3, "observed_at_accuracy": 0.5,
             "ceiling_accuracy": 0.9, "format_rate": 0.5, "learning_speed": 0.05},
            {"name": "b", "start_accuracy": 0.1, "zero_gradient_rate": 0.7, "observed_at_accuracy": 0.4,
             "ceiling_accuracy": 0.8, "format_rate": 0.5, "learning_speed": 0.1},
        ],
    }  # fmt: skip


_DROP = object()


@pytest.mark.parametrize(
    ("task", "field", "value", "message"),
    [
        (0, "zero_gradinet_rate", 0.3, r"tasks\[0\].zero_gradinet_rate: unknown field \(value 0.3\); allowed"),
        (1, "learning_speed", _DROP, r"tasks\[1\].learning_speed: missing required field"),
        (0, "zero_gradient_rate", 0.05, r"tasks\[0\].zero_gradient_rate: 0.05 is unreachable"),
        (0, "start_accuracy", 0.95, r"tasks\[0\].start_accuracy: 0.95 must lie in"),
        (1, "format_rate", "high", r"tasks\[1\].format_rate: input should be a valid number, got 'high'"),
        (1, "name", "a", r"tasks: expected distinct task names, got duplicate name\(s\) \['a'\]"),
        (None, "transfer", [[1, 0.2], [0.1, 0.5]], r"transfer: expected 1 on the diagonal .*\[1\]\[1\] = 0.5"),
        (None, "transfer", [[1, 0.2]], r"transfer: expected a 2 x 2"),
        (None, "defaults", {"steps": 0}, r"defaults.steps: input should be greater than or equal to 1, got 0"),
        (None, "recipe", {}, r"exactly one of 'tasks'"),
    ],
)
def test_suite_loader_names_the_field_and_the_problem(
    task: int | None, field: str, value: object, message: str
) -> None:
    data = _suite_dict()
    target = data if task is None else data["tasks"][task]
    if value is _DROP:
        del target[field]
    else:
        target[field] = value
    with pytest.raises(SuiteError, match=message):
        suite_from_dict(data)


def test_suite_files_and_names(tmp_path: Path) -> None:
    assert {"paper3", "paper9", "scale300", "scale1000"} <= set(builtin_suites())
    assert load_suite("paper9").num_tasks == 9
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(_suite_dict()))
    assert load_suite(str(path)).task_names == ["a", "b"]
    with pytest.raises(ValueError, match=r"suite must be one of \['paper3', 'paper3-pool', 'paper9', 'paper9-pool'"):
        load_suite("paper4")
    path.write_text("{not json")
    with pytest.raises(SuiteError, match="not valid JSON"):
        load_suite(str(path))


def test_recipe_suite_generates_its_tasks() -> None:
    recipe = {
        "num_tasks": 12, "seed": 1, "family_size": 4, "start_accuracy": [0.1, 0.4],
        "zero_gradient_excess": [0.0, 0.5], "ceiling_accuracy": [0.7, 0.95], "format_rate": [0.3, 0.9],
        "learning_speed": [0.5, 2.0], "transfer_within": 0.1, "transfer_across": -0.01,
    }  # fmt: skip
    suite = suite_from_dict({"name": "gen", "observed_group_size": 8, "recipe": recipe})
    assert suite.num_tasks == 12
    assert suite.transfer[0, 1] == 0.1 and suite.transfer[0, 4] == -0.01 and suite.transfer[5, 5] == 1.0
    accuracy = suite.policy(0, N).heldout_accuracy()
    assert ((accuracy > 0.02) & (accuracy < 0.5)).all()


_USER_RULES = """
import numpy as np
from mtgrpo_core.weighting.rules import UniformRule

class Tilted(UniformRule):
    '''A user's rule: fixed weights tilted to the last task.'''
    @property
    def weights(self):
        z = np.arange(1.0, self.num_tasks + 1)
        return z / z.sum()

class Broken(UniformRule):
    '''Returns weights off the simplex from its third update on.'''
    calls = 0
    def update(self, signals):
        Broken.calls += 1
        return self.weights if Broken.calls < 3 else np.full(self.num_tasks, 0.5)
    @property
    def weights(self):
        return np.full(self.num_tasks, 0.5) if Broken.calls >= 3 else super().weights

class Interrupting(UniformRule):
    '''Presses Ctrl-C at step 5 of the second run that gets there.'''
    reached = 0
    def __init__(self, num_tasks):
        super().__init__(num_tasks)
        self.step = 0
    def update(self, signals):
        self.step += 1
        if self.step == 5:
            Interrupting.reached += 1
            if Interrupting.reached == 2:
                raise KeyboardInterrupt
        return self.weights
"""


@pytest.fixture
def user_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_rules.py").write_text(textwrap.dedent(_USER_RULES))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_rules", None)
    return "my_rules"


def _bench(*args: str) -> int:
    return main(["bench", "--suite", "paper3", "--steps", "12", "--quiet", *args])


def test_bench_cli_end_to_end(tmp_path: Path, user_rules: str, capsys: pytest.CaptureFixture[str]) -> None:
    methods = f"grpo,dapo,mt-grpo:0.2,{user_rules}:Tilted"
    code = _bench("--seeds", "0,1", "--methods", methods, "--workers", "2", "--out", str(tmp_path))
    assert code == 0
    text = capsys.readouterr().out
    assert "worst %" in text and "Δm% vs dapo" in text and "my_rules:Tilted" in text and "worst %@budget" in text
    assert "equal budget: 3,072 generated rollouts (the fewest of any run: grpo, seed 0)" in text
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["interrupted"] is False and doc["task_names"] == ["countdown", "zebra", "arc"]
    assert list(doc["methods"]) == methods.split(",") and doc["settings"]["seeds"] == [0, 1]
    run = doc["methods"]["mt-grpo:0.2"]["runs"][1]
    assert run["seed"] == 1 and len(run["final_accuracy"]) == 3
    assert run["worst"] == pytest.approx(min(run["final_accuracy"]), abs=1e-4)
    assert np.array(run["weights"]).shape == (12, 3) and np.array(run["shares"]).shape == (12, 3)
    assert len(run["rounds"]) == 12 and min(run["rounds"]) >= 0 and max(run["rounds"]) >= 1  # 0: all carried
    grpo = doc["methods"]["grpo"]["runs"][0]
    assert grpo["rounds"] == [1] * 12  # no filtering: one request per step
    assert grpo["rollouts_at_evals"][-1] == 12 * 32 * 8 == doc["budget"]["rollouts"]
    budget = doc["methods"]["dapo"]["summary"]["budget"]  # dapo generates 3x: its budget point is step 4
    assert budget["step"]["mean"] == 4 and run["rollouts_at_evals"][4] <= doc["budget"]["rollouts"]
    tilted = np.array(doc["methods"]["my_rules:Tilted"]["runs"][0]["weights"])
    np.testing.assert_allclose(tilted, np.tile([1 / 6, 2 / 6, 3 / 6], (12, 1)), atol=1e-4)
    assert (tmp_path / "figure.png").stat().st_size > 1000


def test_bench_cli_sweep_writes_the_tradeoff_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _bench("--seeds", "0", "--sweep", "lambda=0.1,1.2", "--workers", "1", "--out", str(tmp_path)) == 0
    text = capsys.readouterr().out
    assert "mt-grpo:0.1" in text and "mt-grpo:1.2" in text and "dapo" in text
    assert (tmp_path / "sweep.png").stat().st_size > 1000 and (tmp_path / "figure.png").exists()
    assert _bench("--sweep", "eta=0.1") == 2
    assert "knobs: ['lambda']" in capsys.readouterr().err


def test_bench_cli_bad_names_list_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert _bench("--methods", "grpo,mt-grpo-typo") == 2
    assert "method must be one of ['grpo', 'dapo'," in capsys.readouterr().err
    assert main(["bench", "--suite", "paper99"]) == 2
    suites = "['paper3', 'paper3-pool', 'paper9', 'paper9-pool', 'scale1000', 'scale300']"
    assert f"suite must be one of {suites}" in capsys.readouterr().err
    assert _bench("--methods", "no_such_module:Rule") == 2
    assert "rule 'no_such_module:Rule': cannot import 'Rule' from 'no_such_module'" in capsys.readouterr().err


def test_user_rule_with_invalid_weights_is_reported_with_its_step(
    user_rules: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _bench("--seeds", "0", "--methods", f"{user_rules}:Broken", "--workers", "1") == 2
    err = capsys.readouterr().err
    assert "method 'my_rules:Broken', seed 0, step 2:" in err and "invalid weights after step 2" in err


def test_interrupt_keeps_finished_runs(tmp_path: Path, user_rules: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = _bench(
        "--seeds", "0,1,2", "--methods", f"{user_rules}:Interrupting", "--workers", "1", "--out", str(tmp_path)
    )
    assert code == 130
    text = capsys.readouterr().out
    assert "interrupted: 1 of 3 runs finished" in text and "(finished runs only: interrupted)" in text
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["interrupted"] is True
    assert [r["seed"] for r in doc["methods"][f"{user_rules}:Interrupting"]["runs"]] == [0]
