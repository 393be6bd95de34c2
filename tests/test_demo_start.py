"""The demo talks and starts the same everywhere (issue 10, item 5): a deterministic single-thread warm-up whatever
the caller's thread count, progress as plain lines when the output is not a terminal, the warm-up's first line
within seconds."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import pytest
import torch

from mtgrpo_backends.cli import PINNED_CPU_KERNELS, pin_cpu_kernels
from mtgrpo_backends.harness.progress import Progress, interactive
from mtgrpo_backends.torch.cli_common import TorchOptions, warm_start
from mtgrpo_backends.torch.model import CharGPTConfig
from mtgrpo_backends.torch.tasks import TASKS, CharTokenizer, Suite
from mtgrpo_backends.torch.warmup import PROBE_EVERY, deterministic_cpu, warm_started_model

TOK = CharTokenizer()
TINY = CharGPTConfig(vocab_size=TOK.vocab_size, n_layer=1, n_embd=32, n_head=2)


def _suite(steps: int = PROBE_EVERY + 5, target: float = 0.9) -> Suite:
    tasks = tuple(TASKS[n] for n in ("reverse-easy", "add-easy"))
    return Suite("toy", tasks, warmup_steps=steps, warmup_noise=0.1, warmup_target=target, eval_size=4)


def test_warm_start_is_the_same_for_any_thread_count_and_restores_the_callers_settings() -> None:
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(warm_started_model(_suite(), TOK, config=TINY, use_cache=False))
            assert torch.get_num_threads() == threads  # the caller's setting is back
            assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(before)
    first = runs[0]
    assert first.steps == PROBE_EVERY + 5 and first.probe_accuracy is not None
    for other in runs[1:]:
        assert other.steps == first.steps and other.probe_accuracy == first.probe_accuracy
        for a, b in zip(first.model.parameters(), other.model.parameters(), strict=True):
            assert torch.equal(a, b)


def test_deterministic_cpu_restores_settings_after_an_error() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), deterministic_cpu():
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before and not torch.are_deterministic_algorithms_enabled()


def test_the_warm_start_cache_key_names_the_single_thread_warm_up(tmp_path: Path) -> None:
    a = warm_started_model(_suite(steps=3, target=0.0), TOK, config=TINY, cache_dir=tmp_path)
    b = warm_started_model(_suite(steps=3, target=0.0), TOK, config=TINY, cache_dir=tmp_path)
    assert not a.cached and b.cached and a.path == b.path and a.path is not None and a.path.exists()


def test_progress_off_a_terminal_prints_plain_periodic_lines() -> None:
    stream = io.StringIO()
    progress = Progress(10, "runs", stream=stream, every_s=3600.0)
    assert not progress.tty and not interactive(stream)
    for _ in range(4):
        progress.update(1)
    assert stream.getvalue() == ""  # nothing due yet
    progress.update(1, "probe accuracy 0.50", force=True)
    progress.update(5)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 2
    assert lines[0].startswith("runs: 5/10 steps (50%), 0 s elapsed, about 0 s left, probe accuracy 0.50")
    assert lines[1].startswith("runs: 10/10 steps (100%)")


def test_progress_lines_come_every_few_seconds_and_quiet_prints_nothing() -> None:
    stream = io.StringIO()
    progress = Progress(100, "warm-up", stream=stream, every_s=0.05, first_s=0.0, cap=True)
    for _ in range(3):
        progress.update(1)
        time.sleep(0.06)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("warm-up: 1 steps (at most 100)")
    silent = io.StringIO()
    quiet = Progress(5, "x", stream=silent, quiet=True, every_s=0.0)
    quiet.update(5, force=True)
    quiet.write("eval")
    quiet.close()
    assert silent.getvalue() == ""


def test_warm_start_prints_at_once_and_its_first_probe_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert not sys.stderr.isatty()  # pytest captures: the plain-lines mode
    started = time.perf_counter()
    suite = Suite("one", (TASKS["reverse-easy"],), warmup_steps=PROBE_EVERY, warmup_target=0.99, eval_size=4)
    warm = warm_start(TorchOptions(no_cache=True, warmup_steps=PROBE_EVERY), suite, TOK, quiet=False)
    out, err = capsys.readouterr()
    assert out.startswith("warm start: supervised warm-up of one (reverse-easy), at most 25 steps")
    assert "1 thread, deterministic" in out.splitlines()[0]
    assert "warm start ready in" in out and f"{warm.steps} warm-up steps" in out
    probe_lines = [line for line in err.splitlines() if line.startswith(f"warm-up: {PROBE_EVERY} steps")]
    assert len(probe_lines) == 1 and "probe accuracy" in probe_lines[0] and "\r" not in err
    assert time.perf_counter() - started < 60


def test_cpu_kernels_are_pinned_only_before_torch_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "torch" in sys.modules and pin_cpu_kernels() == {}  # too late here: nothing set
    monkeypatch.delitem(sys.modules, "torch")
    for key in PINNED_CPU_KERNELS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")  # a value the user set wins
    pinned = pin_cpu_kernels()
    if pinned:  # an x86-64 Linux machine with AVX2 and FMA
        assert pinned == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    import os

    assert os.environ["MKL_CBWR"] == "COMPATIBLE"


def test_progress_on_a_terminal_draws_a_bar() -> None:
    stream = io.StringIO()
    progress = Progress(4, "runs", stream=stream, tty=True)
    progress.update(2, "rounds 1")
    progress.close()
    assert "\r" in stream.getvalue() and "runs:" in stream.getvalue()  # tqdm redraws in place
    assert "\n" not in stream.getvalue()  # no plain lines
