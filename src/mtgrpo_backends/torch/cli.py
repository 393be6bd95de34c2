"""`mtgrpo train`: one run of the reference loop on a built-in suite, from a warm-started policy."""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch

from mtgrpo_backends.harness import Outcome, plot_curves, summarize, write_json
from mtgrpo_backends.harness.compare import FIGURE, RESULTS
from mtgrpo_backends.harness.progress import Progress
from mtgrpo_backends.options import (
    Flat,
    RuleOptions,
    SelectionOptions,
    check_methods,
    checked_sampler,
    parse,
    run_command,
    unset,
    writable_dir,
    writable_file,
)
from mtgrpo_backends.torch.checkpoint import check_resumable, load_checkpoint, read_checkpoint
from mtgrpo_backends.torch.cli_common import (
    TorchOptions,
    check_device,
    checked_config,
    eval_line,
    record_from_state,
    selection_settings,
    warm_start,
)
from mtgrpo_backends.torch.config import TrainConfig, TrainSettings
from mtgrpo_backends.torch.loop import train
from mtgrpo_backends.torch.model import CharGPT, CharGPTConfig
from mtgrpo_backends.torch.state import TrainState, make_controller, make_state, make_training_set
from mtgrpo_backends.torch.tasks import CharTokenizer, Suite, get_suite
from mtgrpo_backends.torch.warmup import WarmStart
from mtgrpo_core.settings import SamplerSettings

PROG = "mtgrpo train"
DESCRIPTION = "Train a small policy on a built-in suite with one method, from a warm-started policy."


@dataclass
class TrainArgs:
    """`mtgrpo train`."""

    suite: str = "tiny3"
    """task suite: tiny3 or tiny9"""
    method: str = "mt-grpo:0.2"
    """controller method, e.g. grpo, dapo, sec-dapo, mt-grpo:0.2, or module:Class"""
    seed: int = 0
    """seed of the controller, prompt sampling and generation"""
    train: Annotated[TrainSettings, Flat] = field(default_factory=TrainSettings)
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    rule: RuleOptions = field(default_factory=RuleOptions)
    selection: SelectionOptions = field(default_factory=SelectionOptions)
    warm: Annotated[TorchOptions, Flat] = field(default_factory=TorchOptions)
    out: Annotated[Path | None, unset("write nothing")] = None
    """write results.json (with the full log) and figure.png in this directory"""
    checkpoint: Annotated[Path | None, unset("none")] = None
    """save a checkpoint here at every evaluation"""
    resume: Annotated[Path | None, unset("none")] = None
    """resume from this checkpoint (same settings; only --steps and --eval-every may change; no warm-up)"""
    quiet: bool = False
    """no progress bar and no evaluation lines"""


def _train(config: TrainConfig, model: torch.nn.Module, suite: Suite, args: TrainArgs, start: int) -> TrainState:
    """train() with progress (a bar on a terminal, plain lines elsewhere) and one line per evaluation after step
    `start` (the checkpoint's step when resuming, else -1), unless --quiet; the last evaluation's line always."""
    progress = Progress(config.steps, f"{config.method} seed {config.seed}", quiet=args.quiet)
    shown: set[int] = set()  # evaluation steps whose line was printed

    def show_evals(state: TrainState) -> None:
        if args.quiet:  # nothing is written: the last evaluation's line comes after the run
            return
        for ev in state.evals:
            if ev["step"] > start and ev["step"] not in shown:
                progress.write(eval_line(suite, ev))
                shown.add(ev["step"])

    def on_step(state: TrainState, row: dict[str, Any]) -> None:
        note = f"rounds {row['rounds']}, weights {' / '.join(f'{w:.2f}' for w in row['weights'])}"
        progress.set_done(state.step, note)
        show_evals(state)

    with progress:
        state = train(
            config, model, suite, CharTokenizer(), checkpoint=args.checkpoint, resume=args.resume, on_step=on_step
        )
    if state.evals[-1]["step"] not in shown:
        print(eval_line(suite, state.evals[-1]))
    return state


