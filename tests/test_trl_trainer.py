"""MTGRPOTrainer: a real TRL GRPOTrainer on CPU with a tiny locally built model and a char-level tokenizer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset

from mtgrpo_backends.trl import MTGRPOConfig, MTGRPOTrainer
from mtgrpo_backends.trl.batch_assembly import take_rows
from mtgrpo_backends.trl.tiny_model import build_char_tokenizer, build_tiny_model
from mtgrpo_backends.trl.trainer import STATE_FILE, check_trl_version
from mtgrpo_core.sampling.sampler import Batch

TASKS = ("easy", "hard", "mid")
LETTERS = "abcdefghij"
# a completion is correct when its first character is among the task's first letters: a random tiny policy
# solves "easy" often and "hard" rarely, so the tasks' zero-gradient rates differ as in the paper
SOLVING_LETTERS = {"easy": 5, "mid": 3, "hard": 1}
GROUP = 4


def toy_dataset(tasks: tuple[str, ...] = TASKS, rows: int = 60) -> Dataset:
    return Dataset.from_list(
        [{"prompt": LETTERS[i % 7] * 3 + str(i % 10), "task": tasks[i % len(tasks)]} for i in range(rows)]
    )


def toy_reward(completions: list[str], task: list[str], **_: Any) -> list[float]:
    return [
        1.0 if c[:1] and c[:1] in LETTERS[: SOLVING_LETTERS[t]] else 0.0 for c, t in zip(completions, task, strict=True)
    ]


class Recorder(MTGRPOTrainer):
    """Records what reaches the loss, each step's batch and the controller after each weight update."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[Batch] = []
        self.states_before: list[dict[str, Any]] = []
        self.loss_inputs: list[dict[str, Any]] = []
        self.weights_after: list[np.ndarray] = []
        self.states_after: list[dict[str, Any]] = []

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self.states_before.append(self.controller.state_dict())
        out = super()._generate_and_score_completions(inputs)
        assert self.last_batch is not None
        self.batches.append(self.last_batch)
        return out

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        keys = ("mtgrpo_row", "mtgrpo_task", "completion_mask", "advantages", "num_items_in_batch")
        if "mtgrpo_row" in inputs:  # a training batch (evaluation batches are TRL's own)
            self.loss_inputs.append({"step": len(self.batches) - 1, **{k: inputs[k].clone() for k in keys}})
        return super()._compute_loss(model, inputs)

    def _after_optimizer_step(self) -> None:
        super()._after_optimizer_step()
        self.weights_after.append(self.controller.weights)
        self.states_after.append(self.controller.state_dict())


