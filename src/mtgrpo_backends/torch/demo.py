"""`mtgrpo demo`: methods x seeds of the reference loop from one warm start, through the shared harness.

The torch backend supplies only `DemoRunner`: one method with one seed (a TrainConfig, the warm-started weights,
`train`). Worker processes are spawned (torch's threads do not survive fork) and run with 1 thread each.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch

from mtgrpo_backends.harness.compare import compare, need_matplotlib
from mtgrpo_backends.harness.record import RunRecord
from mtgrpo_backends.options import (
    Flat,
    HarnessOptions,
    RuleOptions,
    check_methods,
    checked_sampler,
    chosen_methods,
    parse,
    run_command,
)
from mtgrpo_backends.torch.cli_common import TorchOptions, check_device, checked_config, record_from_state, warm_start
from mtgrpo_backends.torch.config import TrainSettings
from mtgrpo_backends.torch.loop import train
from mtgrpo_backends.torch.model import CharGPT
from mtgrpo_backends.torch.state import make_controller, make_training_set
from mtgrpo_backends.torch.tasks import CharTokenizer, get_suite
from mtgrpo_core.settings import SamplerSettings, SelectionSettings

PROG = "mtgrpo demo"
DESCRIPTION = "Compare methods x seeds of the reference loop on a built-in suite, every run from one warm start."
DEMO_METHODS = ("grpo", "dapo", "mt-grpo:0.2")


@dataclass(frozen=True)
class DemoRunner:
    """The harness's Runner for the torch backend: one RL run from the warm start (picklable, spawned workers)."""

    suite: str
    settings: TrainSettings
    sampler: Mapping[str, Any]
    rule: RuleOptions
    warm: Mapping[str, Any]  # {"config": CharGPTConfig, "weights": state_dict}
    threads: int = 1
    selection: SelectionSettings | None = None  # TrainConfig.selection (needs settings.pool_size > 0)
    start_method: Literal["fork", "spawn"] = "spawn"

    @property
    def steps(self) -> int:
        return self.settings.steps

    def __call__(self, method: str, seed: int, on_step: Callable[[], None] | None = None) -> RunRecord:
        torch.set_num_threads(self.threads)
        config = checked_config(
            self.settings,
            suite=self.suite,
            method=method,
            seed=seed,
            sampler=dict(self.sampler),
            rule=self.rule.kwargs_for(method),
            selection=self.selection,
        )
        model = CharGPT(self.warm["config"])
        model.load_state_dict(self.warm["weights"])
        t0 = time.perf_counter()
        tick = (lambda state, row: on_step()) if on_step is not None else None
        state = train(config, model, get_suite(self.suite), CharTokenizer(), on_step=tick)
        return record_from_state(config, state, time.perf_counter() - t0)


@dataclass
class DemoArgs:
    """`mtgrpo demo`."""

    suite: str = "tiny3"
    """task suite: tiny3 or tiny9"""
    train: Annotated[TrainSettings, Flat] = field(default_factory=lambda: TrainSettings(steps=120, eval_every=20))
    harness: Annotated[HarnessOptions, Flat] = field(default_factory=lambda: HarnessOptions(out=Path("mtgrpo-demo")))
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    rule: RuleOptions = field(default_factory=RuleOptions)
    warm: Annotated[TorchOptions, Flat] = field(default_factory=TorchOptions)


def run_demo(args: DemoArgs) -> int:
    """Body of `mtgrpo demo`; returns the exit code (130 when interrupted, after reporting finished runs)."""
    args.warm.check()
    args.harness.check()
    check_device(args.train)
    need_matplotlib(args.harness)
    suite, tokenizer = get_suite(args.suite), CharTokenizer()
    methods, swept = chosen_methods(args.harness, DEMO_METHODS)
    args.harness.reference_for(methods)
    seeds = list(args.harness.seeds) or [0]
    sampler = checked_sampler(args.sampler)
    args.rule.check(methods, suite.num_tasks)
    config = checked_config(args.train, suite=args.suite, sampler=sampler)
    make_training_set(config, suite, make_controller(config, suite))  # refuses a --pool-size the suite lacks
    check_methods(methods, suite.num_tasks, args.train.batch_size, args.train.group_size, sampler, args.rule)
    torch.set_num_threads(args.warm.threads)
    warm = warm_start(args.warm, suite, tokenizer, args.harness.quiet)
    runner = DemoRunner(
        suite=suite.name,
        settings=args.train,
        sampler=sampler,
        rule=args.rule,
        warm={"config": warm.model.config, "weights": warm.model.state_dict()},
        threads=args.warm.threads if args.harness.workers == 1 else 1,
    )
    t = args.train.eval_temperature  # at 0 the evaluation decodes greedily, one completion per prompt
    scoring = "greedy, 1 sample" if t == 0 else f"at temperature {t:g}, {args.train.eval_samples} samples"
    title = (
        f"{suite.name}: {args.train.steps} steps per run from one warm start ({warm.steps} warm-up steps); held-out "
        f"accuracy {scoring} x {suite.eval_size} prompts per task"
    )
    settings = {
        "suite": suite.name,
        "train": dataclasses.asdict(args.train),
        "sampler": sampler,
        "rule": args.rule.given(),
        "warmup_seed": args.warm.warmup_seed,
        "warmup_steps": warm.steps,
        "warmup_probe_accuracy": warm.probe_accuracy,
    }
    return compare(runner, methods, seeds, args.harness, suite.task_names, title, settings, swept)


def main(argv: Sequence[str]) -> int:
    """Entry point of `mtgrpo demo`."""
    return run_command(PROG, lambda: run_demo(parse(DemoArgs, argv, PROG, DESCRIPTION)))
