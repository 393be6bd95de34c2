"""verl's own `fit()` with MT-GRPO on CPU, through the real generation seam: the trainer is built from the composed
`mtgrpo_ppo` config by verl's constructor, verl's tokenizer loader and `RLHFDataset` read a real model folder and
real parquet files, the dataset is attached by `MTGRPOTrainer._init_dataloader`, every round is submitted by the
real `_submit_rows` into a real TransferQueue, and verl's fit loop runs several steps (balance, old log-probs, GRPO
advantages, update, metrics, checkpoint, validation, TransferQueue cleanup). Only the agent loop (the producer of
trajectories: `AgentLoopOutput`s written as verl's `AgentLoopWorkerTQ` writes them, some sessions with two
outputs) and the actor worker group are fakes, as in verl's own CPU tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")

import pandas as pd
import torch
import transfer_queue as tq
from hydra import compose, initialize_config_module
from tensordict import NonTensorData, NonTensorStack, TensorDict
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, PreTrainedTokenizerFast
from verl.experimental.agent_loop import AgentLoopOutput
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from mtgrpo_backends.verl.checkpoint import STATE_FILE
from mtgrpo_backends.verl.main import CONFIG_NAME
from mtgrpo_backends.verl.trainer import MTGRPOTrainer
from tests.test_verl_transfer_queue import FakeActor as StepActor
from tests.test_verl_transfer_queue import transfer_queue as transfer_queue  # the fixture

TASKS = ["easy", "hard"]
SOLVE_RATE = {"easy": 0.5, "hard": 0.3}  # the fake policy's chance that a session answers correctly
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 ?=+"
STEPS = 4
VAL_ROWS = 4


def _model_folder(folder: Path) -> str:
    """A char-level tokenizer with a chat template and a tiny model config, as verl's HFModelConfig loads them."""
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(folder)
    GPT2Config(
        n_layer=1,
        n_embd=16,
        n_head=2,
        vocab_size=len(vocab),
        bos_token_id=1,
        eos_token_id=1,
        architectures=["GPT2LMHeadModel"],
    ).save_pretrained(folder)
    return str(folder)


def _parquet(path: Path, rows: int, offset: int) -> str:
    tasks = [TASKS[i % 2] for i in range(rows)]
    pd.DataFrame(
        {
            "data_source": tasks,
            "prompt": [[{"role": "user", "content": f"{t} {offset + i}?"}] for i, t in enumerate(tasks)],
            "reward_model": [{"style": "rule", "ground_truth": str(offset + i)} for i in range(rows)],
            "extra_info": [{"index": offset + i} for i in range(rows)],
        }
    ).to_parquet(path)
    return str(path)


def data_overrides(tmp_path: Path, val_rows: int) -> list[str]:
    """The tiny model, the train and validation parquet files, B = 4, N = 2 and the fake servers' settings (they
    write no rollout log-probs)."""
    return [
        f"actor_rollout_ref.model.path={_model_folder(tmp_path / 'model')}",
        f"data.train_files={_parquet(tmp_path / 'train.parquet', 24, 0)}",
        f"data.val_files={_parquet(tmp_path / 'val.parquet', val_rows, 100)}",
        "data.train_batch_size=4",
        "data.max_prompt_length=32",
        "data.dataloader_num_workers=0",
        "data.filter_overlong_prompts_workers=1",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.rollout.val_kwargs.n=2",
        "actor_rollout_ref.rollout.calculate_log_probs=false",
    ]


