"""Running methods x seeds: in this process or in worker processes, with a step counter and Ctrl-C handling."""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mtgrpo_backends.harness.record import Runner, RunRecord

_PROGRESS_EVERY = 10  # steps between updates of the shared step counter in worker processes


@dataclass
class Outcome:
    """Finished runs in (method, seed) order, and whether the user interrupted before all were done."""

    records: list[RunRecord] = field(default_factory=list)
    interrupted: bool = False


_runner: Any = None
_counter: Any = None


def _init_worker(runner: Runner, counter: Any) -> None:
    global _runner, _counter
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates the pool
    _runner, _counter = runner, counter


def _worker(job: tuple[str, int]) -> RunRecord:
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if done % _PROGRESS_EVERY == 0:
            with _counter.get_lock():
                _counter.value += _PROGRESS_EVERY

    record: RunRecord = _runner(job[0], job[1], tick)
    with _counter.get_lock():
        _counter.value += done % _PROGRESS_EVERY
    return record


def run_many(
    runner: Runner,
    jobs: Sequence[tuple[str, int]],
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Outcome:
    """Run every (method, seed) job, in worker processes when workers > 1 (started with runner.start_method).

    progress(n) is called with the number of steps just finished. Ctrl-C stops the runs in flight and returns the
    finished ones with interrupted=True; an error in a run stops the others and is raised.
    """
    out = Outcome()
    if workers <= 1 or len(jobs) <= 1:
        tick = (lambda: progress(1)) if progress is not None else None
        try:
            for method, seed in jobs:
                out.records.append(runner(method, seed, tick))
        except KeyboardInterrupt:
            out.interrupted = True
        return out
    ctx = mp.get_context(runner.start_method)
    counter = ctx.Value("q", 0)
    pool = ctx.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(runner, counter))
    seen = 0
    try:
        pending = [pool.apply_async(_worker, (job,)) for job in jobs]
        while pending:
            time.sleep(0.1)
            for result in [r for r in pending if r.ready()]:
                out.records.append(result.get())
                pending.remove(result)
            now = counter.value
            if progress is not None and now > seen:
                progress(now - seen)
            seen = now
        pool.close()
    except KeyboardInterrupt:
        out.interrupted = True
        pool.terminate()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    order = {job: i for i, job in enumerate(jobs)}
    out.records.sort(key=lambda r: order[(r.method, r.seed)])
    return out
