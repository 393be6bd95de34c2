"""The verl backend's settings (the `mtgrpo` config group) and the checks of verl's config made before anything starts.

The replay buffer receives the `mtgrpo` group as `trainer.v1.sampler.sampler_kwargs` (the Hydra entry point sets
that interpolation); `check_trainer_config` refuses verl settings under which the per-step batch conversation
cannot run, each with the setting's name and the fix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf
from packaging.version import Version

from mtgrpo_core import checks as v
from mtgrpo_core.methods import parse_method
from mtgrpo_core.settings import SamplerSettings, Settings

logger = logging.getLogger(__name__)
SUPPORTED_VERL = (Version("0.9.1"), Version("0.10.0"))
TRAINER_MODES = ("sync", "colocate_async", "separate_async")
BUFFER_PATH = "pkg://mtgrpo_backends.verl.replay_buffer"
BUFFER_NAME = "MTGRPOReplayBuffer"
# verl policy losses whose per-sample clipped surrogate the driver can recompute for I_k, and its ratio level
SURROGATE_LEVELS = {"vanilla": "token", "gspo": "sequence"}


def check_verl_version(version: str) -> None:
    """Refuse a verl release outside the supported range (the backend subclasses verl's v1 trainer internals)."""
    low, high = SUPPORTED_VERL
    if not low <= Version(version) < high:
        raise ImportError(
            f"mtgrpo_backends.verl supports verl>={low},<{high} (it subclasses the v1 ReplayBuffer and sync "
            f"trainer); found verl {version}. Install a supported release: pip install -e '.[verl]' in the mtgrpo "
            "checkout (docs/verl.md)"
        )


@dataclass(frozen=True)
class MTGRPOSettings:
    """The `mtgrpo` config group (docs/verl.md). One verl training step is one controller step.

    tasks: task names in weight order; None takes the sorted distinct values of the dataset's task_field.
    sampler: SamplerSettings keys (max_rounds, oversample, filtering, carry_over, ...); batch_size and group_size
        come from verl (data.train_batch_size, actor_rollout_ref.rollout.n). Groups kept by carry-over stay in
        TransferQueue until they are trained or released (docs/verl.md).
    round_timeout_s: how long one generation round may take before sample() gives up with an error.
    """

    method: str = "mt-grpo:0.2"
    tasks: tuple[str, ...] | None = None
    task_field: str = "data_source"
    seed: int = 0
    rule_kwargs: Mapping[str, Any] = field(default_factory=dict)
    sampler: Mapping[str, Any] = field(default_factory=dict)
    improvement_reduce: str | None = None
    correct_reward: float = 1.0
    poll_interval: float = 0.2
    round_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        parse_method(self.method)
        if isinstance(self.tasks, str):  # tuple("gsm8k") would be five one-letter tasks
            raise TypeError(
                f"mtgrpo.tasks must be a list of task names, got the string {self.tasks!r}; for one task write "
                f"mtgrpo.tasks=[{self.tasks}]"
            )
        if self.tasks is not None:
            names = list(self.tasks)
            if not names or len(set(names)) != len(names) or not all(isinstance(t, str) and t for t in names):
                raise ValueError(f"mtgrpo.tasks must be a non-empty list of distinct names, got {self.tasks!r}")
            object.__setattr__(self, "tasks", tuple(names))
        if not isinstance(self.task_field, str) or not self.task_field:
            raise ValueError(f"mtgrpo.task_field must be a non-empty string, got {self.task_field!r}")
        v.positive_int("mtgrpo.seed", self.seed, minimum=0)
        for name in ("rule_kwargs", "sampler"):
            if not isinstance(getattr(self, name), Mapping):
                raise TypeError(f"mtgrpo.{name} must be a mapping, got {getattr(self, name)!r}")
        clash = sorted({"batch_size", "group_size"} & set(self.sampler))
        if clash:
            raise ValueError(
                f"mtgrpo.sampler sets {clash}: these come from verl (data.train_batch_size, "
                "actor_rollout_ref.rollout.n); remove them from mtgrpo.sampler"
            )
        if "correct_reward" in self.sampler:
            raise ValueError(
                f"mtgrpo.sampler.correct_reward is {self.sampler['correct_reward']!r}: set mtgrpo.correct_reward, "
                "which the strict filter and accuracy both read"
            )
        v.real_in_range("mtgrpo.poll_interval", self.poll_interval, 0.0, low_open=True)
        v.real_in_range("mtgrpo.round_timeout_s", self.round_timeout_s, 0.0, low_open=True)
        num_tasks = 1 if self.tasks is None else len(self.tasks)
        self.check_controller(batch_size=num_tasks, group_size=2)  # verl's B and N: check_trainer_config

    @property
    def settings(self) -> Settings:
        """The algorithm's settings (mtgrpo_core.settings); what the core refuses names the key under mtgrpo."""
        try:
            return Settings(
                self.method,
                SamplerSettings.from_mapping(self.sampler),
                self.rule_kwargs,
                None,
                cast(Any, self.improvement_reduce),
                self.correct_reward,
            )
        except (TypeError, ValueError) as err:
            raise type(err)(f"mtgrpo.{err}") from None

    def check_controller(self, batch_size: int, group_size: int) -> None:
        """Build the method's rule, sampler and controller once, as the replay buffer will, so that what they refuse
        is refused before any worker starts, naming the key. When the settings are built, verl's B and N are not
        known yet: B = K and N = 2 stand in, and check_trainer_config checks again with data.train_batch_size and
        actor_rollout_ref.rollout.n."""
        num_tasks = 1 if self.tasks is None else len(self.tasks)
        settings = self.settings
        try:
            settings.check(num_tasks, batch_size, group_size)
        except (TypeError, ValueError) as err:
            raise type(err)(f"mtgrpo.{err} (B={batch_size}, N={group_size})") from None

    @classmethod
    def from_config(cls, kwargs: Any) -> MTGRPOSettings:
        """Settings from the `mtgrpo` group (a DictConfig or a mapping); unknown keys are refused by name."""
        plain = OmegaConf.to_container(kwargs, resolve=True) if isinstance(kwargs, DictConfig) else kwargs
        if not isinstance(plain, Mapping):
            raise TypeError(f"trainer.v1.sampler.sampler_kwargs must be the mtgrpo mapping, got {kwargs!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(plain) - known)
        if unknown:
            raise ValueError(f"mtgrpo has unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(**dict(plain))


def check_trainer_config(config: Any) -> None:
    """Refuse verl settings under which MT-GRPO's per-step conversation cannot run (before any worker starts)."""

    def get(path: str, default: Any = None) -> Any:
        return OmegaConf.select(config, path, default=default)

    problems = []
    if not get("trainer.use_v1", False):
        problems.append("trainer.use_v1 is false: the backend plugs into verl's v1 trainer; set trainer.use_v1=true")
    problems += _mode_problems(get)
    if get("algorithm.filter_groups.enable", False):
        problems.append(
            "algorithm.filter_groups.enable is true: MT-GRPO's sampler does the filtering (method 'dapo' is DAPO's "
            "dynamic sampling); set algorithm.filter_groups.enable=false"
        )
    if get("reward.reward_model.enable", False) and not get("reward.reward_model.enable_resource_pool", False):
        problems.append(
            "reward.reward_model.enable is true without reward.reward_model.enable_resource_pool: a colocated "
            "reward model scores after sampling, but the sampler needs rm_scores to filter; use rule-based "
            "rewards or set reward.reward_model.enable_resource_pool=true"
        )
    path, name = get("trainer.v1.sampler.custom_sampler.path"), get("trainer.v1.sampler.custom_sampler.name")
    if (path, name) != (BUFFER_PATH, BUFFER_NAME):
        problems.append(
            f"trainer.v1.sampler.custom_sampler is (path={path!r}, name={name!r}); set path={BUFFER_PATH} and "
            f"name={BUFFER_NAME} (the mtgrpo_ppo config does)"
        )
    group = get("mtgrpo")
    batch_size, group_size = get("data.train_batch_size"), get("actor_rollout_ref.rollout.n")
    if group is not None and isinstance(batch_size, int) and isinstance(group_size, int):
        try:
            settings = MTGRPOSettings.from_config(group)
            tasks = len(settings.tasks or ())
            if batch_size < tasks:
                raise ValueError(
                    f"data.train_batch_size={batch_size} is below the {tasks} tasks of mtgrpo.tasks: the per-task "
                    "quotas do not fit; use data.train_batch_size >= the number of tasks"
                )
            settings.check_controller(batch_size, group_size)
        except (TypeError, ValueError) as err:
            problems.append(str(err))
    if problems:
        raise ValueError("verl config not usable with MT-GRPO:\n- " + "\n- ".join(problems))


def _mode_problems(get: Callable[..., Any]) -> list[str]:
    """What `trainer.v1.trainer_mode` asks of the other settings: sync runs the synchronous conversation; the async
    modes run the streaming mode (`mtgrpo.sampler.steps_ahead`) with MT-GRPO's requests instead of verl's warm-up,
    separate_async one mini-batch of B / parameter_sync_step groups per `sample()` call (docs/verl.md)."""
    mode = get("trainer.v1.trainer_mode")
    if mode not in TRAINER_MODES:
        return [f"trainer.v1.trainer_mode is {mode!r}, expected one of {list(TRAINER_MODES)}"]
    ahead = get("mtgrpo.sampler.steps_ahead")
    sync_steps = get(f"trainer.v1.{mode}.parameter_sync_step", 1)
    if mode == "sync":
        problems = [] if sync_steps == 1 else [f"trainer.v1.sync.parameter_sync_step is {sync_steps!r}: use 1"]
        if ahead:
            problems.append(
                f"mtgrpo.sampler.steps_ahead is {ahead!r} under trainer.v1.trainer_mode=sync: the streaming mode "
                "generates the next batches while one trains, which needs an asynchronous trainer; set "
                "trainer.v1.trainer_mode=separate_async (or colocate_async), or leave mtgrpo.sampler.steps_ahead unset"
            )
        return problems
    problems = []
    if not ahead:
        problems.append(
            f"trainer.v1.trainer_mode is {mode!r} but mtgrpo.sampler.steps_ahead is {ahead!r}: an asynchronous "
            "trainer runs the streaming mode (the next batch's groups are requested while this one trains); set "
            "+mtgrpo.sampler.steps_ahead=1 (with mtgrpo.sampler.carry_over >= 1), or trainer.v1.trainer_mode=sync"
        )
    warmup = get(f"trainer.v1.{mode}.num_warmup_batches", 0)
    if warmup:
        problems.append(
            f"trainer.v1.{mode}.num_warmup_batches is {warmup!r}: verl's warm-up submits dataloader prompts the "
            f"controller never planned (its ahead requests take their place); set trainer.v1.{mode}."
            "num_warmup_batches=0 (the mtgrpo_ppo config does)"
        )
    if mode == "colocate_async" and sync_steps != 1:
        problems.append(
            f"trainer.v1.colocate_async.parameter_sync_step is {sync_steps!r}: colocate_async computes a mini-batch's "
            "old log-probs with the weights the step's earlier mini-batches updated; use 1, or "
            "trainer.v1.trainer_mode=separate_async (which restores the step's starting weights)"
        )
    if mode == "separate_async":
        problems += _separate_async_problems(get, sync_steps)
    if get("actor_rollout_ref.rollout.calculate_log_probs", True) is False:
        logger.warning(
            "mtgrpo: actor_rollout_ref.rollout.calculate_log_probs=false under trainer_mode=%s: groups generated "
            "ahead by older weights are trained against this step's old log-probs with no correction for the "
            "policy that generated them; set it true to use algorithm.rollout_correction (docs/verl.md)",
            mode,
        )
    return problems


def _separate_async_problems(get: Callable[..., Any], sync_steps: Any) -> list[str]:
    """separate_async: one mini-batch of B / parameter_sync_step groups per `sample()` call, standalone rollout
    replicas, and no lending of the trainer's GPUs to generation."""
    problems = []
    batch_size, mini = get("data.train_batch_size"), get("actor_rollout_ref.actor.ppo_mini_batch_size")
    if not isinstance(sync_steps, int) or isinstance(sync_steps, bool) or sync_steps < 1:
        problems.append(f"trainer.v1.separate_async.parameter_sync_step is {sync_steps!r}: expected an int >= 1")
    elif batch_size != sync_steps * mini:
        fix = (
            f"set actor_rollout_ref.actor.ppo_mini_batch_size={batch_size // sync_steps}"
            if isinstance(batch_size, int) and batch_size % sync_steps == 0
            else "use a data.train_batch_size divisible by parameter_sync_step"
        )
        problems.append(
            f"data.train_batch_size={batch_size} must equal trainer.v1.separate_async.parameter_sync_step="
            f"{sync_steps} x actor_rollout_ref.actor.ppo_mini_batch_size={mini}: separate_async trains one "
            f"mini-batch of B / parameter_sync_step groups per sample() call; {fix}"
        )
    rollout = {key: get(f"actor_rollout_ref.rollout.{key}") for key in ("nnodes", "n_gpus_per_node")}
    backend = get("actor_rollout_ref.rollout.checkpoint_engine.backend")
    if not all(isinstance(n, int) and n > 0 for n in rollout.values()) or backend == "naive":
        problems.append(
            f"actor_rollout_ref.rollout nnodes={rollout['nnodes']!r}, n_gpus_per_node={rollout['n_gpus_per_node']!r}, "
            f"checkpoint_engine.backend={backend!r}: separate_async generates on standalone rollout replicas; set "
            "nnodes and n_gpus_per_node > 0 and a checkpoint engine other than 'naive' (e.g. nccl)"
        )
    if get("trainer.v1.separate_async.hybrid_rollout.enable_switch", False):
        problems.append(
            "trainer.v1.separate_async.hybrid_rollout.enable_switch is true: it lends the trainer's GPUs to "
            "generation until enough groups are sampleable, a count the step's conversation does not expose; "
            "set trainer.v1.separate_async.hybrid_rollout.enable_switch=false"
        )
    return problems


def surrogate_level(config: Any) -> str:
    """The ratio level of the actor's policy loss ("token" or "sequence"), refusing losses I_k cannot mirror."""
    mode = OmegaConf.select(config, "actor_rollout_ref.actor.policy_loss.loss_mode", default="vanilla")
    if mode not in SURROGATE_LEVELS:
        raise ValueError(
            f"actor_rollout_ref.actor.policy_loss.loss_mode is {mode!r}; the improvement signal I_k recomputes the "
            f"per-sample clipped surrogate only for {sorted(SURROGATE_LEVELS)}: use one of them, or a method whose "
            "rule does not need I_k (e.g. 'rps-only', 'dapo')"
        )
    return SURROGATE_LEVELS[mode]


def check_transfer_queue_cpus(tq_config: Any, cluster_cpus: float) -> None:
    """Refuse a TransferQueue that cannot start on this Ray cluster: its controller and each SimpleStorage unit
    hold one logical CPU, and Ray waits silently (forever) for CPUs the cluster does not have."""
    backend = OmegaConf.select(tq_config, "backend.storage_backend", default="SimpleStorage")
    if backend != "SimpleStorage":
        return
    units = OmegaConf.select(tq_config, "backend.SimpleStorage.num_data_storage_units", default=8)
    needed = int(units) + 1
    if cluster_cpus < needed:
        raise ValueError(
            f"transfer_queue.backend.SimpleStorage.num_data_storage_units={units} needs {needed} logical CPUs in "
            f"Ray (one per storage unit, one for TransferQueue's controller) but the Ray cluster has "
            f"{cluster_cpus:g}: TransferQueue's start would wait forever. On a small host set "
            "transfer_queue.backend.SimpleStorage.num_data_storage_units=1 and/or ray_kwargs.ray_init.num_cpus "
            f"to at least {needed} (logical CPUs, not cores; verl's agent-loop and reward workers need more)"
        )
