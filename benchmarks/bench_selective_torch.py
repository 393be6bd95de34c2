"""Selective rollouts on the real small policy (the PyTorch loop, tiny3 or tiny9 with a finite training set per task).

GRPO, DAPO and MT-GRPO (the lean default: joint planner q 0.9, carry-over 1) draw from one fixed training set of
`--pool-size` prompts per task (`TrainConfig.pool_size`); MT-GRPO runs without skipping and with the history rule
(`TrainConfig.selection`, defaults: exploration 0.1, min_retry 0.01, no max_skips). Every filtering method uses
the `--filter` (strict by default: all-correct and all-wrong groups dropped, where history matters). GRPO's total
generation is the equal budget. Every run starts from `mtgrpo demo`'s warm start. The simulator's twin is
`bench_selective.py` (which also has the oracle: a real policy has no true success probabilities).

    .venv/bin/python benchmarks/bench_selective_torch.py [--suite tiny3] [--mt-method mt-grpo:0.2] [--seeds 0,1,2]
        [--steps 150] [--pool-size 1000] [--filter strict] [--eval-every 10] [--workers 2] [--variants grpo,...]

Printed: the harness table (equal steps and equal budget), then per run gen/used (prompts generated per prompt
trained, over the run and its second half), and per task draws per training prompt, retried and skipped per
prompt handed out, and the skip error a trainer observes (the share of retried prompts that came back
informative), mean over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np
import torch

from mtgrpo_backends.harness.pool import run_many
from mtgrpo_backends.harness.record import RunRecord
from mtgrpo_backends.harness.report import format_table
from mtgrpo_backends.harness.summary import spread, summarize
from mtgrpo_backends.options import RuleOptions
from mtgrpo_backends.torch.config import TrainSettings
from mtgrpo_backends.torch.demo import DemoRunner
from mtgrpo_backends.torch.tasks import CharTokenizer, get_suite
from mtgrpo_backends.torch.warmup import warm_started_model

# label -> (method, filters?, selection settings or None)
VARIANTS: dict[str, tuple[str, bool, dict[str, Any] | None]] = {
    "grpo": ("grpo", False, None),
    "dapo": ("dapo", True, None),
    "mt-grpo skip none": ("mt-grpo", True, None),
    "mt-grpo skip history": ("mt-grpo", True, {}),
}


def _pm(values: list[float], digits: int = 2) -> str:
    s = spread(values)
    return f"{s['mean']:.{digits}f}±{s['std']:.{digits}f}"


def _selection_table(runs: dict[str, list[RunRecord]], names: list[str], pool_size: int) -> str:
    lines = [
        "| run | gen/used | gen/used, 2nd half | draws / prompt | retried | skipped / out | observed skip error |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, rs in runs.items():
        half = rs[0].steps // 2
        late = [float(r.generated[half:].sum() / max(r.trained[half:].sum(), 1)) for r in rs]
        total = [float(r.generated.sum() / max(r.trained.sum(), 1)) for r in rs]
        logs = [(r.log or {})["training_set"] for r in rs]
        sums = {key: np.array([g[key] for g in logs], dtype=float).sum(axis=0) for key in logs[0]}
        draws = sums["generated"] / (pool_size * len(rs))
        cells = [_pm(total), _pm(late), " / ".join(f"{d:.2f}" for d in draws)]
        if "handed_out" in sums:
            handed, retried = sums["handed_out"], sums["retried"]
            with np.errstate(invalid="ignore", divide="ignore"):
                ratios = (
                    (retried / handed, 2),
                    (sums["skipped"] / handed, 2),
                    (sums["retried_informative"] / retried, 2),
                )
            cells += [" / ".join("-" if np.isnan(x) else f"{x:.{d}f}" for x in values) for values, d in ratios]
        else:
            cells += ["-", "-", "-"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return f"per task ({' / '.join(names)}), over all seeds:\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("tiny3", "tiny9"), default="tiny3")
    parser.add_argument("--mt-method", default="mt-grpo:0.2", help="the MT-GRPO variants' method string")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--pool-size", type=int, default=1000)
    parser.add_argument("--filter", choices=("strict", "lenient"), default="strict")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated labels to run")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = args.variants.split(",")
    unknown = [label for label in chosen if label not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; expected labels from {list(VARIANTS)}")
    suite = get_suite(args.suite)
    started = time.perf_counter()
    warm = warm_started_model(suite, CharTokenizer(), seed=0)
    print(
        f"{args.suite}: warm start {warm.steps} steps, probe accuracy {warm.probe_accuracy}; {args.steps} RL steps, "
        f"{args.pool_size} training prompts per task, {args.filter} filter, seeds {seeds}",
        flush=True,
    )
    settings = dataclasses.replace(
        TrainSettings(), steps=args.steps, eval_every=args.eval_every, pool_size=args.pool_size
    )
    runs: dict[str, list[RunRecord]] = {}
    for label in chosen:
        method, filters, selection = VARIANTS[label]
        method = args.mt_method if method == "mt-grpo" else method
        runner = DemoRunner(
            suite=args.suite,
            settings=settings,
            sampler={"filtering": args.filter} if filters else {},
            rule=RuleOptions(),
            warm={"config": warm.model.config, "weights": warm.model.state_dict()},
            threads=1,
            selection=selection,
        )
        records = run_many(runner, [(method, s) for s in seeds], args.workers).records
        runs[label] = [dataclasses.replace(r, method=label) for r in records]
        print(f"{label}: done at {time.perf_counter() - started:.0f} s", flush=True)
    records = [r for rs in runs.values() for r in rs]
    print(format_table(summarize(records, reference="dapo" if "dapo" in runs else None), suite.task_names))
    print(_selection_table(runs, suite.task_names, args.pool_size))
    print(f"wall time {time.perf_counter() - started:.0f} s (torch {torch.__version__})")


if __name__ == "__main__":
    main()
