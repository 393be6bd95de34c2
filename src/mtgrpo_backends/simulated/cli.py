"""`mtgrpo bench`: compare weighting methods on a simulated suite through the real controller (no torch)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Literal

from mtgrpo_backends.harness.compare import compare
from mtgrpo_backends.options import (
    Flat,
    HarnessOptions,
    RuleOptions,
    SelectionOptions,
    at_least,
    checked_sampler,
    chosen_methods,
    method_refusal,
    parse,
    run_command,
    unset,
)
from mtgrpo_backends.simulated.bench import DEFAULT_METHODS, SimulatedRunner
from mtgrpo_backends.simulated.suites import load_suite
from mtgrpo_core.settings import SamplerSettings

PROG = "mtgrpo bench"
SUITES = unset("the suite's")
DESCRIPTION = (
    "Run methods x seeds on a simulated multi-task policy through the real MT-GRPO controller; print the summary "
    "table (equal steps and equal generation budget), and with --out write results.json and figures."
)


@dataclass(frozen=True)
class BenchArgs:
    """`mtgrpo bench`; run settings left unset take the suite's defaults."""

    suite: str = "paper3"
    """built-in suite (paper3, paper9, scale300, scale1000, paper3-pool, paper9-pool) or a suite .json file"""
    steps: Annotated[int | None, SUITES] = None
    """training steps per run"""
    batch_size: Annotated[int | None, SUITES] = None
    """B: prompts (groups) per training batch"""
    group_size: Annotated[int | None, SUITES] = None
    """N: rollouts per prompt"""
    eval_every: Annotated[int | None, SUITES] = None
    """held-out accuracy after step 1 and every this many steps"""
    improvement_reduce: Literal["mean", "sum"] | None = None
    """I_k over task k's samples: mean or sum (reference code); unset: each method's own (mean; the reference
    presets sum, and refuse the other)"""
    filter: Literal["lenient", "strict"] = "lenient"
    """zero-gradient filter of every method that filters: lenient (all-equal rewards) or strict (all-correct or
    all-wrong, as the paper's 3-task runs); GRPO's methods stay unfiltered, --sampler.filtering sets all"""
    harness: Annotated[HarnessOptions, Flat] = field(
        default_factory=lambda: HarnessOptions(workers=min(2, os.cpu_count() or 1))
    )
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    rule: RuleOptions = field(default_factory=RuleOptions)
    selection: SelectionOptions = field(default_factory=SelectionOptions)


def run_bench(args: BenchArgs) -> int:
    """Body of `mtgrpo bench`; returns the exit code (130 when interrupted, after reporting finished runs)."""
    suite = load_suite(args.suite)
    if args.selection.skip != "none" and suite.pool_sizes is None:
        raise ValueError(
            f"--selection.skip {args.selection.skip}: suite {suite.name!r} draws fresh prompts; expected a suite with "
            "a finite prompt pool (paper3-pool, paper9-pool, or pool_size on every task of a suite file)"
        )
    d = suite.defaults
    steps = at_least("steps", d.steps if args.steps is None else args.steps, 1)
    batch_size = at_least("batch_size", d.batch_size if args.batch_size is None else args.batch_size, 1)
    group_size = at_least("group_size", d.group_size if args.group_size is None else args.group_size, 2)
    eval_every = at_least("eval_every", d.record_every if args.eval_every is None else args.eval_every, 1)
    args.harness.check()
    sampler = checked_sampler(args.sampler)
    max_rounds = sampler.get("max_rounds", d.max_rounds)  # an explicit --sampler.max-rounds stays in sampler
    methods, swept = chosen_methods(args.harness, DEFAULT_METHODS)
    args.harness.reference_for(methods)
    seeds = list(args.harness.seeds) or list(range(d.seeds))
    families = {} if suite.families is None else {"families": list(suite.families)}
    args.rule.check(methods, suite.num_tasks, families)
    runner = SimulatedRunner(
        suite,
        steps,
        batch_size,
        group_size,
        max_rounds,
        eval_every,
        sampler,
        args.rule,
        args.improvement_reduce,
        filter=args.filter,
        skip=args.selection.skip,
        selection=args.selection.config(),
    )
    for m in methods:  # refuse what cannot be built (a user's rule that does not import) before any run starts
        try:
            runner.controller(m, 0)
        except (TypeError, ValueError) as err:
            raise method_refusal(m, sampler, err) from None
    title = (
        f"suite {suite.name} ({suite.num_tasks} tasks), {steps} steps, B={batch_size}, N={group_size}, "
        f"N_rs={max_rounds}, {args.filter} filter"
        + (f", skip {args.selection.skip}" if args.selection.skip != "none" else "")
    )
    settings = {
        "suite": suite.name,
        "suite_source": args.suite,
        "steps": steps,
        "batch_size": batch_size,
        "group_size": group_size,
        "max_rounds": max_rounds,
        "eval_every": eval_every,
        "improvement_reduce": args.improvement_reduce,
        "filter": args.filter,
        "selection": asdict(args.selection),
        "sampler": sampler,
        "rule": args.rule.given(),
        "harness": {k: v for k, v in asdict(args.harness).items() if k not in ("out", "quiet")},
    }
    return compare(
        runner, methods, seeds, args.harness, suite.task_names, title, settings, swept, record_every=eval_every
    )


def main(argv: Sequence[str]) -> int:
    """Entry point of `mtgrpo bench`."""
    return run_command(PROG, lambda: run_bench(parse(BenchArgs, argv, PROG, DESCRIPTION)))
