"""The reference loop end to end on tiny models: every method, exact resume, HF models, the CLI and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtgrpo_backends.cli import main
from mtgrpo_backends.torch.checkpoint import save_checkpoint
from mtgrpo_backends.torch.config import TrainConfig
from mtgrpo_backends.torch.loop import train, train_step
from mtgrpo_backends.torch.model import CharGPT, CharGPTConfig, completion_logprobs, logits_of, sample
from mtgrpo_backends.torch.state import make_state
from mtgrpo_backends.torch.tasks import TASKS, CharTokenizer, Problem, RewardError, Suite, Task
from mtgrpo_backends.torch.warmup import (
    MAINTAIN,
    PROBE_EVERY,
    supervised_batch,
    warm_started_model,
    warm_up,
    warmup_mix,
)

torch.set_num_threads(1)
TOK = CharTokenizer()
TINY = CharGPTConfig(vocab_size=TOK.vocab_size, n_layer=1, n_embd=32, n_head=2)


def _starts_with_digit(problem: Problem, completion: str) -> float:
    """A reward an untrained model already earns sometimes, so that groups are informative."""
    return 1.0 if completion[:1].isdigit() else 0.0


def _suite(name: str = "toy", reward=_starts_with_digit) -> Suite:  # type: ignore[no-untyped-def]
    tasks = tuple(
        Task(n, TASKS[n].make, TASKS[n].max_new_tokens, reward=reward)
        for n in ("reverse-easy", "sort-easy", "add-easy")
    )
    return Suite(name, tasks, warmup_steps=0, eval_size=4)


def _config(method: str, steps: int = 2, **kw) -> TrainConfig:  # type: ignore[no-untyped-def]
    base = {"batch_size": 4, "group_size": 4, "minibatches": 2, "eval_every": 2, "eval_samples": 1, "lr": 1e-3}
    return TrainConfig(suite="toy", method=method, steps=steps, sampler={"max_rounds": 2}, **{**base, **kw})


METHODS = [
    "grpo",
    "dapo",
    "sec-grpo",
    "sec-dapo",
    "iwu-only:0.2",
    "rps-only",
    "mt-grpo:0.2",
    "mt-grpo-noinfl:0.5",
    "minimax",
    "minimax-reg:0.01",
]


@pytest.mark.parametrize("method", METHODS)
def test_few_steps_with_every_method(method: str) -> None:
    model = CharGPT(TINY, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    state = train(_config(method, steps=3, kl_coef=0.05 if method == "grpo" else 0.0), model, _suite(), TOK)
    assert state.step == 3 and len(state.history) == 3 and [e["step"] for e in state.evals] == [0, 2, 3]
    for row in state.history:
        assert np.isclose(sum(row["weights"]), 1.0) and sum(row["realized_counts"]) <= 4
        present = np.array(row["generated"]) > 0  # J_k is NaN exactly where no prompt of task k was generated
        assert np.array_equal(np.isfinite(row["train_reward"]), present) and np.isfinite(row["loss"])
        assert row["seconds"]["core"] < row["seconds"]["generate"] + row["seconds"]["update"]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    if method.startswith(("mt-grpo", "iwu")):
        assert all(r["improvement"] is not None for r in state.history)
        assert not np.allclose(state.history[-1]["weights"], 1 / 3)  # the rule moved the weights


def _run(tmp: Path, steps: int, resume: Path | None = None, ckpt: Path | None = None):  # type: ignore[no-untyped-def]
    return train(
        _config("mt-grpo:0.2", steps=steps), CharGPT(TINY, seed=0), _suite(), TOK, checkpoint=ckpt, resume=resume
    )


def test_resume_continues_bit_for_bit(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.pt"
    _run(tmp_path, 2, ckpt=ckpt)
    resumed = _run(tmp_path, 4, resume=ckpt)
    straight = _run(tmp_path, 4)
    for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(a, b)

    def strip(history: list[dict]) -> list[str]:  # JSON text: NaN (a step without rollouts) compares equal
        return [json.dumps({k: v for k, v in r.items() if k != "seconds"}) for r in history]

    assert strip(resumed.history) == strip(straight.history)
    assert resumed.evals == straight.evals
    np.testing.assert_array_equal(resumed.controller.weights, straight.controller.weights)
    assert torch.equal(resumed.generator.get_state(), straight.generator.get_state())


def test_checkpoint_from_another_method_or_suite_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "grpo.pt"
    state = make_state(_config("grpo"), CharGPT(TINY), _suite(), TOK)
    save_checkpoint(ckpt, state, _config("grpo"), _suite())
    with pytest.raises(ValueError, match=r"written for method 'grpo', but this run uses 'dapo'"):
        train(_config("dapo"), CharGPT(TINY), _suite(), TOK, resume=ckpt)
    with pytest.raises(ValueError, match=r"written for suite 'toy', but this run uses 'other'"):
        train(_config("grpo"), CharGPT(TINY), _suite("other"), TOK, resume=ckpt)


def test_model_vocabulary_must_cover_the_tokenizer() -> None:
    small = CharGPT(CharGPTConfig(vocab_size=10, n_layer=1, n_embd=16, n_head=2))
    with pytest.raises(ValueError, match=f"model vocabulary has 10 entries but the tokenizer has {TOK.vocab_size}"):
        make_state(_config("grpo"), small, _suite(), TOK)


class _BlowsUpInTraining(CharGPT):
    """Finite while sampling (no grad), NaN logits in the policy update."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None):  # type: ignore[no-untyped-def]
        out = super().forward(input_ids, attention_mask, position_ids, past_key_values)
        if torch.is_grad_enabled():
            out.logits = out.logits * float("nan")
        return out


