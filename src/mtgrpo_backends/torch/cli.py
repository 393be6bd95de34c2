"""`mtgrpo train` (one run of the reference loop) and `mtgrpo demo` (GRPO vs DAPO vs MT-GRPO on tiny3)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtgrpo_backends.torch.config import TrainConfig
from mtgrpo_backends.torch.loop import TrainState, train
from mtgrpo_backends.torch.model import CharGPT
from mtgrpo_backends.torch.tasks import CharTokenizer, Suite, get_suite
from mtgrpo_backends.torch.warmup import CACHE_ENV, WarmStart, warm_started_model
from mtgrpo_core import _validate as v
from mtgrpo_core import steps_to_threshold

DEMO_METHODS = ("grpo", "dapo", "mt-grpo:0.2")


def _sampler_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--sampler takes KEY=VALUE (e.g. oversample=2.0), got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--warmup-seed", type=int, default=0, help="seed of the warm-started policy")
    p.add_argument("--warmup-steps", type=int, default=None, help="cap of the supervised warm-up (default: suite's)")
    p.add_argument(
        "--warmup-target",
        type=float,
        default=None,
        help="warm-up stopping accuracy (default: suite's; 0 = run the cap)",
    )
    p.add_argument("--cache-dir", default=None, help=f"warm-start cache (default ${CACHE_ENV} or ~/.cache/mtgrpo)")
    p.add_argument("--no-cache", action="store_true", help="always warm up afresh, write nothing")
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parser(subparsers: Any) -> None:
    """Add the `train` and `demo` subcommands."""
    tr = subparsers.add_parser("train", help="train a small policy on a built-in suite with one method")
    for f in fields(TrainConfig):
        if f.name == "sampler":
            continue
        default = f.default if f.default is not MISSING else None
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            tr.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            tr.add_argument(flag, type=type(default), default=default, help=f"{f.metadata['help']} (default {default})")
    tr.add_argument("--sampler", type=_sampler_override, action="append", default=[], metavar="KEY=VALUE")
    tr.add_argument("--log", type=Path, default=None, help="write the JSON log here")
    tr.add_argument("--checkpoint", type=Path, default=None, help="save a checkpoint here at every evaluation")
    tr.add_argument("--resume", type=Path, default=None, help="resume from this checkpoint")
    _add_common(tr)
    tr.set_defaults(func=run_train)

    de = subparsers.add_parser("demo", help="GRPO, DAPO and MT-GRPO on tiny3 from one warm start, side by side")
    de.add_argument("--steps", type=int, default=120, help="training steps per method")
    de.add_argument("--seeds", default="0", help="comma-separated seeds of the RL runs (mean ± std if several)")
    de.add_argument("--jobs", type=int, default=1, help="runs in parallel worker processes (1 thread each)")
    de.add_argument("--eval-samples", type=int, default=4, help="completions per held-out prompt")
    de.add_argument("--sampler", type=_sampler_override, action="append", default=[], metavar="KEY=VALUE")
    de.add_argument("--methods", default=",".join(DEMO_METHODS), help="comma-separated controller methods")
    de.add_argument("--suite", default="tiny3", help="task suite")
    de.add_argument("--eval-every", type=int, default=20, help="held-out evaluation every this many steps")
    de.add_argument("--out", type=Path, default=Path("mtgrpo-demo"), help="directory for demo.json and demo.png")
    _add_common(de)
    de.set_defaults(func=run_demo)


def _warm_start(args: argparse.Namespace, suite: Suite, tokenizer: CharTokenizer) -> WarmStart:
    t0 = time.perf_counter()
    if args.warmup_target is not None:
        suite = dataclasses.replace(suite, warmup_target=args.warmup_target)
    warm = warm_started_model(
        suite,
        tokenizer,
        seed=args.warmup_seed,
        steps=args.warmup_steps,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
    )
    if not args.quiet:
        probe = "" if warm.probe_accuracy is None else f", probe accuracy {np.round(warm.probe_accuracy, 3).tolist()}"
        print(f"warm start ready in {time.perf_counter() - t0:.1f}s ({warm.steps} steps{probe})", flush=True)
    return warm


def _eval_line(suite: Suite, ev: dict[str, Any]) -> str:
    per_task = "  ".join(f"{n} {a:.3f}" for n, a in zip(suite.task_names, ev["accuracy"], strict=True))
    return f"step {ev['step']:4d}  held-out acc: {per_task}  | worst {ev['worst']:.3f}  avg {ev['average']:.3f}"


def _run(config: TrainConfig, model: torch.nn.Module, suite: Suite, tokenizer: CharTokenizer, **kw: Any) -> TrainState:
    """train() with a progress bar and one line per evaluation."""
    quiet = kw.pop("quiet", False)
    bar = None
    if not quiet:
        try:
            from tqdm import tqdm

            bar = tqdm(total=config.steps, desc=f"{config.method} seed {config.seed}", unit="step", leave=False)
        except ImportError:
            bar = None
    printed = 0

    def on_step(state: TrainState, row: dict[str, Any]) -> None:
        nonlocal printed
        if bar is not None:
            bar.n = state.step
            bar.set_postfix(rounds=row["rounds"], w=np.round(row["weights"], 2).tolist(), refresh=True)
        while not quiet and printed < len(state.evals):
            line = f"[{config.method} seed {config.seed}] " + _eval_line(suite, state.evals[printed])
            bar.write(line) if bar is not None else print(line, flush=True)
            printed += 1

    state = train(config, model, suite, tokenizer, on_step=on_step, **kw)
    if bar is not None:
        bar.close()
    return state


def _log(config: TrainConfig, suite: Suite, state: TrainState, seconds: float) -> dict[str, Any]:
    return {
        "config": asdict(config),
        "suite": suite.name,
        "tasks": suite.task_names,
        "seconds": seconds,
        "evals": state.evals,
        "history": state.history,
    }


def run_train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "sampler"}
    config = TrainConfig(**values, sampler=dict(args.sampler))
    suite, tokenizer = get_suite(config.suite), CharTokenizer()
    model = _warm_start(args, suite, tokenizer).model
    t0 = time.perf_counter()
    state = _run(config, model, suite, tokenizer, checkpoint=args.checkpoint, resume=args.resume, quiet=args.quiet)
    seconds = time.perf_counter() - t0
    if args.log is not None:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_text(json.dumps(_log(config, suite, state, seconds)))
    print(_eval_line(suite, state.evals[-1]))
    return 0


THRESHOLDS = (0.3, 0.4, 0.5, 0.6)


def _demo_run(
    method: str, seed: int, args: dict[str, Any], suite_name: str, warm: dict[str, Any], threads: int, quiet: bool
) -> dict[str, Any]:
    """One RL run from the warm start (a top-level function, so that worker processes can run it)."""
    torch.set_num_threads(threads)
    suite, tokenizer = get_suite(suite_name), CharTokenizer()
    config = TrainConfig(suite=suite_name, method=method, seed=seed, **args)
    model = CharGPT(warm["config"])
    model.load_state_dict(warm["weights"])
    t0 = time.perf_counter()
    state = _run(config, model, suite, tokenizer, quiet=quiet)
    return {**_log(config, suite, state, time.perf_counter() - t0), "summary": _summary(state, config)}


def _summary(state: TrainState, config: TrainConfig) -> dict[str, Any]:
    """Final accuracies, steps to worst-task thresholds, mean weights and batch shares, time split."""
    evals, hist = state.evals, state.history
    acc = np.array([e["accuracy"] for e in evals])
    steps = [e["step"] for e in evals]
    counts = np.array([h["realized_counts"] for h in hist], dtype=float)
    seconds = {k: sum(h["seconds"].get(k, 0.0) for h in hist) for k in ("core", "generate", "update")}
    return {
        "final_accuracy": evals[-1]["accuracy"],
        "worst": evals[-1]["worst"],
        "average": evals[-1]["average"],
        "steps_to_worst": {str(t): steps_to_threshold(acc, t, steps) for t in THRESHOLDS},
        "mean_weights": np.mean([h["weights"] for h in hist], axis=0).tolist(),
        "mean_shares": (counts.sum(axis=0) / max(1.0, counts.sum())).tolist(),
        "zero_gradient_rate_first10": np.mean([h["zero_gradient_rate"] for h in hist[:10]], axis=0).tolist(),
        "mean_rounds": float(np.mean([h["rounds"] for h in hist])),
        "steps_per_second": len(hist) / sum(seconds.values()),
        "seconds": seconds,
        "core_share": seconds["core"] / sum(seconds.values()),
    }


def _cell(values: list[float], width: int) -> str:
    text = f"{values[0]:.3f}" if len(values) == 1 else f"{np.mean(values):.3f}±{np.std(values):.3f}"
    return f"{text:>{width}}"


def _steps(value: int | None) -> str:
    return "-" if value is None else str(value)


def _table(suite: Suite, start: dict[str, Any], by_method: dict[str, list[dict[str, Any]]]) -> str:
    names = list(by_method)
    width = max(14, *(len(n) + 2 for n in names))
    head = f"{'held-out accuracy':<20}{'start':>{width}}" + "".join(f"{n:>{width}}" for n in names)
    lines = [head, "-" * len(head)]
    summaries = {n: [r["summary"] for r in runs] for n, runs in by_method.items()}
    for k, task in enumerate(suite.task_names):
        cells = "".join(_cell([s["final_accuracy"][k] for s in summaries[n]], width) for n in names)
        lines.append(f"{task:<20}{start['accuracy'][k]:>{width}.3f}{cells}")
    for key, label in (("worst", "worst-task"), ("average", "average")):
        cells = "".join(_cell([s[key] for s in summaries[n]], width) for n in names)
        lines.append(f"{label:<20}{start[key]:>{width}.3f}{cells}")
    for t in THRESHOLDS:
        cells = "".join(
            f"{'/'.join(_steps(s['steps_to_worst'][str(t)]) for s in summaries[n]):>{width}}" for n in names
        )
        lines.append(f"{f'steps to worst>={t}':<20}{'':>{width}}{cells}")
    for key, label in (("steps_per_second", "steps/s"), ("core_share", "core time share")):
        lines.append(f"{label:<20}{'':>{width}}" + "".join(_cell([s[key] for s in summaries[n]], width) for n in names))
    return "\n".join(lines)


def _figure(path: Path, suite: Suite, by_method: dict[str, list[dict[str, Any]]]) -> None:
    """Per method (columns): held-out accuracy, weights z and realized batch shares over steps (mean of seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(by_method)
    fig, axes = plt.subplots(3, len(names), figsize=(4.2 * len(names), 8.4), sharex=True, squeeze=False)
    for j, name in enumerate(names):
        runs = by_method[name]
        eval_steps = [e["step"] for e in runs[0]["evals"]]
        acc = np.mean([[e["accuracy"] for e in r["evals"]] for r in runs], axis=0)
        steps = [h["step"] for h in runs[0]["history"]]
        weights = np.mean([[h["weights"] for h in r["history"]] for r in runs], axis=0)
        counts = np.array([[h["realized_counts"] for h in r["history"]] for r in runs], dtype=float)
        shares = np.mean(counts / np.maximum(counts.sum(axis=2, keepdims=True), 1.0), axis=0)
        for k, task in enumerate(suite.task_names):
            axes[0, j].plot(eval_steps, acc[:, k], marker=".", label=task)
            axes[1, j].plot(steps, weights[:, k], label=task)
            axes[2, j].plot(steps, shares[:, k], label=task, alpha=0.8)
        axes[0, j].set_title(f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
        for i in range(3):
            axes[i, j].set_ylim(0, 1)
        axes[2, j].set_xlabel("training step")
    axes[0, 0].set_ylabel("held-out accuracy")
    axes[1, 0].set_ylabel("task weight z")
    axes[2, 0].set_ylabel("realized batch share")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def _int_list(name: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from err
    if not values:
        raise ValueError(f"{name} must name at least one value, got {text!r}")
    return values


def run_demo(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("matplotlib") is None:  # fail before training, not after
        raise ValueError("mtgrpo demo draws a figure with matplotlib: install it (pip install 'mtgrpo[bench]')")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    suite, tokenizer = get_suite(args.suite), CharTokenizer()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ValueError(f"--methods must name at least one method, got {args.methods!r}")
    seeds = _int_list("--seeds", args.seeds)
    jobs = v.positive_int("--jobs", args.jobs)
    warm_start = _warm_start(args, suite, tokenizer)
    warm = {"config": warm_start.model.config, "weights": warm_start.model.state_dict()}
    settings = {
        "steps": args.steps,
        "eval_every": args.eval_every,
        "eval_samples": args.eval_samples,
        "sampler": dict(args.sampler),
    }
    plan = [(m, s) for s in seeds for m in methods]
    if jobs == 1:
        results = [_demo_run(m, s, settings, suite.name, warm, args.threads, args.quiet) for m, s in plan]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_demo_run, m, s, settings, suite.name, warm, 1, True) for m, s in plan]
            results = [f.result() for f in _progress(futures, args)]
    by_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for (method, _), result in zip(plan, results, strict=True):
        by_method[method].append(result)
    start_eval = results[0]["evals"][0]
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "suite": suite.name,
        "tasks": suite.task_names,
        "steps": args.steps,
        "seeds": seeds,
        "warmup_seed": args.warmup_seed,
        "warmup_steps": warm_start.steps,
        "warmup_probe_accuracy": warm_start.probe_accuracy,
        "sampler": dict(args.sampler),
        "start": start_eval,
        "total_seconds": time.perf_counter() - t_start,
        "runs": by_method,
    }
    (args.out / "demo.json").write_text(json.dumps(summary))
    _figure(args.out / "demo.png", suite, by_method)
    print(
        f"\n{suite.name}: {args.steps} steps per method, seeds {seeds}, one warm start; held-out accuracy at "
        f"temperature 1 ({args.eval_samples} samples per prompt, {suite.eval_size} prompts per task)"
    )
    print(_table(suite, start_eval, by_method))
    print(f"wrote {args.out / 'demo.json'} and {args.out / 'demo.png'} in {summary['total_seconds']:.0f}s")
    return 0


def _progress(items: list[Any], args: argparse.Namespace) -> Any:
    """Iterate with a one-line progress report per finished run."""
    for i, item in enumerate(items):
        yield item
        if not args.quiet:
            print(f"run {i + 1}/{len(items)} done", flush=True)
