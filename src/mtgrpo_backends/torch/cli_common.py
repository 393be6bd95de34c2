"""What `mtgrpo train` and `mtgrpo demo` share: warm-start and thread options, the checked TrainConfig, and the
harness record of a finished run."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from mtgrpo_backends.harness.record import RunRecord
from mtgrpo_backends.options import at_least, flag, unset
from mtgrpo_backends.torch.config import TrainConfig, TrainSettings
from mtgrpo_backends.torch.state import TrainState
from mtgrpo_backends.torch.tasks import CharTokenizer, Suite
from mtgrpo_backends.torch.warmup import WarmStart, warm_started_model


@dataclass(frozen=True)
class TorchOptions:
    """The warm-started starting policy and torch's CPU threads."""

    warmup_seed: int = 0
    """seed of the supervised warm-up of the starting policy"""
    warmup_steps: Annotated[int | None, unset("the suite's")] = None
    """cap of the supervised warm-up steps"""
    warmup_target: Annotated[float | None, unset("the suite's")] = None
    """warm-up stopping accuracy on every task (0 = run the cap)"""
    cache_dir: Annotated[Path | None, unset("$MTGRPO_CACHE_DIR or ~/.cache/mtgrpo")] = None
    """warm-start cache directory"""
    no_cache: bool = False
    """always warm up afresh and write nothing"""
    threads: int = min(4, os.cpu_count() or 1)
    """torch CPU threads (workers of a comparison use 1 each)"""

    def check(self) -> None:
        at_least("warmup_seed", self.warmup_seed, 0)
        at_least("threads", self.threads, 1)
        if self.warmup_steps is not None:
            at_least("warmup_steps", self.warmup_steps, 0)
        if self.warmup_target is not None and not 0.0 <= self.warmup_target <= 1.0:
            raise ValueError(f"--warmup-target must lie in [0, 1], got {self.warmup_target!r}")


def checked_config(settings: TrainSettings, **rest: Any) -> TrainConfig:
    """TrainConfig(settings, **rest); a setting TrainConfig refuses is reported with its flag and value."""
    defaults = TrainSettings()
    for f in fields(TrainSettings):
        value = getattr(settings, f.name)
        if value != getattr(defaults, f.name):
            try:
                TrainConfig(**{f.name: value})
            except (TypeError, ValueError) as err:
                raise ValueError(f"{flag(f.name)} {value!r}: {err}") from None
    return TrainConfig(**dataclasses.asdict(settings), **rest)


def warm_start(options: TorchOptions, suite: Suite, tokenizer: CharTokenizer, quiet: bool) -> WarmStart:
    """The warm-started policy (from the cache when an identical warm-up was done before)."""
    t0 = time.perf_counter()
    if options.warmup_target is not None:
        suite = dataclasses.replace(suite, warmup_target=options.warmup_target)
    warm = warm_started_model(
        suite,
        tokenizer,
        seed=options.warmup_seed,
        steps=options.warmup_steps,
        cache_dir=options.cache_dir,
        use_cache=not options.no_cache,
    )
    if not quiet:
        probe = "" if warm.probe_accuracy is None else f", probe accuracy {np.round(warm.probe_accuracy, 3).tolist()}"
        print(f"warm start ready in {time.perf_counter() - t0:.1f}s ({warm.steps} steps{probe})", flush=True)
    return warm


def eval_line(suite: Suite, ev: dict[str, Any]) -> str:
    per_task = "  ".join(f"{n} {a:.3f}" for n, a in zip(suite.task_names, ev["accuracy"], strict=True))
    return f"step {ev['step']:4d}  held-out acc: {per_task}  | worst {ev['worst']:.3f}  avg {ev['average']:.3f}"


def record_from_state(config: TrainConfig, state: TrainState, wall_s: float, keep_log: bool = False) -> RunRecord:
    """The harness record of a finished run of the reference loop (keep_log: its full log in the record)."""
    hist, evals = state.history, state.evals
    k = len(evals[0]["accuracy"])
    counts = np.array([h["realized_counts"] for h in hist], dtype=np.float64).reshape(len(hist), k)
    totals = counts.sum(axis=1, keepdims=True)
    groups = np.array([sum(h["generated"]) for h in hist], dtype=np.int64)
    seconds = {k: sum(h["seconds"].get(k, 0.0) for h in hist) for k in ("core", "generate", "update")}
    busy = max(sum(seconds.values()), 1e-12)
    log = {"config": dataclasses.asdict(config), "evals": evals, "history": hist} if keep_log else None
    return RunRecord(
        method=config.method,
        seed=config.seed,
        eval_steps=np.array([e["step"] for e in evals], dtype=np.int64),
        accuracy=np.array([e["accuracy"] for e in evals], dtype=np.float64),
        weights=np.array([h["weights"] for h in hist], dtype=np.float64).reshape(counts.shape),
        shares=np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0),
        rounds=np.array([h["rounds"] for h in hist], dtype=np.int64),
        generated=groups,
        rollouts=groups * config.group_size,
        trained=totals[:, 0].astype(np.int64),
        budget_exhausted=np.array([h["budget_exhausted"] for h in hist], dtype=bool),
        wall_s=wall_s,
        metrics={"steps/s": len(hist) / busy, "core share": seconds["core"] / busy},
        log=log,
    )
