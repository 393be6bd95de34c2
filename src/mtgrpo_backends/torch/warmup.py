"""Short supervised warm-up: the starting policy of RL gets partial competence on every task.

The paper starts RL from a pretrained base model; here a CharGPT is trained from scratch by teacher forcing on
`[answer]<eos>` until every task reaches the suite's target (or its step cap). The result can be cached on disk:
the cache key holds every setting that changes the weights, so a cached file is exactly what a fresh run would
produce.

`warm_started_model` runs the warm-up on one CPU thread with torch's deterministic algorithms
(`deterministic_cpu`), whatever `torch.set_num_threads` says outside: multi-threaded CPU kernels sum in an order
that depends on the thread count, and the warm-up's stopping step (where addition takes off) moved with it (1,600
steps on one machine, 2,175 on another). One thread gives the same warm start for any thread count, run after run;
`mtgrpo train` / `mtgrpo demo` also pin the CPU kernels to AVX2 (mtgrpo_backends.cli.pin_cpu_kernels).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from mtgrpo_backends.torch.model import CharGPT, CharGPTConfig, completion_logprobs
from mtgrpo_backends.torch.tasks import CharTokenizer, Problem, Suite, left_pad
from mtgrpo_core import checks as v
from mtgrpo_core.protocols import CORRECT

CACHE_ENV = "MTGRPO_CACHE_DIR"
WARMUP_BATCH = 64
WARMUP_LR = 2e-3
PROBE_SIZE = 64  # prompts per task of the warm-up's stopping check
PROBE_SAMPLES = 4  # completions per probe prompt
PROBE_EVERY = 25  # steps between checks
WARMUP_THREADS = 1  # torch CPU threads of the warm-up: one, so that its floating-point order is fixed
CACHE_VERSION = 3  # 3: single-threaded deterministic warm-up (2: the caller's thread count)

# progress(step, cap, probe): called after every warm-up step; probe is the new probe accuracy on a check step,
# else None
WarmupProgress = Callable[[int, int, list[float] | None], None]


@contextmanager
def deterministic_cpu(threads: int = WARMUP_THREADS) -> Iterator[None]:
    """torch on `threads` CPU threads with deterministic algorithms; the caller's settings are restored after."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=warn_only)


def default_cache_dir() -> Path:
    """$MTGRPO_CACHE_DIR, else ~/.cache/mtgrpo."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mtgrpo")


def noisy_answer(answer: str, noise: float, rng: np.random.Generator) -> str:
    """The answer with each digit replaced, with probability `noise`, by a uniformly random digit."""
    if noise == 0:
        return answer
    flip = rng.random(len(answer)) < noise
    digits = rng.integers(0, 10, size=len(answer))
    return "".join(str(d) if f else c for c, f, d in zip(answer, flip, digits, strict=True))


MAINTAIN = 0.1  # demonstration weight of a task between the warm-up target and ceiling (1 below the target)


def warmup_mix(accuracy: NDArray[np.float64], target: float, ceiling: float) -> NDArray[np.float64]:
    """Demonstration weights from a check's accuracies: 1 below `target`, MAINTAIN up to `ceiling`, 0 above it
    (a task left out entirely is forgotten within a few dozen steps, so in-range tasks keep a small share)."""
    return np.where(accuracy < target, 1.0, np.where(accuracy < ceiling, MAINTAIN, 0.0))


def supervised_batch(
    suite: Suite,
    tokenizer: CharTokenizer,
    batch_size: int,
    rng: np.random.Generator,
    mix: NDArray[np.float64] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Teacher-forcing batch over tasks drawn uniformly (or in proportion to `mix`): ids, mask (R, P + C) and the
    completion start P. Demonstrations carry the suite's `warmup_noise` (an imperfect corpus, like a base model's).
    """
    if mix is None or (mix == mix[0]).all():
        tasks = rng.integers(0, suite.num_tasks, size=batch_size)
    else:
        tasks = rng.choice(suite.num_tasks, size=batch_size, p=mix / mix.sum())
    problems = [suite.sample(int(k), 1, rng)[0] for k in tasks]
    p_ids, p_mask = left_pad([tokenizer.encode(p.prompt) for p in problems], tokenizer.pad_id)
    answers = [
        [*tokenizer.encode(f"[{noisy_answer(p.answer, suite.warmup_noise, rng)}]"), tokenizer.eos_id] for p in problems
    ]
    width = max(len(a) for a in answers)
    c_ids = np.full((batch_size, width), tokenizer.pad_id, dtype=np.int64)
    c_mask = np.zeros((batch_size, width), dtype=np.int64)
    for i, a in enumerate(answers):
        c_ids[i, : len(a)] = a
        c_mask[i, : len(a)] = 1
    ids = torch.from_numpy(np.concatenate([p_ids, c_ids], axis=1))
    mask = torch.from_numpy(np.concatenate([p_mask, c_mask], axis=1))
    return ids, mask, p_ids.shape[1]


@dataclass
class WarmStart:
    """A warmed-up policy, the warm-up steps it took, its last probe accuracies (temperature 1), and whether it
    came from the cache file `path`."""

    model: CharGPT
    steps: int
    probe_accuracy: list[float] | None
    cached: bool = False
    path: Path | None = None


