"""The verl backend against a real TransferQueue on local Ray: the replay buffer's batch conversation with fake
producers at set per-task filter rates, and one whole sync trainer step with a fake actor worker group (verl's
own advantage and log-prob plumbing in between), whose I_k is checked by hand. One Ray start for the module."""

from __future__ import annotations

import atexit
import json
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")

import ray
import torch
import transfer_queue as tq
from datasets import Dataset
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from mtgrpo_backends.verl.main import CONFIG_NAME
from mtgrpo_backends.verl.replay_buffer import MTGRPOReplayBuffer
from mtgrpo_backends.verl.trainer import MTGRPOTrainer

TASKS = ["easy", "hard"]
ROW_TASKS = ["easy", "hard"] * 20
PROMPT_LEN, RESPONSE_LEN = 3, 2


def start_transfer_queue() -> None:
    """Local Ray and TransferQueue, started once per test process (about 30 s on 2 cores) and shared by the verl
    test modules; closed when the process exits."""
    if ray.is_initialized():
        return
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    atexit.register(tq.close)  # runs before Ray's own exit hook (registered earlier)


@pytest.fixture(scope="module")
def transfer_queue() -> Iterator[None]:
    start_transfer_queue()
    yield


@pytest.fixture
def clean_queue(transfer_queue: None) -> Iterator[None]:
    yield
    for partition, items in (tq.kv_list() or {}).items():
        if items:
            tq.kv_clear(keys=list(items), partition_id=partition)


class FakeProducer:
    """Plays verl's agent loop: N trajectories per prompt, then the prompt's terminal status. A group of task k is
    all-wrong (uninformative) with probability filter_rate[k], else one rollout is correct; `fail` fails groups."""

    def __init__(self, group_size: int, filter_rate: list[float], fail_every: int = 0, seed: int = 0) -> None:
        self.group_size, self.filter_rate, self.fail_every = group_size, filter_rate, fail_every
        self.rng = np.random.default_rng(seed)
        self.calls: list[int] = []
        self.task_of: dict[str, str] = {}

    def __call__(self, rows: np.ndarray) -> list[str]:
        self.calls.append(int(rows.shape[0]))
        uids = [uuid.uuid4().hex for _ in rows]
        keys, fields, tags, prompt_tags = [], [], [], []
        for uid, row in zip(uids, rows, strict=True):
            task = ROW_TASKS[int(row)]
            self.task_of[uid] = task
            rewards = np.zeros(self.group_size)
            if self.rng.random() >= self.filter_rate[TASKS.index(task)]:
                rewards[0] = 1.0
            failed = self.fail_every > 0 and len(self.task_of) % self.fail_every == 0
            for session, reward in enumerate(rewards):
                keys.append(f"{uid}_{session}_0")
                fields.append(_trajectory(uid, task, float(reward)))
                tags.append({"is_prompt": False, "seq_len": PROMPT_LEN + RESPONSE_LEN, "global_steps": 1})
            status = "failure" if failed else "finished"
            prompt_tags.append({"is_prompt": True, "status": status, "global_steps": 1})
        tq.kv_batch_put(keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(fields), tags=tags)
        tq.kv_batch_put(keys=uids, partition_id="train", tags=prompt_tags)
        return uids


def _trajectory(uid: str, task: str, reward: float) -> dict[str, Any]:
    rm_scores = torch.zeros(RESPONSE_LEN)
    rm_scores[-1] = reward
    return {
        "prompts": torch.arange(PROMPT_LEN),
        "responses": torch.arange(RESPONSE_LEN),
        "input_ids": torch.arange(PROMPT_LEN + RESPONSE_LEN),
        "response_mask": torch.ones(RESPONSE_LEN, dtype=torch.int64),
        "rm_scores": rm_scores,
        "uid": uid,
        "data_source": task,
    }


def _buffer(batch_size: int, group_size: int, producer: FakeProducer, **settings: Any) -> MTGRPOReplayBuffer:
    kwargs = {"tasks": TASKS, "poll_interval": 0.02, "round_timeout_s": 30.0, **settings}
    buffer = MTGRPOReplayBuffer("sync", {}, 8, "drop", kwargs)
    buffer.attach(ROW_TASKS, batch_size, group_size, producer)
    return buffer


