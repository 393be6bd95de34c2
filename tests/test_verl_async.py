"""verl's async trainers with MT-GRPO's streaming mode, on CPU: verl's own `PPOTrainerColocateAsync` and
`PPOTrainerSeparateAsync` (through MT-GRPO's subclasses) run `fit()` through the real dataset attach, `_submit_rows`
and TransferQueue. Only the rollout servers and the actor are fakes, driven deterministically (no threads): the
servers generate a prompt when the replay buffer polls TransferQueue while they are awake, stamping the weight
versions it spanned as verl's rollout does, and take the weight syncs and the abort / sleep / resume calls of the
trainers; the actor's log-probs move by a known amount per optimizer step, so I_k is checked by hand."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")

import torch
import transfer_queue as tq
from hydra import compose, initialize_config_module
from tensordict import TensorDict
from verl.trainer.ppo.v1.trainer_separate_async import HybridEngineMode
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from mtgrpo_backends.verl.checkpoint import STATE_FILE
from mtgrpo_backends.verl.main import CONFIG_NAME
from mtgrpo_backends.verl.trainer import MTGRPOTrainerMixin, trainer_class
from tests.test_verl_fit import TASKS, FakeAgentLoop, _item, data_overrides
from tests.test_verl_transfer_queue import DELTA
from tests.test_verl_transfer_queue import clean_queue as clean_queue  # the fixtures
from tests.test_verl_transfer_queue import transfer_queue as transfer_queue


class ClockedServers(FakeAgentLoop):
    """The agent loop and rollout servers on a clock. A training prompt starts at the weight version the servers
    hold if they are awake (else when they wake) and finishes at the replay buffer's next TransferQueue poll while
    they are awake, tagged with the versions it spanned (verl's min/max_global_steps); a weight sync aborts and
    resumes what is running, as verl's partial rollout does. Validation prompts finish at once."""

    def __init__(self, config: Any, tokenizer: Any, seed: int = 0) -> None:
        super().__init__(config, tokenizer, seed)
        self.version, self.awake = 0, True
        self.running: list[tuple[dict[str, Any], int | None]] = []

    def generate_sequences(self, batch: TensorDict) -> None:
        if "validate" in batch and bool(batch["validate"]):
            return super().generate_sequences(batch)
        for i in range(len(batch)):
            prompt = {k: _item(v, i) for k, v in batch.items()}
            self.submitted["train"].append(prompt["uid"])
            tq.kv_put(key=prompt["uid"], partition_id="train", tag={"status": "running"})
            self.running.append((prompt, self.version if self.awake else None))

    def tick(self) -> None:
        if self.awake:
            for prompt, first in self.running:
                self.write(prompt, "train", self.version if first is None else first, self.version)
            self.running = []

    def update_weights(self, version: int | None = None, *args: Any) -> None:
        self.version = self.version if version is None else version

    def abort_replicas(self, **kwargs: Any) -> None:
        """Running requests resume under the next weights (verl's FullyAsyncLLMServerClient retries them)."""

    def sleep_replicas(self) -> None:
        self.awake = False

    def resume_generation_replicas(self) -> None:
        self.awake = True


class ClockActor:
    """An actor whose policy is its count of optimizer steps: a row's log-prob is -1 per token at the policy its
    old log-probs were computed with, and moves by DELTA[task] * sign(A) per optimizer step since. separate_async's
    save / restore of the step's starting weights (its decoupled pi_old) saves and restores the count."""

    def __init__(self) -> None:
        self._dispatch_info: dict[str, list[int]] = {}
        self.steps = 0
        self.anchor: dict[str, int] = {}
        self.cpu: dict[int, int] = {}
        self.updates: list[list[str]] = []

    def _query_dispatch_info(self, role: str) -> list[int]:
        return [0]

    def compute_log_prob(self, meta: Any) -> Any:
        old = [key not in self.anchor for key in meta.keys]
        assert all(old) or not any(old), "old log-probs are computed for whole mini-batches"
        fields = ["input_ids", "data_source"] + ([] if all(old) else ["advantages"])
        data = tq.kv_batch_get(keys=meta.keys, partition_id=meta.partition_id, select_fields=fields)
        rows = []
        for i, key in enumerate(meta.keys):
            moved = self.steps - self.anchor.setdefault(key, self.steps)
            sign = float(np.sign(data["advantages"][i].sum())) if moved else 0.0
            rows.append(
                torch.full((data["input_ids"][i].numel(),), -1.0 + DELTA[data["data_source"][i]] * sign * moved)
            )
        nested = torch.nested.as_nested_tensor(rows, layout=torch.jagged)
        out = list_of_dict_to_tensordict([{"log_probs": r, "entropy": torch.zeros_like(r)} for r in nested.unbind()])
        tq.kv_batch_put(keys=meta.keys, partition_id=meta.partition_id, fields=out)
        return meta

    def update_actor(self, meta: Any) -> dict[str, Any]:
        self.steps += 1
        self.updates.append([key for key, tag in zip(meta.keys, meta.tags, strict=True) if not tag.get("is_padding")])
        return {"metrics": {"mfu": [0.0], "pg_loss": [0.0]}}

    def save_model_to_cpu(self, slot: int) -> None:
        self.cpu[slot] = self.steps

    def restore_model_from_cpu(self, slot: int) -> None:
        self.steps = self.cpu[slot]

    def clear_cpu_model(self, slot: int) -> None:
        del self.cpu[slot]

    def save_checkpoint(self, local_path: str, *args: Any, **kwargs: Any) -> None:
        Path(local_path).mkdir(parents=True, exist_ok=True)

    def load_checkpoint(self, local_path: str, **kwargs: Any) -> None:
        pass


def _trainer(tmp_path: Path, mode: str, steps: int, *extra: str) -> tuple[MTGRPOTrainerMixin, ClockedServers]:
    """MT-GRPO's trainer of `mode`, built by verl's constructor from the composed config, with the dataset attached
    through verl's tokenizer and RLHFDataset, the clocked servers and the actor; resumes what tmp_path holds."""
    overrides = [
        "mtgrpo.tasks=[easy,hard]",
        "mtgrpo.poll_interval=0.01",
        "mtgrpo.round_timeout_s=60",
        "+mtgrpo.sampler.generation_cap=0",  # no cap: a step whose ahead groups fall short runs rounds
        *data_overrides(tmp_path, 4),
        f"trainer.v1.trainer_mode={mode}",
        f"trainer.total_training_steps={steps}",
        "trainer.val_before_train=false",
        "trainer.test_freq=0",
        f"trainer.default_local_dir={tmp_path / 'ckpt'}",
        "trainer.logger=[console]",
        *extra,
    ]
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        config = compose(CONFIG_NAME, overrides=overrides)
    trainer = trainer_class(mode)(config)  # verl's constructor: the replay buffer from the config
    trainer._init_tokenizer()
    trainer._init_dataloader()  # verl's RLHFDataset, then attach_dataset
    trainer._init_dump_executor()
    servers = ClockedServers(config, trainer.tokenizer)
    poll = trainer.buffer._sync_metadata_from_transfer_queue

    def polled() -> None:
        servers.tick()
        poll()

    trainer.buffer._sync_metadata_from_transfer_queue = polled  # type: ignore[method-assign]
    trainer.actor_rollout_wg = ClockActor()
    trainer.reward_loop_manager = SimpleNamespace(reward_loop_worker_handles=[object()])  # rewards streamed in
    trainer.checkpoint_manager = trainer.standalone_checkpoint_manager = servers
    trainer.resource_pool_manager = SimpleNamespace(get_n_gpus=lambda: 1)
    trainer.current_mode = HybridEngineMode.TRAINER  # separate_async without hybrid replicas
    trainer._load_checkpoint()  # as verl's init() ends: _setup, then on_init_end (the weight sync)
    trainer.on_init_end()
    return trainer, servers


def _fit(trainer: MTGRPOTrainerMixin, servers: ClockedServers) -> list[dict[str, Any]]:
    """verl's fit(); per step: the trained rows' keys and tags, the step record, verl's metrics and what is left
    in TransferQueue beside the batch."""
    steps: list[dict[str, Any]] = []
    take_step, compute_metrics = trainer.buffer.take_step, trainer._compute_metrics

    def taking() -> Any:
        steps.append({"record": take_step()})
        return steps[-1]["record"]

    def recording(batch: Any, metrics: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        compute_metrics(batch, metrics, *args, **kwargs)
        rows = [(k, t) for k, t in zip(batch.keys, batch.tags, strict=True) if not t.get("is_padding", False)]
        beside = set((tq.kv_list(partition_id="train") or {}).get("train", {})) - set(batch.keys)
        steps[-1].update(rows=rows, metrics=dict(metrics), beside={key.split("_")[0] for key in beside})

    trainer.buffer.take_step = taking  # type: ignore[method-assign]
    trainer._compute_metrics = recording  # type: ignore[method-assign]
    trainer.fit(servers)
    return steps


def _improvement(config: Any, delta: float, moved: int) -> float:
    """A task's I_k when each of its rows has advantage +a or -a (a [1, 0] group), as many of each, and its
    log-probs moved by delta * sign(A) per optimizer step for `moved` steps: the mean clipped-surrogate change."""
    a = 0.5 / (np.std([1.0, 0.0], ddof=1) + 1e-6)  # verl's GRPO advantage of a [1, 0] group
    low, high = config.actor_rollout_ref.actor.clip_ratio_low, config.actor_rollout_ref.actor.clip_ratio_high
    up = min(np.exp(delta * moved), 1 + high) * a - a
    down = max(np.exp(-delta * moved), 1 - low) * -a + a
    return float((up + down) / 2)


def _check_steps(steps: list[dict[str, Any]], config: Any, moved: int, carry_over: int) -> None:
    """What every step of a streaming run keeps: the batch is the targets (ratio and size exact), no group is
    trained twice, each group's age is within carry_over and equals verl's worst-case staleness of each of its rows,
    I_k is the hand-computed one, and only the groups kept or in flight wait in TransferQueue."""
    trained: set[str] = set()
    ahead = 0
    for t, step in enumerate(steps, start=1):
        batch = step["record"].batch
        assert not batch.report.budget_exhausted and len(batch) == 4
        assert batch.report.realized_counts.tolist() == batch.report.target_counts.tolist()
        age = {str(uid): int(s) for uid, s in zip(batch.payloads, batch.staleness, strict=True)}
        assert set(age) == {key.split("_")[0] for key, _ in step["rows"]} and not set(age) & trained
        assert max(age.values()) <= carry_over
        for key, tag in step["rows"]:  # verl's trajectory_staleness_worst = (global_steps - 1) - min_global_steps
            assert (t - 1) - tag["min_global_steps"] == age[key.split("_")[0]]
        assert step["metrics"]["training/off_policy/trajectory_staleness_worst/max"] == max(age.values())
        ahead += sum(s > 0 for s in age.values())
        trained |= set(age)
        for k in set(batch.tasks.tolist()):
            task = TASKS[k]
            want = _improvement(config, DELTA[task], moved)
            assert step["metrics"][f"mtgrpo/improvement/{task}"] == pytest.approx(want, rel=1e-5)
            assert step["metrics"][f"mtgrpo/staleness/{task}"] == np.mean(batch.staleness[batch.tasks == k])
        assert step["metrics"]["mtgrpo/in_flight_groups"] + step["metrics"]["mtgrpo/kept_groups"] == len(step["beside"])
    assert ahead > 0, "no group generated ahead was trained: the test shows nothing"


def test_colocate_async_trains_the_groups_requested_ahead(clean_queue: None, tmp_path: Path) -> None:
    """colocate_async, one mini-batch per step: each step reports the groups requested at the step before (they
    start under the old weights, are aborted when verl sleeps the replicas and finish under the new ones)."""
    extra = ["+mtgrpo.sampler.steps_ahead=1", "actor_rollout_ref.actor.ppo_mini_batch_size=4"]
    trainer, servers = _trainer(tmp_path, "colocate_async", 4, *extra)
    steps = _fit(trainer, servers)
    assert len(steps) == 4 and trainer.buffer.controller is not None and trainer.buffer.controller.step == 4
    _check_steps(steps, trainer.config, moved=1, carry_over=1)
    spans = [tag["max_global_steps"] - tag["min_global_steps"] for s in steps for _, tag in s["rows"]]
    assert set(spans) == {0, 1}  # rounds of the step, and ahead groups across the weight sync
    assert [len(keys) for keys in trainer.actor_rollout_wg.updates] == [len(s["rows"]) for s in steps]


def test_separate_async_trains_the_batch_in_parameter_sync_step_mini_batches(clean_queue: None, tmp_path: Path) -> None:
    """separate_async with parameter_sync_step=2 and two steps ahead: each step's batch is dealt into 2
    mini-batches of B / 2 groups in the batch's task ratio, each trained with old log-probs of the step's starting
    weights (verl restores them), so I_k spans both optimizer steps."""
    extra = [
        "+mtgrpo.sampler.steps_ahead=2",
        "+mtgrpo.sampler.carry_over=2",
        "trainer.v1.separate_async.parameter_sync_step=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.rollout.nnodes=1",
        "actor_rollout_ref.rollout.n_gpus_per_node=1",
        "actor_rollout_ref.rollout.checkpoint_engine.backend=nccl",
        "actor_rollout_ref.hybrid_engine=false",
    ]
    trainer, servers = _trainer(tmp_path, "separate_async", 4, *extra)
    steps = _fit(trainer, servers)
    _check_steps(steps, trainer.config, moved=2, carry_over=2)
    updates = trainer.actor_rollout_wg.updates
    assert len(updates) == 2 * len(steps)
    for t, step in enumerate(steps):
        batch = step["record"].batch
        task = {str(uid): int(k) for uid, k in zip(batch.payloads, batch.tasks, strict=True)}
        age = {str(uid): int(s) for uid, s in zip(batch.payloads, batch.staleness, strict=True)}
        halves = [sorted({key.split("_")[0] for key in updates[2 * t + j]}) for j in range(2)]
        assert [len(h) for h in halves] == [2, 2] and set(halves[0] + halves[1]) == set(task)
        for k in (0, 1):  # each mini-batch holds half the task's groups, within one
            counts = [sum(task[u] == k for u in h) for h in halves]
            assert abs(counts[0] - counts[1]) <= 1
            first = [age[u] for u in halves[0] if task[u] == k]
            second = [age[u] for u in halves[1] if task[u] == k]
            assert not first or not second or min(first) >= max(second)  # oldest first
    assert any(s > 1 for step in steps for s in step["record"].batch.staleness)  # reported two steps later


def test_a_resume_restores_the_groups_kept_and_in_flight(
    clean_queue: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint taken with groups kept and requested ahead: verl saves TransferQueue with it, MT-GRPO's state
    lists them, and a resume after a restart (TransferQueue emptied) restores them exactly; the ahead ones (running
    at the checkpoint) are re-issued by verl, under the restored weights, and reported at the next step. Without
    verl's TransferQueue files they are released, with a warning."""
    extra = ["+mtgrpo.sampler.steps_ahead=1", "actor_rollout_ref.actor.ppo_mini_batch_size=4", "trainer.save_freq=1"]
    trainer, servers = _trainer(tmp_path, "colocate_async", 1, *extra)
    _fit(trainer, servers)
    saved = json.loads((tmp_path / "ckpt" / "global_step_1" / STATE_FILE).read_text())
    in_flight = [uid for _, uids, _ in saved["ahead"] for uid in uids]
    held = len(in_flight) + len(saved["kept_uids"])
    assert in_flight and saved["kept_uids"], "nothing kept or in flight at the checkpoint: the test shows nothing"
    _restart()

    resumed, servers = _trainer(tmp_path, "colocate_async", 2, *extra)
    assert resumed.global_steps == 1 and resumed.buffer.state_dict() == saved
    queued = set((tq.kv_list(partition_id="train") or {}).get("train", {}))
    assert {key.split("_")[0] for key in queued} == set(resumed.buffer.held_uids())  # the trained rows are cleared
    steps = _fit(resumed, servers)
    assert len(steps) == 1 and set(in_flight) <= set(steps[0]["record"].uids)  # re-issued, reported at step 2
    assert set(servers.submitted["train"][: len(in_flight)]) == set(in_flight)  # verl re-issued them first
    again = [tag for key, tag in steps[0]["rows"] if key.split("_")[0] in in_flight]
    assert again and all(tag["min_global_steps"] == 1 for tag in again)  # fresher than the core's version 0

    shutil.rmtree(tmp_path / "ckpt" / "global_step_1" / "transfer_queue")
    _restart()
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("1")
    with caplog.at_level(logging.WARNING):
        released, _ = _trainer(tmp_path, "colocate_async", 2, *extra)
    assert released.buffer.held_uids() == [] and released.buffer.controller is not None
    assert f"{held} groups kept or requested ahead at step 1 are dropped: {held} of them" in caplog.text


def _restart() -> None:
    """What a restart does to TransferQueue: empties it."""
    for partition, items in (tq.kv_list() or {}).items():
        if items:  # a partition an earlier test emptied is listed with no keys
            tq.kv_clear(keys=list(items), partition_id=partition)
