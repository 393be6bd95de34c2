"""The comparison harness shared by `mtgrpo bench` and `mtgrpo demo`: methods x seeds in a worker pool, progress,
Ctrl-C, one summary (equal steps and equal generation budget), one table, one results.json, one figure.

A backend supplies only a `Runner`: a picklable callable that runs one method with one seed and returns a
`RunRecord`.
"""

from mtgrpo_backends.harness.compare import compare
from mtgrpo_backends.harness.plots import plot_curves, plot_sweep
from mtgrpo_backends.harness.pool import Outcome, run_many
from mtgrpo_backends.harness.record import Runner, RunRecord
from mtgrpo_backends.harness.report import format_table, write_json
from mtgrpo_backends.harness.summary import equal_budget, summarize

__all__ = [
    "Outcome",
    "RunRecord",
    "Runner",
    "compare",
    "equal_budget",
    "format_table",
    "plot_curves",
    "plot_sweep",
    "run_many",
    "summarize",
    "write_json",
]