def _queued() -> set[str]:
    return set((tq.kv_list(partition_id="train") or {}).get("train", {}))


def test_batch_follows_the_weights_and_everything_else_is_cleared(clean_queue: None) -> None:
    producer = FakeProducer(group_size=2, filter_rate=[0.0, 0.6])
    buffer = _buffer(8, 2, producer, method="rps-only", sampler={"targets": "apportion", "carry_over": 0})
    meta, metrics = buffer.sample(global_steps=1, partition_id="train", batch_size=8)
    record = buffer.take_step()
    report = record.batch.report
    assert report.target_counts.tolist() == [4, 4] and report.realized_counts.tolist() == [4, 4]
    chosen = {key.split("_")[0] for key in meta.keys}
    assert len(chosen) == 8 and len(meta.keys) == 16
    assert sorted(producer.task_of[uid] for uid in chosen) == ["easy"] * 4 + ["hard"] * 4
    assert _queued() == set(meta.keys)  # filtered and surplus groups, and the chosen prompts' tags, are cleared
    assert metrics["mtgrpo/batch_share/hard"] == 0.5 and metrics["mtgrpo/rounds"] == report.rounds
    assert metrics["mtgrpo/generated_groups"] == sum(producer.calls) and metrics["mtgrpo/shortfall_groups"] == 0
    assert record.fresh.all() and record.rewards.shape == (sum(producer.calls), 2)


def test_round_budget_is_respected_and_failed_groups_count_as_uninformative(clean_queue: None) -> None:
    producer = FakeProducer(group_size=2, filter_rate=[0.0, 1.0], fail_every=3)
    buffer = _buffer(
        4, 2, producer, method="rps-only", sampler={"targets": "apportion", "max_rounds": 1, "carry_over": 0}
    )
    meta, metrics = buffer.sample(global_steps=1, partition_id="train", batch_size=4)
    record = buffer.take_step()
    assert len(producer.calls) == 2 and metrics["mtgrpo/rounds"] == 2  # the first request and one resample
    assert metrics["mtgrpo/budget_exhausted"] == 1.0 and metrics["mtgrpo/batch_share/hard"] == 0.0
    assert metrics["mtgrpo/filtered_ratio/hard"] == 1.0 and metrics["mtgrpo/failed_groups"] == (~record.fresh).sum()
    trained = {key.split("_")[0] for key in meta.keys}
    failed = {uid for uid, ok in zip(record.uids, record.fresh, strict=True) if not ok}
    assert trained and not trained & failed and all(producer.task_of[u] == "easy" for u in trained)
    assert _queued() == set(meta.keys)


def test_kept_groups_stay_in_transfer_queue_and_are_trained_at_a_later_step(clean_queue: None) -> None:
    """Carry-over, the lean default: a group the core keeps is not cleared; it comes back in a later batch (its
    trajectories from TransferQueue), is trained once, and only released or trained groups leave the queue."""
    producer = FakeProducer(group_size=2, filter_rate=[0.0, 0.6], seed=3)
    buffer = _buffer(8, 2, producer, method="mt-grpo:0.2")
    assert buffer.controller is not None and buffer.controller.sampler.carry is not None
    kept: set[str] = set()
    carried_seen, trained_before = 0, set()
    for step in range(1, 6):
        meta, metrics = buffer.sample(global_steps=step, partition_id="train", batch_size=8)
        record = buffer.take_step()
        batch = record.batch
        chosen = {key.split("_")[0] for key in meta.keys}
        assert chosen == {str(uid) for uid in batch.payloads or ()} and not chosen & trained_before
        carried = {str(batch.payloads[i]) for i in np.flatnonzero(batch.staleness > 0)}  # type: ignore[index]
        assert carried <= kept and len(meta.keys) == 2 * len(chosen)  # a carried group's trajectories are all there
        assert not record.fresh[len(record.uids) - len(carried) :].any()  # carried rollouts are not this step's
        carried_seen += len(carried)
        kept = {str(uid) for uid in buffer.controller.kept_payloads().values()}
        assert metrics["mtgrpo/kept_groups"] == len(kept)
        assert _queued() == set(meta.keys) | kept | {f"{u}_{s}_0" for u in kept for s in range(2)}
        tq.kv_clear(keys=meta.keys, partition_id="train")  # what verl's fit loop does after the update
        trained_before |= chosen
        buffer.controller.end_step(_trained_facts(record, meta.keys))
    assert carried_seen > 0, "no group was carried: the test shows nothing"


