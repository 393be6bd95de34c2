"""Two REAL processes (torchrun, gloo, GRPOConfig(use_cpu=True)) train MTGRPOTrainer with dynamic sampling.

Run as a script, this file is the worker: each rank writes what it decided and what reached its loss. The test
checks that both ranks logged the same weights, drew the same batches and trained disjoint slices of them. In
"resume" mode each rank trains with `steps_per_generation=2`, then resumes a second trainer from the checkpoint
inside the first generation batch (each rank restores its own slice of the buffered batch) and compares. One
torchrun launch runs both modes, one after the other in the same two processes (a launch costs two interpreters
importing torch, transformers and TRL); each test checks the records of its mode.
(`accelerate launch --cpu --num_processes 2` would silently run ONE process: torchrun is used instead.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

GROUP = 4
STEPS = 3
TIMEOUT_S = 360  # both modes in one launch


def _worker(out_dir: str, *modes: str) -> None:
    import torch
    from datasets import Dataset

    from mtgrpo_backends.trl import MTGRPOConfig, MTGRPOTrainer
    from mtgrpo_backends.trl.tiny_model import build_char_tokenizer, build_tiny_model

    letters = "abcdefghij"
    solving = {"easy": 5, "mid": 3, "hard": 1}
    tasks = ("easy", "hard", "mid")

    def reward(completions: list[str], task: list[str], **_: Any) -> list[float]:
        return [float(c[:1] != "" and c[:1] in letters[: solving[t]]) for c, t in zip(completions, task, strict=True)]

    class Worker(MTGRPOTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.trained: list[dict[str, Any]] = []
            self.draws: list[list[int]] = []
            self.weights_after: list[list[float]] = []

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            out = super()._generate_and_score_completions(inputs)
            assert self.last_batch is not None
            self.draws.append([int(k) for k in self.last_batch.keys])
            return out

        def _after_optimizer_step(self) -> None:
            super()._after_optimizer_step()
            self.weights_after.append(self.controller.weights.tolist())

        def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
            trained = inputs["completion_mask"].sum(dim=1) > 0
            self.trained.append(
                {
                    "step": len(self.draws) - 1,
                    "rows": inputs["mtgrpo_row"][trained].tolist(),
                    "num_items": int(inputs["num_items_in_batch"]),
                    "local_items": int(inputs["completion_mask"].sum()),
                }
            )
            return super()._compute_loss(model, inputs)

    tokenizer = build_char_tokenizer(letters)
    dataset = Dataset.from_list([{"prompt": letters[i % 7] * 3 + str(i % 10), "task": tasks[i % 3]} for i in range(60)])

    def make(output_dir: str, **overrides: Any) -> Worker:
        torch.manual_seed(0)
        settings: dict[str, Any] = {
            "output_dir": output_dir,
            "method": "mt-grpo:0.2",
            "per_device_train_batch_size": 8,
            "num_generations": GROUP,
            "max_completion_length": 6,
            "max_steps": STEPS,
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
        model = build_tiny_model(tokenizer)
        return Worker(
            model=model,
            reward_funcs=reward,
            args=MTGRPOConfig(**settings),
            train_dataset=dataset,
            processing_class=tokenizer,
        )

    if "train" in modes:
        trainer = make(out_dir)
        trainer.train()
        rank = trainer.accelerator.process_index
        weights = [[h[f"mtgrpo/weight/{t}"] for t in tasks] for h in trainer.state.log_history if "loss" in h]
        record: dict[str, Any] = {
            "world": trainer.accelerator.num_processes,
            "weights": weights,
            "final": trainer.controller.weights.tolist(),
            "draws": trainer.draws,
            "trained": trainer.trained,
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    if "resume" in modes:
        settings = {"steps_per_generation": 2, "per_device_train_batch_size": 4}
        first = make(str(Path(out_dir, "a")), save_strategy="steps", save_steps=1, **settings)
        first.train()
        second = make(str(Path(out_dir, "b")), **settings)
        second.train(resume_from_checkpoint=str(Path(out_dir, "a", "checkpoint-1")))
        params = dict(first.model.named_parameters())
        diff = max(float((p - params[n]).abs().max()) for n, p in second.model.named_parameters())
        resumed = {
            "world": first.accelerator.num_processes,
            "weights": [first.weights_after, second.weights_after],
            "draws": [first.draws, second.draws],
            "max_param_diff": diff,
        }
        Path(out_dir, f"resume{first.accelerator.process_index}.json").write_text(json.dumps(resumed))


def _torchrun(tmp_path: Path, *modes: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(tmp_path),
        *modes,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s:\n{log.decode()[-3000:]}")
    assert proc.returncode == 0, log.decode()[-3000:]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder where one launch of both modes left each rank's records (and the resume mode's checkpoints)."""
    out = tmp_path_factory.mktemp("trl_distributed")
    _torchrun(out, "train", "resume")
    return out


def test_two_processes_agree_on_weights_and_train_disjoint_slices(records: Path) -> None:
    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["weights"] == ranks[1]["weights"] and len(ranks[0]["weights"]) == STEPS
    assert ranks[0]["final"] == ranks[1]["final"]
    assert ranks[0]["weights"][-1] != [1 / 3] * 3
    assert ranks[0]["draws"] == ranks[1]["draws"]  # the same groups chosen on both ranks
    for step, draw in enumerate(ranks[0]["draws"]):
        assert len(draw) == 4  # B = 2 processes x 8 rows / 4 rollouts
        slices = [[row for t in r["trained"] if t["step"] == step for row in t["rows"]] for r in ranks]
        assert len(slices[0]) == len(slices[1]) == 8
        assert not set(slices[0]) & set(slices[1])
        assert sorted(slices[0] + slices[1]) == sorted(g * GROUP + j for g in draw for j in range(GROUP))
        items = [t for r in ranks for t in r["trained"] if t["step"] == step]
        assert len({t["num_items"] for t in items}) == 1  # the global token count, the same on both ranks
        assert items[0]["num_items"] == sum(t["local_items"] for t in items)


def test_two_processes_resume_inside_a_generation_batch_exactly(records: Path) -> None:
    ranks = [json.loads((records / f"resume{r}.json").read_text()) for r in (0, 1)]
    for r in (0, 1):  # the checkpoint holds each rank's slice of the generation batch it was saved inside
        assert (records / "a" / "checkpoint-1" / f"mtgrpo_generation_batch_rank{r}.pt").exists()
    assert [r["world"] for r in ranks] == [2, 2]
    for r in ranks:
        uninterrupted, resumed = r["weights"]
        assert len(uninterrupted) == STEPS and resumed == uninterrupted[1:]  # the controller after steps 2, 3
        first_draws, resumed_draws = r["draws"]
        assert resumed_draws == first_draws[1:]  # the batch inside which it resumed is not drawn again
        assert r["max_param_diff"] == 0.0  # each rank restored its own slice of the buffered batch
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["draws"] == ranks[1]["draws"]


if __name__ == "__main__":
    _worker(sys.argv[1], *sys.argv[2:])
