"""MT-GRPO inside TRL's GRPOTrainer on the paper's task suite (Countdown, Zebra puzzles, ARC-1D).

GPU, the paper's 3-task setting (medium difficulty), e.g. on 2 GPUs:
    accelerate launch --multi_gpu --num_processes 2 examples/trl_mtgrpo.py --model Qwen/Qwen2.5-3B-Instruct
The reference code's data and scoring (raw-text prompts for a base model; docs/fidelity.md):
    accelerate launch --multi_gpu --num_processes 2 examples/trl_mtgrpo.py --model Qwen/Qwen2.5-3B --suite reference
CPU smoke run (a tiny randomly initialised GPT-2 and a character tokenizer built locally, a few steps):
    python examples/trl_mtgrpo.py --cpu-smoke
A random model never writes \\boxed{...}, so under the paper's reward every group is zero-gradient and dynamic
sampling spends its whole round budget (the worst case). `--toy-reward` swaps in a reward that a random policy
earns sometimes (first character of the completion in a set that shrinks with the level) so that groups are informative.

Flags: TRL's own settings keep GRPOConfig's names (--max-steps, --per-device-train-batch-size, --num-generations,
--learning-rate, --max-completion-length); ours are the same as `mtgrpo train` (--method, --seed, --sampler.*,
--rule.*, --improvement-reduce, --out, --quiet). See docs/options.md.
"""

from __future__ import annotations

import itertools
import json
import statistics
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transformers import TrainerCallback

from mtgrpo_backends.options import (
    Names,
    RuleOptions,
    SelectionOptions,
    checked_sampler,
    parse,
    rule_parameters,
    run_command,
)
from mtgrpo_backends.trl import PAPER_TASKS_3, MTGRPOConfig, MTGRPOTrainer, build_dataset, paper_reward
from mtgrpo_backends.trl.rewards import reference_reward
from mtgrpo_backends.trl.tiny_model import build_char_tokenizer, build_tiny_model
from mtgrpo_core.methods import parse_method
from mtgrpo_core.settings import SamplerSettings

SMOKE_TASKS = ("countdown-easy", "zebra-easy", "arc1d-easy")


@dataclass
class ExampleArgs:
    """examples/trl_mtgrpo.py."""

    model: str = "Qwen/Qwen2.5-3B-Instruct"
    """policy (the paper: Qwen2.5-3B)"""
    method: str = "mt-grpo:0.2"
    """controller method: mt-grpo:0.2 (paper), dapo, grpo, sec-dapo, ..."""
    seed: int = 0
    """seed of the controller, data, TRL and (with --cpu-smoke) the tiny model's initial weights"""
    improvement: Literal["surrogate", "reward-change"] = "surrogate"
    """I_k: surrogate (Eq. 8, one extra forward pass) or reward-change"""
    improvement_reduce: Literal["mean", "sum"] | None = None
    """I_k over task k's samples: mean or sum (the reference code's); unset: the method's own"""
    tasks: Names = PAPER_TASKS_3
    """task names, e.g. zebra-hard (with --cpu-smoke the default is the easy level)"""
    suite: Literal["paper", "reference"] = "paper"
    """prompts and scoring: paper (chat prompts, 1/0.1/0) or reference (the reference code's raw-text prompts and
    its train scoring; use a base model)"""
    train_size: int = 10_000
    """prompts per task (paper: 10k)"""
    max_steps: int = 720
    """TRL: optimizer steps (paper: 720)"""
    per_device_train_batch_size: int = 64
    """TRL: rollouts per device per step"""
    num_generations: int = 8
    """TRL: rollouts per prompt (N)"""
    learning_rate: float = 1e-6
    """TRL: policy learning rate"""
    max_completion_length: int = 1024
    """TRL: completion tokens"""
    cache_dir: Path | None = None
    """cache generated puzzles here (5x5 Zebra is slow)"""
    out: Path = Path("runs/trl_mtgrpo")
    """TRL's output_dir; results.json (the run's summary) is written here"""
    quiet: bool = False
    """no progress bar"""
    cpu_smoke: bool = False
    """tiny local model on CPU, a few steps"""
    toy_reward: bool = False
    """with --cpu-smoke: a reward a random policy can earn"""
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    rule: RuleOptions = field(default_factory=RuleOptions)
    selection: SelectionOptions = field(default_factory=SelectionOptions)


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


