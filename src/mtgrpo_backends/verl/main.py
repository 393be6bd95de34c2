"""Hydra entry point: verl's `ppo_trainer.yaml` plus the `mtgrpo` group, run with MT-GRPO's trainer of the mode.

    python -m mtgrpo_backends.verl.main mtgrpo.method=mt-grpo:0.2 mtgrpo.tasks=[gsm8k,math] data.train_files=...

The config `mtgrpo_ppo` (registered in Hydra's ConfigStore) composes verl's `ppo_trainer` and adds the `mtgrpo`
group (`MTGRPOSettings`), names `MTGRPOReplayBuffer` as verl's custom sampler and passes it `mtgrpo` as its
`sampler_kwargs`, and turns off verl's async warm-up (the controller's ahead requests replace it). verl picks its
trainer by `trainer.v1.trainer_mode`, so custom trainers need their own task runner (`MTGRPOTaskRunner`, verl's
`TaskRunnerV1.run` with `trainer_class(trainer_mode)`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import hydra
import ray
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from mtgrpo_backends.verl.config import (
    BUFFER_NAME,
    BUFFER_PATH,
    MTGRPOSettings,
    check_trainer_config,
    check_transfer_queue_cpus,
)

CONFIG_NAME = "mtgrpo_ppo"
VERL_CONFIG = "pkg://verl.trainer.config"


def config_node() -> dict[str, Any]:
    """The `mtgrpo_ppo` config: verl's ppo_trainer, the mtgrpo group and the sampler wiring."""
    return {
        "defaults": ["ppo_trainer", "_self_"],
        "mtgrpo": asdict(MTGRPOSettings()),
        "algorithm": {"adv_estimator": "grpo"},
        "trainer": {
            "v1": {
                "trainer_mode": "sync",
                "colocate_async": {"num_warmup_batches": 0},
                "separate_async": {"num_warmup_batches": 0},
                "sampler": {
                    "custom_sampler": {"path": BUFFER_PATH, "name": BUFFER_NAME},
                    "sampler_kwargs": "${mtgrpo}",
                },
            }
        },
    }


def register_config() -> None:
    ConfigStore.instance().store(name=CONFIG_NAME, node=config_node())


@ray.remote
class MTGRPOTaskRunner:
    """verl's TaskRunnerV1 with MT-GRPO's trainer: TransferQueue, the trainer, the agent loop manager, fit."""

    def run(self, config: DictConfig) -> None:
        import transfer_queue as tq
        from verl.trainer.ppo.v1 import AgentLoopManagerTQ
        from verl.utils.import_utils import load_class_from_fqn
        from verl.utils.logging_utils import configure_verl_logging

        from mtgrpo_backends.verl.trainer import trainer_class

        configure_verl_logging()
        config.transfer_queue.enable = True
        OmegaConf.resolve(config)
        check_transfer_queue_cpus(config.transfer_queue, float(ray.cluster_resources().get("CPU", 0.0)))
        tq.init(config.transfer_queue)
        trainer = None
        succeeded = False
        try:
            trainer = trainer_class(config.trainer.v1.trainer_mode)(config=config)
            trainer.init()
            fqn = OmegaConf.select(config, "actor_rollout_ref.rollout.agent.agent_loop_manager_class")
            manager_cls: Any = load_class_from_fqn(fqn, "AgentLoopManager") if fqn else AgentLoopManagerTQ
            manager = manager_cls.create(
                config=config,
                llm_client=trainer.get_llm_client(),
                teacher_client=trainer.get_teacher_client(),
                reward_loop_worker_handles=trainer.get_reward_handles(),
            )
            trainer.fit(manager)
            succeeded = True
        finally:
            try:
                tracking = getattr(trainer, "logger", None)
                if tracking is not None:
                    tracking.finish(exit_code=0 if succeeded else 1)
            finally:
                tq.close()


def check_config(config: DictConfig) -> None:
    """What `launch` checks before Ray starts: MT-GRPO's constraints on verl's settings, the `mtgrpo` group, and
    verl's own `validate_config` (micro-batch sizes, divisibility), as verl's `run_ppo` would check it later."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    check_trainer_config(config)
    MTGRPOSettings.from_config(config.mtgrpo)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    cpus = OmegaConf.select(config, "ray_kwargs.ray_init.num_cpus", default=None)
    if cpus is not None:  # a local Ray start with this many CPUs: refuse now rather than hang in TransferQueue
        check_transfer_queue_cpus(config.transfer_queue, float(cpus))


def launch(config: DictConfig) -> None:
    """Check the config, then run verl's `run_ppo` with the MT-GRPO task runner."""
    from verl.trainer.main_ppo import run_ppo
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    check_config(config)
    run_ppo(config, task_runner_class=MTGRPOTaskRunner)


register_config()


@hydra.main(config_path=VERL_CONFIG, config_name=CONFIG_NAME, version_base=None)
def main(config: DictConfig) -> None:
    launch(config)


if __name__ == "__main__":
    main()
