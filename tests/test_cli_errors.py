"""Bad command-line input (issue 10, item 1): one `mtgrpo CMD: error: ...` line naming the flag, the value and what
was expected, exit code 2, before any warm-up or run starts, and nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtgrpo_backends.cli import main
from mtgrpo_backends.torch.checkpoint import save_checkpoint
from mtgrpo_backends.torch.config import TrainConfig
from mtgrpo_backends.torch.model import CharGPT, CharGPTConfig
from mtgrpo_backends.torch.state import make_state
from mtgrpo_backends.torch.tasks import CharTokenizer, get_suite

# a train run as small as the CLI allows; the warm-up would take 1 step if anything got that far
TRAIN = ["train", "--steps", "1", "--batch-size", "3", "--group-size", "2", "--minibatches", "1"]
TRAIN += ["--eval-samples", "1", "--warmup-steps", "1", "--no-cache"]
DEMO = ["demo", "--steps", "1", "--batch-size", "2", "--group-size", "2", "--minibatches", "1"]
DEMO += ["--eval-samples", "1", "--warmup-steps", "1", "--no-cache", "--quiet"]
BENCH = ["bench", "--steps", "2", "--seeds", "0", "--quiet", "--workers", "1"]


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> str:
    """Run argv: exit code 2, exactly one stderr line, `mtgrpo CMD: error:` and `message` in it, no warm-up
    or run started (nothing on stdout)."""
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mtgrpo {argv[0]}: error: "), lines[0]
    assert message in lines[0], lines[0]
    assert out == "", out  # refused before the warm-up (its first line) or any run
    return lines[0]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A checkpoint at step 0 of the run TRAIN describes (seed 0, lr 1e-4), with the CLI's model."""
    tokenizer, suite = CharTokenizer(), get_suite("tiny3")
    config = TrainConfig(
        steps=1, batch_size=3, group_size=2, minibatches=1, eval_samples=1, suite="tiny3", method="mt-grpo:0.2"
    )
    state = make_state(config, CharGPT(CharGPTConfig(vocab_size=tokenizer.vocab_size)), suite, tokenizer)
    path = tmp_path / "run.pt"
    save_checkpoint(path, state, config, suite)
    return path


def test_resume_of_a_file_that_is_not_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    line = refused(capsys, [*TRAIN, "--resume", str(text)], f"--resume '{text}': not a mtgrpo-torch-train/4 checkpoint")
    assert "torch.load" in line
    other = tmp_path / "other.pt"
    torch.save({"weights": {}}, other)
    refused(capsys, [*TRAIN, "--resume", str(other)], "not a mtgrpo-torch-train/4 checkpoint (found format None)")