class FakeAgentLoop:
    """Plays verl's `AgentLoopManagerTQ` + `AgentLoopWorkerTQ`: each prompt's chat template through the tokenizer,
    N sessions (val_kwargs.n when validating), written to TransferQueue under `{uid}_{session}_{index}` with the
    worker's fields and tags, then the prompt's terminal status. A session of a "hard" prompt takes two outputs (a
    tool turn, then the answer; the final score is copied to the first, as verl does)."""

    def __init__(self, config: Any, tokenizer: Any, seed: int = 0) -> None:
        self.config, self.tokenizer = config, tokenizer
        self.rng = {"train": np.random.default_rng(seed), "val": np.random.default_rng(seed + 1)}
        self.submitted: dict[str, list[str]] = {"train": [], "val": []}

    def generate_sequences(self, batch: TensorDict) -> None:
        validate = bool(batch["validate"]) if "validate" in batch else False
        partition = "val" if validate else "train"
        for i in range(len(batch)):
            prompt = {k: _item(v, i) for k, v in batch.items() if k != "validate"}
            self.submitted[partition].append(prompt["uid"])
            tq.kv_put(key=prompt["uid"], partition_id=partition, tag={"status": "running"})
            step = int(prompt["global_steps"])
            self.write(prompt, partition, step, step)

    def write(self, prompt: dict[str, Any], partition: str, first: int, last: int) -> None:
        """A prompt's N sessions, tagged as generated by weight versions first to last, then its final status."""
        uid, task = prompt["uid"], prompt["data_source"]
        rollout = self.config.actor_rollout_ref.rollout
        n = rollout.val_kwargs.n if partition == "val" else rollout.n
        prompt_ids = self.tokenizer.apply_chat_template(prompt["raw_prompt"], tokenize=True, return_dict=False)
        keys, fields, tags = [], [], []
        for session in range(n):
            solved = self.rng[partition].random() < SOLVE_RATE[task]
            answer = prompt["reward_model"]["ground_truth"] if solved else "0"
            turns = ["=", answer] if task == "hard" else [answer]
            for index, text in enumerate(turns):
                ids = [*self.tokenizer.encode(text), self.tokenizer.eos_token_id]
                out = AgentLoopOutput(
                    prompt_ids=list(prompt_ids),
                    response_ids=ids,
                    response_mask=[1] * len(ids),
                    reward_score=float(solved),  # the final output's score, copied to earlier outputs
                    num_turns=2 * len(turns),
                    metrics=AgentLoopMetrics(),
                    extra_fields={"reward_extra_info": {"acc": float(solved)}},
                )
                field = out.as_dict()
                field.update(prompt, session_id=session)
                field["input_ids"] = torch.cat([field["prompts"], field["responses"]])
                field["loss_mask"] = field["response_mask"]
                keys.append(f"{uid}_{session}_{index}")
                fields.append(field)
                length = len(prompt_ids) + len(ids)
                tags.append(
                    {"status": "success", "seq_len": length, "global_steps": int(prompt["global_steps"])}
                    | {"min_global_steps": first, "max_global_steps": last}
                )
        tq.kv_batch_put(keys=keys, fields=list_of_dict_to_tensordict(fields), tags=tags, partition_id=partition)
        tq.kv_put(key=uid, partition_id=partition, tag={"status": "finished"})