def controller_settings(a: ExampleArgs, tasks: list[str], batch_size: int, group_size: int) -> dict[str, Any]:
    """MTGRPOConfig's controller fields: the paper's settings (N_rs 10 for 3 tasks and 2 for 9; with the paper's
    planner also M_os = 3, M_acc = 5, multinomial targets; IWU with AdamW, lr 0.025, weight decay 1e-5 for 3 tasks
    and 1e-4 for 9, I_k clipped to 0.2), overridden by --sampler.* and --rule.*. The lean default planner (joint
    planner with carry-over) keeps its own caps."""
    paper_rounds = 2 if a.cpu_smoke else (10 if len(tasks) <= 3 else 2)
    spec = parse_method(a.method)
    sampler: dict[str, Any] = {"max_rounds": paper_rounds}
    if spec.preset is None and spec.sampler_settings.get("planner", "paper") == "paper":
        sampler.update({"oversample": 3.0, "max_inflation": 5.0, "targets": "multinomial"})
    sampler.update(checked_sampler(a.sampler))
    a.rule.check([a.method], len(tasks))
    takes = rule_parameters(a.method)
    rule = {"weight_decay": 1e-5 if len(tasks) <= 3 else 1e-4} if takes is None or "weight_decay" in takes else {}
    rule.update(a.rule.kwargs_for(a.method))
    return {"sampler": sampler, "rule_kwargs": rule or None}


def run(a: ExampleArgs) -> int:
    tasks = list(SMOKE_TASKS) if a.cpu_smoke and a.tasks == PAPER_TASKS_3 else list(a.tasks)
    common: dict[str, Any] = {
        "output_dir": str(a.out),
        "method": a.method,
        "improvement": a.improvement,
        "improvement_reduce": a.improvement_reduce,
        "seed": a.seed,
        "epsilon": 0.2,  # clip-higher [1 - 0.2, 1 + 0.28], no KL term, as in the paper
        "epsilon_high": 0.28,
        "beta": 0.0,
        "loss_type": "dapo",
        "logging_steps": 1,
        "report_to": [],
        "disable_tqdm": a.quiet or a.cpu_smoke,
    }
    if a.cpu_smoke:
        tokenizer = build_char_tokenizer(string.printable)
        model: Any = build_tiny_model(tokenizer, seed=a.seed)
        dataset = build_dataset(tasks, size=8, seed=a.seed, chat=False, cache_dir=a.cache_dir, suite=a.suite)
        n, per_device = 4, 4 * len(tasks)
        trl_settings: dict[str, Any] = {
            "max_steps": a.max_steps if a.max_steps != 720 else 4,
            "max_completion_length": 16,
            "learning_rate": 1e-3,
            "use_cpu": True,
            "bf16": False,
            "save_strategy": "no",
            "gradient_checkpointing": False,
        }
    else:
        tokenizer, model = None, a.model
        dataset = build_dataset(tasks, size=a.train_size, seed=a.seed, cache_dir=a.cache_dir, suite=a.suite)
        n, per_device = a.num_generations, a.per_device_train_batch_size
        trl_settings = {
            "max_steps": a.max_steps,
            "max_completion_length": a.max_completion_length,
            "learning_rate": a.learning_rate,
            "bf16": True,
            "gradient_checkpointing": True,
            "save_steps": 100,
        }
    controller = controller_settings(a, tasks, max(1, per_device // n), n)
    config = MTGRPOConfig(
        **common,
        **controller,
        **trl_settings,
        per_device_train_batch_size=per_device,
        num_generations=n,
        selection=None if (chosen := a.selection.trainer_settings()) is None else chosen.given(),
    )
    clock = StepClock()
    reward = reference_reward if a.suite == "reference" else paper_reward
    trainer = MTGRPOTrainer(
        model=model,
        reward_funcs=toy_reward if a.cpu_smoke and a.toy_reward else reward,
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
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "results.json").write_text(json.dumps(summary))
        print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    prog = "examples/trl_mtgrpo.py"
    args = sys.argv[1:] if argv is None else argv
    about = "MT-GRPO inside TRL's GRPOTrainer on the paper's tasks (the script's docstring shows GPU and CPU runs)."
    return run_command(prog, lambda: run(parse(ExampleArgs, args, prog, about)))


if __name__ == "__main__":
    raise SystemExit(main())
