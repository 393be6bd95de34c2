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

from mtgrpo_backends.harness.progress import Progress
from mtgrpo_backends.harness.record import RunRecord
from mtgrpo_backends.options import SelectionOptions, at_least, flag, unset, writable_dir
from mtgrpo_backends.torch.config import TrainConfig, TrainSettings
from mtgrpo_backends.torch.state import TrainState
from mtgrpo_backends.torch.tasks import CharTokenizer, Suite
from mtgrpo_backends.torch.warmup import (
    PROBE_EVERY,
    WARMUP_THREADS,
    WarmStart,
    default_cache_dir,
    warm_started_model,
)
from mtgrpo_core.settings import SelectionSettings


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
        """Refuse a bad value naming its flag; --cache-dir (when given) must be a writable directory."""
        at_least("warmup_seed", self.warmup_seed, 0)
        at_least("threads", self.threads, 1)
        if self.warmup_steps is not None:
            at_least("warmup_steps", self.warmup_steps, 0)
        if self.warmup_target is not None and not 0.0 <= self.warmup_target <= 1.0:
            raise ValueError(f"--warmup-target must lie in [0, 1], got {self.warmup_target!r}")
        if self.cache_dir is not None and not self.no_cache:
            writable_dir("--cache-dir", self.cache_dir)


def check_device(settings: TrainSettings) -> None:
    """Refuse a --device torch cannot parse or does not have, before any warm-up or run."""
    import torch

    try:
        device = torch.device(settings.device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"--device {settings.device!r}: expected a torch device such as cpu or cuda ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {settings.device!r}: this torch has no CUDA device (torch.cuda.is_available() is False)"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {settings.device!r}: there are {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {settings.device!r}: expected cpu or cuda[:index]")


# settings TrainConfig does not check yet (their checks belong in TrainConfig.__post_init__): (flag, test, expected)
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


def selection_settings(options: SelectionOptions, pool_size: int) -> SelectionSettings | None:
    """TrainConfig.selection of the --selection.* flags (None for --selection.skip none); skipping needs a finite
    training set (--pool-size > 0)."""
    settings = options.trainer_settings()
    if settings is not None and pool_size == 0:
        raise ValueError(
            "--selection.skip history skips prompts by their history, which needs a finite training set: "
            "set --pool-size > 0"
        )
    return settings


def cache_usable(options: TorchOptions) -> bool:
    """Whether the warm-start cache is used: not with --no-cache, nor when the default cache directory cannot be
    written (said in one line; an explicit --cache-dir that cannot be written is refused by check())."""
    if options.no_cache:
        return False
    if options.cache_dir is not None:
        return True
    try:
        writable_dir("cache directory", default_cache_dir())
    except ValueError as err:
        print(f"note: warming up without the warm-start cache: {err}", flush=True)
        return False
    return True


def _accuracies(values: list[float] | None) -> str:
    return "-" if values is None else " / ".join(f"{a:.2f}" for a in values)


def warm_start(options: TorchOptions, suite: Suite, tokenizer: CharTokenizer, quiet: bool) -> WarmStart:
    """The warm-started policy (from the cache when an identical warm-up was done before), with progress: a bar
    on a terminal, plain lines elsewhere (the first at the first probe, a few seconds in), unless quiet."""
    t0 = time.perf_counter()
    if options.warmup_target is not None:
        suite = dataclasses.replace(suite, warmup_target=options.warmup_target)
    cap = suite.warmup_steps if options.warmup_steps is None else options.warmup_steps
    use_cache = cache_usable(options)
    names = ", ".join(suite.task_names)
    if not quiet:
        stop = f"stops when every task reaches {suite.warmup_target:g}" if suite.warmup_target > 0 else "no target"
        print(
            f"warm start: supervised warm-up of {suite.name} ({names}), at most {cap} steps ({stop} on probe prompts; "
            f"{WARMUP_THREADS} thread, deterministic), unless cached",
            flush=True,
        )
    progress = Progress(cap, "warm-up", quiet=quiet, cap=True, first_s=5.0)

    def on_step(step: int, _cap: int, probe: list[float] | None) -> None:
        note = None if probe is None else f"probe accuracy {_accuracies(probe)}"
        progress.update(1, note, force=step == PROBE_EVERY)  # the first probe: a line a few seconds in

    try:
        warm = warm_started_model(
            suite,
            tokenizer,
            seed=options.warmup_seed,
            steps=cap,
            cache_dir=options.cache_dir,
            use_cache=use_cache,
            progress=on_step,
        )
    finally:
        progress.close(final=False)
    if not quiet:
        where = f"loaded from {warm.path}" if warm.cached else f"ready in {time.perf_counter() - t0:.1f} s"
        print(
            f"warm start {where}: {warm.steps} warm-up steps, probe accuracy {_accuracies(warm.probe_accuracy)}"
            f" ({names})",
            flush=True,
        )
    return warm


def eval_line(suite: Suite, ev: dict[str, Any]) -> str:
    per_task = "  ".join(f"{n} {a:.3f}" for n, a in zip(suite.task_names, ev["accuracy"], strict=True))
    return f"step {ev['step']:4d}  held-out acc: {per_task}  | worst {ev['worst']:.3f}  avg {ev['average']:.3f}"


def training_set_totals(history: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Per task over a run's log rows: groups generated and, with selection, prompts handed out, retried, retried
    that came back informative, and skipped."""
    totals = {"generated": np.sum([h["generated"] for h in history], axis=0).tolist()}
    selected = [h["selection"] for h in history if h.get("selection") is not None]
    if selected:
        totals.update({key: np.sum([s[key] for s in selected], axis=0).tolist() for key in selected[0]})
    return totals


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
    if config.pool_size > 0:  # per task over the run: groups generated (and the selection's counts)
        log = {**(log or {}), "training_set": training_set_totals(hist)}
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