def test_resume_of_an_empty_or_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.pt"
    empty.touch()
    refused(capsys, [*TRAIN, "--resume", str(empty)], f"--resume '{empty}': the file is empty")
    refused(capsys, [*TRAIN, "--resume", str(tmp_path / "gone.pt")], "gone.pt': no such file")
    refused(capsys, [*TRAIN, "--resume", str(tmp_path)], "expected a checkpoint file, but that is not a regular file")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seed", "1"], "--seed 0 in the checkpoint, 1 in this run"),
        (["--lr", "0.001"], "--lr 0.0001 in the checkpoint, 0.001 in this run"),
        (["--seed", "3", "--lr", "0.001"], "--lr 0.0001 in the checkpoint, 0.001 in this run; --seed 0 in the"),
        (["--sampler.max-rounds", "2"], "--sampler.max-rounds 'unset' in the checkpoint, 2 in this run"),
        (["--rule.lr", "0.5"], "--rule.lr 'unset' in the checkpoint, 0.5 in this run"),
        (["--method", "dapo"], "was written for method 'mt-grpo:0.2', but this run uses 'dapo'"),
    ],
)
def test_resume_with_other_settings_is_refused_with_both_values(
    checkpoint: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refused(capsys, [*TRAIN, "--resume", str(checkpoint), *flags], message)
    if "written for" not in message:
        assert "a resumed run keeps its checkpoint's settings" in line
        assert "only --steps and --eval-every may change" in line


def test_resume_with_the_same_settings_skips_the_warm_up(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*TRAIN, "--resume", str(checkpoint), "--eval-every", "5", "--threads", "1"]
    assert main([*args, "--checkpoint", str(tmp_path / "next.pt")]) == 0
    out = capsys.readouterr().out
    assert f"resuming {checkpoint} at step 0: to step 1; warm-up skipped" in out and "warm start" not in out
    assert (tmp_path / "next.pt").stat().st_size > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*TRAIN, "--threads", "0"], "--threads must be an integer >= 1, got 0"),
        ([*DEMO, "--threads", "0"], "--threads must be an integer >= 1, got 0"),
        ([*TRAIN, "--warmup-steps", "-5"], "--warmup-steps must be an integer >= 0, got -5"),
        ([*DEMO, "--warmup-steps", "-5"], "--warmup-steps must be an integer >= 0, got -5"),
        ([*TRAIN, "--warmup-target", "2"], "--warmup-target must lie in [0, 1], got 2.0"),
        ([*BENCH, "--workers", "0"], "--workers must be an integer >= 1, got 0"),
        ([*DEMO, "--workers", "0"], "--workers must be an integer >= 1, got 0"),
        ([*TRAIN, "--device", "bogus"], "--device 'bogus': expected a torch device such as cpu or cuda"),
        ([*TRAIN, "--device", "meta"], "--device 'meta': expected cpu or cuda[:index]"),
        ([*DEMO, "--device", "bogus"], "--device 'bogus': expected a torch device"),
        ([*TRAIN, "--kl-coef", "-1"], "--kl-coef -1.0: kl_coef must be in [0.0, inf], got -1.0"),
        ([*DEMO, "--clip-low", "5"], "--clip-low 5.0: clip_low must be in [0.0, 1.0), got 5.0"),
        ([*TRAIN, "--clip-high", "-0.1"], "--clip-high -0.1: clip_high must be in [0.0, inf], got -0.1"),
        ([*TRAIN, "--lr", "-1"], "--lr -1.0: lr must be in (0.0, inf], got -1.0"),
        ([*DEMO, "--eval-samples", "0"], "--eval-samples 0: eval_samples must be >= 1, got 0"),
        ([*TRAIN, "--suite", "tiny4"], "suite must be one of ['tiny3', 'tiny9'], got 'tiny4'"),
        ([*DEMO, "--suite", "tiny4"], "suite must be one of ['tiny3', 'tiny9'], got 'tiny4'"),
        ([*BENCH, "--suite", "tiny4"], "['paper3', 'paper3-pool', 'paper9', 'paper9-pool', 'scale1000', 'scale300']"),
        ([*TRAIN, "--method", "bogus"], "method must be one of"),
        ([*TRAIN, "--pool-size", "-2"], "--pool-size -2: pool_size must be >= 0, got -2"),
        ([*TRAIN, "--pool-size", "20000"], "'reverse-easy' yields fewer than pool_size=20000 distinct prompts"),
        ([*DEMO, "--pool-size", "20000"], "'reverse-easy' yields fewer than pool_size=20000 distinct prompts"),
        ([*TRAIN, "--selection.skip", "oracle"], "--selection.skip oracle: the oracle knows each prompt's true"),
        ([*TRAIN, "--selection.skip", "history"], "needs a finite training set: set --pool-size > 0"),
        (
            [*TRAIN, "--pool-size", "9", "--selection.skip", "history", "--method", "grpo"],
            "'grpo': selection needs a method that filters",
        ),
        ([*TRAIN, "--pool-size", "9", "--selection.skip", "history", "--selection.exploration", "1"], "exploration"),
        ([*DEMO, "--methods", "grpo,bogus"], "method must be one of"),
        ([*BENCH, "--methods", "nosuch:Rule"], "rule 'nosuch:Rule': cannot import 'Rule' from 'nosuch'"),
        ([*TRAIN, "--sampler.max-rounds", "-1"], "--sampler.max-rounds -1: max_rounds must be"),
        ([*DEMO, "--rule.alpha", "0.3"], "--rule.alpha 0.3: no chosen method's rule takes 'alpha'"),
    ],
)
def test_bad_values_are_refused_before_any_work(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(capsys, argv, message)


def test_device_cuda_without_cuda_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(capsys, [*TRAIN, "--device", "cuda"], "--device 'cuda': this torch has no CUDA device")


@pytest.mark.parametrize("command", ["bench", "demo"])
def test_reference_that_is_not_run_is_refused(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = BENCH if command == "bench" else DEMO
    message = "--reference 'sec-dapo': expected one of the methods run ['grpo', 'dapo'], so that Delta_m% has runs"
    refused(capsys, [*base, "--methods", "grpo,dapo", "--reference", "sec-dapo"], message)


def test_without_the_default_reference_the_table_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*BENCH, "--methods", "grpo,mt-grpo:0.2"]) == 0
    out = capsys.readouterr().out
    assert "no Delta_m% column: the default reference dapo is not run (name one with --reference)" in out
    assert main([*BENCH, "--methods", "grpo,mt-grpo:0.2", "--reference", "grpo"]) == 0
    assert "Δm% vs grpo" in capsys.readouterr().out


def _output_path_cases(tmp: Path) -> list[tuple[list[str], str]]:
    afile = tmp / "afile"
    afile.write_text("x")
    adir = tmp / "adir"
    adir.mkdir()
    below_file = afile / "sub"
    cannot = "expected a writable directory, cannot write there (Not a directory)"
    return [
        ([*TRAIN, "--out", str(afile)], f"--out '{afile}': expected a directory to write in, but that is an existing"),
        ([*TRAIN, "--out", str(below_file / "x")], f"--out '{below_file / 'x'}': {cannot}"),
        ([*TRAIN, "--checkpoint", str(adir)], f"--checkpoint '{adir}': expected a file to write, but that is a dir"),
        ([*TRAIN, "--checkpoint", str(below_file / "run.pt")], f"--checkpoint '{below_file}': {cannot}"),
        ([*DEMO, "--out", str(below_file)], f"--out '{below_file}': {cannot}"),
        ([*BENCH, "--out", str(afile)], f"--out '{afile}': expected a directory to write in"),
        ([*TRAIN[:-1], "--cache-dir", str(below_file)], f"--cache-dir '{below_file}': {cannot}"),
    ]


def test_output_paths_are_checked_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in _output_path_cases(tmp_path):
        refused(capsys, argv, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]  # nothing created, nothing written


def test_the_writability_check_leaves_no_directories_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "deeper"
    refused(capsys, [*BENCH, "--out", str(out), "--methods", "grpo", "--reference", "dapo"], "--reference 'dapo'")
    assert not (tmp_path / "new").exists()  # the --out check created and removed new/deeper
    assert main([*BENCH, "--out", str(out), "--methods", "grpo,dapo"]) == 0
    assert (out / "results.json").exists()


def test_train_refuses_a_batch_smaller_than_the_task_count(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--suite", "tiny3", "--steps", "1", "--batch-size", "2", "--group-size", "2", "--no-cache"]
    refused(capsys, args, "--batch-size 2 is below the 3 tasks of suite 'tiny3': the per-task quotas do not fit")
