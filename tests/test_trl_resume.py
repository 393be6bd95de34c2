"""MTGRPOTrainer checkpoints: a run resumed from ANY optimizer step continues exactly as the uninterrupted run.

A controller step is one generation batch; with `steps_per_generation=2` or `num_iterations=2` a checkpoint can
fall inside one. The resumed run must train on the same batch tensors, finish the step with the same facts and
continue with the same batches and controller weights. Real TRL, the tiny local model of test_trl_trainer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mtgrpo_backends.trl.checkpoint_state import BUFFER_FILE, STATE_FILE
from tests.test_trl_trainer import Recorder, _same, make_trainer, toy_dataset

# Both runs execute the same float32 operations in the same order on the same CPU with one thread, so the weights
# come out bit-identical (measured: max difference 0.0). The tolerance only leaves room for a kernel choosing
# another reduction order; the failure it guards against (a regenerated batch, a lost controller step) moves
# weights by about one Adam step, lr = 1e-3 (measured 2.5e-3 before the fix), a thousand times more.
WEIGHT_ATOL = 1e-6
MID_BATCH = {
    "steps_per_generation=2": {"steps_per_generation": 2, "per_device_train_batch_size": 8},
    "num_iterations=2": {"num_iterations": 2},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=list(MID_BATCH))
def baseline(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Recorder, str]:
    """4 optimizer steps = 2 generation batches, a checkpoint after every optimizer step."""
    out = tmp_path_factory.mktemp("baseline")
    trainer = make_trainer(out, max_steps=4, save_strategy="steps", save_steps=1, **MID_BATCH[request.param])
    trainer.train()
    return trainer, request.param


def _resume(baseline: tuple[Recorder, str], out: Path, step: int = 1, **overrides: Any) -> Recorder:
    run, name = baseline
    resumed = make_trainer(out, max_steps=4, **{**MID_BATCH[name], **overrides})
    resumed.train(resume_from_checkpoint=str(Path(str(run.args.output_dir)) / f"checkpoint-{step}"))
    return resumed


def test_a_checkpoint_inside_a_generation_batch_holds_the_pending_step(baseline: tuple[Recorder, str]) -> None:
    run, _ = baseline
    out = Path(str(run.args.output_dir))
    mid = json.loads((out / "checkpoint-1" / STATE_FILE).read_text())
    assert mid["tasks"] == ["easy", "hard", "mid"] and mid["pending"]["trl_step"] == 1
    facts = mid["pending"]["facts"]
    assert len(facts["rollout_task"]) == len(facts["rollout_reward"]) == 4 * int(run.batches[0].report.generated.sum())
    assert len(mid["pending"]["surrogate_rows"]) == 1  # the surrogate of the batch's first optimizer step
    assert (out / "checkpoint-1" / BUFFER_FILE.format(rank=0)).exists()
    end = json.loads((out / "checkpoint-2" / STATE_FILE).read_text())
    assert end["pending"] is None and not (out / "checkpoint-2" / BUFFER_FILE.format(rank=0)).exists()


def test_resume_inside_a_generation_batch_continues_exactly(baseline: tuple[Recorder, str], tmp_path: Path) -> None:
    run, _ = baseline
    resumed = _resume(baseline, tmp_path)
    assert resumed.state.global_step == 4 and len(resumed.states_after) == 3
    for got, expected in zip(resumed.states_after, run.states_after[1:], strict=True):
        assert _same(got, expected)  # the controller after every later optimizer step
    assert resumed.controller.step == run.controller.step == 2
    # the rest of the first batch is not regenerated; the second batch is drawn exactly as without interruption
    assert [list(b.keys) for b in resumed.batches] == [list(b.keys) for b in run.batches[1:]]
    trained = [r for r in resumed.loss_inputs if r["step"] == -1]  # rows of the restored first batch
    expected = [r for r in run.loss_inputs if r["step"] == 0][1:]  # its optimizer step(s) after the checkpoint
    assert len(trained) == len(expected) > 0
    for got_rows, want_rows in zip(trained, expected, strict=True):
        assert torch.equal(got_rows["mtgrpo_row"], want_rows["mtgrpo_row"])
        assert torch.equal(got_rows["advantages"], want_rows["advantages"])
    reference = dict(run.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param, reference[name], atol=WEIGHT_ATOL, rtol=0.0)


def test_resume_with_tasks_in_another_order_or_number_is_refused(
    baseline: tuple[Recorder, str], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"tasks \['easy', 'hard', 'mid'\].*tasks \['mid', 'easy', 'hard'\]"):
        _resume(baseline, tmp_path / "order", tasks=["mid", "easy", "hard"])
    with pytest.raises(ValueError, match=r"tasks \['easy', 'hard', 'mid'\] \(3.*tasks \['easy', 'hard'\] \(2"):
        _resume(baseline, tmp_path / "count", dataset=toy_dataset(("easy", "hard")))
    # refused before TRL loads anything, also for resume_from_checkpoint=True (the last checkpoint of output_dir)
    run, name = baseline
    trainer = make_trainer(Path(str(run.args.output_dir)), tasks=["hard", "easy", "mid"], **MID_BATCH[name])
    untouched = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with pytest.raises(ValueError, match=r"checkpoint-4' was trained on tasks .*MTGRPOConfig.tasks="):
        trainer.train(resume_from_checkpoint=True)
    assert all(torch.equal(p, untouched[n]) for n, p in trainer.model.named_parameters())
    assert trainer.controller.step == 0 and trainer.state.global_step == 0


def test_resume_inside_a_batch_without_its_batch_file_is_refused(
    baseline: tuple[Recorder, str], tmp_path: Path
) -> None:
    run, name = baseline
    copy = tmp_path / "checkpoint-1"
    shutil.copytree(Path(str(run.args.output_dir)) / "checkpoint-1", copy)
    (copy / BUFFER_FILE.format(rank=0)).unlink()
    with pytest.raises(FileNotFoundError, match=r"middle of a generation batch but has no mtgrpo_generation_batch"):
        make_trainer(tmp_path / "out", max_steps=4, **MID_BATCH[name]).train(resume_from_checkpoint=str(copy))


def test_resume_inside_a_batch_with_other_generation_settings_is_refused(
    baseline: tuple[Recorder, str], tmp_path: Path
) -> None:
    _, name = baseline
    other = {"steps_per_generation": 4} if name == "steps_per_generation=2" else {"num_iterations": 3}
    with pytest.raises(ValueError, match=r"middle of a generation batch .* multiple of 2"):
        _resume(baseline, tmp_path, **other)


def test_a_refused_state_changes_nothing(baseline: tuple[Recorder, str], tmp_path: Path) -> None:
    run, _ = baseline
    state = json.loads((Path(str(run.args.output_dir)) / "checkpoint-1" / STATE_FILE).read_text())
    fresh = make_trainer(tmp_path, max_steps=4, **MID_BATCH[baseline[1]])
    before = fresh.mtgrpo_state_dict()
    state["prompt_pool"]["cursor"] = [1]  # refused by the pool, after the controller would have loaded
    with pytest.raises(ValueError, match="cursor"):
        fresh.load_mtgrpo_state_dict(state)
    assert _same(fresh.mtgrpo_state_dict(), before) and fresh._pending is None and fresh._step == 0
    # the state round-trips through JSON exactly (float64 values included)
    state = json.loads((Path(str(run.args.output_dir)) / "checkpoint-1" / STATE_FILE).read_text())
    fresh.load_mtgrpo_state_dict(state)
    assert json.loads(json.dumps(fresh.mtgrpo_state_dict())) == state
    assert fresh._pending is not None and np.array_equal(
        fresh._pending.facts.rollout_reward, np.asarray(state["pending"]["facts"]["rollout_reward"])
    )
