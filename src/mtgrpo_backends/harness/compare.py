"""One comparison, methods x seeds, for any backend: run, print the table, write results.json and the figures."""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Sequence
from typing import Any

from mtgrpo_backends.harness.plots import plot_curves, plot_sweep
from mtgrpo_backends.harness.pool import run_many
from mtgrpo_backends.harness.progress import Progress
from mtgrpo_backends.harness.record import Runner
from mtgrpo_backends.harness.report import format_table, write_json
from mtgrpo_backends.harness.summary import summarize
from mtgrpo_backends.options import DEFAULT_REFERENCE, HarnessOptions

RESULTS, FIGURE, SWEEP = "results.json", "figure.png", "sweep.png"


def need_matplotlib(options: HarnessOptions) -> None:
    """Refuse --out without matplotlib before any run starts (not after)."""
    if options.out is not None and importlib.util.find_spec("matplotlib") is None:
        raise ValueError(f"--out {str(options.out)!r} draws figures with matplotlib: pip install 'mtgrpo[bench]'")


def compare(
    runner: Runner,
    methods: Sequence[str],
    seeds: Sequence[int],
    options: HarnessOptions,
    task_names: Sequence[str],
    title: str,
    settings: dict[str, Any],
    swept: Sequence[str] = (),
    record_every: int = 1,
) -> int:
    """Run every method with every seed; returns the exit code (130 when interrupted, after reporting the finished
    runs). With options.out: results.json, figure.png and, for a sweep, sweep.png in that directory."""
    need_matplotlib(options)
    reference = options.reference_for(methods)
    jobs = [(m, s) for m in methods for s in seeds]
    print(f"{title}; {len(methods)} method(s) x {len(seeds)} seed(s), {options.workers} worker(s)", flush=True)
    if reference is None:
        print(f"no Delta_m% column: the default reference {DEFAULT_REFERENCE} is not run (name one with --reference)")
    started = time.perf_counter()
    with Progress(len(jobs) * runner.steps, "runs", quiet=options.quiet) as progress:
        outcome = run_many(runner, jobs, options.workers, progress.update)
    wall = time.perf_counter() - started
    if outcome.interrupted:
        print(f"interrupted: {len(outcome.records)} of {len(jobs)} runs finished; reporting those only")
    if not outcome.records:
        return 130 if outcome.interrupted else 0
    summary = summarize(outcome.records, reference, options.thresholds)
    print(format_table(summary, task_names))
    print(f"wall time {wall:.1f} s")
    if options.out is not None:
        options.out.mkdir(parents=True, exist_ok=True)
        settings = {
            **settings,
            "methods": list(methods),
            "seeds": list(seeds),
            "workers": options.workers,
            "wall_s": round(wall, 2),
            "command": " ".join(["mtgrpo", *sys.argv[1:]]),
        }
        write_json(options.out / RESULTS, task_names, settings, outcome, summary, record_every)
        plot_curves(options.out / FIGURE, task_names, outcome.records, title)
        written = [RESULTS, FIGURE]
        if swept:
            plot_sweep(options.out / SWEEP, summary, swept)
            written.append(SWEEP)
        note = " (finished runs only: interrupted)" if outcome.interrupted else ""
        print(f"wrote {', '.join(written)} in {options.out}{note}")
    return 130 if outcome.interrupted else 0
