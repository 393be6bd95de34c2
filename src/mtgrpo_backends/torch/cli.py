"""`mtgrpo train`: one run of the reference loop on a built-in suite, from a warm-started policy."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from mtgrpo_backends.harness import Outcome, plot_curves, summarize, write_json
from mtgrpo_backends.harness.compare import FIGURE, RESULTS
from mtgrpo_backends.options import Flat, RuleOptions, SamplerOptions, check_methods, parse, run_command, unset
from mtgrpo_backends.torch.cli_common import TorchOptions, checked_config, eval_line, record_from_state, warm_start
from mtgrpo_backends.torch.config import TrainConfig, TrainSettings
from mtgrpo_backends.torch.loop import train
from mtgrpo_backends.torch.state import TrainState
from mtgrpo_backends.torch.tasks import CharTokenizer, Suite, get_suite

PROG = "mtgrpo train"
DESCRIPTION = "Train a small policy on a built-in suite with one method, from a warm-started policy."


@dataclass
class TrainArgs:
    """`mtgrpo train`."""

    suite: str = "tiny3"
    """task suite: tiny3 or tiny9"""
    method: str = "mt-grpo:0.2"
    """controller method, e.g. grpo, dapo, sec-dapo, mt-grpo:0.2, or module:Class"""
    seed: int = 0
    """seed of the controller, prompt sampling and generation"""
    train: Annotated[TrainSettings, Flat] = field(default_factory=TrainSettings)
    sampler: SamplerOptions = field(default_factory=SamplerOptions)
    rule: RuleOptions = field(default_factory=RuleOptions)
    warm: Annotated[TorchOptions, Flat] = field(default_factory=TorchOptions)
    out: Annotated[Path | None, unset("write nothing")] = None
    """write results.json (with the full log) and figure.png in this directory"""
    checkpoint: Annotated[Path | None, unset("none")] = None
    """save a checkpoint here at every evaluation"""
    resume: Annotated[Path | None, unset("none")] = None
    """resume from this checkpoint"""
    quiet: bool = False
    """no progress bar and no evaluation lines"""


def _train(config: TrainConfig, model: torch.nn.Module, suite: Suite, args: TrainArgs) -> TrainState:
    """train() with a progress bar and one line per evaluation, unless --quiet."""
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, desc=f"{config.method} seed {config.seed}", unit="step", leave=False)
    printed = 0

    def on_step(state: TrainState, row: dict[str, Any]) -> None:
        nonlocal printed
        if bar is None:
            return
        bar.n = state.step
        bar.set_postfix(rounds=row["rounds"], w=np.round(row["weights"], 2).tolist(), refresh=True)
        while printed < len(state.evals):
            bar.write(eval_line(suite, state.evals[printed]))
            printed += 1

    state = train(
        config, model, suite, CharTokenizer(), checkpoint=args.checkpoint, resume=args.resume, on_step=on_step
    )
    if bar is not None:
        bar.close()
    return state


def run_train(args: TrainArgs) -> int:
    """Body of `mtgrpo train`."""
    args.warm.check()
    suite, tokenizer = get_suite(args.suite), CharTokenizer()
    sampler = args.sampler.check(args.train.batch_size, args.train.group_size)
    args.rule.check([args.method], suite.num_tasks)
    rule = args.rule.kwargs_for(args.method)
    config = checked_config(
        args.train, suite=args.suite, method=args.method, seed=args.seed, sampler=sampler, rule=rule
    )
    check_methods([args.method], suite.num_tasks, config.batch_size, config.group_size, sampler, args.rule)
    torch.set_num_threads(args.warm.threads)
    warm = warm_start(args.warm, suite, tokenizer, args.quiet)
    t0 = time.perf_counter()
    state = _train(config, warm.model, suite, args)
    record = record_from_state(config, state, time.perf_counter() - t0, keep_log=True)
    print(eval_line(suite, state.evals[-1]))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        settings = {
            "suite": suite.name,
            "config": asdict(config),
            "warmup_steps": warm.steps,
            "warmup_probe_accuracy": warm.probe_accuracy,
            "command": " ".join(["mtgrpo", *sys.argv[1:]]),
        }
        outcome = Outcome([record])
        write_json(args.out / RESULTS, suite.task_names, settings, outcome, summarize([record], None))
        plot_curves(args.out / FIGURE, suite.task_names, [record], f"{suite.name}: {config.method}, seed {config.seed}")
        print(f"wrote {RESULTS}, {FIGURE} in {args.out}")
    return 0


def main(argv: Sequence[str]) -> int:
    """Entry point of `mtgrpo train`."""
    return run_command(PROG, lambda: run_train(parse(TrainArgs, argv, PROG, DESCRIPTION)))
