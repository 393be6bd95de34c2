"""MT-GRPO inside TRL's GRPOTrainer on the paper's task suite (Countdown, Zebra puzzles, ARC-1D).

GPU, the paper's 3-task setting (medium difficulty), e.g. on 2 GPUs:
    accelerate launch --multi_gpu --num_processes 2 examples/trl_mtgrpo.py --model Qwen/Qwen2.5-3B-Instruct
CPU smoke run (a tiny randomly initialised GPT-2 and a character tokenizer built locally, a few steps):
    python examples/trl_mtgrpo.py --cpu-smoke
A random model never writes \\boxed{...}, so under the paper's reward every group is zero-gradient and dynamic
sampling spends its whole round budget (the worst case). `--toy-reward` swaps in a reward that a random policy
earns sometimes (first character of the completion in a set that shrinks with the level) so that groups are informative.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import string
import time
from typing import Any

from transformers import TrainerCallback

from mtgrpo_backends.trl import PAPER_TASKS_3, MTGRPOConfig, MTGRPOTrainer, build_dataset, paper_reward
from mtgrpo_backends.trl.tiny_model import build_char_tokenizer, build_tiny_model

SMOKE_TASKS = ("countdown-easy", "zebra-easy", "arc1d-easy")


def toy_reward(completions: list[str], task: list[str], **_: Any) -> list[float]:
    """1.0 when the completion starts with one of the first 50% (easy), 30% (medium), 10% (hard) printable chars."""
    share = {"easy": 0.5, "medium": 0.3, "hard": 0.1}
    allowed = [string.printable[: int(share[t.split("-")[1]] * len(string.printable))] for t in task]
    return [float(c[:1] != "" and c[:1] in a) for c, a in zip(completions, allowed, strict=True)]


class StepClock(TrainerCallback):
    """Wall-clock time between optimizer steps: generation, resampling, update and the I_k pass included."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.stamps:
            self.stamps.append(time.perf_counter())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.stamps.append(time.perf_counter())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="Qwen/Qwen2.5-3B-Instruct", help="policy (the paper: Qwen2.5-3B)")
    p.add_argument("--method", default="mt-grpo:0.2", help="'mt-grpo:0.2' (paper), 'dapo', 'grpo', 'sec-dapo', ...")
    p.add_argument(
        "--improvement", default="surrogate", help="I_k: 'surrogate' (Eq. 8, one extra forward) or 'reward-change'"
    )
    p.add_argument("--tasks", nargs="+", default=list(PAPER_TASKS_3), help="task names, e.g. zebra-hard")
    p.add_argument("--train-size", type=int, default=10_000, help="prompts per task (paper: 10k)")
    p.add_argument("--max-steps", type=int, default=720, help="paper: 720")
    p.add_argument("--max-rounds", type=int, default=None, help="N_rs (paper: 10 for 3 tasks, 2 for 9)")
    p.add_argument("--per-device-batch", type=int, default=64, help="rollouts per device per step (ours)")
    p.add_argument("--num-generations", type=int, default=8, help="rollouts per prompt (ours)")
    p.add_argument("--learning-rate", type=float, default=1e-6, help="policy learning rate (ours)")
    p.add_argument("--max-completion-length", type=int, default=1024, help="(ours)")
    p.add_argument("--cache-dir", default=None, help="cache generated puzzles here (5x5 Zebra is slow)")
    p.add_argument("--output-dir", default="runs/trl_mtgrpo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny local model on CPU, a few steps")
    p.add_argument("--toy-reward", action="store_true", help="with --cpu-smoke: a reward a random policy can earn")
    return p.parse_args()


def main() -> None:
    a = parse_args()
    max_rounds = a.max_rounds if a.max_rounds is not None else (10 if len(a.tasks) <= 3 else 2)
    common: dict[str, Any] = {
        "output_dir": a.output_dir,
        "method": a.method,
        "improvement": a.improvement,
        "seed": a.seed,
        "max_rounds": max_rounds,
        # the paper's settings: M_os = 3, M_acc = 5, multinomial targets, IWU with AdamW (lr 0.025, weight decay
        # 1e-5 for 3 tasks, 1e-4 for 9), I_k clipped to 0.2, clip-higher [1 - 0.2, 1 + 0.28], no KL term
        "oversample": 3.0,
        "max_inflation": 5.0,
        "targets": "multinomial",
        "rule_kwargs": {"lr": 0.025, "weight_decay": 1e-5 if len(a.tasks) <= 3 else 1e-4, "improvement_clip": 0.2}
        if a.method.startswith(("mt-grpo", "iwu-only"))
        else None,
        "epsilon": 0.2,
        "epsilon_high": 0.28,
        "beta": 0.0,
        "loss_type": "dapo",
        "logging_steps": 1,
        "report_to": [],
    }
    if a.cpu_smoke:
        tokenizer = build_char_tokenizer(string.printable)
        model: Any = build_tiny_model(tokenizer)
        tasks = list(SMOKE_TASKS) if a.tasks == list(PAPER_TASKS_3) else a.tasks
        dataset = build_dataset(tasks, size=8, seed=a.seed, chat=False, cache_dir=a.cache_dir)
        config = MTGRPOConfig(
            **{**common, "max_rounds": a.max_rounds if a.max_rounds is not None else 2},
            per_device_train_batch_size=4 * len(tasks),
            num_generations=4,
            max_completion_length=16,
            max_steps=a.max_steps if a.max_steps != 720 else 4,
            learning_rate=1e-3,
            use_cpu=True,
            bf16=False,
            save_strategy="no",
            disable_tqdm=True,
            gradient_checkpointing=False,
        )
    else:
        tokenizer, model = None, a.model
        dataset = build_dataset(a.tasks, size=a.train_size, seed=a.seed, chat=True, cache_dir=a.cache_dir)
        config = MTGRPOConfig(
            **common,
            per_device_train_batch_size=a.per_device_batch,
            num_generations=a.num_generations,
            max_completion_length=a.max_completion_length,
            max_steps=a.max_steps,
            learning_rate=a.learning_rate,
            bf16=True,
            gradient_checkpointing=True,
            save_steps=100,
        )
    reward = toy_reward if a.cpu_smoke and a.toy_reward else paper_reward
    clock = StepClock()
    trainer = MTGRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    trainer.train()
    if trainer.accelerator.is_main_process:
        logs = [h for h in trainer.state.log_history if "mtgrpo/rounds" in h]
        walls = [t1 - t0 for t0, t1 in itertools.pairwise(clock.stamps)]
        summary = {
            "method": a.method,
            "steps": len(logs),
            "wall_s_per_step_after_first": round(statistics.mean(walls[1:] or walls), 3),
            "mean_rounds": round(statistics.mean(h["mtgrpo/rounds"] for h in logs), 2),
            "final_weights": dict(zip(trainer.task_names, trainer.controller.weights.round(4).tolist(), strict=True)),
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