def probe_accuracy(
    model: torch.nn.Module, suite: Suite, tokenizer: CharTokenizer, problems: list[list[Problem]]
) -> list[float]:
    """Temperature-1 accuracy per task on fixed training-distribution prompts, PROBE_SAMPLES completions each."""
    from mtgrpo_backends.torch.rollout import generate_groups  # the loop's sampler and scorer

    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
    flat = [(k, p) for k, ps in enumerate(problems) for p in ps]
    groups, _ = generate_groups(model, suite, tokenizer, flat, PROBE_SAMPLES, 1.0, generator)
    acc = np.zeros(suite.num_tasks)
    for g in groups:
        acc[g.task] += float((g.rewards == CORRECT).mean()) / len(problems[g.task])
    return acc.tolist()


def warm_up(
    model: torch.nn.Module,
    suite: Suite,
    tokenizer: CharTokenizer,
    steps: int,
    *,
    target: float = 0.0,
    batch_size: int = WARMUP_BATCH,
    lr: float = WARMUP_LR,
    seed: int = 0,
    progress: WarmupProgress | None = None,
) -> tuple[int, list[float] | None]:
    """Teacher-forced cross-entropy on completion tokens, AdamW, at most `steps` steps.

    With target > 0, every PROBE_EVERY steps the temperature-1 accuracy of each task is measured on PROBE_SIZE
    fixed training prompts; the warm-up stops at the first check where every task reaches `target`. With a suite
    `warmup_ceiling` below 1 the demonstrations follow the last check (`warmup_mix`): tasks below the target get
    the batch, tasks between target and ceiling a maintenance share, tasks above the ceiling none; it stops at
    the first check with every task in [target, ceiling).
    progress(step, steps, probe) is called after every step (probe: the check's accuracies, else None).
    Returns the steps taken and the last probe accuracies (None if never probed).
    """
    v.positive_int("steps", steps, minimum=0)
    v.positive_int("batch_size", batch_size)
    v.real_in_range("lr", lr, 0.0, low_open=True)
    v.real_in_range("target", target, 0.0, 1.0)
    device = next(model.parameters()).device
    rng = np.random.default_rng([seed, 1])
    probes = [suite.sample(k, PROBE_SIZE, np.random.default_rng([seed, 3, k])) for k in range(suite.num_tasks)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    probe = None
    mix = np.ones(suite.num_tasks)
    for step in range(1, steps + 1):
        model.train()
        ids, mask, start = supervised_batch(suite, tokenizer, batch_size, rng, mix)
        ids, mask = ids.to(device), mask.to(device)
        tok_mask = mask[:, start:].float()
        loss = -(completion_logprobs(model, ids, mask, start) * tok_mask).sum() / tok_mask.sum()
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        checked = None
        if target > 0 and step % PROBE_EVERY == 0:
            probe = checked = probe_accuracy(model, suite, tokenizer, probes)
            if suite.warmup_ceiling < 1.0:  # 1.0: no ceiling, uniform demonstrations (tiny3)
                mix = warmup_mix(np.asarray(checked), target, suite.warmup_ceiling)
        if progress is not None:
            progress(step, steps, checked)
        # stop when every task reached the target and none is above the ceiling (or none is left to train)
        capped = suite.warmup_ceiling < 1.0 and max(checked or [0.0]) >= suite.warmup_ceiling and mix.any()
        if checked is not None and min(checked) >= target and not capped:
            return step, checked
    return steps, probe


def warm_started_model(
    suite: Suite,
    tokenizer: CharTokenizer,
    *,
    seed: int = 0,
    steps: int | None = None,
    config: CharGPTConfig | None = None,
    cache_dir: Path | str | None = None,
    use_cache: bool = True,
    progress: WarmupProgress | None = None,
) -> WarmStart:
    """A CharGPT warmed up on `suite` (default: at most the suite's warm-up steps, stopping at its target),
    loaded from the cache when an identical warm-up was done before. The warm-up runs under deterministic_cpu():
    the same weights for any torch.get_num_threads() of the caller."""
    steps = suite.warmup_steps if steps is None else steps
    config = config or CharGPTConfig(vocab_size=tokenizer.vocab_size)
    key = json.dumps(
        {
            "suite": suite.name,
            "tasks": suite.task_names,
            "steps": steps,
            "target": suite.warmup_target,
            **({"ceiling": suite.warmup_ceiling} if suite.warmup_ceiling < 1.0 else {}),  # tiny3's key unchanged
            "noise": suite.warmup_noise,
            "seed": seed,
            "model": asdict(config),
            "batch_size": WARMUP_BATCH,
            "lr": WARMUP_LR,
            "probe": [PROBE_SIZE, PROBE_SAMPLES, PROBE_EVERY],
            "alphabet": tokenizer.alphabet,
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": WARMUP_THREADS,
            "deterministic": True,
            "version": CACHE_VERSION,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / f"warmup-{suite.name}-{digest}.pt"
    model = CharGPT(config, seed=seed)
    if use_cache and path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["weights"])
        return WarmStart(model.eval(), int(saved["steps"]), saved["probe_accuracy"], cached=True, path=path)
    with deterministic_cpu():
        taken, probe = warm_up(model, suite, tokenizer, steps, target=suite.warmup_target, seed=seed, progress=progress)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"weights": model.state_dict(), "steps": taken, "probe_accuracy": probe}, tmp)
        tmp.replace(path)
    return WarmStart(model.eval(), taken, probe, path=path if use_cache else None)
