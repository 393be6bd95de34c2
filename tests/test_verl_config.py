"""The verl backend's configuration: Hydra composes verl's ppo_trainer.yaml with the mtgrpo group, and bad input
(verl settings, mtgrpo settings, the dataset, the verl version) is refused at start with the setting named."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")

from datasets import Dataset
from hydra import compose, initialize_config_module
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from verl.trainer.ppo.v1.trainer_base import PPOTrainer

from mtgrpo_backends.verl.config import (
    MTGRPOSettings,
    check_trainer_config,
    check_transfer_queue_cpus,
    check_verl_version,
    surrogate_level,
)
from mtgrpo_backends.verl.main import CONFIG_NAME, check_config
from mtgrpo_backends.verl.replay_buffer import MTGRPOReplayBuffer
from mtgrpo_backends.verl.trainer import MTGRPOTrainer, dataset_tasks, trainer_class


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose(CONFIG_NAME, overrides=["mtgrpo.tasks=[gsm8k,math]", *overrides])


def test_hydra_composes_verls_config_with_the_mtgrpo_group() -> None:
    config = _compose(
        "mtgrpo.method=dapo",
        "+mtgrpo.sampler.max_rounds=3",
        "data.train_batch_size=16",
        "actor_rollout_ref.rollout.n=5",
    )
    check_trainer_config(config)
    assert config.trainer.v1.trainer_mode == "sync" and config.algorithm.adv_estimator == "grpo"
    assert config.actor_rollout_ref.actor.ppo_epochs == 1  # verl's own defaults are all there
    settings = MTGRPOSettings.from_config(config.trainer.v1.sampler.sampler_kwargs)  # what the buffer receives
    assert settings.method == "dapo" and settings.tasks == ("gsm8k", "math") and settings.sampler == {"max_rounds": 3}
    trainer = MTGRPOTrainer(config)  # verl's PPOTrainer.__init__ builds the replay buffer from the config
    assert isinstance(trainer.replay_buffer, MTGRPOReplayBuffer)
    trainer.buffer.attach(["gsm8k", "math"] * 8, 16, 5, lambda rows: [])
    assert trainer.buffer.controller is not None and trainer.buffer.controller.sampler.config.max_rounds == 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.v1.trainer_mode=fully_async", r"trainer_mode is 'fully_async', expected one of \['sync', "),
        ("trainer.use_v1=false", r"trainer\.use_v1 is false"),
        ("+trainer.v1.sync.parameter_sync_step=2", r"parameter_sync_step is 2"),
        ("algorithm.filter_groups.enable=true", r"set algorithm\.filter_groups\.enable=false"),
        ("reward.reward_model.enable=true", r"enable_resource_pool=true"),
        ("trainer.v1.sampler.custom_sampler.name=Other", r"custom_sampler is .*name='Other'"),
    ],
)
def test_verl_settings_that_break_the_step_conversation_are_refused(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_trainer_config(_compose(override))


COLOCATE = ["trainer.v1.trainer_mode=colocate_async", "+mtgrpo.sampler.steps_ahead=1"]
SEPARATE = [
    "trainer.v1.trainer_mode=separate_async",
    "+mtgrpo.sampler.steps_ahead=1",
    "data.train_batch_size=8",
    "actor_rollout_ref.actor.ppo_mini_batch_size=2",  # verl's default parameter_sync_step is 4
    "actor_rollout_ref.rollout.nnodes=1",
    "actor_rollout_ref.rollout.n_gpus_per_node=8",
    "actor_rollout_ref.rollout.checkpoint_engine.backend=nccl",
]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.v1.trainer_mode=colocate_async"], r"'colocate_async' but mtgrpo\.sampler\.steps_ahead is None: an"),
        (["+mtgrpo.sampler.steps_ahead=1"], r"steps_ahead is 1 under trainer\.v1\.trainer_mode=sync: .*separate_async"),
        ([*COLOCATE, "+mtgrpo.sampler.carry_over=0"], r"sampler\.steps_ahead 1: steps_ahead=1 needs carry_over >= 1"),
        (
            [*COLOCATE, "trainer.v1.colocate_async.num_warmup_batches=1"],
            r"num_warmup_batches is 1: .*set trainer\.v1\.colocate_async\.num_warmup_batches=0",
        ),
        (
            [*COLOCATE, "+trainer.v1.colocate_async.parameter_sync_step=2"],
            r"colocate_async\.parameter_sync_step is 2: .*trainer_mode=separate_async",
        ),
        (
            [*SEPARATE, "actor_rollout_ref.actor.ppo_mini_batch_size=8"],
            r"train_batch_size=8 must equal .*parameter_sync_step=4 x .*ppo_mini_batch_size=8: .*ppo_mini_batch_size=2",
        ),
        ([*SEPARATE, "data.train_batch_size=6"], r"train_batch_size=6 must equal .*divisible by parameter_sync_step"),
        ([*SEPARATE, "actor_rollout_ref.rollout.nnodes=0"], r"nnodes=0, .*standalone rollout replicas"),
        (
            [*SEPARATE, "trainer.v1.separate_async.hybrid_rollout.enable_switch=true"],
            r"hybrid_rollout\.enable_switch is true: .*enable_switch=false",
        ),
    ],
)
def test_async_configs_that_disagree_with_their_mode_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_trainer_config(_compose(*overrides))


@pytest.mark.parametrize("mode", ["colocate_async", "separate_async"])
def test_the_async_trainers_build_from_the_config(mode: str) -> None:
    mode_overrides = SEPARATE if mode == "separate_async" else COLOCATE
    config = _compose(*mode_overrides, "data.train_batch_size=8", "actor_rollout_ref.rollout.n=5")
    check_trainer_config(config)
    trainer = trainer_class(mode)(config)  # verl's own constructor and checks
    assert isinstance(trainer, PPOTrainer) and trainer.trainer_mode == mode
    assert trainer.buffer.mini_batches == (4 if mode == "separate_async" else 1)
    trainer.buffer.attach(["gsm8k", "math"] * 8, 8, 5, lambda rows: [])
    assert trainer.buffer.controller is not None and trainer.buffer.controller.sampler.config.steps_ahead == 1


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"colour": 1}, ValueError, r"mtgrpo has unknown keys \['colour'\]"),
        ({"method": "nope"}, ValueError, "nope"),
        ({"tasks": ["a", "a"]}, ValueError, r"mtgrpo\.tasks must be a non-empty list of distinct names"),
        ({"sampler": {"batch_size": 4}}, ValueError, r"sets \['batch_size'\].*data\.train_batch_size"),
        ({"sampler": {"carry_over": -1}}, ValueError, r"mtgrpo\.sampler\.carry_over -1: carry_over must be >= 0"),
        ({"poll_interval": 0}, ValueError, r"mtgrpo\.poll_interval must be in \(0\.0, inf\]"),
        ({"improvement_reduce": "avg"}, ValueError, r"mtgrpo\.improvement_reduce must be one of"),
    ],
)
def test_bad_mtgrpo_settings_are_refused_by_name(settings: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        MTGRPOSettings.from_config(settings)


def test_the_default_carries_over_here_as_in_every_backend() -> None:
    assert MTGRPOSettings().sampler == {}  # nothing set: the method's own settings, as in the other backends
    buffer = MTGRPOReplayBuffer("sync", {}, 8, "drop", {"method": "mt-grpo:0.2"})
    buffer.attach(["a", "b"] * 4, 4, 2, lambda rows: [])
    assert buffer.controller is not None and buffer.controller.sampler.config.carry_over == 1
    assert buffer.task_names == ["a", "b"]  # tasks None: the sorted distinct values of the task field


def test_bad_data_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match=r"no field 'data_source' \(mtgrpo\.task_field\).*columns: \['task'\]"):
        dataset_tasks(SimpleNamespace(dataframe=Dataset.from_dict({"task": ["a"]})), "data_source")
    buffer = MTGRPOReplayBuffer("sync", {}, 8, "drop", {"tasks": ["a", "b"]})
    with pytest.raises(ValueError, match=r"holds 'c' at row 2, which is not in tasks \['a', 'b'\]"):
        buffer.attach(["a", "b", "c"], 4, 2, lambda rows: [])
    with pytest.raises(ValueError, match=r"data\.train_batch_size=1 is below the 2 tasks"):
        buffer.attach(["a", "b"], 1, 2, lambda rows: [])
    with pytest.raises(ValueError, match=r"trainer_mode='colocate_async' with mtgrpo\.sampler\.steps_ahead=0: the"):
        MTGRPOReplayBuffer("colocate_async", {}, 8, "drop", {}).attach(["a", "b"], 4, 2, lambda rows: [])
    with pytest.raises(RuntimeError, match=r"before attach\(\)"):
        buffer.sample(global_steps=1, partition_id="train", batch_size=4)


def test_versions_and_losses_outside_the_supported_range_are_refused() -> None:
    check_verl_version("0.9.1")
    for version in ("0.8.0", "0.10.0"):
        with pytest.raises(ImportError, match=rf"supports verl>=0\.9\.1,<0\.10\.0.*found verl {version}"):
            check_verl_version(version)
    assert surrogate_level(_compose()) == "token"
    assert surrogate_level(_compose("actor_rollout_ref.actor.policy_loss.loss_mode=gspo")) == "sequence"
    with pytest.raises(ValueError, match=r"loss_mode is 'cispo'.*\['gspo', 'vanilla'\]"):
        surrogate_level(_compose("actor_rollout_ref.actor.policy_loss.loss_mode=cispo"))


def _documented_command(index: int = 0) -> list[str]:
    """The overrides of a launch command in docs/verl.md (0: the sync one, 1: the async one), as a shell would split
    them."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "verl.md").read_text()
    commands = re.findall(r"```bash\n(python -m mtgrpo_backends\.verl\.main .*?)```", text, re.S)
    assert len(commands) == 2, "docs/verl.md should hold the sync and the async launch commands"
    words = shlex.split(commands[index].replace("\\\n", " "))
    assert words[:3] == ["python", "-m", "mtgrpo_backends.verl.main"]
    return words[3:]