def test_nan_loss_is_reported() -> None:
    state = make_state(_config("grpo"), _BlowsUpInTraining(TINY), _suite(), TOK)
    with pytest.raises(FloatingPointError, match=r"policy loss is nan at step 1, mini-batch 0 \(method 'grpo'"):
        train_step(state, _config("grpo"), _suite(), TOK)


def _fails_on_digits(problem: Problem, completion: str) -> float:
    if completion[:1].isdigit():
        raise ValueError("cannot parse")
    return 0.0 if completion else 1.0


def test_reward_failure_names_task_and_completion_unless_opted_in() -> None:
    suite = _suite(reward=_fails_on_digits)
    state = make_state(_config("grpo"), CharGPT(TINY, seed=0), suite, TOK)
    with pytest.raises(RewardError, match=r"task 'reverse-easy' failed on prompt 'rev:\d{4}=', completion '\d"):
        train_step(state, _config("grpo"), suite, TOK)
    config = _config("grpo", reward_errors_as_zero=True)
    state = make_state(config, CharGPT(TINY, seed=0), suite, TOK)
    row = train_step(state, config, suite, TOK)
    assert row["reward_failures"] > 0


def test_cached_sampling_matches_recomputation_and_padding_is_invisible() -> None:
    model = CharGPT(TINY, seed=3).eval()

    class NoCache(torch.nn.Module):  # any causal LM: the loop recomputes the sequence for every token
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask, position_ids):  # type: ignore[no-untyped-def]
            return self.inner(input_ids, attention_mask, position_ids).logits

    rows = [TOK.encode("rev:12="), TOK.encode("sort:98765=")]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = (ids != 0).long()
    a = sample(model, ids, mask, 6, TOK.eos_id, TOK.pad_id, 0.0, None)
    b = sample(NoCache(), ids, mask, 6, TOK.eos_id, TOK.pad_id, 0.0, None)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with torch.no_grad():  # left padding changes nothing: positions follow the mask
        alone = logits_of(model, torch.tensor([rows[0]]), torch.ones(1, len(rows[0]), dtype=torch.long))
        padded = logits_of(model, ids[:1], mask[:1])[:, width - len(rows[0]) :]
    torch.testing.assert_close(alone, padded)


def test_hugging_face_causal_lm_trains() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=TOK.vocab_size, n_layer=1, n_embd=32, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=1
    )
    model = transformers.GPT2LMHeadModel(config)
    state = train(_config("mt-grpo:0.2", steps=2), model, _suite(), TOK)
    assert state.step == 2 and np.isfinite(state.history[-1]["loss"])
    ids = torch.tensor([TOK.encode("rev:1234=[")])
    assert completion_logprobs(model, ids, torch.ones_like(ids), 5).shape == (1, ids.shape[1] - 5)


def test_warm_start_cache_reloads_the_same_weights(tmp_path: Path) -> None:
    suite = Suite("toy", tuple(TASKS[n] for n in ("reverse-easy", "add-easy")), warmup_steps=3, eval_size=4)
    a = warm_started_model(suite, TOK, config=TINY, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("warmup-toy-*.pt"))) == 1 and a.steps == 3 and a.probe_accuracy is None
    b = warm_started_model(suite, TOK, config=TINY, cache_dir=tmp_path)
    c = warm_started_model(suite, TOK, config=TINY, use_cache=False)
    for x, y, z in zip(a.model.parameters(), b.model.parameters(), c.model.parameters(), strict=True):
        assert torch.equal(x, y) and torch.equal(x, z)


def test_warm_up_stops_at_the_first_check_where_every_task_reaches_the_target() -> None:
    always = Task("always-right", TASKS["reverse-easy"].make, 7, reward=lambda p, c: 1.0)
    never = Task("never-right", TASKS["sort-easy"].make, 7, reward=lambda p, c: 0.1)
    easy = Suite("easy", (always,), warmup_steps=120, warmup_target=0.5, eval_size=4)
    warm = warm_started_model(easy, TOK, config=TINY, use_cache=False)
    assert warm.steps == PROBE_EVERY and warm.probe_accuracy == [1.0]
    hard = Suite("hard", (always, never), warmup_steps=60, warmup_target=0.5, eval_size=4)
    warm = warm_started_model(hard, TOK, config=TINY, use_cache=False)
    assert warm.steps == 60 and warm.probe_accuracy == [1.0, 0.0]  # the cap; the last check came before it