def _trained_facts(record: Any, keys: list[str]) -> Any:
    from mtgrpo_backends.verl.step_facts import row_groups, step_facts

    groups = row_groups(keys, record.uid_index())
    zeros = np.zeros(len(keys))
    valid = np.ones(len(keys), bool)
    return step_facts(record.group_task, record.rewards, record.fresh, groups, zeros, valid, (zeros, zeros))


def test_a_resume_restores_the_kept_groups_and_can_release_them(clean_queue: None) -> None:
    producer = FakeProducer(group_size=2, filter_rate=[0.0, 0.6], seed=3)
    buffer = _buffer(8, 2, producer, method="mt-grpo:0.2")
    assert buffer.controller is not None
    for step in range(1, 4):
        meta, _ = buffer.sample(global_steps=step, partition_id="train", batch_size=8)
        buffer.controller.end_step(_trained_facts(buffer.take_step(), meta.keys))
        if buffer.controller.kept_payloads():
            break
    state = json.loads(json.dumps(buffer.state_dict()))
    kept = len(buffer.controller.kept_payloads())
    assert kept and len(state["kept_uids"]) == kept
    fresh = _buffer(8, 2, FakeProducer(group_size=2, filter_rate=[0.0, 0.6], seed=4), method="mt-grpo:0.2")
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state  # restored whole; the sync trainer then releases them (TransferQueue is new)
    fresh.release_held()
    assert fresh.controller is not None and fresh.controller.kept_payloads() == {} and fresh.held_uids() == []
    meta, _ = fresh.sample(global_steps=4, partition_id="train", batch_size=8)  # plans without the lost groups
    assert fresh.take_step().batch.staleness.max() == 0  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="'kept_uids' must be a list of \\[key, uid\\] pairs"):
        fresh.load_state_dict({**state, "kept_uids": {"1": "x"}})


def test_validation_is_verls_own_sampling(clean_queue: None) -> None:
    buffer = _buffer(4, 2, FakeProducer(2, [0.0, 0.0]))
    uid = uuid.uuid4().hex
    fields = list_of_dict_to_tensordict([_trajectory(uid, "easy", 1.0)])
    tq.kv_batch_put(keys=[f"{uid}_0_0"], partition_id="val", fields=fields, tags=[{"seq_len": 5, "global_steps": 0}])
    tq.kv_put(key=uid, partition_id="val", tag={"is_prompt": True, "status": "finished", "global_steps": 0})
    meta, _ = buffer.sample(global_steps=0, partition_id="val", batch_size=1)
    assert meta.keys == [f"{uid}_0_0"] and buffer.controller is not None and buffer.controller.step == 0
    with pytest.raises(RuntimeError, match="take_step"):
        buffer.take_step()


def test_a_round_that_never_finishes_times_out_with_the_setting_named(clean_queue: None) -> None:
    def stuck(rows: np.ndarray) -> list[str]:
        uids = [uuid.uuid4().hex for _ in rows]
        tags = [{"is_prompt": True, "status": "running", "global_steps": 1}] * len(uids)
        tq.kv_batch_put(keys=uids, partition_id="train", tags=tags)
        return uids

    buffer = MTGRPOReplayBuffer("sync", {}, 8, "drop", {"tasks": TASKS, "poll_interval": 0.02, "round_timeout_s": 0.2})
    buffer.attach(ROW_TASKS, 4, 2, stuck)
    with pytest.raises(
        TimeoutError,
        match=r"(\d+) of \1 prompt groups not finished after mtgrpo\.round_timeout_s=0\.2 s \(\1 still pending",
    ):
        buffer.sample(global_steps=1, partition_id="train", batch_size=4)


# -- one whole trainer step: verl's pipeline between the buffer and the fake actor --------------------------------
DELTA = {"easy": 0.1, "hard": 0.3}  # the fake update moves each token's log-prob by +-DELTA toward sign(A)