def _compose_plain(overrides: list[str]) -> DictConfig:
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose(CONFIG_NAME, overrides=overrides)


def test_the_documented_command_passes_verls_validate_config() -> None:
    """What `launch` checks before Ray starts: ours, then verl's `validate_config` (micro-batch sizes)."""
    command = _documented_command()
    check_config(_compose_plain(command))
    check_config(_compose_plain([*command, "actor_rollout_ref.actor.use_kl_loss=true"]))  # the ref's is read too
    without = [word for word in command if "micro_batch_size" not in word]
    with pytest.raises(InstantiationException, match=r"Please set at least one of .*ppo_micro_batch_size_per_gpu"):
        check_config(_compose_plain(without))  # what a new user hit: verl's own check, now run by CI


def test_the_documented_async_command_passes_verls_validate_config() -> None:
    config = _compose_plain(_documented_command(1))
    check_config(config)
    assert config.trainer.v1.trainer_mode == "separate_async" and config.mtgrpo.sampler.steps_ahead == 1


def test_a_transfer_queue_that_cannot_start_is_refused_with_the_fix() -> None:
    config = _compose_plain(["mtgrpo.tasks=[a,b]"])
    message = (
        r"num_data_storage_units=8 needs 9 logical CPUs in Ray .* the Ray cluster has 2: .*wait forever.*"
        r"num_data_storage_units=1 and/or ray_kwargs\.ray_init\.num_cpus to at least 9"
    )
    with pytest.raises(ValueError, match=message):
        check_transfer_queue_cpus(config.transfer_queue, 2.0)
    check_transfer_queue_cpus(config.transfer_queue, 9.0)
    small = _compose_plain(["mtgrpo.tasks=[a,b]", "transfer_queue.backend.SimpleStorage.num_data_storage_units=1"])
    check_transfer_queue_cpus(small.transfer_queue, 2.0)
    command = _documented_command()
    with pytest.raises(ValueError, match=r"needs 9 logical CPUs in Ray .* has 2"):
        check_config(_compose_plain([*command, "ray_kwargs.ray_init.num_cpus=2"]))  # refused before Ray starts