def test_a_task_at_the_warm_up_ceiling_leaves_the_demonstration_mix() -> None:
    always = Task("always-right", TASKS["reverse-easy"].make, 7, reward=lambda p, c: 1.0)
    never = Task("never-right", TASKS["sort-easy"].make, 7, reward=lambda p, c: 0.0)
    suite = Suite("mix", (always, never), warmup_steps=60, warmup_target=0.05, warmup_ceiling=0.6, eval_size=4)
    np.testing.assert_array_equal(warmup_mix(np.array([1.0, 0.3, 0.01]), 0.05, 0.6), [0.0, MAINTAIN, 1.0])
    mix = warmup_mix(np.array([1.0, 0.0]), 0.05, 0.6)  # above the ceiling: no demonstrations; below the target: all
    ids, _, start = supervised_batch(suite, TOK, 32, np.random.default_rng(0), mix)
    prompts = [TOK.decode(row[:start].tolist()) for row in ids]
    assert all("sort:" in p and "rev:" not in p for p in prompts)
    seen: list[list[float] | None] = []
    warm_up(CharGPT(TINY, seed=0), suite, TOK, 60, target=0.05, progress=lambda s, n, probe: seen.append(probe))
    assert [p for p in seen if p is not None] == [[1.0, 0.0], [1.0, 0.0]]  # never-right never reaches the target
    with pytest.raises(ValueError, match=r"warmup_ceiling must be above warmup_target=0\.5, got 0\.5"):
        Suite("bad", (always,), warmup_steps=1, warmup_target=0.5, warmup_ceiling=0.5, eval_size=4)


def test_cli_train_writes_results_and_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--suite", "tiny3", "--method", "dapo", "--steps", "1", "--batch-size", "3", "--group-size", "2"]
    args += ["--warmup-steps", "1", "--no-cache", "--quiet", "--eval-samples", "1", "--sampler.max-rounds", "0"]
    assert main([*args, "--out", str(tmp_path), "--threads", "1"]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["task_names"] == ["reverse-easy", "sort-medium", "add-easy"]
    assert {k: x for k, x in data["settings"]["config"]["sampler"].items() if x is not None} == {"max_rounds": 0}
    log = data["methods"]["dapo"]["runs"][0]["log"]
    assert len(log["history"]) == 1 and log["evals"][-1]["step"] == 1
    assert (tmp_path / "figure.png").stat().st_size > 1000
    out = capsys.readouterr().out.splitlines()  # --quiet: the last evaluation's line and what was written
    assert len(out) == 2 and out[0].startswith("step    1  held-out acc:") and out[1].startswith("wrote results.json")
    pooled = ["--pool-size", "20", "--selection.skip", "history", "--out", str(tmp_path / "pool")]
    assert main([*args, *pooled, "--threads", "1"]) == 0
    data = json.loads((tmp_path / "pool" / "results.json").read_text())
    totals = data["methods"]["dapo"]["runs"][0]["log"]["training_set"]
    assert set(totals) == {"generated", "handed_out", "retried", "retried_informative", "skipped"}
    assert totals["handed_out"] == totals["generated"] and sum(totals["generated"]) > 0
    capsys.readouterr()
    assert main(["train", "--suite", "tiny4", "--quiet"]) == 2
    assert "mtgrpo train: error: suite must be one of" in capsys.readouterr().err
    assert main(["train", "--quiet", "--lr", "-1"]) == 2
    assert "--lr -1.0: lr must be" in capsys.readouterr().err
    assert main(["train", "--quiet", "--method", "dapo", "--rule.improvement-clip", "0.3"]) == 2
    assert "--rule.improvement-clip 0.3: no chosen method's rule takes 'improvement_clip'" in capsys.readouterr().err


def test_cli_demo_prints_table_and_writes_results_and_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["demo", "--steps", "2", "--eval-every", "1", "--warmup-steps", "1", "--no-cache", "--quiet"]
    args += ["--eval-samples", "1", "--batch-size", "4", "--group-size", "2", "--minibatches", "1"]
    assert main([*args, "--methods", "grpo,mt-grpo:0.2", "--threads", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "worst %" in out and "mt-grpo:0.2" in out and "core share" in out and "step@budget" in out
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["methods"]) == {"grpo", "mt-grpo:0.2"}
    run = data["methods"]["grpo"]["runs"][0]
    assert run["eval_steps"] == [0, 1, 2] and run["worst"] >= 0 and run["rollouts_at_evals"] == [0, 8, 16]
    assert (tmp_path / "figure.png").stat().st_size > 10_000