class FakeActor:
    """An actor worker group: log-probs -1 per token; after `update_actor`, -1 + DELTA[task] * sign(A)."""

    def __init__(self) -> None:
        self._dispatch_info: dict[str, list[int]] = {}
        self.updated = False

    def _query_dispatch_info(self, role: str) -> list[int]:
        return [0]

    def compute_log_prob(self, meta: Any) -> Any:
        fields = ["input_ids", "data_source"] + (["advantages"] if self.updated else [])
        data = tq.kv_batch_get(keys=meta.keys, partition_id=meta.partition_id, select_fields=fields)
        rows = []
        for i in range(len(meta.keys)):
            shift = 0.0
            if self.updated:
                shift = DELTA[data["data_source"][i]] * float(np.sign(data["advantages"][i].sum()))
            rows.append(torch.full((data["input_ids"][i].numel(),), -1.0 + shift))
        nested = torch.nested.as_nested_tensor(rows, layout=torch.jagged)
        out = list_of_dict_to_tensordict([{"log_probs": r, "entropy": torch.zeros_like(r)} for r in nested.unbind()])
        tq.kv_batch_put(keys=meta.keys, partition_id=meta.partition_id, fields=out)
        return meta

    def update_actor(self, meta: Any) -> dict[str, Any]:
        self.updated = True
        return {"metrics": {"mfu": [0.0], "pg_loss": [0.0]}}


def test_one_trainer_step_measures_improvement_by_hand_and_ends_the_controller_step(clean_queue: None) -> None:
    overrides = [
        "mtgrpo.tasks=[easy,hard]",
        "+mtgrpo.sampler.targets=apportion",
        "mtgrpo.poll_interval=0.02",
        "mtgrpo.round_timeout_s=30",
        "data.train_batch_size=4",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.rollout.calculate_log_probs=false",
    ]
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        config = compose(CONFIG_NAME, overrides=overrides)
    trainer = MTGRPOTrainer.__new__(MTGRPOTrainer)
    trainer.config, trainer.trainer_mode, trainer.parameter_sync_step = config, "sync", 1
    trainer.replay_buffer = trainer._build_replay_buffer()  # verl's own construction from the config
    trainer.train_dataset = SimpleNamespace(dataframe=Dataset.from_dict({"data_source": ROW_TASKS}))
    trainer.attach_dataset()
    producer = FakeProducer(group_size=2, filter_rate=[0.0, 0.0])
    trainer.buffer.attach(ROW_TASKS, 4, 2, producer)  # the fake producer instead of the rollout servers
    trainer.actor_rollout_wg = FakeActor()
    trainer.reward_loop_manager = SimpleNamespace(reward_loop_worker_handles=[object()])  # rewards streamed in
    trainer.checkpoint_manager = SimpleNamespace(sleep_replicas=lambda: None)
    trainer.tokenizer = SimpleNamespace(eos_token_id=0, pad_token_id=0)
    trainer.use_reference_policy, trainer.use_critic, trainer.curr_step_profile = False, False, False
    trainer.global_steps, trainer.local_trigger_step = 1, 0
    weights_before = trainer.buffer.controller.weights.copy()  # type: ignore[union-attr]

    metrics: dict[str, Any] = {}
    trainer.step(metrics, {})

    a = 0.5 / (np.std([1.0, 0.0], ddof=1) + 1e-6)  # verl's GRPO advantage of a [1, 0] group
    clip = config.actor_rollout_ref.actor.clip_ratio_high
    for task, delta in DELTA.items():  # mean over the task's rows of after - before, rows with A = +a and -a
        up = min(np.exp(delta), 1 + clip) * a - a
        down = max(np.exp(-delta), 1 - clip) * -a - -a
        assert metrics[f"mtgrpo/improvement/{task}"] == pytest.approx((up + down) / 2, rel=1e-5)
        assert metrics[f"mtgrpo/reward/{task}"] == 0.5 and metrics[f"mtgrpo/accuracy/{task}"] == 0.5
        assert metrics[f"mtgrpo/batch_share/{task}"] == 0.5
    ctrl = trainer.buffer.controller
    assert ctrl is not None and ctrl.step == 1 and not np.allclose(ctrl.weights, weights_before)
    assert "actor/pg_loss" in metrics and "actor/entropy" in metrics