def _item(value: Any, i: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value[i]
    if isinstance(value, NonTensorStack):
        return value[i].data
    if isinstance(value, NonTensorData):
        return value.data
    raise TypeError(f"unexpected batch field {type(value)}")


class FitActor(StepActor):
    """The step test's actor (after an update, a row's log-probs move by DELTA[task] toward its advantage's sign),
    reset at each step: the log-probs of a batch it has not trained on are the generating policy's."""

    def __init__(self) -> None:
        super().__init__()
        self.trained: set[str] = set()
        self.saved: list[str] = []

    def compute_log_prob(self, meta: Any) -> Any:
        self.updated = set(meta.keys) == self.trained
        return super().compute_log_prob(meta)

    def update_actor(self, meta: Any) -> dict[str, Any]:
        self.trained = set(meta.keys)
        return super().update_actor(meta)  # type: ignore[no-any-return]

    def save_checkpoint(self, local_path: str, *args: Any, **kwargs: Any) -> None:
        os.makedirs(local_path, exist_ok=True)
        self.saved.append(local_path)


def _trainer(tmp_path: Path) -> MTGRPOTrainer:
    overrides = [
        "mtgrpo.tasks=[easy,hard]",
        "mtgrpo.poll_interval=0.02",
        "mtgrpo.round_timeout_s=60",
        *data_overrides(tmp_path, VAL_ROWS),
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        f"trainer.total_training_steps={STEPS}",
        "trainer.test_freq=2",
        f"trainer.save_freq={STEPS}",
        f"trainer.default_local_dir={tmp_path / 'ckpt'}",
        "trainer.logger=[console]",
    ]
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        config = compose(CONFIG_NAME, overrides=overrides)
    trainer = MTGRPOTrainer(config)  # verl's constructor: the replay buffer from the config
    trainer._init_tokenizer()  # verl's: HFModelConfig over the model folder
    trainer._init_dataloader()  # verl's RLHFDataset on the parquet files, then attach_dataset (the real seam)
    trainer._init_dump_executor()
    trainer.actor_rollout_wg = FitActor()
    trainer.reward_loop_manager = SimpleNamespace(reward_loop_worker_handles=[object()])  # rewards streamed in
    trainer.checkpoint_manager = SimpleNamespace(sleep_replicas=lambda: None, update_weights=lambda *a: None)
    trainer.resource_pool_manager = SimpleNamespace(get_n_gpus=lambda: 1)
    trainer._load_checkpoint()  # as verl's _setup ends: a fresh folder, global step 0
    return trainer


def test_fit_runs_several_steps_through_submit_rows_with_carry_over_and_validation(
    transfer_queue: None, tmp_path: Path
) -> None:
    trainer = _trainer(tmp_path)
    ctrl = trainer.buffer.controller
    assert ctrl is not None and ctrl.sampler.carry is not None  # the lean default carries over
    loop = FakeAgentLoop(trainer.config, trainer.tokenizer)
    steps: list[dict[str, Any]] = []
    n = trainer.config.actor_rollout_ref.rollout.n
    compute_metrics = trainer._compute_metrics

    def recording(batch: Any, metrics: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        """verl's metrics of the step, and what the step trained and kept, before fit clears the batch."""
        compute_metrics(batch, metrics, *args, **kwargs)
        keys = [key for key, tag in zip(batch.keys, batch.tags, strict=True) if not tag.get("is_padding", False)]
        kept = {str(uid) for uid in ctrl.kept_payloads().values()}
        beside = set((tq.kv_list(partition_id="train") or {}).get("train", {})) - set(batch.keys)
        assert {key for key in beside if "_" not in key} == kept  # the kept groups wait in TransferQueue:
        assert len({key.rsplit("_", 1)[0] for key in beside if "_" in key}) == n * len(kept)  # all their sessions
        steps.append({"keys": keys, "metrics": dict(metrics), "kept": kept})

    trainer._compute_metrics = recording  # type: ignore[method-assign]
    weights_before = ctrl.weights.copy()
    trainer.fit(loop)

    assert len(steps) == STEPS and ctrl.step == STEPS and trainer.global_steps == STEPS + 1
    assert not np.allclose(ctrl.weights, weights_before)
    generated = sum(s["metrics"]["mtgrpo/generated_groups"] for s in steps)
    assert generated == len(loop.submitted["train"])  # every round went through _submit_rows to the agent loop
    trained: set[str] = set()
    carried = 0
    kept_before: set[str] = set()
    for s in steps:
        uids = {key.rsplit("_", 2)[0] for key in s["keys"]}
        assert uids <= set(loop.submitted["train"]) and not uids & trained  # no group trained twice
        finals = {key.rsplit("_", 1)[0] for key in s["keys"]}
        assert len(finals) == n * len(uids)  # every session of every group, carried ones included
        carried_here = uids & kept_before
        assert len(carried_here) == s["metrics"]["mtgrpo/carried_groups"]
        assert s["metrics"]["mtgrpo/kept_groups"] == len(s["kept"])
        carried += len(carried_here)
        trained |= uids
        kept_before = s["kept"]
        assert all(f"mtgrpo/weight/{t}" in s["metrics"] for t in TASKS) and "actor/pg_loss" in s["metrics"]
    assert carried > 0, "no group was carried into a later batch: the test shows nothing of carry-over"
    assert any(key.endswith("_1") for s in steps for key in s["keys"])  # sessions of two outputs were trained
    assert any(f"mtgrpo/improvement/{t}" in s["metrics"] for s in steps for t in TASKS)

    # validation (verl's own sampling of partition "val") before training and at steps 2 and 4
    assert len(loop.submitted["val"]) == 3 * VAL_ROWS
    for step in (2, 4):
        metrics = steps[step - 1]["metrics"]
        assert all(f"val-core/{t}/acc/mean@2" in metrics for t in TASKS)
    assert not any("val-core" in key for key in steps[0]["metrics"])

    # fit cleared what it trained; only the groups kept for the next step remain, with all their trajectories
    queued = tq.kv_list() or {}
    assert not queued.get("val")
    remaining = set(queued.get("train", {}))
    assert {key.rsplit("_", 2)[0] for key in remaining} == steps[-1]["kept"]
    # the last step's checkpoint: MT-GRPO's state beside verl's, with the kept groups listed
    state = json.loads((tmp_path / "ckpt" / f"global_step_{STEPS}" / STATE_FILE).read_text())
    assert state["controller"]["step"] == STEPS and {uid for _, uid in state["kept_uids"]} == steps[-1]["kept"]
    if remaining:
        tq.kv_clear(keys=list(remaining), partition_id="train")
