"""Compute-matched comparison on the real small policy (the PyTorch loop, tiny3): methods with different request
planners and carry-over, at equal training steps and at an equal generation budget, in one table.

    .venv/bin/python benchmarks/bench_compute_torch.py [--seeds 0,1,2] [--steps 150] [--eval-every 10]

Every run starts from the same warm start (`mtgrpo demo`'s); each variant is a method string plus SamplerConfig
settings (`bench_compute.py` is the simulator's twin).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import torch

from mtgrpo_backends.harness.pool import run_many
from mtgrpo_backends.harness.report import format_table
from mtgrpo_backends.harness.summary import summarize
from mtgrpo_backends.options import RuleOptions
from mtgrpo_backends.torch.config import TrainSettings
from mtgrpo_backends.torch.demo import DemoRunner
from mtgrpo_backends.torch.tasks import CharTokenizer, get_suite
from mtgrpo_backends.torch.warmup import warm_started_model

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "grpo": ("grpo", {}),
    "dapo": ("dapo", {}),
    "mt-grpo-paper (Algorithm 2)": ("mt-grpo-paper:0.2", {}),
    "mt-grpo (default: joint q=0.9 + carry 1)": ("mt-grpo:0.2", {}),
    # the reference code's choices (docs/fidelity.md): its weight rule, filter and sampler, its DAPO baseline
    "mt-grpo-ref": ("mt-grpo-ref:0.2", {}),
    "dapo-ref": ("dapo-ref", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated labels to run")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = args.variants.split(",")
    unknown = [label for label in chosen if label not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; expected labels from {list(VARIANTS)}")
    suite = get_suite("tiny3")
    started = time.perf_counter()
    warm = warm_started_model(suite, CharTokenizer(), seed=0)
    print(
        f"tiny3: warm start {warm.steps} steps, probe accuracy {warm.probe_accuracy}; {args.steps} RL steps, "
        f"seeds {seeds}, evaluation every {args.eval_every} steps",
        flush=True,
    )
    settings = dataclasses.replace(TrainSettings(), steps=args.steps, eval_every=args.eval_every)
    records = []
    for label in chosen:
        method, sampler = VARIANTS[label]
        runner = DemoRunner(
            suite="tiny3",
            settings=settings,
            sampler=sampler,
            rule=RuleOptions(),
            warm={"config": warm.model.config, "weights": warm.model.state_dict()},
            threads=1,
        )
        runs = run_many(runner, [(method, s) for s in seeds], args.workers).records
        records += [dataclasses.replace(r, method=label) for r in runs]
        print(f"{label}: done at {time.perf_counter() - started:.0f} s", flush=True)
    print(format_table(summarize(records, reference="dapo"), suite.task_names))
    print(f"wall time {time.perf_counter() - started:.0f} s (torch {torch.__version__})")


if __name__ == "__main__":
    main()
