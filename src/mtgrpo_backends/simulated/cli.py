"""`mtgrpo bench`: compare weighting methods on a simulated suite through the real controller."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from mtgrpo_backends.simulated import bench
from mtgrpo_backends.simulated.suites import SuiteError, builtin_suites, load_suite

SWEEP_KNOBS = ("lambda",)


def add_parser(subparsers: Any) -> None:
    """Register the `bench` subcommand."""
    p = subparsers.add_parser(
        "bench",
        help="compare task-weighting methods on a simulated multi-task policy",
        description="Run methods x seeds on a simulated suite through the real MT-GRPO controller; print a table, "
        "optionally write all curves (--json) and a figure (--plot).",
    )
    p.add_argument("--suite", default="paper3", help=f"built-in suite {builtin_suites()} or a suite .json path")
    p.add_argument(
        "--methods",
        default=None,
        help="comma list of methods (e.g. grpo,dapo,mt-grpo:0.2) or module:Class for your own WeightingRule "
        "(built as Class(num_tasks), run with the ratio-preserving sampler); default "
        + ",".join(bench.DEFAULT_METHODS),
    )
    p.add_argument("--seeds", type=int, default=None, help="number of seeds 0..S-1 (suite default)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (suite default)")
    p.add_argument("--batch-size", type=int, default=None, help="prompts per batch B (suite default)")
    p.add_argument("--group-size", type=int, default=None, help="rollouts per prompt N (suite default)")
    p.add_argument("--max-rounds", type=int, default=None, help="resampling rounds N_rs (suite default)")
    p.add_argument("--record-every", type=int, default=None, help="keep curves every this many steps")
    p.add_argument("--reference", default="dapo", help="method that Delta_m%% is measured against (default dapo)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--json", default=None, help="write all curves and the summary to this JSON file")
    p.add_argument("--plot", default=None, help="write a PNG: curves per method, or the trade-off with --sweep")
    p.add_argument(
        "--sweep",
        default=None,
        help="lambda=0.05,0.1,...: run mt-grpo at each lambda (plus --methods, default grpo,dapo) and plot "
        "worst-task vs average accuracy",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_bench)


def _error(message: str) -> int:
    print(f"mtgrpo bench: error: {message}", file=sys.stderr)
    return 2


def _parse_sweep(text: str) -> list[str]:
    knob, sep, values = text.partition("=")
    if not sep or knob.strip() not in SWEEP_KNOBS:
        raise ValueError(f"--sweep must look like lambda=0.05,0.1 (knobs: {list(SWEEP_KNOBS)}), got {text!r}")
    try:
        lams = [float(x) for x in values.split(",") if x.strip()]
    except ValueError as err:
        raise ValueError(f"--sweep values must be numbers, got {values!r}") from err
    if not lams:
        raise ValueError(f"--sweep needs at least one value, got {text!r}")
    return [f"mt-grpo:{x:g}" for x in lams]


def _positive(name: str, value: int | None, default: int, minimum: int = 1) -> int:
    chosen = default if value is None else value
    if chosen < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {chosen}")
    return chosen


def run_bench(args: argparse.Namespace) -> int:
    """Body of `mtgrpo bench`; returns the exit code (130 when interrupted, after saving finished runs)."""
    try:
        suite = load_suite(args.suite)
        d = suite.defaults
        spec_args = {
            "steps": _positive("--steps", args.steps, d.steps),
            "batch_size": _positive("--batch-size", args.batch_size, d.batch_size),
            "group_size": _positive("--group-size", args.group_size, d.group_size, minimum=2),
            "max_rounds": _positive("--max-rounds", args.max_rounds, d.max_rounds, minimum=0),
            "record_every": _positive("--record-every", args.record_every, d.record_every),
        }
        seeds = _positive("--seeds", args.seeds, d.seeds)
        listed = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
        swept = _parse_sweep(args.sweep) if args.sweep else []
        methods = list(dict.fromkeys(swept + (listed or (["grpo", "dapo"] if swept else list(bench.DEFAULT_METHODS)))))
        probe = bench.RunSpec(methods[0], 0, **spec_args)
        for m in methods:  # refuse unknown names before any run starts
            bench.build_controller(m, suite.num_tasks, probe)
    except (SuiteError, ValueError, TypeError) as err:
        return _error(str(err))
    specs = [bench.RunSpec(m, s, **spec_args) for m in methods for s in range(seeds)]
    print(
        f"suite {suite.name} ({suite.num_tasks} tasks), {len(methods)} method(s) x {seeds} seed(s), "
        f"{spec_args['steps']} steps, B={spec_args['batch_size']}, N={spec_args['group_size']}, "
        f"N_rs={spec_args['max_rounds']}, {args.workers} worker(s)",
        flush=True,
    )
    started = time.perf_counter()
    bar = _progress(len(specs) * spec_args["steps"], args.no_progress)
    try:
        outcome = bench.run_many(suite, specs, args.workers, bar.update if bar is not None else None)
    except ValueError as err:
        return _error(str(err))
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - started
    reference = args.reference if args.reference in methods else None
    if outcome.interrupted:
        print(f"interrupted: {len(outcome.results)} of {len(specs)} runs finished; reporting those only")
    if not outcome.results:
        return 130 if outcome.interrupted else 0
    summary = bench.summarize(outcome.results, reference)
    print(bench.format_table(summary, suite.task_names, reference))
    print(f"wall time {wall:.1f} s")
    settings = {
        **spec_args,
        "suite_source": str(args.suite),
        "methods": methods,
        "seeds": seeds,
        "workers": args.workers,
        "reference": reference,
        "wall_s": round(wall, 2),
        "command": "mtgrpo " + " ".join(sys.argv[1:]),
    }
    if args.json:
        bench.write_json(args.json, suite, settings, outcome, summary)
        print(f"wrote {args.json}" + (" (finished runs only: interrupted)" if outcome.interrupted else ""))
    if args.plot:
        if swept:
            bench.plot_sweep(args.plot, summary, [m for m in swept if m in summary])
        else:
            bench.plot_curves(args.plot, suite, outcome.results)
        print(f"wrote {args.plot}")
    return 130 if outcome.interrupted else 0


def _progress(total: int, disabled: bool) -> Any:
    if disabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", smoothing=0.05, file=sys.stderr)