def make_trainer(
    out: Path,
    method: str = "mt-grpo-paper:0.2",  # the paper's Algorithm 2 (the lean default: test_trl_carry.py)
    dataset: Dataset | None = None,
    reward: Any = toy_reward,
    recorder: type[Recorder] = Recorder,
    eval_dataset: Dataset | None = None,
    **overrides: Any,
) -> Recorder:
    tokenizer = build_char_tokenizer(LETTERS)
    torch.manual_seed(0)
    settings: dict[str, Any] = {
        "output_dir": str(out),
        "method": method,
        "per_device_train_batch_size": 16,
        "num_generations": GROUP,
        "max_completion_length": 6,
        "max_steps": 3,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "bf16": False,
        "seed": 0,
        "disable_tqdm": True,
        "gradient_checkpointing": False,
        **overrides,
    }
    return recorder(
        model=build_tiny_model(tokenizer),
        reward_funcs=reward,
        args=MTGRPOConfig(**settings),
        train_dataset=toy_dataset() if dataset is None else dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Recorder:
    """MT-GRPO for 4 steps with dynamic sampling and a generous round budget, checkpoints every 2 steps."""
    trainer = make_trainer(tmp_path_factory.mktemp("mtgrpo"), max_steps=4, save_strategy="steps", save_steps=2)
    trainer.train()
    return trainer


def test_weights_change_and_stay_a_distribution(run: Recorder) -> None:
    assert len(run.weights_after) == 4
    for z in run.weights_after:
        assert z.shape == (3,) and (z >= 0).all() and math.isclose(z.sum(), 1.0, abs_tol=1e-9)
    assert np.abs(run.weights_after[-1] - 1 / 3).max() > 1e-4


def test_each_batch_is_drawn_with_that_steps_weights(run: Recorder) -> None:
    np.testing.assert_array_equal(run.batches[0].report.weights, np.full(3, 1 / 3))
    for step in range(1, 4):
        np.testing.assert_array_equal(run.batches[step].report.weights, run.weights_after[step - 1])


def test_every_group_reaching_the_loss_has_reward_spread(run: Recorder) -> None:
    checked = 0
    for record in run.loss_inputs:
        batch = run.batches[record["step"]]
        spread = {key: np.ptp(np.asarray(r)) for key, r in zip(batch.keys, batch.rewards, strict=True)}
        trained = record["completion_mask"].sum(dim=1) > 0
        for row in record["mtgrpo_row"][trained].tolist():
            assert spread[row // GROUP] > 0
            checked += 1
    assert checked == 4 * 16  # B = 4 groups of 4 rollouts each step, none masked


def test_realized_counts_match_targets_when_supply_suffices(run: Recorder) -> None:
    for batch in run.batches:
        report = batch.report
        assert not report.budget_exhausted and len(batch) == 4
        np.testing.assert_array_equal(report.realized_counts, report.target_counts)
    tasks_in_loss = torch.cat([r["mtgrpo_task"] for r in run.loss_inputs]).numpy()
    realized = sum(b.report.realized_counts for b in run.batches) * GROUP
    np.testing.assert_array_equal(np.bincount(tasks_in_loss, minlength=3), realized)


def test_per_task_metrics_reach_the_trainer_logs(run: Recorder) -> None:
    logged = [h for h in run.state.log_history if "loss" in h]
    assert len(logged) == 4
    for name in TASKS:
        for metric in ("weight", "reward", "accuracy", "filtered_ratio", "batch_share", "improvement"):
            assert f"mtgrpo/{metric}/{name}" in logged[-1]
    assert logged[-1]["mtgrpo/rounds"] >= 1 and logged[-1]["mtgrpo/shortfall_groups"] == 0
    for h in logged:
        assert math.isclose(sum(h[f"mtgrpo/batch_share/{t}"] for t in TASKS), 1.0)


def test_resume_restores_the_controller_state(run: Recorder) -> None:
    out = Path(str(run.args.output_dir))
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / STATE_FILE).exists()
    resumed = make_trainer(out / "resumed", max_steps=4)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert _same(resumed.states_before[0], run.states_after[1])  # restored exactly as saved after step 2
    assert _same(resumed.states_before[0], run.states_before[2])
    # and training continues exactly as without the interruption (TRL restores the model, optimizer and RNGs)
    assert [list(b.keys) for b in resumed.batches] == [list(b.keys) for b in run.batches[2:]]
    assert _same(resumed.states_after[-1], run.states_after[3])


def test_round_budget_running_out_trains_on_accepted_groups_and_logs_shortfall(tmp_path: Path) -> None:
    # one request of B prompts, no resampling
    trainer = make_trainer(tmp_path, sampler={"max_rounds": 0, "oversample": 1.0})
    trainer.train()
    short = [len(b) < 4 for b in trainer.batches]
    assert any(short) and trainer.state.global_step == 3
    shortfalls = [h["mtgrpo/shortfall_groups"] for h in trainer.state.log_history if "loss" in h]
    assert shortfalls == [4 - len(b) for b in trainer.batches]
    for record in trainer.loss_inputs:
        batch = trainer.batches[record["step"]]
        chosen = torch.tensor([k in set(batch.keys) for k in (record["mtgrpo_row"] // GROUP).tolist()])
        mask_sums = record["completion_mask"].sum(dim=1)
        assert (mask_sums[~chosen] == 0).all() and (record["advantages"][~chosen] == 0).all()
        assert (mask_sums[chosen] > 0).all()
        assert int(record["num_items_in_batch"]) == int(mask_sums.sum())
    # a value that does not exist is left out of the log, never logged as None or NaN
    logged = [h for h in trainer.state.log_history if "loss" in h]
    for h in logged:
        assert all(v is not None and math.isfinite(v) for k, v in h.items() if k.startswith("mtgrpo/"))
    untrained = [
        (h, name)
        for h, batch in zip(logged, trainer.batches, strict=True)
        for k, name in enumerate(TASKS)
        if batch.report.generated[k] > 0 and batch.report.realized_counts[k] == 0
    ]
    assert untrained  # some task had rollouts but no trained sample: a reward, but no improvement
    for h, name in untrained:
        assert f"mtgrpo/reward/{name}" in h and f"mtgrpo/improvement/{name}" not in h


def test_grpo_generates_exactly_the_targets_without_filtering(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, method="grpo", max_steps=2)
    trainer.train()
    for batch in trainer.batches:
        assert batch.report.rounds == 1 and int(batch.report.generated.sum()) == 4 and len(batch) == 4
        np.testing.assert_array_equal(batch.report.realized_counts, batch.report.target_counts)
    assert all(int(r["completion_mask"].sum(dim=1).gt(0).sum()) == 16 for r in trainer.loss_inputs)


def test_reward_change_fallback_and_sec_rule_update_weights(tmp_path: Path) -> None:
    for method, improvement in (("mt-grpo:0.2", "reward-change"), ("sec-dapo", "surrogate")):
        trainer = make_trainer(tmp_path / method, method=method, improvement=improvement, max_steps=2)
        trainer.train()
        assert np.abs(trainer.weights_after[-1] - 1 / 3).max() > 1e-4
        assert math.isclose(trainer.weights_after[-1].sum(), 1.0)


def test_bad_input_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no task column 'task'"):
        make_trainer(tmp_path, dataset=toy_dataset().remove_columns("task"))
    with pytest.raises(ValueError, match="holds 'mid' at row 2, which is not in tasks"):
        make_trainer(tmp_path, tasks=["easy", "hard"])
    with pytest.raises(ValueError, match="per-task quotas do not fit"):
        make_trainer(tmp_path, per_device_train_batch_size=8)
    with pytest.raises(ValueError, match="method must be one of"):
        make_trainer(tmp_path, method="mt-grpo-fast")
    with pytest.raises(ValueError, match="scale_rewards"):
        make_trainer(tmp_path, scale_rewards="batch")

    def nan_for_hard(completions: list[str], task: list[str], **_: Any) -> list[float]:
        return [math.nan if t == "hard" else 0.0 for t in task]

    with pytest.raises(ValueError, match=r"no finite reward for rollout \d+ \(task 'hard'"):
        make_trainer(tmp_path, reward=nan_for_hard).train()
    with pytest.raises(ImportError, match=r"trl>=1.16.0,<1.17.0.*found trl 1.15.2"):
        check_trl_version("1.15.2")
    check_trl_version("1.16.0")


def test_take_rows_repads_prompts_left_and_completions_right() -> None:
    a = {
        "prompt_ids": torch.tensor([[5, 6], [7, 8]]),
        "prompt_mask": torch.ones(2, 2, dtype=torch.long),
        "completion_ids": torch.tensor([[1], [2]]),
        "completion_mask": torch.ones(2, 1, dtype=torch.long),
        "advantages": torch.tensor([0.5, -0.5]),
        "num_items_in_batch": torch.tensor(2),
    }
    b = {
        "prompt_ids": torch.tensor([[9]]),
        "prompt_mask": torch.ones(1, 1, dtype=torch.long),
        "completion_ids": torch.tensor([[3, 4, 4]]),
        "completion_mask": torch.tensor([[1, 1, 0]]),
        "advantages": torch.tensor([1.0]),
        "num_items_in_batch": torch.tensor(2),
    }
    rows = take_rows([a, b], [(1, 0), (0, 1)], pad_token_id=0)
    assert rows["prompt_ids"].tolist() == [[0, 9], [7, 8]]
    assert rows["prompt_mask"].tolist() == [[0, 1], [1, 1]]
    assert rows["completion_ids"].tolist() == [[3, 4, 4], [2, 0, 0]]
    assert rows["completion_mask"].tolist() == [[1, 1, 0], [1, 0, 0]]
    assert rows["advantages"].tolist() == [1.0, -0.5]
    with pytest.raises(NotImplementedError, match="pixel_values"):
        take_rows([{**a, "pixel_values": torch.zeros(2)}], [(0, 0)], pad_token_id=0)


def _same(a: Any, b: Any) -> bool:
    """Deep equality of state dicts holding numpy arrays."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple, np.ndarray)):
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    return bool(a == b)


def test_the_tiny_model_seed_fixes_its_weights_and_leaves_the_global_generator() -> None:
    tokenizer = build_char_tokenizer(LETTERS)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first, again, other = (build_tiny_model(tokenizer, seed=s) for s in (7, 7, 8))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator is untouched
    weights = [m.transformer.wte.weight for m in (first, again, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