def _check_outputs(args: TrainArgs) -> None:
    """--out and --checkpoint must be writable before any warm-up or run starts."""
    if args.out is not None:
        writable_dir("--out", args.out)
        if importlib.util.find_spec("matplotlib") is None:
            raise ValueError(f"--out {str(args.out)!r} draws figure.png with matplotlib: pip install 'mtgrpo[torch]'")
    if args.checkpoint is not None:
        writable_file("--checkpoint", args.checkpoint)


def _resumed_model(
    args: TrainArgs, config: TrainConfig, suite: Suite, tokenizer: CharTokenizer
) -> tuple[torch.nn.Module, int]:
    """The policy to resume: the checkpoint is read, checked against this run's settings and loaded into a fresh
    state (model, optimizer, controller, generators) once, so that whatever is wrong with it is refused before the
    run starts. The warm-up is skipped: the checkpoint holds the model. Returns the model and the checkpoint's
    step."""
    assert args.resume is not None
    payload = read_checkpoint(args.resume, "--resume")
    check_resumable(payload, config, suite, "--resume", args.resume)
    model = CharGPT(CharGPTConfig(vocab_size=tokenizer.vocab_size))
    try:
        load_checkpoint(args.resume, make_state(config, model, suite, tokenizer), config, suite, "--resume")
    except (RuntimeError, KeyError, IndexError, TypeError) as err:
        raise ValueError(f"--resume {str(args.resume)!r}: the checkpoint does not load into this run ({err})") from None
    step = int(payload["step"])
    if not args.quiet:
        more = f"to step {config.steps}" if step < config.steps else f"nothing to train (--steps {config.steps})"
        print(f"resuming {args.resume} at step {step}: {more}; warm-up skipped (the checkpoint holds the model)")
    return model, step


def run_train(args: TrainArgs) -> int:
    """Body of `mtgrpo train`: every flag, output path and --resume checkpoint is checked before the warm-up."""
    args.warm.check()
    check_device(args.train)
    suite, tokenizer = get_suite(args.suite), CharTokenizer()
    sampler = checked_sampler(args.sampler)
    args.rule.check([args.method], suite.num_tasks)
    rule = args.rule.kwargs_for(args.method)
    config = checked_config(
        args.train,
        suite=args.suite,
        method=args.method,
        seed=args.seed,
        sampler=sampler,
        rule=rule,
        selection=selection_settings(args.selection, args.train.pool_size),
    )
    if config.batch_size < suite.num_tasks:  # as TRL and verl refuse it
        raise ValueError(
            f"--batch-size {config.batch_size} is below the {suite.num_tasks} tasks of suite {args.suite!r}: the "
            f"per-task quotas do not fit; use --batch-size >= {suite.num_tasks}"
        )
    check_methods([args.method], suite.num_tasks, config.batch_size, config.group_size, sampler, args.rule)
    make_training_set(config, suite, make_controller(config, suite))  # refuses a pool or selection it cannot build
    _check_outputs(args)
    torch.set_num_threads(args.warm.threads)
    warm: WarmStart | None = None
    if args.resume is not None:
        model, start = _resumed_model(args, config, suite, tokenizer)
    else:
        warm = warm_start(args.warm, suite, tokenizer, args.quiet)
        model, start = warm.model, -1
    t0 = time.perf_counter()
    state = _train(config, model, suite, args, start)
    record = record_from_state(config, state, time.perf_counter() - t0, keep_log=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        settings = {
            "suite": suite.name,
            "config": asdict(config),
            "warmup_steps": None if warm is None else warm.steps,
            "warmup_probe_accuracy": None if warm is None else warm.probe_accuracy,
            "resumed_from": None if args.resume is None else str(args.resume),
            "command": " ".join(["mtgrpo", *sys.argv[1:]]),
        }
        outcome = Outcome([record])
        write_json(args.out / RESULTS, suite.task_names, settings, outcome, summarize([record], None))
        plot_curves(args.out / FIGURE, suite.task_names, [record], f"{suite.name}: {config.method}, seed {config.seed}")
        print(f"wrote {RESULTS}, {FIGURE} in {args.out}")
    return 0


def main(argv: Sequence[str]) -> int:
    """Entry point of `mtgrpo train`."""
    return run_command(PROG, lambda: run_train(parse(TrainArgs, argv, PROG, DESCRIPTION)))
